"""Weights and training checkpoints as safetensors plus JSON; no pickle is written or read.

A segmenter folder holds ``model.safetensors`` and ``config.json``. A
checkpoint folder holds ``checkpoint.safetensors`` (model tensors under
``model.``, optimizer state tensors under ``optimizer.<param>.<name>``) and
``checkpoint.json`` (the config, the optimizer's hyper-parameters and the
trainer's scalars: epoch, best score, seed, history, split).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from models.segmentation.config import SegmenterConfig
from models.segmentation.thyroid import Segmenter, build_model

WEIGHTS_FILE = "model.safetensors"
CHECKPOINT_TENSORS = "checkpoint.safetensors"
CHECKPOINT_STATE = "checkpoint.json"
_MODEL = "model."
_OPTIMIZER = "optimizer."


def _tensors(state: dict[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    return {prefix + k: v.detach().cpu().contiguous() for k, v in state.items()}


def save_segmenter(folder: Path, model: nn.Module, config: SegmenterConfig) -> Path:
    """Write ``folder/model.safetensors`` and ``folder/config.json``; returns the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    save_file(_tensors(model.state_dict()), str(folder / WEIGHTS_FILE))
    config.save(folder)
    return folder


def load_segmenter(folder: Path, device: torch.device | None = None) -> Segmenter:
    """Build the model from ``folder/config.json`` and load its weights strictly.

    Raises
    ------
    FileNotFoundError
        If the weights or the config are missing.
    RuntimeError
        If the weights do not match the architecture (missing or unexpected keys).
    """
    config = SegmenterConfig.load(folder)
    model = build_model(config)
    model.load_state_dict(load_file(str(folder / WEIGHTS_FILE)), strict=True)
    return Segmenter.wrap(model, config, device)


@dataclass(frozen=True)
class Checkpoint:
    """Tensors and scalars of a training run, after :func:`load_checkpoint`."""

    config: SegmenterConfig
    model_state: dict[str, torch.Tensor]
    optimizer_state: dict[str, Any]
    trainer: dict[str, Any]  # JSON scalars: epoch, best score, seed, history, split


def save_checkpoint(
    folder: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    config: SegmenterConfig,
    trainer: dict[str, Any],
) -> None:
    """Write the model, optimizer and trainer state; the JSON goes last, so it marks completion."""
    folder.mkdir(parents=True, exist_ok=True)
    optimizer_state = optimizer.state_dict()
    tensors = _tensors(model.state_dict(), _MODEL)
    for param, values in optimizer_state["state"].items():
        for name, value in values.items():
            tensors[f"{_OPTIMIZER}{param}.{name}"] = value.detach().cpu().contiguous()
    epoch = str(trainer["epoch"])
    save_file(tensors, str(folder / CHECKPOINT_TENSORS), metadata={"epoch": epoch})
    state = {
        "config": config.to_dict(),
        "param_groups": optimizer_state["param_groups"],
        "trainer": trainer,
    }
    temporary = folder / (CHECKPOINT_STATE + ".tmp")
    temporary.write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")
    temporary.replace(folder / CHECKPOINT_STATE)


def load_checkpoint(folder: Path) -> Checkpoint:
    """Read what :func:`save_checkpoint` wrote.

    Raises
    ------
    FileNotFoundError
        If the folder holds no checkpoint.
    ValueError
        If its tensors and its JSON are from different epochs (a write was interrupted).
    """
    state = json.loads((folder / CHECKPOINT_STATE).read_text(encoding="utf-8"))
    with safe_open(str(folder / CHECKPOINT_TENSORS), framework="pt") as handle:
        tensor_epoch = (handle.metadata() or {}).get("epoch")
    if tensor_epoch != str(state["trainer"]["epoch"]):
        raise ValueError(f"checkpoint in {folder} is incomplete: tensors and JSON disagree")
    tensors = load_file(str(folder / CHECKPOINT_TENSORS))
    model_state = {k.removeprefix(_MODEL): v for k, v in tensors.items() if k.startswith(_MODEL)}
    per_param: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith(_OPTIMIZER):
            param, name = key.removeprefix(_OPTIMIZER).split(".", 1)
            per_param.setdefault(int(param), {})[name] = value
    return Checkpoint(
        config=SegmenterConfig.from_dict(state["config"]),
        model_state=model_state,
        optimizer_state={"state": per_param, "param_groups": state["param_groups"]},
        trainer=state["trainer"],
    )
