"""A background thread that does one round of work every few seconds until stopped."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class Poller:
    """Calls ``tick`` every ``interval_s`` seconds (or sooner when woken) in a daemon thread.

    An exception of the ``survives`` classes is logged and the next round runs
    as usual (a database outage must not end the watching); anything else ends
    the thread.
    """

    def __init__(
        self,
        name: str,
        interval_s: float,
        tick: Callable[[], object],
        *,
        survives: tuple[type[Exception], ...],
    ) -> None:
        self._name = name
        self._interval_s = interval_s
        self._tick = tick
        self._survives = survives
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"llnm-{name}", daemon=True)

    def _loop(self) -> None:
        while True:
            self._wake.wait(self._interval_s)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self._tick()
            except self._survives:  # boundary: keep polling through an outage
                log.exception(
                    "%s: round failed; trying again in %.1f s", self._name, self._interval_s
                )

    def start(self) -> None:
        """Start polling."""
        self._thread.start()

    def wake(self) -> None:
        """Run the next round now rather than at the end of the interval."""
        self._wake.set()

    def stop(self) -> None:
        """Stop polling and wait for the current round."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join()
