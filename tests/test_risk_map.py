"""The population location risk map: frames, registration, a map built from phantoms, placement.

The map test relabels a phantom data set so that LLNM depends only on the third
of the lobe (upper positive, the rest negative): a map that misplaced nodules
or ignored the labels could not find the upper third.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from imaging.features.extract import Location, extract_view
from imaging.features.geometry import Unavailable
from imaging.gland_frame import CANVAS, MARGIN, FramedView, frame_index_nodule
from imaging.overlap import dice
from imaging.registration import build_template, register
from models.bundle import verify_bundle
from models.demo import DEMO_BUNDLE_DIR
from models.risk_map import RISK_MAP_DIR, load_risk_map, place, region_of
from phantoms import PhantomCase, make_case
from phantoms.dataset_export import export_phantoms
from pipeline.risk_map_build import build_risk_map


def _view(
    case: PhantomCase, k: int, *, calibrated: bool = True, columns: slice | None = None
) -> FramedView | Unavailable:
    truth = case.images[k]
    x0, y0, x1, y1 = truth.image_area
    keep = columns or slice(x0, x1)
    nodules = truth.nodule_mask[y0:y1, keep]
    thyroid = truth.thyroid_mask[y0:y1, keep]
    image = case.images[k].pixels[y0:y1, keep]
    image = image if image.ndim == 2 else image[:, :, 0]
    plane = truth.view
    features = extract_view(
        image, nodules, thyroid, truth.mm_per_pixel if calibrated else None, view=plane
    )
    assert features.index is not None and isinstance(features.index.location, Location)
    return frame_index_nodule(nodules, thyroid, features, case.lobe)


def _framed(case: PhantomCase, k: int, **kwargs: object) -> FramedView:
    framed = _view(case, k, **kwargs)  # type: ignore[arg-type]
    assert isinstance(framed, FramedView), framed
    return framed


def test_a_view_fills_its_plane_canvas_calibrated_or_not() -> None:
    case = make_case(5)
    for k, plane in enumerate(("transverse", "longitudinal")):
        calibrated, uncalibrated = _framed(case, k), _framed(case, k, calibrated=False)
        assert calibrated.plane == plane and calibrated.gland.shape == CANVAS[plane]
        np.testing.assert_allclose(calibrated.gland, uncalibrated.gland, atol=1e-6)
        inside = calibrated.gland > 0.5
        rows, cols = np.nonzero(inside)
        # The lobe box fills the interior: the gland reaches the margins along both axes.
        height, width = CANVAS[plane]
        assert rows.min() <= MARGIN + 1 and rows.max() >= height - MARGIN - 2
        assert cols.min() <= MARGIN + 1 or cols.max() >= width - MARGIN - 2
        assert calibrated.nodule.sum() > 1 and calibrated.location.max() > 0.5
    assert _framed(case, 0).side == case.lobe


def test_a_lobe_cut_at_one_pole_is_mirrored_and_a_cut_lateral_edge_is_refused() -> None:
    case = make_case(7)  # its lobe lies whole inside the longitudinal crop
    whole = _framed(case, 1)
    x0, _, x1, _ = case.images[1].image_area
    assert whole.box[0] > 0 and whole.box[2] < x1 - x0
    box_x0 = whole.box[0]
    # Cut the longitudinal crop a few pixels into the lobe's caudal or cranial end.
    cut_at = x0 + int(box_x0) + 8
    cut = _view(case, 1, columns=slice(cut_at, x1))
    assert isinstance(cut, FramedView)
    assert dice(cut.gland > 0.5, whole.gland > 0.5) > 0.9
    transverse = _framed(case, 0)
    lateral = transverse.box[0] if case.lobe == "right" else transverse.box[2]
    tx0, _, tx1, _ = case.images[0].image_area
    edge = tx0 + int(lateral)
    columns = slice(edge + 3, tx1) if case.lobe == "right" else slice(tx0, edge - 3)
    refused = _view(case, 0, columns=columns)
    assert isinstance(refused, Unavailable) and "lateral edge" in refused.reason


def test_registration_to_a_template_of_other_glands_fits() -> None:
    cases = [make_case(seed) for seed in range(20, 32)]
    right = [c for c in cases if c.lobe == "right"] or cases
    views = [_framed(c, 1) for c in right]
    template = build_template("longitudinal", "right", [v.gland for v in views[1:]])
    registered = register(template, views[0])
    assert registered.dice >= 0.9
    before = dice(views[0].gland > 0.5, template.mask)
    assert registered.dice >= before
    assert registered.position is not None
    assert 0 <= registered.mse < 0.05
    # The warped nodule keeps its place along the lobe within a few template pixels.
    cx = float(np.average(np.arange(views[0].nodule.shape[1]), weights=views[0].nodule.sum(0)))
    assert abs(registered.position[0] - cx) < 3


@pytest.fixture(scope="module")
def regional_bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, object]]:
    """A copy of the demo bundle with a map built from 90 phantoms labelled by their third."""
    out = tmp_path_factory.mktemp("risk-map")
    export_phantoms(out, n=90, seed=311)
    cases = out / "dataset" / "cases.jsonl"
    records = [json.loads(line) for line in cases.read_text().splitlines()]
    for record in records:
        record["llnm_label"] = int(record["region"] == "upper")
        record.pop("llnm_probability")  # a site's data set: outcomes, no true probability
    cases.write_text("".join(json.dumps(r) + "\n" for r in records))
    bundle = out / "bundle"
    shutil.copytree(DEMO_BUNDLE_DIR, bundle, ignore=shutil.ignore_patterns(RISK_MAP_DIR))
    summary = build_risk_map(out / "dataset", bundle, template_cases=20, workers=2)
    return bundle, summary


def test_the_map_built_from_outcomes_finds_the_risky_third(
    regional_bundle: tuple[Path, dict[str, object]],
) -> None:
    bundle, summary = regional_bundle
    verify_bundle(bundle)  # sealed again with the new files
    risk_map = load_risk_map(bundle)
    assert risk_map is not None
    assert set(risk_map.planes) == {
        (p, s) for p in ("transverse", "longitudinal") for s in ("right", "left", "both")
    }
    both = risk_map.planes[("longitudinal", "both")]
    right, left = (
        risk_map.planes[("longitudinal", "right")],
        risk_map.planes[("longitudinal", "left")],
    )
    assert both.cases == right.cases + left.cases
    assert summary["cases"] == 90
    for side in ("right", "left", "both"):
        entry = risk_map.planes[("longitudinal", side)]
        width = entry.template.mask.shape[1]
        thirds = np.array([region_of("longitudinal", side, x, width) for x in range(width)])
        rate = entry.maps["rate"]
        upper = np.nanmean(rate[:, thirds == "upper"])
        lower = np.nanmean(rate[:, thirds == "lower"])
        assert upper > 0.6 > 0.25 > lower, (side, upper, lower)
        paper = entry.maps["difference"]
        assert np.nanmean(paper[:, thirds == "upper"]) > np.nanmean(paper[:, thirds == "lower"])
        quality = summary["maps"][f"longitudinal.{side}"]["dice"]  # type: ignore[index]
        assert quality["median"] >= 0.9
    stats = summary["statistics"]["third"]  # type: ignore[index]
    assert stats["upper"]["llnm_rate"] >= 0.9 and stats["lower"]["llnm_rate"] <= 0.1
    bands = summary["statistics"]["capsule_distance"]  # type: ignore[index]
    assert sum(row["cases"] for row in bands.values()) == 90
    for name in ("longitudinal_right.png", "transverse_left.png", "lobe_right_3d.png"):
        picture = cv2.imread(str(bundle / RISK_MAP_DIR / name))
        assert picture is not None and picture.shape[0] > 100
    assert risk_map.volumes["right"].ndim == 3


def test_a_nodule_is_placed_at_its_registered_position(
    regional_bundle: tuple[Path, dict[str, object]],
) -> None:
    bundle, _ = regional_bundle
    risk_map = load_risk_map(bundle)
    assert risk_map is not None
    case = make_case(12, region="upper")
    view = _framed(case, 1)
    placed = place(risk_map, view, case.lobe)
    assert not isinstance(placed, str)
    entry = risk_map.planes[("longitudinal", case.lobe)]
    registered = register(entry.template, view)
    assert registered.position is not None
    x, y = registered.position
    assert placed.pixel == (round(x), round(y))
    col, row = placed.pixel
    assert placed.region == "upper"
    assert placed.risk == pytest.approx(float(entry.maps["rate"][row, col]), abs=1e-4)
    assert placed.risk is not None and placed.risk > 0.5
    low = place(risk_map, _framed(make_case(12, region="lower"), 1), case.lobe)
    assert not isinstance(low, str) and low.region == "lower"
    assert low.risk is not None and low.risk < placed.risk
