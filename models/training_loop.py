"""The epoch loop every trainer shares: seeded epochs, cosine rate, early stopping, checkpoints.

A run's state is JSON (``trainer``): the last epoch, the best epoch and its
score, the seed, the validation fraction, the split and the per-epoch
history. It is saved with the model and the optimizer after every epoch
(:mod:`models.checkpoints`), so ``resume`` continues a run exactly where it
stopped: each epoch's shuffling and augmentation are seeded from ``(seed,
epoch)`` and its learning rate is a function of the epoch alone
(:func:`models.schedule.begin_epoch`). A trainer supplies the parts that
differ as a :class:`Task`.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sized
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import torch
from rich.progress import Progress
from torch import nn

from models.checkpoints import load_checkpoint, save_checkpoint
from models.schedule import begin_epoch

CHECKPOINT_DIR = "checkpoint"
B = TypeVar("B")
B_co = TypeVar("B_co", covariant=True)
B_contra = TypeVar("B_contra", contravariant=True)


class Batches(Sized, Iterable[B_co], Protocol[B_co]):
    """An epoch's batches: iterable, with a length for the progress bar."""

    def __iter__(self) -> Iterator[B_co]:
        """The batches in this epoch's order."""


@dataclass(frozen=True)
class LoopOptions:
    """How to train, whatever the model; ``epochs`` is the total, also when resuming.

    Trainers subclass it with their own defaults and options.
    """

    epochs: int = 30
    batch_size: int = 8
    seed: int = 0  # seeds the split, the initialisation and every epoch
    val_fraction: float = 0.2
    patience: int = 6  # epochs without a better score before stopping
    learning_rate: float = 1e-3  # AdamW, first epoch
    final_lr_fraction: float = 0.05  # the last epoch's share of learning_rate
    weight_decay: float = 1e-4
    resume: bool = False  # continue from out/checkpoint
    progress: bool = True
    half_weights: bool = False  # store the kept weights as float16 (half the size)

    def __post_init__(self) -> None:
        if min(self.epochs, self.batch_size, self.patience) < 1:
            raise ValueError("epochs, batch_size and patience must be at least 1")
        if self.learning_rate <= 0 or self.weight_decay < 0:
            raise ValueError("learning_rate must be positive and weight_decay not negative")
        if not 0.0 < self.final_lr_fraction <= 1.0:
            raise ValueError("final_lr_fraction must lie in (0, 1]")

    def optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        """AdamW over ``model``'s parameters with this run's rate and weight decay."""
        return torch.optim.AdamW(
            model.parameters(), lr=self.learning_rate, weight_decay=self.weight_decay
        )


class Task(Protocol[B_contra]):
    """The parts of a training run that differ between models."""

    def batches(self, seed: int) -> Batches[Any]:
        """The epoch's training batches, shuffled (and augmented) with ``seed``."""

    def loss(self, batch: B_contra) -> tuple[torch.Tensor, int]:
        """The loss of one batch and how many samples it holds."""

    def validate(self) -> dict[str, float]:
        """Validation scores of the model as it is now (history columns)."""

    def keep_best(self, trainer: dict[str, Any]) -> None:
        """Save what the best epoch leaves (weights, plots); may add keys to ``trainer``."""

    def record(self, trainer: dict[str, Any]) -> None:
        """Write the run's metrics and training curve after an epoch."""


@dataclass(frozen=True)
class TrainResult:
    """What a run ended with; ``score`` names ``best_score`` (e.g. ``val_auc``)."""

    out: Path
    score: str
    epochs_run: int
    best_epoch: int
    best_score: float
    stopped_early: bool
    history: list[dict[str, Any]]


