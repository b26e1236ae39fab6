"""Accepting one received instance: check, store durably, record, and pick the status.

The C-STORE handler hands over the file pynetdicom wrote while receiving;
nothing here decodes or re-encodes it. ``SUCCESS`` is returned only after the
bytes are fsynced in the spool and the database row is committed.
"""

from __future__ import annotations

import filecmp
import logging
import zlib
from dataclasses import dataclass
from pathlib import Path

from pydicom import Dataset
from pydicom.uid import DeflatedExplicitVRLittleEndian
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from db import events, registration
from db.models import EventLevel
from db.session import Database
from dicom_node.network.process_locks import StripeLocks
from dicom_node.network.sop_classes import (
    ACCEPTED_STORAGE_CLASSES,
    OWN_RESULT_ONLY_CLASSES,
    SECONDARY_CAPTURE_MODALITIES,
)
from dicom_node.network.spool import Spool, StoredFile
from dicom_node.network.statuses import StoreStatus
from imaging.dicom_files import UnreadableDicomError, inflated_size_over, read_header
from imaging.identity import MANUFACTURER
from imaging.sop_classes import SECONDARY_CAPTURE_CLASS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StoreRequest:
    """A received C-STORE: where its bytes are and what the request said about them."""

    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    calling_ae: str
    peer_address: str
    # The presentation context's; None (unknown) makes ``check_limits`` read the file meta.
    transfer_syntax_uid: str | None = None


@dataclass(frozen=True)
class Answer:
    """What a C-STORE is answered with and, for a newly stored instance, the study it joined."""

    status: StoreStatus
    study_id: int | None = None  # the study's row, when a new instance was registered


class RefusedInstance(Exception):
    """An instance the node will not store; carries the status to answer with.

    ``quarantine`` False: no copy is kept (an instance refused for its size).
    """

    def __init__(self, status: StoreStatus, reason: str, *, quarantine: bool = True) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.quarantine = quarantine


@dataclass(frozen=True)
class ReceptionLimits:
    """What one received instance may cost the listener (``dicom.max_*_mb`` settings)."""

    max_instance_bytes: int = 2048 << 20  # as received
    max_inflated_bytes: int = 64 << 20  # a deflated data set, inflated


def check_limits(
    path: Path, limits: ReceptionLimits, transfer_syntax_uid: str | None = None
) -> None:
    """Refuse an instance larger than ``limits`` before any of it is parsed.

    ``transfer_syntax_uid`` is the one the instance was received in (pynetdicom
    writes it into the file meta); only a deflated one needs the file read.

    Raises
    ------
    RefusedInstance
        0xA700 (out of resources) over a limit, not quarantined; 0xC000 for a
        deflated stream that does not inflate.
    """
    size = path.stat().st_size
    if size > limits.max_instance_bytes:
        raise RefusedInstance(
            StoreStatus.OUT_OF_RESOURCES,
            f"{size} bytes received, over dicom.max_instance_mb",
            quarantine=False,
        )
    if transfer_syntax_uid is not None and transfer_syntax_uid != DeflatedExplicitVRLittleEndian:
        return
    try:
        inflated = inflated_size_over(path, limits.max_inflated_bytes)
    except UnreadableDicomError as exc:
        raise RefusedInstance(StoreStatus.CANNOT_UNDERSTAND, str(exc)) from exc
    if inflated is not None:
        raise RefusedInstance(
            StoreStatus.OUT_OF_RESOURCES,
            f"the deflated data set inflates past {limits.max_inflated_bytes} bytes "
            "(dicom.max_inflated_mb)",
            quarantine=False,
        )


# What the database keeps of an instance besides its UIDs (and the result-object check).
_REGISTERED = ("Modality", "PatientID", "IssuerOfPatientID", "StudyDate", "Manufacturer")
# Every value the listener reads, normalised as intake will (it normalises the whole header).
_READ = (
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    *_REGISTERED,
)


