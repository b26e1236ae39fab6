"""Build a bundle's population location risk map from a data set with outcomes.

Data
    The documented data set layout (:mod:`phantoms.dataset_export`):
    ``cases.jsonl`` with ``llnm_label`` and per view its image, masks, image
    area and calibration. A phantom data set also carries each case's true
    probability (``llnm_probability``), which the build compares the map with.
Steps (progress bars for each)
    1. Measure: each view's features (:func:`imaging.features.extract_view`)
       from its crop and masks; the study's lobe from its transverse view;
       each view framed on its plane's canvas (:mod:`imaging.gland_frame`).
    2. Templates (:func:`build_templates`): per plane and side, the mean gland of the
       first ``template_cases`` framed views after registration
       (:func:`imaging.registration.build_template`), unless kept from the bundle.
    3. Register every framed view to its template and sum the registered maps
       (:mod:`models.risk_map`); compose the 3-D lobe per side.
    4. Statistics (:mod:`pipeline.risk_map_stats`): the LLNM rate by study
       capsule distance (< 2.5 mm and above) and by third, with counts; with
       true probabilities, the same for them, and the agreement of the maps
       with the generator's truth.
Parallel
    Steps 1-3 run in ``workers`` processes (default: every core).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from numpy.typing import NDArray
from rich.progress import track

from imaging.features.extract import Location, View, extract_view
from imaging.features.geometry import Unavailable
from imaging.gland_frame import CANVAS, MARGIN, FramedView, frame_index_nodule, mirrored, study_side
from imaging.png import read_png
from imaging.registration import (
    CC_RADIUS,
    CC_SIGMA,
    LEVEL_ITERATIONS,
    TEMPLATE_ITERATIONS,
    Registered,
    Template,
    build_template,
    register,
)
from models.bundle import bundle_identity, reseal_bundle
from models.risk_map import (
    BOTH,
    MIN_COVERAGE,
    PLANES,
    RATE_SMOOTHING_PX,
    RISK_MAP_DIR,
    SIDES,
    SUMMARY_FILE,
    PopulationMap,
    RiskMap,
    load_templates,
    save_risk_map,
)
from pipeline.risk_map_plots import write_plots
from pipeline.risk_map_stats import (
    quality,
    scaled,
    smoothed_ratio,
    statistics,
    truth_agreement,
)

DEFAULT_TEMPLATE_CASES = 200
REGISTRATION_FILE = "registration.json"  # per view: case id, plane, side, Dice, MSE
VOLUME_DEPTH = 32  # depth samples of the 3-D lobe
R = TypeVar("R")
Key = tuple[str, str]  # (plane, side)


@dataclass(frozen=True, eq=False)
class MeasuredCase:
    """One case of the data set, measured and framed."""

    case_id: str
    label: bool
    probability: float | None  # the generator's true probability, phantoms only
    side: str | None
    capsule_mm: float | None  # the study's nodule-capsule distance (min over views), mm
    third: str | None
    views: tuple[FramedView, ...]
    unplaced: tuple[str, ...]  # why a view could not be framed


def read_cases(data: Path) -> list[dict[str, Any]]:
    """The case records of the data set in ``data`` (the folder holding ``cases.jsonl``).

    Raises
    ------
    ValueError
        If there is no ``cases.jsonl`` or a record lacks the label or the views.
    """
    path = data / "cases.jsonl"
    if not path.is_file():
        raise ValueError(f"{data} holds no cases.jsonl (see the data set layout in the README)")
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    for record in records:
        if "llnm_label" not in record or "views" not in record:
            raise ValueError(f"{path}: case {record.get('case_id')} lacks llnm_label or views")
    return records


def _read_view(data: Path, view: dict[str, Any]) -> tuple[NDArray[Any], ...]:
    x0, y0, x1, y1 = view["image_area"]
    return tuple(
        read_png(data / view[name], grey=name != "image")[y0:y1, x0:x1]
        for name in ("image", "nodule_mask", "thyroid_mask")
    )


def measure_case(data: Path, record: dict[str, Any]) -> MeasuredCase:
    """Measure and frame both views of one case (module docstring, step 1)."""
    measured = []
    for view in record["views"]:
        image, nodules, thyroid = _read_view(data, view)
        plane: View = view["view"]
        mm = view.get("mm_per_pixel")
        features = extract_view(
            image, nodules, thyroid, None if mm is None else tuple(mm), view=plane
        )
        measured.append((plane, nodules != 0, thyroid != 0, features))
    thirds = [f.index.third for *_, f in measured if f.index and isinstance(f.index.third, str)]
    side = study_side(f for *_, f in measured)
    distances = [
        f.index.location.capsule_distance
        for *_, f in measured
        if f.index and isinstance(f.index.location, Location) and f.index.location.unit == "mm"
    ]
    views, unplaced = [], []
    for plane, nodules, thyroid, features in measured:
        framed = frame_index_nodule(nodules, thyroid, features, side)
        if isinstance(framed, Unavailable):
            unplaced.append(f"{plane}: {framed.reason}")
        else:
            views.append(framed)
    probability = record.get("llnm_probability")
    return MeasuredCase(
        case_id=str(record["case_id"]),
        label=bool(record["llnm_label"]),
        probability=None if probability is None else float(probability),
        side=side,
        capsule_mm=min(distances) if distances else None,
        third=thirds[0] if thirds else None,
        views=tuple(views),
        unplaced=tuple(unplaced),
    )


def view_key(view: FramedView, case: MeasuredCase) -> Key | None:
    """The (plane, side) template a framed view of ``case`` belongs to."""
    side = view.side or case.side
    return None if side is None else (view.plane, side)


def _call(item: tuple[Callable[..., R], tuple[Any, ...]]) -> R:
    function, args = item
    return function(*args)


def _parallel(
    function: Callable[..., R], calls: Sequence[tuple[Any, ...]], workers: int, label: str
) -> list[R]:
    """``function(*args)`` for every ``args`` in ``calls``, in order, with a progress bar."""
    items = [(function, args) for args in calls]
    if workers <= 1:
        return list(track(map(_call, items), total=len(items), description=label))
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        results: Iterator[R] = pool.imap(_call, items, chunksize=4)
        return list(track(results, total=len(items), description=label))


def build_templates(
    cases: Sequence[MeasuredCase], limit: int, workers: int
) -> tuple[dict[Key, Template], dict[str, Any]]:
    """A template per plane and side from the first ``limit`` framed views of each (step 2)."""
    glands: dict[Key, list[NDArray[np.float32]]] = {}
    used: dict[Key, list[str]] = {}
    for case in cases:
        for view in case.views:
            key = view_key(view, case)
            if key is not None and len(glands.setdefault(key, [])) < limit:
                glands[key].append(view.gland)
                used.setdefault(key, []).append(case.case_id)
    keys = sorted(glands)
    built = _parallel(build_template, [(k[0], k[1], glands[k]) for k in keys], workers, "templates")
    recipe = {
        "method": "mean gland after registration (imaging.registration.build_template)",
        "iterations": TEMPLATE_ITERATIONS,
        "cases_per_template": limit,
        "inputs": {
            f"{k[0]}.{k[1]}": {"views": len(used[k]), "first": used[k][0], "last": used[k][-1]}
            for k in keys
        },
    }
    return dict(zip(keys, built, strict=True)), recipe


@dataclass
class _Sums:
    metastatic: NDArray[np.float64]
    non_metastatic: NDArray[np.float64]
    coverage: NDArray[np.float64]
    positive_coverage: NDArray[np.float64]
    true_coverage: NDArray[np.float64]  # coverage weighted by the true probability
    true_difference: NDArray[np.float64]  # location maps weighted by 2 p - 1
    cases: int = 0
    positives: int = 0

    @classmethod
    def zeros(cls, shape: tuple[int, int]) -> _Sums:
        def z() -> NDArray[np.float64]:
            return np.zeros(shape, dtype=np.float64)

        return cls(z(), z(), z(), z(), z(), z())

    def add(self, registered: Registered, label: bool, probability: float | None) -> None:
        self.cases += 1
        self.positives += int(label)
        (self.metastatic if label else self.non_metastatic)[:] += registered.location
        self.coverage += registered.nodule
        if label:
            self.positive_coverage += registered.nodule
        if probability is not None:
            self.true_coverage += probability * registered.nodule
            self.true_difference += (2 * probability - 1) * registered.location


def population_maps(template: Template, sums: _Sums) -> PopulationMap:
    """The maps of one plane and side from its sums (:mod:`models.risk_map`)."""
    difference = sums.metastatic - sums.non_metastatic
    maps = {
        "metastatic": sums.metastatic.astype(np.float32),
        "non_metastatic": sums.non_metastatic.astype(np.float32),
        "difference": scaled(difference, template.mask),
        "coverage": sums.coverage.astype(np.float32),
        "rate": smoothed_ratio(sums.positive_coverage, sums.coverage),
    }
    return PopulationMap(template, maps, sums.cases, sums.positives)


def compose_volume(longitudinal: NDArray[Any], transverse: NDArray[Any]) -> NDArray[np.float16]:
    """The 3-D lobe from the two planes' rate maps: (cranio-caudal, depth, lateral-medial).

    Each plane's canvas interior is resampled to :data:`VOLUME_DEPTH` rows of
    depth; a voxel is the geometric mean of the two maps along its lines, NaN
    where either is undefined (outside the gland or too few cases).
    """

    def interior(values: NDArray[Any]) -> NDArray[np.float64]:
        core = values[MARGIN:-MARGIN, MARGIN:-MARGIN].astype(np.float64)
        rows = np.linspace(0, core.shape[0] - 1, VOLUME_DEPTH)
        lower = np.floor(rows).astype(int)
        upper = np.minimum(lower + 1, core.shape[0] - 1)
        w = (rows - lower)[:, None]
        return np.asarray(core[lower] * (1 - w) + core[upper] * w)

    long_map, trans_map = interior(longitudinal), interior(transverse)  # (depth, z), (depth, u)
    volume = np.sqrt(np.clip(long_map.T[:, :, None] * trans_map[None, :, :], 0.0, None))
    return volume.astype(np.float16)  # a picture source: half precision is plenty


def build_risk_map(
    data: Path,
    bundle_dir: Path,
    *,
    template_cases: int = DEFAULT_TEMPLATE_CASES,
    keep_templates: bool = False,
    workers: int | None = None,
) -> dict[str, Any]:
    """Build the population maps of ``data`` into the bundle in ``bundle_dir``; reseal it.

    Returns the summary written to ``risk_map/risk_map.json``.

    Raises
    ------
    ValueError
        If the data set is unreadable, holds no framed view, or lacks one of the classes.
    """
    started = time.perf_counter()
    workers = workers or os.cpu_count() or 1
    records = read_cases(data)
    cases = _parallel(measure_case, [(data, r) for r in records], workers, "measuring")
    labels = [c.label for c in cases]
    if all(labels) or not any(labels):
        raise ValueError("the data set needs LLNM-positive and -negative cases")
    if keep_templates and (kept := load_templates(bundle_dir)):
        templates: dict[Key, Template] = kept
        recipe: dict[str, Any] = _previous_recipe(bundle_dir)
    else:
        templates, recipe = build_templates(cases, template_cases, workers)
    pairs = [
        (case, key, view)
        for case in cases
        for view in case.views
        if (key := view_key(view, case)) in templates
    ]
    if not pairs:
        raise ValueError("no view of the data set could be framed on a template")
    registered = _parallel(
        register, [(templates[k], v) for _, k, v in pairs], workers, "registering"
    )
    results = [(case, key, r) for (case, key, _), r in zip(pairs, registered, strict=True)]
    results += _both_lobes(pairs, registered, templates, workers)
    templates.update(
        {
            (plane, BOTH): replace(templates[(plane, "right")], side=BOTH)
            for plane in PLANES
            if (plane, "right") in templates
        }
    )
    sums = {key: _Sums.zeros(t.mask.shape) for key, t in templates.items()}
    dices: dict[Key, list[float]] = {key: [] for key in templates}
    mses: dict[Key, list[float]] = {key: [] for key in templates}
    for case, key, result in results:
        sums[key].add(result, case.label, case.probability)
        dices[key].append(result.dice)
        mses[key].append(result.mse)
    planes = {key: population_maps(templates[key], sums[key]) for key in templates}
    volumes = {
        side: compose_volume(
            planes[("longitudinal", side)].maps["rate"], planes[("transverse", side)].maps["rate"]
        )
        for side in (*SIDES, BOTH)
        if ("longitudinal", side) in planes and ("transverse", side) in planes
    }
    has_truth = all(c.probability is not None for c in cases)
    maps_summary = {
        f"{plane}.{side}": {
            "cases": planes[(plane, side)].cases,
            "positives": planes[(plane, side)].positives,
            "dice": quality(dices[(plane, side)]),
            "mse": quality(mses[(plane, side)]),
            **(
                {"truth": _truth(planes[(plane, side)], sums[(plane, side)], plane, side)}
                if has_truth
                else {}
            ),
        }
        for plane, side in sorted(planes)
    }
    unplaced = [f"{c.case_id} {reason}" for c in cases for reason in c.unplaced]
    summary = {
        "data": str(data),
        "cases": len(cases),
        "positives": int(sum(labels)),
        "views_registered": len(pairs),
        "views_not_framed": len(unplaced),
        "not_framed_examples": unplaced[:10],
        "canvas": {plane: list(CANVAS[plane]) for plane in PLANES},
        "template": recipe,
        "registration": {
            "library": "dipy SymmetricDiffeomorphicRegistration (SyN)",
            "dipy_version": _dipy_version(),
            "metric": f"cross-correlation, sigma {CC_SIGMA}, radius {CC_RADIUS}",
            "level_iterations": list(LEVEL_ITERATIONS),
            "image": "gland depth map (1 - gland-wide CPDT)",
        },
        "rate": {"smoothing_px": RATE_SMOOTHING_PX, "min_coverage": MIN_COVERAGE},
        "maps": maps_summary,
        "statistics": statistics(cases),
        "seconds": round(time.perf_counter() - started, 1),
    }
    risk_map = RiskMap(planes=planes, volumes=volumes, summary=summary)
    save_risk_map(bundle_dir, risk_map)
    per_view = [
        {"case_id": case.case_id, "plane": key[0], "side": key[1],
         "dice": round(r.dice, 4), "mse": round(r.mse, 5)}
        for case, key, r in results
        if key[1] != BOTH
    ]  # fmt: skip
    (bundle_dir / RISK_MAP_DIR / REGISTRATION_FILE).write_text(
        json.dumps(per_view) + "\n", encoding="utf-8"
    )
    clinical = bundle_identity(bundle_dir).clinical_use_label
    write_plots(bundle_dir, risk_map, f"{clinical}: " if clinical else "")
    reseal_bundle(bundle_dir)
    return summary


def _truth(entry: PopulationMap, sums: _Sums, plane: str, side: str) -> dict[str, Any]:
    return truth_agreement(
        entry, sums.true_coverage, sums.true_difference, sums.coverage, plane, side
    )


def _both_lobes(
    pairs: Sequence[tuple[MeasuredCase, Key, FramedView]],
    registered: Sequence[Registered],
    templates: dict[Key, Template],
    workers: int,
) -> list[tuple[MeasuredCase, Key, Registered]]:
    """Every view on its plane's right-lobe template (the :data:`BOTH` maps).

    Right-lobe views keep their registration; left-lobe views are registered
    to the right lobe's template, transverse ones mirrored first.
    """
    out = [
        (case, (key[0], BOTH), result)
        for (case, key, _), result in zip(pairs, registered, strict=True)
        if key[1] == "right"
    ]
    left = [(c, k, v) for c, k, v in pairs if k[1] == "left" and (k[0], "right") in templates]
    calls = [
        (templates[(k[0], "right")], mirrored(v) if k[0] == "transverse" else v) for _, k, v in left
    ]
    again = _parallel(register, calls, workers, "both lobes")
    out += [(c, (k[0], BOTH), r) for (c, k, _), r in zip(left, again, strict=True)]
    return out


def _previous_recipe(bundle_dir: Path) -> dict[str, Any]:
    path = bundle_dir / RISK_MAP_DIR / SUMMARY_FILE
    if not path.is_file():
        return {"method": "kept from the bundle"}
    template: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))["template"]
    return template


def _dipy_version() -> str:
    from importlib.metadata import version

    return version("dipy")
