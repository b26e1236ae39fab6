"""Site validation: phantom studies through a real node, outcomes imported, the report read back."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from harness import write_toml
from test_cli import invoke
from test_imaging_jobs import finished_jobs, send

from dicom_node.app.node import Node
from dicom_node.app.site_validation import TOO_FEW, ValidationCase, validate
from phantoms import make_case
from phantoms.dataset_export import case_seed

Factory = Callable[..., Node]
STUDIES = 12


def _case(study_id: int, llnm: bool, probability: float | None, **strata: str) -> ValidationCase:
    return ValidationCase(
        study_id=study_id,
        llnm=llnm,
        outcome="predicted" if probability is not None else "not_assessed",
        reason=None if probability is not None else "colour_doppler",
        probability=probability,
        threshold=0.5,
        strata={"device": "GE", "sex": "F", "age": "45-59", "calibrated": "yes", **strata},
    )


def test_the_report_has_intervals_strata_plots_and_says_too_few(tmp_path: Path) -> None:
    cases = [_case(i, i % 2 == 0, 0.8 if i % 2 == 0 else 0.3) for i in range(30)]
    cases[0] = _case(0, True, 0.2)  # one miss
    cases += [_case(30 + i, False, 0.1, device="Aloka") for i in range(3)]
    cases.append(_case(40, True, None))
    report = validate(cases, "site-a", tmp_path / "report", min_cases=10)
    overall = report["overall"]
    assert overall["cases"] == 34 and overall["predicted"] == 33
    auc = overall["metrics"]["auc"]
    assert auc["low"] <= auc["value"] <= auc["high"] and auc["value"] > 0.9
    assert report["not_assessed"] == {"rate": round(1 / 34, 4), "count": 1,
                                      "by_reason": {"colour_doppler": 1}}  # fmt: skip
    assert report["strata"]["device"]["Aloka"]["metrics"] == TOO_FEW
    assert isinstance(report["strata"]["device"]["GE"]["metrics"], dict)
    page = (tmp_path / "report" / "validation.html").read_text()
    assert page.count("data:image/png;base64,") == 3 and "src='http" not in page
    assert {p.name for p in (tmp_path / "report").glob("*.png")} == {
        "roc.png",
        "calibration.png",
        "decision_curve.png",
    }
    same = validate(cases, "site-a", tmp_path / "vs", min_cases=10, versus=("site-a", cases))
    assert same["versus"]["auc_difference"] == {"value": 0.0, "low": 0.0, "high": 0.0}


def test_validate_reads_a_nodes_results_and_imported_outcomes(
    node_factory: Factory, tmp_path: Path
) -> None:
    node = node_factory()
    cases = [make_case(case_seed(41, i)) for i in range(STUDIES)]
    for i, case in enumerate(cases):
        send(node, list(case.datasets), tmp_path / f"study{i}")
    jobs = finished_jobs(node, STUDIES, timeout=240)
    assert all(j.state == "done" for j in jobs), jobs
    outcomes = tmp_path / "outcomes.csv"
    rows = [f"{c.datasets[0].AccessionNumber},{'yes' if c.llnm_label else 'no'}" for c in cases]
    outcomes.write_text("accession_number,llnm\n" + "\n".join(rows) + "\n")
    settings = node.settings
    config = write_toml(
        tmp_path / "node.toml",
        {"data_dir": settings.data_dir, "database_url": settings.resolved_database_url},
    )
    code, output = invoke("outcomes", "import", str(outcomes), "--config", str(config))
    assert code == 0 and f"{STUDIES} new" in output, output
    code, output = invoke(
        "validate", "--bundle", "llnm-demo", "--min-cases", "5", "--config", str(config)
    )
    assert code == 0, output
    report = json.loads(
        (settings.data_dir / "validation" / "llnm-demo" / "validation.json").read_text()
    )
    overall = report["overall"]
    assert overall["cases"] == STUDIES
    assert overall["predicted"] + report["not_assessed"]["count"] == STUDIES
    labels = sum(c.llnm_label for c in cases)
    assert 0 < labels < STUDIES and isinstance(overall["metrics"], dict), report
    assert set(report["strata"]["calibrated"]) == {"yes"}  # phantoms carry US regions
    assert set(report["strata"]["sex"]) <= {"F", "M"}
    text = (settings.data_dir / "validation" / "llnm-demo" / "validation.html").read_text()
    assert str(cases[0].datasets[0].AccessionNumber) not in text
    assert str(cases[0].datasets[0].PatientID) not in text
    code, output = invoke("validate", "--bundle", "no-such", "--config", str(config))
    assert code == 1 and "nothing to validate" in output
