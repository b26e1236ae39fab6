"""Infer stage: LLNM-Net on the measured views of a study (queue ``gpu``).

Model
    The bundle's ``llnm/`` component (:mod:`models.llnm.weights`) with the text
    encoder its manifest names (``text_encoder.folder``, inside the bundle; the
    packaged all-MiniLM-L6-v2 when it names none), loaded once per process after the
    bundle's checksums are verified (:class:`LlnmLoader`). A bundle
    recalibrated on a site's outcomes maps the model's probability through
    its calibration (:mod:`models.calibration`; the risk stage keeps the
    model's own). The decision threshold is the manifest's
    ``metrics.llnm.threshold`` (default 0.5).
    The risk stage comes from the method the manifest's
    ``metrics.llnm.risk_stage`` records (:mod:`models.llnm.risk_stage`):
    the stage head, or banding the LLNM probability at the recorded
    cut-points; a bundle that records none uses the head.
Batching
    When several jobs infer at once (a worker with ``--concurrency`` above 1),
    their patients share one forward, Grad-CAM++ and Shapley pass
    (:class:`pipeline.batching.MicroBatcher` over
    :func:`models.llnm.batched.explain_patients`, at most
    :data:`MAX_BATCH_PATIENTS`); on CUDA through pinned memory under bf16
    autocast. On the CPU a lone job's result is bit-for-bit its unbatched one.
Scope gate
    Every view with an index nodule gets an out-of-distribution score: the
    Mahalanobis distance of its LLNM-Net embedding (the report withheld) to the
    bundle's training views (:mod:`models.scope`). A view over the bundle's threshold is
    excluded (``out_of_distribution``, "score 41.2 > 18.0"); a study left
    with none is not assessed and no probability is computed. A bundle
    without scope statistics says so in the result (``ood.available``).
Views
    Of the views in scope whose index nodule was found, at most two are used:
    the first transverse and the first longitudinal one when there are both,
    else the first two in study order. Age, sex and the redacted report text come from
    de-identification; a missing report or a single view is fine.
Output
    The LLNM probability, positive at the threshold, the risk stage (1-3) and
    the stage head's probabilities (none when the stage is banded: banding
    has no per-stage probabilities to report), per-input contributions in
    percent (exact Shapley values of the eight input groups against the
    "input unavailable" baseline, :mod:`models.llnm.shapley`) and, per used
    view, the Grad-CAM++ heatmap mapped back onto the crop
    (``work_dir/infer/NNN_heatmap.png``, 8-bit, 0 outside the nodule box).
    The job's result records it all with the bundle's name, version and
    synthetic flag; a synthetic bundle's result carries NOT FOR CLINICAL USE.
    The report's token counts and [UNK] rate (never its text) are in the
    result; a rate over :data:`~models.llnm.text.UNKNOWN_RATE_WARNING` is a
    warning event (``report.unknown_tokens``): the encoder may not know the language.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from sqlalchemy.orm import Session

from db import results
from db.events import record_event
from db.models import EventLevel
from imaging.errors import StageError
from imaging.png import write_png
from imaging.scope_reasons import Exclusion, Reason
from models.bundle import LLNM_DIR, BundleLoader, Manifest, bundle_digest, text_encoder_folder
from models.calibration import Calibration, load_calibration
from models.llnm.batched import explain_patients
from models.llnm.config import TMDLConfig
from models.llnm.explain import Explanation
from models.llnm.risk_stage import StageMethod
from models.llnm.text import UNKNOWN_RATE_WARNING, TextEncoder, TokenCounts
from models.llnm.tmdl import TMDL, TMDLBatch
from models.llnm.view_inputs import demographics, study_position, unletterbox, view_inputs
from models.llnm.weights import load_tmdl
from models.scope import ScopeStatistics, load_scope
from models.segmentation.segmenter import select_device
from pipeline.batching import MicroBatcher
from pipeline.contracts import ExcludedImage, JobContext, ModelInputs
from pipeline.features import MeasuredStudy, MeasuredView
from pipeline.scope import (
    NotAssessed,
    describe_excluded,
    gated,
    gated_summary,
    not_assessed,
    partition,
)
from pipeline.stage import Stage

DEFAULT_THRESHOLD = 0.5
PREDICTED = "predicted"
MAX_BATCH_PATIENTS = 8  # jobs' patients per explanation pass at most


@dataclass(frozen=True)
class LoadedLlnm:
    """LLNM-Net, its text encoder and the bundle they came from.

    ``explanations`` explains one-patient CPU batches, batching concurrent calls.
    """

    model: TMDL
    config: TMDLConfig
    encoder: TextEncoder
    manifest: Manifest
    threshold: float
    device: torch.device
    scope: ScopeStatistics | None  # None: the bundle has no scope statistics (no OOD check)
    explanations: MicroBatcher[TMDLBatch, Explanation]
    stage: StageMethod = field(default_factory=StageMethod)  # how the risk stage is reported
    calibration: Calibration = field(default_factory=Calibration)  # the site's, if any
    digest: str = ""  # the bundle's (models.bundle.bundle_digest)


def load_llnm(
    bundle_dir: Path, manifest: Manifest, device: torch.device | None = None
) -> LoadedLlnm:
    """The bundle's LLNM-Net with its text encoder on ``device`` (default: CUDA when present).

    Raises
    ------
    StageError
        If the bundle has no LLNM-Net component.
    """
    if LLNM_DIR not in manifest.architecture:
        raise StageError(f"the model bundle {manifest.name} has no LLNM-Net ({LLNM_DIR}/)")
    device = device or select_device()
    model, config = load_tmdl(bundle_dir / LLNM_DIR, device)
    encoder = TextEncoder(text_encoder_folder(bundle_dir, manifest), device, config.text_tokens)
    metrics = manifest.metrics.get(LLNM_DIR, {})
    threshold = metrics.get("threshold", DEFAULT_THRESHOLD)
    explainer = MicroBatcher[TMDLBatch, Explanation](
        lambda batches: explain_patients(model, batches, device),
        max_items=MAX_BATCH_PATIENTS,
        name="llnm",
    )
    return LoadedLlnm(
        model,
        config,
        encoder,
        manifest,
        float(threshold),
        device,
        load_scope(bundle_dir),
        explainer,
        StageMethod.from_metrics(metrics),
        load_calibration(bundle_dir),
        bundle_digest(bundle_dir),
    )


class LlnmLoader(BundleLoader[LoadedLlnm]):
    """The LLNM-Net of the bundle in ``bundle_dir``, loaded once (:func:`load_llnm`)."""

    def __init__(self, bundle_dir: Path, device: torch.device | None = None) -> None:
        super().__init__(bundle_dir, functools.partial(load_llnm, device=device))


@dataclass(frozen=True)
class PredictedStudy:
    """The infer stage's output: the prediction and what it was made from."""

    SCHEMA_VERSION: ClassVar[int] = 5  # of the stage output file (pipeline.stage_outputs)

    job: JobContext
    views: tuple[MeasuredView, ...]  # the views the model saw
    prediction: results.Prediction
    stage_probabilities: tuple[float, ...]
    heatmaps: tuple[Path, ...]  # one per used view, at crop resolution
    clinical_use_label: str | None
    bundle_uid: str  # the bundle's device UID (models.bundle.BundleIdentity)
    shapley: dict[str, float]  # signed contributions, logit units: + raises the risk
    ood_scores: tuple[float, ...] | None = None  # per used view; None without statistics
    ood_threshold: float | None = None
    excluded: tuple[ExcludedImage, ...] = ()
    report_tokens: TokenCounts | None = None  # None: no report text


