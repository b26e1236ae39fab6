"""LLNM-Net ablations in one table: image only, text only, no location map, full model.

Each variant is the same model and training (``llnm-node train`` defaults, the
given size, epochs and seed) with some inputs withheld (``TMDLConfig.withheld``:
maps and scalars zero, the report absent), trained on ``--train`` and
evaluated on ``--test`` with bootstrap CIs:

* image only: withholds the report, sex and age (the image-derived maps,
  echogenicity and shape stay);
* text only: withholds the three maps, echogenicity and shape (report, sex, age stay);
* no location map: withholds the CPDT map x_l;
* full: withholds nothing.

Run::

    .venv/bin/llnm-node phantom --n 200 --out /tmp/abl-train --seed 1
    .venv/bin/llnm-node phantom --n 200 --out /tmp/abl-test --seed 2
    .venv/bin/python benchmarks/llnm_ablation.py --train /tmp/abl-train --test /tmp/abl-test
        [--out benchmarks/out/ablation] [--epochs 40] [--size tiny] [--text-tokens 128]
        (options on the same line)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from models.llnm.assessment import AssessOptions, assess
from models.llnm.config import TMDLConfig
from models.llnm.training import TMDLTrainOptions, train_tmdl

VARIANTS: dict[str, tuple[str, ...]] = {
    "image only": ("report", "sex", "age"),
    "text only": ("location", "texture", "margin", "echogenicity", "shape"),
    "no location map": ("location",),
    "full model": (),
}


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    for name, withheld in VARIANTS.items():
        folder = args.out / name.replace(" ", "-")
        config = TMDLConfig.preset(args.size, withheld=withheld, text_tokens=args.text_tokens)
        options = TMDLTrainOptions(epochs=args.epochs, seed=args.seed, progress=False)
        trained = train_tmdl(args.train, folder / "run", config, options)
        result = assess(
            folder / "run", args.test, folder / "evaluation", AssessOptions(progress=False)
        )
        auc = result["metrics"]["auc"]
        rows.append(
            {
                "variant": name,
                "withheld": list(withheld),
                "best_val_auc": trained.best_score,
                "test_auc": auc["value"],
                "test_auc_low": auc["low"],
                "test_auc_high": auc["high"],
                "best_achievable_auc": result["best_achievable_auc"],
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", type=Path, required=True)
    parser.add_argument("--test", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/ablation"))
    parser.add_argument("--size", default="tiny")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--text-tokens", type=int, default=None, help="default: the preset's")
    args = parser.parse_args()
    rows = run(args)
    table = Table(title=f"LLNM-Net ablations ({args.size}, trained on {args.train.name})")
    for column in ("variant", "withheld", "validation AUC", "test AUC (95% CI)", "best achievable"):
        table.add_column(column)
    for row in rows:
        best = row["best_achievable_auc"]
        table.add_row(
            row["variant"],
            ", ".join(row["withheld"]) or "-",
            f"{row['best_val_auc']:.3f}",
            f"{row['test_auc']:.3f} ({row['test_auc_low']:.3f}-{row['test_auc_high']:.3f})",
            "-" if best is None else f"{best:.3f}",
        )
    Console().print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ablation.json").write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
