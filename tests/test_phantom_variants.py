"""Shifted and out-of-scope phantom variants: determinism, DICOM validity, what the pixels show."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray
from pydicom import Dataset, dcmread, dcmwrite

from phantoms import PhantomCase, PhantomOptions, make_case
from phantoms.out_of_scope import (
    SPLIT_GAP_COLUMNS,
    VARIANTS,
    Shift,
    Variant,
    VariantCase,
    make_variant,
    shifted_options,
)

SEED = 3
COLOUR_KINDS = ("colour_doppler", "colour_doppler_region")


@pytest.fixture(scope="module")
def base() -> PhantomCase:
    return make_case(SEED)


@pytest.fixture(scope="module")
def variants() -> dict[Variant, VariantCase]:
    return {kind: make_variant(SEED, kind) for kind in VARIANTS}


def _area(ds: Dataset, box: tuple[int, int, int, int]) -> NDArray[np.float64]:
    x0, y0, x1, y1 = box
    return np.asarray(ds.pixel_array[y0:y1, x0:x1], dtype=np.float64)


def _saturated(pixels: NDArray[np.uint8]) -> NDArray[np.bool_]:
    """Strongly coloured pixels: the channels differ by more than 100 grey levels."""
    wide = pixels.astype(np.int16)
    return np.asarray(wide.max(axis=-1) - wide.min(axis=-1) > 100)


def _roughness(grey: NDArray[np.float64]) -> float:
    """Mean absolute difference of horizontal neighbours."""
    return float(np.abs(np.diff(grey, axis=1)).mean())


def test_variants_are_deterministic(variants: dict[Variant, VariantCase]) -> None:
    for kind in ("colour_doppler", "no_gland", "extreme_noise"):
        again = make_variant(SEED, kind)
        for a, b in zip(variants[kind].datasets, again.datasets, strict=True):
            assert a.PixelData == b.PixelData and a.SOPInstanceUID == b.SOPInstanceUID
        other = make_variant(SEED + 1, kind)
        assert other.datasets[0].PixelData != variants[kind].datasets[0].PixelData


@pytest.mark.parametrize("kind", VARIANTS)
def test_variant_is_valid_dicom(variants: dict[Variant, VariantCase], kind: Variant) -> None:
    variant = variants[kind]
    assert variant.kind == kind and len(variant.datasets) == 2
    for ds, truth in zip(variant.datasets, variant.case.images, strict=True):
        buffer = BytesIO()
        dcmwrite(buffer, ds, enforce_file_format=True)
        back = dcmread(BytesIO(buffer.getvalue()))
        colour = kind in COLOUR_KINDS
        assert back.SOPClassUID == "1.2.840.10008.5.1.4.1.1.6.1"
        assert back.PhotometricInterpretation == ("RGB" if colour else "MONOCHROME2")
        assert back.SamplesPerPixel == (3 if colour else 1)
        assert ("PlanarConfiguration" in back) == colour
        shape = (back.Rows, back.Columns, 3) if colour else (back.Rows, back.Columns)
        assert back.pixel_array.shape == shape == (*truth.pixels.shape[:2], 3)[: len(shape)]
        assert len(back.PixelData) == int(np.prod(shape))
        np.testing.assert_array_equal(back.pixel_array, ds.pixel_array)
        assert back.PatientID == variant.case.datasets[0].PatientID


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dicom3tools not installed")
def test_dciodvfy_finds_no_errors(tmp_path: Path, variants: dict[Variant, VariantCase]) -> None:
    for kind, variant in variants.items():
        path = tmp_path / f"{kind}.dcm"
        variant.datasets[0].save_as(path, enforce_file_format=True)
        result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
        errors = [line for line in (result.stdout + result.stderr).splitlines() if "Error" in line]
        assert not errors, f"{kind}: {errors}"


def test_variants_are_new_studies(base: PhantomCase, variants: dict[Variant, VariantCase]) -> None:
    seen: set[str] = {ds.SOPInstanceUID for ds in base.datasets}
    studies = {base.datasets[0].StudyInstanceUID}
    for variant in variants.values():
        assert {ds.StudyInstanceUID for ds in variant.datasets} == {
            variant.datasets[0].StudyInstanceUID
        }
        assert len({ds.SeriesInstanceUID for ds in variant.datasets}) == 1
        assert variant.datasets[0].SeriesInstanceUID != base.datasets[0].SeriesInstanceUID
        studies.add(variant.datasets[0].StudyInstanceUID)
        for ds in variant.datasets:
            assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
            assert ds.SOPInstanceUID not in seen
            seen.add(ds.SOPInstanceUID)
    assert len(studies) == len(VARIANTS) + 1


def test_variant_keeps_its_in_scope_case(
    base: PhantomCase, variants: dict[Variant, VariantCase]
) -> None:
    case = variants["no_gland"].case
    assert case.datasets[0].PixelData == base.datasets[0].PixelData
    assert (case.llnm_label, case.llnm_probability) == (base.llnm_label, base.llnm_probability)


def test_colour_doppler_box_is_coloured(variants: dict[Variant, VariantCase]) -> None:
    plain, declared = variants["colour_doppler"], variants["colour_doppler_region"]
    for ds, ds_region, truth in zip(
        plain.datasets, declared.datasets, plain.case.images, strict=True
    ):
        assert ds.PixelData == ds_region.PixelData
        (tissue,) = ds.SequenceOfUltrasoundRegions
        assert tissue.RegionDataType == 1
        flow = ds_region.SequenceOfUltrasoundRegions[1]
        box = (
            flow.RegionLocationMinX0,
            flow.RegionLocationMinY0,
            flow.RegionLocationMaxX1 + 1,
            flow.RegionLocationMaxY1 + 1,
        )
        saturated = _saturated(ds.pixel_array)
        x0, y0, x1, y1 = truth.image_area
        area = saturated[y0:y1, x0:x1]
        assert 0.10 <= area.mean() <= 0.40
        in_box = np.zeros_like(saturated)
        in_box[box[1] : box[3], box[0] : box[2]] = True
        assert 0.15 <= in_box[y0:y1, x0:x1].mean() <= 0.35
        assert not (saturated & ~in_box)[y0:y1, x0:x1].any()
        outside = saturated.copy()
        outside[y0:y1, x0:x1] = False
        ys, xs = np.nonzero(outside)
        assert ys.size > 50 and xs.max() < x0  # only the colour bar, in the side panel
        grey = ~saturated[box[1] : box[3], box[0] : box[2]]
        assert grey.any()  # flow, not a filled rectangle


def test_colour_doppler_region_declares_the_box(variants: dict[Variant, VariantCase]) -> None:
    for ds, truth in zip(
        variants["colour_doppler_region"].datasets,
        variants["colour_doppler_region"].case.images,
        strict=True,
    ):
        tissue, flow = ds.SequenceOfUltrasoundRegions
        assert (tissue.RegionDataType, flow.RegionDataType, flow.RegionSpatialFormat) == (1, 2, 1)
        x0, y0, x1, y1 = truth.image_area
        assert x0 <= flow.RegionLocationMinX0 < flow.RegionLocationMaxX1 < x1
        assert y0 <= flow.RegionLocationMinY0 < flow.RegionLocationMaxY1 < y1
        pixels = ds.pixel_array[
            flow.RegionLocationMinY0 : flow.RegionLocationMaxY1 + 1,
            flow.RegionLocationMinX0 : flow.RegionLocationMaxX1 + 1,
        ]
        assert _saturated(pixels).mean() > 0.5
        # One physical coordinate system: the reference pixels coincide.
        for axis in ("X0", "Y0"):
            origin = (
                tissue[f"RegionLocationMin{axis}"].value + tissue[f"ReferencePixel{axis}"].value
            )
            assert (
                origin
                == flow[f"RegionLocationMin{axis}"].value + flow[f"ReferencePixel{axis}"].value
            )
    with pytest.raises(ValueError, match="with_regions"):
        make_variant(SEED, "colour_doppler_region", PhantomOptions(with_regions=False))


def test_split_screen_has_two_calibrated_views(variants: dict[Variant, VariantCase]) -> None:
    split, bare = variants["split_screen"], variants["split_screen_no_regions"]
    for ds, ds_bare, truth in zip(split.datasets, bare.datasets, split.case.images, strict=True):
        assert ds.PixelData == ds_bare.PixelData
        assert "SequenceOfUltrasoundRegions" not in ds_bare
        left, right = ds.SequenceOfUltrasoundRegions
        x0, y0, x1, y1 = truth.image_area
        for region in (left, right):
            assert (region.RegionSpatialFormat, region.RegionDataType) == (1, 1)
            width = region.RegionLocationMaxX1 + 1 - region.RegionLocationMinX0
            assert region.PhysicalDeltaX * 10 == pytest.approx(
                truth.mm_per_pixel[0] * (x1 - x0) / width
            )
            assert (
                _area(ds, (region.RegionLocationMinX0, y0, region.RegionLocationMaxX1, y1)).std()
                > 20
            )
        gap = (left.RegionLocationMaxX1 + 1, right.RegionLocationMinX0)
        assert gap[1] - gap[0] == SPLIT_GAP_COLUMNS
        rows = (left.RegionLocationMinY0, left.RegionLocationMaxY1 + 1)
        assert _area(ds, (gap[0], rows[0], gap[1], rows[1])).max() < 10


def test_no_gland_is_textured_tissue(
    base: PhantomCase, variants: dict[Variant, VariantCase]
) -> None:
    for ds, truth, original in zip(
        variants["no_gland"].datasets, base.images, base.datasets, strict=True
    ):
        area = _area(ds, truth.image_area)
        assert area.std() > 20 and 20 < np.median(area) < 200
        assert _roughness(area) > 3  # speckle, not smooth shading
        assert not np.array_equal(area, _area(original, truth.image_area))


def test_extreme_gain_and_noise(base: PhantomCase, variants: dict[Variant, VariantCase]) -> None:
    for gained, noisy, truth, original in zip(
        variants["extreme_gain"].datasets,
        variants["extreme_noise"].datasets,
        base.images,
        base.datasets,
        strict=True,
    ):
        assert np.median(_area(gained, truth.image_area)) > 200
        plain = _roughness(_area(original, truth.image_area))
        assert _roughness(_area(noisy, truth.image_area)) > 4 * plain


def test_variant_options_are_honoured() -> None:
    options = PhantomOptions(rgb=True, with_regions=False, rows=240, columns=320)
    for kind in ("no_gland", "split_screen", "colour_doppler"):
        (ds, _) = make_variant(SEED, kind, options).datasets
        assert ds.PhotometricInterpretation == "RGB" and (ds.Rows, ds.Columns) == (240, 320)
        assert "SequenceOfUltrasoundRegions" not in ds


def test_shifted_options_mapping() -> None:
    base = PhantomOptions(rgb=True)
    assert shifted_options("gain", 0.5, base) == dataclasses.replace(base, gain_shift_db=15.0)
    assert shifted_options("speckle", 1.0).speckle_scale == 3.0
    assert shifted_options("depth", 1.0).depth_scale == pytest.approx(1.8)
    assert shifted_options("depth", 0.5).depth_scale == pytest.approx(1.4)
    for shift in ("gain", "speckle", "depth"):
        assert shifted_options(shift, 0.0, base) == base
    for severity in (-0.1, 1.5):
        with pytest.raises(ValueError, match="severity"):
            shifted_options("gain", severity)
    for bad in ({"speckle_scale": 0.0}, {"depth_scale": 0.5}):
        with pytest.raises(ValueError):
            PhantomOptions(**bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("shift", ["gain", "speckle", "depth"])
def test_graded_shift_keeps_the_truth(base: PhantomCase, shift: Shift) -> None:
    same = make_case(SEED, shifted_options(shift, 0.0))
    for a, b in zip(same.datasets, base.datasets, strict=True):
        assert a.PixelData == b.PixelData and a.SOPInstanceUID == b.SOPInstanceUID
    strong = make_case(SEED, shifted_options(shift, 1.0))
    assert strong.llnm_label == base.llnm_label
    assert strong.llnm_probability == base.llnm_probability
    assert strong.capsule_distance_mm == base.capsule_distance_mm
    assert strong.dimensions_mm == base.dimensions_mm
    assert strong.datasets[0].StudyInstanceUID != base.datasets[0].StudyInstanceUID
    for ds, original, truth in zip(strong.datasets, base.datasets, base.images, strict=True):
        shifted, plain = _area(ds, truth.image_area), _area(original, truth.image_area)
        assert np.abs(shifted - plain).mean() > 15
        (region,) = ds.SequenceOfUltrasoundRegions
        (plain_region,) = original.SequenceOfUltrasoundRegions
        scale = 1.8 if shift == "depth" else 1.0
        assert region.PhysicalDeltaX == pytest.approx(plain_region.PhysicalDeltaX * scale)
        assert region.PhysicalDeltaY == pytest.approx(plain_region.PhysicalDeltaY * scale)
        if shift == "gain":
            assert np.median(shifted) > np.median(plain) + 60
        if shift == "speckle":
            assert _roughness(shifted) < 0.6 * _roughness(plain)
    if shift == "depth":
        for image, plain_image in zip(strong.images, base.images, strict=True):
            ratio = image.nodule_mask.sum() / plain_image.nodule_mask.sum()
            assert ratio == pytest.approx(1 / 1.8**2, rel=0.1)
