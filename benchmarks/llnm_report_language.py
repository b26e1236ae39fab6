"""LLNM-Net with English reports and the default encoder vs Chinese reports and a Chinese one.

The same phantom cases (``--n`` of ``--seed``; held-out ``--test-n`` of
``--test-seed``) are written twice, with English and with Chinese (Simplified)
reports; images, labels and report content are the same. A small Chinese BERT
encoder is built from the Chinese training reports
(:func:`models.llnm.text_encoder_build.build_text_encoder`, seed ``--seed``).
The tiny LLNM-Net is trained twice with the same options (English reports +
the packaged all-MiniLM-L6-v2; Chinese reports + the built encoder) and each
is evaluated on its held-out set with bootstrap CIs. The table gives AUCs,
[UNK] rates and truncated report shares, and whether the Chinese AUC lies in
the English CI.

Run::

    .venv/bin/python benchmarks/llnm_report_language.py --n 300 --test-n 150 --epochs 10
        [--out benchmarks/out/report-language] [--text-tokens 128] [--seed 1] [--test-seed 97]
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
from models.llnm.dataset import read_patients
from models.llnm.text_encoder_build import build_text_encoder
from models.llnm.training import TMDLTrainOptions, train_tmdl
from phantoms import PhantomOptions, export_phantoms
from phantoms.report import ReportLanguage

console = Console(width=160)


def _data(out: Path, language: ReportLanguage, n: int, seed: int) -> Path:
    folder = out / f"{language}-{seed}"
    if not (folder / "dataset" / "cases.csv").is_file():
        export_phantoms(
            folder, n=n, seed=seed, options=PhantomOptions(report_language=language), progress=True
        )
    return folder / "dataset"


def _arm(
    args: argparse.Namespace, language: ReportLanguage, encoder: Path | None
) -> dict[str, Any]:
    train = _data(args.out, language, args.n, args.seed)
    test = _data(args.out, language, args.test_n, args.test_seed)
    run = args.out / f"run-{language}"
    config = TMDLConfig.preset("tiny", text_tokens=args.text_tokens)
    options = TMDLTrainOptions(epochs=args.epochs, seed=args.seed, text_encoder=encoder)
    console.print(f"training on {language} reports ({args.n} phantoms, {args.epochs} epochs)")
    trained = train_tmdl(train, run, config, options)
    metrics = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    result = assess(
        run,
        test,
        args.out / f"evaluation-{language}",
        AssessOptions(resamples=args.resamples, seed=args.seed, text_encoder=encoder),
    )
    return {
        "language": language,
        "encoder": "all-MiniLM-L6-v2" if encoder is None else f"built ({encoder.name})",
        "best_val_auc": trained.best_score,
        "test_auc": result["metrics"]["auc"],
        "best_achievable_auc": result["best_achievable_auc"],
        "train_report_tokens": metrics["text_encoder"]["report_tokens"],
        "test_report_tokens": result["report_tokens"],
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    zh_train = _data(args.out, "zh", args.n, args.seed)
    reports = [p.report_text for p in read_patients(zh_train) if p.report_text is not None]
    encoder = build_text_encoder(reports, args.out / "bert-zh", seed=args.seed, progress=True)
    english = _arm(args, "en", None)
    chinese = _arm(args, "zh", encoder)
    low, high = english["test_auc"]["low"], english["test_auc"]["high"]
    within = bool(low <= chinese["test_auc"]["value"] <= high)
    return {"arms": [english, chinese], "chinese_auc_within_english_ci": within}


def _share(counts: dict[str, Any]) -> str:
    return f"{counts['unknown_rate']:.1%} ({counts['truncated']}/{counts['reports']} cut)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1000, help="training phantoms")
    parser.add_argument("--test-n", type=int, default=200, help="held-out phantoms")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--test-seed", type=int, default=97)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--text-tokens", type=int, default=128)
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/report-language"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    summary = run(args)
    table = Table(title=f"Report language ({args.n} training, {args.test_n} test phantoms)")
    for column in ("reports", "encoder", "[UNK] train", "[UNK] test", "validation AUC",
                   "test AUC (95% CI)", "best achievable"):  # fmt: skip
        table.add_column(column)
    for arm in summary["arms"]:
        auc = arm["test_auc"]
        table.add_row(
            arm["language"],
            arm["encoder"],
            _share(arm["train_report_tokens"]),
            _share(arm["test_report_tokens"]),
            f"{arm['best_val_auc']:.3f}",
            f"{auc['value']:.3f} ({auc['low']:.3f}-{auc['high']:.3f})",
            f"{arm['best_achievable_auc']:.3f}",
        )
    console.print(table)
    verdict = "within" if summary["chinese_auc_within_english_ci"] else "outside"
    console.print(f"Chinese test AUC lies {verdict} the English 95% CI")
    (args.out / "report_language.json").write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
