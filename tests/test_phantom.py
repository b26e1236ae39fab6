"""The synthetic thyroid ultrasound phantom: determinism, DICOM validity, ground truth, labels."""

from __future__ import annotations

import csv
import dataclasses
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from pydicom import dcmread
from scipy import ndimage
from typer.testing import CliRunner

from dicom_node.cli.main import app
from phantoms import (
    ImageTruth,
    PhantomCase,
    PhantomOptions,
    RiskFactors,
    best_achievable_auc,
    llnm_probability,
    make_case,
    nodal_stage,
    roc_auc,
)
from phantoms.labels import sample_nodes

SEEDS = (0, 1, 2, 3, 7, 11)


@pytest.fixture(scope="module")
def cases() -> dict[int, PhantomCase]:
    return {seed: make_case(seed) for seed in SEEDS}


def test_same_seed_same_case() -> None:
    a, b = make_case(42), make_case(42)
    for da, db in zip(a.datasets, b.datasets, strict=True):
        assert da.PixelData == db.PixelData
        assert da.SOPInstanceUID == db.SOPInstanceUID
    assert a.report_text == b.report_text
    assert a.llnm_probability == b.llnm_probability and a.llnm_label == b.llnm_label
    assert a.phi == b.phi
    c = make_case(43)
    assert c.datasets[0].PixelData != a.datasets[0].PixelData
    assert c.datasets[0].StudyInstanceUID != a.datasets[0].StudyInstanceUID


@pytest.mark.parametrize(
    "options",
    [PhantomOptions(), PhantomOptions(rgb=True), PhantomOptions(with_regions=False)],
    ids=["gray", "rgb", "no-regions"],
)
def test_dicom_round_trip(tmp_path: Path, options: PhantomOptions) -> None:
    case = make_case(5, options)
    study = {ds.StudyInstanceUID for ds in case.datasets}
    assert len(study) == 1
    for truth, ds in zip(case.images, case.datasets, strict=True):
        path = tmp_path / f"{truth.view}.dcm"
        ds.save_as(path, enforce_file_format=True)
        back = dcmread(path)
        assert back.SOPClassUID == "1.2.840.10008.5.1.4.1.1.6.1"
        assert back.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
        assert (back.Rows, back.Columns) == (options.rows, options.columns)
        assert back.BitsAllocated == 8
        pixels = back.pixel_array
        if options.rgb:
            assert back.PhotometricInterpretation == "RGB" and pixels.shape[-1] == 3
        else:
            assert back.PhotometricInterpretation == "MONOCHROME2" and pixels.ndim == 2
        np.testing.assert_array_equal(pixels, truth.pixels)
        assert ("SequenceOfUltrasoundRegions" in back) == options.with_regions
        assert back.PatientName == ds.PatientName and str(back.PatientName) in case.phi
        block = back.private_block(0x0009, "LLNM PHANTOM US 1")
        assert block[0x02].value in case.phi
    if case.report_dataset is not None:
        path = tmp_path / "sr.dcm"
        case.report_dataset.save_as(path, enforce_file_format=True)
        sr = dcmread(path)
        assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.11"
        assert sr.StudyInstanceUID in study
        assert sr.ContentSequence[0].ValueType == "TEXT"
        assert sr.ContentSequence[0].TextValue == case.report_text


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dicom3tools not installed")
def test_dciodvfy_finds_no_errors(tmp_path: Path) -> None:
    case = next(c for c in map(make_case, range(20)) if c.report_dataset is not None)
    assert case.report_dataset is not None
    for name, ds in [
        ("us", case.datasets[0]),
        ("rgb", make_case(1, PhantomOptions(rgb=True)).datasets[1]),
        ("sr", case.report_dataset),
    ]:
        path = tmp_path / f"{name}.dcm"
        ds.save_as(path, enforce_file_format=True)
        result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
        errors = [line for line in (result.stdout + result.stderr).splitlines() if "Error" in line]
        assert not errors, f"{name}: {errors}"


def _inside(area: tuple[int, int, int, int], mask: np.ndarray) -> bool:
    x0, y0, x1, y1 = area
    outside = mask.copy()
    outside[y0:y1, x0:x1] = False
    return not outside.any()


def test_masks_inside_image_area_and_text_outside(cases: dict[int, PhantomCase]) -> None:
    for case in cases.values():
        for truth in case.images:
            x0, y0, x1, y1 = truth.image_area
            assert truth.nodule_mask.shape == truth.thyroid_mask.shape == truth.pixels.shape[:2]
            assert truth.nodule_mask.any()
            assert _inside(truth.image_area, truth.nodule_mask)
            assert _inside(truth.image_area, truth.thyroid_mask)
            assert not (truth.nodule_mask & ~truth.thyroid_mask).any()
            assert len(truth.text_boxes) >= 6
            for bx0, by0, bx1, by1 in truth.text_boxes:
                assert bx1 <= x0 or bx0 >= x1 or by1 <= y0 or by0 >= y1
                assert truth.pixels[by0:by1, bx0:bx1].max() > 150


