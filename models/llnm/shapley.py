"""Exact Shapley values of LLNM-Net's input groups against the "input unavailable" baseline.

Players are the input groups of :data:`models.llnm.config.WITHHOLDABLE`; the
value of a coalition S is the patient's LLNM logit when every group outside
S is withheld (:func:`models.llnm.tmdl.withhold`: maps and scalars zero, the
report absent — what ablation training does). For each patient

    phi_g = sum over S not holding g of |S|! (k - |S| - 1)! / k! * (v(S + g) - v(S))

over its k players, so ``sum(phi) == logit(all inputs) - logit(all withheld)``.
A group is no player for a patient — and gets exactly 0 — when the model
withholds it itself (``TMDLConfig.withheld``) or withholding it leaves the
patient's inputs unchanged (no report, unknown sex, ...): such an input
cannot change any coalition's value (the dummy axiom).

All 2^k coalitions of every patient (k <= 8: 256) are evaluated in one
batched pass over (patient, coalition) rows, ``chunk_rows`` rows at a time
under ``torch.inference_mode`` in eval mode.

Cost (2 views per patient, 256 coalitions = 512 view passes, float32, one
shared CPU core, measured 2026-12-04): ``tiny`` with 128 report tokens about
4.5-5 s per patient (the pass is the cost: 1.1 s per 128 views); ``base``
(224 px, width 768) 37 s per 8 coalitions, i.e. about 20 min per patient —
far too slow on a CPU. On a GPU the rows are batched (``chunk_rows``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from math import factorial

import torch

from models.llnm.config import WITHHOLDABLE
from models.llnm.tmdl import TMDL, TMDLBatch, withhold

GROUPS: tuple[str, ...] = WITHHOLDABLE


@dataclass(frozen=True)
class ShapleyValues:
    """Per patient (B) and group (:data:`GROUPS` order) Shapley values in logit units."""

    phi: torch.Tensor  # (B, G) float64; positive raises the LLNM risk
    players: torch.Tensor  # (B, G) bool: the groups that could change the patient's logit
    full: torch.Tensor  # (B,) float64 logit with every input
    baseline: torch.Tensor  # (B,) float64 logit with every input withheld

    def percent(self) -> torch.Tensor:
        """(B, G) ``100 * |phi| / sum |phi|``; all 0 for a patient whose phi are all 0."""
        magnitude = self.phi.abs()
        total = magnitude.sum(dim=1, keepdim=True)
        return torch.where(total > 0, 100.0 * magnitude / total.clamp(min=1e-300), 0.0)


def select(batch: TMDLBatch, rows: torch.Tensor) -> TMDLBatch:
    """The patients of ``batch`` at ``rows`` (a 1-D index tensor), in that order."""
    return TMDLBatch(**{f.name: getattr(batch, f.name)[rows] for f in fields(batch)})


def concat(batches: Sequence[TMDLBatch]) -> TMDLBatch:
    """The patients of ``batches`` one after the other."""
    return TMDLBatch(
        **{f.name: torch.cat([getattr(b, f.name) for b in batches]) for f in fields(TMDLBatch)}
    )


def withheld_logits(
    model: TMDL,
    batch: TMDLBatch,
    requests: Sequence[tuple[int, tuple[str, ...]]],
    chunk_rows: int = 64,
) -> torch.Tensor:
    """LLNM logits (R,) float64 of patient ``i`` with ``names`` withheld, per request.

    Raises
    ------
    ValueError
        If ``chunk_rows`` is not positive.
    """
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be positive, not {chunk_rows}")
    model.eval()
    device = batch.view_mask.device
    patients = [select(batch, torch.tensor([i], device=device)) for i in range(len(batch.sex))]
    logits = []
    with torch.inference_mode():
        for start in range(0, len(requests), chunk_rows):
            rows = [
                withhold(patients[i], names) for i, names in requests[start : start + chunk_rows]
            ]
            logits.append(model(concat(rows)).logit.double())
    return torch.cat(logits) if logits else torch.zeros(0, dtype=torch.float64, device=device)


def players(model: TMDL, batch: TMDLBatch) -> torch.Tensor:
    """(B, G) bool: groups the model sees and whose withholding changes the patient's inputs."""
    b = len(batch.sex)
    result = torch.zeros(b, len(GROUPS), dtype=torch.bool)
    for g, name in enumerate(GROUPS):
        if name in model.config.withheld:
            continue
        without = withhold(batch, (name,))
        for f in fields(batch):
            before, after = getattr(batch, f.name), getattr(without, f.name)
            result[:, g] |= before.ne(after).reshape(b, -1).any(dim=1).cpu()
    return result


