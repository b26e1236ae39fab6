"""Train LLNM-Net (TMDL) on a data set folder (:mod:`models.llnm.dataset`) into a run folder.

``train_tmdl(data, out, config, options)`` writes::

    out/model.safetensors, config.json   the epoch with the best validation AUC
    out/metrics.json                     history, best epoch, validation metrics, split
                                         with class balance, data flags, text encoder
    out/training_curve.png               loss and validation AUC per epoch
    out/validation_roc.png, validation_calibration.png   the best epoch's predictions
    out/features-<S>.safetensors (+.json)   the extracted features, reused on resume
    out/checkpoint/                      the last epoch, to continue with ``resume=True``

Patients are split by :func:`models.llnm.dataset.split_patients` (stratified,
seeded). Loss: BCE of the patient logit plus ``stage_loss_weight`` times the
cross-entropy of the risk stage (patients with a stage). AdamW with a half
cosine learning rate (:func:`models.schedule.cosine_learning_rate`); the
model is kept on validation AUC computed from probabilities, never on a
training loss; early stopping after ``patience`` epochs without a better
AUC. Report tokens come from a frozen local text encoder, computed once.
On CUDA the forward pass runs under bf16 autocast.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from rich.progress import Progress
from torch.nn import functional

from models.checkpoints import load_checkpoint, save_checkpoint
from models.llnm.config import TMDLConfig
from models.llnm.dataset import (
    FeatureTable,
    build_features,
    read_data_manifest,
    read_patients,
    split_patients,
)
from models.llnm.evaluation import binary_metrics, roc_auc
from models.llnm.evaluation_plots import plot_calibration, plot_roc
from models.llnm.text import TextEncoder
from models.llnm.tmdl import TMDL, TMDLBatch
from models.llnm.weights import save_tmdl
from models.schedule import begin_epoch, seed_everything
from models.segmentation.segmenter import select_device
from models.training_plots import plot_training_curve

METRICS_FILE = "metrics.json"
CHECKPOINT_DIR = "checkpoint"


@dataclass(frozen=True)
class TMDLTrainOptions:
    """How to train; ``epochs`` is the total, also when resuming."""

    epochs: int = 40
    batch_size: int = 16
    seed: int = 0
    val_fraction: float = 0.2
    patience: int = 10
    learning_rate: float = 3e-4
    final_lr_fraction: float = 0.05
    weight_decay: float = 0.01
    stage_loss_weight: float = 0.5
    resume: bool = False
    progress: bool = True
    half_weights: bool = False
    text_encoder: Path | None = None  # None: the packaged all-MiniLM-L6-v2

    def __post_init__(self) -> None:
        if min(self.epochs, self.batch_size, self.patience) < 1:
            raise ValueError("epochs, batch_size and patience must be at least 1")
        if self.learning_rate <= 0 or self.weight_decay < 0 or self.stage_loss_weight < 0:
            raise ValueError("learning_rate must be positive, the weights not negative")


@dataclass(frozen=True)
class ReportTokens:
    """Every patient's report embedding (N, T, W) and whether it has a report (N,)."""

    tokens: torch.Tensor
    present: torch.Tensor

    @classmethod
    def encode(cls, reports: tuple[str | None, ...], encoder: TextEncoder) -> ReportTokens:
        """Run the frozen encoder over ``reports`` in chunks."""
        chunks = [encoder.encode(reports[i : i + 64]) for i in range(0, len(reports), 64)]
        return cls(
            tokens=torch.cat([tokens for tokens, _ in chunks]),
            present=torch.cat([present for _, present in chunks]),
        )


def make_batch(table: FeatureTable, text: ReportTokens, indices: NDArray[np.int64]) -> TMDLBatch:
    """The model inputs of the patients at ``indices``."""
    arrays = table.arrays

    def maps(name: str) -> torch.Tensor:
        return torch.from_numpy(arrays[name][indices])[:, :, None]  # (B, V, 1, S, S)

    rows = torch.from_numpy(indices)
    return TMDLBatch(
        location=maps("location"),
        texture=maps("texture"),
        margin=maps("margin"),
        echogenicity=torch.from_numpy(arrays["echogenicity"][indices]),
        shape=torch.from_numpy(arrays["shape"][indices]),
        view_mask=torch.from_numpy(arrays["view_mask"][indices]),
        text=text.tokens[rows],
        text_present=text.present[rows],
        sex=torch.from_numpy(arrays["sex"][indices]),
        age=torch.from_numpy(arrays["age"][indices]),
    )


