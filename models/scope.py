"""What a bundle's models saw in training: the limits and the embedding statistics of the gate.

Layout in a bundle::

    scope/statistics.json        limits, thresholds, percentile, what they were fitted on
    scope/embedding.safetensors  mean (D,) and precision (D, D) of each embedding (part)

The manifest's ``metrics.scope`` repeats the statistics.json summary.

Limits
    Per assessed view: the thyroid segmenter's mask area as a share of the crop
    and its mean probability inside the mask, each within the 0.5th to 99.5th
    percentile of the fitting views (:data:`LIMIT_PERCENTILES`) widened by a
    tenth of that range on each side (:data:`LIMIT_MARGIN`: a view a little
    beyond the fitting sample is not declined for it); the index nodule's
    detection confidence above 0.9 times its 1st percentile.
Out-of-distribution scores
    Two embeddings of each view. ``image`` is checked in the segment stage,
    before any nodule is looked for: what the thyroid segmenter's encoder made
    of the whole crop, stage by stage from grain to shape
    (:func:`models.segmentation.thyroid.unet_outputs`), and the crop's grey-level
    and speckle statistics (:mod:`imaging.texture`); each part has its own
    distribution, and the view's score is that of the part farthest beyond its
    threshold. ``llnm``, LLNM-Net's pooled token vector that its heads read, is
    checked in the infer stage; it is taken with the report withheld
    (:data:`LLNM_EMBEDDING_INPUTS`), so a study without a report is judged on
    the same footing as one with (with the report in, a report-less study's
    views scored about twice as far out and one in five lost a view). A
    distance is the Mahalanobis distance to the fitting views (their mean and
    Ledoit-Wolf shrunk covariance); the thresholds are set on separate
    validation views so that the ``percentile`` (default 99.5) of them passes:
    of ``llnm`` its distances, of ``image`` the worst of its parts (each part's
    own percentile, scaled by one common factor).
A bundle without ``scope/`` still loads: its views are checked only for a
non-empty thyroid mask, and the OOD check is reported unavailable.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from safetensors.torch import load_file, save_file

from models.bundle import BundleError

# What the ``llnm`` embedding is computed from; statistics that say otherwise do not load.
LLNM_EMBEDDING_INPUTS = "images, demographics and measured features; report withheld"
SCOPE_DIR = "scope"
STATISTICS_FILE = "statistics.json"
EMBEDDING_FILE = "embedding.safetensors"
LIMIT_PERCENTILES = (0.5, 99.5)
LIMIT_MARGIN = 0.1  # of the percentile range, added below and above
DEFAULT_PERCENTILE = 99.5

Floats = NDArray[np.float64]


@dataclass(frozen=True)
class Range:
    """A closed interval ``low``..``high``."""

    low: float
    high: float

    def __contains__(self, value: object) -> bool:
        return isinstance(value, float | int) and self.low <= value <= self.high


@dataclass(frozen=True)
class ViewLimits:
    """The segmenters' outputs seen in training, per view."""

    thyroid_area: Range  # share of the crop inside the thyroid mask
    thyroid_confidence: Range  # mean thyroid probability inside the mask
    nodule_confidence: float  # lowest index nodule detection confidence accepted


@dataclass(frozen=True)
class EmbeddingDistribution:
    """Mean and precision of the training views' embeddings, and the OOD threshold."""

    mean: Floats  # (D,)
    precision: Floats  # (D, D)
    threshold: float
    percentile: float

    def distances(self, embeddings: NDArray[np.floating[Any]]) -> Floats:
        """Mahalanobis distance of each row of ``embeddings`` (N, D)."""
        centred = np.asarray(embeddings, dtype=np.float64) - self.mean
        squared = np.einsum("nd,de,ne->n", centred, self.precision, centred)
        return np.asarray(np.sqrt(np.maximum(squared, 0.0)), dtype=np.float64)


@dataclass(frozen=True)
class EmbeddingPart:
    """``width`` consecutive columns of an embedding, with their own distribution."""

    name: str
    width: int
    distribution: EmbeddingDistribution


@dataclass(frozen=True)
class PartScore:
    """The part of a view's embedding farthest beyond its threshold."""

    part: str
    distance: float
    threshold: float

    @property
    def exceeded(self) -> bool:
        """Whether the view lies outside the training distribution."""
        return self.distance > self.threshold