def test_rgb_text_boxes_hold_bright_pixels() -> None:
    truth = make_case(3, PhantomOptions(rgb=True)).images[0]
    gray = cv2.cvtColor(truth.pixels, cv2.COLOR_RGB2GRAY)
    for bx0, by0, bx1, by1 in truth.text_boxes:
        assert gray[by0:by1, bx0:bx1].max() > 150


def test_regions_match_image_area(cases: dict[int, PhantomCase]) -> None:
    for case in cases.values():
        for truth, ds in zip(case.images, case.datasets, strict=True):
            (region,) = ds.SequenceOfUltrasoundRegions
            x0, y0, x1, y1 = truth.image_area
            assert (region.RegionSpatialFormat, region.RegionDataType) == (1, 1)
            assert (region.RegionLocationMinX0, region.RegionLocationMinY0) == (x0, y0)
            assert (region.RegionLocationMaxX1 + 1, region.RegionLocationMaxY1 + 1) == (x1, y1)
            assert region.PhysicalUnitsXDirection == region.PhysicalUnitsYDirection == 3
            assert region.PhysicalDeltaX * 10 == pytest.approx(truth.mm_per_pixel[0])
            assert region.PhysicalDeltaY * 10 == pytest.approx(truth.mm_per_pixel[1])


def test_capsule_distance_matches_masks() -> None:
    errors = []
    for seed in range(12):
        case = make_case(seed)
        for truth in case.images:
            dx, dy = truth.mm_per_pixel
            inside = ndimage.distance_transform_edt(truth.thyroid_mask, sampling=(dy, dx))
            # Pixel centres: the capsule lies half a pixel beyond the last thyroid pixel.
            measured = max(float(inside[truth.nodule_mask].min()) - max(dx, dy) / 2, 0.0)
            errors.append(abs(measured - truth.capsule_distance_mm) / max(dx, dy))
        assert case.capsule_distance_mm == min(t.capsule_distance_mm for t in case.images)
    # Sampling two outlines at pixel centres: typically well under a pixel, never much over.
    assert float(np.mean(errors)) < 0.5
    assert max(errors) < 1.5


def test_label_model_follows_the_papers_risk_factors() -> None:
    base = RiskFactors(
        capsule_distance_mm=4.0,
        region="lower",
        size_mm=8.0,
        shape="round",
        margin="well-defined",
        calcification="none",
        echogenicity="isoechoic",
        sex="F",
        age_years=45,
    )
    p = llnm_probability(base)

    def changed(**kwargs: object) -> float:
        return llnm_probability(dataclasses.replace(base, **kwargs))  # type: ignore[arg-type]

    distances = [changed(capsule_distance_mm=d) for d in (0.0, 1.0, 2.0, 2.5, 3.0, 5.0, 8.0)]
    assert distances == sorted(distances, reverse=True)
    assert changed(capsule_distance_mm=0.5) > 2 * p
    assert changed(region="upper") > changed(region="middle") > p
    assert changed(size_mm=20.0) > changed(size_mm=12.0) > p
    for shape in ("lobulated", "irregular", "taller-than-wide"):
        assert changed(shape=shape) > p
    assert changed(margin="ill-defined") > p
    assert changed(calcification="micro") > changed(calcification="macro") > p
    assert changed(sex="M") > p
    assert changed(age_years=30) > p > changed(age_years=65)


def test_nodal_stage_follows_the_papers_definition_and_closes_its_gaps() -> None:
    assert nodal_stage(()) == 1  # LLNM negative: no metastatic node
    assert nodal_stage((0.1,) * 5) == 1  # five micro-metastases
    assert nodal_stage((0.1,) * 6) == 2  # more than five nodes, all under 3 cm
    assert nodal_stage((0.1, 0.2)) == 2  # few nodes, one not micro (0.2 cm is not < 0.2)
    assert nodal_stage((2.9,) * 8) == 2
    assert nodal_stage((3.0,)) == 2  # 3 cm is not over 3 cm
    assert nodal_stage((0.1, 3.01)) == 3  # any node over 3 cm
    assert nodal_stage((3.5,) * 9) == 3


def test_nodes_grow_with_the_latent_risk_and_only_positives_have_them() -> None:
    rng = np.random.default_rng(0)
    assert sample_nodes(3.0, False, rng) == ()
    low = [sample_nodes(-1.0, True, rng) for _ in range(400)]
    high = [sample_nodes(2.0, True, rng) for _ in range(400)]
    assert all(len(nodes) >= 1 for nodes in low + high)
    assert np.mean([len(n) for n in high]) > np.mean([len(n) for n in low])
    assert np.mean([max(n) for n in high]) > 2 * np.mean([max(n) for n in low])
    # The stage carries its own noise: cases of one logit reach more than one stage.
    assert len({nodal_stage(n) for n in high}) == 3


