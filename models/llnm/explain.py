"""Why LLNM-Net said what it said: per-input contributions and Grad-CAM++ maps.

Contributions (Shapley values)
    Exact Shapley values of the eight input groups (:mod:`models.llnm.shapley`):
    how much each group moves the patient's LLNM logit, averaged over every
    order of adding the groups to the "input unavailable" baseline (all
    withheld, as in ablation training). ``shapley`` keeps the signed values in
    logit units (positive raises the risk; they sum to logit minus baseline
    logit); ``contributions`` gives ``100 * |phi| / sum |phi|`` per group
    (summing to 100, or all 0 when no input moves the logit). An input the
    patient lacks (no report, unknown sex) or the model withholds gets 0.
Heatmaps (Grad-CAM++)
    For each of the three image inputs (location, texture, margin) the
    patch-embedding activations A (W channels on the S/p x S/p patch grid) and
    the gradients g of the patient's logit give per-position weights
    ``alpha = g^2 / (2 g^2 + sum(A) g^3)`` and channel weights
    ``w = sum(alpha * relu(g))``; the map is ``relu(sum_k w_k A_k)``,
    upsampled bilinearly to S x S and scaled to [0, 1] per view. The image
    heatmap is the mean of the three maps, rescaled to [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional

from models.llnm.shapley import GROUPS, shapley_values
from models.llnm.tmdl import TMDL, TMDLBatch

CONTRIBUTION_GROUPS = (
    "location", "texture", "margin", "echogenicity", "shape", "report", "sex", "age",
)  # fmt: skip
IMAGE_INPUTS = ("location", "texture", "margin")
_EPS = 1e-12


@dataclass(frozen=True)
class Explanation:
    """Explanations of a batch of patients."""

    logit: torch.Tensor  # (B,) float32
    stage_logits: torch.Tensor  # (B, stages) float32
    contributions: list[dict[str, float]]  # per patient: group -> percent of sum |phi|
    shapley: list[dict[str, float]]  # per patient: group -> phi, logit units (+ raises risk)
    baseline_logit: torch.Tensor  # (B,) logit with every input withheld
    heatmaps: dict[str, torch.Tensor]  # IMAGE_INPUTS and "combined": (B, V, S, S) in [0, 1]

    def patient(self, index: int, views: int) -> Explanation:
        """Patient ``index`` alone (B = 1), with the maps of its first ``views`` views."""
        rows = slice(index, index + 1)
        return Explanation(
            logit=self.logit[rows],
            stage_logits=self.stage_logits[rows],
            contributions=self.contributions[rows],
            shapley=self.shapley[rows],
            baseline_logit=self.baseline_logit[rows],
            heatmaps={k: t[rows, :views] for k, t in self.heatmaps.items()},
        )


def _by_group(table: torch.Tensor) -> list[dict[str, float]]:
    """(B, G) in :data:`CONTRIBUTION_GROUPS` order -> one dict per patient."""
    return [
        {name: float(value) for name, value in zip(CONTRIBUTION_GROUPS, row, strict=True)}
        for row in table.tolist()
    ]


def _gradcam_plus_plus(activation: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
    """Grad-CAM++ maps (M, h, w) from activations and gradients (M, W, h, w)."""
    g2, g3 = gradient.pow(2), gradient.pow(3)
    total = activation.sum(dim=(2, 3), keepdim=True)
    alpha = g2 / (2 * g2 + total * g3).where(gradient != 0, torch.ones_like(g2))
    weights = (alpha * functional.relu(gradient)).sum(dim=(2, 3), keepdim=True)  # (M, W, 1, 1)
    return functional.relu((weights * activation).sum(dim=1))


def _unit(maps: torch.Tensor) -> torch.Tensor:
    """Scale each (h, w) map of (M, h, w) to [0, 1]."""
    peak = maps.flatten(1).amax(dim=1).clamp(min=_EPS)[:, None, None]
    return maps / peak


def explain(model: TMDL, batch: TMDLBatch, chunk_rows: int = 64) -> Explanation:
    """Run ``model`` on ``batch`` (eval mode) and explain every patient's LLNM logit.

    ``chunk_rows`` bounds how many (patient, coalition) rows one forward pass holds.
    """
    model.eval()
    b, v = batch.view_mask.shape
    size = model.config.image_size
    captured: dict[str, torch.Tensor] = {}

    def keep(name: str) -> torch.utils.hooks.RemovableHandle:
        conv: nn.Module = getattr(model, name).conv

        def hook(_: nn.Module, __: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            output.retain_grad()
            captured[name] = output

        return conv.register_forward_hook(hook)

    handles = [keep(name) for name in IMAGE_INPUTS]
    try:
        with torch.enable_grad():
            out = model(batch)
            model.zero_grad(set_to_none=True)
            out.logit.sum().backward()
            model.zero_grad(set_to_none=True)
    finally:
        for handle in handles:
            handle.remove()
    heatmaps: dict[str, torch.Tensor] = {}
    for name in IMAGE_INPUTS:
        activation = captured[name].detach().float()  # float32 also under bf16 autocast
        gradient = captured[name].grad
        assert gradient is not None  # the logit depends on every patch embedding
        cam = _gradcam_plus_plus(activation, gradient.float())[:, None]  # (M, 1, h, w)
        upsampled = functional.interpolate(cam, (size, size), mode="bilinear", align_corners=False)
        heatmaps[name] = _unit(upsampled[:, 0]).view(b, v, size, size)
    combined = sum((heatmaps[name] for name in IMAGE_INPUTS), torch.zeros_like(heatmaps["texture"]))
    heatmaps["combined"] = _unit(combined.flatten(0, 1)).view(b, v, size, size)
    values = shapley_values(model, batch, chunk_rows)
    order = [GROUPS.index(name) for name in CONTRIBUTION_GROUPS]
    return Explanation(
        logit=out.logit.detach().float(),
        stage_logits=out.stage_logits.detach().float(),
        contributions=_by_group(values.percent()[:, order]),
        shapley=_by_group(values.phi[:, order]),
        baseline_logit=values.baseline.float(),
        heatmaps={k: t.detach() for k, t in heatmaps.items()},
    )
