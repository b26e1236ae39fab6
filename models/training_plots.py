"""Training curves as PNG, drawn with matplotlib's Agg canvas (no display, no pyplot state)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def plot_training_curve(
    history: Sequence[dict[str, Any]],
    path: Path,
    title: str,
    scores: Sequence[tuple[str, str]] = (("val_dice", "Dice"), ("val_iou", "IoU")),
) -> Path:
    """Training loss and the validation ``scores`` ((key, label) pairs) per epoch, to ``path``."""
    epochs = [row["epoch"] for row in history]
    figure = Figure(figsize=(9, 3.5), dpi=100)
    FigureCanvasAgg(figure)
    loss_axes, score_axes = figure.subplots(1, 2)
    loss_axes.plot(epochs, [row["train_loss"] for row in history], marker="o")
    loss_axes.set(xlabel="epoch", ylabel="loss", title="training loss")
    for (key, label), marker in zip(scores, "osd^v", strict=False):
        score_axes.plot(epochs, [row[key] for row in history], marker=marker, label=label)
    score_axes.set(xlabel="epoch", ylabel="score", title="validation", ylim=(0.0, 1.0))
    score_axes.legend(loc="lower right")
    for axes in (loss_axes, score_axes):
        axes.grid(alpha=0.3)
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, format="png")
    return path
