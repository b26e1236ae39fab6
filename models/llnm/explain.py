"""Why LLNM-Net said what it said: per-input contributions and Grad-CAM++ maps.

Contributions (attention rollout)
    Each self-attention block's probabilities are averaged over heads, mixed
    half and half with the identity (the residual path) and row-normalised;
    their product over the blocks is the rollout R. The pooled output is the
    mean of the valid tokens, so token j's relevance is the mean of R[i, j]
    over the valid rows i. Relevances are summed per input group
    (:data:`CONTRIBUTION_GROUPS`), averaged over the patient's present views
    and given in percent (summing to 100).
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

from models.llnm.tmdl import SCALAR_TOKENS, TMDL, TMDLBatch, token_groups, withhold

CONTRIBUTION_GROUPS = (
    "location", "texture", "margin", "echogenicity", "shape", "report", "sex", "age",
)  # fmt: skip
IMAGE_INPUTS = ("location", "texture", "margin")
_EPS = 1e-12


@dataclass(frozen=True)
class Explanation:
    """Explanations of a batch of patients."""

    logit: torch.Tensor  # (B,)
    stage_logits: torch.Tensor  # (B, stages)
    contributions: list[dict[str, float]]  # per patient: group -> percent, summing to 100
    heatmaps: dict[str, torch.Tensor]  # IMAGE_INPUTS and "combined": (B, V, S, S) in [0, 1]


def rollout(attentions: list[torch.Tensor], key_mask: torch.Tensor) -> torch.Tensor:
    """Relevance (M, N) of every token to the pooled output, from (M, H, N, N) attentions."""
    m, n = key_mask.shape
    identity = torch.eye(n, device=key_mask.device).expand(m, n, n)
    result = identity
    for probabilities in attentions:
        mixed = 0.5 * probabilities.float().mean(dim=1) + 0.5 * identity
        mixed = mixed / mixed.sum(dim=-1, keepdim=True)
        result = mixed @ result
    rows = key_mask.float()  # (M, N)
    return (rows[:, :, None] * result).sum(dim=1) / rows.sum(dim=1, keepdim=True)


def contributions(
    model: TMDL, batch: TMDLBatch, attentions: list[torch.Tensor]
) -> list[dict[str, float]]:
    """Per patient, each input group's share of the rollout relevance in percent."""
    b, v = batch.view_mask.shape
    config = model.config
    batch = withhold(batch, config.withheld)
    report_mask = batch.text_present[:, None] & batch.text.ne(0).any(dim=-1)  # (B, T)
    report_mask = report_mask.repeat_interleave(v, dim=0)  # (M, T)
    image_tokens = 3 * config.patches
    key_mask = torch.cat(
        [
            report_mask.new_ones(b * v, image_tokens),
            report_mask,
            report_mask.new_ones(b * v, SCALAR_TOKENS),
        ],
        dim=1,
    )
    relevance = rollout(attentions, key_mask) * key_mask  # (M, N)
    groups = token_groups(config)
    per_group = torch.stack(
        [relevance[:, groups[name]].sum(dim=1) for name in CONTRIBUTION_GROUPS], dim=1
    ).view(b, v, -1)  # (B, V, G)
    present = batch.view_mask.float()[:, :, None]  # (B, V, 1)
    mean = (per_group * present).sum(dim=1) / present.sum(dim=1).clamp(min=1)  # (B, G)
    shares = 100.0 * mean / mean.sum(dim=1, keepdim=True).clamp(min=_EPS)
    return [
        {name: float(value) for name, value in zip(CONTRIBUTION_GROUPS, row, strict=True)}
        for row in shares.cpu()
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


def explain(model: TMDL, batch: TMDLBatch) -> Explanation:
    """Run ``model`` on ``batch`` (eval mode) and explain every patient's LLNM logit."""
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
            out = model(batch, return_attention=True)
            model.zero_grad(set_to_none=True)
            out.logit.sum().backward()
            model.zero_grad(set_to_none=True)
    finally:
        for handle in handles:
            handle.remove()
    heatmaps: dict[str, torch.Tensor] = {}
    for name in IMAGE_INPUTS:
        activation = captured[name].detach()
        gradient = captured[name].grad
        assert gradient is not None  # the logit depends on every patch embedding
        cam = _gradcam_plus_plus(activation, gradient)[:, None]  # (M, 1, h, w)
        upsampled = functional.interpolate(cam, (size, size), mode="bilinear", align_corners=False)
        heatmaps[name] = _unit(upsampled[:, 0]).view(b, v, size, size)
    combined = sum((heatmaps[name] for name in IMAGE_INPUTS), torch.zeros_like(heatmaps["texture"]))
    heatmaps["combined"] = _unit(combined.flatten(0, 1)).view(b, v, size, size)
    assert out.attentions is not None
    return Explanation(
        logit=out.logit.detach(),
        stage_logits=out.stage_logits.detach(),
        contributions=contributions(model, batch, [a.detach() for a in out.attentions]),
        heatmaps={k: t.detach() for k, t in heatmaps.items()},
    )
