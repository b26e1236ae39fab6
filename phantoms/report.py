"""Radiology report text in ACR TI-RADS wording, with the noise real reports have.

The report is written from the nodule's features (never from the LLNM label),
so it carries no information the true probability lacks. Realism comes from:
measurements rounded and perturbed by up to 1 mm, centimetres or millimetres,
descriptors left out (margin 25 %, echogenic foci 20 %, capsule relation
40 %), abbreviations, a dropped or doubled letter now and then, and free
template choice. :data:`NO_REPORT_RATE` of cases have no report at all.

Every random choice is drawn first (:class:`_Draft`, in one fixed order), then
written out in English or in Simplified Chinese (``language``): both languages
of a case say the same things, and an English report is what it was before
Chinese existed.
"""

# Chinese reports write full-width punctuation and the multiplication sign on purpose.
# ruff: noqa: RUF001

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from phantoms.nodule import NoduleSpec

NO_REPORT_RATE = 0.12
NEAR_CAPSULE_MM = 2.5  # closer: the report gives the distance; farther: "capsule intact"
ReportLanguage = Literal["en", "zh"]
REPORT_LANGUAGES: tuple[ReportLanguage, ...] = ("en", "zh")

_POINTS_ECHO = {"hyperechoic": 1, "isoechoic": 1, "hypoechoic": 2, "very hypoechoic": 3}
_POINTS_SHAPE = {"round": 0, "lobulated": 0, "irregular": 0, "taller-than-wide": 3}
_POINTS_MARGIN = {"round": 0, "lobulated": 2, "irregular": 2, "taller-than-wide": 0}
_POINTS_FOCI = {"none": 0, "macro": 1, "micro": 3}


@dataclass(frozen=True)
class TiRads:
    """ACR TI-RADS points and level of a solid nodule."""

    points: int
    level: int  # TR1-TR5

    @classmethod
    def of(cls, spec: NoduleSpec, capsule_distance_mm: float) -> TiRads:
        """Score a nodule (all phantom nodules are solid: composition 2 points)."""
        margin = _POINTS_MARGIN[spec.shape] + (3 if capsule_distance_mm == 0.0 else 0)
        points = (
            2
            + _POINTS_ECHO[spec.echogenicity]
            + _POINTS_SHAPE[spec.shape]
            + margin
            + _POINTS_FOCI[spec.calcification]
        )
        level = 1 if points == 0 else 2 if points <= 2 else 3 if points == 3 else 4
        return cls(points=points, level=5 if points >= 7 else level)


def _typo(rng: np.random.Generator, text: str) -> str:
    words = text.split(" ")
    i = int(rng.integers(len(words)))
    word = words[i]
    if len(word) > 4:
        j = int(rng.integers(1, len(word) - 1))
        word = word[:j] + word[j + 1 :] if rng.random() < 0.5 else word[:j] + word[j] + word[j:]
        words[i] = word
    return " ".join(words)


def _typo_zh(rng: np.random.Generator, text: str) -> str:
    """A dropped or doubled Chinese character (Chinese text has no words to split)."""
    places = [i for i, c in enumerate(text) if "\u4e00" <= c <= "\u9fff"]
    i = places[int(rng.integers(len(places)))]
    return text[:i] + text[i + 1 :] if rng.random() < 0.5 else text[:i] + text[i] + text[i:]


@dataclass(frozen=True)
class _Size:
    """A perturbed measurement (mm) and whether it is written in centimetres."""

    noisy_mm: tuple[float, ...]
    centimetres: bool


def _size(rng: np.random.Generator, dims_mm: tuple[float, float, float]) -> _Size:
    noisy = tuple(max(1.0, d + rng.uniform(-1.0, 1.0)) for d in dims_mm)
    return _Size(noisy, bool(rng.random() < 0.5))


def _size_text(size: _Size, sep: str = " x ", unit_sep: str = " ") -> str:
    if size.centimetres:
        return sep.join(f"{d / 10:.1f}" for d in size.noisy_mm) + unit_sep + "cm"
    return sep.join(f"{round(d)}" for d in size.noisy_mm) + unit_sep + "mm"