def _text(dataset: Dataset, keyword: str) -> str:
    """The element's value as stripped text ("" when absent).

    Raises
    ------
    RefusedInstance
        If the value cannot be decoded (a corrupt VR such as "AI" for a UID).
    """
    try:
        return str(dataset.get(keyword, "") or "").strip()
    except Exception as exc:  # boundary: values from the network may break pydicom anyhow
        raise RefusedInstance(
            StoreStatus.CANNOT_UNDERSTAND, f"{keyword} cannot be read ({type(exc).__name__})"
        ) from exc


@dataclass(frozen=True)
class ReceivedHeader:
    """The values the listener reads of a received instance, decoded and normalised."""

    values: dict[str, str]  # keyword -> stripped text ("" when absent), for every one of _READ
    transfer_syntax_uid: str

    def __getitem__(self, keyword: str) -> str:
        return self.values[keyword]


def check_instance(request: StoreRequest) -> ReceivedHeader:
    """Parse the received header and check it against the request.

    Raises
    ------
    RefusedInstance
        With the C-STORE status and a reason an admin can act on.
    """
    try:
        header = read_header(request.path, normalised=_READ)
    except (UnreadableDicomError, zlib.error) as exc:
        raise RefusedInstance(StoreStatus.CANNOT_UNDERSTAND, str(exc)) from exc
    # Every value is decoded now: one that cannot be is refused before storing.
    values = {keyword: _text(header.dataset, keyword) for keyword in _READ}
    if not values["SOPClassUID"] or not values["SOPInstanceUID"]:
        raise RefusedInstance(
            StoreStatus.CANNOT_UNDERSTAND, "the data set has no SOP Class or SOP Instance UID"
        )
    if (
        values["SOPClassUID"] != request.sop_class_uid
        or values["SOPInstanceUID"] != request.sop_instance_uid
    ):
        raise RefusedInstance(
            StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS,
            # No UIDs in the text (it is logged; UIDs identify): the event and the
            # quarantined file hold them.
            "the data set's SOP Class/Instance UIDs differ from the C-STORE request's",
        )
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID"):
        if not values[keyword]:
            raise RefusedInstance(
                StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS, f"{keyword} is missing"
            )
    return ReceivedHeader(values, str(header.transfer_syntax_uid))


def is_result_object(header: ReceivedHeader) -> bool:
    """Whether ``header`` is that of a result object an LLNM node made (its SR, SC or SEG).

    A PACS that routes whole studies sends them back with the study; they are
    no input and must not start a new job version.
    """
    return header["Manufacturer"] == MANUFACTURER


def check_modality(sop_class: str, header: ReceivedHeader) -> None:
    """Refuse secondary captures of other modalities than ultrasound.

    Raises
    ------
    RefusedInstance
        With status 0xA900-class "SOP class not supported" and the modality.
    """
    modality = header["Modality"]
    if sop_class == SECONDARY_CAPTURE_CLASS and modality not in SECONDARY_CAPTURE_MODALITIES:
        raise RefusedInstance(
            StoreStatus.SOP_CLASS_NOT_SUPPORTED,
            f"secondary capture of modality {modality or 'unknown'} is not ultrasound",
        )


