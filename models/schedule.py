"""Reproducible training: global seeding, per-epoch seeds and the learning-rate schedule."""

from __future__ import annotations

import math
import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of one epoch of a run."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


def cosine_learning_rate(
    learning_rate: float, final_fraction: float, epochs: int, epoch: int
) -> float:
    """The rate of ``epoch`` (1-based of ``epochs``): a half cosine to ``final_fraction``."""
    progress = (epoch - 1) / max(1, epochs - 1)
    return learning_rate * (
        final_fraction + (1 - final_fraction) * 0.5 * (1 + math.cos(math.pi * progress))
    )


def begin_epoch(
    optimizer: torch.optim.Optimizer,
    *,
    seed: int,
    learning_rate: float,
    final_fraction: float,
    epochs: int,
    epoch: int,
) -> tuple[int, float]:
    """Seed torch for ``epoch`` and set its cosine learning rate; returns (epoch seed, rate)."""
    this_seed = epoch_seed(seed, epoch)
    torch.manual_seed(this_seed)
    rate = cosine_learning_rate(learning_rate, final_fraction, epochs, epoch)
    for group in optimizer.param_groups:
        group["lr"] = rate
    return this_seed, rate
