"""Which studies each association stored instances of, marked for the count rule at release.

When an association of a caller in ``completion.query_callers`` is released, the
received jobs of the studies it stored instances of are marked in the database
(``db.jobs.mark_released``); the completion watcher then asks that caller how many
instances each study has. An aborted association marks nothing: its studies complete
by the quiet time. Handlers run on pynetdicom's association threads and only write
the mark: the query runs in the watcher.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from db import jobs
from db.session import Database

log = logging.getLogger(__name__)


class ReleasedStudies:
    """Collects the studies of open associations; marks them when one is released.

    Parameters
    ----------
    database
        The job database.
    queried
        The calling AE titles the node may ask for a study's size.
    wake
        Called after marking, so the watcher asks at once instead of at its next round.
    """

    def __init__(
        self, *, database: Database, queried: frozenset[str], wake: Callable[[], None]
    ) -> None:
        self._database = database
        self._queried = queried
        self._wake = wake
        self._lock = threading.Lock()
        self._studies: dict[Any, set[int]] = {}

    def stored(self, assoc: Any, calling_ae: str, study_id: int) -> None:
        """An instance of study ``study_id`` was stored on ``assoc``."""
        if calling_ae not in self._queried:
            return
        with self._lock:
            self._studies.setdefault(assoc, set()).add(study_id)

    def handle_released(self, event: Any) -> None:
        """EVT_RELEASED: mark the association's studies for the count rule."""
        with self._lock:
            study_ids = self._studies.pop(event.assoc, None)
        if not study_ids:
            return
        calling_ae = str(event.assoc.requestor.ae_title).strip()
        try:
            with self._database.connection() as connection:
                jobs.mark_released(connection, study_ids=study_ids, calling_ae=calling_ae)
        except SQLAlchemyError as exc:  # the quiet time still completes these studies
            log.error("release of an association from %s not recorded: %s", calling_ae, exc)
            return
        self._wake()

    def handle_aborted(self, event: Any) -> None:
        """EVT_ABORTED: forget the association's studies (they complete by the quiet time)."""
        with self._lock:
            self._studies.pop(event.assoc, None)
