"""Typed values stages share: the first stage's input and the de-identified study after it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydicom import Dataset


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


@dataclass(frozen=True)
class StudyInput:
    """Everything the node received for one study, for one job."""

    job_id: int
    study_instance_uid: str
    instances: tuple[InstanceRef, ...]
    work_dir: Path


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
class ModelInputs:
    """What the model reads besides the pixels; never written into a DICOM copy."""

    age_years: float | None
    sex: Literal["F", "M"] | None
    report_text: str | None  # with the patient's identifiers redacted


@dataclass(frozen=True)
class DeidentifiedStudy:
    """The study after de-identification: what every later stage works from."""

    job_id: int
    study_instance_uid: str  # pseudonymous
    images: tuple[DeidentifiedImage, ...]
    inputs: ModelInputs
    work_dir: Path
