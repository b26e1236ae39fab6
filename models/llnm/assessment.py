"""Evaluate a trained LLNM-Net on a data set: metrics with bootstrap CIs, risk stage, plots.

``assess(model_dir, data, out)`` predicts from the data set's own masks and
writes (so does :mod:`pipeline.chain_assessment`, which predicts through the
node's chain from the DICOM files with a bundle's segmenters)::

    out/evaluation.json     ``masks`` ("dataset" or "predicted by BUNDLE"); AUC, sensitivity,
                            specificity, accuracy, PPV, NPV with 95 % bootstrap CIs (patient
                            resampling) over the assessed patients; ``not_assessed`` (count,
                            outcomes, the AUC over all patients with each of them at 0.5);
                            ``risk_stage``: the served method and one-vs-rest AUCs and exact
                            agreement of the stage head and of banding the probability
                            (:mod:`models.llnm.risk_stage`); calibration error, class balance,
                            the best achievable AUC when the data carry true probabilities,
                            and the report token counts with the [UNK] rate
    out/predictions.csv     case id, label, outcome, probability, served / head / banded stage,
                            the head's stage probabilities
    out/roc.png, calibration.png, decision_curve.png   of the assessed patients
    out/features-<S>.safetensors (+.json)   the extracted features (dataset masks only)

Banding uses the cut-points training fitted on its validation cases (the
model's ``metrics.json``); a model without them gets cut-points fitted on the
evaluated patients themselves, and ``cut_points_from`` says so (optimistic).
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from models.llnm.dataset import Patient, build_features, read_data_manifest, read_patients
from models.llnm.evaluation import bootstrap, expected_calibration_error, roc_auc, stage_auc
from models.llnm.evaluation_plots import plot_calibration, plot_decision_curve, plot_roc
from models.llnm.risk_stage import (
    StageMethod,
    band,
    compare_methods,
    fit_cut_points,
)
from models.llnm.text import TextEncoder
from models.llnm.training import METRICS_FILE, ReportTokens, class_balance, predict
from models.llnm.weights import load_tmdl
from models.segmentation.segmenter import select_device

PREDICTED = "predicted"
NOT_ASSESSED_PROBABILITY = 0.5  # a not-assessed patient's score in ``all_cases_auc``
DATASET_MASKS = "dataset"


@dataclass(frozen=True)
class AssessOptions:
    """How to evaluate."""

    threshold: float = 0.5
    resamples: int = 1000
    seed: int = 0
    progress: bool = True
    text_encoder: Path | None = None


@dataclass(frozen=True)
class CasePredictions:
    """Each patient's outcome and, where predicted, the model's outputs (rows as the patients)."""

    outcomes: tuple[str, ...]  # "predicted", or why not ("no_nodule_found", ...)
    probabilities: NDArray[np.float64]  # (N,), NaN where not predicted
    stage_probabilities: NDArray[np.float64]  # (N, stages) of the stage head, NaN where not

    @property
    def assessed(self) -> NDArray[np.bool_]:
        """Where a probability was predicted."""
        return np.array([o == PREDICTED for o in self.outcomes], dtype=np.bool_)


def assess(model_dir: Path, data: Path, out: Path, options: AssessOptions) -> dict[str, Any]:
    """Evaluate the model in ``model_dir`` on every patient of ``data`` from its masks.

    Raises
    ------
    FileNotFoundError
        If the model, the data set or its images are missing.
    ValueError
        If the data hold a single class.
    """
    out.mkdir(parents=True, exist_ok=True)
    device = select_device()
    model, config = load_tmdl(model_dir, device)
    patients = read_patients(data)
    table = build_features(patients, config.image_size, progress=options.progress)
    table.save(out / f"features-{config.image_size}.safetensors")
    encoder = TextEncoder(options.text_encoder, torch.device("cpu"), config.text_tokens)
    text = ReportTokens.encode(table.reports, encoder)
    probabilities, stage_probabilities = predict(model, table, text, device)
    predictions = CasePredictions((PREDICTED,) * len(table), probabilities, stage_probabilities)
    return write_assessment(
        model_dir, data, out, options, patients, predictions, DATASET_MASKS, encoder
    )


def _risk_stage(
    model_dir: Path,
    stages: NDArray[np.int64],
    probabilities: NDArray[np.float64],
    head: NDArray[np.float64],
) -> dict[str, Any] | None:
    """The served method and the head-vs-banding comparison over patients with a stage."""
    known = stages > 0
    if not known.any():
        return None
    path = model_dir / METRICS_FILE
    metrics = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    fitted = (metrics.get("risk_stage") or {}).get("fitted_cut_points")
    if fitted is not None:
        cuts, source = (float(fitted[0]), float(fitted[1])), "training validation cases"
    else:
        cuts = fit_cut_points(stages[known], probabilities[known])
        source = "these patients (the model records none; in-sample, optimistic)"
    return {
        "served": StageMethod.from_metrics(metrics).to_dict(),
        "cut_points_from": source,
        **compare_methods(stages, probabilities, head, cuts),
    }


def write_assessment(
    model_dir: Path,
    data: Path,
    out: Path,
    options: AssessOptions,
    patients: list[Patient],
    predictions: CasePredictions,
    masks: str,
    encoder: TextEncoder,
) -> dict[str, Any]:
    """Score ``predictions`` of ``patients`` and write ``out`` (module docstring).

    ``encoder`` is the model's text encoder (for the report token counts).

    Metrics cover the assessed patients; ``not_assessed`` reports the others.

    Raises
    ------
    ValueError
        If the assessed patients hold a single class.
    """
    out.mkdir(parents=True, exist_ok=True)
    assessed = predictions.assessed
    labels = np.array([p.label for p in patients], np.int64)
    stages = np.array([p.stage or 0 for p in patients], np.int64)
    truths = [p.true_probability for p in patients]
    y, probabilities = labels[assessed], predictions.probabilities[assessed]
    head = predictions.stage_probabilities[assessed]
    estimates = bootstrap(
        y,
        probabilities,
        threshold=options.threshold,
        resamples=options.resamples,
        seed=options.seed,
        progress=options.progress,
    )
    known_truth = all(t is not None for t in truths)
    truth = np.array([t if t is not None else np.nan for t in truths])
    best = roc_auc(y, truth[assessed]) if known_truth else None
    all_cases = np.where(assessed, predictions.probabilities, NOT_ASSESSED_PROBABILITY)
    known = stages[assessed] > 0
    result: dict[str, Any] = {
        "model": str(model_dir),
        "data": str(data),
        "masks": masks,
        "synthetic_data": read_data_manifest(data).get("synthetic"),
        "patients": len(patients),
        "assessed": int(assessed.sum()),
        "not_assessed": {
            "count": int((~assessed).sum()),
            "outcomes": dict(Counter(o for o in predictions.outcomes if o != PREDICTED)),
            "rule": "metrics cover the assessed patients only; all_cases_auc scores each "
            f"not-assessed patient {NOT_ASSESSED_PROBABILITY}",
            "all_cases_auc": roc_auc(labels, all_cases),
            "best_achievable_auc_all_cases": roc_auc(labels, truth) if known_truth else None,
        },
        "class_balance": class_balance(y),
        "threshold": options.threshold,
        "bootstrap_resamples": options.resamples,
        "metrics": {name: e.to_dict() for name, e in estimates.items()},
        "best_achievable_auc": best,
        "auc_gap_to_best": None if best is None else best - estimates["auc"].value,
        "stage_auc": stage_auc(stages[assessed][known], head[known]) if known.any() else None,
        "risk_stage": _risk_stage(model_dir, stages[assessed], probabilities, head),
        "expected_calibration_error": expected_calibration_error(y, probabilities),
        "report_text_share": float(np.mean([p.report_text is not None for p in patients])),
        "report_tokens": encoder.token_counts([p.report_text for p in patients]).to_dict(),
    }
    (out / "evaluation.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    _write_predictions(out / "predictions.csv", patients, predictions, result["risk_stage"])
    title = f"LLNM-Net on {data.name} ({int(assessed.sum())} patients, {masks} masks)"
    plot_roc(out / "roc.png", {"LLNM-Net": (y, probabilities)}, title, reference_auc=best)
    plot_calibration(out / "calibration.png", y, probabilities, title)
    plot_decision_curve(out / "decision_curve.png", y, probabilities, title)
    return result


def _write_predictions(
    path: Path,
    patients: list[Patient],
    predictions: CasePredictions,
    risk_stage: dict[str, Any] | None,
) -> None:
    head = predictions.stage_probabilities
    cuts = None if risk_stage is None else tuple(risk_stage["banding"]["cut_points"])
    served = StageMethod() if risk_stage is None else StageMethod.from_metrics(
        {"risk_stage": risk_stage["served"]}
    )  # fmt: skip
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        stage_columns = [f"stage_{k + 1}_probability" for k in range(head.shape[1])]
        writer.writerow(["case_id", "label", "outcome", "probability", "stage", "head_stage",
                         "banded_stage", *stage_columns])  # fmt: skip
        for patient, outcome, probability, row in zip(
            patients, predictions.outcomes, predictions.probabilities, head, strict=True
        ):
            if outcome != PREDICTED:
                writer.writerow([patient.case_id, patient.label, outcome])
                continue
            banded = "" if cuts is None else int(band([probability], (cuts[0], cuts[1]))[0])
            writer.writerow([patient.case_id, patient.label, outcome, f"{probability:.6f}",
                             served.stage(float(probability), row)[0], int(row.argmax()) + 1,
                             banded, *(f"{p:.6f}" for p in row)])  # fmt: skip
