"""Site validation: a bundle's results measured against the site's imported outcomes.

Cases
    Every study with an outcome (:mod:`db.outcomes`) and an answer of the
    bundle, live (``results``) or shadow (``shadow_results``), by bundle name
    (and version, when given; jobs created from a time on, when given); a
    study's newest job with one. Predicted cases enter the
    metrics; the others (not assessed by the scope gate, no nodule found) make
    the not-assessed rate, by reason.
Metrics (:mod:`models.llnm.evaluation`)
    AUC, sensitivity, specificity, PPV and NPV at the bundle's threshold, each
    with a 95 % patient-bootstrap interval (1,000 resamples); the expected
    calibration error (10 bins) with a reliability diagram, beside the error a
    perfectly calibrated model would show on as many cases (median and 95 %
    range over label draws: on 100 cases sampling alone gives about 0.09, 0.05-0.16);
    the decision curve;
    the ROC curve. Fewer than ``min_cases`` predicted cases, or a single class,
    give "too few cases" instead of a number.
Strata
    Read from each study's first received instance in the spool (the node's
    own copy): device manufacturer and model, sex, age band (< 30, 30-44,
    45-59, >= 60), and whether the image is calibrated (a Sequence of
    Ultrasound Regions in cm). A study whose files retention removed is
    "unknown". Each stratum gets the same metrics, or "too few cases".
Comparison (``vs``)
    The same studies' results of a second bundle: the paired AUC difference
    with a paired bootstrap interval, on the studies both predicted.
Output
    ``validation.json`` and a self-contained ``validation.html`` (plots
    embedded as PNG data) plus the PNG files, in ``out_dir``; identifiers of
    patients or studies appear in none of them (counts and stratum names only).
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from sqlalchemy import select
from sqlalchemy.orm import Session

from db.models import InstalledBundle, Instance, Job, Outcome, Result, ShadowResult
from models.llnm.evaluation import (
    bootstrap,
    calibration_error_if_calibrated,
    expected_calibration_error,
    roc_auc,
)
from models.llnm.evaluation_plots import plot_calibration, plot_decision_curve, plot_roc
from pipeline.spool import SpoolLayout

MIN_CASES = 20
CALIBRATION_DRAWS = 400  # label draws behind the perfectly calibrated reference
RESAMPLES = 1000
TOO_FEW = "too few cases"
_AGE_BANDS = ((30, "< 30"), (45, "30-44"), (60, "45-59"), (1000, ">= 60"))
_HEADER_TAGS = ["Manufacturer", "ManufacturerModelName", "PatientSex", "PatientAge",
                "SequenceOfUltrasoundRegions"]  # fmt: skip
UNKNOWN = "unknown"


@dataclass(frozen=True)
class ValidationCase:
    """One study: its outcome, the bundle's result, and its strata."""

    study_id: int
    llnm: bool
    outcome: str  # the result's outcome: predicted, not_assessed, no_nodule_found
    reason: str | None
    probability: float | None
    threshold: float
    strata: dict[str, str]


def _age_band(age: str) -> str:
    try:
        years = int(age[:3]) if age.endswith("Y") else None
    except ValueError:
        years = None
    if years is None:
        return UNKNOWN
    return next(label for limit, label in _AGE_BANDS if years < limit)


def study_strata(path: Path) -> dict[str, str]:
    """The strata of a study from one of its instances (module docstring)."""
    try:
        header = dcmread(path, stop_before_pixels=True, specific_tags=_HEADER_TAGS)
    except (OSError, InvalidDicomError, ValueError):
        return {k: UNKNOWN for k in ("device", "sex", "age", "calibrated")}
    device = " ".join(
        str(header.get(k, "") or "").strip() for k in ("Manufacturer", "ManufacturerModelName")
    ).strip()
    regions = header.get("SequenceOfUltrasoundRegions") or []
    calibrated = any(getattr(r, "PhysicalUnitsXDirection", None) == 3 for r in regions)
    sex = str(header.get("PatientSex", "") or "").strip()
    return {
        "device": device or UNKNOWN,
        "sex": sex if sex in ("F", "M") else UNKNOWN,
        "age": _age_band(str(header.get("PatientAge", "") or "")),
        "calibrated": "yes" if calibrated else "no",
    }