class Ingestor:
    """Stores received instances in the spool and the database.

    ``locks`` keep two receptions of one SOP Instance UID apart, in every listener
    process: deduplication then needs nothing but the spool and the database.
    """

    def __init__(
        self,
        *,
        spool: Spool,
        database: Database,
        locks: StripeLocks,
        min_free_bytes: int,
        limits: ReceptionLimits = ReceptionLimits(),
    ) -> None:
        self._spool = spool
        self._database = database
        self._locks = locks
        self._min_free_bytes = min_free_bytes
        self._limits = limits

    def close(self) -> None:
        """Release what the ingestor holds open (its lock file)."""
        self._locks.close()

    def has_room(self) -> bool:
        """Whether the spool has more free space than the configured minimum."""
        try:
            return self._spool.free_bytes() > self._min_free_bytes
        except OSError:
            return False

    def sweep_abandoned(self, *, idle_s: float) -> None:
        """Drop partial receptions of aborted associations and record that it happened."""
        try:
            removed = self._spool.sweep_tmp(idle_s=idle_s)
        except OSError as exc:
            log.error("cannot sweep the spool's tmp folder: %s", exc)
            return
        if removed:
            log.warning("removed %d partial reception(s) of aborted associations", removed)
            self.record_listener_event(
                kind="spool.partial_removed",
                level=EventLevel.WARNING,
                message=f"removed {removed} partial reception(s) left by aborted associations",
                detail={"files": removed, "idle_s": idle_s},
            )

    def accept(self, request: StoreRequest) -> Answer:
        """Handle one C-STORE; never raises."""
        if not self.has_room():
            return Answer(
                self._out_of_resources(
                    request, f"less than {self._min_free_bytes} bytes free in the spool"
                )
            )
        sop_class = request.sop_class_uid
        if sop_class not in ACCEPTED_STORAGE_CLASSES and sop_class not in OWN_RESULT_ONLY_CLASSES:
            return Answer(self._unsupported_class(request))
        try:
            check_limits(request.path, self._limits, request.transfer_syntax_uid)
            header = check_instance(request)
            if is_result_object(header):
                return Answer(self._own_result(request))
            if sop_class in OWN_RESULT_ONLY_CLASSES:
                return Answer(self._unsupported_class(request))
            check_modality(sop_class, header)
        except RefusedInstance as refusal:
            self._refused(request, refusal.status, refusal.reason, quarantine=refusal.quarantine)
            return Answer(refusal.status)
        with self._locks.hold(request.sop_instance_uid):
            return self._store(request, header)

    def _store(self, request: StoreRequest, header: ReceivedHeader) -> Answer:
        """Place the file durably, then register it."""
        try:
            stored = self._spool.place(
                request.path,
                study_uid=header["StudyInstanceUID"],
                sop_uid=request.sop_instance_uid,
            )
        except FileExistsError:
            return self._already_placed(request, header)
        except OSError as exc:
            return Answer(self._out_of_resources(request, f"cannot write to the spool: {exc}"))
        return self._register(request, header, stored)

    def _register(
        self, request: StoreRequest, header: ReceivedHeader, stored: StoredFile
    ) -> Answer:
        """Write and commit the row of a file that is on disk."""
        try:
            with self._database.connection() as connection:
                registered = registration.register_instance(
                    connection, new=self._new_instance(request, header, stored)
                )
        except IntegrityError as exc:
            # Registered before under another study: keep the first copy, count the resend.
            self._drop(stored)
            duplicate = self._duplicate(request)
            if duplicate is None:
                return Answer(
                    self._out_of_resources(request, f"database refused the instance: {exc}")
                )
            return Answer(duplicate)
        except SQLAlchemyError as exc:
            self._drop(stored)
            return Answer(self._out_of_resources(request, f"database unavailable: {exc}"))
        log.debug(
            "stored instance #%d (study #%d, job #%d) from %s",
            registered.instance_id,
            registered.study_id,
            registered.job_id,
            request.calling_ae,
        )
        return Answer(StoreStatus.SUCCESS, registered.study_id)

    def _drop(self, stored: StoredFile) -> None:
        """Remove a placed file whose row was not written."""
        try:
            self._spool.discard(stored)
        except OSError as exc:
            log.error("could not remove an unregistered file from the spool: %s", exc)

    def _already_placed(self, request: StoreRequest, header: ReceivedHeader) -> Answer:
        """A file is at the target: a resend, or what a crash before acknowledgement left."""
        duplicate = self._duplicate(request)
        if duplicate is not None:
            return Answer(duplicate)
        try:
            stored = self._spool.place(
                request.path,
                study_uid=header["StudyInstanceUID"],
                sop_uid=request.sop_instance_uid,
                replace=True,
            )
        except OSError as exc:
            return Answer(self._out_of_resources(request, f"cannot write to the spool: {exc}"))
        return self._register(request, header, stored)

    def _duplicate(self, request: StoreRequest) -> StoreStatus | None:
        """Count a resend of a registered instance; None if the instance is not registered."""
        try:
            with self._database.session() as session:
                existing = registration.find_instance(
                    session, sop_instance_uid=request.sop_instance_uid
                )
                if existing is None:
                    return None
                registration.note_duplicate(
                    session,
                    instance=existing,
                    same_bytes=filecmp.cmp(
                        request.path, self._spool.layout.path_of(existing.path), shallow=False
                    ),
                    size_bytes=request.path.stat().st_size,
                    calling_ae=request.calling_ae,
                )
        except SQLAlchemyError as exc:
            return self._out_of_resources(request, f"database unavailable: {exc}")
        except OSError as exc:
            return self._out_of_resources(request, f"cannot read received file: {exc}")
        log.info("duplicate from %s ignored (instance #%d)", request.calling_ae, existing.id)
        return StoreStatus.SUCCESS

    @staticmethod
    def _new_instance(
        request: StoreRequest, header: ReceivedHeader, stored: StoredFile
    ) -> registration.NewInstance:
        return registration.NewInstance(
            sop_instance_uid=request.sop_instance_uid,
            sop_class_uid=request.sop_class_uid,
            series_instance_uid=header["SeriesInstanceUID"],
            study_instance_uid=header["StudyInstanceUID"],
            transfer_syntax_uid=header.transfer_syntax_uid,
            modality=header["Modality"][:16],
            patient_id=header["PatientID"][:64],
            issuer_of_patient_id=header["IssuerOfPatientID"][:64],
            study_date=header["StudyDate"][:8],
            path=stored.relative_path,
            size_bytes=stored.size_bytes,
            calling_ae=request.calling_ae,
        )

    def _unsupported_class(self, request: StoreRequest) -> StoreStatus:
        self._refused(
            request,
            StoreStatus.SOP_CLASS_NOT_SUPPORTED,
            "not an ultrasound, secondary capture or structured report SOP class",
            quarantine=False,
        )
        return StoreStatus.SOP_CLASS_NOT_SUPPORTED

    def _own_result(self, request: StoreRequest) -> StoreStatus:
        """Acknowledge a result object coming back with its study; it is not stored again."""
        log.info("result object from %s acknowledged, not stored", request.calling_ae)
        self.record_listener_event(
            kind="instance.own_result",
            level=EventLevel.INFO,
            message=(
                f"a result object of the node came back from {request.calling_ae}; "
                "acknowledged, not stored (it is no input)"
            ),
            detail={"sop_instance_uid": request.sop_instance_uid},
        )
        return StoreStatus.SUCCESS

    def _out_of_resources(self, request: StoreRequest, reason: str) -> StoreStatus:
        log.error("instance from %s not stored: %s", request.calling_ae, reason)
        self.record_listener_event(
            kind="instance.not_stored",
            level=EventLevel.ERROR,
            message=f"instance from {request.calling_ae} not stored (answered 0xA700): {reason}",
            detail={"sop_instance_uid": request.sop_instance_uid},
        )
        return StoreStatus.OUT_OF_RESOURCES

    def _refused(
        self, request: StoreRequest, status: StoreStatus, reason: str, *, quarantine: bool
    ) -> None:
        kept = None
        if quarantine:
            try:
                kept = self._spool.quarantine(request.path, reason=reason)
            except OSError as exc:
                log.error("could not quarantine a refused instance: %s", exc)
        log.warning("instance from %s refused with 0x%04X: %s", request.calling_ae, status, reason)
        self.record_listener_event(
            kind="instance.refused",
            level=EventLevel.WARNING,
            message=f"instance from {request.calling_ae} refused with 0x{status:04X}: {reason}",
            detail={
                "status": int(status),
                "sop_class_uid": request.sop_class_uid,
                "sop_instance_uid": request.sop_instance_uid,
                "calling_ae": request.calling_ae,
                "peer_address": request.peer_address,
                "quarantined_as": kept,
            },
        )

    def record_listener_event(
        self,
        *,
        kind: str,
        message: str,
        level: EventLevel,
        detail: dict[str, object] | None = None,
    ) -> None:
        """Record an event of the listener; a database outage only costs the record."""
        try:
            with self._database.session() as session:
                events.record_event(
                    session, kind=kind, message=message, level=level, detail=dict(detail or {})
                )
        except SQLAlchemyError as exc:
            log.error("event %s not recorded (database unavailable): %s", kind, exc)
