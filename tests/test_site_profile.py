"""Phantom site profiles: the default changes nothing, site-b another device and population."""

from __future__ import annotations

import dataclasses
import json
import math
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from pydicom import Dataset, dcmread, dcmwrite
from typer.testing import CliRunner

from dicom_node.cli.main import app
from phantoms import (
    DEFAULT_SITE,
    SITE_PROFILES,
    PhantomCase,
    PhantomOptions,
    SiteProfile,
    export_phantoms,
    make_case,
    nodal_stage,
    roc_auc,
    site_profile,
)

SITE_B = SITE_PROFILES["site-b"]
SMALL = PhantomOptions(rows=120, columns=160)  # labels do not depend on the frame size
N = 200  # cases for the label statistics


def _bytes(ds: Dataset) -> bytes:
    buffer = BytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def _site(site: SiteProfile) -> PhantomOptions:
    return dataclasses.replace(SMALL, site=site)


@pytest.fixture(scope="module")
def default_cases() -> list[PhantomCase]:
    return [make_case(seed, SMALL) for seed in range(N)]


@pytest.fixture(scope="module")
def shifted_cases() -> list[PhantomCase]:
    """Site-b without label noise: the prevalence shift alone."""
    return [
        make_case(seed, _site(dataclasses.replace(SITE_B, label_noise=0.0))) for seed in range(N)
    ]


@pytest.fixture(scope="module")
def site_b_cases() -> list[PhantomCase]:
    return [make_case(seed, _site(SITE_B)) for seed in range(N)]


def _within_5_sigma(flips: int, n: int, rate: float) -> bool:
    return abs(flips - n * rate) <= 5 * math.sqrt(n * rate * (1 - rate))


def test_registry_and_validation() -> None:
    assert SITE_PROFILES["default"] == DEFAULT_SITE == SiteProfile("default")
    assert PhantomOptions().site == DEFAULT_SITE
    assert site_profile("site-b") is SITE_B
    assert SITE_B.manufacturer == "Phantom Medical B" and SITE_B.model_name == "PM-B 7"
    assert SITE_B.prevalence_logit_shift < 0 < SITE_B.label_noise < 0.5
    with pytest.raises(ValueError, match="known: default, site-b"):
        site_profile("site-z")
    for bad in (
        {"name": ""},
        {"name": "x", "speckle_scale": 0.0},
        {"name": "x", "depth_scale": 0.9},
        {"name": "x", "label_noise": 0.5},
        {"name": "x", "label_noise": -0.1},
    ):
        with pytest.raises(ValueError):
            SiteProfile(**bad)


@pytest.mark.parametrize(
    "options", [PhantomOptions(), PhantomOptions(rgb=True)], ids=["grey", "rgb"]
)
def test_default_profile_changes_nothing(options: PhantomOptions) -> None:
    for seed in (0, 7):
        plain = make_case(seed, options)
        default = make_case(seed, dataclasses.replace(options, site=SITE_PROFILES["default"]))
        for a, b in zip(plain.datasets, default.datasets, strict=True):
            assert _bytes(a) == _bytes(b)
        if plain.report_dataset is not None:
            assert default.report_dataset is not None
            assert _bytes(plain.report_dataset) == _bytes(default.report_dataset)
        for ta, tb in zip(plain.images, default.images, strict=True):
            np.testing.assert_array_equal(ta.pixels, tb.pixels)
            np.testing.assert_array_equal(ta.nodule_mask, tb.nodule_mask)
            np.testing.assert_array_equal(ta.thyroid_mask, tb.thyroid_mask)
        assert plain.llnm_probability == default.llnm_probability
        assert plain.llnm_label == default.llnm_label
        assert plain.node_sizes_cm == default.node_sizes_cm
        assert plain.report_text == default.report_text


def test_a_neutral_profile_of_another_name_is_another_study() -> None:
    plain = make_case(3, SMALL)
    other = make_case(3, _site(SiteProfile("site-n")))
    assert other.datasets[0].PixelData == plain.datasets[0].PixelData
    assert other.llnm_label == plain.llnm_label
    assert other.datasets[0].StudyInstanceUID != plain.datasets[0].StudyInstanceUID


def test_site_b_changes_the_device_not_the_patient() -> None:
    for seed in (0, 1, 2):
        plain, site = make_case(seed), make_case(seed, PhantomOptions(site=SITE_B))
        for a, b, ta, tb in zip(
            plain.datasets, site.datasets, plain.images, site.images, strict=True
        ):
            assert (b.Manufacturer, b.ManufacturerModelName) == ("Phantom Medical B", "PM-B 7")
            assert a.Manufacturer != b.Manufacturer
            assert b.StudyInstanceUID != a.StudyInstanceUID and b.PatientID == a.PatientID
            # Brighter parenchyma (+4 dB gain), deeper field of view (x1.15 mm per pixel).
            gland_a = ta.pixels[ta.thyroid_mask & ~ta.nodule_mask].mean()
            gland_b = tb.pixels[tb.thyroid_mask & ~tb.nodule_mask].mean()
            assert gland_b > gland_a + 5
            assert tb.mm_per_pixel[0] == pytest.approx(ta.mm_per_pixel[0] * SITE_B.depth_scale)
            assert b.SequenceOfUltrasoundRegions[0].PhysicalDeltaX == pytest.approx(
                tb.mm_per_pixel[0] / 10
            )
            # The same anatomy: masks inside the image area and the gland, same size in mm.
            x0, y0, x1, y1 = tb.image_area
            inside = np.zeros_like(tb.thyroid_mask)
            inside[y0:y1, x0:x1] = True
            assert tb.nodule_mask.any() and not (tb.nodule_mask & ~tb.thyroid_mask).any()
            assert not (tb.thyroid_mask & ~inside).any()
            area_a = ta.nodule_mask.sum() * ta.mm_per_pixel[0] ** 2
            area_b = tb.nodule_mask.sum() * tb.mm_per_pixel[0] ** 2
            assert area_b == pytest.approx(area_a, rel=0.05)
            assert tb.capsule_distance_mm == ta.capsule_distance_mm
        assert (site.age_years, site.sex, site.report_text) == (
            plain.age_years,
            plain.sex,
            plain.report_text,
        )
        assert site.risk_factors == plain.risk_factors


