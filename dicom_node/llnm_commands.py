"""``llnm-node train`` and ``llnm-node evaluate``: LLNM-Net on a data set folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

console = Console()
err_console = Console(stderr=True)


def train(
    data: Annotated[Path, typer.Option(help="Data set folder holding cases.csv (or dataset/).")],
    out: Annotated[Path, typer.Option(help="Run folder: weights, metrics, plots, checkpoint.")],
    size: Annotated[str, typer.Option(help="Model size preset: tiny or base.")] = "tiny",
    epochs: Annotated[int, typer.Option(min=1, help="Total epochs (also when resuming).")] = 40,
    batch_size: Annotated[int, typer.Option(min=1)] = 16,
    seed: Annotated[int, typer.Option(min=0, help="Seeds the split, init and shuffling.")] = 0,
    val_fraction: Annotated[float, typer.Option(min=0.01, max=0.99)] = 0.2,
    patience: Annotated[int, typer.Option(min=1, help="Stop after N epochs without gain.")] = 10,
    learning_rate: Annotated[float, typer.Option(min=1e-7)] = 3e-4,
    text_encoder: Annotated[
        Path | None, typer.Option(help="Local BERT-family folder; default all-MiniLM-L6-v2.")
    ] = None,
    text_tokens: Annotated[
        int | None,
        typer.Option(min=1, help="Report tokens kept (default: the preset's 50, as the paper)."),
    ] = None,
    half: Annotated[bool, typer.Option("--half", help="Keep the weights as float16.")] = False,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from OUT/checkpoint.")] = False,
    withhold: Annotated[
        list[str] | None,
        typer.Option(help="Ablation: an input the model never sees (repeatable), e.g. report."),
    ] = None,
) -> None:
    """Train LLNM-Net (TMDL); the kept epoch is the one with the best validation AUC."""
    from models.llnm.config import TMDLConfig
    from models.llnm.training import TMDLTrainOptions, train_tmdl

    try:
        config = TMDLConfig.preset(size, withheld=tuple(withhold or ()), text_tokens=text_tokens)
        options = TMDLTrainOptions(
            epochs=epochs,
            batch_size=batch_size,
            seed=seed,
            val_fraction=val_fraction,
            patience=patience,
            learning_rate=learning_rate,
            text_encoder=text_encoder,
            half_weights=half,
            resume=resume,
        )
        result = train_tmdl(data, out, config, options)
    except (FileNotFoundError, ValueError) as exc:
        err_console.print(f"[red]cannot train:[/red] {exc}")
        raise typer.Exit(1) from exc
    console.print(
        f"best validation AUC {result.best_val_auc:.4f} at epoch {result.best_epoch} of "
        f"{result.epochs_run}{' (stopped early)' if result.stopped_early else ''}; run in {out}"
    )


def evaluate(
    model: Annotated[Path, typer.Option(help="Folder with model.safetensors + config.json.")],
    data: Annotated[Path, typer.Option(help="Data set folder holding cases.csv (or dataset/).")],
    out: Annotated[Path, typer.Option(help="Write evaluation.json, predictions and plots here.")],
    threshold: Annotated[float, typer.Option(min=0.0, max=1.0)] = 0.5,
    resamples: Annotated[int, typer.Option(min=1, help="Bootstrap resamples.")] = 1000,
    seed: Annotated[int, typer.Option(min=0)] = 0,
    text_encoder: Annotated[Path | None, typer.Option(help="Local BERT-family folder.")] = None,
) -> None:
    """Evaluate LLNM-Net: metrics with 95% bootstrap CIs, per-stage AUC, ROC/calibration/DCA."""
    from models.llnm.assessment import AssessOptions, assess

    try:
        result = assess(
            model,
            data,
            out,
            AssessOptions(
                threshold=threshold, resamples=resamples, seed=seed, text_encoder=text_encoder
            ),
        )
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        err_console.print(f"[red]cannot evaluate:[/red] {exc}")
        raise typer.Exit(1) from exc
    for name, estimate in result["metrics"].items():
        value, low, high = estimate["value"], estimate["low"], estimate["high"]
        console.print(f"{name:12s} {value:.3f}  (95% CI {low:.3f}-{high:.3f})")
    if result["best_achievable_auc"] is not None:
        console.print(f"best achievable AUC {result['best_achievable_auc']:.3f}")
    if result["stage_auc"] is not None:
        console.print(f"risk stage AUC (mean of one-vs-rest) {result['stage_auc']['mean']:.3f}")
    console.print(f"written to {out}")