def _answers(
    session: Session, name: str, version: str | None, since: datetime | None
) -> list[tuple[Outcome, int, Any]]:
    """(outcome, job version, result) of every job the bundle answered, live or shadow."""
    live = (
        select(Outcome, Job.version, Result)
        .join(Job, Job.study_fk == Outcome.study_fk)
        .join(Result, Result.job_fk == Job.id)
        .where(Result.bundle_name == name)
    )
    shadow = (
        select(Outcome, Job.version, ShadowResult)
        .join(Job, Job.study_fk == Outcome.study_fk)
        .join(ShadowResult, ShadowResult.job_fk == Job.id)
        .join(InstalledBundle, InstalledBundle.id == ShadowResult.bundle_fk)
        .where(InstalledBundle.name == name)
    )
    if version is not None:
        live = live.where(Result.bundle_version == version)
        shadow = shadow.where(InstalledBundle.version == version)
    if since is not None:
        live = live.where(Job.created_at >= since)
        shadow = shadow.where(Job.created_at >= since)
    return [(o, v, r) for o, v, r in (*session.execute(live), *session.execute(shadow))]


def collect(
    session: Session,
    spool: SpoolLayout,
    bundle_name: str,
    *,
    version: str | None = None,
    since: datetime | None = None,
) -> list[ValidationCase]:
    """The validation cases of ``bundle_name`` (module docstring).

    Only its ``version``, and jobs created from ``since`` on, when given.
    """
    rows = sorted(
        _answers(session, bundle_name, version, since), key=lambda r: (r[0].study_fk, -r[1])
    )
    cases: dict[int, ValidationCase] = {}
    for outcome, _version, result in rows:
        if outcome.study_fk in cases:
            continue  # an older job of the same study
        first = session.scalars(
            select(Instance.path).where(Instance.study_fk == outcome.study_fk).order_by(Instance.id)
        ).first()
        cases[outcome.study_fk] = ValidationCase(
            study_id=outcome.study_fk,
            llnm=outcome.llnm,
            outcome=result.outcome,
            reason=result.reason,
            probability=result.probability,
            threshold=result.threshold if result.threshold is not None else 0.5,
            strata=study_strata(spool.root / first)
            if first
            else study_strata(Path("/nonexistent")),
        )
    return list(cases.values())


def metrics(cases: Sequence[ValidationCase], min_cases: int) -> dict[str, Any]:
    """The metrics of the predicted ``cases``, or why there are none."""
    predicted = [c for c in cases if c.probability is not None]
    labels = [c.llnm for c in predicted]
    out: dict[str, Any] = {"cases": len(cases), "predicted": len(predicted),
                           "positive": int(sum(labels))}  # fmt: skip
    if len(predicted) < min_cases or all(labels) or not any(labels):
        out["metrics"] = TOO_FEW
        return out
    probabilities = [float(c.probability or 0.0) for c in predicted]
    threshold = predicted[0].threshold
    estimates = bootstrap(labels, probabilities, threshold=threshold, resamples=RESAMPLES)
    out["threshold"] = threshold
    out["metrics"] = {
        name: {k: round(v, 4) for k, v in estimates[name].to_dict().items()}
        for name in ("auc", "sensitivity", "specificity", "ppv", "npv")
    }
    out["calibration_error"] = round(expected_calibration_error(labels, probabilities), 4)
    reference = calibration_error_if_calibrated(probabilities, draws=CALIBRATION_DRAWS)
    out["calibration_error_if_calibrated"] = {k: round(v, 4) for k, v in reference.items()}
    return out


def not_assessed(cases: Sequence[ValidationCase]) -> dict[str, Any]:
    """The share of cases without a probability, and the count per reason."""
    missing = [c for c in cases if c.probability is None]
    reasons: dict[str, int] = {}
    for case in missing:
        key = case.reason or case.outcome
        reasons[key] = reasons.get(key, 0) + 1
    rate = round(len(missing) / len(cases), 4) if cases else None
    return {"rate": rate, "count": len(missing), "by_reason": reasons}


def paired_difference(
    ours: Sequence[ValidationCase], theirs: Sequence[ValidationCase], min_cases: int
) -> dict[str, Any]:
    """AUC of ``ours`` minus ``theirs`` on the studies both predicted, paired bootstrap CI."""
    other = {c.study_id: c for c in theirs if c.probability is not None}
    pairs = [
        (c, other[c.study_id]) for c in ours if c.probability is not None and c.study_id in other
    ]
    labels = np.array([a.llnm for a, _ in pairs], dtype=bool)
    if len(pairs) < min_cases or labels.all() or not labels.any():
        return {"cases": len(pairs), "auc_difference": TOO_FEW}
    a = np.array([p.probability for p, _ in pairs], dtype=np.float64)
    b = np.array([q.probability for _, q in pairs], dtype=np.float64)
    rng = np.random.default_rng(0)
    diffs: list[float] = []
    while len(diffs) < RESAMPLES:
        idx = rng.integers(0, len(pairs), len(pairs))
        if labels[idx].all() or not labels[idx].any():
            continue
        diffs.append(roc_auc(labels[idx], a[idx]) - roc_auc(labels[idx], b[idx]))
    value = roc_auc(labels, a) - roc_auc(labels, b)
    low, high = np.percentile(diffs, [2.5, 97.5])
    return {"cases": len(pairs), "auc_difference": {"value": round(value, 4),
            "low": round(float(low), 4), "high": round(float(high), 4)}}  # fmt: skip


