"""Training checkpoints as safetensors plus JSON; no pickle is written or read.

A checkpoint folder holds ``checkpoint.safetensors`` (model tensors under
``model.``, optimizer state tensors under ``optimizer.<param>.<name>``) and
``checkpoint.json`` (the model's config, the optimizer's hyper-parameters and
the trainer's scalars: epoch, best score, seed, history, split). The JSON is
written last, so a complete one marks a complete checkpoint.
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

CHECKPOINT_TENSORS = "checkpoint.safetensors"
CHECKPOINT_STATE = "checkpoint.json"
_MODEL = "model."
_OPTIMIZER = "optimizer."


def cpu_tensors(
    state: dict[str, torch.Tensor], prefix: str = "", dtype: torch.dtype | None = None
) -> dict[str, torch.Tensor]:
    """Contiguous CPU copies of ``state`` under ``prefix``; floats cast to ``dtype`` if given."""
    out = {}
    for key, value in state.items():
        tensor = value.detach().cpu()
        if dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(dtype)
        out[prefix + key] = tensor.contiguous()
    return out


@dataclass(frozen=True)
class Checkpoint:
    """Tensors and scalars of a training run, after :func:`load_checkpoint`."""

    config: dict[str, Any]  # the model's config, as JSON
    model_state: dict[str, torch.Tensor]
    optimizer_state: dict[str, Any]
    trainer: dict[str, Any]  # JSON scalars: epoch, best score, seed, history, split


def save_checkpoint(
    folder: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    config: dict[str, Any],
    trainer: dict[str, Any],
) -> None:
    """Write the model, optimizer and trainer state; the JSON goes last, so it marks completion."""
    folder.mkdir(parents=True, exist_ok=True)
    optimizer_state = optimizer.state_dict()
    tensors = cpu_tensors(model.state_dict(), _MODEL)
    for param, values in optimizer_state["state"].items():
        for name, value in values.items():
            tensors[f"{_OPTIMIZER}{param}.{name}"] = value.detach().cpu().contiguous()
    epoch = str(trainer["epoch"])
    save_file(tensors, str(folder / CHECKPOINT_TENSORS), metadata={"epoch": epoch})
    state = {
        "config": config,
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
        config=state["config"],
        model_state=model_state,
        optimizer_state={"state": per_param, "param_groups": state["param_groups"]},
        trainer=state["trainer"],
    )