def _autocast(device: torch.device) -> torch.autocast:
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def predict(
    model: TMDL,
    table: FeatureTable,
    text: ReportTokens,
    device: torch.device,
    batch_size: int = 64,
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """LLNM probabilities (N,) and risk stage probabilities (N, stages) of every patient."""
    model.eval()
    probabilities, stages = [], []
    with torch.inference_mode(), _autocast(device):
        for start in range(0, len(table), batch_size):
            indices = np.arange(start, min(start + batch_size, len(table)), dtype=np.int64)
            out = model(make_batch(table, text, indices).to(device))
            probabilities.append(torch.sigmoid(out.logit.float()).cpu().numpy())
            stages.append(torch.softmax(out.stage_logits.float(), dim=-1).cpu().numpy())
    return np.concatenate(probabilities).astype(np.float64), np.concatenate(stages).astype(
        np.float64
    )


def _loss(model: TMDL, batch: TMDLBatch, labels: torch.Tensor, stages: torch.Tensor,
          weight: float) -> torch.Tensor:  # fmt: skip
    out = model(batch)
    loss = functional.binary_cross_entropy_with_logits(out.logit.float(), labels.float())
    known = stages > 0
    if weight > 0 and bool(known.any()):
        stage_loss = functional.cross_entropy(out.stage_logits[known].float(), stages[known] - 1)
        loss = loss + weight * stage_loss
    return loss


def _features(data: Path, out: Path, size: int, progress: bool) -> FeatureTable:
    path = out / f"features-{size}.safetensors"
    if path.is_file() and path.with_suffix(".json").is_file():
        return FeatureTable.load(path)
    table = build_features(read_patients(data), size, progress=progress)
    table.save(path)
    return table


def class_balance(labels: NDArray[np.int64]) -> dict[str, int]:
    """Positive and negative counts."""
    return {"positive": int(labels.sum()), "negative": int(len(labels) - labels.sum())}


@dataclass(frozen=True)
class TMDLTrainResult:
    """What a run ended with."""

    out: Path
    epochs_run: int
    best_epoch: int
    best_val_auc: float
    stopped_early: bool


def train_tmdl(
    data: Path, out: Path, config: TMDLConfig, options: TMDLTrainOptions
) -> TMDLTrainResult:
    """Train (or continue) LLNM-Net on ``data`` and write ``out`` (module docstring).

    Raises
    ------
    FileNotFoundError
        If the data set, its images, the text encoder or the checkpoint to resume is missing.
    ValueError
        If the data cannot be split or a resumed run's config, seed or split differ.
    """
    out.mkdir(parents=True, exist_ok=True)
    device = select_device()
    patients = read_patients(data)
    train_patients, val_patients = split_patients(patients, options.val_fraction, options.seed)
    table = _features(data, out, config.image_size, options.progress)
    position = {case_id: i for i, case_id in enumerate(table.case_ids)}
    train_rows = np.array([position[p.case_id] for p in train_patients], dtype=np.int64)
    val_rows = np.array([position[p.case_id] for p in val_patients], dtype=np.int64)
    encoder = TextEncoder(options.text_encoder, torch.device("cpu"), config.text_tokens)
    if encoder.width != config.text_width:
        raise ValueError(
            f"the text encoder is {encoder.width} wide, the config {config.text_width}"
        )
    text = ReportTokens.encode(table.reports, encoder)
    split = {
        "train_patients": len(train_rows),
        "val_patients": len(val_rows),
        "train_balance": class_balance(table.labels[train_rows]),
        "val_balance": class_balance(table.labels[val_rows]),
        "val_case_ids": sorted(p.case_id for p in val_patients),
    }
    seed_everything(options.seed)
    model = TMDL(config).to(device)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=options.learning_rate, weight_decay=options.weight_decay
    )
    trainer: dict[str, Any] = {
        "epoch": 0, "best_epoch": 0, "best_val_auc": -1.0, "seed": options.seed,
        "val_fraction": options.val_fraction, "split": split, "history": [],
    }  # fmt: skip
    if options.resume:
        checkpoint = load_checkpoint(out / CHECKPOINT_DIR)
        saved = checkpoint.trainer
        if checkpoint.config != config.to_dict() or (saved["seed"], saved["split"]) != (
            options.seed,
            split,
        ):
            raise ValueError("config, seed or the data set differ from the checkpoint's")
        model.load_state_dict(checkpoint.model_state, strict=True)
        optimizer.load_state_dict(checkpoint.optimizer_state)
        trainer = saved
    val_table = table.subset(val_rows)
    val_text = ReportTokens(text.tokens[val_rows], text.present[val_rows])
    labels = torch.from_numpy(table.labels)
    stages = torch.from_numpy(table.stages)
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
            order = train_rows[np.random.default_rng(seed).permutation(len(train_rows))]
            batches = [
                order[i : i + options.batch_size] for i in range(0, len(order), options.batch_size)
            ]
            task = progress.add_task(f"epoch {epoch}/{options.epochs}", total=len(batches))
            model.train()
            total = 0.0
            for rows in batches:
                batch = make_batch(table, text, rows).to(device)
                index = torch.from_numpy(rows)
                with _autocast(device):
                    loss = _loss(model, batch, labels[index].to(device), stages[index].to(device),
                                 options.stage_loss_weight)  # fmt: skip
                optimizer.zero_grad(set_to_none=True)
                loss.backward()  # type: ignore[no-untyped-call]
                optimizer.step()
                total += float(loss.item()) * len(rows)
                progress.update(
                    task, advance=1, description=f"epoch {epoch} loss {loss.item():.4f}"
                )
            probabilities, _ = predict(model, val_table, val_text, device)
            row = {
                "epoch": epoch,
                "learning_rate": rate,
                "train_loss": total / len(train_rows),
                "val_auc": roc_auc(val_table.labels, probabilities),
                "seconds": round(time.monotonic() - started, 2),
            }
            history.append(row)
            progress.console.print(
                f"epoch {epoch}: loss {row['train_loss']:.4f}  val AUC {row['val_auc']:.4f}  "
                f"{row['seconds']} s"
            )
            if row["val_auc"] > trainer["best_val_auc"]:
                trainer["best_epoch"], trainer["best_val_auc"] = epoch, row["val_auc"]
                save_tmdl(out, model, config, half=options.half_weights)
                _validation_plots(out, val_table.labels, probabilities)
                trainer["best_val_metrics"] = binary_metrics(val_table.labels, probabilities)
            trainer["epoch"] = epoch
            save_checkpoint(out / CHECKPOINT_DIR, model, optimizer, config.to_dict(), trainer)
            _write_metrics(out, options, trainer, data, encoder)
            plot_training_curve(history, out / "training_curve.png", "LLNM-Net (TMDL)",
                                scores=(("val_auc", "AUC"),))  # fmt: skip
    stale = trainer["epoch"] - trainer["best_epoch"] >= options.patience
    return TMDLTrainResult(
        out=out,
        epochs_run=trainer["epoch"],
        best_epoch=trainer["best_epoch"],
        best_val_auc=trainer["best_val_auc"],
        stopped_early=stale and trainer["epoch"] < options.epochs,
    )


