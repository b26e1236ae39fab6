"""The scope gate's pure rules on real vendor files, phantoms and edited phantom frames."""

from __future__ import annotations

import copy
import dataclasses
import re
import tomllib
from collections.abc import Callable
from functools import cache
from typing import Any

import cv2
import numpy as np
import pytest
from pydicom import Dataset, dcmread
from pydicom.data import get_testdata_file
from pydicom.sequence import Sequence
from pydicom.uid import JPEG2000, JPEGLSNearLossless

from imaging.crop import ImageArea, detect_area, image_area
from imaging.decode import Image8, select_frame
from imaging.scope import (
    COLOUR_MIN_SHARE,
    COLOUR_SPREAD,
    DEFAULT_DENY,
    ScopeRules,
    colour_share,
    header_exclusion,
    pixel_exclusion,
    region_exclusion,
    split_views,
)
from imaging.scope_reasons import Exclusion, Reason
from phantoms import PhantomOptions, make_case

RULES = ScopeRules()
STUDY = Reason.STUDY_OUT_OF_SCOPE
OVERLAY = Reason.COLOUR_OVERLAY
# Every vendor ultrasound file: the reasons of (header, regions, pixels) with default rules.
# The GE SMALL PARTS files are power Doppler of a lymph node: only their pixels tell.
# OBXXXX1A's 2-frame copies: the middle (second) frame shows blue through the palette.
VENDOR: dict[str, tuple[Reason | None, Reason | None, Reason | None]] = {
    "JPGLosslessP14SV1_1s_1f_8b.dcm": (STUDY, None, None),  # CARDIOLOGY
    "OBXXXX1A.dcm": (STUDY, None, None),  # OBSTETRICAL; tissue + ECG trace region
    "OBXXXX1A_expb.dcm": (STUDY, None, None),
    "OBXXXX1A_rle.dcm": (STUDY, None, None),
    "OBXXXX1A_2frame.dcm": (STUDY, None, OVERLAY),
    "OBXXXX1A_expb_2frame.dcm": (STUDY, None, OVERLAY),
    "OBXXXX1A_rle_2frame.dcm": (STUDY, None, OVERLAY),
    "US1_J2KI.dcm": (None, None, OVERLAY),  # SMALL PARTS, power Doppler
    "US1_J2KR.dcm": (None, None, OVERLAY),
    "US1_UNCI.dcm": (None, None, OVERLAY),
    "US1_UNCR.dcm": (None, None, OVERLAY),
    "examples_jpeg2k.dcm": (None, None, OVERLAY),
    "examples_rgb_color.dcm": (None, None, OVERLAY),
    "color-pl.dcm": (STUDY, None, OVERLAY),  # TEE, colour Doppler
    "color-px.dcm": (STUDY, None, OVERLAY),
    "color3d_jpeg_baseline.dcm": (STUDY, None, None),  # EPICARDIAL
    "examples_ybr_color.dcm": (STUDY, None, None),
    "gdcm-US-ALOKA-16.dcm": (STUDY, Reason.SPLIT_SCREEN, None),  # ABDOM/RAD, dual view
    "gdcm-US-ALOKA-16_big.dcm": (STUDY, Reason.SPLIT_SCREEN, None),
    "ExplVR_BigEnd.dcm": (STUDY, None, OVERLAY),  # EPICARDIAL
}
GE_DOPPLER = [name for name, (header, _, _) in VENDOR.items() if header is None]
SECTORS = ["JPGLosslessP14SV1_1s_1f_8b.dcm", "color3d_jpeg_baseline.dcm", "OBXXXX1A.dcm"]
SEEDS = range(20)


@cache
def _vendor(name: str) -> Dataset:
    path = get_testdata_file(name, download=False)
    assert path is not None, name
    return dcmread(path)


def _reason(exclusion: Exclusion | None) -> Reason | None:
    return None if exclusion is None else exclusion.reason


def _frame(ds: Dataset) -> tuple[Image8, ImageArea]:
    pixels = select_frame(ds).pixels
    return pixels, image_area(ds, pixels)


