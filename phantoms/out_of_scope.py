"""Shifted and out-of-scope variants of a phantom case, to test a scope gate.

A model trained on grey-scale B-mode thyroid views should decline anything
else, and its inputs should be tested along two axes:

* graded shifts (:func:`shifted_options`) render the same case with more
  gain, coarser speckle or a deeper field of view; patient, nodule, truth
  and label stay as they are. Severity ``s`` in [0, 1] maps linearly onto
  the base options: ``gain_shift_db + 30 s``, ``speckle_scale * (1 + 2 s)``,
  ``depth_scale * (1 + 0.8 s)`` (``s = 1``: +30 dB, speckle x3, depth x1.8);
* out-of-scope variants (:func:`make_variant`) of a case, each kind one
  image per view of the case:

  - ``colour_doppler``: RGB, a colour-flow box (18-33 % of the image area,
    60-80 % of it red or blue flow) and a colour bar in the side panel; the
    regions stay one tissue region, so only the pixels tell;
  - ``colour_doppler_region``: the same pixels, plus a colour-flow region
    (RegionDataType 2) at the box; needs ``options.with_regions``;
  - ``split_screen``: both views side by side at half the width, a dark gap
    between them, one calibrated tissue region each (with regions);
  - ``split_screen_no_regions``: the same pixels without regions;
  - ``no_gland``: a speckled neck of skin, fat, muscle layers and a vessel,
    no thyroid and no nodule;
  - ``extreme_gain``: the case rendered with 50 dB more gain;
  - ``extreme_noise``: the case's image area under strong Gaussian and
    salt-and-pepper noise.

A variant is a new study of the case's patient: its Study, Series and SOP
Instance UIDs come from the case's Study Instance UID (itself from the seed
and options) and the kind, so they never collide with the case's. Its random
draws come from the seed and the kind (the two colour kinds share theirs),
so a variant is deterministic per (seed, kind, options). Images stay
MONOCHROME2 unless ``options.rgb``, except the colour kinds.
"""

from __future__ import annotations

import copy
import zlib
from dataclasses import dataclass, replace
from typing import Literal, get_args

import cv2
import numpy as np
from numpy.typing import NDArray
from pydicom import Dataset
from pydicom.sequence import Sequence

from phantoms.burned_text import Box
from phantoms.case import ImageTruth, PhantomCase, PhantomOptions, make_case
from phantoms.headers import set_pixels, uid
from phantoms.speckle import TissueMaps, render_bmode, smooth_noise

Shift = Literal["gain", "speckle", "depth"]
Variant = Literal[
    "colour_doppler",
    "colour_doppler_region",
    "split_screen",
    "split_screen_no_regions",
    "no_gland",
    "extreme_gain",
    "extreme_noise",
]
VARIANTS: tuple[Variant, ...] = get_args(Variant)

# Severity 1 of each graded shift.
STRONG_GAIN_DB = 30.0
STRONG_SPECKLE_SCALE = 3.0
STRONG_DEPTH_SCALE = 1.8

EXTREME_GAIN_DB = 50.0
SPLIT_GAP_COLUMNS = 8

_DEFAULT = PhantomOptions()

Frame = tuple[NDArray[np.uint8], list[Dataset] | None]  # pixels, regions (None: no sequence)


@dataclass(frozen=True, eq=False)
class VariantCase:
    """An out-of-scope study derived from an in-scope phantom case."""

    kind: Variant
    case: PhantomCase  # the in-scope case it derives from
    datasets: tuple[Dataset, ...]  # one image per view of the case; a new study


def shifted_options(
    shift: Shift, severity: float, base: PhantomOptions = _DEFAULT
) -> PhantomOptions:
    """``base`` shifted by ``severity`` (0 unchanged, 1 strong; see the module docstring).

    Raises
    ------
    ValueError
        If ``severity`` is outside [0, 1].
    """
    if not 0.0 <= severity <= 1.0:
        raise ValueError(f"severity must lie in [0, 1], not {severity}")
    if shift == "gain":
        return replace(base, gain_shift_db=base.gain_shift_db + STRONG_GAIN_DB * severity)
    if shift == "speckle":
        factor = 1.0 + (STRONG_SPECKLE_SCALE - 1.0) * severity
        return replace(base, speckle_scale=base.speckle_scale * factor)
    factor = 1.0 + (STRONG_DEPTH_SCALE - 1.0) * severity
    return replace(base, depth_scale=base.depth_scale * factor)