def _weights(k: int) -> torch.Tensor:
    """Shapley weight of a coalition of size s (index) among k players."""
    return torch.tensor(
        [factorial(s) * factorial(k - s - 1) / factorial(k) for s in range(k)], dtype=torch.float64
    )


def shapley_values(model: TMDL, batch: TMDLBatch, chunk_rows: int = 64) -> ShapleyValues:
    """Exact Shapley values of every patient's input groups (module docstring)."""
    playing = players(model, batch)
    requests: list[tuple[int, tuple[str, ...]]] = []
    spans = []
    for i, row in enumerate(playing.tolist()):
        members = [g for g, plays in enumerate(row) if plays]
        start = len(requests)
        for mask in range(1 << len(members)):
            present = {GROUPS[g] for bit, g in enumerate(members) if mask >> bit & 1}
            requests.append((i, tuple(n for n in GROUPS if n not in present)))
        spans.append((members, start))
    values = withheld_logits(model, batch, requests, chunk_rows).cpu()
    phi = torch.zeros(playing.shape, dtype=torch.float64)
    full, baseline = torch.zeros(len(spans), dtype=torch.float64), torch.zeros_like(phi[:, 0])
    for i, (members, start) in enumerate(spans):
        k = len(members)
        v = values[start : start + (1 << k)]  # v[mask]: bit b set = members[b] present
        full[i], baseline[i] = v[-1], v[0]
        if k == 0:
            continue
        masks = torch.arange(1 << k)
        sizes = sum(((masks >> bit) & 1 for bit in range(k)), torch.zeros_like(masks))
        weights = _weights(k)
        for bit, g in enumerate(members):
            without = masks[(masks >> bit) & 1 == 0]
            gain = v[without | (1 << bit)] - v[without]
            phi[i, g] = (weights[sizes[without]] * gain).sum()
    return ShapleyValues(phi=phi, players=playing, full=full, baseline=baseline)


def deletion_curves(
    model: TMDL, batch: TMDLBatch, values: ShapleyValues, chunk_rows: int = 64
) -> tuple[torch.Tensor, torch.Tensor]:
    """|logit change| (B, G + 1) as groups are withheld cumulatively, in two orders.

    Step t withholds the first t groups of an order: the attributed order takes the
    players by decreasing |phi|, the reverse order by increasing |phi|; non-players
    come last in both (withholding them changes nothing). Step 0 is 0.
    """
    orders: dict[str, list[list[int]]] = {"attributed": [], "reverse": []}
    for magnitudes, playing in zip(values.phi.abs().tolist(), values.players.tolist(), strict=True):
        members = sorted((g for g, p in enumerate(playing) if p), key=lambda g: -magnitudes[g])
        rest = [g for g, p in enumerate(playing) if not p]
        orders["attributed"].append(members + rest)
        orders["reverse"].append(members[::-1] + rest)
    curves = []
    for per_patient in orders.values():
        requests = [
            (i, tuple(GROUPS[g] for g in order[:t]))
            for i, order in enumerate(per_patient)
            for t in range(1, len(GROUPS) + 1)
        ]
        logits = withheld_logits(model, batch, requests, chunk_rows).cpu()
        change = (logits.view(len(per_patient), -1) - values.full[:, None]).abs()
        curves.append(torch.cat([torch.zeros(len(per_patient), 1, dtype=torch.float64), change], 1))
    return curves[0], curves[1]