@dataclass(frozen=True)
class _Draft:
    """Every random choice of one report, drawn before it is written in a language."""

    spec: NoduleSpec
    capsule_distance_mm: float
    short: bool  # abbreviations
    markedly: bool  # "markedly" rather than "very" hypoechoic
    thirds: bool  # "upper third" rather than "upper pole"
    exam_title: bool
    clinical: bool
    lobe_size: _Size | None  # None: "normal in size"
    nodule_size: _Size
    oval: bool  # a round nodule described as wider than tall (False) or oval (True)
    margin: bool  # the margin sentence is written
    foci: bool
    capsule: bool
    no_other: bool
    fna: bool | None  # None: no FNA advice; else True for the first wording
    typo: bool

    def capsule_text(self, abuts: str, near: str, intact: str) -> str | None:
        """The capsule relation in the wording given (``near`` formats ``{mm}``); None: unsaid."""
        if not self.capsule:
            return None
        if self.capsule_distance_mm == 0.0:
            return abuts
        if self.capsule_distance_mm < NEAR_CAPSULE_MM:
            return near.format(mm=f"{self.capsule_distance_mm:.1f}")
        return intact

    @classmethod
    def draw(
        cls,
        rng: np.random.Generator,
        spec: NoduleSpec,
        dims_mm: tuple[float, float, float],
        capsule_distance_mm: float,
        lobe_dims_mm: tuple[float, float, float],
    ) -> _Draft:
        """Draw in the order the English templates always did (same seed, same report)."""
        short = bool(rng.random() < 0.3)
        markedly = bool(rng.random() < 0.5)
        thirds = bool(rng.random() < 0.3)
        exam_title = bool(rng.random() < 0.6)
        clinical = bool(rng.random() < 0.5)
        lobe_size = _size(rng, lobe_dims_mm) if rng.random() < 0.7 else None
        nodule_size = _size(rng, dims_mm)
        oval = not rng.random() < 0.6
        margin = bool(rng.random() < 0.75)
        foci = bool(rng.random() < 0.8)
        capsule = bool(rng.random() < 0.6)
        no_other = bool(rng.random() < 0.5)
        level = TiRads.of(spec, capsule_distance_mm).level
        fna = bool(rng.random() < 0.5) if level >= 4 and rng.random() < 0.7 else None
        return cls(spec, capsule_distance_mm, short, markedly, thirds, exam_title, clinical,
                   lobe_size, nodule_size, oval, margin, foci, capsule, no_other, fna,
                   typo=bool(rng.random() < 0.15))  # fmt: skip


def _english(d: _Draft) -> str:
    spec, side = d.spec, d.spec.lobe
    echo = {
        "hyperechoic": "hyperechoic",
        "isoechoic": "isoechoic",
        "hypoechoic": "hypoechoic" if not d.short else "hypoech.",
        "very hypoechoic": "markedly hypoechoic" if d.markedly else "very hypoechoic",
    }[spec.echogenicity]
    poles = ("upper third", "middle third", "lower third") if d.thirds else (
        "upper pole", "mid portion", "lower pole")  # fmt: skip
    pole = dict(zip(("upper", "middle", "lower"), poles, strict=True))[spec.region]
    sentences = [
        "EXAM: US THYROID." if d.exam_title else "Thyroid ultrasound.",
        "Clinical: thyroid nodule, follow-up." if d.clinical else "",
        f"The {side} lobe measures {_size_text(d.lobe_size)}."
        if d.lobe_size is not None
        else f"{side.capitalize()} lobe normal in size.",
        f"In the {pole} of the {side} lobe there is a solid {echo} nodule measuring "
        f"{_size_text(d.nodule_size)}.",
    ]
    shape = {
        "round": "Oval shape" if d.oval else "It is wider than tall",
        "lobulated": "Lobulated contour",
        "irregular": "Irregular margins",
        "taller-than-wide": "Taller-than-wide shape",
    }[spec.shape]
    sentences.append(shape + ".")
    if d.margin:
        sentences.append(
            "Margins are ill-defined." if spec.margin == "ill-defined" else "Margins smooth."
        )
    if d.foci:
        sentences.append(
            {
                "none": "No echogenic foci.",
                "micro": "Punctate echogenic foci (microcalcifications) are present."
                if not d.short
                else "Microcalc+.",
                "macro": "Coarse calcification with posterior shadowing.",
            }[spec.calcification]
        )
    capsule = d.capsule_text(
        "The nodule abuts and bulges the thyroid capsule.",
        "It lies {mm} mm from the capsule.",
        "Capsule intact.",
    )
    if capsule is not None:
        sentences.append(capsule)
    sentences.append("No other focal lesion." if d.no_other else "")
    tirads = TiRads.of(spec, d.capsule_distance_mm)
    impression = f"IMPRESSION: ACR TI-RADS TR{tirads.level} ({tirads.points} points)."
    if d.fna is not None:
        impression += " FNA recommended." if d.fna else " Suggest FNA."
    sentences.append(impression)
    return " ".join(s for s in sentences if s)