def choose_views(views: tuple[MeasuredView, ...]) -> tuple[MeasuredView, ...]:
    """At most two views with a nodule, a transverse and a longitudinal one first."""
    found = [v for v in views if v.features.index is not None]
    transverse = [v for v in found if v.features.view == "transverse"]
    longitudinal = [v for v in found if v.features.view == "longitudinal"]
    if transverse and longitudinal:
        return (transverse[0], longitudinal[0])
    return tuple(found[:2])


def _batch(
    views: tuple[MeasuredView, ...], inputs: ModelInputs, llnm: LoadedLlnm
) -> tuple[TMDLBatch, bool]:
    size = llnm.config.image_size
    nodules = []
    for view in views:
        if view.features.index is None:
            raise StageError("a chosen view has no nodule")
        nodules.append(view.features.index)
    study = study_position(nodules)
    per_view = [view_inputs(nodule, size, study) for nodule in nodules]

    def maps(name: str) -> torch.Tensor:
        stacked = np.stack([getattr(v, name) for v in per_view])  # (V, S, S)
        return torch.from_numpy(stacked)[None, :, None]  # (1, V, 1, S, S)

    tokens, present = llnm.encoder.encode([inputs.report_text])
    sex, age = demographics(inputs.sex, inputs.age_years)
    batch = TMDLBatch(
        location=maps("location"),
        texture=maps("texture"),
        margin=maps("margin"),
        echogenicity=torch.tensor([[v.echogenicity for v in per_view]], dtype=torch.float32),
        shape=torch.from_numpy(np.stack([v.shape for v in per_view]))[None],
        position=torch.from_numpy(np.stack([v.position for v in per_view]))[None],
        view_mask=torch.ones((1, len(per_view)), dtype=torch.bool),
        text=tokens.cpu(),
        text_present=present.cpu(),
        sex=torch.tensor([sex]),
        age=torch.tensor([age]),
    )
    return batch, bool(present[0])


