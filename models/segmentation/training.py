"""Train a segmenter on a data set folder (see :mod:`models.segmentation.data`).

``train_segmenter(data, out, config, options)`` writes into ``out``::

    model.safetensors, config.json   the best epoch's weights (highest validation Dice)
    metrics.json                     per-epoch loss, Dice and IoU; best epoch; split; data
    training_curve.png               loss and validation Dice/IoU per epoch
    checkpoint/                      the last epoch, to continue with ``resume=True``

Cases are split into training and validation with ``options.seed``; the
model's initialisation and each epoch's shuffling and augmentation are
seeded from ``(seed, epoch)``, so a run and its resumed continuation give
the same result. Loss: BCE + soft Dice (UNet++) or ultralytics' YOLOv8-seg
loss (box, class, DFL, mask); optimiser: AdamW with the learning rate
falling along a half cosine from ``learning_rate`` in the first epoch to
``learning_rate * final_lr_fraction`` in the last
(:func:`models.schedule.cosine_learning_rate`, a function of the epoch alone,
so resuming keeps it); early stopping
after ``patience`` epochs without a better validation Dice. ``init_from``
fine-tunes: training starts from another segmenter folder's weights (same
architecture config) instead of a random initialisation.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.progress import Progress, track

from models.checkpoints import load_checkpoint, save_checkpoint
from models.schedule import begin_epoch, seed_everything
from models.segmentation.architectures import build_model, predict_probabilities, training_loss
from models.segmentation.config import AnyConfig, SegmenterConfig
from models.segmentation.data import (
    SegmentationDataset,
    ViewRecord,
    load_view,
    read_manifest,
    read_records,
    split_by_case,
)
from models.segmentation.metrics import dice, iou
from models.segmentation.segmenter import Segmenter, select_device
from models.segmentation.weights import load_segmenter, save_segmenter
from models.training_plots import plot_training_curve

METRICS_FILE = "metrics.json"
CURVE_FILE = "training_curve.png"
CHECKPOINT_DIR = "checkpoint"


@dataclass(frozen=True)
class TrainOptions:
    """How to train; ``epochs`` is the total, also when resuming."""

    epochs: int = 30
    batch_size: int = 8
    seed: int = 0
    val_fraction: float = 0.2
    patience: int = 6  # epochs without a better validation Dice before stopping
    learning_rate: float = 1e-3
    final_lr_fraction: float = 0.05  # the last epoch's share of learning_rate
    weight_decay: float = 1e-4
    resume: bool = False
    progress: bool = True
    half_weights: bool = False  # store the kept weights as float16 (half the size)
    init_from: Path | None = None  # a segmenter folder whose weights start the run

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.patience < 1:
            raise ValueError("epochs, batch_size and patience must be at least 1")
        if self.learning_rate <= 0 or self.weight_decay < 0:
            raise ValueError("learning_rate must be positive and weight_decay not negative")
        if not 0.0 < self.final_lr_fraction <= 1.0:
            raise ValueError("final_lr_fraction must lie in (0, 1]")


@dataclass(frozen=True)
class TrainResult:
    """What a training run ended with."""

    out: Path
    epochs_run: int
    best_epoch: int
    best_val_dice: float
    stopped_early: bool
    history: list[dict[str, Any]]


def evaluate(
    segmenter: Segmenter, views: Sequence[tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]]
) -> dict[str, float]:
    """Mean Dice and IoU over (crop, mask) pairs, each scored at the crop's own resolution."""
    if not views:
        raise ValueError("nothing to evaluate")
    probabilities = predict_probabilities(segmenter, [image for image, _ in views])
    threshold = segmenter.config.threshold
    dices = [dice(p > threshold, m) for p, (_, m) in zip(probabilities, views, strict=True)]
    ious = [iou(p > threshold, m) for p, (_, m) in zip(probabilities, views, strict=True)]
    return {"dice": float(np.mean(dices)), "iou": float(np.mean(ious)), "views": len(views)}


def evaluate_folder(segmenter: Segmenter, data: Path) -> dict[str, float]:
    """:func:`evaluate` over every view of a data set folder (a held-out set)."""
    records = read_records(data, segmenter.config.target)
    return evaluate(segmenter, [load_view(r) for r in records])


def _load(records: list[ViewRecord], progress: bool, what: str) -> list[Any]:
    return [load_view(r) for r in track(records, f"loading {what}", disable=not progress)]


def _split_summary(train: list[ViewRecord], val: list[ViewRecord]) -> dict[str, Any]:
    return {
        "train_cases": len({r.case_id for r in train}),
        "train_views": len(train),
        "val_cases": len({r.case_id for r in val}),
        "val_views": len(val),
        "val_case_ids": sorted({r.case_id for r in val}),
    }


