"""LLNM-Net data, training and evaluation on phantom data sets (tiny model, CPU)."""

from __future__ import annotations

import csv
import json
import struct
from dataclasses import replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from dicom_node.cli.main import app
from models.checkpoints import load_checkpoint
from models.llnm.config import TMDLConfig
from models.llnm.dataset import (
    FeatureTable,
    build_features,
    csv_path,
    read_patients,
    split_patients,
)
from models.llnm.tmdl import TMDL
from models.llnm.training import RISK_TERMS_LR_SCALE, TMDLTrainOptions
from models.llnm.view_inputs import letterbox
from models.llnm.weights import load_tmdl
from phantoms import export_phantoms

runner = CliRunner()
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("llnm-phantoms")
    export_phantoms(out, n=30, seed=7)
    return out


def png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == PNG_SIGNATURE
    width, height = struct.unpack(">II", head[16:24])
    return width, height


def test_letterbox_keeps_the_aspect_ratio() -> None:
    values = np.ones((10, 40), dtype=np.float32)
    boxed = letterbox(values, 32, cv2.INTER_AREA)
    rows = np.nonzero(boxed.any(axis=1))[0]
    assert boxed.shape == (32, 32) and len(rows) == 8 and boxed[rows].all()
    with pytest.raises(ValueError, match="cannot letterbox"):
        letterbox(np.zeros((0, 4), dtype=np.float32), 32, cv2.INTER_AREA)


def test_phantom_csv_reads_as_patients_and_splits_by_patient(phantoms: Path) -> None:
    patients = read_patients(phantoms)
    assert len(patients) == 30 and csv_path(phantoms).parent.name == "dataset"
    first = patients[0]
    assert first.label in (0, 1) and first.stage in (1, 2, 3) and first.sex in ("F", "M")
    assert all(v is not None and v.mm_per_pixel is not None for v in first.views)
    assert first.true_probability is not None
    train, val = split_patients(patients, 0.3, seed=1)
    assert {p.case_id for p in train}.isdisjoint(p.case_id for p in val)
    assert {p.label for p in val} == {0, 1} and len(train) + len(val) == 30
    assert split_patients(patients, 0.3, seed=1) == (train, val)


