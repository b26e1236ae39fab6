"""LLNM-Net ablations in one table: image only, text only, no location map, no risk terms, full.

Each variant is the same model and training (``llnm-node train`` with the
given size, epochs, patience, learning rate and input dropout; the defaults
are the demo bundle's recipe) with some inputs withheld (``TMDLConfig.withheld``:
maps and scalars zero, the report absent), trained on ``--train`` once per
training seed (``--seeds``: split, initialisation, shuffling) and evaluated
on every held-out set of ``--test`` (one or more folders, e.g. phantoms of
different seeds) with bootstrap CIs. Per variant the table shows the mean
test AUC over all (training seed, test set) runs with its standard deviation
and range, and the mean gap to the best achievable AUC, so one lucky seed
does not decide a comparison:

* image only: withholds the report, sex and age (the image-derived maps,
  echogenicity and shape stay);
* text only: withholds the three maps, echogenicity and shape (report, sex, age stay);
* no location map: withholds the CPDT map x_l;
* no risk terms: withholds nothing, built without the risk terms
  (``TMDLConfig.risk_terms``: the transformer's logit alone);
* full: withholds nothing.

The training features are extracted once, by the first run, and shared by the
others (the same ``--train`` and image size).

Run::

    .venv/bin/llnm-node phantom --n 200 --out /tmp/abl-train --seed 1
    .venv/bin/llnm-node phantom --n 200 --out /tmp/abl-test-2 --seed 2
    .venv/bin/llnm-node phantom --n 200 --out /tmp/abl-test-3 --seed 3
    .venv/bin/python benchmarks/llnm_ablation.py --train /tmp/abl-train
        --test /tmp/abl-test-2 /tmp/abl-test-3 [--seeds 0 1 2]
        [--out benchmarks/out/ablation] [--epochs 20] [--patience 8] [--size tiny]
        [--text-tokens 128] [--learning-rate 5e-4] [--input-dropout 0.3]
        (options on the same line)
"""

from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import replace
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import track
from rich.table import Table

from models.llnm.assessment import AssessOptions, assess
from models.llnm.config import TMDLConfig
from models.llnm.training import TMDLTrainOptions, train_tmdl

VARIANTS: dict[str, tuple[tuple[str, ...], bool]] = {  # name: (withheld, risk terms)
    "image only": (("report", "sex", "age"), True),
    "text only": (("location", "texture", "margin", "echogenicity", "shape"), True),
    "no location map": (("location",), True),
    "no risk terms": ((), False),
    "full model": ((), True),
}


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every variant trained per seed and tested on every test set; one row per variant."""
    rows = []
    first_run: Path | None = None  # its extracted training features are every run's
    for name, (withheld, risk_terms) in track(list(VARIANTS.items()), "variants"):
        runs = []
        for seed in args.seeds:
            folder = args.out / name.replace(" ", "-") / f"seed-{seed}"
            config = replace(
                TMDLConfig.preset(args.size, withheld=withheld, text_tokens=args.text_tokens,
                                  input_dropout=args.input_dropout),
                risk_terms=risk_terms,
            )  # fmt: skip
            options = TMDLTrainOptions(
                epochs=args.epochs,
                patience=args.patience,
                seed=seed,
                learning_rate=args.learning_rate,
                progress=False,
            )
            if first_run is not None:
                _share_features(first_run, folder / "run", config.image_size)
            trained = train_tmdl(args.train, folder / "run", config, options)
            first_run = first_run or folder / "run"
            for test in args.test:
                result = assess(folder / "run", test, folder / f"evaluation-{test.name}",
                                AssessOptions(progress=False))  # fmt: skip
                auc = result["metrics"]["auc"]
                runs.append(
                    {
                        "seed": seed,
                        "test": str(test),
                        "best_val_auc": trained.best_score,
                        "test_auc": auc["value"],
                        "test_auc_low": auc["low"],
                        "test_auc_high": auc["high"],
                        "best_achievable_auc": result["best_achievable_auc"],
                    }
                )
        rows.append({"variant": name, "withheld": list(withheld), **_spread(runs), "runs": runs})
    return rows


def _share_features(source: Path, run: Path, size: int) -> None:
    """Hard-link ``source``'s extracted training features into ``run`` (training reuses them)."""
    run.mkdir(parents=True, exist_ok=True)
    for suffix in (".safetensors", ".json"):
        name = f"features-{size}{suffix}"
        if not (run / name).exists():
            (run / name).hardlink_to(source / name)


def _spread(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean, standard deviation and range of the runs' test AUCs; mean gap to the best."""
    aucs = [r["test_auc"] for r in runs]
    gaps = [r["best_achievable_auc"] - r["test_auc"] for r in runs if r["best_achievable_auc"]]
    return {
        "test_auc_mean": statistics.fmean(aucs),
        "test_auc_sd": statistics.stdev(aucs) if len(aucs) > 1 else 0.0,
        "test_auc_min": min(aucs),
        "test_auc_max": max(aucs),
        "best_val_auc_mean": statistics.fmean(r["best_val_auc"] for r in runs),
        "gap_to_best_mean": statistics.fmean(gaps) if gaps else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", type=Path, required=True)
    parser.add_argument("--test", type=Path, nargs="+", required=True, help="held-out set(s)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/ablation"))
    parser.add_argument("--size", default="tiny")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--patience", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=5e-4)
    parser.add_argument("--input-dropout", type=float, default=0.3)
    parser.add_argument("--text-tokens", type=int, default=128)
    args = parser.parse_args()
    rows = run(args)
    runs = len(args.seeds) * len(args.test)
    table = Table(title=f"LLNM-Net ablations ({args.size}, trained on {args.train.name}; "
                        f"{len(args.seeds)} seeds x {len(args.test)} test sets)")  # fmt: skip
    for column in ("variant", "withheld", "validation AUC", "test AUC mean ± sd (min-max)",
                   "gap to best"):  # fmt: skip
        table.add_column(column)
    for row in rows:
        gap = row["gap_to_best_mean"]
        table.add_row(
            row["variant"],
            ", ".join(row["withheld"]) or "-",
            f"{row['best_val_auc_mean']:.3f}",
            f"{row['test_auc_mean']:.3f} ± {row['test_auc_sd']:.3f} "
            f"({row['test_auc_min']:.3f}-{row['test_auc_max']:.3f}, {runs} runs)",
            "-" if gap is None else f"{gap:+.3f}",
        )
    Console(width=max(Console().width, 120)).print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ablation.json").write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
