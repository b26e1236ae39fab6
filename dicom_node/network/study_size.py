"""How many instances a sender holds of a study: C-FIND, Study Root, by Study Instance UID.

The query's only matching key is the Study Instance UID; the other keys are empty
return keys (the counts, and at SERIES level the Series Instance UID), so no patient
data leaves the node. STUDY level asks for Number of Study Related Instances; a
sender that answers without it is asked at SERIES level for Number of Series Related
Instances of every series, which add up to the same.
"""

from __future__ import annotations

from pydicom import Dataset
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
)

from dicom_node.network.scu import AssociationError, Peer, associate
from dicom_node.network.statuses import FindStatus

_MATCH = (FindStatus.PENDING, FindStatus.PENDING_WARNING)


class SizeUnknown(Exception):
    """The sender did not say how many instances the study has; ``str()`` says why."""


def study_size(peer: Peer, study_uid: str, *, timeout_s: float) -> int:
    """The number of instances ``peer`` holds of study ``study_uid``.

    Each step (connect, associate, each answer) waits at most ``timeout_s``.

    Raises
    ------
    SizeUnknown
        If the peer cannot be reached, refuses the association or the query, fails,
        times out, does not hold the study, or answers without a count.
    """
    ae = AE(ae_title=peer.calling_ae)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    ae.connection_timeout = timeout_s
    ae.acse_timeout = timeout_s
    ae.dimse_timeout = timeout_s
    ae.network_timeout = timeout_s
    try:
        assoc = associate(ae, peer)
    except AssociationError as exc:
        raise SizeUnknown(str(exc)) from exc
    try:
        size = _size(assoc, study_uid)
    except SizeUnknown:
        if assoc.is_established:
            assoc.abort()  # an answer may still be on its way: no release handshake
        raise
    assoc.release()
    return size


def _size(assoc: Association, study_uid: str) -> int:
    """STUDY level first, then the series' counts added up."""
    study = _find(assoc, _query(study_uid, "STUDY", NumberOfStudyRelatedInstances=""))
    if len(study) != 1:
        raise SizeUnknown(f"{len(study)} studies matched the Study Instance UID")
    count = _count(study[0], "NumberOfStudyRelatedInstances")
    if count is not None:
        return count
    series = _find(
        assoc,
        _query(study_uid, "SERIES", SeriesInstanceUID="", NumberOfSeriesRelatedInstances=""),
    )
    counts = [_count(match, "NumberOfSeriesRelatedInstances") for match in series]
    if not counts or None in counts:
        raise SizeUnknown("answered without Number of Study/Series Related Instances")
    return sum(c for c in counts if c is not None)


def _query(study_uid: str, level: str, **return_keys: str) -> Dataset:
    query = Dataset()
    query.QueryRetrieveLevel = level
    query.StudyInstanceUID = study_uid
    for keyword, value in return_keys.items():
        setattr(query, keyword, value)
    return query


def _find(assoc: Association, query: Dataset) -> list[Dataset]:
    """The matches of one C-FIND."""
    matches: list[Dataset] = []
    try:
        responses = assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind)
        for status, identifier in responses:
            if "Status" not in status:
                raise SizeUnknown("no C-FIND answer (timeout or abort)")
            code = int(status.Status)
            if code == FindStatus.SUCCESS:
                return matches
            if code not in _MATCH:
                raise SizeUnknown(f"C-FIND answered 0x{code:04X}")
            if identifier is not None:
                matches.append(identifier)
    except (ValueError, RuntimeError) as exc:  # no accepted context for C-FIND; association gone
        raise SizeUnknown(str(exc)) from exc
    raise SizeUnknown("the C-FIND ended without a final status")


def _count(match: Dataset, keyword: str) -> int | None:
    """The non-negative count ``keyword`` of a match; None when it is absent or empty."""
    try:
        value = match.get(keyword)
        count = None if value in (None, "") else int(str(value))
    except Exception as exc:  # boundary: values from the network may break pydicom anyhow
        raise SizeUnknown(f"{keyword} cannot be read ({type(exc).__name__})") from exc
    if count is not None and count < 0:
        raise SizeUnknown(f"{keyword} is negative")
    return count
