"""Typed values stages share: the job envelope, the first stage's input, the de-identified study."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

from pydicom import Dataset

from db.jobs import JobSource
from imaging.scope_reasons import Exclusion
from pipeline.spool import SpoolLayout


@dataclass(frozen=True)
class InstanceRef:
    """One stored instance of the study, as a file in the spool."""

    sop_instance_uid: str
    sop_class_uid: str
    series_instance_uid: str
    path: Path

    @classmethod
    def of(cls, dataset: Dataset, path: Path) -> InstanceRef:
        """The reference to ``path``, a file holding ``dataset``."""
        return cls(
            sop_instance_uid=str(dataset.SOPInstanceUID),
            sop_class_uid=str(dataset.SOPClassUID),
            series_instance_uid=str(dataset.SeriesInstanceUID),
            path=path,
        )


def instance_refs(source: JobSource, spool: SpoolLayout) -> tuple[InstanceRef, ...]:
    """The instances of a job's study as files in ``spool``, in the order they were received."""
    return tuple(
        InstanceRef(
            sop_instance_uid=stored.sop_instance_uid,
            sop_class_uid=stored.sop_class_uid,
            series_instance_uid=stored.series_instance_uid,
            path=spool.path_of(stored.relative_path),
        )
        for stored in source.instances
    )


@dataclass(frozen=True)
class StudyInput:
    """Everything the node received for one study, for one job: the first stage's input."""

    job_id: int
    study_instance_uid: str
    instances: tuple[InstanceRef, ...]
    work_dir: Path  # the job's folder in the spool (SpoolLayout.work_dir)
    # The installed bundle the job runs with (an absolute folder, pinned when the job
    # starts); None: the node's configured bundle (``model.bundle_dir``).
    bundle_dir: str | None = None


@dataclass(frozen=True)
class Skipped:
    """An instance or image a stage could not use, and why (no patient data in the reason)."""

    sop_instance_uid: str
    reason: str


def summarize_skipped(skipped: Sequence[Skipped]) -> list[dict[str, str]]:
    """The skipped items for the audit trail."""
    return [{"sop_instance_uid": s.sop_instance_uid, "reason": s.reason} for s in skipped]


@dataclass(frozen=True)
class ExcludedImage:
    """An image the scope gate left out (its SOP Instance UID as the stage knew it) and why."""

    sop_instance_uid: str
    exclusion: Exclusion


@dataclass(frozen=True)
class ModelInputs:
    """What the model reads besides the pixels; never written into a DICOM copy."""

    age_years: float | None
    sex: Literal["F", "M"] | None
    report_text: str | None  # with the patient's identifiers redacted


@dataclass(frozen=True)
class JobContext:
    """The envelope every stage after de-identification passes on unchanged."""

    job_id: int
    work_dir: Path  # the job's folder in the spool (SpoolLayout.work_dir)
    inputs: ModelInputs  # age, sex and redacted report text, from de-identification
    bundle_dir: str | None = None  # as StudyInput's

    def folder(self, name: str) -> Path:
        """``work_dir/name``, created if missing: where a stage writes its files."""
        path = self.work_dir / name
        path.mkdir(parents=True, exist_ok=True)
        return path


@dataclass(frozen=True)
class DeidentifiedImage:
    """One ultrasound image (or cine) of the de-identified working copy."""

    path: Path  # Part 10 file under the job's work dir, Explicit VR Little Endian
    sop_instance_uid: str  # pseudonymous
    frames: int
    rows: int
    columns: int
    # The pixels were cleaned to the 2D regions of its Sequence of Ultrasound Regions
    # (False: to the image area the fallback detector found).
    has_ultrasound_regions: bool


@dataclass(frozen=True)
class DeidentifiedStudy:
    """The study after de-identification: what every later stage works from."""

    SCHEMA_VERSION: ClassVar[int] = 2  # of the stage output file (pipeline.stage_outputs)

    job: JobContext
    study_instance_uid: str  # pseudonymous
    images: tuple[DeidentifiedImage, ...]
    excluded: tuple[ExcludedImage, ...] = ()  # by intake's rules; pseudonymous UIDs