def _start(
    folder: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    config: dict[str, Any],
    split: dict[str, Any],
    options: LoopOptions,
) -> dict[str, Any]:
    """A new run's state, or with ``resume`` the checkpoint's (model and optimizer loaded)."""
    trainer: dict[str, Any] = {
        "epoch": 0,
        "best_epoch": 0,
        "best_score": -1.0,
        "seed": options.seed,
        "val_fraction": options.val_fraction,
        "split": split,
        "history": [],
    }
    if not options.resume:
        return trainer
    checkpoint = load_checkpoint(folder)
    if checkpoint.config != config:
        raise ValueError("the checkpoint was trained with another config")
    saved = checkpoint.trainer
    if (saved["seed"], saved["val_fraction"], saved["split"]) != (
        options.seed,
        options.val_fraction,
        split,
    ):
        raise ValueError("seed, val_fraction or the data set differ from the checkpoint's")
    model.load_state_dict(checkpoint.model_state, strict=True)
    optimizer.load_state_dict(checkpoint.optimizer_state)
    return saved


def train_epochs(
    out: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    config: dict[str, Any],
    split: dict[str, Any],
    score: str,
    options: LoopOptions,
    task: Task[B],
) -> TrainResult:
    """Train ``model`` epoch by epoch, keeping the epoch with the highest ``score``.

    ``score`` is a key of :meth:`Task.validate`'s scores. The checkpoint goes
    to ``out/checkpoint``.

    Raises
    ------
    FileNotFoundError
        If ``options.resume`` is set and there is no checkpoint.
    ValueError
        If a resumed run's config, seed, validation fraction or split differ.
    """
    folder = out / CHECKPOINT_DIR
    trainer = _start(folder, model, optimizer, config, split, options)
    history: list[dict[str, Any]] = trainer["history"]
    with Progress(disable=not options.progress) as progress:
        for epoch in range(trainer["epoch"] + 1, options.epochs + 1):
            if trainer["epoch"] - trainer["best_epoch"] >= options.patience:
                break
            started = time.monotonic()
            seed, rate = begin_epoch(
                optimizer,
                seed=options.seed,
                learning_rate=options.learning_rate,
                final_fraction=options.final_lr_fraction,
                epochs=options.epochs,
                epoch=epoch,
            )
            batches = task.batches(seed)
            bar = progress.add_task(f"epoch {epoch}/{options.epochs}", total=len(batches))
            model.train()
            total, count = 0.0, 0
            for batch in batches:
                loss, samples = task.loss(batch)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()  # type: ignore[no-untyped-call]
                optimizer.step()
                total += float(loss.item()) * samples
                count += samples
                progress.update(
                    bar,
                    advance=1,
                    description=f"epoch {epoch}/{options.epochs} loss {total / count:.4f}",
                )
            scores = task.validate()
            row = {
                "epoch": epoch,
                "learning_rate": rate,
                "train_loss": total / count,
                **scores,
                "seconds": round(time.monotonic() - started, 2),
            }
            history.append(row)
            shown = "  ".join(f"{name} {value:.4f}" for name, value in scores.items())
            progress.console.print(
                f"epoch {epoch}: loss {row['train_loss']:.4f}  {shown}  {row['seconds']} s"
            )
            if scores[score] > trainer["best_score"]:
                trainer["best_epoch"], trainer["best_score"] = epoch, scores[score]
                task.keep_best(trainer)
            trainer["epoch"] = epoch
            save_checkpoint(folder, model, optimizer, config, trainer)
            task.record(trainer)
    stale = trainer["epoch"] - trainer["best_epoch"] >= options.patience
    return TrainResult(
        out=out,
        score=score,
        epochs_run=trainer["epoch"],
        best_epoch=trainer["best_epoch"],
        best_score=trainer["best_score"],
        stopped_early=stale and trainer["epoch"] < options.epochs,
        history=history,
    )


def run_record(
    options: LoopOptions, trainer: dict[str, Any], data: Path, manifest: dict[str, Any]
) -> dict[str, Any]:
    """What every run's metrics.json holds: best epoch, history, split, options, training data.

    Run switches (resume, progress, half weights) are left out of the
    options, paths written as text.
    """
    return {
        "best_epoch": trainer["best_epoch"],
        "history": trainer["history"],
        "split": trainer["split"],
        "options": {
            k: str(v) if isinstance(v, Path) else v
            for k, v in asdict(options).items()
            if k not in ("resume", "progress", "half_weights")
        },
        "training_data": {
            "path": str(data),
            "synthetic": manifest.get("synthetic"),
            "intended_use": manifest.get("intended_use"),
        },
    }