def _strata(cases: Sequence[ValidationCase], min_cases: int) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for key in ("device", "sex", "age", "calibrated"):
        groups: dict[str, list[ValidationCase]] = {}
        for case in cases:
            groups.setdefault(case.strata[key], []).append(case)
        out[key] = {name: metrics(group, min_cases) for name, group in sorted(groups.items())}
    return out


def validate(
    cases: Sequence[ValidationCase],
    bundle_name: str,
    out_dir: Path,
    *,
    min_cases: int = MIN_CASES,
    versus: tuple[str, Sequence[ValidationCase]] | None = None,
) -> dict[str, Any]:
    """Write the report of ``cases`` into ``out_dir``; returns what ``validation.json`` holds."""
    out_dir.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "bundle": bundle_name,
        "overall": metrics(cases, min_cases),
        "not_assessed": not_assessed(cases),
        "strata": _strata(cases, min_cases),
        "min_cases": min_cases,
        "plots": [],
    }
    if versus is not None:
        report["versus"] = {"bundle": versus[0], **paired_difference(cases, versus[1], min_cases)}
    predicted = [c for c in cases if c.probability is not None]
    if isinstance(report["overall"]["metrics"], dict):
        labels = [c.llnm for c in predicted]
        scores = [float(c.probability or 0.0) for c in predicted]
        title = f"{bundle_name} on this site's outcomes"
        plots: list[tuple[str, Callable[[Path], Path]]] = [
            ("roc.png", lambda p: plot_roc(p, {bundle_name: (labels, scores)}, title)),
            ("calibration.png", lambda p: plot_calibration(p, labels, scores, title)),
            ("decision_curve.png", lambda p: plot_decision_curve(p, labels, scores, title)),
        ]
        for name, draw in plots:
            draw(out_dir / name)
            report["plots"].append(name)
    (out_dir / "validation.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (out_dir / "validation.html").write_text(render_html(report, out_dir), encoding="utf-8")
    return report


def _cell(entry: dict[str, Any]) -> str:
    found = entry["metrics"]
    if not isinstance(found, dict):
        return f"<td colspan='3'>{html.escape(str(found))} ({entry['predicted']} predicted)</td>"
    auc = found["auc"]
    reference = entry["calibration_error_if_calibrated"]
    return (
        f"<td>{entry['predicted']} ({entry['positive']} positive)</td>"
        f"<td>{auc['value']:.3f} ({auc['low']:.3f}-{auc['high']:.3f})</td>"
        f"<td>{entry['calibration_error']} (calibrated: {reference['median']:.3f}, "
        f"{reference['low']:.3f}-{reference['high']:.3f})</td>"
    )


def render_html(report: dict[str, Any], out_dir: Path) -> str:
    """One self-contained page: the numbers, the strata and the plots (embedded)."""
    e = html.escape
    overall = report["overall"]
    rows = [f"<tr><th>all</th>{_cell(overall)}</tr>"]
    for key, groups in report["strata"].items():
        rows += [f"<tr><th>{e(key)}: {e(name)}</th>{_cell(g)}</tr>" for name, g in groups.items()]
    details = ""
    if isinstance(overall["metrics"], dict):
        details = (
            "<ul>"
            + "".join(
                f"<li>{e(name)} at {overall['threshold']}: {m['value']:.3f} "
                f"({m['low']:.3f}-{m['high']:.3f})</li>"
                for name, m in overall["metrics"].items()
            )
            + "</ul>"
        )
    missing = report["not_assessed"]
    versus = ""
    if "versus" in report:
        against = report["versus"]
        versus = f"<h2>Against {e(against['bundle'])}</h2><p>{e(json.dumps(against))}</p>"
    images = "".join(
        f"<figure><img alt='{e(name)}' src='data:image/png;base64,"
        f"{base64.b64encode((out_dir / name).read_bytes()).decode()}'></figure>"
        for name in report["plots"]
    )
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>Site validation of {e(report['bundle'])}</title></head><body>"
        f"<h1>Site validation of {e(report['bundle'])}</h1>"
        f"<p>{overall['cases']} studies with an outcome and a result; "
        f"{overall['predicted']} predicted; not assessed {missing['count']} "
        f"({e(json.dumps(missing['by_reason']))}).</p>{details}"
        "<table><thead><tr><th>stratum</th><th>predicted</th><th>AUC (95 % CI)</th>"
        f"<th>calibration error</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
        f"{versus}{images}</body></html>\n"
    )