def _write_heatmap(path: Path, view: MeasuredView, heatmap: np.ndarray[Any, Any]) -> Path:
    """The (S, S) map of a view's texture box, placed onto a crop-sized 8-bit image."""
    index = view.features.index
    assert index is not None
    crop = view.segmented.crop
    x0, y0, x1, y1 = index.box
    canvas = np.zeros((crop.rows, crop.columns), dtype=np.uint8)
    values = unletterbox(heatmap.astype(np.float32), y1 - y0, x1 - x0)
    canvas[y0:y1, x0:x1] = np.clip(values * 255.0, 0, 255).astype(np.uint8)
    return write_png(path, canvas)


def view_embeddings(
    views: tuple[MeasuredView, ...], inputs: ModelInputs, llnm: LoadedLlnm
) -> np.ndarray[Any, np.dtype[np.float64]]:
    """LLNM-Net's embedding (V, W) of each view, the scope gate's: the report withheld.

    Demographics and the measured features count; the report does not
    (:data:`models.scope.LLNM_EMBEDDING_INPUTS`), so whether a study came with
    one does not move its views in or out of the training range.
    """
    batch, _ = _batch(views, replace(inputs, report_text=None), llnm)
    with torch.inference_mode():
        output = llnm.model.eval()(batch.to(llnm.device))
    return np.asarray(output.view_embeddings[0].double().cpu().numpy())


def _in_distribution(
    study: MeasuredStudy, llnm: LoadedLlnm
) -> tuple[tuple[MeasuredView, ...], dict[str, float], tuple[ExcludedImage, ...]]:
    """The views with a nodule within the training range, every view's score, and the rest."""
    found = tuple(v for v in study.views if v.features.index is not None)
    if llnm.scope is None or not found:
        return found, {}, ()
    distribution = llnm.scope.llnm
    distances = distribution.distances(view_embeddings(found, study.job.inputs, llnm))
    scores = {_uid(v): float(d) for v, d in zip(found, distances, strict=True)}

    def exclusion(view: MeasuredView) -> Exclusion | None:
        score = scores[_uid(view)]
        if score <= distribution.threshold:
            return None
        detail = f"score {score:.1f} > {distribution.threshold:.1f}"
        return Exclusion(Reason.OUT_OF_DISTRIBUTION, detail)

    kept, excluded = partition(found, exclusion, _uid)
    return kept, scores, excluded


def _uid(view: MeasuredView) -> str:
    return view.segmented.crop.sop_instance_uid


