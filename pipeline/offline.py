"""Studies through the production stage functions in-process, without a job database.

What the node does to a study, from its DICOM files to the outcome, minus the
bookkeeping: intake, de-identification, crop, segment, features and infer are
the very functions the stages run (the report stage is left out: it only
writes what infer decided). It serves two callers: fitting a bundle's scope
statistics (:mod:`pipeline.scope_fit`; the gate off, every view's measures
kept), measuring the gate on held-out data (``benchmarks/scope_gate.py``) and
evaluating LLNM-Net through predicted masks (``llnm-node evaluate
--segment-with``, :mod:`models.llnm.chain`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from pydicom import Dataset, dcmread
from pydicom.data import get_testdata_files
from pydicom.errors import InvalidDicomError

from imaging.errors import StageError
from imaging.scope import ScopeRules
from models.bundle import verify_bundle
from models.scope import ScopeStatistics, load_scope
from pipeline.contracts import InstanceRef, StudyInput
from pipeline.crop import crop
from pipeline.deidentify import deidentify
from pipeline.features import NO_NODULE_FOUND, MeasuredStudy, measure
from pipeline.infer import PREDICTED, LoadedLlnm, infer_study, load_llnm, view_embeddings
from pipeline.intake import intake
from pipeline.scope import NOT_ASSESSED, NotAssessed
from pipeline.segment import Segmenters, load_segmenters, segment_study

FAILED = "failed"


@dataclass(frozen=True)
class OfflineModels:
    """The bundle's models and the rules, as the stages would load them.

    ``scope`` None switches the model-level gate off (for fitting it).
    """

    segmenters: Segmenters
    llnm: LoadedLlnm
    scope: ScopeStatistics | None
    rules: ScopeRules

    @classmethod
    def load(
        cls, bundle_dir: Path, *, gate: bool = True, rules: ScopeRules | None = None
    ) -> OfflineModels:
        """The verified bundle's models; without ``gate``, no scope statistics are used."""
        manifest = verify_bundle(bundle_dir)
        segmenters = load_segmenters(bundle_dir, manifest)
        llnm = load_llnm(bundle_dir, manifest)
        scope = load_scope(bundle_dir) if gate else None
        return cls(
            segmenters=dataclasses.replace(segmenters, scope=scope),
            llnm=dataclasses.replace(llnm, scope=scope),
            scope=scope,
            rules=rules or ScopeRules(),
        )


@dataclass(frozen=True)
class ViewMeasures:
    """What the scope statistics are fitted on, for one view with an index nodule."""

    thyroid_area: float
    thyroid_confidence: float
    nodule_confidence: float
    image_embedding: NDArray[np.float32]  # of the whole crop (pipeline.segment.image_embedding)
    embedding: NDArray[np.float64]  # LLNM-Net's view embedding (W,)


@dataclass(frozen=True)
class StudyOutcome:
    """How a study ended: predicted, not_assessed, no_nodule_found or failed."""

    outcome: str
    reason: str | None = None  # not_assessed: the coded reason; failed: the error
    probability: float | None = None
    views: tuple[ViewMeasures, ...] = ()  # with ``measures``: every view with a nodule
    risk_stage: int | None = None  # predicted: the stage the model serves
    stage_probabilities: tuple[float, ...] = ()  # predicted: the head's, unless banded


def write_study(datasets: Sequence[Dataset], folder: Path) -> list[Path]:
    """Write a study's data sets as Part 10 files ``folder/NN.dcm``; returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for number, dataset in enumerate(datasets):
        path = folder / f"{number:02d}.dcm"
        dataset.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _measures(study: MeasuredStudy, models: OfflineModels) -> tuple[ViewMeasures, ...]:
    found = tuple(v for v in study.views if v.features.index is not None)
    if not found:
        return ()
    embeddings = view_embeddings(found, study.job.inputs, models.llnm)
    return tuple(
        ViewMeasures(
            thyroid_area=v.segmented.thyroid_area,
            thyroid_confidence=v.segmented.thyroid_confidence,
            nodule_confidence=v.nodule_confidence or 0.0,
            image_embedding=v.segmented.image_embedding,
            embedding=embedding,
        )
        for v, embedding in zip(found, embeddings, strict=True)
    )


def run_study(
    paths: Sequence[Path],
    work_dir: Path,
    models: OfflineModels,
    *,
    job_id: int = 1,
    measures: bool = False,
) -> StudyOutcome:
    """Run the study in ``paths`` (its DICOM files) in ``work_dir``.

    With ``measures``, every nodule view's :class:`ViewMeasures` is kept too.
    """
    refs = tuple(InstanceRef.of(dcmread(p, stop_before_pixels=True), p) for p in paths)
    work_dir.mkdir(parents=True, exist_ok=True)
    study = StudyInput(job_id, str(dcmread(paths[0]).StudyInstanceUID), refs, work_dir)
    try:
        report = intake(study, models.rules)
        if isinstance(report, NotAssessed):
            return StudyOutcome(NOT_ASSESSED, report.exclusion.reason.value)
        cropped = crop(deidentify(report).study)
        segmented = segment_study(cropped, models.segmenters)
        if isinstance(segmented, NotAssessed):
            return StudyOutcome(NOT_ASSESSED, segmented.exclusion.reason.value)
        measured = measure(segmented, models.scope)
        if isinstance(measured, NotAssessed):
            return StudyOutcome(NOT_ASSESSED, measured.exclusion.reason.value)
        kept = _measures(measured, models) if measures else ()
        if not measured.nodule_found:
            return StudyOutcome(NO_NODULE_FOUND, views=kept)
        predicted = infer_study(measured, models.llnm)
    except StageError as exc:
        return StudyOutcome(FAILED, str(exc))
    if isinstance(predicted, NotAssessed):
        return StudyOutcome(NOT_ASSESSED, predicted.exclusion.reason.value, views=kept)
    prediction = predicted.prediction
    return StudyOutcome(
        PREDICTED,
        probability=prediction.probability,
        views=kept,
        risk_stage=prediction.risk_stage,
        stage_probabilities=predicted.stage_probabilities,
    )


def vendor_files() -> list[Path]:
    """Every ultrasound image file of the ``pydicom-data`` package (real vendor files)."""
    found = []
    for name in sorted(get_testdata_files("*")):
        try:
            dataset = dcmread(name, defer_size="1 KB")  # large values stay on disk
        except (InvalidDicomError, OSError, ValueError, EOFError):
            continue
        if dataset.get("Modality") == "US" and "PixelData" in dataset:
            found.append(Path(name))
    return found
