"""Segmenter weights as safetensors plus JSON; no pickle is written or read.

A segmenter folder holds ``model.safetensors`` and ``config.json`` (either
architecture: the config says which). Weights may be stored as float16 to
halve a bundle's size; they are loaded back as float32.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from models.checkpoints import cpu_tensors
from models.segmentation.architectures import build_model
from models.segmentation.config import AnyConfig, load_config
from models.segmentation.segmenter import Segmenter

WEIGHTS_FILE = "model.safetensors"


def save_segmenter(
    folder: Path, model: nn.Module, config: AnyConfig, *, half: bool = False
) -> Path:
    """Write ``folder/model.safetensors`` (float16 when ``half``) and ``folder/config.json``."""
    folder.mkdir(parents=True, exist_ok=True)
    tensors = cpu_tensors(model.state_dict(), dtype=torch.float16 if half else None)
    save_file(tensors, str(folder / WEIGHTS_FILE))
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
    config = load_config(folder)
    model = build_model(config)
    tensors = load_file(str(folder / WEIGHTS_FILE))
    floats = {k: v.float() if v.is_floating_point() else v for k, v in tensors.items()}
    model.load_state_dict(floats, strict=True)
    return Segmenter.wrap(model, config, device)
