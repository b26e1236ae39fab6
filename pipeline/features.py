"""Features stage: each segmented view's nodule features (queue ``cpu``).

Views
    The View Code Sequence meaning of the image names the plane: a meaning
    holding the word "transverse", "transversal", "axial" or "trans" is
    transverse (its lobe is read), one holding "longitudinal", "sagittal" or
    "long" is longitudinal (its third is read); otherwise both stay
    unavailable.
Features
    :func:`imaging.features.extract_view` on the crop, both masks and the
    crop's calibration (the index nodule rule is there).
No nodule
    A study none of whose views holds a nodule is not an error: the stage
    records a job result with outcome ``no_nodule_found`` (listing the views
    looked at) and the job ends there, done.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from sqlalchemy.orm import Session

from db import results
from imaging.features.extract import View, ViewFeatures, extract_view, summarize
from imaging.png import read_png
from pipeline.contracts import JobContext
from pipeline.segment import SegmentedStudy, SegmentedView
from pipeline.stage import JobConcluded, Stage

NO_NODULE_FOUND = "no_nodule_found"
_TRANSVERSE = ("transverse", "transversal", "axial", "trans")
_LONGITUDINAL = ("longitudinal", "sagittal", "long")


@dataclass(frozen=True)
class MeasuredView:
    """A segmented view and its features."""

    segmented: SegmentedView
    features: ViewFeatures


@dataclass(frozen=True)
class MeasuredStudy:
    """The features stage's output."""

    SCHEMA_VERSION: ClassVar[int] = 1  # of the stage output file (pipeline.stage_outputs)

    job: JobContext
    views: tuple[MeasuredView, ...]

    @property
    def nodule_found(self) -> bool:
        """Whether any view holds a nodule."""
        return any(v.features.index is not None for v in self.views)


def view_plane(meaning: str | None) -> View | None:
    """The plane a View Code Sequence meaning names (module docstring), or None."""
    if not meaning:
        return None
    words = meaning.lower().replace("-", " ").split()
    if any(w in _TRANSVERSE for w in words):
        return "transverse"
    if any(w in _LONGITUDINAL for w in words):
        return "longitudinal"
    return None


def measure_view(view: SegmentedView) -> MeasuredView:
    """Read a view's crop and masks and extract its features.

    Raises
    ------
    StageError
        If a PNG cannot be read.
    """
    crop = view.crop
    features = extract_view(
        read_png(crop.png_path),
        read_png(view.nodule_mask, grey=True),
        read_png(view.thyroid_mask, grey=True),
        crop.mm_per_pixel,
        view=view_plane(crop.view),
    )
    return MeasuredView(segmented=view, features=features)


def measure(study: SegmentedStudy) -> MeasuredStudy:
    """Features of every view of ``study``."""
    return MeasuredStudy(job=study.job, views=tuple(measure_view(view) for view in study.views))


def summarize_measures(study: MeasuredStudy) -> dict[str, Any]:
    """Per-view feature scalars for the audit trail (no arrays)."""
    return {
        "nodule_found": study.nodule_found,
        "views": [
            {
                "sop_instance_uid": v.segmented.crop.sop_instance_uid,
                "thyroid_found": v.segmented.thyroid_pixels > 0,
                **summarize(v.features),
            }
            for v in study.views
        ],
    }


def conclude_without_nodule(
    session: Session, job_id: int, study: MeasuredStudy
) -> MeasuredStudy | JobConcluded:
    """Without any nodule, record the ``no_nodule_found`` result and end the job."""
    if study.nodule_found:
        return study
    results.save_result(
        session,
        job_id=job_id,
        outcome=NO_NODULE_FOUND,
        detail={
            "reason": "the nodule segmenter found no nodule in any view",
            "views": [
                {"sop_instance_uid": v.segmented.crop.sop_instance_uid, "view": v.features.view}
                for v in study.views
            ],
        },
    )
    return JobConcluded(NO_NODULE_FOUND)


FEATURES = Stage[SegmentedStudy, MeasuredStudy](
    name="features",
    run=measure,
    summarize=summarize_measures,
    store=conclude_without_nodule,
    output_type=MeasuredStudy,
)
