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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.progress import track

from imaging.overlap import dice, iou
from models.schedule import seed_everything
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
from models.segmentation.segmenter import Segmenter, select_device
from models.segmentation.weights import load_segmenter, save_segmenter
from models.training_loop import LoopOptions, TrainResult, run_record, train_epochs
from models.training_plots import plot_training_curve

METRICS_FILE = "metrics.json"
CURVE_FILE = "training_curve.png"


@dataclass(frozen=True)
class TrainOptions(LoopOptions):
    """How to train a segmenter (:class:`~models.training_loop.LoopOptions` and its defaults)."""

    init_from: Path | None = None  # a segmenter folder whose weights start the run


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


@dataclass(frozen=True)
class _SegmenterTask:
    """The segmenter's part of the shared epoch loop."""

    out: Path
    data: Path
    model: torch.nn.Module
    config: AnyConfig
    options: TrainOptions
    device: torch.device
    train_set: SegmentationDataset
    val_views: list[Any]
    loss_fn: Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
    manifest: dict[str, Any]

    def batches(self, seed: int) -> torch.utils.data.DataLoader[Any]:
        self.train_set.reseed(seed, augment=True)
        return torch.utils.data.DataLoader(
            self.train_set,
            batch_size=self.options.batch_size,
            shuffle=True,
            generator=torch.Generator().manual_seed(seed),
        )

    def loss(self, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, int]:
        x, y = batch  # (B, 1, H, W) each
        return self.loss_fn(self.model, x.to(self.device), y.to(self.device)), len(x)

    def validate(self) -> dict[str, float]:
        scores = evaluate(Segmenter.wrap(self.model, self.config, self.device), self.val_views)
        return {"val_dice": scores["dice"], "val_iou": scores["iou"]}

    def keep_best(self, trainer: dict[str, Any]) -> None:
        save_segmenter(self.out, self.model, self.config, half=self.options.half_weights)

    def record(self, trainer: dict[str, Any]) -> None:
        _write_metrics(self.out, self.config, self.options, trainer, self.manifest, self.data)
        config = self.config
        kind = config.encoder if isinstance(config, SegmenterConfig) else config.model_yaml
        plot_training_curve(
            trainer["history"], self.out / CURVE_FILE, f"{config.target} segmenter ({kind})"
        )


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
    out.mkdir(parents=True, exist_ok=True)
    device = select_device()
    seed_everything(options.seed)
    model = build_model(config).to(device)
    if options.init_from is not None:
        _initialise(model, config, options.init_from)
    task = _SegmenterTask(
        out=out,
        data=data,
        model=model,
        config=config,
        options=options,
        device=device,
        train_set=SegmentationDataset(_load(train_records, options.progress, "training"), config),
        val_views=_load(val_records, options.progress, "validation"),
        loss_fn=training_loss(config),
        manifest=read_manifest(data),
    )
    return train_epochs(
        out,
        model,
        options.optimizer(model),
        config=config.to_dict(),
        split=_split_summary(train_records, val_records),
        score="val_dice",
        options=options,
        task=task,
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
    record = run_record(options, trainer, data, manifest)
    metrics = {
        "target": config.target,
        "best_epoch": record.pop("best_epoch"),
        "best_val_dice": best["val_dice"],
        "best_val_iou": best["val_iou"],
        **record,
    }
    (out / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
