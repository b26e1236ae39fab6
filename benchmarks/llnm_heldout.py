"""LLNM-Net on held-out phantom seeds through the node's whole chain, against the Bayes AUC.

For each of ``--seeds`` (default 101-106; the demo bundle trains its models
and fits its scope on seed 1, and seeds 97-99 chose between 0.3.0's candidate
architectures, so only these are unseen) it writes ``--n`` phantom
studies, evaluates ``--model`` (default the bundle's own ``llnm/``) through
the production chain from the DICOM files with ``--bundle``'s segmenters and
scope gate (``llnm-node evaluate --segment-with``,
:func:`pipeline.chain_assessment.assess_through_chain`), and for comparison
through the data set's generator masks (:func:`models.llnm.assessment.assess`).
Per seed it prints the AUC with its 95 % bootstrap CI, the Bayes AUC (the
true probabilities on the same assessed cases), the gap, the not-assessed
count and the chain's seconds per case; then the means over seeds, and per
three consecutive seeds. Target: over three held-out seeds, the mean end-to-end
AUC within 0.03 of the mean Bayes AUC.

Writes ``--out``/heldout.json, ``--out``/roc.png (one curve per seed,
predicted masks) and each evaluation's folder (``seed-S/chain``,
``seed-S/dataset-masks``). Phantoms go to ``--out``/phantoms-S-nN and are
reused when present.

Run::

    .venv/bin/python benchmarks/llnm_heldout.py [--seeds 101 102 103 104 105 106] [--n 200]
        [--bundle models/demo_bundle] [--model DIR] [--out benchmarks/out/heldout]
        [--resamples 1000]
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from models.bundle import LLNM_DIR
from models.demo import DEMO_BUNDLE_DIR
from models.llnm.assessment import AssessOptions, assess
from models.llnm.dataset import read_data_manifest
from models.llnm.evaluation_plots import plot_roc
from phantoms import export_phantoms
from pipeline.chain_assessment import assess_through_chain

TARGET_GAP = 0.03
console = Console(width=max(Console().width, 132))  # the table needs about 130 columns


def phantoms(out: Path, seed: int, n: int) -> Path:
    """The ``n`` phantoms of ``seed`` under ``out``, written unless already there."""
    folder = out / f"phantoms-{seed}-n{n}"
    try:
        manifest = read_data_manifest(folder)
    except FileNotFoundError:
        manifest = {}
    if (manifest.get("seed"), manifest.get("cases")) != (seed, n):
        export_phantoms(folder, n=n, seed=seed, progress=True)
    return folder


def _curve(folder: Path) -> tuple[list[int], list[float]]:
    """Labels and probabilities of the predicted patients in ``folder/predictions.csv``."""
    with (folder / "predictions.csv").open(newline="", encoding="utf-8") as handle:
        rows = [r for r in csv.DictReader(handle) if r["outcome"] == "predicted"]
    return [int(r["label"]) for r in rows], [float(r["probability"]) for r in rows]


def _summary(result: dict[str, Any]) -> dict[str, Any]:
    auc = result["metrics"]["auc"]
    stage = result["risk_stage"] or {}
    return {
        "auc": auc["value"],
        "auc_low": auc["low"],
        "auc_high": auc["high"],
        "bayes_auc": result["best_achievable_auc"],
        "gap": result["auc_gap_to_best"],
        "assessed": result["assessed"],
        "not_assessed": result["not_assessed"]["count"],
        "not_assessed_outcomes": result["not_assessed"]["outcomes"],
        "all_cases_auc": result["not_assessed"]["all_cases_auc"],
        "stage_head_agreement": stage.get("head", {}).get("exact_agreement"),
        "stage_banding_agreement": stage.get("banding", {}).get("exact_agreement"),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    model = args.model or args.bundle / LLNM_DIR
    options = AssessOptions(resamples=args.resamples, progress=True)
    rows = []
    for seed in args.seeds:
        data = phantoms(args.out, seed, args.n)
        console.print(f"seed {seed}: {args.n} phantoms in {data}")
        started = time.perf_counter()
        chain = assess_through_chain(model, args.bundle, data, args.out / f"seed-{seed}" / "chain",
                                     options)  # fmt: skip
        seconds = (time.perf_counter() - started) / args.n
        masks = assess(model, data, args.out / f"seed-{seed}" / "dataset-masks", options)
        rows.append(
            {
                "seed": seed,
                "cases": args.n,
                "seconds_per_case": seconds,
                "predicted_masks": _summary(chain),
                "dataset_masks": _summary(masks),
            }
        )
    return {
        "model": str(model),
        "bundle": str(args.bundle),
        "seeds": rows,
        "mean": {
            kind: {
                name: statistics.fmean(r[kind][name] for r in rows)
                for name in ("auc", "bayes_auc", "gap", "not_assessed")
            }
            for kind in ("predicted_masks", "dataset_masks")
        },
        "triples": [
            {
                "seeds": [r["seed"] for r in rows[i : i + 3]],
                "gap": statistics.fmean(r["predicted_masks"]["gap"] for r in rows[i : i + 3]),
            }
            for i in range(0, len(rows) - 2, 3)
        ],
        "target_gap": TARGET_GAP,
    }


def show(result: dict[str, Any]) -> None:
    table = Table(title=f"LLNM-Net on held-out seeds ({result['model']}, {result['bundle']})")
    for column in ("seed", "masks", "AUC (95% CI)", "Bayes AUC", "gap", "not assessed",
                   "stage agreement head / banding", "s per case"):  # fmt: skip
        table.add_column(column, justify="right")
    for row in result["seeds"]:
        for kind, label in (("predicted_masks", "predicted"), ("dataset_masks", "dataset")):
            s = row[kind]
            head, banding = s["stage_head_agreement"], s["stage_banding_agreement"]
            table.add_row(
                str(row["seed"]),
                label,
                f"{s['auc']:.3f} ({s['auc_low']:.3f}-{s['auc_high']:.3f})",
                f"{s['bayes_auc']:.3f}",
                f"{s['gap']:+.3f}",
                f"{s['not_assessed']} of {row['cases']}",
                "-" if head is None else f"{head:.3f} / {banding:.3f}",
                f"{row['seconds_per_case']:.2f}" if kind == "predicted_masks" else "",
            )
    for kind, label in (("predicted_masks", "predicted"), ("dataset_masks", "dataset")):
        m = result["mean"][kind]
        table.add_row("mean", label, f"{m['auc']:.3f}", f"{m['bayes_auc']:.3f}",
                      f"{m['gap']:+.3f}", f"{m['not_assessed']:.1f}", "", "")  # fmt: skip
    console.print(table)
    for group in result["triples"] or [
        {"seeds": "all", "gap": result["mean"]["predicted_masks"]["gap"]}
    ]:
        verdict = "met" if group["gap"] <= result["target_gap"] else "NOT met"
        console.print(
            f"seeds {group['seeds']}: mean gap to Bayes through the chain "
            f"{group['gap']:+.3f} (target <= {result['target_gap']}: {verdict})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[101, 102, 103, 104, 105, 106])
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--bundle", type=Path, default=DEMO_BUNDLE_DIR)
    parser.add_argument("--model", type=Path, help="LLNM-Net folder; default BUNDLE/llnm")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/heldout"))
    parser.add_argument("--resamples", type=int, default=1000)
    args = parser.parse_args()
    result = run(args)
    show(result)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "heldout.json").write_text(json.dumps(result, indent=2) + "\n")
    curves = {
        f"seed {row['seed']}": _curve(args.out / f"seed-{row['seed']}" / "chain")
        for row in result["seeds"]
    }
    bayes = result["mean"]["predicted_masks"]["bayes_auc"]
    plot_roc(args.out / "roc.png", curves, "LLNM-Net through the chain, held-out seeds",
             reference_auc=bayes)  # fmt: skip
    console.print(f"written to {args.out}")


if __name__ == "__main__":
    main()
