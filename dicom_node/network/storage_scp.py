"""C-STORE and C-ECHO handlers: thin adapters from pynetdicom events to the ingestor."""

from __future__ import annotations

from typing import Any

from dicom_node.network.ingest import Ingestor, StoreRequest
from dicom_node.network.releases import ReleasedStudies
from dicom_node.network.statuses import EchoStatus


def handle_store(event: Any, ingestor: Ingestor, released: ReleasedStudies) -> int:
    """EVT_C_STORE handler; needs pynetdicom's STORE_RECV_CHUNKED_DATASET (file reception)."""
    request = event.request
    calling_ae = str(event.assoc.requestor.ae_title).strip()
    answer = ingestor.accept(
        StoreRequest(
            path=event.dataset_path,
            sop_class_uid=str(request.AffectedSOPClassUID),
            sop_instance_uid=str(request.AffectedSOPInstanceUID),
            calling_ae=calling_ae,
            peer_address=str(event.assoc.requestor.address),
            transfer_syntax_uid=str(event.context.transfer_syntax),
        )
    )
    if answer.study_id is not None:
        released.stored(event.assoc, calling_ae, answer.study_id)
    return int(answer.status)


def handle_echo(event: Any) -> int:
    """EVT_C_ECHO handler."""
    return int(EchoStatus.SUCCESS)
