"""A new bundle version recalibrated on the site's outcomes (``llnm-node calibrate``).

The cases are those of site validation (:func:`dicom_node.app.site_validation.collect`):
studies with an imported outcome and a predicted answer (live or shadow) of the source
bundle's name and version. One calibration step (:mod:`models.calibration`) is fitted
on their served probabilities and appended to the source's steps; a held-out share
(``holdout``) measures it on cases it was not fitted on. The copy gets the new version,
its manifest records the parent (name, version, SHA-256 of its manifest), the site data
summary (counts only) and the chosen threshold, and is sealed. It is a new folder:
install it (``llnm-node bundle install``, in shadow) or point ``model.bundle_dir`` at it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dicom_node.app.site_validation import ValidationCase
from models.bundle import MANIFEST_FILE, reseal_bundle, verify_bundle
from models.calibration import (
    Method,
    fit,
    load_calibration,
    save_calibration,
    threshold_for_sensitivity,
)
from models.llnm.evaluation import expected_calibration_error

MIN_CALIBRATION_CASES = 20


def calibrate_bundle(
    source: Path,
    out: Path,
    cases: Sequence[ValidationCase],
    *,
    method: Method,
    version: str,
    target_sensitivity: float | None = None,
    holdout: float = 0.0,
    seed: int = 0,
) -> dict[str, Any]:
    """Write the recalibrated copy of ``source`` to ``out``; returns its calibration summary.

    With ``holdout`` that share of the predicted cases (seeded) is kept out of the
    fit and the summary gives the calibration error on them before and after.

    Raises
    ------
    ValueError
        If ``out`` exists, or there are too few predicted cases or one class only.
    BundleError
        If ``source`` is not a sealed bundle.
    """
    manifest = verify_bundle(source)
    if out.exists():
        raise ValueError(f"{out} exists; the new bundle needs a new folder")
    predicted = [c for c in cases if c.probability is not None]
    held: list[ValidationCase] = []
    if holdout > 0:
        order = np.random.default_rng(seed).permutation(len(predicted))
        cut = round(len(predicted) * holdout)
        held = [predicted[i] for i in order[:cut]]
        predicted = [predicted[i] for i in order[cut:]]
    labels = np.array([c.llnm for c in predicted], dtype=bool)
    if len(predicted) < MIN_CALIBRATION_CASES or labels.all() or not labels.any():
        raise ValueError(
            f"{len(predicted)} predicted cases with outcomes; calibration needs "
            f"{MIN_CALIBRATION_CASES} with both outcomes"
        )
    served = np.array([c.probability for c in predicted], dtype=np.float64)
    step = fit(method, served, labels)
    calibrated = step.apply(served)
    threshold = (
        0.5
        if target_sensitivity is None
        else threshold_for_sensitivity(calibrated, labels, target_sensitivity)
    )
    summary: dict[str, Any] = {
        "method": method,
        "cases": len(predicted),
        "positives": int(labels.sum()),
        "target_sensitivity": target_sensitivity,
        "threshold": round(threshold, 4),
        "calibration_error_before": round(expected_calibration_error(labels, served), 4),
        "calibration_error_after_in_sample": round(
            expected_calibration_error(labels, calibrated), 4
        ),
    }
    if held:
        held_labels = np.array([c.llnm for c in held], dtype=bool)
        held_served = np.array([c.probability for c in held], dtype=np.float64)
        summary["held_out"] = {
            "cases": len(held),
            "positives": int(held_labels.sum()),
            "seed": seed,
            "calibration_error_before": round(
                expected_calibration_error(held_labels, held_served), 4
            ),
            "calibration_error_after": round(
                expected_calibration_error(held_labels, step.apply(held_served)), 4
            ),
        }
    parent_sha = hashlib.sha256((source / MANIFEST_FILE).read_bytes()).hexdigest()
    shutil.copytree(source, out)
    save_calibration(out, (*load_calibration(source).steps, step))
    data = json.loads((out / MANIFEST_FILE).read_text(encoding="utf-8"))
    data["version"] = version
    data["training_data"] = {
        **data["training_data"],
        "parent": {
            "name": manifest.name,
            "version": manifest.version,
            "manifest_sha256": parent_sha,
        },
        "site_calibration": summary,
    }
    data["metrics"].setdefault("llnm", {})["threshold"] = round(threshold, 4)
    (out / MANIFEST_FILE).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    reseal_bundle(out)
    return summary
