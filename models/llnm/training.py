"""Train LLNM-Net (TMDL) on a data set folder (:mod:`models.llnm.dataset`) into a run folder.

``train_tmdl(data, out, config, options)`` writes::

    out/model.safetensors, config.json   the epoch with the best validation AUC
    out/metrics.json                     history, best epoch, validation metrics, split
                                         with class balance, data flags, text encoder
                                         with its report token counts and [UNK] rate, and
                                         ``risk_stage``: the stage method the model serves
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
AUC. At each kept epoch the stage head and banding of the LLNM probability
are compared on the validation cases and the better is recorded as the
model's stage method (:func:`models.llnm.risk_stage.choose_method`). Report
tokens come from a frozen local text encoder, computed once; the config's
``text_width`` follows that encoder. ``init_from`` fine-tunes: the run starts
from that LLNM-Net's weights (same config; :func:`fine_tune_start` reads a
bundle's).
On CUDA the forward pass runs under bf16 autocast.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn
from torch.nn import functional

from models.bundle import LLNM_DIR, MANIFEST_FILE, text_encoder_folder, verify_bundle
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
from models.llnm.risk_stage import choose_method
from models.llnm.text import TextEncoder, TokenCounts
from models.llnm.tmdl import TMDL, TMDLBatch
from models.llnm.weights import load_tmdl, save_tmdl
from models.schedule import seed_everything
from models.segmentation.segmenter import select_device
from models.training_loop import LoopOptions, TrainResult, run_record, train_epochs
from models.training_plots import plot_training_curve

METRICS_FILE = "metrics.json"
# The risk terms' learning rate relative to the transformer's: at the transformer's rate
# they were still far from fitted when the transformer stopped improving (phantoms).
RISK_TERMS_LR_SCALE = 10.0


@dataclass(frozen=True)
class TMDLTrainOptions(LoopOptions):
    """How to train LLNM-Net (:class:`~models.training_loop.LoopOptions`, other defaults)."""

    epochs: int = 40
    batch_size: int = 16
    patience: int = 10
    learning_rate: float = 3e-4
    weight_decay: float = 0.01
    stage_loss_weight: float = 0.5
    text_encoder: Path | None = None  # None: the packaged all-MiniLM-L6-v2
    init_from: Path | None = None  # an LLNM-Net folder whose weights start the run (same config)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.stage_loss_weight < 0:
            raise ValueError("stage_loss_weight must not be negative")

    def optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        """AdamW; the risk terms learn :data:`RISK_TERMS_LR_SCALE` times faster than the rest."""
        risk = [p for n, p in model.named_parameters() if n.startswith("risk_terms.")]
        rest = [p for n, p in model.named_parameters() if not n.startswith("risk_terms.")]
        groups: list[dict[str, Any]] = [{"params": rest}]
        if risk:
            groups.append({"params": risk, "lr": self.learning_rate * RISK_TERMS_LR_SCALE})
        return torch.optim.AdamW(groups, lr=self.learning_rate, weight_decay=self.weight_decay)


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
        position=torch.from_numpy(arrays["position"][indices]),
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


@dataclass
class _TMDLTask:
    """LLNM-Net's part of the shared epoch loop (keeps the last validation for the best epoch)."""

    out: Path
    data: Path
    model: TMDL
    config: TMDLConfig
    options: TMDLTrainOptions
    device: torch.device
    table: FeatureTable
    text: ReportTokens
    train_rows: NDArray[np.int64]
    val_rows: NDArray[np.int64]
    encoder: TextEncoder
    report_tokens: TokenCounts
    last_validation: tuple[FeatureTable, NDArray[np.float64], NDArray[np.float64]] | None = None

    def batches(self, seed: int) -> list[NDArray[np.int64]]:
        rows = self.train_rows
        order = rows[np.random.default_rng(seed).permutation(len(rows))]
        size = self.options.batch_size
        return [order[i : i + size] for i in range(0, len(order), size)]

    def loss(self, rows: NDArray[np.int64]) -> tuple[torch.Tensor, int]:
        batch = make_batch(self.table, self.text, rows).to(self.device)
        index = torch.from_numpy(rows)
        labels = torch.from_numpy(self.table.labels)[index].to(self.device)
        stages = torch.from_numpy(self.table.stages)[index].to(self.device)
        with _autocast(self.device):
            loss = _loss(self.model, batch, labels, stages, self.options.stage_loss_weight)
        return loss, len(rows)

    def validate(self) -> dict[str, float]:
        table = self.table.subset(self.val_rows)
        text = ReportTokens(self.text.tokens[self.val_rows], self.text.present[self.val_rows])
        probabilities, stage_probabilities = predict(self.model, table, text, self.device)
        self.last_validation = (table, probabilities, stage_probabilities)
        return {"val_auc": roc_auc(table.labels, probabilities)}

    def keep_best(self, trainer: dict[str, Any]) -> None:
        save_tmdl(self.out, self.model, self.config, half=self.options.half_weights)
        if self.last_validation is None:
            raise RuntimeError("keep_best runs after validate")
        table, probabilities, stage_probabilities = self.last_validation
        _validation_plots(self.out, table.labels, probabilities)
        trainer["best_val_metrics"] = binary_metrics(table.labels, probabilities)
        trainer["risk_stage"] = choose_method(table.stages, probabilities, stage_probabilities)

    def record(self, trainer: dict[str, Any]) -> None:
        _write_metrics(self.out, self.options, trainer, self.data, self.encoder,
                       self.report_tokens)  # fmt: skip
        plot_training_curve(trainer["history"], self.out / "training_curve.png",
                            "LLNM-Net (TMDL)", scores=(("val_auc", "AUC"),))  # fmt: skip


