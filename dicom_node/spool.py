"""The node's durable spool: received files, quarantine and per-job work folders.

Layout under the spool root::

    tmp/                         in-flight receptions (emptied at start)
    incoming/<study>/<sop>.dcm   stored instances, bytes exactly as received
    quarantine/<id>.dcm + .txt   refused instances kept for inspection, with the reason
    work/job-<id>/               stage outputs of a job

A file is placed only after its bytes are fsynced, by an atomic rename
followed by an fsync of the folder, so after a crash a stored file is either
complete or absent.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

_UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_CHUNK = 1 << 20


@dataclass(frozen=True)
class StoredFile:
    """A file placed in the spool."""

    relative_path: str
    size_bytes: int
    sha256: str


def _fsync_dir(path: Path) -> None:
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


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class Spool:
    """Durable file storage rooted at one folder."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.tmp = self.root / "tmp"
        self.incoming = self.root / "incoming"
        self.quarantine_dir = self.root / "quarantine"
        self.work = self.root / "work"

    def prepare(self) -> None:
        """Create the folders and drop receptions a crash left half-done."""
        for folder in (self.tmp, self.incoming, self.quarantine_dir, self.work):
            folder.mkdir(parents=True, exist_ok=True)
        for leftover in self.tmp.iterdir():
            if leftover.is_file():
                leftover.unlink()

    def path_of(self, relative_path: str) -> Path:
        """Absolute path of a stored file."""
        return self.root / relative_path

    def relative_path_for(self, *, study_uid: str, sop_uid: str) -> str:
        """Where an instance is stored, relative to the root."""
        return f"incoming/{_name_for_uid(study_uid)}/{_name_for_uid(sop_uid)}.dcm"

    def _durable_local_copy(self, received: Path) -> Path:
        """Return ``received`` fsynced and on the spool's file system (copying if needed)."""
        if received.stat().st_dev == self.tmp.stat().st_dev:
            fd = os.open(received, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            return received
        copy = self.tmp / f"{uuid.uuid4().hex}.part"
        with received.open("rb") as src, copy.open("wb") as dst:
            shutil.copyfileobj(src, dst, _CHUNK)
            dst.flush()
            os.fsync(dst.fileno())
        return copy

    def store(self, received: Path, *, study_uid: str, sop_uid: str) -> StoredFile:
        """Move a received file into ``incoming/`` durably.

        ``received`` is consumed (renamed away). A file already at the target
        path is replaced: callers only store an instance the database does not
        hold, so such a file is a leftover of a crash before acknowledgement.

        Raises
        ------
        OSError
            If the disk is full or not writable; nothing is left at the target.
        """
        relative = self.relative_path_for(study_uid=study_uid, sop_uid=sop_uid)
        target = self.root / relative
        local = self._durable_local_copy(received)
        try:
            size = local.stat().st_size
            digest = sha256_of(local)
            study_dir = target.parent
            if not study_dir.is_dir():
                study_dir.mkdir(parents=True, exist_ok=True)
                _fsync_dir(self.incoming)
            local.rename(target)
            _fsync_dir(study_dir)
        except OSError:
            if local != received:
                local.unlink(missing_ok=True)
            raise
        return StoredFile(relative_path=relative, size_bytes=size, sha256=digest)

    def discard(self, stored: StoredFile) -> None:
        """Remove a stored file whose database row could not be written."""
        path = self.root / stored.relative_path
        path.unlink(missing_ok=True)
        _fsync_dir(path.parent)

    def quarantine(self, received: Path, *, reason: str) -> str:
        """Keep a refused file with its reason; returns its path relative to the root."""
        name = uuid.uuid4().hex
        target = self.quarantine_dir / f"{name}.dcm"
        shutil.copyfile(received, target)
        (self.quarantine_dir / f"{name}.txt").write_text(reason + "\n", encoding="utf-8")
        return f"quarantine/{name}.dcm"

    def free_bytes(self) -> int:
        """Free space on the spool's file system, for unprivileged writers."""
        stats = os.statvfs(self.root)
        return stats.f_bavail * stats.f_frsize

    def job_dir(self, job_id: int) -> Path:
        """The work folder of a job (created on demand)."""
        path = self.work / f"job-{job_id}"
        path.mkdir(parents=True, exist_ok=True)
        return path