def test_best_achievable_auc_is_informative_but_not_perfect() -> None:
    small = PhantomOptions(rows=120, columns=160)  # labels do not depend on the frame size
    cases = [make_case(seed, small) for seed in range(300)]
    auc = best_achievable_auc(cases)
    assert 0.6 < auc < 0.99
    assert 0.3 < np.mean([c.llnm_label for c in cases]) < 0.7
    stages = np.bincount([c.risk_stage for c in cases], minlength=4)[1:]
    assert stages.min() > 0 and stages[2] < stages[1] < stages[0]  # stage 3 the rarest
    for case in cases:
        assert bool(case.node_sizes_cm) == case.llnm_label
        assert case.risk_stage == nodal_stage(case.node_sizes_cm)
    assert sum(c.report_text is None for c in cases) > 0
    assert roc_auc([0.1, 0.4, 0.35, 0.8], [False, False, True, True]) == 0.75


def test_cli_writes_studies_and_dataset(tmp_path: Path) -> None:
    out = tmp_path / "phantoms"
    result = CliRunner().invoke(
        app, ["phantom", "--n", "3", "--out", str(out), "--seed", "9", "--no-regions"]
    )
    assert result.exit_code == 0, result.output
    studies = sorted((out / "dicom").iterdir())
    assert len(studies) == 3
    lines = (out / "dataset" / "cases.jsonl").read_text().splitlines()
    records = sorted((json.loads(line) for line in lines), key=lambda r: str(r["case_id"]))
    assert [r["case_id"] for r in records] == [s.name for s in studies]
    for record, study in zip(records, studies, strict=True):
        files = {p.name for p in study.iterdir()}
        assert {"US_transverse.dcm", "US_longitudinal.dcm"} <= files
        assert ("SR_report.dcm" in files) == (record["report_text"] is not None)
        uids = {dcmread(study / f).StudyInstanceUID for f in files}
        assert uids == {record["study_instance_uid"]}
        assert "SequenceOfUltrasoundRegions" not in dcmread(study / "US_transverse.dcm")
        for view in record["views"]:
            image = cv2.imread(str(out / "dataset" / view["image"]), cv2.IMREAD_UNCHANGED)
            mask = cv2.imread(str(out / "dataset" / view["nodule_mask"]), cv2.IMREAD_UNCHANGED)
            assert image is not None and mask is not None
            assert image.shape == mask.shape == (480, 640)
            assert set(np.unique(mask)) == {0, 255}
    csv_lines = (out / "dataset" / "cases.csv").read_text().splitlines()
    assert csv_lines[0].startswith("case_id,seed,") and len(csv_lines) >= 4
    manifest = json.loads((out / "dataset" / "manifest.json").read_text())
    assert manifest["cases"] == 3 and manifest["options"]["with_regions"] is False
    assert manifest["risk_stage"]["macro_node_cm"] == 3.0
    with (out / "dataset" / "cases.csv").open(newline="") as handle:
        rows = {row["case_id"]: row for row in csv.DictReader(handle)}
    for record in records:
        row = rows[str(record["case_id"])]
        sizes = record["node_sizes_cm"]
        assert int(row["node_count"]) == len(sizes)
        assert (len(sizes) > 0) == (row["llnm_label"] == "1")
        assert float(row["largest_node_cm"]) == max(sizes, default=0.0)
        assert int(row["risk_stage"]) == nodal_stage(sizes)
        study = (out / "dataset" / row["study_dir"]).resolve()
        assert study == (out / "dicom" / row["case_id"]).resolve()


def test_every_phantom_object_says_it_is_synthetic() -> None:
    case = make_case(5)
    objects = [*case.datasets, *([case.report_dataset] if case.report_dataset else [])]
    for dataset in objects:
        assert "NOT FOR CLINICAL USE" in dataset.StudyDescription


def _rim_core_outside(
    truth: ImageTruth, pixels: np.ndarray[Any, Any], rim_mm: float
) -> tuple[float, float, float]:
    """Mean grey level of the nodule's rim, its core and a band just outside it."""
    grey = pixels.mean(axis=-1) if pixels.ndim == 3 else pixels.astype(np.float64)
    mask = truth.nodule_mask
    px = rim_mm / truth.mm_per_pixel[0]
    inside = ndimage.distance_transform_edt(mask)
    outside = ndimage.distance_transform_edt(~mask)
    rim = mask & (inside <= px)
    core = inside > 2 * px
    band = (outside > px) & (outside <= 3 * px) & truth.thyroid_mask
    return float(grey[rim].mean()), float(grey[core].mean()), float(grey[band].mean())


def test_isoechoic_nodules_show_a_dark_halo_and_hypoechoic_ones_none() -> None:
    found: dict[str, PhantomCase] = {}
    for seed in range(200):
        case = make_case(seed)
        if case.size_mm >= 9 and case.echogenicity in ("isoechoic", "hypoechoic"):
            found.setdefault(case.echogenicity, case)
        if len(found) == 2:
            break
    for echogenicity, case in found.items():
        for dataset, truth in zip(case.datasets, case.images, strict=True):
            rim, core, band = _rim_core_outside(truth, dataset.pixel_array, 0.8)
            if echogenicity == "isoechoic":
                # Core about as bright as the gland; a clearly darker rim marks the edge.
                assert core > 0.85 * band and rim < 0.85 * core, (rim, core, band)
            else:
                assert core < 0.8 * band and rim > 0.8 * core, (rim, core, band)
