"""The scope gate on data it was not fitted on: vendor files, in-scope phantoms, variants, shifts.

Every study goes through the production stage functions from its DICOM files
(:func:`pipeline.offline.run_study`: intake, de-identification, crop, segment,
features, infer) with the bundle's scope gate on, and, for the AUC
comparisons, once more with the model-level gate off. The demo bundle's scope
statistics were fitted on phantoms of seed 1; everything here uses other seeds.

1. Every ultrasound file of ``pydicom-data``, each its own study: the outcome
   and reason of each (none may get a probability), with the default rules and
   with the built-in deny list off (a site that accepts every exam type: then
   the region, pixel and model checks must decline them).
2. In-scope phantoms of held-out seeds (default 97, 98, 99; grey with regions,
   RGB, and without regions in turn): the share
   assessed and the AUC of the gated predictions on the assessed cases against
   the ungated AUC on all cases, per seed, with bootstrap 95 % CIs.
3. Out-of-scope variants (:mod:`phantoms.out_of_scope`): the share not
   assessed and the reasons, per kind.
4. Graded shift (gain, speckle size, depth) by severity: the share not
   assessed, the AUC of what was still assessed, and the ungated AUC of all.

Run::

    .venv/bin/python benchmarks/scope_gate.py [--cases 60] [--variant-cases 20]
        [--shift-cases 40] [--seeds 97 98 99] [--bundle models/demo_bundle]
        [--out benchmarks/out/scope_gate.json]

``--out`` also writes ``scope_gate_shift.png`` beside the JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from pydicom import Dataset, dcmread
from rich.console import Console
from rich.progress import track
from rich.table import Table

from imaging.scope import ScopeRules
from models.demo import DEMO_BUNDLE_DIR
from models.llnm.evaluation import bootstrap
from phantoms import ENCODINGS, PhantomOptions, make_case
from phantoms.dataset_export import case_seed
from phantoms.out_of_scope import VARIANTS, make_variant, shifted_options
from pipeline.infer import PREDICTED
from pipeline.offline import OfflineModels, StudyOutcome, run_study, vendor_files, write_study
from pipeline.scope import NOT_ASSESSED

SEVERITIES = (0.0, 0.33, 0.67, 1.0)
SHIFTS = ("gain", "speckle", "depth")
console = Console()


class Runner:
    """Runs studies gated and ungated in a scratch folder."""

    def __init__(self, bundle: Path, scratch: Path) -> None:
        self.gated = OfflineModels.load(bundle)
        self.ungated = OfflineModels.load(bundle, gate=False)
        self.open = dataclasses.replace(
            self.gated, rules=ScopeRules.from_mapping({"default_deny": False})
        )
        self.scratch = scratch
        self.count = 0

    def run(
        self, datasets: Sequence[Dataset], *, gate: bool = True, deny: bool = True
    ) -> StudyOutcome:
        """The outcome of the study ``datasets``: gated or not, with the deny list or not."""
        self.count += 1
        folder = self.scratch / str(self.count)
        paths = write_study(datasets, folder / "in")
        models = (self.gated if deny else self.open) if gate else self.ungated
        return run_study(paths, folder / "work", models)


def _case_datasets(seed: int, options: PhantomOptions | None = None) -> list[Dataset]:
    case = make_case(seed, options or PhantomOptions())
    return [*case.datasets, *([case.report_dataset] if case.report_dataset else [])]


def _auc(labels: Sequence[int], scores: Sequence[float]) -> dict[str, float | None]:
    if len(set(labels)) < 2:
        return {"auc": None, "low": None, "high": None, "n": len(labels)}
    auc = bootstrap(np.asarray(labels), np.asarray(scores), resamples=500, seed=0)["auc"]
    return {"auc": auc.value, "low": auc.low, "high": auc.high, "n": len(labels)}


def _fmt(auc: dict[str, float | None]) -> str:
    if auc["auc"] is None:
        return "-"
    return f"{auc['auc']:.3f} ({auc['low']:.3f}-{auc['high']:.3f}), n={auc['n']}"


def labelled(
    runner: Runner, seeds: Sequence[int], make: Callable[[int], list[Dataset]], label: str
) -> dict[str, Any]:
    """Gated and ungated outcomes of phantom cases ``seeds``: assessed share and AUCs.

    A case is assessed unless the gate declined it (outcome ``not_assessed``); one
    without a nodule is assessed but has no probability (``no_nodule_found``).
    """
    gated_labels, gated_scores, all_labels, all_scores = [], [], [], []
    same_cases: list[float] = []  # the ungated probability of each case the gate assessed
    reasons: Counter[str] = Counter()
    declined = 0
    for seed in track(seeds, description=label, transient=True):
        truth = int(make_case(seed).llnm_label)
        datasets = make(seed)
        gated = runner.run(datasets)
        ungated = runner.run(datasets, gate=False)
        if gated.outcome == PREDICTED and gated.probability is not None:
            gated_labels.append(truth)
            gated_scores.append(gated.probability)
            same_cases.append(ungated.probability if ungated.probability is not None else 0.5)
        else:
            reasons[gated.reason or gated.outcome] += 1
            declined += gated.outcome == NOT_ASSESSED
        if ungated.probability is not None:
            all_labels.append(truth)
            all_scores.append(ungated.probability)
    return {
        "cases": len(seeds),
        "assessed": 1 - declined / len(seeds),
        "predicted": len(gated_labels),
        "without_prediction": dict(reasons),  # not_assessed reasons, and no_nodule_found
        "auc_assessed_gated": _auc(gated_labels, gated_scores),
        "auc_all_ungated": _auc(all_labels, all_scores),
        "auc_assessed_ungated": _auc(gated_labels, same_cases),
        "gated": [gated_labels, gated_scores],
        "ungated": [all_labels, all_scores],
        "same_cases": same_cases,
    }


def pooled(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The per-seed rows of :func:`labelled` as one."""
    gated: list[list[Any]] = [[x for r in rows for x in r["gated"][i]] for i in (0, 1)]
    ungated: list[list[Any]] = [[x for r in rows for x in r["ungated"][i]] for i in (0, 1)]
    same_cases = [x for r in rows for x in r["same_cases"]]
    cases = sum(r["cases"] for r in rows)
    return {
        "cases": cases,
        "assessed": sum(r["assessed"] * r["cases"] for r in rows) / cases,
        "predicted": len(gated[0]),
        "auc_assessed_gated": _auc(*gated),
        "auc_all_ungated": _auc(*ungated),
        "auc_assessed_ungated": _auc(gated[0], same_cases),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=DEMO_BUNDLE_DIR)
    parser.add_argument("--cases", type=int, default=60, help="in-scope cases per seed")
    parser.add_argument("--seeds", type=int, nargs="+", default=[97, 98, 99])
    parser.add_argument("--variant-cases", type=int, default=20)
    parser.add_argument("--shift-cases", type=int, default=40)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    report: dict[str, Any] = {"bundle": str(args.bundle)}
    with tempfile.TemporaryDirectory(prefix="llnm-scope-gate-") as scratch:
        runner = Runner(args.bundle, Path(scratch))

        vendors = Table("pydicom-data file", "default rules", "deny list off")
        report["vendor_files"] = {}
        for path in vendor_files():
            outcomes = [runner.run([dcmread(path)], deny=deny) for deny in (True, False)]
            report["vendor_files"][path.name] = [[o.outcome, o.reason] for o in outcomes]
            vendors.add_row(path.name, *(f"{o.outcome} {o.reason or ''}" for o in outcomes))
        console.print(vendors)

        in_scope = Table(
            "seed",
            "cases",
            "assessed",
            "AUC gated (assessed)",
            "AUC ungated (same cases)",
            "AUC ungated (all)",
        )
        report["in_scope"] = {}
        for seed in args.seeds:
            seeds = [case_seed(seed, i) for i in range(args.cases)]
            encoding = {s: ENCODINGS[i % len(ENCODINGS)] for i, s in enumerate(seeds)}
            row = labelled(
                runner,
                seeds,
                lambda s, e=encoding: _case_datasets(s, e[s]),  # type: ignore[misc]
                f"in-scope seed {seed}",
            )
            report["in_scope"][seed] = row
        report["in_scope"]["pooled"] = pooled(list(report["in_scope"].values()))
        for name, row in report["in_scope"].items():
            in_scope.add_row(
                str(name),
                str(row["cases"]),
                f"{row['assessed']:.1%}",
                _fmt(row["auc_assessed_gated"]),
                _fmt(row["auc_assessed_ungated"]),
                _fmt(row["auc_all_ungated"]),
            )
        console.print(in_scope)

        variants = Table("variant", "cases", "not assessed", "reasons")
        report["variants"] = {}
        for kind in VARIANTS if args.variant_cases else ():
            outcomes = [
                runner.run(make_variant(case_seed(7, i), kind).datasets)
                for i in track(range(args.variant_cases), description=kind, transient=True)
            ]
            reasons = Counter(o.reason or o.outcome for o in outcomes)
            share = sum(o.outcome == NOT_ASSESSED for o in outcomes) / len(outcomes)
            report["variants"][kind] = {"not_assessed": share, "reasons": dict(reasons)}
            variants.add_row(kind, str(len(outcomes)), f"{share:.0%}", str(dict(reasons)))
        console.print(variants)

        shifts = Table("shift", "severity", "not assessed", "AUC assessed (gated)", "AUC all")
        report["shifts"] = {}
        seeds = [case_seed(5, i) for i in range(args.shift_cases)]
        for shift in SHIFTS if args.shift_cases else ():
            for severity in SEVERITIES:
                options = shifted_options(shift, severity)  # type: ignore[arg-type]
                row = labelled(
                    runner,
                    seeds,
                    lambda s, o=options: _case_datasets(s, o),  # type: ignore[misc]
                    f"{shift} {severity}",
                )
                report["shifts"][f"{shift}:{severity}"] = row
                shifts.add_row(
                    shift,
                    f"{severity:.2f}",
                    f"{1 - row['assessed']:.0%}",
                    _fmt(row["auc_assessed_gated"]),
                    _fmt(row["auc_all_ungated"]),
                )
        console.print(shifts)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
        if report["shifts"]:
            plot_shifts(report["shifts"], args.out.with_name("scope_gate_shift.png"))
        console.print(f"wrote {args.out}")


def plot_shifts(rows: dict[str, dict[str, Any]], path: Path) -> None:
    """Severity against the share not assessed and the AUCs, one panel per shift."""
    figure, axes = plt.subplots(1, len(SHIFTS), figsize=(12, 3.6), sharey=True)
    for axis, shift in zip(axes, SHIFTS, strict=True):
        values = [rows[f"{shift}:{s}"] for s in SEVERITIES]
        axis.plot(SEVERITIES, [1 - v["assessed"] for v in values], "o-", label="not assessed")
        for key, name in (("auc_assessed_gated", "AUC assessed"), ("auc_all_ungated", "AUC all")):
            axis.plot(SEVERITIES, [v[key]["auc"] or np.nan for v in values], "s--", label=name)
        axis.set_title(shift)
        axis.set_xlabel("severity")
        axis.set_ylim(0, 1.02)
    axes[0].legend(loc="lower left", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


if __name__ == "__main__":
    main()
