"""Radiology report text in ACR TI-RADS wording, with the noise real reports have.

The report is written from the nodule's features (never from the LLNM label),
so it carries no information the true probability lacks. Realism comes from:
measurements rounded and perturbed by up to 1 mm, centimetres or millimetres,
descriptors left out (margin 25 %, echogenic foci 20 %, capsule relation
40 %), abbreviations, a dropped or doubled letter now and then, and free
template choice. :data:`NO_REPORT_RATE` of cases have no report at all.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from phantoms.nodule import NoduleSpec

NO_REPORT_RATE = 0.12

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


def _size(rng: np.random.Generator, dims_mm: tuple[float, float, float]) -> str:
    noisy = [max(1.0, d + rng.uniform(-1.0, 1.0)) for d in dims_mm]
    if rng.random() < 0.5:
        return " x ".join(f"{d / 10:.1f}" for d in noisy) + " cm"
    return " x ".join(f"{round(d)}" for d in noisy) + " mm"


def write_report(
    rng: np.random.Generator,
    spec: NoduleSpec,
    *,
    dims_mm: tuple[float, float, float],
    capsule_distance_mm: float,
    lobe_dims_mm: tuple[float, float, float],
) -> str | None:
    """A report for the study, or None (no report) for :data:`NO_REPORT_RATE` of cases.

    ``dims_mm`` is the nodule's (transverse, AP, longitudinal) size and
    ``lobe_dims_mm`` the affected lobe's (length, width, AP).
    """
    if rng.random() < NO_REPORT_RATE:
        return None
    side = spec.lobe
    short = rng.random() < 0.3
    echo = {
        "hyperechoic": "hyperechoic",
        "isoechoic": "isoechoic",
        "hypoechoic": "hypoechoic" if not short else "hypoech.",
        "very hypoechoic": "markedly hypoechoic" if rng.random() < 0.5 else "very hypoechoic",
    }[spec.echogenicity]
    pole = {"upper": "upper pole", "middle": "mid portion", "lower": "lower pole"}[spec.region]
    if rng.random() < 0.3:
        pole = {"upper": "upper third", "middle": "middle third", "lower": "lower third"}[
            spec.region
        ]
    sentences = [
        "EXAM: US THYROID." if rng.random() < 0.6 else "Thyroid ultrasound.",
        "Clinical: thyroid nodule, follow-up." if rng.random() < 0.5 else "",
        f"The {side} lobe measures {_size(rng, lobe_dims_mm)}."
        if rng.random() < 0.7
        else f"{side.capitalize()} lobe normal in size.",
        f"In the {pole} of the {side} lobe there is a solid {echo} nodule measuring "
        f"{_size(rng, dims_mm)}.",
    ]
    shape = {
        "round": "It is wider than tall" if rng.random() < 0.6 else "Oval shape",
        "lobulated": "Lobulated contour",
        "irregular": "Irregular margins",
        "taller-than-wide": "Taller-than-wide shape",
    }[spec.shape]
    sentences.append(shape + ".")
    if rng.random() < 0.75:
        sentences.append(
            "Margins are ill-defined." if spec.margin == "ill-defined" else "Margins smooth."
        )
    if rng.random() < 0.8:
        sentences.append(
            {
                "none": "No echogenic foci.",
                "micro": "Punctate echogenic foci (microcalcifications) are present."
                if not short
                else "Microcalc+.",
                "macro": "Coarse calcification with posterior shadowing.",
            }[spec.calcification]
        )
    if rng.random() < 0.6:
        if capsule_distance_mm == 0.0:
            sentences.append("The nodule abuts and bulges the thyroid capsule.")
        elif capsule_distance_mm < 2.5:
            sentences.append(f"It lies {capsule_distance_mm:.1f} mm from the capsule.")
        else:
            sentences.append("Capsule intact.")
    sentences.append("No other focal lesion." if rng.random() < 0.5 else "")
    tirads = TiRads.of(spec, capsule_distance_mm)
    impression = f"IMPRESSION: ACR TI-RADS TR{tirads.level} ({tirads.points} points)."
    if tirads.level >= 4 and rng.random() < 0.7:
        impression += " FNA recommended." if rng.random() < 0.5 else " Suggest FNA."
    sentences.append(impression)
    text = " ".join(s for s in sentences if s)
    if rng.random() < 0.15:
        text = _typo(rng, text)
    return text