@dataclass(frozen=True)
class PartedDistribution:
    """An embedding made of named parts, each with its distribution and threshold."""

    parts: tuple[EmbeddingPart, ...]
    percentile: float

    @property
    def layout(self) -> tuple[tuple[str, int], ...]:
        """Name and width of each part, in order."""
        return tuple((p.name, p.width) for p in self.parts)

    def worst(self, embedding: NDArray[np.floating[Any]]) -> PartScore:
        """The part of ``embedding`` (D,) with the largest distance relative to its threshold.

        Raises
        ------
        ValueError
            If ``embedding`` is not as wide as the parts together.
        """
        row = np.asarray(embedding, dtype=np.float64)
        width = sum(p.width for p in self.parts)
        if row.shape != (width,):
            raise ValueError(f"an embedding of {width} values was expected, got {row.shape}")
        scores = []
        start = 0
        for part in self.parts:
            block = row[None, start : start + part.width]
            distance = float(part.distribution.distances(block)[0])
            scores.append(PartScore(part.name, distance, part.distribution.threshold))
            start += part.width
        return max(scores, key=lambda s: s.distance / s.threshold if s.threshold > 0 else np.inf)


@dataclass(frozen=True)
class ScopeStatistics:
    """A bundle's scope: the view limits and the embedding distributions."""

    limits: ViewLimits
    image: PartedDistribution  # segmenter encoder stages and texture, whole crop
    llnm: EmbeddingDistribution  # LLNM-Net's view embedding
    fitted_on: dict[str, Any]  # what the statistics came from (data, counts, seeds)


def fit_range(values: NDArray[np.floating[Any]]) -> Range:
    """The range seen in fitting: :data:`LIMIT_PERCENTILES` widened by :data:`LIMIT_MARGIN`."""
    low, high = (float(v) for v in np.percentile(values, LIMIT_PERCENTILES))
    margin = LIMIT_MARGIN * (high - low)
    return Range(low - margin, high + margin)


def shrunk_covariance(x: Floats) -> Floats:
    """Ledoit-Wolf: the covariance of rows ``x`` (N, D) shrunk towards a scaled identity."""
    n, d = x.shape
    centred = x - x.mean(axis=0)
    sample = centred.T @ centred / n
    target = np.trace(sample) / d
    spread = np.sum((sample - target * np.eye(d)) ** 2)
    # sum over rows of ||x x^T - S||^2 = ||x||^4 - 2 x^T S x + ||S||^2
    norms = np.sum(centred**2, axis=1)
    quadratic = np.einsum("nd,de,ne->n", centred, sample, centred)
    beta = float(np.sum(norms**2 - 2.0 * quadratic) + n * np.sum(sample**2)) / n**2
    shrinkage = 0.0 if spread == 0 else min(1.0, beta / float(spread))
    return np.asarray(shrinkage * target * np.eye(d) + (1.0 - shrinkage) * sample)


def fit_embedding(
    train: NDArray[np.floating[Any]],
    validation: NDArray[np.floating[Any]],
    percentile: float = DEFAULT_PERCENTILE,
) -> EmbeddingDistribution:
    """Mean and shrunk precision of ``train``; threshold at ``percentile`` of ``validation``.

    Raises
    ------
    ValueError
        If either set has fewer than two rows or their widths differ.
    """
    x = np.asarray(train, dtype=np.float64)
    v = np.asarray(validation, dtype=np.float64)
    if x.ndim != 2 or v.ndim != 2 or len(x) < 2 or len(v) < 2 or x.shape[1] != v.shape[1]:
        raise ValueError(f"need (N, D) train and validation embeddings, got {x.shape}, {v.shape}")
    precision = np.asarray(np.linalg.inv(shrunk_covariance(x)), dtype=np.float64)
    fitted = EmbeddingDistribution(x.mean(axis=0), precision, 0.0, percentile)
    threshold = float(np.percentile(fitted.distances(v), percentile))
    return EmbeddingDistribution(fitted.mean, precision, threshold, percentile)


def fit_parts(
    train: NDArray[np.floating[Any]],
    validation: NDArray[np.floating[Any]],
    layout: Sequence[tuple[str, int]],
    percentile: float = DEFAULT_PERCENTILE,
) -> PartedDistribution:
    """One distribution per part of ``layout`` (name, width), thresholds set jointly.

    Each part's threshold is first its own ``percentile`` of the validation
    distances; all are then scaled by the ``percentile`` of each validation
    view's worst ratio of distance to threshold, so that this share of the
    validation views passes every part.

    Raises
    ------
    ValueError
        As :func:`fit_embedding`, or if the widths do not add up to the embeddings'.
    """
    x = np.asarray(train, dtype=np.float64)
    v = np.asarray(validation, dtype=np.float64)
    if x.ndim != 2 or sum(w for _, w in layout) != x.shape[1]:
        raise ValueError(f"parts {list(layout)} do not make up embeddings of shape {x.shape}")
    fitted = []
    ratios = []
    start = 0
    for name, width in layout:
        columns = slice(start, start + width)
        distribution = fit_embedding(x[:, columns], v[:, columns], percentile)
        ratios.append(distribution.distances(v[:, columns]) / max(distribution.threshold, 1e-12))
        fitted.append((name, width, distribution))
        start += width
    factor = float(np.percentile(np.max(np.stack(ratios), axis=0), percentile))
    return PartedDistribution(
        tuple(
            EmbeddingPart(name, width, replace(d, threshold=d.threshold * factor))
            for name, width, d in fitted
        ),
        percentile,
    )