def make_variant(seed: int, kind: Variant, options: PhantomOptions = _DEFAULT) -> VariantCase:
    """The ``kind`` variant of the case of ``seed`` (see the module docstring).

    Raises
    ------
    ValueError
        If ``kind`` is ``colour_doppler_region`` and ``options`` has no regions.
    """
    if kind == "colour_doppler_region" and not options.with_regions:
        raise ValueError("colour_doppler_region needs options.with_regions")
    case = make_case(seed, options)
    rng = np.random.default_rng([seed, zlib.crc32(kind.removesuffix("_region").encode())])
    frames: list[Frame]
    if kind in ("colour_doppler", "colour_doppler_region"):
        frames = _colour_doppler(case, rng, declared=kind == "colour_doppler_region")
    elif kind in ("split_screen", "split_screen_no_regions"):
        frames = _split_screen(case, with_regions=kind == "split_screen")
    elif kind == "no_gland":
        frames = [
            (_with_area(t.pixels, t.image_area, _no_gland(t, rng, options)), _regions(ds))
            for t, ds in zip(case.images, case.datasets, strict=True)
        ]
    elif kind == "extreme_gain":
        louder = replace(options, gain_shift_db=options.gain_shift_db + EXTREME_GAIN_DB)
        frames = [
            (t.pixels, _regions(ds))
            for t, ds in zip(make_case(seed, louder).images, case.datasets, strict=True)
        ]
    else:
        frames = [
            (_with_area(t.pixels, t.image_area, _noisy(_area(t), rng)), _regions(ds))
            for t, ds in zip(case.images, case.datasets, strict=True)
        ]
    datasets = tuple(
        _derived(case, kind, ds, pixels, regions)
        for ds, (pixels, regions) in zip(case.datasets, frames, strict=True)
    )
    return VariantCase(kind=kind, case=case, datasets=datasets)


def _derived(
    case: PhantomCase,
    kind: Variant,
    source: Dataset,
    pixels: NDArray[np.uint8],
    regions: list[Dataset] | None,
) -> Dataset:
    """``source`` with new pixels and regions, moved into the variant's own study."""
    ds = copy.deepcopy(source)
    origin = case.datasets[0].StudyInstanceUID
    ds.StudyInstanceUID = uid(origin, "variant", kind, "study")
    ds.SeriesInstanceUID = uid(origin, "variant", kind, "series")
    ds.SOPInstanceUID = uid(origin, "variant", kind, "image", ds.InstanceNumber)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    set_pixels(ds, pixels)
    if regions is not None:
        ds.SequenceOfUltrasoundRegions = Sequence(regions)
    elif "SequenceOfUltrasoundRegions" in ds:
        del ds.SequenceOfUltrasoundRegions
    return ds


def _regions(ds: Dataset) -> list[Dataset] | None:
    if "SequenceOfUltrasoundRegions" not in ds:
        return None
    return [copy.deepcopy(region) for region in ds.SequenceOfUltrasoundRegions]


def _area(truth: ImageTruth) -> NDArray[np.uint8]:
    """The image area of the case's frame, grey (the B-mode is grey in RGB frames too)."""
    x0, y0, x1, y1 = truth.image_area
    area = truth.pixels[y0:y1, x0:x1]
    return area[:, :, 0] if area.ndim == 3 else area


def _with_area(pixels: NDArray[np.uint8], box: Box, grey: NDArray[np.uint8]) -> NDArray[np.uint8]:
    """A copy of the frame ``pixels`` whose ``box`` shows the grey image ``grey``."""
    x0, y0, x1, y1 = box
    out = pixels.copy()
    out[y0:y1, x0:x1] = grey[:, :, None] if out.ndim == 3 else grey
    return out


# --- colour Doppler -----------------------------------------------------------------


def _colour_doppler(case: PhantomCase, rng: np.random.Generator, *, declared: bool) -> list[Frame]:
    frames: list[Frame] = []
    for truth, ds in zip(case.images, case.datasets, strict=True):
        frame = (
            truth.pixels.copy()
            if truth.pixels.ndim == 3
            else np.repeat(truth.pixels[:, :, None], 3, axis=2)
        )
        box = _colour_box(truth.image_area, rng)
        _paint_flow(frame, box, rng)
        _paint_colour_bar(frame, truth.image_area)
        regions = _regions(ds)
        if declared and regions is not None:
            regions.append(_colour_region(regions[0], box))
        frames.append((frame, regions))
    return frames