def _all_rules(ds: Dataset) -> tuple[Exclusion | None, ...]:
    pixels, area = _frame(ds)
    return header_exclusion(ds, RULES), region_exclusion(ds), pixel_exclusion(pixels, area)


@cache
def _case(seed: int, rgb: bool, regions: bool = True) -> tuple[Dataset, Dataset]:
    return make_case(seed, PhantomOptions(rgb=rgb, with_regions=regions)).datasets


def _phantom_frame(seed: int = 3) -> tuple[Image8, ImageArea]:
    """An RGB phantom frame (grey content) and its image area from the regions."""
    pixels, area = _frame(_case(seed, True)[0])
    return pixels.copy(), area


# --- vendor files ------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(VENDOR))
def test_every_vendor_file_is_excluded_for_its_reason(name: str) -> None:
    found = _all_rules(_vendor(name))
    assert tuple(_reason(e) for e in found) == VENDOR[name]
    assert any(found)


def test_ge_small_parts_files_are_power_doppler_caught_by_their_pixels() -> None:
    for name in GE_DOPPLER:
        ds = _vendor(name)
        assert ds.ImageType[2] == "SMALL PARTS" and "SequenceOfUltrasoundRegions" not in ds
        pixels, area = _frame(ds)
        assert area.source == "detected"
        share = colour_share(pixels, area)
        assert 0.10 <= share <= 0.12, name
        exclusion = pixel_exclusion(pixels, area)
        assert exclusion == Exclusion(
            OVERLAY, f"colour in {round(100 * share)} % of the B-mode area"
        )
        # The colour is a power Doppler map (red to yellow): red is the strongest channel.
        window = pixels[area.y0 : area.y1, area.x0 : area.x1].astype(int)
        colour = window[window.max(axis=2) - window.min(axis=2) > COLOUR_SPREAD]
        assert np.mean(colour.argmax(axis=1) == 0) > 0.9, name


@pytest.mark.parametrize("name", ["gdcm-US-ALOKA-16.dcm", "gdcm-US-ALOKA-16_big.dcm"])
def test_dual_view_regions_are_a_split_screen_whatever_the_header(name: str) -> None:
    ds = copy.deepcopy(_vendor(name))
    ds.ImageType = ["ORIGINAL", "PRIMARY", "SMALL PARTS"]
    assert header_exclusion(ds, RULES) is None
    assert region_exclusion(ds) == Exclusion(Reason.SPLIT_SCREEN, "2 tissue regions")


@pytest.mark.parametrize("name", [n for n, (header, _, _) in VENDOR.items() if header])
def test_non_thyroid_exam_types_are_out_of_scope_by_exam_type(name: str) -> None:
    exam_type_only = ScopeRules(deny={"ExamType": DEFAULT_DENY["ExamType"]})
    assert header_exclusion(_vendor(name), exam_type_only) == Exclusion(
        STUDY, "ExamType matches a deny pattern"
    )


@pytest.mark.parametrize("name", SECTORS)
def test_sector_images_are_no_split_screen_even_as_detected_areas(name: str) -> None:
    pixels, area = _frame(_vendor(name))
    assert split_views(pixels, dataclasses.replace(area, source="detected")) is None


# --- in scope: phantoms ------------------------------------------------------------------


@pytest.mark.parametrize("rgb", [False, True], ids=["grey", "rgb"])
def test_phantoms_are_in_scope_in_every_encoding(rgb: bool) -> None:
    """The false-positive guard: burned-in text, scale marks and grey B-mode pass."""
    for seed in SEEDS:
        for ds in _case(seed, rgb):
            assert _all_rules(ds) == (None, None, None), seed
            bare = copy.deepcopy(ds)
            del bare.SequenceOfUltrasoundRegions
            pixels, area = _frame(bare)
            assert area.source == "detected"
            assert (region_exclusion(bare), pixel_exclusion(pixels, area)) == (None, None), seed
    for seed in SEEDS[:3]:
        for ds in _case(seed, rgb, regions=False):
            assert _all_rules(ds) == (None, None, None), seed


