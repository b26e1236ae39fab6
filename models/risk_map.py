"""The population location risk map of a bundle: templates, maps, and a nodule placed on them.

Layout (``risk_map/`` in the bundle; sealed with it)::

    templates.safetensors   "<plane>.<side>.mask" (uint8 0/1, the plane's canvas)
    population.safetensors  "<plane>.<side>.<map>" (float32; NaN where a map is undefined),
                            map one of MAPS, and "<side>.volume" (the 3-D lobe)
    risk_map.json           recipe, case counts, registration quality, statistics
    registration.json       every registered view's Dice and MSE (case id, plane, side)
    *.png                   the maps, the 3-D projections and the templates, for people

Maps (one per plane and side, on the template's canvas)
    ``metastatic`` / ``non_metastatic``: the sums of the registered CPDT location
    maps ``x_l^R`` of the LLNM-positive / -negative cases. ``difference``: the
    paper's risk map, their difference scaled to 0-1 over the template gland.
    ``coverage``: how many cases' nodules cover each pixel (sum of the warped
    nodule area fractions); ``rate``: the LLNM rate of the nodules there, the
    Gaussian-smoothed positive coverage over the smoothed coverage
    (:data:`RATE_SMOOTHING_PX`), defined where the smoothed coverage reaches
    :data:`MIN_COVERAGE` cases.
Placing a patient's nodule (:func:`place`)
    The view is registered to its plane and side's template; the map values are
    read at the template pixel nearest the warped nodule's centroid: the rate
    is the "population location risk", the difference the paper's value.
    Region: the third of the template's long axis holding that pixel
    (longitudinal: upper/middle/lower, cranial on the left; transverse:
    lateral/central/medial, the lateral side being the image left for the
    right lobe).
Both lobes
    Besides one map per side, each plane has a map of both lobes together
    (side :data:`BOTH`): every view on the right lobe's template, left
    transverse views mirrored. Where the two lobes carry the same regional
    risk it has twice the cases behind each value.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from safetensors.numpy import load_file, save_file

from imaging.features.extract import View
from imaging.gland_frame import MARGIN, FramedView
from imaging.registration import Template, register
from models.bundle import BundleError

RISK_MAP_DIR = "risk_map"
TEMPLATES_FILE = "templates.safetensors"
POPULATION_FILE = "population.safetensors"
SUMMARY_FILE = "risk_map.json"
MAPS = ("metastatic", "non_metastatic", "difference", "coverage", "rate")
PLANES: tuple[View, ...] = ("transverse", "longitudinal")
SIDES = ("right", "left")
BOTH = "both"  # both lobes on the right lobe's template, left transverse views mirrored
RATE_SMOOTHING_PX = 2.0
MIN_COVERAGE = 5.0
_REGIONS: dict[str, tuple[str, str, str]] = {
    "longitudinal": ("upper", "middle", "lower"),
    "transverse": ("lateral", "central", "medial"),
}
FloatMap = NDArray[np.float32]


@dataclass(frozen=True, eq=False)
class PopulationMap:
    """The maps of one plane and side (module docstring)."""

    template: Template
    maps: dict[str, FloatMap]
    cases: int
    positives: int


@dataclass(frozen=True, eq=False)
class RiskMap:
    """A bundle's population maps, its 3-D lobes and its summary."""

    planes: dict[tuple[str, str], PopulationMap]  # (plane, side)
    volumes: dict[str, NDArray[np.float16]]  # side -> (cranio-caudal, depth, lateral-medial)
    summary: dict[str, Any]


@dataclass(frozen=True, eq=False)
class PopulationLocation:
    """Where a view's index nodule sits on the population map, and the map's values there."""

    plane: View
    side: str
    position: tuple[float, float]  # warped nodule centroid (x, y), template pixels
    pixel: tuple[int, int]  # the template pixel read (x, y)
    region: str  # third of the template (module docstring)
    risk: float | None  # the rate map's value; None where too few cases lie there
    paper_value: float  # the difference map's value (0-1)
    coverage: float  # cases whose nodules cover that pixel
    cases: int  # cases behind the map
    dice: float  # of this view's registration
    mse: float  # of its warped gland CPDT map against the template's
    rate_map: FloatMap  # the map read (for the picture in the report)
    template: NDArray[np.bool_]  # its template's gland


def region_of(plane: str, side: str, x: float, width: int) -> str:
    """The template third (module docstring) holding template column ``x``."""
    t = (x + 0.5 - MARGIN) / (width - 2 * MARGIN)
    third = min(max(int(np.floor(t * 3)), 0), 2)
    if plane == "transverse" and side == "left":
        third = 2 - third  # the left lobe's lateral side is on the image right
    return _REGIONS[plane][third]


