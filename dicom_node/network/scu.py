"""SCU helpers: associate with a peer, C-ECHO it, C-STORE files to it (bytes sent as stored)."""

from __future__ import annotations

import ssl
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_file_meta_info
from pynetdicom import AE, _config
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from dicom_node.network.sop_classes import register_retired_storage_classes

MAX_CONTEXTS = 128


@dataclass(frozen=True)
class Peer:
    """A remote DICOM application entity."""

    host: str
    port: int
    called_ae: str
    calling_ae: str = "LLNM_SCU"
    tls: ssl.SSLContext | None = None


@dataclass(frozen=True)
class SendOutcome:
    """What happened to one file."""

    path: Path
    sop_instance_uid: str | None
    status: int | None  # DIMSE status; None when nothing was answered
    error: str | None = None

    @property
    def ok(self) -> bool:
        """Stored with success (0x0000) or a warning (0xB000-class)."""
        return self.status is not None and (self.status == 0 or self.status >> 12 == 0xB)


class AssociationError(ConnectionError):
    """The peer could not be reached or rejected the association."""


def associate(ae: AE, peer: Peer) -> Association:
    """An established association of ``ae`` with ``peer``.

    Raises
    ------
    AssociationError
        If the peer cannot be reached, rejects or aborts the association.
    """
    tls_args = (peer.tls, peer.host) if peer.tls is not None else None
    assoc = ae.associate(peer.host, peer.port, ae_title=peer.called_ae, tls_args=tls_args)
    if not assoc.is_established:
        reason = "rejected" if assoc.is_rejected else "aborted" if assoc.is_aborted else "failed"
        raise AssociationError(
            f"association with {peer.called_ae}@{peer.host}:{peer.port} {reason}"
        )
    return assoc


def echo(peer: Peer) -> int:
    """C-ECHO the peer; returns the DIMSE status.

    Raises
    ------
    AssociationError
        If no association could be established.
    """
    ae = AE(ae_title=peer.calling_ae)
    ae.add_requested_context(Verification)
    assoc = associate(ae, peer)
    try:
        status = assoc.send_c_echo()
    finally:
        assoc.release()
    if "Status" not in status:
        raise AssociationError("no C-ECHO response (timeout or abort)")
    return int(status.Status)


def iter_files(paths: Iterable[Path]) -> Iterator[Path]:
    """Every file under the given files and folders, sorted per folder."""
    for path in paths:
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.is_file())
        else:
            yield path


def send_files(peer: Peer, paths: Iterable[Path]) -> list[SendOutcome]:
    """C-STORE each file, proposing exactly its SOP class and transfer syntax."""
    outcomes: list[SendOutcome] = []
    batches: list[list[tuple[Path, str, str, str]]] = [[]]
    contexts: set[tuple[str, str]] = set()
    for path in iter_files(paths):
        try:
            meta = read_file_meta_info(path)
            entry = (
                path,
                str(meta.MediaStorageSOPClassUID),
                str(meta.TransferSyntaxUID),
                str(meta.MediaStorageSOPInstanceUID),
            )
        except (InvalidDicomError, AttributeError, OSError) as exc:
            outcomes.append(SendOutcome(path, None, None, f"not a DICOM file: {exc}"))
            continue
        if (entry[1], entry[2]) not in contexts and len(contexts) == MAX_CONTEXTS:
            batches.append([])
            contexts = set()
        contexts.add((entry[1], entry[2]))
        batches[-1].append(entry)
    for batch in batches:
        if batch:
            outcomes.extend(_send_batch(peer, batch))
    return outcomes


def _send_batch(peer: Peer, batch: list[tuple[Path, str, str, str]]) -> list[SendOutcome]:
    register_retired_storage_classes()
    # Send each file's data set bytes straight from disk, never decoded and re-encoded.
    _config.STORE_SEND_CHUNKED_DATASET = True
    ae = AE(ae_title=peer.calling_ae)
    for sop_class, syntax in sorted({(e[1], e[2]) for e in batch}):
        ae.add_requested_context(sop_class, syntax)
    try:
        assoc = associate(ae, peer)
    except AssociationError as exc:
        return [SendOutcome(path, uid, None, str(exc)) for path, _, _, uid in batch]
    outcomes = []
    try:
        for path, _, _, uid in batch:
            if not assoc.is_established:
                outcomes.append(SendOutcome(path, uid, None, "association lost"))
                continue
            try:
                status = assoc.send_c_store(path)
            except (ValueError, OSError) as exc:
                outcomes.append(SendOutcome(path, uid, None, str(exc)))
                continue
            code = int(status.Status) if "Status" in status else None
            outcomes.append(SendOutcome(path, uid, code, None if code is not None else "no reply"))
    finally:
        if assoc.is_established:
            assoc.release()
    return outcomes
