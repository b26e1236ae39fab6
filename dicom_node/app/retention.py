"""Apply the retention settings to the spool: originals, working folders, quarantine.

:func:`plan` lists what the rules allow to remove (:mod:`db.retention` for
what was delivered, file times for the quarantine); :func:`purge` removes it
and records one audit event ``retention.purged`` with the counts and who ran
it (never a file name: they carry UIDs). Database rows stay: results, events
and the pseudonym map outlive the files. A study whose originals are gone can
no longer be re-run (``jobs retry`` fails it as unreadable).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from db import retention
from db.events import record_event
from db.models import EventLevel, utcnow
from db.session import Database
from dicom_node.settings import RetentionSettings
from pipeline.spool import SpoolLayout


@dataclass(frozen=True)
class Category:
    """What one rule would remove: paths (files or folders) and their total bytes."""

    paths: tuple[Path, ...] = ()
    size_bytes: int = 0


@dataclass(frozen=True)
class PurgePlan:
    """Everything the retention rules allow to remove now."""

    originals: Category = field(default_factory=Category)
    work: Category = field(default_factory=Category)
    quarantine: Category = field(default_factory=Category)

    def categories(self) -> dict[str, Category]:
        """The three categories by name."""
        return {"originals": self.originals, "work": self.work, "quarantine": self.quarantine}


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _category(paths: list[Path]) -> Category:
    present = tuple(p for p in paths if p.exists() and not p.is_symlink())
    return Category(present, sum(_size(p) for p in present))


def plan(
    database: Database, spool: SpoolLayout, rules: RetentionSettings, now: datetime | None = None
) -> PurgePlan:
    """What ``rules`` allow to remove at ``now`` (default: the current time)."""
    now = now or utcnow()
    with database.session() as session:
        studies = retention.delivered_studies(
            session, ended_before=now - timedelta(days=rules.originals_days)
        )
        jobs = retention.delivered_jobs(session, ended_before=now - timedelta(days=rules.work_days))
    cutoff = (now - timedelta(days=rules.quarantine_days)).timestamp()
    quarantined = (
        [p for p in spool.quarantine.iterdir() if p.stat().st_mtime < cutoff]
        if spool.quarantine.is_dir()
        else []
    )
    return PurgePlan(
        originals=_category([spool.path_of(path) for s in studies for path in s.paths]),
        work=_category([spool.work_dir(job_id) for job_id in jobs]),
        quarantine=_category(sorted(quarantined)),
    )


def purge(database: Database, planned: PurgePlan, *, actor: str) -> dict[str, int]:
    """Remove what ``planned`` lists; the number of paths removed per category (audited)."""
    removed: dict[str, int] = {}
    for name, category in planned.categories().items():
        count = 0
        for path in category.paths:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            count += not path.exists()
        removed[name] = count
    emptied = {p.parent for p in planned.originals.paths}
    for folder in emptied:  # a study's incoming folder, once its files are gone
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
    with database.session() as session:
        record_event(
            session,
            kind="retention.purged",
            level=EventLevel.INFO,
            message=f"retention purge by {actor}: "
            + ", ".join(f"{n} {name}" for name, n in removed.items()),
            detail={
                "actor": actor,
                "removed": removed,
                "bytes": {n: c.size_bytes for n, c in planned.categories().items()},
            },
        )
    return removed