def train_segmenter(data: Path, out: Path, config: AnyConfig, options: TrainOptions) -> TrainResult:
    """Train (or with ``options.resume`` continue training) and write ``out`` (module docstring).

    Raises
    ------
    FileNotFoundError
        If the data set, the checkpoint to resume or the weights to start from are missing.
    ValueError
        If the data set cannot be split, a resumed run's config, seed,
        validation fraction or split differ from the checkpoint's, or the
        weights to start from have another architecture config.
    """
    records = read_records(data, config.target)
    train_records, val_records = split_by_case(records, options.val_fraction, options.seed)
    split = _split_summary(train_records, val_records)
    out.mkdir(parents=True, exist_ok=True)
    device = select_device()
    seed_everything(options.seed)
    model = build_model(config).to(device)
    if options.init_from is not None:
        _initialise(model, config, options.init_from)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=options.learning_rate, weight_decay=options.weight_decay
    )
    trainer: dict[str, Any] = {
        "epoch": 0,
        "best_epoch": 0,
        "best_val_dice": -1.0,
        "seed": options.seed,
        "val_fraction": options.val_fraction,
        "split": split,
        "history": [],
    }
    if options.resume:
        checkpoint = load_checkpoint(out / CHECKPOINT_DIR)
        if checkpoint.config != config.to_dict():
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
        trainer = saved
    manifest = read_manifest(data)
    train_set = SegmentationDataset(_load(train_records, options.progress, "training"), config)
    val_views = _load(val_records, options.progress, "validation")
    loss_fn = training_loss(config)
    history: list[dict[str, Any]] = trainer["history"]
    with Progress(disable=not options.progress) as progress:
        for epoch in range(trainer["epoch"] + 1, options.epochs + 1):
            if trainer["epoch"] - trainer["best_epoch"] >= options.patience:
                break
            started = time.monotonic()
            seed, learning_rate = begin_epoch(
                optimizer,
                seed=options.seed,
                learning_rate=options.learning_rate,
                final_fraction=options.final_lr_fraction,
                epochs=options.epochs,
                epoch=epoch,
            )
            train_set.reseed(seed, augment=True)
            loader = torch.utils.data.DataLoader(
                train_set,
                batch_size=options.batch_size,
                shuffle=True,
                generator=torch.Generator().manual_seed(seed),
            )
            task = progress.add_task(f"epoch {epoch}/{options.epochs}", total=len(loader))
            model.train()
            total, count = 0.0, 0
            for x, y in loader:  # (B, 1, H, W) each
                loss = loss_fn(model, x.to(device), y.to(device))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()  # type: ignore[no-untyped-call]
                optimizer.step()
                total += float(loss.item()) * len(x)
                count += len(x)
                progress.update(
                    task,
                    advance=1,
                    description=f"epoch {epoch}/{options.epochs} loss {total / count:.4f}",
                )
            scores = evaluate(Segmenter.wrap(model, config, device), val_views)
            row = {
                "epoch": epoch,
                "learning_rate": learning_rate,
                "train_loss": total / count,
                "val_dice": scores["dice"],
                "val_iou": scores["iou"],
                "seconds": round(time.monotonic() - started, 2),
            }
            history.append(row)
            progress.console.print(
                f"epoch {epoch}: loss {row['train_loss']:.4f}  "
                f"val Dice {row['val_dice']:.4f}  IoU {row['val_iou']:.4f}  {row['seconds']} s"
            )
            if scores["dice"] > trainer["best_val_dice"]:
                trainer["best_epoch"], trainer["best_val_dice"] = epoch, scores["dice"]
                save_segmenter(out, model, config, half=options.half_weights)
            trainer["epoch"] = epoch
            save_checkpoint(out / CHECKPOINT_DIR, model, optimizer, config.to_dict(), trainer)
            _write_metrics(out, config, options, trainer, manifest, data)
            kind = config.encoder if isinstance(config, SegmenterConfig) else config.model_yaml
            title = f"{config.target} segmenter ({kind})"
            plot_training_curve(history, out / CURVE_FILE, title)
    stale = trainer["epoch"] - trainer["best_epoch"] >= options.patience
    return TrainResult(
        out=out,
        epochs_run=trainer["epoch"],
        best_epoch=trainer["best_epoch"],
        best_val_dice=trainer["best_val_dice"],
        stopped_early=stale and trainer["epoch"] < options.epochs,
        history=history,
    )


def _initialise(model: torch.nn.Module, config: AnyConfig, folder: Path) -> None:
    start = load_segmenter(folder, torch.device("cpu"))
    if start.config.to_dict() != config.to_dict():
        raise ValueError(
            f"{folder} holds a {start.config.to_dict()} segmenter, not {config.to_dict()}"
        )
    model.load_state_dict(start.model.state_dict(), strict=True)


def _write_metrics(
    out: Path,
    config: AnyConfig,
    options: TrainOptions,
    trainer: dict[str, Any],
    manifest: dict[str, Any],
    data: Path,
) -> None:
    best = next(row for row in trainer["history"] if row["epoch"] == trainer["best_epoch"])
    metrics = {
        "target": config.target,
        "best_epoch": trainer["best_epoch"],
        "best_val_dice": best["val_dice"],
        "best_val_iou": best["val_iou"],
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
    (out / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
