"""The population location risk in the report: SR content items and a picture.

SR: the nodule group's "Pop. location risk" (%) and map region, and one
line per view for the Qualitative Evaluations (:func:`population_caption`).
Picture: one RGB Secondary Capture per view the features stage placed on the map
(:class:`models.risk_map.PopulationLocation`), in the heatmap series after
the heatmaps. The template's LLNM rate map is scaled up to about
:data:`WIDTH` pixels (white 0 to red 1, matplotlib's "Reds" as the paper's Fig. 4c; grey where
too few cases lie), the gland template outlined in black, the nodule's
registered position marked by a black ring and cross; a colour bar on the
right, and below a caption: the clinical-use label and the result, the
population risk, region, side and plane and the case counts, and the template's
orientation.
"""

from __future__ import annotations

import cv2
import highdicom as hd
import numpy as np
from matplotlib import colormaps
from numpy.typing import NDArray

from imaging.png import write_png
from models.risk_map import PopulationLocation
from pipeline.features import MeasuredView
from pipeline.report import codes
from pipeline.report.common import result_caption, save_object
from pipeline.report.heatmap import (
    RGB8,
    caption_band,
    colour_bar_panel,
    font_scale,
    line_height,
    wrap_text,
)
from pipeline.report.inputs import ReportInput, ReportObject, ReportView
from pipeline.report.secondary_capture import derived_sc

WIDTH = 512
_UNDEFINED_RGB = (190, 190, 190)
_INK = (0, 0, 0)


def reds(values: NDArray[np.uint8]) -> RGB8:
    """White (0) to dark red (255): matplotlib's "Reds", as the bundle's map pictures."""
    rgba = colormaps["Reds"](values, bytes=True)
    return np.ascontiguousarray(rgba[..., :3], dtype=np.uint8)


def population_caption(placed: PopulationLocation) -> str:
    """The line saying where the nodule sits and what the map says there."""
    where = f"{placed.side} lobe, {placed.region} part, {placed.plane} template"
    if placed.risk is None:
        return f"Population location risk: too few cases here ({where})"
    return (
        f"Population location risk {placed.risk:.2f} ({where}); "
        f"{placed.coverage:.0f} of {placed.cases} cases' nodules lie here"
    )


def _orientation(placed: PopulationLocation) -> str:
    if placed.plane == "longitudinal":
        return "Template: cranial pole on the left, skin at the top"
    lateral = "right" if placed.side == "left" else "left"
    return f"Template: lateral side on the {lateral}, skin at the top"


def render_population(placed: PopulationLocation, caption: str) -> RGB8:
    """The map with the nodule marked, its colour bar and caption, as uint8 (H, W, 3) RGB."""
    height, width = placed.rate_map.shape
    factor = max(1, WIDTH // width)
    rate = np.nan_to_num(placed.rate_map, nan=0.0)
    levels = np.clip(np.rint(rate * 255), 0, 255).astype(np.uint8)
    picture = reds(levels)
    picture[np.isnan(placed.rate_map)] = _UNDEFINED_RGB
    picture = np.ascontiguousarray(
        cv2.resize(picture, (width * factor, height * factor), interpolation=cv2.INTER_NEAREST)
    )
    outline = cv2.resize(
        placed.template.astype(np.uint8), picture.shape[1::-1], interpolation=cv2.INTER_NEAREST
    )
    contours, _ = cv2.findContours(outline, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(picture, contours, -1, _INK, 2, cv2.LINE_AA)
    x, y = ((c + 0.5) * factor for c in placed.position)
    centre, radius = (round(x), round(y)), max(6, 2 * factor)
    cv2.circle(picture, centre, radius, _INK, 2, cv2.LINE_AA)
    cv2.drawMarker(picture, centre, _INK, cv2.MARKER_CROSS, 2 * radius, 1, cv2.LINE_AA)
    scale = font_scale(picture.shape[1])
    top = np.hstack([picture, colour_bar_panel(picture.shape[0], scale, reds, ("1.0", "0.0"))])
    margin = line_height(scale) // 2
    lines = [
        line
        for text in (caption, population_caption(placed), _orientation(placed))
        for line in wrap_text(text, top.shape[1] - 2 * margin, scale)
    ]
    return np.vstack([top, caption_band(lines, top.shape[1], scale)])


def population_measurements(view: MeasuredView) -> list[hd.sr.Measurement]:
    """The LLNM rate of the population's nodules where this one sits, in percent."""
    placed = view.population
    if not isinstance(placed, PopulationLocation) or placed.risk is None:
        return []
    return [
        hd.sr.Measurement(
            name=codes.POPULATION_RISK, value=round(100 * placed.risk, 2), unit=codes.PERCENT
        )
    ]


def population_line(view: MeasuredView) -> str:
    """One line on the view's place in the population map ("" when it has none)."""
    placed = view.population
    return population_caption(placed) if isinstance(placed, PopulationLocation) else ""


def population_evaluations(view: MeasuredView) -> list[hd.sr.QualitativeEvaluation]:
    """The population map's region holding the nodule."""
    placed = view.population
    if not isinstance(placed, PopulationLocation) or placed.risk is None:
        return []
    region = codes.POPULATION_REGIONS[placed.region]
    return [hd.sr.QualitativeEvaluation(codes.POPULATION_REGION, region)]


def _placed(view: ReportView) -> PopulationLocation | None:
    placed = view.measured.population
    return placed if isinstance(placed, PopulationLocation) else None


def build_population_scs(report: ReportInput) -> tuple[ReportObject, ...]:
    """One population map Secondary Capture per placed view, with its PNG.

    Numbered after the heatmaps: ``out_dir/sc_{n}.dcm`` with n from
    ``len(report.views) + 1``, and ``out_dir/{stem}_population_map.png``.
    """
    caption = result_caption(report.prediction, report.clinical_use_label)
    label = f" {report.clinical_use_label}." if report.clinical_use_label else ""
    objects = []
    number = len(report.views)
    for view in report.views:
        placed = _placed(view)
        if placed is None:
            continue
        number += 1
        pixels = render_population(placed, caption)
        stem = view.measured.segmented.crop.png_path.stem
        write_png(report.out_dir / f"{stem}_population_map.png", pixels)
        derivation = (
            f"Index nodule of this image registered onto the population location risk map "
            f"of {report.prediction.bundle_name} {report.prediction.bundle_version}.{label}"
        )
        sc = derived_sc(
            report, view, number, pixels, "placed this nodule on its population map", derivation
        )
        objects.append(save_object(sc, report.out_dir / f"sc_{number}.dcm", "sc"))
    return tuple(objects)