@pytest.mark.parametrize(
    ("syntax", "options"),
    [(JPEG2000, {"j2k_psnr": [40]}), (JPEGLSNearLossless, {"jls_error": 4})],
    ids=["j2k-lossy", "jpeg-ls-near"],
)
def test_lossy_rgb_phantoms_have_no_colour(syntax: str, options: dict[str, Any]) -> None:
    for seed in (1, 2):
        ds = copy.deepcopy(_case(seed, True)[0])
        ds.compress(syntax, **options)
        pixels, area = _frame(ds)
        assert colour_share(pixels, area) == 0.0
        assert pixel_exclusion(pixels, area) is None


# --- pixel rules on edited phantom frames ------------------------------------------------


def _doppler_box(pixels: Image8, area: ImageArea, share: float, fill: bool) -> None:
    """Paint red and blue flow blobs (or solid colour) over ``share`` of the area."""
    width, height = int(area.width * 0.5), int(area.height * share / 0.5)
    x0, y0 = area.x0 + area.width // 4, area.y0 + (area.height - height) // 2
    box = pixels[y0 : y0 + height, x0 : x0 + width]
    field = cv2.GaussianBlur(np.random.default_rng(0).normal(size=box.shape[:2]), (0, 0), 4)
    red = field > 0 if fill else field > 0.02
    blue = ~red if fill else field < -0.02
    box[red] = (220, 30, 20)
    box[blue] = (20, 60, 230)


@pytest.mark.parametrize("fill", [True, False], ids=["solid", "blobs"])
def test_colour_doppler_box_is_a_colour_overlay(fill: bool) -> None:
    pixels, area = _phantom_frame()
    _doppler_box(pixels, area, 0.20, fill)
    exclusion = pixel_exclusion(pixels, area)
    assert exclusion is not None and exclusion.reason == OVERLAY
    match = re.fullmatch(r"colour in (\d+) % of the B-mode area", exclusion.detail)
    assert match is not None
    assert (int(match[1]) == 20) if fill else (5 <= int(match[1]) < 20)


