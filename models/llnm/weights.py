"""LLNM-Net weights: ``model.safetensors`` and ``config.json`` in a folder; never a pickle."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from models.checkpoints import cpu_tensors
from models.llnm.config import TMDLConfig
from models.llnm.tmdl import TMDL

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
ARCHITECTURE = "TMDL"


def save_tmdl(folder: Path, model: TMDL, config: TMDLConfig, *, half: bool = False) -> None:
    """Write ``model.safetensors`` (float16 when ``half``) and ``config.json`` into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    tensors = cpu_tensors(model.state_dict(), dtype=torch.float16 if half else None)
    save_file(tensors, str(folder / WEIGHTS_FILE))
    text = json.dumps({"architecture": ARCHITECTURE, **config.to_dict()}, indent=2) + "\n"
    (folder / CONFIG_FILE).write_text(text, encoding="utf-8")


def load_tmdl(folder: Path, device: torch.device | None = None) -> tuple[TMDL, TMDLConfig]:
    """The model in ``folder`` in eval mode (float32) on ``device`` (CPU by default).

    Raises
    ------
    FileNotFoundError
        If the weights or the config are missing.
    ValueError
        If the config is not a TMDL config.
    RuntimeError
        If the weights do not fit the architecture.
    """
    data = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
    if data.pop("architecture", None) != ARCHITECTURE:
        raise ValueError(f"{folder / CONFIG_FILE} does not describe a TMDL model")
    config = TMDLConfig.from_dict(data)
    model = TMDL(config)
    tensors = load_file(str(folder / WEIGHTS_FILE))
    model.load_state_dict(
        {k: v.float() if v.is_floating_point() else v for k, v in tensors.items()}, strict=True
    )
    return model.to(device or torch.device("cpu")).eval(), config
