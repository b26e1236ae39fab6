"""The node's durable spool: received files and quarantine (layout: :mod:`pipeline.spool`).

A file is placed by an atomic hard link, and it and its folder are fsynced
before the database row is written: a crash before the row commits leaves at
most an unregistered file at the target, which the resend of that instance
replaces. The fsyncs run in the receiving thread: on the ingest benchmark a
thread pool that overlapped them with the database row cost more CPU in
hand-offs than it saved in time, and asking the kernel to start writing each
PDU as it arrived (``sync_file_range``) cost about 0.5 CPU-ms per instance for
no gain in throughput.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from pipeline.spool import SpoolLayout, fsync_dir, fsync_file


@dataclass(frozen=True)
class StoredFile:
    """A file placed in the spool."""

    relative_path: str
    size_bytes: int


class Spool:
    """Durable file storage rooted at one folder.

    Parameters
    ----------
    root
        The spool's folder.
    durable
        False skips every fsync (all else is unchanged). It exists only so that
        the ingest benchmark can price durability; it is never a node setting.
    """

    def __init__(self, root: Path, *, durable: bool = True) -> None:
        self.layout = SpoolLayout.at(root)
        self.durable = durable

    def _sync_file(self, path: Path) -> None:
        if self.durable:
            fsync_file(path)

    def _sync_dir(self, path: Path) -> None:
        if self.durable:
            fsync_dir(path)

    def prepare(self) -> None:
        """Create the folders and drop receptions a crash left half-done."""
        layout = self.layout
        for folder in (layout.tmp, layout.incoming, layout.quarantine, layout.work):
            folder.mkdir(parents=True, exist_ok=True)
        for leftover in layout.tmp.iterdir():
            if leftover.is_file():
                leftover.unlink()

    def sweep_tmp(self, *, idle_s: float) -> int:
        """Remove receptions nobody has written to for ``idle_s`` seconds; returns how many.

        pynetdicom leaves the partial file of an aborted association behind;
        a file still being received is rewritten with every fragment.
        """
        cutoff = time.time() - idle_s
        removed = 0
        for leftover in self.layout.tmp.iterdir():
            try:
                if leftover.is_file() and leftover.stat().st_mtime < cutoff:
                    leftover.unlink()
                    removed += 1
            except FileNotFoundError:  # finished (and removed) meanwhile
                continue
        return removed

    def _local(self, received: Path) -> Path:
        """``received`` itself when on the spool's file system, else a copy in ``tmp/``."""
        if received.stat().st_dev == self.layout.tmp.stat().st_dev:
            return received
        copy = self.layout.tmp / f"{uuid.uuid4().hex}.part"
        shutil.copyfile(received, copy)
        return copy

    def place(
        self, received: Path, *, study_uid: str, sop_uid: str, replace: bool = False
    ) -> StoredFile:
        """Give a received file its name in ``incoming/`` and make that durable.

        The file gets a second name (a hard link) at its target, so an existing
        file there is never overwritten by accident: that raises
        ``FileExistsError`` unless ``replace`` is set, which callers use only
        for a file the database does not hold (a crash before acknowledgement).
        ``received`` itself stays. Returns once the file and its folder are
        fsynced.

        Raises
        ------
        FileExistsError
            If a file is already at the target and ``replace`` is false.
        OSError
            If the disk is full or not writable, or an fsync failed; nothing is
            left at the target.
        """
        relative = self.layout.instance_path(study_uid=study_uid, sop_uid=sop_uid)
        target = self.layout.path_of(relative)
        local = self._local(received)
        try:
            size = local.stat().st_size
            study_dir = target.parent
            if not study_dir.is_dir():
                study_dir.mkdir(parents=True, exist_ok=True)
                self._sync_dir(self.layout.incoming)
            if replace:
                target.unlink(missing_ok=True)
            os.link(local, target)
        finally:
            if local != received:
                local.unlink(missing_ok=True)
        try:
            self._sync_file(target)
            self._sync_dir(study_dir)
        except OSError:
            target.unlink(missing_ok=True)
            raise
        return StoredFile(relative_path=relative, size_bytes=size)

    def discard(self, stored: StoredFile) -> None:
        """Remove a stored file whose database row could not be written."""
        path = self.layout.path_of(stored.relative_path)
        path.unlink(missing_ok=True)
        self._sync_dir(path.parent)

    def quarantine(self, received: Path, *, reason: str) -> str:
        """Keep a refused file with its reason; returns its path relative to the root."""
        name = uuid.uuid4().hex
        target = self.layout.quarantine / f"{name}.dcm"
        shutil.copyfile(received, target)
        (self.layout.quarantine / f"{name}.txt").write_text(reason + "\n", encoding="utf-8")
        return f"quarantine/{name}.dcm"

    def free_bytes(self) -> int:
        """Free space on the spool's file system, for unprivileged writers."""
        stats = os.statvfs(self.layout.root)
        return stats.f_bavail * stats.f_frsize