def save_scope(bundle_dir: Path, statistics: ScopeStatistics) -> dict[str, Any]:
    """Write ``scope/`` into ``bundle_dir``; returns the manifest's ``metrics.scope`` entry.

    The bundle must be sealed again afterwards (:func:`models.bundle.reseal_bundle`).
    """
    folder = bundle_dir / SCOPE_DIR
    folder.mkdir(parents=True, exist_ok=True)
    named = {
        **{f"image.{p.name}": p.distribution for p in statistics.image.parts},
        "llnm": statistics.llnm,
    }
    tensors = {}
    for name, distribution in named.items():
        tensors[f"{name}.mean"] = torch.from_numpy(distribution.mean.copy())
        tensors[f"{name}.precision"] = torch.from_numpy(distribution.precision.copy())
    save_file(tensors, folder / EMBEDDING_FILE)
    summary = {
        "ood": {
            "image": {
                "percentile": statistics.image.percentile,
                "parts": [
                    {
                        "name": p.name,
                        "width": p.width,
                        "threshold": round(p.distribution.threshold, 4),
                    }
                    for p in statistics.image.parts
                ],
            },
            "llnm": {
                "percentile": statistics.llnm.percentile,
                "width": int(statistics.llnm.mean.shape[0]),
                "threshold": round(statistics.llnm.threshold, 4),
                "inputs": LLNM_EMBEDDING_INPUTS,
            },
        },
        "limits": asdict(statistics.limits),
        "fitted_on": statistics.fitted_on,
    }
    (folder / STATISTICS_FILE).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


def load_scope(bundle_dir: Path) -> ScopeStatistics | None:
    """The scope statistics of the (verified) bundle in ``bundle_dir``; None without ``scope/``.

    Raises
    ------
    BundleError
        If the statistics are incomplete or of another layout.
    """
    folder = bundle_dir / SCOPE_DIR
    if not (folder / STATISTICS_FILE).is_file():
        return None
    try:
        return _read_scope(folder)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BundleError(
            f"{folder} holds unreadable scope statistics ({type(exc).__name__}: {exc}); "
            "fit them again with llnm-node bundle fit-scope"
        ) from exc


def _read_scope(folder: Path) -> ScopeStatistics:
    summary = json.loads((folder / STATISTICS_FILE).read_text(encoding="utf-8"))
    tensors = load_file(folder / EMBEDDING_FILE)

    def distribution(name: str, threshold: float, percentile: float) -> EmbeddingDistribution:
        mean = tensors[f"{name}.mean"].double().numpy()
        precision = tensors[f"{name}.precision"].double().numpy()
        if mean.ndim != 1 or precision.shape != (mean.shape[0], mean.shape[0]):
            raise ValueError(f"{name}: mean {mean.shape} and precision {precision.shape}")
        return EmbeddingDistribution(mean, precision, float(threshold), float(percentile))

    image, llnm, limits = summary["ood"]["image"], summary["ood"]["llnm"], summary["limits"]
    if llnm.get("inputs") != LLNM_EMBEDDING_INPUTS:
        raise ValueError(f"LLNM-Net embeddings of other inputs ({llnm.get('inputs')!r})")
    parts = tuple(
        EmbeddingPart(
            str(part["name"]),
            int(part["width"]),
            distribution(f"image.{part['name']}", part["threshold"], image["percentile"]),
        )
        for part in image["parts"]
    )
    for part in parts:
        if part.distribution.mean.shape != (part.width,):
            raise ValueError(f"image part {part.name} is not {part.width} wide")
    return ScopeStatistics(
        limits=ViewLimits(
            thyroid_area=Range(**limits["thyroid_area"]),
            thyroid_confidence=Range(**limits["thyroid_confidence"]),
            nodule_confidence=float(limits["nodule_confidence"]),
        ),
        image=PartedDistribution(parts, float(image["percentile"])),
        llnm=distribution("llnm", llnm["threshold"], llnm["percentile"]),
        fitted_on=dict(summary["fitted_on"]),
    )