def _colour_box(area: Box, rng: np.random.Generator) -> Box:
    """A box of 18-33 % of ``area``, aspect 0.75-1.33, placed at random inside it."""
    x0, y0, x1, y1 = area
    w, h = x1 - x0, y1 - y0
    size = rng.uniform(0.18, 0.33) * w * h
    bw = min(w, round(np.sqrt(size * rng.uniform(0.75, 1.33))))
    bh = min(h, round(size / bw))
    bx = x0 + int(rng.integers(0, w - bw + 1))
    by = y0 + int(rng.integers(0, h - bh + 1))
    return bx, by, bx + bw, by + bh


def _paint_flow(frame: NDArray[np.uint8], box: Box, rng: np.random.Generator) -> None:
    """Red (towards) and blue (away) flow over 60-80 % of ``box``, brighter where faster."""
    bx0, by0, bx1, by1 = box
    shape = (by1 - by0, bx1 - bx0)
    flow = smooth_noise(rng, shape, (shape[1] / 5.0, shape[0] / 5.0))
    speed = np.abs(flow)
    level = float(np.quantile(speed, 1.0 - rng.uniform(0.6, 0.8)))
    vessel = speed > level
    bright = 150.0 + 105.0 * np.clip((speed - level) / (float(speed.max()) - level), 0.0, 1.0)
    red = np.stack((bright, bright / 6, np.zeros_like(bright)), axis=-1)
    blue = np.stack((np.zeros_like(bright), bright / 4, bright), axis=-1)
    colour = np.where((flow > 0)[:, :, None], red, blue).astype(np.uint8)
    patch = frame[by0:by1, bx0:bx1]
    patch[vessel] = colour[vessel]


def _paint_colour_bar(frame: NDArray[np.uint8], area: Box) -> None:
    """A velocity scale in the side panel below its text: red on top, black, blue below."""
    x0, y0, _, y1 = area
    top, bottom = y0 + round(0.62 * (y1 - y0)), y0 + round(0.92 * (y1 - y0))
    ramp = np.linspace(1.0, -1.0, bottom - top)
    level = (255 * np.abs(ramp)).astype(np.uint8)
    bar = np.zeros((bottom - top, 3), dtype=np.uint8)
    bar[ramp > 0, 0] = level[ramp > 0]
    bar[ramp > 0, 1] = level[ramp > 0] // 6
    bar[ramp < 0, 1] = level[ramp < 0] // 4
    bar[ramp < 0, 2] = level[ramp < 0]
    frame[top:bottom, x0 - 12 : x0 - 4] = bar[:, None, :]


def _colour_region(tissue: Dataset, box: Box) -> Dataset:
    """A colour-flow region at ``box`` in the tissue region's physical coordinates."""
    region = copy.deepcopy(tissue)
    bx0, by0, bx1, by1 = box
    region.RegionDataType = 2  # colour flow
    region.ReferencePixelX0 = tissue.RegionLocationMinX0 + tissue.ReferencePixelX0 - bx0
    region.ReferencePixelY0 = tissue.RegionLocationMinY0 + tissue.ReferencePixelY0 - by0
    region.RegionLocationMinX0, region.RegionLocationMinY0 = bx0, by0
    region.RegionLocationMaxX1, region.RegionLocationMaxY1 = bx1 - 1, by1 - 1
    return region


# --- split screen ---------------------------------------------------------------------


def _split_screen(case: PhantomCase, *, with_regions: bool) -> list[Frame]:
    """Each image: its own view left, the other view right, both resized to half the width."""
    x0, y0, x1, y1 = case.images[0].image_area
    w, h = x1 - x0, y1 - y0
    half = (w - SPLIT_GAP_COLUMNS) // 2
    rows = round(h * half / w)
    small = [cv2.resize(_area(t), (half, rows), interpolation=cv2.INTER_AREA) for t in case.images]
    frames: list[Frame] = []
    for index, (truth, ds) in enumerate(zip(case.images, case.datasets, strict=True)):
        area = np.zeros((h, w), dtype=np.uint8)
        boxes: list[Box] = []
        for slot, view in enumerate((index, 1 - index)):
            left = slot * (half + SPLIT_GAP_COLUMNS)
            area[:rows, left : left + half] = small[view]
            boxes.append((x0 + left, y0, x0 + left + half, y0 + rows))
        regions = _regions(ds) if with_regions else None
        if regions is not None:
            mm = (truth.mm_per_pixel[0] * w / half, truth.mm_per_pixel[1] * h / rows)
            regions = [_half_region(regions[0], box, mm) for box in boxes]
        frames.append((_with_area(truth.pixels, truth.image_area, area), regions))
    return frames


