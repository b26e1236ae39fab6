"""DICOM destinations (``kind = "dimse"``): C-STORE over one association per batch, optional TLS."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from dicom_node.network.scu import Peer, SendOutcome, send_files
from dicom_node.network.senders import Outcome, sends_to
from dicom_node.network.tls import client_context
from dicom_node.settings import DimseDestination


@sends_to(DimseDestination)
class DimseSender:
    """C-STOREs files to a DICOM AE, proposing each file's own SOP class and transfer syntax."""

    def __init__(self, destination: DimseDestination, calling_ae: str) -> None:
        tls = destination.tls
        context = (
            client_context(ca_file=tls.ca_file, cert_file=tls.cert_file, key_file=tls.key_file)
            if tls.enabled
            else None
        )
        self._peer = Peer(
            host=destination.host,
            port=destination.port,
            called_ae=destination.ae_title,
            calling_ae=calling_ae,
            tls=context,
        )

    def send(self, paths: Sequence[Path]) -> list[Outcome]:
        """C-STORE every file; a failed association fails each of its files."""
        return [_outcome(o) for o in send_files(self._peer, paths)]


def _outcome(sent: SendOutcome) -> Outcome:
    if sent.ok:
        return Outcome(sent.path, delivered=True, status=sent.status)
    error = (
        sent.error or "no answer"
        if sent.status is None
        else f"destination answered C-STORE status 0x{sent.status:04X}"
    )
    return Outcome(sent.path, delivered=False, status=sent.status, error=error)
