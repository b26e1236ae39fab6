"""Shadow bundles: every installed shadow bundle answers on each study, and is never exported.

The shadow stage follows the report stage, so the live objects are already
queued for the PACS when it starts. With each shadow bundle it runs
segmentation, features and LLNM-Net again on the job's crops, in a folder of
its own (``work_dir/shadow/<bundle id>``), and records the answer (a
prediction, not assessed with its reason, no nodule found, or the error) in
``shadow_results``, tagged with the bundle. A shadow answer makes no DICOM
object: nothing of it is ever exported, and a failing shadow bundle never
fails the job.

The crops come from the job's crop record (:meth:`SpoolLayout.crop_record`);
a job without one gets no shadow answer, and an event says so. A job the live
bundle ends early (no nodule, not assessed after its crop stage) runs the shadow
stage too, after its notice (``Stage.after_conclusion``), so a shadow bundle is
measured on every study it could have answered, not only on those the live one
accepted.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any, ClassVar

from sqlalchemy.orm import Session

from db import bundles, results
from db.events import record_event
from db.models import EventLevel
from pipeline.bundle_models import BundleModels
from pipeline.crop import CroppedStudy
from pipeline.features import NO_NODULE_FOUND, measure
from pipeline.infer import PREDICTED, PredictedStudy, infer_study
from pipeline.scope import NOT_ASSESSED, NotAssessed
from pipeline.segment import segment_study
from pipeline.spool import SpoolLayout
from pipeline.stage import Stage
from pipeline.stage_outputs import load_output

FAILED = "failed"


@dataclass(frozen=True)
class ShadowBundle:
    """An installed shadow bundle, as the stage needs it."""

    bundle_id: int
    folder: str


@dataclass(frozen=True)
class ShadowInput:
    """The job's crops and the shadow bundles to run on them."""

    study: CroppedStudy | None  # None: no shadow bundle, or the crops were not saved
    bundles: tuple[ShadowBundle, ...]


@dataclass(frozen=True)
class ShadowAnswer:
    """One shadow bundle's answer on a study."""

    bundle_id: int
    outcome: str  # predicted, not_assessed, no_nodule_found or failed
    reason: str | None = None  # the not-assessed reason (imaging.scope_reasons)
    prediction: results.Prediction | None = None
    error: str | None = None  # what a failed bundle raised


@dataclass(frozen=True)
class ShadowAnswers:
    """The shadow stage's output: every shadow bundle's answer."""

    SCHEMA_VERSION: ClassVar[int] = 1

    answers: tuple[ShadowAnswer, ...]


def _answer(study: CroppedStudy, models: BundleModels, bundle_id: int) -> ShadowAnswer:
    segmented = segment_study(study, models.segmenters(study.job))
    if isinstance(segmented, NotAssessed):
        return ShadowAnswer(bundle_id, NOT_ASSESSED, segmented.exclusion.reason.value)
    measured = measure(segmented, models.scope(study.job), models.risk_map(study.job))
    if isinstance(measured, NotAssessed):
        return ShadowAnswer(bundle_id, NOT_ASSESSED, measured.exclusion.reason.value)
    if not measured.nodule_found:
        return ShadowAnswer(bundle_id, NO_NODULE_FOUND)
    predicted: PredictedStudy | NotAssessed = infer_study(measured, models.llnm(study.job))
    if isinstance(predicted, NotAssessed):
        return ShadowAnswer(bundle_id, NOT_ASSESSED, predicted.exclusion.reason.value)
    return ShadowAnswer(bundle_id, PREDICTED, prediction=predicted.prediction)


def run_shadow(shadow: ShadowInput, models: BundleModels) -> ShadowAnswers:
    """Every shadow bundle's answer on ``shadow.study`` (module docstring)."""
    study = shadow.study
    if study is None:
        return ShadowAnswers(())
    answers = []
    for bundle in shadow.bundles:
        job = replace(
            study.job,
            bundle_dir=bundle.folder,
            work_dir=study.job.work_dir / "shadow" / str(bundle.bundle_id),
        )
        try:
            answer = _answer(replace(study, job=job), models, bundle.bundle_id)
        except Exception as exc:  # boundary: a shadow bundle's failure is its answer
            answer = ShadowAnswer(bundle.bundle_id, FAILED, error=f"{type(exc).__name__}: {exc}")
        answers.append(answer)
    return ShadowAnswers(tuple(answers))


def summarize_shadow(answers: ShadowAnswers) -> dict[str, Any]:
    """The answers for the audit trail (no pixels, no patient data)."""
    return {
        "answers": [
            {
                "bundle_id": a.bundle_id,
                "outcome": a.outcome,
                "reason": a.reason,
                "error": a.error,
                "probability": None if a.prediction is None else round(a.prediction.probability, 4),
            }
            for a in answers.answers
        ]
    }


def store_shadow(session: Session, job_id: int, answers: ShadowAnswers) -> ShadowAnswers:
    """Record each answer in ``shadow_results``; a failed one is also a warning event."""
    for answer in answers.answers:
        results.save_shadow_result(
            session,
            job_id=job_id,
            bundle_id=answer.bundle_id,
            outcome=answer.outcome,
            reason=answer.reason,
            prediction=answer.prediction,
            detail=None if answer.error is None else {"error": answer.error},
        )
        if answer.outcome == FAILED:
            record_event(
                session,
                kind="shadow.failed",
                message=f"shadow bundle {answer.bundle_id} failed: {answer.error}",
                level=EventLevel.WARNING,
                job_id=job_id,
                detail=asdict(answer),
            )
    return answers


def load_shadow(spool: SpoolLayout) -> Callable[[Session, int, Any], ShadowInput]:
    """The shadow stage's ``load``: the installed shadow bundles and the job's crop record."""

    def load(session: Session, job_id: int, _reported: Any) -> ShadowInput:
        shadows = tuple(ShadowBundle(b.id, b.path) for b in bundles.shadow_bundles(session))
        if not shadows:
            return ShadowInput(None, ())
        folder = spool.crop_record(job_id)
        if not folder.is_dir():
            record_event(
                session,
                kind="shadow.skipped",
                message="the job has no crop record: no shadow answer",
                job_id=job_id,
            )
            return ShadowInput(None, shadows)
        return ShadowInput(load_output(folder, CroppedStudy, root=spool.root), shadows)

    return load


def shadow_stage(models: BundleModels, spool: SpoolLayout) -> Stage[ShadowInput, ShadowAnswers]:
    """The shadow stage (module docstring), after the report stage."""
    return Stage[ShadowInput, ShadowAnswers](
        name="shadow",
        run=lambda shadow: run_shadow(shadow, models),
        summarize=summarize_shadow,
        queue="gpu",
        load=load_shadow(spool),
        store=store_shadow,
        output_type=ShadowAnswers,
        after_conclusion=True,
    )
