"""Decoding, cropping, calibration and brightness standardisation of ultrasound images."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from pydicom import Dataset, dcmread
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.uid import (
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

import dicom_factory
from imaging.crop import (
    HIGH_PERCENTILE,
    LOW_PERCENTILE,
    CroppedImage,
    ImageArea,
    crop_image,
    detect_area,
    image_area,
    region_area,
    standardise_brightness,
)
from imaging.decode import decode_frames, grey, select_frame
from imaging.errors import StageError
from imaging.sop_classes import ULTRASOUND_IMAGE_CLASSES
from phantoms import PhantomOptions, make_case
from pipeline.contracts import (
    DeidentifiedImage,
    DeidentifiedStudy,
    InstanceRef,
    JobContext,
    ModelInputs,
    StudyInput,
)
from pipeline.crop import crop, crop_stage, summarize_crop
from pipeline.deidentify import deidentify
from pipeline.intake import IntakeReport, intake
from pipeline.spool import SpoolLayout

# Every ultrasound file of pydicom-data (Modality US or an ultrasound SOP class), with
# whether its image area comes from its Sequence of Ultrasound Regions.
VENDOR_ULTRASOUND: dict[str, bool] = {
    "JPGLosslessP14SV1_1s_1f_8b.dcm": True,  # JPEG lossless SV1, 8-bit grey
    "OBXXXX1A.dcm": True,  # palette colour, explicit VR little endian
    "OBXXXX1A_2frame.dcm": True,
    "OBXXXX1A_expb.dcm": True,  # explicit VR big endian
    "OBXXXX1A_expb_2frame.dcm": True,
    "OBXXXX1A_rle.dcm": True,  # RLE lossless
    "OBXXXX1A_rle_2frame.dcm": True,
    "US1_J2KI.dcm": False,  # JPEG 2000 lossy, YBR_ICT
    "US1_J2KR.dcm": False,  # JPEG 2000 lossless, YBR_RCT
    "US1_UNCI.dcm": False,  # RGB
    "US1_UNCR.dcm": False,
    "color-pl.dcm": False,  # RGB, planar configuration 1
    "color-px.dcm": False,  # RGB, planar configuration 0
    "color3d_jpeg_baseline.dcm": True,  # 120 frames, JPEG baseline YBR_FULL_422
    "gdcm-US-ALOKA-16.dcm": True,  # 16-bit palette colour (segmented LUT), implicit VR
    "gdcm-US-ALOKA-16_big.dcm": True,  # the same, explicit VR big endian
}
# Files holding the same pixels in different encodings: (reference, other, max difference).
SAME_PIXELS = [
    ("OBXXXX1A.dcm", "OBXXXX1A_rle.dcm", 0),
    # The big-endian copy's 16-bit palette holds 8-bit entries (0..255), used as they are.
    ("OBXXXX1A.dcm", "OBXXXX1A_expb.dcm", 1),
    ("OBXXXX1A_2frame.dcm", "OBXXXX1A_rle_2frame.dcm", 0),
    ("OBXXXX1A_2frame.dcm", "OBXXXX1A_expb_2frame.dcm", 1),
    ("US1_UNCR.dcm", "US1_J2KR.dcm", 0),
    ("US1_UNCI.dcm", "US1_J2KI.dcm", 0),
    ("gdcm-US-ALOKA-16.dcm", "gdcm-US-ALOKA-16_big.dcm", 0),
    ("color-px.dcm", "color-pl.dcm", 0),
]
# SC_rgb*: 8, 16 and 32-bit, little and big endian, one or two frames, and JPEG round trips
# by dcmtk; the first frame is the same colour bars in all (max difference allowed).
SC_RGB = {
    "SC_rgb.dcm": 0,
    "SC_rgb_2frame.dcm": 0,
    "SC_rgb_16bit.dcm": 0,
    "SC_rgb_16bit_2frame.dcm": 0,
    "SC_rgb_32bit.dcm": 0,
    "SC_rgb_32bit_2frame.dcm": 0,
    "SC_rgb_expb.dcm": 0,
    "SC_rgb_expb_2frame.dcm": 0,
    "SC_rgb_expb_16bit.dcm": 0,
    "SC_rgb_expb_16bit_2frame.dcm": 0,
    "SC_rgb_expb_32bit.dcm": 0,
    "SC_rgb_expb_32bit_2frame.dcm": 0,
    "SC_rgb_gdcm2k_uncompressed.dcm": 0,
    "SC_rgb_dcmtk_ebcr_dcmd.dcm": 2,
    "SC_rgb_dcmtk_ebcyn2_dcmd.dcm": 6,
    "SC_rgb_dcmtk_ebcys2_dcmd.dcm": 6,
    "SC_rgb_dcmtk_ebcys4_dcmd.dcm": 6,
    "SC_rgb_dcmtk_ebcyn1_dcmd.dcm": 80,  # lossy JPEG at low quality
    "SC_rgb_dcmtk_ebcynp_dcmd.dcm": 80,
}
SC_RGB_BARS = [
    (255, 0, 0),
    (255, 128, 128),
    (0, 255, 0),
    (128, 255, 128),
    (0, 0, 255),
    (128, 128, 255),
    (0, 0, 0),
    (64, 64, 64),
    (192, 192, 192),
    (255, 255, 255),
]


def _read(vendor_dir: Path, name: str) -> Dataset:
    return dcmread(vendor_dir / name)


def _box(area: ImageArea) -> tuple[int, int, int, int]:
    return (area.x0, area.y0, area.x1, area.y1)


# --- vendor files ------------------------------------------------------------------------


def test_every_vendor_ultrasound_file_is_covered(vendor_dir: Path) -> None:
    found = set()
    for path in vendor_dir.rglob("*"):
        if not path.is_file():
            continue
        try:
            ds = dcmread(path, stop_before_pixels=True)
        except Exception:  # pydicom-data also holds deliberately broken files
            continue
        if ds.get("Modality") == "US" or str(ds.get("SOPClassUID", "")) in ULTRASOUND_IMAGE_CLASSES:
            found.add(path.name)
    assert found == set(VENDOR_ULTRASOUND)


@pytest.mark.parametrize("name", sorted(VENDOR_ULTRASOUND))
def test_vendor_ultrasound_decodes_and_crops(vendor_dir: Path, name: str) -> None:
    ds = _read(vendor_dir, name)
    result = crop_image(ds)
    area = result.area
    assert result.pixels.dtype == np.uint8
    assert result.pixels.shape[:2] == (area.height, area.width)  # cropped, never resized
    assert 0 <= area.x0 < area.x1 <= ds.Columns and 0 <= area.y0 < area.y1 <= ds.Rows
    assert area.source == ("regions" if VENDOR_ULTRASOUND[name] else "detected")
    assert result.calibrated == VENDOR_ULTRASOUND[name]
    if result.mm_per_pixel is not None:
        region = ds.SequenceOfUltrasoundRegions[0]
        assert result.mm_per_pixel == pytest.approx(
            (region.PhysicalDeltaX * 10, region.PhysicalDeltaY * 10)
        )
    assert result.frame_index == int(ds.get("NumberOfFrames", 1)) // 2


@pytest.mark.parametrize(("reference", "other", "tolerance"), SAME_PIXELS)
def test_vendor_encodings_decode_alike(
    vendor_dir: Path, reference: str, other: str, tolerance: int
) -> None:
    a = decode_frames(_read(vendor_dir, reference)).astype(int)
    b = decode_frames(_read(vendor_dir, other)).astype(int)
    assert a.shape == b.shape
    assert np.abs(a - b).max() <= tolerance


@pytest.mark.parametrize("name", sorted(SC_RGB))
def test_rgb_of_every_depth_and_syntax_decodes_to_the_same_bars(
    vendor_dir: Path, name: str
) -> None:
    first = decode_frames(_read(vendor_dir, name), [0])[0].astype(int)
    expected = np.repeat(np.array(SC_RGB_BARS), 10, axis=0)[:, None, :]
    assert first.shape == (100, 100, 3)
    assert np.abs(first - expected).max() <= SC_RGB[name]


def test_palette_colour_becomes_rgb_and_16_bit_is_scaled(vendor_dir: Path) -> None:
    palette8 = decode_frames(_read(vendor_dir, "OBXXXX1A.dcm"))
    palette16 = decode_frames(_read(vendor_dir, "gdcm-US-ALOKA-16.dcm"))
    for frames in (palette8, palette16):
        assert frames.dtype == np.uint8 and frames.shape[-1] == 3
        assert frames.max() >= 240  # the full 16-bit range lands on the full 8-bit range
    # Green annotations of the ALOKA screen survive the lookup table.
    red, green = palette16[0, ..., 0].astype(int), palette16[0, ..., 1].astype(int)
    assert np.count_nonzero(green - red > 100) > 50


def test_multiframe_ybr_jpeg_chooses_frames_by_rule(vendor_dir: Path) -> None:
    ds = _read(vendor_dir, "color3d_jpeg_baseline.dcm")
    middle = select_frame(ds, "middle")
    assert middle.index == 60 and middle.pixels.shape == (480, 640, 3)
    # YBR_FULL_422 came out as RGB: grey B-mode has equal channels.
    spread = middle.pixels.max(axis=2).astype(int) - middle.pixels.min(axis=2)
    assert np.median(spread) <= 2
    richest = select_frame(ds, "most_content")
    counts = [np.count_nonzero(grey(f) > 10) for f in decode_frames(ds, range(0, 120, 1))]
    assert richest.index == int(np.argmax(counts))
    assert np.array_equal(richest.pixels, decode_frames(ds, [richest.index])[0])
    assert crop_image(ds, frame_rule="most_content").frame_index == richest.index
    assert decode_frames(ds, [0, 119]).shape == (2, 480, 640, 3)


def test_dual_view_regions_largest_or_union(vendor_dir: Path) -> None:
    ds = _read(vendor_dir, "gdcm-US-ALOKA-16.dcm")
    largest = region_area(ds, ds.Rows, ds.Columns, "largest")
    union = region_area(ds, ds.Rows, ds.Columns, "union")
    assert largest is not None and union is not None
    # Max X1/Y1 are inclusive in DICOM: 32..335 is 304 columns; ties go to the first region.
    assert _box(largest) == (32, 24, 336, 416)
    assert _box(union) == (32, 24, 640, 416)
    assert union.mm_per_pixel == pytest.approx((0.3826530650, 0.3826530650))


def test_region_past_the_image_edge_is_clipped(vendor_dir: Path) -> None:
    ds = _read(vendor_dir, "OBXXXX1A.dcm")  # its tissue region declares Max X1 = Columns
    area = region_area(ds, ds.Rows, ds.Columns)
    assert area is not None and _box(area) == (120, 60, 800, 519)


def test_grey_rgb_screens_crop_to_grey_and_colour_flow_stays_colour(vendor_dir: Path) -> None:
    assert crop_image(_read(vendor_dir, "color3d_jpeg_baseline.dcm")).pixels.ndim == 2
    assert crop_image(_read(vendor_dir, "US1_UNCR.dcm")).pixels.ndim == 3  # power Doppler


# --- phantoms ----------------------------------------------------------------------------


def _phantom(
    seed: int, options: PhantomOptions | None = None
) -> tuple[Dataset, tuple[int, int, int, int], tuple[float, float]]:
    """The first image of a phantom case, its true image area and pixel spacing."""
    case = make_case(seed, options or PhantomOptions())
    truth = case.images[0]
    return case.datasets[0], truth.image_area, truth.mm_per_pixel


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("rgb", [False, True])
def test_phantom_crop_with_regions_is_exact_and_calibrated(seed: int, rgb: bool) -> None:
    ds, box, mm = _phantom(seed, PhantomOptions(rgb=rgb, with_regions=True))
    result = crop_image(ds)
    assert _box(result.area) == box
    assert result.area.source == "regions" and result.calibrated
    assert result.mm_per_pixel == pytest.approx(mm)
    assert result.pixels.shape[:2] == (box[3] - box[1], box[2] - box[0])


@pytest.mark.parametrize("seed", [0, 1, 2, 5, 6])
@pytest.mark.parametrize("rgb", [False, True])
def test_phantom_without_regions_is_detected_within_a_few_pixels(seed: int, rgb: bool) -> None:
    case = make_case(seed, PhantomOptions(rgb=rgb, with_regions=False))
    for ds, truth in zip(case.datasets, case.images, strict=True):
        assert "SequenceOfUltrasoundRegions" not in ds
        result = crop_image(ds)
        assert result.area.source == "detected"
        assert not result.calibrated and result.mm_per_pixel is None
        x0, y0, x1, y1 = truth.image_area
        found = result.area
        assert max(abs(found.x0 - x0), abs(found.y0 - y0), abs(found.x1 - x1)) <= 3
        # A far field that fades to black cannot be seen: the rows left out hold
        # (almost) no signal.
        assert found.y1 <= y1 + 3
        left_out = grey(truth.pixels)[found.y1 + 3 : y1, x0:x1] > 10
        assert left_out.mean(axis=1).max(initial=0.0) < 0.1


def test_phantom_of_other_size_keeps_its_aspect_ratio() -> None:
    ds, box, _ = _phantom(7, PhantomOptions(rows=600, columns=800))
    result = crop_image(ds)
    assert _box(result.area) == box
    height, width = result.pixels.shape[:2]
    assert width / height == pytest.approx((box[2] - box[0]) / (box[3] - box[1]))


def test_brightness_is_standardised_whatever_the_gain() -> None:
    ds, _, _ = _phantom(11)
    reference = crop_image(ds).pixels
    dim = copy.deepcopy(ds)
    pixels = dim.pixel_array.astype(np.float64)
    dim.PixelData = np.clip(pixels * 0.5 + 20, 0, 255).astype(np.uint8).tobytes()
    standardised = crop_image(dim).pixels
    for image in (reference, standardised):
        low, high = np.percentile(image, [LOW_PERCENTILE, HIGH_PERCENTILE])
        assert low <= 2 and high >= 253
    # A linear change of gain and offset leaves the standardised image (almost) unchanged.
    assert np.abs(reference.astype(int) - standardised).mean() < 2.5


def test_standardise_brightness_maps_percentiles_and_refuses_flat_images() -> None:
    ramp = np.tile(np.arange(40, 140, dtype=np.uint8), (50, 1))
    out = standardise_brightness(ramp)
    assert out.min() == 0 and out.max() == 255 and out.shape == ramp.shape
    assert np.all(np.diff(out[0].astype(int)) >= 0)  # monotonic
    colour = np.dstack([ramp, ramp // 2, ramp])
    assert standardise_brightness(colour).shape == colour.shape
    with pytest.raises(StageError, match="flat"):
        standardise_brightness(np.full((20, 20), 90, np.uint8))


@pytest.mark.parametrize(
    ("syntax", "options", "tolerance"),
    [
        (RLELossless, {}, 0),
        (JPEGLSLossless, {}, 0),
        (JPEG2000Lossless, {}, 0),
        (DeflatedExplicitVRLittleEndian, {}, 0),
        (ImplicitVRLittleEndian, {}, 0),
        (JPEGLSNearLossless, {"jls_error": 2}, 2),
        (JPEG2000, {"j2k_psnr": [45]}, 40),  # lossy at 45 dB PSNR
    ],
    ids=["rle", "jpeg-ls", "j2k", "deflate", "implicit", "jpeg-ls-near", "j2k-lossy"],
)
@pytest.mark.parametrize("rgb", [False, True])
def test_phantom_transcoded_decodes_alike(
    tmp_path: Path, syntax: UID, options: dict[str, Any], tolerance: int, rgb: bool
) -> None:
    ds, _, _ = _phantom(5, PhantomOptions(rgb=rgb))
    reference = decode_frames(ds)
    if syntax.is_compressed:
        ds.compress(syntax, **options)
    else:
        ds.file_meta.TransferSyntaxUID = syntax
    path = tmp_path / "transcoded.dcm"
    ds.save_as(path, enforce_file_format=True)
    back = dcmread(path)
    assert back.file_meta.TransferSyntaxUID == syntax
    decoded = decode_frames(back)
    assert decoded.shape == reference.shape
    difference = np.abs(decoded.astype(int) - reference)
    assert difference.max() <= tolerance and difference.mean() < 1.0
    assert crop_image(back).area == crop_image(ds).area


# --- bad input ---------------------------------------------------------------------------


def _region(spatial: int, data_type: int, box: tuple[int, int, int, int]) -> Dataset:
    region = Dataset()
    region.RegionSpatialFormat = spatial
    region.RegionDataType = data_type
    region.RegionFlags = 0
    (
        region.RegionLocationMinX0,
        region.RegionLocationMinY0,
        region.RegionLocationMaxX1,
        region.RegionLocationMaxY1,
    ) = box
    region.PhysicalUnitsXDirection = region.PhysicalUnitsYDirection = 3
    region.PhysicalDeltaX = region.PhysicalDeltaY = 0.01
    return region


def test_no_pixel_data_is_a_stage_error() -> None:
    ds = dicom_factory.ultrasound()
    del ds.PixelData
    with pytest.raises(StageError, match="no Pixel Data"):
        crop_image(ds)


def test_zero_size_region_is_a_stage_error() -> None:
    ds = dicom_factory.ultrasound()
    ds.SequenceOfUltrasoundRegions = Sequence([_region(1, 1, (30, 10, 29, 40))])
    with pytest.raises(StageError, match="zero size"):
        crop_image(ds)
    ds.SequenceOfUltrasoundRegions = Sequence([_region(1, 1, (500, 10, 600, 40))])
    with pytest.raises(StageError, match="zero size"):
        crop_image(ds)
    # A usable tissue region next to a broken one is enough.
    ds.SequenceOfUltrasoundRegions.append(_region(1, 1, (5, 5, 44, 24)))
    assert _box(crop_image(ds).area) == (5, 5, 45, 25)


def test_doppler_only_regions_are_a_stage_error() -> None:
    ds = dicom_factory.ultrasound()
    ds.SequenceOfUltrasoundRegions = Sequence(
        [_region(3, 3, (0, 0, 79, 63)), _region(1, 2, (0, 0, 79, 30))]
    )
    with pytest.raises(StageError, match=r"no 2D tissue.*PW Spectral Doppler.*Color Flow"):
        crop_image(ds)


def test_uncalibrated_region_units_leave_the_crop_uncalibrated() -> None:
    ds = dicom_factory.ultrasound()
    region = _region(1, 1, (10, 5, 69, 54))
    region.PhysicalUnitsXDirection = region.PhysicalUnitsYDirection = 0
    ds.SequenceOfUltrasoundRegions = Sequence([region])
    result = crop_image(ds)
    assert _box(result.area) == (10, 5, 70, 55)
    assert result.area.source == "regions" and result.mm_per_pixel is None


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_compressed_stream_is_a_stage_error(damage: str) -> None:
    ds, _, _ = _phantom(3)
    ds.compress(RLELossless)
    fragment = bytes(range(256)) * 8 if damage == "garbage" else b"\x01\x00\x00\x00"
    ds.PixelData = encapsulate([fragment])
    with pytest.raises(StageError, match=r"RLE Lossless.*cannot be decoded"):
        crop_image(ds)


def test_short_native_pixel_data_is_a_stage_error() -> None:
    ds = dicom_factory.ultrasound()
    ds.PixelData = ds.PixelData[:100]
    with pytest.raises(StageError, match="cannot be decoded"):
        decode_frames(ds)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"PhotometricInterpretation": "YBR_PARTIAL_420"}, "not supported"),
        ({"SamplesPerPixel": 3}, "sample"),
        ({"Rows": 0}, "zero size"),
    ],
)
def test_inconsistent_pixel_attributes_are_a_stage_error(
    change: dict[str, object], message: str
) -> None:
    ds = dicom_factory.ultrasound()
    for keyword, value in change.items():
        setattr(ds, keyword, value)
    with pytest.raises(StageError, match=message):
        crop_image(ds)


def test_frame_requests_outside_the_image_are_a_stage_error() -> None:
    ds = dicom_factory.ultrasound()
    with pytest.raises(StageError, match="frame"):
        decode_frames(ds, [1])
    with pytest.raises(StageError, match="unknown frame rule"):
        select_frame(ds, "last")  # type: ignore[arg-type]


def test_blank_screen_has_no_image_area() -> None:
    blank = np.zeros((480, 640), np.uint8)
    cv2.putText(blank, "NO SIGNAL 12:00", (20, 40), cv2.FONT_HERSHEY_SIMPLEX, 1.0, 255, 2)
    with pytest.raises(StageError, match="no ultrasound image area"):
        detect_area(blank)


def test_detector_ignores_text_bands_and_bars() -> None:
    rng = np.random.default_rng(0)
    screen = np.zeros((480, 640), np.uint8)
    screen[70:430, 100:560] = np.clip(rng.rayleigh(45, (360, 460)), 0, 255).astype(np.uint8)
    screen[0:30, :] = 60  # flat status band
    cv2.putText(screen, "DOE^JANE 1970", (10, 60), cv2.FONT_HERSHEY_SIMPLEX, 0.8, 255, 2)
    screen[100:400, 600:615] = np.linspace(0, 255, 300, dtype=np.uint8)[:, None]  # grey bar
    area = detect_area(screen)
    assert abs(area.x0 - 100) <= 2 and abs(area.x1 - 560) <= 2
    assert abs(area.y0 - 70) <= 2 and abs(area.y1 - 430) <= 2
    ds = dicom_factory.ultrasound(rows=480, columns=640)
    ds.PixelData = screen.tobytes()
    assert image_area(ds, screen) == area


# --- the stage ---------------------------------------------------------------------------


def _image(path: Path, sop_instance_uid: str) -> DeidentifiedImage:
    """A de-identified image as the crop stage reads it (path and UID; sizes unused)."""
    return DeidentifiedImage(path, sop_instance_uid, 1, 0, 0, has_ultrasound_regions=False)


def _study(
    job_id: int, work_dir: Path, images: tuple[DeidentifiedImage, ...], inputs: ModelInputs
) -> DeidentifiedStudy:
    return DeidentifiedStudy(JobContext(job_id, work_dir, inputs), "1.2.3.4", images)


def test_crop_stage_saves_pngs_and_skips_unusable_images(tmp_path: Path) -> None:
    images = []
    truths = []
    for seed, regions in ((21, True), (22, False)):
        case = make_case(seed, PhantomOptions(with_regions=regions))
        ds = case.datasets[0]
        truths.append((tuple(case.images[0].image_area), regions))
        path = dicom_factory.write(ds, tmp_path / "in" / f"{seed}.dcm")
        images.append(_image(path, str(ds.SOPInstanceUID)))
    doppler = dicom_factory.ultrasound(patient_id="SECRET-ID")
    doppler.SequenceOfUltrasoundRegions = Sequence([_region(3, 3, (0, 0, 79, 63))])
    path = dicom_factory.write(doppler, tmp_path / "in" / "doppler.dcm")
    images.append(_image(path, str(doppler.SOPInstanceUID)))
    inputs = ModelInputs(age_years=44, sex="F", report_text="TI-RADS 4 nodule, right upper pole")
    study = _study(7, tmp_path / "job", tuple(images), inputs)

    stage = crop_stage(SpoolLayout.at(tmp_path / "spool"))
    result = stage.run(study)

    assert stage.name == "crop" and result.job is study.job and result.job.inputs is inputs
    assert [v.sop_instance_uid for v in result.images] == [i.sop_instance_uid for i in images[:2]]
    assert [s.sop_instance_uid for s in result.skipped] == [images[2].sop_instance_uid]
    assert "no 2D tissue" in result.skipped[0].reason
    for view, (box, calibrated) in zip(result.images, truths, strict=True):
        assert view.png_path.parent == tmp_path / "job" / "crop"
        saved = cv2.imread(str(view.png_path), cv2.IMREAD_UNCHANGED)
        assert saved is not None and saved.shape[:2] == (view.rows, view.columns)
        assert view.calibrated == calibrated
        if calibrated:
            assert _box(view.area) == box
    summary = summarize_crop(result)
    text = json.dumps(summary)
    assert summary["images"] == 2 and summary["calibrated"] == 1 and summary["uncalibrated"] == 1
    assert summary["crops"][0]["width"] == result.images[0].columns
    assert "SECRET-ID" not in text and "TI-RADS" not in text


@pytest.mark.parametrize("regions", [True, False])
def test_crop_after_deidentification(tmp_path: Path, regions: bool) -> None:
    case = make_case(31, PhantomOptions(with_regions=regions))
    refs = tuple(
        InstanceRef.of(ds, dicom_factory.write(ds, tmp_path / "spool" / f"{ds.SOPInstanceUID}.dcm"))
        for ds in case.datasets
    )
    study_input = StudyInput(5, str(case.datasets[0].StudyInstanceUID), refs, tmp_path / "job")
    report = intake(study_input)
    assert isinstance(report, IntakeReport)
    study = deidentify(report).study

    result = crop(study)

    assert len(result.images) == 2 and not result.skipped
    assert result.job == study.job
    for view, truth in zip(result.images, case.images, strict=True):
        found, (x0, y0, x1, y1) = view.area, truth.image_area
        assert view.calibrated == regions
        if regions:
            assert _box(found) == truth.image_area
            assert view.mm_per_pixel == pytest.approx(truth.mm_per_pixel)
        else:
            assert max(abs(found.x0 - x0), abs(found.y0 - y0), abs(found.x1 - x1)) <= 3
            assert found.y1 <= y1 + 3
        assert view.png_path.is_file()


def test_crop_stage_with_no_usable_image_is_a_stage_error(tmp_path: Path) -> None:
    ds = dicom_factory.ultrasound()
    del ds.PixelData
    path = dicom_factory.write(ds, tmp_path / "empty.dcm")
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(b"not dicom at all")
    study = _study(
        1,
        tmp_path / "job",
        (_image(path, "1.2.3"), _image(broken, "1.2.4")),
        ModelInputs(50, "M", ""),
    )
    with pytest.raises(StageError, match=r"no image of the study.*1\.2\.3: .*no Pixel Data"):
        crop(study)


def test_cropped_image_exposes_calibration() -> None:
    ds = dicom_factory.ultrasound()
    ds.SequenceOfUltrasoundRegions = Sequence([_region(1, 1, (0, 0, 79, 63))])
    result = crop_image(ds)
    assert isinstance(result, CroppedImage)
    assert result.calibrated and result.mm_per_pixel == pytest.approx((0.1, 0.1))
