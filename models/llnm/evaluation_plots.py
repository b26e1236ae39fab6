"""ROC, calibration and decision curves of LLNM predictions as PNG (matplotlib Agg, no pyplot)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from numpy.typing import ArrayLike

from models.llnm.evaluation import (
    calibration_bins,
    expected_calibration_error,
    net_benefit,
    roc_auc,
    roc_curve,
)

_SIZE = (6.0, 5.0)  # inches; 600 x 500 pixels at _DPI
_DPI = 100


def _figure() -> Figure:
    """A 6 x 5 inch figure attached to an Agg canvas."""
    figure = Figure(figsize=_SIZE, dpi=_DPI)
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Figure, path: Path) -> Path:
    """Lay out ``figure`` and write it to ``path`` as PNG."""
    figure.tight_layout()
    figure.savefig(path, format="png")
    return path


def plot_roc(
    path: Path,
    curves: Mapping[str, tuple[ArrayLike, ArrayLike]],
    title: str,
    reference_auc: float | None = None,
) -> Path:
    """ROC curve per named ``(labels, scores)`` pair with its AUC in the legend, and chance.

    ``reference_auc`` (e.g. the best AUC achievable on the data) is shown as a legend entry.

    Raises
    ------
    ValueError
        If ``curves`` is empty, ``reference_auc`` lies outside [0, 1], or a curve's labels and
        scores are invalid (see ``roc_curve``).
    """
    if not curves:
        raise ValueError("plot_roc needs at least one curve")
    if reference_auc is not None and not 0.0 <= reference_auc <= 1.0:
        raise ValueError(f"reference_auc must lie in [0, 1], got {reference_auc}")
    figure = _figure()
    axes = figure.subplots()
    for name, (labels, scores) in curves.items():
        fpr, tpr, _ = roc_curve(labels, scores)
        axes.plot(fpr, tpr, label=f"{name} (AUC {roc_auc(labels, scores):.3f})")
    axes.plot([0, 1], [0, 1], linestyle="--", color="grey", label="chance (AUC 0.500)")
    if reference_auc is not None:
        axes.plot([], [], linestyle="none", label=f"best achievable AUC {reference_auc:.3f}")
    axes.set(
        xlabel="1 - specificity (false positive rate)",
        ylabel="sensitivity (true positive rate)",
        xlim=(0.0, 1.0),
        ylim=(0.0, 1.02),
        title=title,
    )
    axes.set_aspect("equal")
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right", fontsize="small")
    return _save(figure, path)


def plot_calibration(
    path: Path, labels: ArrayLike, probabilities: ArrayLike, title: str, bins: int = 10
) -> Path:
    """Reliability diagram over equal-width bins, with a histogram of the predictions below.

    Raises
    ------
    ValueError
        On invalid labels or probabilities, or ``bins`` < 1 (see ``calibration_bins``).
    """
    table = calibration_bins(labels, probabilities, bins)
    ece = expected_calibration_error(labels, probabilities, bins)
    figure = _figure()
    reliability, histogram = figure.subplots(
        2, 1, sharex=True, gridspec_kw={"height_ratios": (3, 1)}
    )
    reliability.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect calibration")
    reliability.plot(
        table["mean_predicted"], table["observed"], marker="o", label=f"model (ECE {ece:.3f})"
    )
    reliability.set(ylabel="observed fraction positive", ylim=(0.0, 1.0), title=title)
    reliability.legend(loc="upper left", fontsize="small")
    histogram.hist(np.asarray(probabilities, dtype=np.float64), bins=bins, range=(0.0, 1.0))
    histogram.set(xlabel="predicted probability", ylabel="cases", xlim=(0.0, 1.0))
    for axes in (reliability, histogram):
        axes.grid(alpha=0.3)
    return _save(figure, path)


def plot_decision_curve(
    path: Path, labels: ArrayLike, probabilities: ArrayLike, title: str
) -> Path:
    """Net benefit of the model, treating all and treating none over thresholds 0.01..0.99.

    Raises
    ------
    ValueError
        On invalid labels or probabilities (see ``net_benefit``).
    """
    curve = net_benefit(labels, probabilities, np.linspace(0.01, 0.99, 99))
    figure = _figure()
    axes = figure.subplots()
    axes.plot(curve["threshold"], curve["model"], label="model")
    axes.plot(curve["threshold"], curve["treat_all"], linestyle="--", label="treat all")
    axes.plot(
        curve["threshold"], curve["treat_none"], linestyle=":", color="black", label="treat none"
    )
    top = max(float(curve["model"].max()), float(curve["treat_all"].max()), 0.01)
    axes.set(
        xlabel="threshold probability",
        ylabel="net benefit",
        xlim=(0.0, 1.0),
        ylim=(-0.1 * top - 0.01, 1.1 * top),
        title=title,
    )
    axes.grid(alpha=0.3)
    axes.legend(loc="upper right", fontsize="small")
    return _save(figure, path)