def _chinese(d: _Draft) -> str:
    """The same report as a Chinese (Simplified) hospital writes it."""
    spec = d.spec
    side = "右叶" if spec.lobe == "right" else "左叶"
    echo = {
        "hyperechoic": "高回声",
        "isoechoic": "等回声",
        "hypoechoic": "低回声",
        "very hypoechoic": "极低回声" if d.markedly else "明显低回声",
    }[spec.echogenicity]
    poles = ("上1/3处", "中1/3处", "下1/3处") if d.thirds else ("上极", "中部", "下极")
    pole = dict(zip(("upper", "middle", "lower"), poles, strict=True))[spec.region]
    parts = [
        "检查项目：甲状腺超声。" if d.exam_title else "甲状腺彩超：",
        "临床诊断：甲状腺结节复查。" if d.clinical else "",
        f"{side}大小约{_size_text(d.lobe_size, '×', '')}。"
        if d.lobe_size is not None
        else f"甲状腺{side}大小正常。",
    ]
    nodule = [f"{side}{pole}见一实性{echo}结节", f"大小约{_size_text(d.nodule_size, '×', '')}"]
    nodule.append(
        {
            "round": "呈椭圆形" if d.oval else "纵横比<1",
            "lobulated": "形态呈分叶状",
            "irregular": "形态不规则",
            "taller-than-wide": "纵横比>1",
        }[spec.shape]
    )
    if d.margin:
        nodule.append("边界不清" if spec.margin == "ill-defined" else "边界清")
    if d.foci:
        nodule.append(
            {
                "none": "内未见明显强回声",
                "micro": "内见点状强回声（微钙化）" if not d.short else "内见微钙化",
                "macro": "内见粗大钙化，后方伴声影",
            }[spec.calcification]
        )
    capsule = d.capsule_text("紧贴被膜，被膜局部膨隆", "距被膜约{mm}mm", "被膜完整")
    if capsule is not None:
        nodule.append(capsule)
    parts.append("，".join(nodule) + "。")
    parts.append("余腺体内未见明显占位。" if d.no_other else "")
    tirads = TiRads.of(spec, d.capsule_distance_mm)
    impression = f"超声提示：{side}实性结节，ACR TI-RADS {tirads.level}类（{tirads.points}分）"
    if d.fna is not None:
        impression += "，建议细针穿刺" if d.fna else "，建议行FNA"
    parts.append(impression + "。")
    return "".join(parts)


def write_report(
    rng: np.random.Generator,
    spec: NoduleSpec,
    *,
    dims_mm: tuple[float, float, float],
    capsule_distance_mm: float,
    lobe_dims_mm: tuple[float, float, float],
    language: ReportLanguage = "en",
) -> str | None:
    """A report for the study, or None (no report) for :data:`NO_REPORT_RATE` of cases.

    ``dims_mm`` is the nodule's (transverse, AP, longitudinal) size and
    ``lobe_dims_mm`` the affected lobe's (length, width, AP). ``language`` is
    ``en`` (English) or ``zh`` (Simplified Chinese); both use the same draws.
    """
    if rng.random() < NO_REPORT_RATE:
        return None
    draft = _Draft.draw(rng, spec, dims_mm, capsule_distance_mm, lobe_dims_mm)
    if language == "zh":
        text = _chinese(draft)
        return _typo_zh(rng, text) if draft.typo else text
    text = _english(draft)
    return _typo(rng, text) if draft.typo else text
