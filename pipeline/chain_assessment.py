"""``llnm-node evaluate --segment-with BUNDLE``: LLNM-Net judged through the node's own chain.

Each patient's DICOM study (the data set's ``study_dir`` column; ``llnm-node
phantom`` writes it) runs through :func:`pipeline.offline.run_study`: intake,
de-identification, crop, BUNDLE's YOLOv8 nodule and UNet++ thyroid
segmenters, features and infer, with BUNDLE's scope gate, as the node runs a
study. The LLNM-Net is the evaluated model folder. The gate on LLNM-Net
embeddings applies only when that folder is BUNDLE's own ``llnm/`` (its
statistics were fitted on that model's embeddings); the image-level gate
always. A patient the chain ends without a prediction (no nodule found, not
assessed, failed) is counted by outcome and left out of the metrics
(:func:`models.llnm.assessment.write_assessment` gives the rule). The stage
head's probabilities are kept for every predicted patient, so the evaluation
can compare the head with banding whichever the model serves.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from rich.progress import track

from models.bundle import LLNM_DIR
from models.llnm.assessment import (
    PREDICTED,
    AssessOptions,
    CasePredictions,
    write_assessment,
)
from models.llnm.dataset import read_patients
from models.llnm.risk_stage import STAGES, StageMethod
from models.llnm.text import TextEncoder
from models.llnm.weights import load_tmdl
from pipeline.offline import OfflineModels, StudyOutcome, run_study


def chain_models(model_dir: Path, bundle: Path, text_encoder: Path | None) -> OfflineModels:
    """BUNDLE's models with the LLNM-Net of ``model_dir``, its stage head always reported."""
    models = OfflineModels.load(bundle)
    llnm = dataclasses.replace(models.llnm, stage=StageMethod())
    if model_dir.resolve() != (bundle / LLNM_DIR).resolve():
        model, config = load_tmdl(model_dir, llnm.device)
        encoder = TextEncoder(text_encoder, llnm.device, config.text_tokens)
        llnm = dataclasses.replace(llnm, model=model, config=config, encoder=encoder, scope=None)
    return dataclasses.replace(models, llnm=llnm)


def _outcome(outcome: StudyOutcome) -> str:
    return outcome.outcome if outcome.reason is None else f"{outcome.outcome}: {outcome.reason}"


def assess_through_chain(
    model_dir: Path, bundle: Path, data: Path, out: Path, options: AssessOptions
) -> dict[str, Any]:
    """Evaluate ``model_dir`` on ``data`` through BUNDLE's chain; write ``out`` like ``assess``.

    Raises
    ------
    FileNotFoundError
        If the model, the bundle or the data set is missing.
    ValueError
        If a patient has no ``study_dir`` or no DICOM file there, or the assessed
        patients hold a single class.
    """
    patients = read_patients(data)
    studies = []
    for patient in patients:
        paths = sorted(patient.study_dir.glob("*.dcm")) if patient.study_dir else []
        if not paths:
            raise ValueError(f"{patient.case_id}: no DICOM study (the study_dir column)")
        studies.append(paths)
    models = chain_models(model_dir, bundle, options.text_encoder)
    outcomes: list[str] = []
    probabilities = np.full(len(patients), np.nan)
    head = np.full((len(patients), STAGES), np.nan)
    with tempfile.TemporaryDirectory(prefix="llnm-chain-") as scratch:
        work = Path(scratch)
        for i, paths in enumerate(track(studies, "chain", disable=not options.progress)):
            outcome = run_study(paths, work / str(i), models, job_id=i + 1)
            shutil.rmtree(work / str(i), ignore_errors=True)
            outcomes.append(_outcome(outcome))
            if outcome.outcome == PREDICTED and outcome.probability is not None:
                probabilities[i] = outcome.probability
                head[i] = outcome.stage_probabilities
    predictions = CasePredictions(tuple(outcomes), probabilities, head)
    masks = f"predicted by {bundle}"
    return write_assessment(
        model_dir, data, out, options, patients, predictions, masks, models.llnm.encoder
    )
