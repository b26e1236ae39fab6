"""The spool's layout: where received instances, refused files and job folders lie.

Under the spool root::

    tmp/                         in-flight receptions (emptied at start)
    incoming/<study>/<sop>.dcm   stored instances, bytes exactly as received
    quarantine/<id>.dcm + .txt   refused instances kept for inspection, with the reason
    work/job-<id>/               a job's files: de-identified copies, crops, masks,
                                 heatmaps, result objects
    work/job-<id>/stages/NN-name/  stage NN's output for the next stage's worker

The listener writes the first three (:mod:`dicom_node.network.spool`), the
stages the last; the node and every worker mount the same root.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

_UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def fsync_file(path: Path) -> None:
    """Wait until the bytes of the file at ``path`` are on disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Wait until the entries of folder ``path`` (names added, renamed, removed) are on disk."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _name_for_uid(uid: str) -> str:
    """A safe file name for a UID: the UID itself when well-formed, else its hash."""
    if len(uid) <= 64 and _UID_RE.match(uid):
        return uid
    return "x" + hashlib.sha1(uid.encode("utf-8", "replace")).hexdigest()


@dataclass(frozen=True)
class SpoolLayout:
    """Paths in a spool rooted at ``root`` (an absolute path)."""

    root: Path

    @classmethod
    def at(cls, root: Path) -> SpoolLayout:
        """The layout of the spool at ``root`` (made absolute)."""
        return cls(root.resolve())

    @property
    def tmp(self) -> Path:
        """In-flight receptions."""
        return self.root / "tmp"

    @property
    def incoming(self) -> Path:
        """Stored instances, one folder per study."""
        return self.root / "incoming"

    @property
    def quarantine(self) -> Path:
        """Refused instances with their reasons."""
        return self.root / "quarantine"

    @property
    def work(self) -> Path:
        """The jobs' folders."""
        return self.root / "work"

    def work_dir(self, job_id: int) -> Path:
        """The folder of job ``job_id`` (not created here)."""
        return self.work / f"job-{job_id}"

    def crop_record(self, job_id: int) -> Path:
        """Where the crop stage keeps its output for the shadow stage and ``dataset export``."""
        return self.work_dir(job_id) / "crop" / "record"

    def stage_output(self, job_id: int, index: int, stage: str) -> Path:
        """Where stage number ``index`` (0-based) called ``stage`` of a job leaves its output."""
        return self.work_dir(job_id) / "stages" / f"{index:02d}-{stage}"

    def instance_path(self, *, study_uid: str, sop_uid: str) -> str:
        """Where an instance is stored, relative to the root."""
        return f"incoming/{_name_for_uid(study_uid)}/{_name_for_uid(sop_uid)}.dcm"

    def path_of(self, relative_path: str) -> Path:
        """Absolute path of a file given relative to the root."""
        return self.root / relative_path

    def relative(self, path: Path) -> str:
        """``path`` (inside the spool) relative to the root, as the database stores it.

        Raises
        ------
        ValueError
            If ``path`` lies outside the spool.
        """
        return path.resolve().relative_to(self.root).as_posix()
