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
Population location
    With a bundle risk map (:mod:`models.risk_map`), each view's index nodule
    is framed (:mod:`imaging.gland_frame`) and registered to the template of
    its plane and side (the transverse view's own lobe; a longitudinal view
    takes the study's, from its transverse view) and the map is read there
    (:func:`models.risk_map.place`). A view that cannot be placed says why.
No nodule
    A study none of whose views holds a nodule is not an error: the stage
    records a job result with outcome ``no_nodule_found`` (listing the views
    looked at) and the job ends there, done. A study whose only nodules were
    below the confidence limit is not assessed instead (:mod:`pipeline.scope`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

from sqlalchemy.orm import Session

from db import results
from imaging.features.extract import View, ViewFeatures, extract_view, summarize
from imaging.features.geometry import BoolMap, Unavailable
from imaging.features.position import Side
from imaging.gland_frame import frame_index_nodule, study_side
from imaging.png import read_png
from imaging.scope_reasons import Exclusion, Reason
from models.bundle import BundleLoader, Manifest
from models.risk_map import PopulationLocation, RiskMap, load_risk_map, place
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
Masks = tuple[BoolMap, BoolMap]  # a view's nodule and thyroid masks
_TRANSVERSE = ("transverse", "transversal", "axial", "trans")
_LONGITUDINAL = ("longitudinal", "sagittal", "long")


@dataclass(frozen=True)
class MeasuredView:
    """A segmented view and its features."""

    segmented: SegmentedView
    features: ViewFeatures
    nodule_confidence: float | None  # of the index nodule's detection; None without one
    # Where the index nodule sits on the bundle's population map; None without a map.
    population: PopulationLocation | Unavailable | None = None


@dataclass(frozen=True)
class MeasuredStudy:
    """The features stage's output."""

    SCHEMA_VERSION: ClassVar[int] = 4  # of the stage output file (pipeline.stage_outputs)

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


def read_masks(view: SegmentedView) -> Masks:
    """The view's nodule and thyroid masks (crop resolution).

    Raises
    ------
    StageError
        If a PNG cannot be read.
    """
    return read_png(view.nodule_mask, grey=True) != 0, read_png(view.thyroid_mask, grey=True) != 0


def measure_view(view: SegmentedView, masks: Masks) -> MeasuredView:
    """Extract a view's features from its crop and ``masks`` (:func:`read_masks`).

    Raises
    ------
    StageError
        If a PNG cannot be read.
    """
    crop = view.crop
    nodules, thyroid = masks
    features = extract_view(
        read_png(crop.png_path), nodules, thyroid, crop.mm_per_pixel, view=view_plane(crop.view)
    )
    confidence = None
    if features.index is not None:
        x0, y0, x1, y1 = features.index.box
        inside = read_png(view.nodule_confidence, grey=True)[y0:y1, x0:x1]
        covered = inside[nodules[y0:y1, x0:x1]]
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


def locate_in_population(
    view: MeasuredView, masks: Masks, side: Side | None, risk_map: RiskMap
) -> PopulationLocation | Unavailable:
    """Where ``view``'s index nodule sits on the population map (module docstring)."""
    framed = frame_index_nodule(*masks, view.features, side)
    if isinstance(framed, Unavailable):
        return framed
    placed = place(risk_map, framed, framed.side or side or "")
    return Unavailable(placed) if isinstance(placed, str) else placed


def _image_key(view: SegmentedView) -> tuple[str, int]:
    return view.crop.sop_instance_uid, view.crop.frame_index


def measure(
    study: SegmentedStudy, scope: ScopeStatistics | None = None, risk_map: RiskMap | None = None
) -> MeasuredStudy | NotAssessed:
    """Features of every view of ``study``; uncertain index nodules excluded (module doc)."""
    limits = None if scope is None else scope.limits
    masks = {_image_key(view): read_masks(view) for view in study.views}
    views, excluded = partition(
        (measure_view(view, masks[_image_key(view)]) for view in study.views),
        lambda v: confidence_exclusion(v, limits),
        lambda v: v.segmented.crop.sop_instance_uid,
    )
    if excluded and not any(v.features.index is not None for v in views):
        return not_assessed(study.job.job_id, excluded, before=study.excluded)
    if risk_map is not None:
        side = study_side(v.features for v in views)
        views = tuple(
            replace(
                v,
                population=locate_in_population(v, masks[_image_key(v.segmented)], side, risk_map),
            )
            for v in views
        )
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
                **_population_summary(v.population),
            }
            for v in study.views
        ],
        "excluded": describe_excluded(study.excluded),
    }


def _population_summary(population: PopulationLocation | Unavailable | None) -> dict[str, Any]:
    if population is None:
        return {}
    if isinstance(population, Unavailable):
        return {"population_location": {"unavailable": population.reason}}
    return {
        "population_location": {
            "risk": population.risk,
            "paper_value": population.paper_value,
            "region": population.region,
            "side": population.side,
            "coverage": population.coverage,
            "registration_dice": population.dice,
            "registration_mse": population.mse,
        }
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


class RiskMapLoader(BundleLoader[RiskMap | None]):
    """The population risk map of the bundle in ``bundle_dir``, loaded once."""

    def __init__(self, bundle_dir: Path) -> None:
        super().__init__(bundle_dir, _risk_map_of)


def _risk_map_of(bundle_dir: Path, _manifest: Manifest) -> RiskMap | None:
    return load_risk_map(bundle_dir)


def features_stage(
    scope: Callable[[JobContext], ScopeStatistics | None],
    risk_map: Callable[[JobContext], RiskMap | None],
) -> Stage[SegmentedStudy, MeasuredStudy | NotAssessed]:
    """The features stage: gates with ``scope(job)``, places on ``risk_map(job)``."""
    return Stage[SegmentedStudy, MeasuredStudy | NotAssessed](
        name="features",
        run=lambda study: measure(study, scope(study.job), risk_map(study.job)),
        summarize=gated_summary(summarize_measures),
        store=gated(conclude_without_nodule),
        output_type=MeasuredStudy,
    )