def _half_region(tissue: Dataset, box: Box, mm: tuple[float, float]) -> Dataset:
    """A tissue region at ``box`` with ``mm`` (x, y) per pixel, origin at its top centre."""
    region = copy.deepcopy(tissue)
    bx0, by0, bx1, by1 = box
    region.RegionLocationMinX0, region.RegionLocationMinY0 = bx0, by0
    region.RegionLocationMaxX1, region.RegionLocationMaxY1 = bx1 - 1, by1 - 1
    region.ReferencePixelX0, region.ReferencePixelY0 = (bx1 - bx0) // 2, 0
    region.PhysicalDeltaX, region.PhysicalDeltaY = mm[0] / 10.0, mm[1] / 10.0
    return region


# --- no gland, noise ------------------------------------------------------------------


def _no_gland(
    truth: ImageTruth, rng: np.random.Generator, options: PhantomOptions
) -> NDArray[np.uint8]:
    """B-mode of a neck without thyroid at the case's calibration."""
    x0, y0, x1, y1 = truth.image_area
    spacing = truth.mm_per_pixel[1]
    return render_bmode(
        _soft_tissue((y1 - y0, x1 - x0), spacing, rng),
        spacing_mm=spacing,
        rng=rng,
        dynamic_range_db=float(rng.uniform(50.0, 65.0)),
        gain_db=float(rng.uniform(-10.0, 10.0)) + options.image_gain_shift_db,
        speckle_scale=options.image_speckle_scale,
    )


def _soft_tissue(shape: tuple[int, int], spacing: float, rng: np.random.Generator) -> TissueMaps:
    """Skin, fat, two fascia-bounded muscle layers, connective tissue, a vessel, a bone line."""
    h, w = shape
    x = ((np.arange(w) + 0.5) * spacing)[None, :]
    y = ((np.arange(h) + 0.5) * spacing)[:, None]
    streaks = smooth_noise(rng, shape, (40.0 / spacing, 1.2 / spacing))
    fibres = smooth_noise(rng, shape, (8.0 / spacing, 0.35 / spacing))
    depth = y - 0.8 * np.sin(x / rng.uniform(8.0, 15.0) + rng.uniform(0, 2 * np.pi))
    fat = rng.uniform(2.5, 5.0)
    first = fat + rng.uniform(5.0, 9.0)
    second = first + 1.0 + rng.uniform(8.0, 14.0)
    echo = (0.3 * np.exp(0.35 * streaks)).astype(np.float32)
    att = np.full(shape, 0.012, dtype=np.float32)
    echo[depth < fat + 0.3 * streaks] = 0.22
    muscle = ((depth > fat + 0.3) & (depth < first)) | ((depth > first + 0.8) & (depth < second))
    echo[muscle] = (0.06 * np.exp(0.8 * fibres))[muscle]
    for line in (fat + 0.15, first + 0.4, second + 0.2):
        echo[np.abs(depth - line) < 0.15] = 2.0
    vessel = np.hypot((x - rng.uniform(0.3, 0.7) * w * spacing) / 1.3, y - second - 5.0) < 3.5
    echo[vessel] = 0.002
    att[vessel] = -0.03
    bone = second + rng.uniform(11.0, 15.0)
    echo[np.abs(depth - bone) < 0.3] = 6.0
    att[depth > bone + 0.3] = 0.6
    echo[np.broadcast_to(y < 0.5, shape)] = 3.0
    return TissueMaps(echo=echo, attenuation=att, artefact=np.zeros(shape, dtype=np.float32))


def _noisy(grey: NDArray[np.uint8], rng: np.random.Generator) -> NDArray[np.uint8]:
    """``grey`` under Gaussian noise (sigma 80) and 16 % salt and pepper."""
    noisy = grey.astype(np.float32) + rng.normal(0.0, 80.0, grey.shape).astype(np.float32)
    salt = rng.random(grey.shape)
    noisy[salt < 0.08] = 0.0
    noisy[salt > 0.92] = 255.0
    return np.clip(noisy, 0, 255).astype(np.uint8)
