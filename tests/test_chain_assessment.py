"""``llnm-node evaluate --segment-with``: the demo bundle's whole chain on a few phantom studies."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dicom_node.cli.main import app
from models.demo import DEMO_BUNDLE_DIR
from phantoms import export_phantoms
from pipeline.offline import OfflineModels, run_study

runner = CliRunner()
MODEL = DEMO_BUNDLE_DIR / "llnm"


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("chain-phantoms")
    summary = export_phantoms(out, n=6, seed=97)
    assert 0 < summary.positives < 6
    return out


def _evaluate(data: Path, out: Path, *extra: str) -> dict[str, object]:
    result = runner.invoke(
        app,
        ["evaluate", "--model", str(MODEL), "--data", str(data), "--out", str(out),
         "--resamples", "20", *extra],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return dict(json.loads((out / "evaluation.json").read_text()))


def test_evaluate_runs_the_production_chain_from_dicom(phantoms: Path, tmp_path: Path) -> None:
    chain = _evaluate(phantoms, tmp_path / "chain", "--segment-with", str(DEMO_BUNDLE_DIR))
    masks = _evaluate(phantoms, tmp_path / "masks")
    assert chain["masks"] == f"predicted by {DEMO_BUNDLE_DIR}" and masks["masks"] == "dataset"
    not_assessed = chain["not_assessed"]
    assert isinstance(not_assessed, dict)
    assert chain["assessed"] == 6 - not_assessed["count"] and chain["patients"] == 6
    assert 0.0 <= not_assessed["all_cases_auc"] <= 1.0
    stage = chain["risk_stage"]
    assert isinstance(stage, dict) and stage["served"]["method"] == "head"
    assert set(stage["head"]["auc"]) == {"stage_1", "stage_2", "stage_3", "mean"}
    with (tmp_path / "chain" / "predictions.csv").open() as handle:
        rows = {r["case_id"]: r for r in csv.DictReader(handle)}
    assert len(rows) == 6
    # The probability is the one the node's own chain gives the study.
    case = sorted(p for p in (phantoms / "dicom").iterdir())[0]
    outcome = run_study(sorted(case.glob("*.dcm")), tmp_path / "work", OfflineModels.load(
        DEMO_BUNDLE_DIR))  # fmt: skip
    row = rows[case.name]
    assert row["outcome"] == outcome.outcome
    if outcome.probability is not None:
        assert float(row["probability"]) == pytest.approx(outcome.probability, abs=1e-5)
        assert int(row["head_stage"]) == int(row["stage"])  # the demo bundle serves the head


def test_evaluate_through_the_chain_needs_the_dicom_studies(phantoms: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(phantoms / "dataset", data)  # no dicom/ beside it
    result = runner.invoke(
        app,
        ["evaluate", "--model", str(MODEL), "--data", str(data), "--out", str(tmp_path / "e"),
         "--segment-with", str(DEMO_BUNDLE_DIR)],
    )  # fmt: skip
    assert result.exit_code != 0 and "no DICOM study" in result.output