def infer_study(study: MeasuredStudy, llnm: LoadedLlnm) -> PredictedStudy | NotAssessed:
    """Predict LLNM for ``study`` with explanations (module docstring).

    Raises
    ------
    StageError
        If no view holds a nodule (the features stage ends such jobs before).
    """
    in_scope, scores, excluded = _in_distribution(study, llnm)
    if excluded and not in_scope:
        return not_assessed(study.job.job_id, excluded, before=study.excluded)
    views = choose_views(in_scope)
    if not views:
        raise StageError("no view with a nodule to predict from")
    batch, report_used = _batch(views, study.job.inputs, llnm)
    report = study.job.inputs.report_text
    (explanation,) = llnm.explanations([batch])
    model_probability = float(torch.sigmoid(explanation.logit.float())[0])
    head = torch.softmax(explanation.stage_logits.float(), dim=-1)[0].cpu().numpy()
    # The stage's cut points (when banding) belong to the model's own probability.
    risk_stage, stage_probabilities = llnm.stage.stage(model_probability, head)
    probability = llnm.calibration(model_probability)
    out_dir = study.job.folder("infer")
    combined = explanation.heatmaps["combined"][0].float().cpu().numpy()  # (V, S, S)
    heatmaps = tuple(
        _write_heatmap(out_dir / f"{view.segmented.crop.png_path.stem}_heatmap.png", view, heat)
        for view, heat in zip(views, combined, strict=True)
    )
    manifest = llnm.manifest
    return PredictedStudy(
        job=study.job,
        views=views,
        prediction=results.Prediction(
            probability=probability,
            threshold=llnm.threshold,
            positive=probability >= llnm.threshold,
            risk_stage=risk_stage,
            bundle_name=manifest.name,
            bundle_version=manifest.version,
            bundle_sha256=llnm.digest,
            synthetic_bundle=manifest.synthetic,
            report_text_used=report_used,
            contributions={k: round(v, 2) for k, v in explanation.contributions[0].items()},
        ),
        stage_probabilities=stage_probabilities,
        heatmaps=heatmaps,
        clinical_use_label=manifest.clinical_use_label,
        bundle_uid=manifest.identity.device_uid,
        shapley={k: round(v, 4) for k, v in explanation.shapley[0].items()},
        ood_scores=None if llnm.scope is None else tuple(scores[_uid(v)] for v in views),
        ood_threshold=None if llnm.scope is None else llnm.scope.llnm.threshold,
        excluded=(*study.excluded, *excluded),
        report_tokens=llnm.encoder.token_counts([report]) if report_used else None,
    )


def _detail(study: PredictedStudy) -> dict[str, Any]:
    return {
        "stage_probabilities": [round(p, 4) for p in study.stage_probabilities],
        "views": [
            {
                "sop_instance_uid": v.segmented.crop.sop_instance_uid,
                "view": v.features.view,
                "heatmap": heatmap.relative_to(study.job.work_dir).as_posix(),
            }
            for v, heatmap in zip(study.views, study.heatmaps, strict=True)
        ],
        "clinical_use_label": study.clinical_use_label,
        "bundle_uid": study.bundle_uid,
        "shapley_logit": study.shapley,
        "ood": {
            "available": study.ood_scores is not None,
            "threshold": None if study.ood_threshold is None else round(study.ood_threshold, 2),
            "scores": None
            if study.ood_scores is None
            else [round(score, 2) for score in study.ood_scores],
        },
        "excluded": describe_excluded(study.excluded),
        "report_tokens": None if study.report_tokens is None else study.report_tokens.to_dict(),
    }


def summarize_prediction(study: PredictedStudy) -> dict[str, Any]:
    """The prediction for the audit trail (no pixels, no patient data)."""
    p = study.prediction
    return {
        "probability": round(p.probability, 4),
        "positive": p.positive,
        "threshold": p.threshold,
        "risk_stage": p.risk_stage,
        "report_text_used": p.report_text_used,
        "contributions": p.contributions,
        "bundle": f"{p.bundle_name} {p.bundle_version}",
        **_detail(study),
    }


def store_prediction(session: Session, job_id: int, study: PredictedStudy) -> PredictedStudy:
    """Record the prediction as the job's result; warn when the encoder misread the report."""
    counts = study.report_tokens
    if counts is not None and counts.unknown_rate > UNKNOWN_RATE_WARNING:
        record_event(
            session,
            kind="report.unknown_tokens",
            message=f"{counts.unknown_rate:.0%} of the report's tokens are unknown to the text "
            "encoder: is it made for the reports' language?",
            level=EventLevel.WARNING,
            job_id=job_id,
            detail=counts.to_dict(),
        )
    results.save_result(
        session,
        job_id=job_id,
        outcome=PREDICTED,
        prediction=study.prediction,
        detail=_detail(study),
    )
    return study


def infer_stage(
    llnm: Callable[[JobContext], LoadedLlnm],
) -> Stage[MeasuredStudy, PredictedStudy | NotAssessed]:
    """The infer stage, using LLNM-Net of the job's bundle (``llnm(job)``)."""
    return Stage[MeasuredStudy, PredictedStudy | NotAssessed](
        name="infer",
        run=lambda study: infer_study(study, llnm(study.job)),
        summarize=gated_summary(summarize_prediction),
        queue="gpu",
        store=gated(store_prediction),
        output_type=PredictedStudy,
    )
