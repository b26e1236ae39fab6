"""The model card: intervals checked against known values and simulation, the demo bundle's card."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from test_cli import invoke

from models.bundle import MANIFEST_FILE, Manifest
from models.demo import DEMO_BUNDLE_DIR
from models.model_card import auc_interval, bundle_card, model_card, wilson_interval
from phantoms.labels import roc_auc


def test_wilson_interval_matches_the_textbook_value() -> None:
    low, high = wilson_interval(8, 10)  # Newcombe (1998), 8 of 10
    assert (round(low, 3), round(high, 3)) == (0.490, 0.943)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_the_auc_interval_covers_like_the_auc_varies() -> None:
    """Hanley-McNeil's width against the spread of AUCs over simulated binormal samples."""
    rng = np.random.default_rng(0)
    aucs = []
    for _ in range(400):
        positives, negatives = rng.normal(1.2, 1, 120), rng.normal(0, 1, 100)
        scores = np.concatenate([positives, negatives]).tolist()
        aucs.append(roc_auc(scores, [True] * 120 + [False] * 100))
    low, high = auc_interval(float(np.mean(aucs)), 120, 100)
    assert (high - low) / (2 * 1.96) == pytest.approx(float(np.std(aucs)), rel=0.2)


def test_the_demo_bundles_card() -> None:
    card = bundle_card(DEMO_BUNDLE_DIR)
    assert card.label == "NOT FOR CLINICAL USE" and card.title.startswith("llnm-demo")
    text = card.markdown()
    manifest = json.loads((DEMO_BUNDLE_DIR / MANIFEST_FILE).read_text())
    auc = manifest["metrics"]["llnm"]["best_val_auc"]
    assert f"LLNM AUC (validation) | {auc:.3f} (95 % CI " in text
    sections = {s.title: dict(s.rows) for s in card.sections}
    assert set(sections) >= {"Intended use", "Lineage", "Training data", "Validation metrics",
                             "Scope gate", "Population risk map", "Known limitations"}  # fmt: skip
    assert "synthetic phantoms only" in text and "English" in text
    assert sections["Population risk map"]["Built from"].startswith("1000 cases")
    assert sections["Scope gate"]["Nodule confidence"].startswith(">= ")


def test_a_real_data_bundle_has_no_label_and_names_its_parent() -> None:
    manifest = Manifest(**json.loads((DEMO_BUNDLE_DIR / MANIFEST_FILE).read_text()))
    site = dataclasses.replace(
        manifest,
        training_data={
            **manifest.training_data,
            "synthetic": False,
            "parent": {"name": "site", "version": "1.0", "manifest_sha256": "ab12" * 16},
            "site_calibration": {
                "method": "platt",
                "cases": 200,
                "positives": 90,
                "threshold": 0.41,
            },
        },
        metrics={k: v for k, v in manifest.metrics.items() if k != "scope"},
    )
    card = model_card(site)
    assert card.label is None
    rows = {s.title: dict(s.rows) for s in card.sections}
    assert rows["Lineage"]["Parent bundle"] == "site 1.0 (manifest SHA-256 ab12ab12ab12ab12...)"
    assert rows["Training data"]["Site recalibration"].startswith("platt on 200 site cases")
    assert "no fitted statistics" in rows["Scope gate"]["Scope gate"]
    assert rows["Population risk map"]["Population risk map"] == "none in this bundle"
    limitations = " ".join(rows["Known limitations"].values())
    assert "synthetic" not in limitations and "Not recalibrated" not in limitations


def test_bundle_show_prints_the_card() -> None:
    code, output = invoke("bundle", "show", str(DEMO_BUNDLE_DIR), "--markdown")
    assert code == 0 and "## Known limitations" in output and "95 % CI" in output
    code, output = invoke("bundle", "show", "/nonexistent-bundle")
    assert code == 1 and "no model card" in output