def test_site_csv_with_a_missing_view_and_bad_rows(phantoms: Path, tmp_path: Path) -> None:
    source = csv_path(phantoms)
    with source.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    rows[0]["longitudinal_image"] = ""
    rows[0]["report_text"] = ""
    rows[0]["sex"] = ""
    site = tmp_path / "site"
    site.mkdir()
    for folder in ("images", "masks"):
        (site / folder).symlink_to(source.parent / folder)
    with (site / "cases.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows[:4])
    patients = read_patients(site)
    assert patients[0].views[1] is None and patients[0].report_text is None
    assert patients[0].sex is None
    table = build_features(patients, 16, progress=False)
    assert table.arrays["view_mask"][0].tolist() == [True, False]
    assert table.arrays["sex"][0] == 0.0 and table.reports[0] is None
    rows[1]["llnm_label"] = "maybe"
    with (site / "cases.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows[:4])
    with pytest.raises(ValueError, match="line 3"):
        read_patients(site)


def test_feature_table_round_trips_through_safetensors(phantoms: Path, tmp_path: Path) -> None:
    table = build_features(read_patients(phantoms)[:5], 16, progress=False)
    assert table.arrays["location"].shape == (5, 2, 16, 16)
    assert table.arrays["view_mask"].all()
    assert (table.arrays["texture"].max(axis=(2, 3)) > 0.5).all()
    assert (table.arrays["location"] >= 0).all() and (table.arrays["location"] <= 1).all()
    table.save(tmp_path / "f.safetensors")
    loaded = FeatureTable.load(tmp_path / "f.safetensors")
    assert loaded.case_ids == table.case_ids and loaded.reports == table.reports
    for name, values in table.arrays.items():
        np.testing.assert_array_equal(loaded.arrays[name], values)
    assert not list(tmp_path.glob("*.pkl")) and not list(tmp_path.glob("*.pt"))


def train(data: Path, out: Path, *args: str) -> dict[str, Any]:
    result = runner.invoke(
        app,
        ["train", "--data", str(data), "--out", str(out), "--batch-size", "8",
         "--val-fraction", "0.3", *args],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return dict(json.loads((out / "metrics.json").read_text()))


def test_train_writes_a_run_resumes_and_evaluates(phantoms: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    metrics = train(phantoms, out, "--epochs", "2", "--seed", "3", "--half")
    names = {p.name for p in out.iterdir()}
    assert {"model.safetensors", "config.json", "metrics.json", "training_curve.png",
            "validation_roc.png", "validation_calibration.png", "checkpoint",
            "features-32.safetensors", "features-32.json"} <= names  # fmt: skip
    assert not {p.suffix for p in out.rglob("*")} & {".pt", ".pth", ".pkl", ".ckpt"}
    assert [row["epoch"] for row in metrics["history"]] == [1, 2]
    assert all(0.0 <= row["val_auc"] <= 1.0 for row in metrics["history"])
    split = metrics["split"]
    assert split["train_patients"] + split["val_patients"] == 30
    assert split["val_balance"]["positive"] > 0 and split["val_balance"]["negative"] > 0
    assert metrics["training_data"]["synthetic"] is True
    assert metrics["text_encoder"]["width"] == 384
    stage = metrics["risk_stage"]  # the method the model serves, decided on validation
    assert stage["method"] in ("head", "banding") and len(stage["fitted_cut_points"]) == 2
    validation = stage["validation"]
    assert validation["cases"] == split["val_patients"]
    banding_wins = (
        validation["banding_cross_fitted_agreement"] > validation["head"]["exact_agreement"]
    )
    assert (stage["method"] == "banding") == banding_wins
    assert png_size(out / "validation_roc.png") == (600, 500)

    resumed = train(phantoms, out, "--epochs", "3", "--seed", "3", "--half", "--resume")
    assert [row["epoch"] for row in resumed["history"]] == [1, 2, 3]
    assert resumed["history"][:2] == metrics["history"]
    assert load_checkpoint(out / "checkpoint").trainer["epoch"] == 3
    model, config = load_tmdl(out, torch.device("cpu"))
    assert config.size == "tiny" and not model.training

    evaluation = tmp_path / "eval"
    result = runner.invoke(
        app,
        ["evaluate", "--model", str(out), "--data", str(phantoms), "--out", str(evaluation),
         "--resamples", "50"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "95% CI" in result.output and "best achievable AUC" in result.output
    report = json.loads((evaluation / "evaluation.json").read_text())
    for name in ("auc", "sensitivity", "specificity", "accuracy", "ppv", "npv"):
        estimate = report["metrics"][name]
        if not np.isnan(estimate["value"]):
            assert estimate["low"] <= estimate["value"] <= estimate["high"]
    assert 0.5 < report["best_achievable_auc"] <= 1.0
    assert report["patients"] == 30 and report["bootstrap_resamples"] == 50
    assert set(report["stage_auc"]) >= {"mean"}
    assert report["masks"] == "dataset" and report["not_assessed"]["count"] == 0
    assert report["risk_stage"]["cut_points_from"] == "training validation cases"
    assert report["risk_stage"]["served"]["method"] == resumed["risk_stage"]["method"]
    assert report["risk_stage"]["head"]["auc"] == report["stage_auc"]
    for plot in ("roc.png", "calibration.png", "decision_curve.png"):
        assert png_size(evaluation / plot) == (600, 500)
    with (evaluation / "predictions.csv").open() as handle:
        predictions = list(csv.DictReader(handle))
    assert len(predictions) == 30 and 0.0 <= float(predictions[0]["probability"]) <= 1.0


def test_train_refuses_a_missing_data_set(tmp_path: Path) -> None:
    result = runner.invoke(app, ["train", "--data", str(tmp_path), "--out", str(tmp_path / "o")])
    assert result.exit_code == 1 and "cases.csv" in result.output


def test_an_ablation_run_keeps_its_withheld_inputs_through_resume(
    phantoms: Path, tmp_path: Path
) -> None:
    out = tmp_path / "no-report"
    train(phantoms, out, "--epochs", "1", "--withhold", "report", "--withhold", "location")
    assert json.loads((out / "config.json").read_text())["withheld"] == ["report", "location"]
    resumed = train(phantoms, out, "--epochs", "2", "--withhold", "report", "--withhold",
                    "location", "--resume")  # fmt: skip
    assert [row["epoch"] for row in resumed["history"]] == [1, 2]
    _, config = load_tmdl(out, torch.device("cpu"))
    assert config.withheld == ("report", "location")
    refused = runner.invoke(app, ["train", "--data", str(phantoms), "--out", str(tmp_path / "x"),
                                  "--withhold", "pixels"])  # fmt: skip
    assert refused.exit_code == 1 and "cannot withhold" in refused.output


def test_report_length_is_a_training_option(phantoms: Path, tmp_path: Path) -> None:
    out = tmp_path / "short-reports"
    train(phantoms, out, "--epochs", "1", "--text-tokens", "16")
    _, config = load_tmdl(out, torch.device("cpu"))
    assert config.text_tokens == 16 and config.size == "tiny"
    assert json.loads((out / "config.json").read_text())["text_tokens"] == 16


def test_the_risk_terms_learn_faster_than_the_transformer() -> None:
    options = TMDLTrainOptions(learning_rate=1e-4)
    model = TMDL(TMDLConfig())
    assert model.risk_terms is not None
    groups = options.optimizer(model).param_groups
    assert [g["lr"] for g in groups] == [1e-4, 1e-4 * RISK_TERMS_LR_SCALE]
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in model.risk_terms.parameters()}
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    without = options.optimizer(TMDL(replace(TMDLConfig(), risk_terms=False))).param_groups
    assert [g["lr"] for g in without] == [1e-4]
