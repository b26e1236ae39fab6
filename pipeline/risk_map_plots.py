"""PNG figures of a population risk map, written into the bundle beside its arrays.

``<plane>_<side>.png``: the paper's map (difference, 0-1) and the LLNM rate
map on the template, the template's outline drawn, the case counts in the
title. ``lobe_<side>_3d.png``: the 3-D lobe's three orthogonal maximum
projections. ``templates.png``: the four gland templates. White is 0 and red
is 1, as in the paper's Fig. 4c; grey is where a map is undefined.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from numpy.typing import NDArray

from models.risk_map import BOTH, RISK_MAP_DIR, PopulationMap, RiskMap

_CMAP = colormaps["Reds"].with_extremes(bad="#d0d0d0")  # grey where a map is undefined


def _show(axes: Any, values: NDArray[Any], title: str, outline: NDArray[np.bool_] | None) -> None:
    image = axes.imshow(np.ma.masked_invalid(values), cmap=_CMAP, vmin=0.0, vmax=1.0)
    if outline is not None:
        axes.contour(outline.astype(float), levels=[0.5], colors="black", linewidths=0.8)
    axes.set_title(title, fontsize=9)
    axes.set_xticks([])
    axes.set_yticks([])
    axes.figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04)


def _lobe(side: str) -> str:
    return "both lobes (left mirrored onto right)" if side == BOTH else f"{side} lobe"


def _save(figure: Figure, path: Path) -> None:
    FigureCanvasAgg(figure)
    figure.savefig(path, dpi=110, bbox_inches="tight")


def plane_figure(plane: str, side: str, entry: PopulationMap, label: str) -> Figure:
    """The paper's map and the rate map of one plane and side."""
    figure = Figure(figsize=(9.0, 3.0))
    left, right = figure.subplots(1, 2)
    mask = entry.template.mask
    _show(left, entry.maps["difference"], "paper's map (metastatic - non-metastatic)", mask)
    _show(right, entry.maps["rate"], "LLNM rate of nodules here", mask)
    figure.suptitle(
        f"{label}{_lobe(side)}, {plane}: {entry.cases} cases, {entry.positives} LLNM-positive"
        + ("" if plane == "transverse" else " (cranial pole left)"),
        fontsize=10,
    )
    return figure


def volume_figure(side: str, volume: NDArray[Any], label: str) -> Figure:
    """Maximum projections of a 3-D lobe: coronal, sagittal, axial."""
    figure = Figure(figsize=(10.0, 3.0))
    panels = figure.subplots(1, 3)
    with warnings.catch_warnings():  # all-NaN lines (outside the lobe) stay NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        views = (
            (np.nanmax(volume, axis=1).T, "coronal (depth projected)"),
            (np.nanmax(volume, axis=2).T, "sagittal (lateral-medial projected)"),
            (np.nanmax(volume, axis=0), "axial (cranio-caudal projected)"),
        )
    for axes, (values, title) in zip(panels, views, strict=True):
        _show(axes, values, title, None)
    figure.suptitle(f"{label}{_lobe(side)}, 3-D LLNM rate (max projections)", fontsize=10)
    return figure


def templates_figure(risk_map: RiskMap) -> Figure:
    """The gland templates."""
    keys = sorted(risk_map.planes)
    figure = Figure(figsize=(3.0 * len(keys), 2.4))
    panels = np.atleast_1d(figure.subplots(1, len(keys)))
    for axes, key in zip(panels, keys, strict=True):
        axes.imshow(risk_map.planes[key].template.mask, cmap="gray_r", vmin=0, vmax=2)
        axes.set_title(f"{key[1]} {key[0]}", fontsize=9)
        axes.set_xticks([])
        axes.set_yticks([])
    return figure


def write_plots(bundle_dir: Path, risk_map: RiskMap, label: str = "") -> list[Path]:
    """Write every figure into ``bundle_dir/risk_map``; ``label`` prefixes the titles."""
    folder = bundle_dir / RISK_MAP_DIR
    written = []
    for (plane, side), entry in sorted(risk_map.planes.items()):
        path = folder / f"{plane}_{side}.png"
        _save(plane_figure(plane, side, entry, label), path)
        written.append(path)
    for side, volume in sorted(risk_map.volumes.items()):
        path = folder / f"lobe_{side}_3d.png"
        _save(volume_figure(side, volume, label), path)
        written.append(path)
    path = folder / "templates.png"
    _save(templates_figure(risk_map), path)
    written.append(path)
    return written
