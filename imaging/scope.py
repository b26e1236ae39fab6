"""The scope gate's pure rules: which images a grey-scale B-mode thyroid model may assess.

The model was trained on single grey-scale B-mode views of the thyroid. Each rule
returns an :class:`~imaging.scope_reasons.Exclusion` (a coded reason and a short
detail) or None. No detail ever holds a header value or pixel data.

Rules
-----
Modality (:func:`header_exclusion`)
    Modality must be one of :attr:`ScopeRules.modalities` (``US``), else
    ``NOT_ULTRASOUND``; the detail names the modality only when it is a code
    (up to 16 capitals, digits, spaces or underscores).
Study attributes (:func:`header_exclusion`)
    :data:`ATTRIBUTES` are matched with regular expressions (Python ``re``,
    case-insensitive, ``search``). ``ExamType`` is Image Type value 3 (the
    scanner's exam preset: ``SMALL PARTS``, ``CARDIOLOGY``, ...);
    ``RequestedProcedureDescription`` is read at the top level and in every
    Request Attributes Sequence item. ``STUDY_OUT_OF_SCOPE`` when a deny
    pattern of an attribute matches one of its values, or when an attribute
    has allow patterns and one of its present, non-empty values matches none
    (absent or empty values pass: many PACS leave them empty). The detail names
    the attribute and allow or deny, never the value. :data:`DEFAULT_DENY`
    applies :data:`NOT_THYROID` to every attribute: cardiac, obstetric and
    gynaecological, abdominal, urological, cranial and ophthalmic,
    intravascular, breast and chest, carotid and other vascular terms. Words
    start and end at anything but a letter or digit (``CHEST_TO_PELVIS``
    matches "pelvi"). A bare "echo" is not denied (Dutch and German sites call
    any ultrasound "Echo"); "echocardio", TTE and TEE are. There are no
    default allow patterns. Combined studies ("THYROID AND ABDOMEN") are denied
    by the default; sites can replace it.
Ultrasound regions (:func:`region_exclusion`; None without the sequence)
    Tissue regions are 2D tissue regions with a location inside the image.
    Without one: a colour flow or colour bar region is ``COLOUR_DOPPLER``, a
    spectral (PW, CW) or trace region ``SPECTRAL_DOPPLER``, anything else
    ``NO_TISSUE_REGION``. Two tissue regions overlapping by less than
    :data:`SPLIT_OVERLAP` (half) of the smaller are ``SPLIT_SCREEN``: the model
    was trained on single views and which view of a split screen matters
    cannot be told, so none is used. A colour flow region over at least
    :data:`COLOUR_BOX_SHARE` (5 %) of the largest tissue region (a colour box
    on B-mode) is ``COLOUR_DOPPLER``. Spectral, trace and bar regions beside
    one tissue region (duplex layouts, ECG) exclude nothing.
Colour overlay (:func:`pixel_exclusion`, colour frames)
    A pixel is colour when its channels spread (max - min) by more than
    :data:`COLOUR_SPREAD` (40) levels, well above JPEG and YBR chroma noise.
    Connected colour blobs (8-neighbourhood) smaller than
    :data:`COLOUR_MIN_BLOB` (0.1 %) of the image area (calipers, dotted lines,
    text) and thin blobs touching the area's edge (narrower or lower than
    :data:`COLOUR_BAR_SIDE`, a tenth, of the area: colour bars, scale marks)
    do not count. ``COLOUR_OVERLAY`` when the rest covers at least
    :data:`COLOUR_MIN_SHARE` (1.5 %) of the area: a colour Doppler or
    elastography box, not a body marker.
Split screen without regions (:func:`pixel_exclusion`, detected areas)
    In the rows of the area, a column is dark when at least
    :data:`SPLIT_DARK_SHARE` (95 %) of it is no brighter than ``DETECT_DARK``,
    and a view column when it is not dark and at least
    :data:`SPLIT_VIEW_COVER` (30 %) of it lies in the crop detector's image
    blocks (text and bars removed). ``SPLIT_SCREEN`` when two neighbouring
    runs of view columns, each at least :data:`SPLIT_MIN_VIEW` (15 %) of the
    frame's width and the narrower at least :data:`SPLIT_SIMILAR` (half) as
    wide as the wider, are separated by a band holding dark columns, and the
    area lies on or between them: the detector keeps one of the views, or an
    empty area in a narrow gap. Sector images (dark only outside the fan) and
    cysts or shadows that leave a twentieth of the rows bright have no dark
    column between two views. Views that touch, with no dark seam, are one
    wide view.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from itertools import pairwise

import cv2
import numpy as np
from numpy.typing import NDArray
from pydicom import Dataset

from imaging.crop import DETECT_DARK, ImageArea, block_mask, content_mask, region_box
from imaging.decode import Image8, grey
from imaging.errors import StageError
from imaging.scope_reasons import Exclusion, Reason
from imaging.standard.ultrasound_regions import RegionDataType, RegionSpatialFormat

ATTRIBUTES = (
    "BodyPartExamined",
    "StudyDescription",
    "ProtocolName",
    "RequestedProcedureDescription",
    "ExamType",
)
Patterns = Mapping[str, tuple[str, ...]]

_S, _E = r"(?<![a-z0-9])", r"(?![a-z0-9])"  # word start and end (``_`` separates CS words)
# Exam types and descriptions that are clearly not thyroid, by kind.
NOT_THYROID: Mapping[str, str] = {
    "cardiac": rf"{_S}(cardi|echocardio|epicardial|heart{_E}|tee{_E}|tte{_E})"
    r"|trans-?(thoracic|o?esophageal)",
    "obstetric, gynaecological": rf"{_S}(obstet|ob{_E}|fetal|foetal|fetus|gyn|pelvi|uter|ovar"
    r"|nuchal|pregnan|trimester)|(trans|endo)-?vaginal",
    "abdominal": rf"{_S}(abdom|renal{_E}|kidney|liver{_E}|hepat|spleen|splenic|pancrea)"
    r"|retroperiton|bladder",
    "urological": rf"{_S}(urolog|trus{_E}|prostat|scrot|testi)|trans-?rectal",
    "cranial, ophthalmic": rf"{_S}(tcd{_E}|intracranial|cranial|neonatal head|ophthalm|orbit"
    rf"|ocular|eye{_E})|trans-?cranial",
    "intravascular, breast, chest": rf"{_S}(intravascular|ivus{_E}|breast|mamm|chest{_E}"
    rf"|thorax{_E})",
    "vascular": rf"{_S}(carotid|vascular{_E}|venous{_E}|arterial{_E}|dvt{_E})",
}
DEFAULT_DENY: Patterns = dict.fromkeys(ATTRIBUTES, tuple(NOT_THYROID.values()))

# Regions: overlaps below this share of the smaller tissue region make separate views.
SPLIT_OVERLAP = 0.5
# Regions: a colour flow region over at least this share of the tissue region is colour Doppler.
COLOUR_BOX_SHARE = 0.05
# Pixels: colour means channels spread by more than this many levels.
COLOUR_SPREAD = 40
# Pixels: colour blobs count from this share of the area; together they must cover the last.
COLOUR_MIN_BLOB = 0.001
COLOUR_BAR_SIDE = 0.1
COLOUR_MIN_SHARE = 0.015
# Pixels (split screen): shares of a column's rows that make it dark or part of a view.
SPLIT_DARK_SHARE = 0.95
SPLIT_VIEW_COVER = 0.3
# Pixels (split screen): each view this share of the frame width; the narrower this share
# of the wider.
SPLIT_MIN_VIEW = 0.15
SPLIT_SIMILAR = 0.5

_MODALITY_CODE = re.compile(r"[A-Z0-9_ ]{1,16}")
_COLOUR_TYPES = frozenset({RegionDataType.COLOR_FLOW, RegionDataType.COLOR_BAR})
_SPECTRAL_FORMATS = frozenset({RegionSpatialFormat.SPECTRAL, RegionSpatialFormat.WAVE_FORM})
_SPECTRAL_TYPES = frozenset(RegionDataType) - {
    RegionDataType.NONE_OR_NOT_APPLICABLE,
    RegionDataType.TISSUE,
    RegionDataType.GRAY_BAR,
    *_COLOUR_TYPES,
}
Compiled = Mapping[str, tuple[re.Pattern[str], ...]]
Box = tuple[int, int, int, int]


def _compile(patterns: Patterns, kind: str) -> Compiled:
    """Compile ``patterns`` by attribute; ValueError names the attribute at fault."""
    compiled: dict[str, tuple[re.Pattern[str], ...]] = {}
    for attribute, texts in patterns.items():
        if attribute not in ATTRIBUTES:
            raise ValueError(f"{kind} rule for unknown attribute {attribute!r}; use {ATTRIBUTES}")
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise ValueError(f"{kind} patterns of {attribute} must be a list of strings")
        try:
            compiled[attribute] = tuple(re.compile(t, re.IGNORECASE) for t in texts)
        except re.error as exc:
            raise ValueError(f"invalid {kind} pattern for {attribute}: {exc}") from exc
    return compiled


@dataclass(frozen=True)
class ScopeRules:
    """Which instances a site sends to the model (see the module notes).

    Raises
    ------
    ValueError
        For an unknown attribute or an invalid regular expression.
    """

    modalities: tuple[str, ...] = ("US",)
    allow: Patterns = field(default_factory=dict)
    deny: Patterns = field(default_factory=lambda: dict(DEFAULT_DENY))
    _allow: Compiled = field(init=False, repr=False, compare=False)
    _deny: Compiled = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.modalities, str):
            raise ValueError("modalities must be a list of codes, not one string")
        object.__setattr__(self, "modalities", tuple(m.strip().upper() for m in self.modalities))
        object.__setattr__(self, "_allow", _compile(self.allow, "allow"))
        object.__setattr__(self, "_deny", _compile(self.deny, "deny"))

    @classmethod
    def from_mapping(cls, table: Mapping[str, object]) -> ScopeRules:
        """Rules from a settings table: ``modalities``, ``allow``, ``deny``, ``default_deny``.

        ``allow`` and ``deny`` are tables of pattern lists by attribute. ``deny``
        adds to :data:`DEFAULT_DENY` unless ``default_deny`` is false.
        """
        unknown = set(table) - {"modalities", "allow", "deny", "default_deny"}
        if unknown:
            raise ValueError(f"unknown scope settings {sorted(unknown)}")
        modalities = table.get("modalities", ("US",))
        if not isinstance(modalities, list | tuple):
            raise ValueError("modalities must be a list of codes")
        default_deny = table.get("default_deny", True)
        if not isinstance(default_deny, bool):
            raise ValueError("default_deny must be true or false")
        deny = _table(table.get("deny", {}), "deny")
        if default_deny:
            deny = {**deny, **{a: p + deny.get(a, ()) for a, p in DEFAULT_DENY.items()}}
        allow = _table(table.get("allow", {}), "allow")
        return cls(tuple(str(m) for m in modalities), allow, deny)

    def verdict(self, attribute: str, values: list[str]) -> str | None:
        """Why ``values`` of ``attribute`` are out of scope ("deny", "allow"), or None."""
        if any(p.search(v) for p in self._deny.get(attribute, ()) for v in values):
            return "deny"
        allow = self._allow.get(attribute, ())
        if allow and not all(any(p.search(v) for p in allow) for v in values):
            return "allow"
        return None


def _table(value: object, kind: str) -> dict[str, tuple[str, ...]]:
    """A settings table of pattern lists by attribute, as tuples (checked by ``_compile``)."""
    if not isinstance(value, Mapping):
        raise ValueError(f"{kind} must be a table of pattern lists by attribute")
    table: dict[str, tuple[str, ...]] = {}
    for attribute, patterns in value.items():
        if not isinstance(patterns, list | tuple):
            raise ValueError(f"{kind} patterns of {attribute} must be a list of strings")
        table[str(attribute)] = tuple(patterns)
    return table


def _texts(value: object) -> list[str]:
    """The non-empty, stripped strings of a single or multi-valued element value."""
    items = (
        value if isinstance(value, Iterable) and not isinstance(value, str | bytes) else (value,)
    )
    return [text for item in items if (text := str(item or "").strip())]


def attribute_values(ds: Dataset, attribute: str) -> list[str]:
    """The present, non-empty values of one of :data:`ATTRIBUTES` in ``ds``."""
    if attribute == "ExamType":
        image_type = _texts(ds.get("ImageType"))
        return image_type[2:3]
    values = _texts(ds.get(attribute))
    if attribute == "RequestedProcedureDescription":
        for item in ds.get("RequestAttributesSequence") or ():
            values += _texts(item.get(attribute))
    return values


def header_exclusion(ds: Dataset, rules: ScopeRules) -> Exclusion | None:
    """Why the instance is out of scope by its header (modality, study attributes), or None."""
    modality = str(ds.get("Modality", "") or "").strip().upper()
    if modality not in rules.modalities:
        if not modality:
            detail = "no modality"
        elif _MODALITY_CODE.fullmatch(modality):
            detail = f"modality {modality}"
        else:
            detail = "modality not a code"
        return Exclusion(Reason.NOT_ULTRASOUND, detail)
    for attribute in ATTRIBUTES:
        verdict = rules.verdict(attribute, attribute_values(ds, attribute))
        if verdict == "deny":
            return Exclusion(Reason.STUDY_OUT_OF_SCOPE, f"{attribute} matches a deny pattern")
        if verdict == "allow":
            return Exclusion(Reason.STUDY_OUT_OF_SCOPE, f"{attribute} matches no allow pattern")
    return None


def _area(box: Box) -> int:
    return (box[2] - box[0]) * (box[3] - box[1])


def _overlap(a: Box, b: Box) -> int:
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    return max(width, 0) * max(height, 0)


def _box(region: Dataset, rows: int, columns: int) -> Box | None:
    try:
        return region_box(region, rows, columns)
    except StageError:
        return None


def _no_tissue(regions: list[Dataset]) -> Exclusion:
    """The reason for regions of which none is usable 2D tissue."""
    types = {r.get("RegionDataType") for r in regions}
    formats = {r.get("RegionSpatialFormat") for r in regions}
    detail = f"no usable 2D tissue region among {len(regions)} regions"
    if types & _COLOUR_TYPES:
        return Exclusion(Reason.COLOUR_DOPPLER, detail)
    if types & _SPECTRAL_TYPES or formats & _SPECTRAL_FORMATS:
        return Exclusion(Reason.SPECTRAL_DOPPLER, detail)
    return Exclusion(Reason.NO_TISSUE_REGION, detail)


def region_exclusion(ds: Dataset) -> Exclusion | None:
    """Why the Sequence of Ultrasound Regions puts the image out of scope, or None.

    None as well without the sequence: then only the pixels can tell.
    """
    regions = list(ds.get("SequenceOfUltrasoundRegions") or ())
    if not regions:
        return None
    rows, columns = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    tissue = [
        box
        for r in regions
        if r.get("RegionSpatialFormat") == RegionSpatialFormat.TWO_D
        and r.get("RegionDataType") == RegionDataType.TISSUE
        and (box := _box(r, rows, columns)) is not None
    ]
    if not tissue:
        return _no_tissue(regions)
    if any(
        _overlap(a, b) < SPLIT_OVERLAP * min(_area(a), _area(b))
        for i, a in enumerate(tissue)
        for b in tissue[i + 1 :]
    ):
        return Exclusion(Reason.SPLIT_SCREEN, f"{len(tissue)} tissue regions")
    largest = max(tissue, key=_area)  # the first on ties, as the crop takes it
    for region in regions:
        box = _box(region, rows, columns)
        if region.get("RegionDataType") != RegionDataType.COLOR_FLOW or box is None:
            continue
        share = _overlap(box, largest) / _area(largest)
        if share >= COLOUR_BOX_SHARE:
            detail = f"colour flow region over {round(100 * share)} % of the B-mode region"
            return Exclusion(Reason.COLOUR_DOPPLER, detail)
    return None


def colour_share(pixels: Image8, area: ImageArea) -> float:
    """The share of ``area`` covered by colour blobs that count (see the module notes)."""
    size = area.width * area.height
    if pixels.ndim != 3 or size <= 0:
        return 0.0
    window = pixels[area.y0 : area.y1, area.x0 : area.x1]
    spread = window.max(axis=2) - window.min(axis=2)
    mask = (spread > COLOUR_SPREAD).astype(np.uint8)
    _, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    x, y, w, h, n = (stats[1:, i] for i in range(5))
    edge = (x == 0) | (y == 0) | (x + w == area.width) | (y + h == area.height)
    thin = (w < COLOUR_BAR_SIDE * area.width) | (h < COLOUR_BAR_SIDE * area.height)
    counted = (n >= COLOUR_MIN_BLOB * size) & ~(edge & thin)
    return float(n[counted].sum()) / size


def _runs(columns: NDArray[np.bool_]) -> list[tuple[int, int]]:
    """Start and end (exclusive) of every run of True."""
    edges = np.flatnonzero(np.diff(np.concatenate(([0], columns.astype(np.int8), [0]))))
    return [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2], strict=True)]


def split_views(pixels: Image8, area: ImageArea) -> tuple[Box, Box] | None:
    """Two views side by side with a dark gap in the rows of ``area`` (module notes), or None."""
    if area.height <= 0:
        return None
    rows = slice(area.y0, area.y1)
    dark = (grey(pixels)[rows] <= DETECT_DARK).mean(axis=0) >= SPLIT_DARK_SHARE
    cover = block_mask(content_mask(pixels))[rows].mean(axis=0)
    wide = SPLIT_MIN_VIEW * pixels.shape[1]
    views = [(a, b) for a, b in _runs((cover >= SPLIT_VIEW_COVER) & ~dark) if b - a >= wide]
    for (a0, a1), (b0, b1) in pairwise(views):
        similar = min(a1 - a0, b1 - b0) >= SPLIT_SIMILAR * max(a1 - a0, b1 - b0)
        if similar and dark[a1:b0].any() and a0 <= area.x1 and area.x0 <= b1:
            return (a0, area.y0, a1, area.y1), (b0, area.y0, b1, area.y1)
    return None


def pixel_exclusion(pixels: Image8, area: ImageArea) -> Exclusion | None:
    """Why the decoded frame is out of scope (colour overlay, split screen), or None.

    ``pixels`` is the whole 8-bit frame, grey (H, W) or RGB (H, W, 3), and
    ``area`` its image area (:func:`imaging.crop.image_area`).
    """
    share = colour_share(pixels, area)
    if share >= COLOUR_MIN_SHARE:
        detail = f"colour in {round(100 * share)} % of the B-mode area"
        return Exclusion(Reason.COLOUR_OVERLAY, detail)
    views = split_views(pixels, area) if area.source == "detected" else None
    if views is not None:
        gap = views[1][0] - views[0][2]
        return Exclusion(Reason.SPLIT_SCREEN, f"2 views side by side, {gap} px apart")
    return None
