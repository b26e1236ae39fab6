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
Scope gate
    The index nodule's detection confidence is the highest confidence of the
    nodule detections covering it (the segment stage's confidence map inside
    its mask and box). With bundle scope statistics, a view whose index
    nodule is less confident than the bundle's limit is excluded
    (``low_nodule_confidence``).
No nodule
    A study none of whose views holds a nodule is not an error: the stage
    records a job result with outcome ``no_nodule_found`` (listing the views
    looked at) and the job ends there, done. A study whose only nodules were
    below the confidence limit is not assessed instead (:mod:`pipeline.scope`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from sqlalchemy.orm import Session

from db import results
from imaging.features.extract import View, ViewFeatures, extract_view, summarize
from imaging.png import read_png
from imaging.scope_reasons import Exclusion, Reason
from models.bundle import BundleLoader, Manifest
from models.scope import ScopeStatistics, ViewLimits, load_scope
from pipeline.contracts import ExcludedImage, JobContext
from pipeline.scope import (
    NotAssessed,
    describe_excluded,
    gated,
    gated_summary,
    not_assessed,
    partition,
)
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
    nodule_confidence: float | None  # of the index nodule's detection; None without one


@dataclass(frozen=True)
class MeasuredStudy:
    """The features stage's output."""

    SCHEMA_VERSION: ClassVar[int] = 3  # of the stage output file (pipeline.stage_outputs)

    job: JobContext
    views: tuple[MeasuredView, ...]
    excluded: tuple[ExcludedImage, ...] = ()

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
    nodules = read_png(view.nodule_mask, grey=True)
    features = extract_view(
        read_png(crop.png_path),
        nodules,
        read_png(view.thyroid_mask, grey=True),
        crop.mm_per_pixel,
        view=view_plane(crop.view),
    )
    confidence = None
    if features.index is not None:
        x0, y0, x1, y1 = features.index.box
        inside = read_png(view.nodule_confidence, grey=True)[y0:y1, x0:x1]
        covered = inside[nodules[y0:y1, x0:x1] > 0]
        confidence = float(covered.max()) / 255.0 if covered.size else 0.0
    return MeasuredView(segmented=view, features=features, nodule_confidence=confidence)


def confidence_exclusion(view: MeasuredView, limits: ViewLimits | None) -> Exclusion | None:
    """Why ``view``'s index nodule is too uncertain to assess, or None (module docstring)."""
    confidence = view.nodule_confidence
    if limits is None or confidence is None or confidence >= limits.nodule_confidence:
        return None
    return Exclusion(
        Reason.LOW_NODULE_CONFIDENCE,
        f"confidence {confidence:.2f} < {limits.nodule_confidence:.2f}",
    )


def measure(
    study: SegmentedStudy, scope: ScopeStatistics | None = None
) -> MeasuredStudy | NotAssessed:
    """Features of every view of ``study``; uncertain index nodules excluded (module doc)."""
    limits = None if scope is None else scope.limits
    views, excluded = partition(
        (measure_view(view) for view in study.views),
        lambda v: confidence_exclusion(v, limits),
        lambda v: v.segmented.crop.sop_instance_uid,
    )
    if excluded and not any(v.features.index is not None for v in views):
        return not_assessed(study.job.job_id, excluded, before=study.excluded)
    return MeasuredStudy(job=study.job, views=views, excluded=(*study.excluded, *excluded))


def summarize_measures(study: MeasuredStudy) -> dict[str, Any]:
    """Per-view feature scalars for the audit trail (no arrays)."""
    return {
        "nodule_found": study.nodule_found,
        "views": [
            {
                "sop_instance_uid": v.segmented.crop.sop_instance_uid,
                "thyroid_found": v.segmented.thyroid_pixels > 0,
                "nodule_confidence": None
                if v.nodule_confidence is None
                else round(v.nodule_confidence, 3),
                **summarize(v.features),
            }
            for v in study.views
        ],
        "excluded": describe_excluded(study.excluded),
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
            "excluded": describe_excluded(study.excluded),
        },
    )
    return JobConcluded(NO_NODULE_FOUND)


class ScopeLoader(BundleLoader[ScopeStatistics | None]):
    """The scope statistics of the bundle in ``bundle_dir``, loaded once (:func:`load_scope`)."""

    def __init__(self, bundle_dir: Path) -> None:
        super().__init__(bundle_dir, _scope_of)


def _scope_of(bundle_dir: Path, _manifest: Manifest) -> ScopeStatistics | None:
    return load_scope(bundle_dir)


def features_stage(scope: ScopeLoader) -> Stage[SegmentedStudy, MeasuredStudy | NotAssessed]:
    """The features stage, gating with the scope statistics ``scope`` provides."""
    return Stage[SegmentedStudy, MeasuredStudy | NotAssessed](
        name="features",
        run=lambda study: measure(study, scope()),
        summarize=gated_summary(summarize_measures),
        store=gated(conclude_without_nodule),
        output_type=MeasuredStudy,
    )