def test_prevalence_shift_lowers_the_true_probability_and_the_labels(
    default_cases: list[PhantomCase], shifted_cases: list[PhantomCase]
) -> None:
    shift = SITE_B.prevalence_logit_shift
    for plain, site in zip(default_cases, shifted_cases, strict=True):
        logit = math.log(plain.llnm_probability / (1 - plain.llnm_probability))
        expected = 1 / (1 + math.exp(-(logit + shift)))
        assert site.llnm_probability == pytest.approx(expected, rel=1e-9)
        assert site.llnm_label <= plain.llnm_label  # the same draw against a lower probability
    before = sum(c.llnm_label for c in default_cases)
    after = sum(c.llnm_label for c in shifted_cases)
    assert after < before
    assert np.mean([c.llnm_probability for c in shifted_cases]) < np.mean(
        [c.llnm_probability for c in default_cases]
    )


def test_label_noise_flips_the_configured_fraction(
    shifted_cases: list[PhantomCase], site_b_cases: list[PhantomCase]
) -> None:
    flips = 0
    for clean, noisy in zip(shifted_cases, site_b_cases, strict=True):
        assert noisy.llnm_probability == clean.llnm_probability
        assert noisy.datasets[0].PixelData == clean.datasets[0].PixelData
        flips += noisy.llnm_label != clean.llnm_label
        # Nodes follow the recorded label; a case positive in both keeps its nodes.
        assert bool(noisy.node_sizes_cm) == noisy.llnm_label
        assert noisy.risk_stage == nodal_stage(noisy.node_sizes_cm)
        if noisy.llnm_label and clean.llnm_label:
            assert noisy.node_sizes_cm == clean.node_sizes_cm
    assert flips > 0 and _within_5_sigma(flips, N, SITE_B.label_noise)


def test_recorded_label_probability_follows_the_label_noise(
    site_b_cases: list[PhantomCase],
) -> None:
    assert DEFAULT_SITE.recorded_label_probability(0.3) == 0.3
    assert SITE_B.recorded_label_probability(0.0) == pytest.approx(SITE_B.label_noise)
    assert SITE_B.recorded_label_probability(1.0) == pytest.approx(1 - SITE_B.label_noise)
    expected = sum(SITE_B.recorded_label_probability(c.llnm_probability) for c in site_b_cases)
    positives = sum(c.llnm_label for c in site_b_cases)
    assert abs(positives - expected) <= 5 * math.sqrt(N / 4)  # binomial, 5 sigma at most


def test_more_label_noise_flips_more(default_cases: list[PhantomCase]) -> None:
    noise = 0.4  # a large rate, so the binomial 5-sigma band is tight relative to it
    noisy = [
        make_case(c.seed, _site(SiteProfile("noisy", label_noise=noise))) for c in default_cases
    ]
    flips = sum(a.llnm_label != b.llnm_label for a, b in zip(default_cases, noisy, strict=True))
    assert _within_5_sigma(flips, N, noise)
    assert all(
        a.llnm_probability == b.llnm_probability for a, b in zip(default_cases, noisy, strict=True)
    )


def test_manifest_records_the_profile_and_its_bayes_auc(tmp_path: Path) -> None:
    n = 16
    summary = export_phantoms(tmp_path / "b", n=n, seed=5, options=_site(SITE_B))
    manifest = json.loads((summary.dataset_dir / "manifest.json").read_text())
    assert manifest["site_profile"] == dataclasses.asdict(SITE_B)
    assert "site" not in manifest["options"]
    lines = (summary.dataset_dir / "cases.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    cases = [make_case(r["seed"], _site(SITE_B)) for r in records]
    assert [r["llnm_label"] for r in records] == [int(c.llnm_label) for c in cases]
    bayes = roc_auc([c.llnm_probability for c in cases], [c.llnm_label for c in cases])
    assert manifest["best_achievable_auc"] == summary.best_achievable_auc == bayes
    assert manifest["positives"] == sum(c.llnm_label for c in cases)
    default = export_phantoms(tmp_path / "a", n=2, seed=5, options=SMALL)
    plain = json.loads((default.dataset_dir / "manifest.json").read_text())
    assert "site_profile" not in plain and "site" not in plain["options"]


def test_cli_site_profile(tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "site-b"
    args = ["phantom", "--n", "2", "--rows", "120", "--columns", "160", "--out", str(out)]
    result = runner.invoke(app, [*args, "--site-profile", "site-b"])
    assert result.exit_code == 0, result.output
    assert "site profile site-b" in result.output
    manifest = json.loads((out / "dataset" / "manifest.json").read_text())
    assert manifest["site_profile"]["name"] == "site-b"
    for path in (out / "dicom").rglob("US_*.dcm"):
        assert dcmread(path).Manufacturer == "Phantom Medical B"
    bad = runner.invoke(app, [*args[:-1], str(tmp_path / "bad"), "--site-profile", "site-z"])
    assert bad.exit_code == 2
    assert "site-z" in bad.output and "default, site-b" in bad.output
    assert not (tmp_path / "bad").exists()