def _validation_plots(
    out: Path, labels: NDArray[np.int64], probabilities: NDArray[np.float64]
) -> None:
    plot_roc(
        out / "validation_roc.png", {"validation": (labels, probabilities)}, "LLNM-Net, validation"
    )
    plot_calibration(
        out / "validation_calibration.png", labels, probabilities, "LLNM-Net, validation"
    )


def _write_metrics(
    out: Path, options: TMDLTrainOptions, trainer: dict[str, Any], data: Path, encoder: TextEncoder
) -> None:
    manifest = read_data_manifest(data)
    options_json = {
        k: str(v) if isinstance(v, Path) else v
        for k, v in asdict(options).items()
        if k not in ("resume", "progress", "half_weights")
    }
    metrics = {
        "target": "llnm",
        "best_epoch": trainer["best_epoch"],
        "best_val_auc": trainer["best_val_auc"],
        "best_val_metrics": trainer.get("best_val_metrics"),
        "history": trainer["history"],
        "split": trainer["split"],
        "options": options_json,
        "text_encoder": {"folder": str(encoder.folder), "width": encoder.width},
        "training_data": {
            "path": str(data),
            "synthetic": manifest.get("synthetic"),
            "intended_use": manifest.get("intended_use"),
        },
    }
    (out / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
