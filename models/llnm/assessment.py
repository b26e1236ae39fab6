"""Evaluate a trained LLNM-Net on a data set: metrics with bootstrap CIs, per-stage AUC, plots.

``assess(model_dir, data, out)`` writes::

    out/evaluation.json     AUC, sensitivity, specificity, accuracy, PPV, NPV with 95 %
                            bootstrap CIs (patient resampling), per-stage AUC, calibration
                            error, class balance, and the best achievable AUC when the data
                            carry true probabilities (phantoms), report token counts
                            and [UNK] rate
    out/predictions.csv     case id, label, probability, stage, stage probabilities
    out/roc.png, calibration.png, decision_curve.png
    out/features-<S>.safetensors (+.json)   the extracted features
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.llnm.dataset import build_features, read_data_manifest, read_patients
from models.llnm.evaluation import (
    bootstrap,
    expected_calibration_error,
    roc_auc,
    stage_auc,
)
from models.llnm.evaluation_plots import plot_calibration, plot_decision_curve, plot_roc
from models.llnm.text import TextEncoder
from models.llnm.training import ReportTokens, class_balance, predict
from models.llnm.weights import load_tmdl
from models.segmentation.segmenter import select_device


@dataclass(frozen=True)
class AssessOptions:
    """How to evaluate."""

    threshold: float = 0.5
    resamples: int = 1000
    seed: int = 0
    progress: bool = True
    text_encoder: Path | None = None


def assess(model_dir: Path, data: Path, out: Path, options: AssessOptions) -> dict[str, Any]:
    """Evaluate the model in ``model_dir`` on every patient of ``data``; write ``out``.

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
    features = out / f"features-{config.image_size}.safetensors"
    table = build_features(patients, config.image_size, progress=options.progress)
    table.save(features)
    encoder = TextEncoder(options.text_encoder, torch.device("cpu"), config.text_tokens)
    text = ReportTokens.encode(table.reports, encoder)
    probabilities, stage_probabilities = predict(model, table, text, device)
    labels = table.labels
    estimates = bootstrap(
        labels,
        probabilities,
        threshold=options.threshold,
        resamples=options.resamples,
        seed=options.seed,
        progress=options.progress,
    )
    truths = [p.true_probability for p in patients]
    best = roc_auc(labels, np.array(truths)) if all(t is not None for t in truths) else None
    known = table.stages > 0
    result: dict[str, Any] = {
        "model": str(model_dir),
        "data": str(data),
        "synthetic_data": read_data_manifest(data).get("synthetic"),
        "patients": len(table),
        "class_balance": class_balance(labels),
        "threshold": options.threshold,
        "bootstrap_resamples": options.resamples,
        "metrics": {name: e.to_dict() for name, e in estimates.items()},
        "best_achievable_auc": best,
        "auc_gap_to_best": None if best is None else best - estimates["auc"].value,
        "stage_auc": stage_auc(table.stages[known], stage_probabilities[known])
        if known.any()
        else None,
        "expected_calibration_error": expected_calibration_error(labels, probabilities),
        "report_text_share": float(text.present.float().mean()),
        "report_tokens": encoder.token_counts(table.reports).to_dict(),
    }
    (out / "evaluation.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    _write_predictions(out / "predictions.csv", table.case_ids, labels, probabilities,
                       stage_probabilities)  # fmt: skip
    title = f"LLNM-Net on {data.name} ({len(table)} patients)"
    plot_roc(out / "roc.png", {"LLNM-Net": (labels, probabilities)}, title, reference_auc=best)
    plot_calibration(out / "calibration.png", labels, probabilities, title)
    plot_decision_curve(out / "decision_curve.png", labels, probabilities, title)
    return result


def _write_predictions(
    path: Path,
    case_ids: tuple[str, ...],
    labels: np.ndarray[Any, Any],
    probabilities: np.ndarray[Any, Any],
    stage_probabilities: np.ndarray[Any, Any],
) -> None:
    stages = stage_probabilities.shape[1]
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["case_id", "label", "probability", "stage",
                         *(f"stage_{k + 1}_probability" for k in range(stages))])  # fmt: skip
        for case_id, label, probability, row in zip(
            case_ids, labels, probabilities, stage_probabilities, strict=True
        ):
            writer.writerow([case_id, int(label), f"{probability:.6f}", int(row.argmax()) + 1,
                             *(f"{p:.6f}" for p in row)])  # fmt: skip
