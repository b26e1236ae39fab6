"""Fit a bundle's scope statistics on studies run through the production chain.

Every study of the fitting set and of a separate validation set goes through
:func:`pipeline.offline.run_study` with the gate off; each view with an index
nodule gives its :class:`~pipeline.offline.ViewMeasures`. The view limits and
the embeddings' means and covariances come from the fitting views, the OOD
thresholds from the validation views' distances (:mod:`models.scope`). The
statistics are written into the bundle, which is sealed again with the
threshold in its manifest (``metrics.scope``).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from rich.progress import track

from models.bundle import reseal_bundle
from models.scope import (
    DEFAULT_PERCENTILE,
    SCOPE_DIR,
    ScopeStatistics,
    ViewLimits,
    fit_embedding,
    fit_parts,
    fit_range,
    save_scope,
)
from pipeline.offline import OfflineModels, ViewMeasures, run_study
from pipeline.segment import image_parts

# The nodule confidence limit: this share of the 1st percentile seen in fitting.
NODULE_CONFIDENCE_PERCENTILE = 1.0
NODULE_CONFIDENCE_MARGIN = 0.9


def collect(
    studies: Iterable[Sequence[Path]], models: OfflineModels, label: str, total: int | None = None
) -> list[ViewMeasures]:
    """The measures of every nodule view of ``studies`` (lists of DICOM files), gate off."""
    views: list[ViewMeasures] = []
    with tempfile.TemporaryDirectory(prefix="llnm-scope-") as scratch:
        for number, paths in enumerate(
            track(studies, description=f"{label} studies", total=total, transient=True)
        ):
            outcome = run_study(paths, Path(scratch) / str(number), models, measures=True)
            views.extend(outcome.views)
    return views


def fit_statistics(
    train: Sequence[ViewMeasures],
    validation: Sequence[ViewMeasures],
    *,
    image_layout: Sequence[tuple[str, int]],
    percentile: float = DEFAULT_PERCENTILE,
    fitted_on: dict[str, Any],
) -> ScopeStatistics:
    """Limits and embedding distributions from ``train``, thresholds from ``validation``.

    ``image_layout`` names the parts of the image embedding
    (:func:`pipeline.segment.image_parts`).

    Raises
    ------
    ValueError
        If either set has fewer than two views.
    """
    if len(train) < 2 or len(validation) < 2:
        raise ValueError(
            f"need at least two views with a nodule in each set ({len(train)}, {len(validation)})"
        )

    def values(name: str) -> np.ndarray[Any, np.dtype[np.float64]]:
        return np.asarray([getattr(v, name) for v in train], dtype=np.float64)

    nodule = np.percentile(values("nodule_confidence"), NODULE_CONFIDENCE_PERCENTILE)
    return ScopeStatistics(
        limits=ViewLimits(
            thyroid_area=fit_range(values("thyroid_area")),
            thyroid_confidence=fit_range(values("thyroid_confidence")),
            nodule_confidence=round(float(nodule) * NODULE_CONFIDENCE_MARGIN, 4),
        ),
        image=fit_parts(
            np.stack([v.image_embedding for v in train]),
            np.stack([v.image_embedding for v in validation]),
            image_layout,
            percentile,
        ),
        llnm=fit_embedding(
            np.stack([v.embedding for v in train]),
            np.stack([v.embedding for v in validation]),
            percentile,
        ),
        fitted_on={**fitted_on, "train_views": len(train), "validation_views": len(validation)},
    )


def fit_bundle_scope(
    bundle_dir: Path,
    train: Iterable[Sequence[Path]],
    validation: Iterable[Sequence[Path]],
    *,
    percentile: float = DEFAULT_PERCENTILE,
    fitted_on: dict[str, Any],
    sizes: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """Fit and store the scope statistics of the bundle in ``bundle_dir``; reseal it.

    ``sizes`` (train, validation study counts) only sizes the progress bars.
    Statistics the bundle already has are removed first. Returns the manifest's
    ``metrics.scope`` entry.
    """
    if (bundle_dir / SCOPE_DIR).exists():
        shutil.rmtree(bundle_dir / SCOPE_DIR)
        reseal_bundle(bundle_dir)
    models = OfflineModels.load(bundle_dir, gate=False)
    train_views = collect(train, models, "fitting", None if sizes is None else sizes[0])
    validation_views = collect(
        validation, models, "validation", None if sizes is None else sizes[1]
    )
    statistics = fit_statistics(
        train_views,
        validation_views,
        image_layout=image_parts(models.segmenters.thyroid),
        percentile=percentile,
        fitted_on=fitted_on,
    )
    summary = save_scope(bundle_dir, statistics)
    reseal_bundle(bundle_dir, scope=summary)
    return summary
