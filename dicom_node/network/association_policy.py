"""Who may associate: calling-AE allow-list (with hosts), called AE, association limit.

The limit holds over every listener process: an association takes one of
``max_associations`` slots (``process_locks.AssociationSlots``) and frees it when
its connection closes.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from db.models import EventLevel
from dicom_node.network.ingest import Ingestor
from dicom_node.network.process_locks import AssociationSlots
from dicom_node.network.statuses import RejectReason
from dicom_node.settings import DicomSettings

log = logging.getLogger(__name__)

_PERMANENT, _TRANSIENT = 0x01, 0x02
_SERVICE_USER, _PRESENTATION = 0x01, 0x03
_REJECT_LINGER_S = 2.0


def rejection(
    settings: DicomSettings,
    *,
    calling_ae: str,
    called_ae: str,
    address: str,
    has_room: bool,
) -> tuple[int, int, RejectReason, str] | None:
    """Why an association request must be rejected, as (result, source, reason, text)."""
    if not settings.admits(calling_ae, address):
        return (
            _PERMANENT,
            _SERVICE_USER,
            RejectReason.CALLING_AE_NOT_RECOGNISED,
            f"calling AE {calling_ae!r} from {address} is not allowed",
        )
    if settings.require_called_ae and called_ae.strip() != settings.ae_title:
        return (
            _PERMANENT,
            _SERVICE_USER,
            RejectReason.CALLED_AE_NOT_RECOGNISED,
            f"called AE {called_ae!r} is not {settings.ae_title!r}",
        )
    if not has_room:
        return (
            _TRANSIENT,
            _PRESENTATION,
            RejectReason.TEMPORARY_CONGESTION,
            "the spool is (nearly) full",
        )
    return None


def over_limit(settings: DicomSettings) -> tuple[int, int, RejectReason, str]:
    """The rejection of an association beyond ``max_associations``."""
    return (
        _TRANSIENT,
        _PRESENTATION,
        RejectReason.LOCAL_LIMIT_EXCEEDED,
        f"{settings.max_associations} associations already open (the limit)",
    )


def handle_requested(
    event: Any, settings: DicomSettings, ingestor: Ingestor, slots: AssociationSlots
) -> None:
    """EVT_REQUESTED handler: take a slot, or send A-ASSOCIATE-RJ and record an event."""
    assoc = event.assoc
    request = assoc.requestor.primitive
    calling_ae = str(request.calling_ae_title).strip()
    address = str(assoc.requestor.address)
    refused = rejection(
        settings,
        calling_ae=calling_ae,
        called_ae=str(request.called_ae_title),
        address=address,
        has_room=ingestor.has_room(),
    )
    if refused is None:
        if slots.take(assoc):
            return
        refused = over_limit(settings)
    result, source, reason, text = refused
    log.warning("association rejected: %s", text)
    ingestor.record_listener_event(
        kind="association.rejected",
        level=EventLevel.WARNING,
        message=f"association rejected: {text}",
        detail={"calling_ae": calling_ae, "peer_address": address, "reason": reason.name},
    )
    assoc.acse.send_reject(result, source, int(reason))
    _await_peer_close(assoc, timeout=_REJECT_LINGER_S)


def _await_peer_close(assoc: Any, timeout: float) -> None:
    """Hold the connection until the requestor has read the A-ASSOCIATE-RJ and closed it.

    pynetdicom shuts the socket down as soon as this handler returns, while its DUL
    thread may not yet have written the queued reject; the requestor would then see a
    bare disconnect instead of the reason. The DUL goes back to Sta1 once the peer
    closes the transport after reading the reject.
    """
    deadline = time.monotonic() + timeout
    while assoc.dul.state_machine.current_state != "Sta1" and time.monotonic() < deadline:
        time.sleep(0.005)