def train_tmdl(data: Path, out: Path, config: TMDLConfig, options: TMDLTrainOptions) -> TrainResult:
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
    config = replace(config, text_width=encoder.width)  # the encoder decides the report width
    split = {
        "train_patients": len(train_rows),
        "val_patients": len(val_rows),
        "train_balance": class_balance(table.labels[train_rows]),
        "val_balance": class_balance(table.labels[val_rows]),
        "val_case_ids": sorted(p.case_id for p in val_patients),
    }
    seed_everything(options.seed)
    model = TMDL(config).to(device)
    if options.init_from is not None:
        _initialise(model, config, options.init_from)
    task = _TMDLTask(
        out=out,
        data=data,
        model=model,
        config=config,
        options=options,
        device=device,
        table=table,
        text=ReportTokens.encode(table.reports, encoder),
        train_rows=train_rows,
        val_rows=val_rows,
        encoder=encoder,
        report_tokens=encoder.token_counts(table.reports),
    )
    return train_epochs(
        out,
        model,
        options.optimizer(model),
        config=config.to_dict(),
        split=split,
        score="val_auc",
        options=options,
        task=task,
    )


def _initialise(model: TMDL, config: TMDLConfig, folder: Path) -> None:
    start, start_config = load_tmdl(folder)
    if start_config.to_dict() != config.to_dict():
        raise ValueError(
            f"{folder} holds a {start_config.to_dict()} LLNM-Net, not {config.to_dict()}"
        )
    model.load_state_dict(start.state_dict(), strict=True)


def fine_tune_start(path: Path) -> tuple[Path, TMDLConfig, Path | None]:
    """Where a fine-tuning run starts: the LLNM-Net folder, its config and its text encoder.

    ``path`` is a sealed bundle (its ``llnm/`` and its text encoder) or an
    LLNM-Net folder (the packaged text encoder). The run keeps the start's
    architecture.

    Raises
    ------
    FileNotFoundError
        If ``path`` holds no LLNM-Net.
    """
    manifest_file = path / MANIFEST_FILE
    folder = path / LLNM_DIR if manifest_file.is_file() else path
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{path} holds no LLNM-Net (config.json)")
    _, config = load_tmdl(folder)
    if not manifest_file.is_file():
        return folder, config, None
    return folder, config, text_encoder_folder(path, verify_bundle(path))


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
    out: Path,
    options: TMDLTrainOptions,
    trainer: dict[str, Any],
    data: Path,
    encoder: TextEncoder,
    report_tokens: TokenCounts,
) -> None:
    record = run_record(options, trainer, data, read_data_manifest(data))
    metrics = {
        "target": "llnm",
        "best_epoch": record.pop("best_epoch"),
        "best_val_auc": trainer["best_score"],
        "best_val_metrics": trainer.get("best_val_metrics"),
        "risk_stage": trainer.get("risk_stage"),
        **record,
        "text_encoder": {
            "folder": str(encoder.folder),
            "width": encoder.width,
            "report_tokens": report_tokens.to_dict(),
        },
    }
    (out / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
