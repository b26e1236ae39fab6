"""What the report builders read and write.

The report stage is the one place after de-identification that works on the
original study again: its input pairs each view the model used with the
original instance it was cut from (found through the job's pseudonym map), so
that the objects it makes belong to the original patient and study. Those
objects stay in the node's spool until the export sends them back to the PACS.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydicom.uid import UID, generate_uid

from db.results import Prediction
from models.bundle import BundleIdentity
from pipeline.contracts import JobContext
from pipeline.features import MeasuredView

ObjectKind = Literal["sr", "sc", "seg"]


@dataclass(frozen=True)
class ReportView:
    """A view the model used and the original image it was cropped from.

    Crop pixel (x, y) is pixel (x + area.x0, y + area.y0) of frame
    ``crop.frame_index`` of the original image (crops are never resized).
    """

    measured: MeasuredView  # crop, masks and features (pseudonymous UIDs)
    heatmap: Path  # 8-bit Grad-CAM++ map at crop resolution, 0 outside the nodule box
    original: Path  # the original instance as received, in the spool (holds PHI)
    original_sop_instance_uid: str


@dataclass(frozen=True)
class ReportInput:
    """Everything the report builders need for one job."""

    job: JobContext
    prediction: Prediction  # with the bundle's name, version and synthetic flag
    stage_probabilities: tuple[float, ...]  # risk stages 1-3
    views: tuple[ReportView, ...]  # one or two, in the order the model used them
    algorithm: BundleIdentity  # the bundle that made the prediction
    # Images of the study the scope gate left out: "original SOP Instance UID: why".
    not_used: tuple[str, ...] = ()

    @property
    def clinical_use_label(self) -> str | None:
        """NOT FOR CLINICAL USE when the bundle was trained on synthetic data."""
        return self.algorithm.clinical_use_label

    @property
    def out_dir(self) -> Path:
        """Where the objects are written: ``work_dir/report``."""
        return self.job.work_dir / "report"


@dataclass(frozen=True)
class ReportOptions:
    """Switches of the report stage (settings section ``report``)."""

    segmentation: bool = False  # also make a DICOM SEG of the nodule and thyroid masks
    failure_report: bool = True  # a failed job sends a short SR saying why
    no_nodule_report: bool = True  # a job that found no nodule sends a short SR saying so
    not_assessed_report: bool = True  # a study outside the model's scope: a short SR saying why


@dataclass(frozen=True)
class ReportObject:
    """One DICOM object made for the PACS, as a Part 10 file in the job's work folder."""

    kind: ObjectKind
    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    series_instance_uid: str
    description: str


def object_uid(job_id: int, *parts: str) -> UID:
    """A UID that is the same every time a job's stage makes the same object.

    A re-run of the report stage therefore replaces its objects instead of
    adding copies, and the export's per-UID bookkeeping sends each once.
    """
    return generate_uid(entropy_srcs=["llnm-node report", str(job_id), *parts])