def test_calipers_body_marker_and_colour_bar_are_no_colour_overlay() -> None:
    pixels, area = _phantom_frame()
    yellow, cyan, orange = (255, 230, 0), (0, 220, 255), (255, 140, 0)
    for cx, cy in ((area.x0 + 150, area.y0 + 120), (area.x0 + 260, area.y0 + 200)):
        cv2.line(pixels, (cx - 8, cy), (cx + 8, cy), yellow, 3)
        cv2.line(pixels, (cx, cy - 8), (cx, cy + 8), yellow, 3)
    for x in range(area.x0 + 160, area.x0 + 250, 8):  # dotted caliper line
        cv2.circle(pixels, (x, area.y0 + 160), 1, yellow, -1)
    marker = (area.x0 + 30, area.y1 - 70)  # body marker: neck outline and probe
    cv2.ellipse(pixels, (marker[0] + 20, marker[1] + 25), (18, 22), 0, 0, 360, cyan, 2)
    cv2.rectangle(
        pixels, (marker[0] + 5, marker[1] + 20), (marker[0] + 35, marker[1] + 26), orange, -1
    )
    cv2.putText(pixels, "RT LOBE", (area.x0 + 300, area.y1 - 20), 0, 0.6, cyan, 1)
    bar = np.linspace(0, 255, area.height // 2).astype(np.uint8)  # colour bar at the edge
    pixels[area.y0 : area.y0 + bar.size, area.x0 : area.x0 + 16] = np.stack(
        [bar, 255 - bar, np.full_like(bar, 128)], axis=1
    )[:, None]
    assert colour_share(pixels, area) < COLOUR_MIN_SHARE
    assert pixel_exclusion(pixels, area) is None


# With a gap narrower than its closing square the crop detector merges both views and
# then stops at the gap from the middle: an empty area (numpy warns about its empty mean).
@pytest.mark.filterwarnings("ignore:Mean of empty slice", "ignore:invalid value encountered")
@pytest.mark.parametrize("gap", [2, 8, 40])
def test_two_views_side_by_side_without_regions_are_a_split_screen(gap: int) -> None:
    pixels, area = _frame(_case(4, False)[0])
    view = pixels[area.y0 : area.y1, area.x0 : area.x1]
    screen = np.zeros((pixels.shape[0], 2 * view.shape[1] + gap + 80), np.uint8)
    screen[5:40, : pixels.shape[1]] = pixels[5:40]  # burned-in text above
    screen[area.y0 : area.y1, 40 : 40 + view.shape[1]] = view
    screen[area.y0 : area.y1, 40 + view.shape[1] + gap : -40] = view[:, ::-1]
    detected = detect_area(screen)
    exclusion = pixel_exclusion(screen, detected)
    assert exclusion == Exclusion(Reason.SPLIT_SCREEN, f"2 views side by side, {gap} px apart")
    assert pixel_exclusion(screen, dataclasses.replace(detected, source="regions")) is None


def test_one_view_with_a_dark_cyst_shadow_or_fan_is_no_split_screen() -> None:
    pixels, area = _frame(_case(4, False)[0])
    centre, height = (area.x0 + area.x1) // 2, area.height
    cyst = pixels.copy()  # anechoic, 80 % of the depth, below the near field
    cv2.ellipse(
        cyst, (centre, area.y1 - height * 2 // 5 - 8), (60, height * 2 // 5), 0, 0, 360, 3, -1
    )
    shadow = pixels.copy()  # full acoustic shadow behind a calcification at 30 % depth
    shadow[area.y0 + height * 3 // 10 : area.y1, centre - 30 : centre + 30] = 2
    fan = np.zeros_like(pixels)  # a sector image: dark outside the fan
    inside = np.zeros_like(pixels)
    cv2.ellipse(inside, (centre, area.y0 - 60), (height + 60, height + 60), 90, -40, 40, 255, -1)
    fan[inside > 0] = pixels[inside > 0]
    for edited in (cyst, shadow, fan):
        detected = detect_area(edited)
        assert split_views(edited, detected) is None
        assert pixel_exclusion(edited, detected) is None


# --- region rules ------------------------------------------------------------------------


def _region(spatial: int, data_type: int, box: tuple[int, int, int, int]) -> Dataset:
    region = Dataset()
    region.RegionSpatialFormat, region.RegionDataType = spatial, data_type
    (
        region.RegionLocationMinX0,
        region.RegionLocationMinY0,
        region.RegionLocationMaxX1,
        region.RegionLocationMaxY1,
    ) = box
    return region


def _with_regions(*regions: Dataset) -> Dataset:
    ds = Dataset()
    ds.Rows, ds.Columns = 480, 640
    ds.SequenceOfUltrasoundRegions = Sequence(list(regions))
    return ds


TISSUE = (1, 1, (90, 48, 601, 467))


@pytest.mark.parametrize(
    ("regions", "expected"),
    [
        ([TISSUE, (1, 2, (200, 100, 400, 300))], Reason.COLOUR_DOPPLER),  # colour box on B-mode
        ([(1, 2, (90, 48, 601, 467))], Reason.COLOUR_DOPPLER),  # colour flow only
        ([(3, 3, (0, 0, 639, 479))], Reason.SPECTRAL_DOPPLER),  # PW spectrum only
        ([(3, 4, (0, 0, 639, 300)), (4, 10, (0, 400, 639, 479))], Reason.SPECTRAL_DOPPLER),
        ([(2, 1, (0, 0, 639, 479))], Reason.NO_TISSUE_REGION),  # M-mode only
        ([(1, 1, (0, 0, 319, 479)), (1, 1, (320, 0, 639, 479))], Reason.SPLIT_SCREEN),
        ([(1, 1, (0, 0, 639, 239)), (1, 1, (0, 240, 639, 479))], Reason.SPLIT_SCREEN),
        ([(1, 1, (700, 0, 800, 479))], Reason.NO_TISSUE_REGION),  # outside the image
        ([(1, 1, (90, 48, 601, 300)), (3, 3, (90, 310, 601, 479))], None),  # duplex
        ([TISSUE, (4, 10, (90, 470, 601, 479)), (0, 14, (610, 100, 630, 300))], None),
        ([TISSUE, (1, 1, (200, 100, 400, 300))], None),  # a zoom box inside the view
        ([TISSUE, (1, 2, (590, 40, 639, 479))], None),  # colour box barely on the view
    ],
    ids=[
        "colour-box",
        "colour-only",
        "pw-only",
        "cw-and-ecg",
        "m-mode",
        "side-by-side",
        "top-bottom",
        "no-usable-tissue",
        "duplex",
        "ecg-and-bar",
        "nested",
        "colour-beside",
    ],
)
def test_region_rules(
    regions: list[tuple[int, int, tuple[int, int, int, int]]], expected: Reason | None
) -> None:
    ds = _with_regions(*(_region(*r) for r in regions))
    assert _reason(region_exclusion(ds)) == expected


def test_colour_box_detail_gives_its_share_of_the_b_mode_region() -> None:
    ds = _with_regions(_region(*TISSUE), _region(1, 2, (90, 48, 345, 257)))
    assert region_exclusion(ds) == Exclusion(
        Reason.COLOUR_DOPPLER, "colour flow region over 25 % of the B-mode region"
    )
    assert region_exclusion(Dataset()) is None


# --- header rules ------------------------------------------------------------------------

SECRETS = {
    "PatientName": "QZXW^SECRETNAME",
    "PatientID": "PID99731",
    "StudyDescription": "ZQXJ-ECHOCARDIOGRAM-7781",
    "BodyPartExamined": "NECK",
    "ProtocolName": "PROTO-5521",
}


def _header(modality: str = "US", **values: object) -> Dataset:
    ds = Dataset()
    ds.Modality = modality
    for keyword, value in {**SECRETS, **values}.items():
        setattr(ds, keyword, value)
    return ds


def _no_secret_in(exclusion: Exclusion) -> None:
    for value in SECRETS.values():
        for token in re.split(r"[^A-Za-z0-9]+", value):
            assert token.lower() not in exclusion.text.lower(), token


@pytest.mark.filterwarnings("ignore:Invalid value for VR CS")
def test_other_modality_is_not_ultrasound_and_names_only_the_code() -> None:
    exclusion = header_exclusion(_header("CT"), RULES)
    assert exclusion == Exclusion(Reason.NOT_ULTRASOUND, "modality CT")
    _no_secret_in(exclusion)
    assert header_exclusion(_header(""), RULES) == Exclusion(Reason.NOT_ULTRASOUND, "no modality")
    odd = header_exclusion(_header("ct: Jane Doe"), RULES)
    assert odd == Exclusion(Reason.NOT_ULTRASOUND, "modality not a code")


def test_deny_detail_names_the_attribute_never_the_value() -> None:
    exclusion = header_exclusion(_header(), RULES)
    assert exclusion == Exclusion(STUDY, "StudyDescription matches a deny pattern")
    _no_secret_in(exclusion)


@pytest.mark.parametrize(
    ("description", "body_part", "exam_type"),
    [
        ("US THYROID", "THYROID", "SMALL PARTS"),
        ("ECHO SCHILDKLIER", "NECK", "SMALL PARTS"),  # Dutch: "echo" is any ultrasound
        ("Echographie thyroidienne", "HEADNECK", "THYROID"),
        ("ECOGRAFIA TIROIDEA", "", "SUPERFICIAL"),
        ("US NECK SOFT TISSUE", "NECK", "SMALL PARTS"),
        ("THYROID FNA GUIDANCE", "THYROID", ""),
        ("US HALS / SCHILDDRUESE", "", "SMALL PARTS"),
        ("LYMPH NODE LEVEL IV", "NECK", "SMALL PARTS"),
    ],
)
def test_default_rules_keep_thyroid_studies(
    description: str, body_part: str, exam_type: str
) -> None:
    ds = _header(StudyDescription=description, BodyPartExamined=body_part)
    ds.ProtocolName = ds.RequestedProcedureDescription = description
    ds.ImageType = ["ORIGINAL", "PRIMARY", exam_type]
    assert header_exclusion(ds, RULES) is None


@pytest.mark.parametrize(
    ("keyword", "value"),
    [
        ("StudyDescription", "Echocardiogram"),
        ("StudyDescription", "TTE COMPLETE"),
        ("StudyDescription", "US ABDOMEN COMPLETE"),
        ("StudyDescription", "OB 2ND TRIMESTER"),
        ("StudyDescription", "US PELVIS TRANSVAGINAL"),
        ("StudyDescription", "CAROTID DUPLEX BILATERAL"),
        ("StudyDescription", "US BREAST LEFT"),
        ("ProtocolName", "SCROTAL US"),
        ("ProtocolName", "TRANSCRANIAL DOPPLER"),
        ("ProtocolName", "RENAL TRANSPLANT"),
        ("BodyPartExamined", "CHEST_TO_PELVIS"),
        ("BodyPartExamined", "EYE"),
        ("ExamType", "TRANSRECTAL"),
        ("ExamType", "INTRAVASCULAR"),
        ("ExamType", "FETAL ECHO"),
    ],
)
def test_default_rules_deny_clearly_other_studies(keyword: str, value: str) -> None:
    ds = _header(StudyDescription="", ProtocolName="", BodyPartExamined="")
    if keyword == "ExamType":
        ds.ImageType = ["ORIGINAL", "PRIMARY", value]
    else:
        setattr(ds, keyword, value)
    assert header_exclusion(ds, RULES) == Exclusion(STUDY, f"{keyword} matches a deny pattern")


SITE_TOML = """
modalities = ["us"]
default_deny = false

[allow]
StudyDescription = ["thyr", "neck"]

[deny]
RequestedProcedureDescription = ['\\bbiopsy\\b']
ExamType = ["^cardiology$"]
"""


def test_site_rules_from_a_toml_table() -> None:
    rules = ScopeRules.from_mapping(tomllib.loads(SITE_TOML))
    assert rules.modalities == ("US",)
    assert header_exclusion(_header(StudyDescription="US Thyroid"), rules) is None
    assert header_exclusion(_header(StudyDescription=""), rules) is None  # empty passes
    outside = header_exclusion(_header(StudyDescription="KNEE-4471"), rules)
    assert outside == Exclusion(STUDY, "StudyDescription matches no allow pattern")
    request = Dataset()
    request.RequestedProcedureDescription = "NECK BIOPSY 8812"
    ds = _header(StudyDescription="NECK")
    ds.RequestAttributesSequence = Sequence([Dataset(), request])
    denied = header_exclusion(ds, rules)
    assert denied == Exclusion(STUDY, "RequestedProcedureDescription matches a deny pattern")
    assert "8812" not in denied.text and "biopsy" not in denied.text.lower()
    ds.ImageType = ["ORIGINAL", "PRIMARY", "CARDIOLOGY"]
    del ds.RequestAttributesSequence
    assert header_exclusion(ds, rules) == Exclusion(STUDY, "ExamType matches a deny pattern")
    # Without default_deny = false, the site's deny patterns add to the defaults.
    merged = ScopeRules.from_mapping({"deny": {"ExamType": ["^custom$"]}})
    assert merged.deny["ExamType"] == (*DEFAULT_DENY["ExamType"], "^custom$")
    assert merged.deny["StudyDescription"] == DEFAULT_DENY["StudyDescription"]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: ScopeRules(deny={"StudyDescription": ("(unclosed",)}), "StudyDescription"),
        (lambda: ScopeRules(allow={"ExamType": ("[a-",)}), "allow pattern for ExamType"),
        (lambda: ScopeRules(deny={"PatientName": ("x",)}), "unknown attribute 'PatientName'"),
        (lambda: ScopeRules(allow={"ExamType": "cardio"}), "list of strings"),  # type: ignore[dict-item]
        (lambda: ScopeRules(modalities="US"), "one string"),  # type: ignore[arg-type]
        (lambda: ScopeRules.from_mapping({"denny": {}}), "unknown scope settings"),
        (lambda: ScopeRules.from_mapping({"deny": {"ProtocolName": "x"}}), "ProtocolName"),
        (lambda: ScopeRules.from_mapping({"default_deny": "no"}), "true or false"),
    ],
)
def test_invalid_rules_are_a_value_error(make: Callable[[], object], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        make()
