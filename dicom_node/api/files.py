"""The files of a job the API serves: only those its result lists, and never a link.

A report object must resolve inside the spool, a heatmap inside the job's own folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from db.listings import ResultRow
from pipeline.spool import SpoolLayout


def listed_objects(result: ResultRow | None) -> list[tuple[str, str, str]]:
    """(kind, SOP Instance UID, path relative to the spool) of each object the job made."""
    listed = ((result.detail or {}).get("objects") or []) if result is not None else []
    return [(str(o["kind"]), str(o["sop_instance_uid"]), str(o["path"])) for o in listed]


def object_path(spool: SpoolLayout, result: ResultRow | None, sop_instance_uid: str) -> Path | None:
    """The file of the listed object ``sop_instance_uid``; None if unlisted, gone or outside."""
    for _, uid, relative in listed_objects(result):
        if uid == sop_instance_uid:
            path = spool.root / relative
            return path if _servable(path, spool.root) else None
    return None


def _servable(path: Path, folder: Path) -> bool:
    """A regular file, not a link, that resolves inside ``folder``."""
    if path.is_symlink() or not path.is_file():
        return False
    return path.resolve().is_relative_to(folder.resolve())


@dataclass(frozen=True)
class Heatmap:
    """A heatmap overlay PNG of one view the model used."""

    path: Path
    view: str  # the plane ("transverse", "longitudinal"), or "" when unknown


def heatmaps(spool: SpoolLayout, job_id: int, result: ResultRow | None) -> list[Heatmap]:
    """The heatmap overlays of the result's views, in view order, as far as they exist.

    The report stage writes ``work/job-N/report/<stem>_overlay.png`` beside each
    ``infer/<stem>.png`` that the result's ``views`` list.
    """
    views = ((result.detail or {}).get("views") or []) if result is not None else []
    folder = spool.work_dir(job_id) / "report"
    found = [
        Heatmap(
            folder / f"{PurePosixPath(str(view['heatmap'])).stem}_overlay.png",
            str(view.get("view") or ""),
        )
        for view in views
        if "heatmap" in view
    ]
    return [heatmap for heatmap in found if _servable(heatmap.path, spool.work_dir(job_id))]
