"""The nodule's place in the gland reaches LLNM-Net: lobe, third and position beside x_l."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_imaging_jobs import Factory, finished_jobs, send

from db import listings
from imaging.crop import standardise_brightness
from imaging.features import NoduleFeatures, extract_view
from models.llnm.view_inputs import ViewInputs, study_position, view_inputs
from phantoms import make_case
from phantoms.case import PhantomCase
from phantoms.labels import Region

SIZE = 32


def case_inputs(case: PhantomCase) -> list[ViewInputs]:
    """Both views' model inputs, from the generator's masks, as training builds them."""
    nodules: list[NoduleFeatures] = []
    for truth in case.images:
        x0, y0, x1, y1 = truth.image_area
        grey = truth.pixels if truth.pixels.ndim == 2 else truth.pixels[..., 0]
        crop = standardise_brightness(np.ascontiguousarray(grey[y0:y1, x0:x1]))
        features = extract_view(
            crop,
            truth.nodule_mask[y0:y1, x0:x1],
            truth.thyroid_mask[y0:y1, x0:x1],
            truth.mm_per_pixel,
            view=truth.view,
        )
        assert features.index is not None
        nodules.append(features.index)
    study = study_position(nodules)
    return [view_inputs(n, SIZE, study) for n in nodules]


@pytest.mark.parametrize("seed", [3, 11])
def test_upper_and_lower_third_give_different_inputs(seed: int) -> None:
    inputs: dict[Region, list[ViewInputs]] = {
        region: case_inputs(make_case(seed, region=region)) for region in ("upper", "lower")
    }
    upper, lower = inputs["upper"], inputs["lower"]
    for views, third in ((upper, 7), (lower, 9)):
        for view in views:  # the study's third reaches both views
            assert view.position[0] == 1.0  # location known
            assert view.position[7:10].tolist() == [float(k == third) for k in (7, 8, 9)]
            assert view.position[6] in (1.0, -1.0)  # the lobe, from the transverse view
    # Longitudinal view: the nodule's centre along the lobe (cranial pole at u = 0).
    assert upper[1].position[1] < 1 / 3 < 2 / 3 < lower[1].position[1]
    # The nodule itself is the same nodule: its texture box inputs stay close.
    assert upper[0].shape == pytest.approx(lower[0].shape, abs=0.15)


def test_without_a_thyroid_the_position_is_unknown() -> None:
    case = make_case(3)
    truth = case.images[1]
    x0, y0, x1, y1 = truth.image_area
    crop = standardise_brightness(np.ascontiguousarray(truth.pixels[y0:y1, x0:x1]))
    nodule = truth.nodule_mask[y0:y1, x0:x1]
    features = extract_view(crop, nodule, np.zeros_like(nodule), truth.mm_per_pixel)
    assert features.index is not None
    inputs = view_inputs(features.index, SIZE, study_position([features.index]))
    assert not inputs.position.any() and not inputs.location.any()


def test_the_position_carries_the_capsule_distance_in_mm() -> None:
    case = make_case(5)
    for truth, inputs in zip(case.images, case_inputs(case), strict=True):
        assert inputs.position[5] * 10.0 == pytest.approx(truth.capsule_distance_mm, abs=0.5)


@pytest.mark.parametrize("seed", [5, 8])
def test_every_view_carries_the_studys_closest_capsule_distance(seed: int) -> None:
    case = make_case(seed)
    views = case_inputs(case)
    closest = min(v.position[5] for v in views)
    assert [v.position[10] for v in views] == [closest] * len(views)
    assert closest * 10.0 == pytest.approx(min(t.capsule_distance_mm for t in case.images), abs=0.5)
    assert views[0].position[5] != views[1].position[5]  # the views disagree; the study does not


def test_the_demo_bundle_rates_an_upper_third_nodule_higher_over_dicom(
    node_factory: Factory, tmp_path: Path
) -> None:
    """The phantom's risk is higher in the upper third: the same nodule, no report, both ways."""
    node = node_factory()
    seeds = (3, 11, 21)
    studies: dict[str, tuple[int, str]] = {}
    for seed in seeds:
        for region in ("upper", "lower"):
            case = make_case(seed, region=region)
            studies[case.datasets[0].StudyInstanceUID] = (seed, region)
            send(node, [*case.datasets], tmp_path / f"{seed}{region}")
    jobs = finished_jobs(node, 2 * len(seeds), timeout=300)
    probability: dict[tuple[int, str], float] = {}
    with node.database.session() as session:
        for job in jobs:
            detail = listings.job_detail(session, job_id=job.id)
            assert detail.result is not None and detail.result.probability is not None, job.error
            probability[studies[detail.study_instance_uid]] = detail.result.probability
    for seed in seeds:
        assert probability[seed, "upper"] > probability[seed, "lower"], probability
