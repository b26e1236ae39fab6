"""LLNM-Net explanations of several jobs' patients in one pass: pad, stack, explain, split.

Each job brings a one-patient :class:`~models.llnm.tmdl.TMDLBatch` on the CPU
with its own number of views. :func:`explain_patients` pads every patient to
the most views any has (padded views are zeros, absent in ``view_mask``, so
the model ignores them), stacks the patients into one batch, explains it
(:func:`models.llnm.explain.explain`: forward, Grad-CAM++, Shapley values) and
gives each patient its own :class:`~models.llnm.explain.Explanation`, cut to
its views. A lone patient is explained exactly as on its own: nothing is
padded. On CUDA the stacked batch travels through pinned host memory and the
pass runs under bf16 autocast; the maps and values are then computed in
float32/float64 from its activations and logits.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import fields, replace

import torch

from models.llnm.explain import Explanation, explain
from models.llnm.shapley import concat
from models.llnm.tmdl import TMDL, TMDLBatch

PER_VIEW = ("location", "texture", "margin", "echogenicity", "shape", "position", "view_mask")


def pad_views(batch: TMDLBatch, views: int) -> TMDLBatch:
    """``batch`` with absent (zero, masked) views appended up to ``views`` per patient.

    Raises
    ------
    ValueError
        If ``batch`` already has more than ``views`` views.
    """
    extra = views - batch.view_mask.shape[1]
    if extra < 0:
        raise ValueError(f"cannot pad {batch.view_mask.shape[1]} views to {views}")
    if extra == 0:
        return batch

    def pad(t: torch.Tensor) -> torch.Tensor:
        return torch.cat([t, t.new_zeros((t.shape[0], extra, *t.shape[2:]))], dim=1)

    return replace(batch, **{name: pad(getattr(batch, name)) for name in PER_VIEW})


def stack_patients(batches: Sequence[TMDLBatch]) -> TMDLBatch:
    """The patients of ``batches`` in one batch, padded to the most views any has."""
    views = max(b.view_mask.shape[1] for b in batches)
    return concat([pad_views(b, views) for b in batches])


def to_device(batch: TMDLBatch, device: torch.device) -> TMDLBatch:
    """``batch`` on ``device``; to CUDA through pinned host memory, without blocking."""
    if device.type != "cuda":
        return batch.to(device)
    return TMDLBatch(
        **{
            f.name: getattr(batch, f.name).pin_memory().to(device, non_blocking=True)
            for f in fields(batch)
        }
    )


def precision(device: torch.device) -> contextlib.AbstractContextManager[object]:
    """bf16 autocast on CUDA; on any other device, nothing (float32 as trained)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def explain_patients(
    model: TMDL, batches: Sequence[TMDLBatch], device: torch.device, chunk_rows: int = 64
) -> list[Explanation]:
    """One :class:`Explanation` per one-patient CPU batch, all explained in one pass.

    Raises
    ------
    ValueError
        If a batch holds more or fewer than one patient.
    """
    if any(len(b.sex) != 1 for b in batches):
        raise ValueError("every batch must hold exactly one patient")
    stacked = to_device(stack_patients(batches), device)
    with precision(device):
        explanation = explain(model, stacked, chunk_rows)
    return [explanation.patient(i, b.view_mask.shape[1]) for i, b in enumerate(batches)]