def place(risk_map: RiskMap, view: FramedView, side: str) -> PopulationLocation | str:
    """The nodule of ``view`` on ``side``'s map of its plane, or why it cannot be placed."""
    entry = risk_map.planes.get((view.plane, side))
    if entry is None:
        return f"the bundle's risk map has no {view.plane} {side} map"
    registered = register(entry.template, view)
    if registered.position is None:
        return "the nodule left the template canvas in the registration"
    height, width = entry.template.mask.shape
    x, y = registered.position
    col, row = min(max(round(x), 0), width - 1), min(max(round(y), 0), height - 1)
    rate = float(entry.maps["rate"][row, col])
    paper = float(entry.maps["difference"][row, col])
    return PopulationLocation(
        plane=view.plane,
        side=side,
        position=(round(x, 3), round(y, 3)),
        pixel=(col, row),
        region=region_of(view.plane, side, col, width),
        risk=None if np.isnan(rate) else round(rate, 4),
        paper_value=0.0 if np.isnan(paper) else round(paper, 4),
        coverage=round(float(entry.maps["coverage"][row, col]), 2),
        cases=entry.cases,
        dice=round(registered.dice, 4),
        mse=round(registered.mse, 5),
        rate_map=entry.maps["rate"],
        template=entry.template.mask,
    )


def save_risk_map(bundle_dir: Path, risk_map: RiskMap) -> None:
    """Write the arrays and the summary into ``bundle_dir/risk_map`` (PNGs are the builder's).

    The bundle must be sealed again afterwards (:func:`models.bundle.reseal_bundle`).
    """
    folder = bundle_dir / RISK_MAP_DIR
    folder.mkdir(parents=True, exist_ok=True)
    templates = {
        f"{plane}.{side}.mask": entry.template.mask.astype(np.uint8)
        for (plane, side), entry in risk_map.planes.items()
    }
    population = {
        f"{plane}.{side}.{name}": np.ascontiguousarray(entry.maps[name], dtype=np.float32)
        for (plane, side), entry in risk_map.planes.items()
        for name in MAPS
    }
    population.update(
        {f"{side}.volume": np.ascontiguousarray(v) for side, v in risk_map.volumes.items()}
    )
    save_file(templates, str(folder / TEMPLATES_FILE))
    save_file(population, str(folder / POPULATION_FILE))
    text = json.dumps(risk_map.summary, indent=2) + "\n"
    (folder / SUMMARY_FILE).write_text(text, encoding="utf-8")


def load_templates(bundle_dir: Path) -> dict[tuple[str, str], Template]:
    """The bundle's gland templates by (plane, side); empty when it has none.

    Raises
    ------
    BundleError
        If the file is unreadable or names an unknown plane or side.
    """
    path = bundle_dir / RISK_MAP_DIR / TEMPLATES_FILE
    if not path.is_file():
        return {}
    try:
        arrays = load_file(str(path))
    except (OSError, ValueError) as exc:
        raise BundleError(f"{path} cannot be read: {exc}") from exc
    templates: dict[tuple[str, str], Template] = {}
    for key, mask in arrays.items():
        name, side, _ = key.split(".")
        plane = next((p for p in PLANES if p == name), None)
        if plane is None or side not in (*SIDES, BOTH):
            raise BundleError(f"{path}: unknown template {key!r}")
        templates[(plane, side)] = Template(plane=plane, side=side, mask=mask.astype(bool))
    return templates


def load_risk_map(bundle_dir: Path) -> RiskMap | None:
    """The population maps of the (verified) bundle in ``bundle_dir``; None without them.

    Raises
    ------
    BundleError
        If the maps are incomplete or do not fit their templates.
    """
    folder = bundle_dir / RISK_MAP_DIR
    if not (folder / SUMMARY_FILE).is_file() or not (folder / POPULATION_FILE).is_file():
        return None
    try:
        summary = json.loads((folder / SUMMARY_FILE).read_text(encoding="utf-8"))
        arrays = load_file(str(folder / POPULATION_FILE))
        templates = load_templates(bundle_dir)
        planes = {}
        for (plane, side), template in templates.items():
            maps = {name: arrays[f"{plane}.{side}.{name}"] for name in MAPS}
            if any(m.shape != template.mask.shape for m in maps.values()):
                raise ValueError(f"{plane} {side} maps do not fit the template")
            counts = summary["maps"][f"{plane}.{side}"]
            planes[(plane, side)] = PopulationMap(
                template, maps, int(counts["cases"]), int(counts["positives"])
            )
        volumes = {
            side: arrays[f"{side}.volume"] for side in (*SIDES, BOTH) if f"{side}.volume" in arrays
        }
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BundleError(
            f"{folder} holds an unreadable risk map ({type(exc).__name__}: {exc}); "
            "build it again with llnm-node risk-map build"
        ) from exc
    return RiskMap(planes=planes, volumes=volumes, summary=summary)
