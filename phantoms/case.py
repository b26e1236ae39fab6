"""One phantom case: a patient, a nodule, two ultrasound images, a report, the truth.

Everything is drawn from ``numpy.random.SeedSequence(seed)``: the same seed
and options give the same pixels, headers and UIDs. Separate child streams
feed the encounter, the nodule, the anatomy, each view's texture and speckle,
the label, the report and the metastatic lateral nodes (the last child, added
after the others), so changing one part's sampling leaves the others as they
were.

The rendering options ``gain_shift_db``, ``speckle_scale`` and
``depth_scale`` shift the images' appearance (see
:func:`phantoms.out_of_scope.shifted_options`) but not the patient, the
nodule, the truth distances or the label. They enter the UIDs only when not
neutral, so a case with neutral shifts is byte-for-byte what it was before
they existed. ``report_language`` (``en`` or ``zh``) writes the same report
in English or Simplified Chinese from the same draws; only Chinese enters
the UIDs, so English cases are as they were.

``site`` (:mod:`phantoms.site_profile`) renders the case as a simulated site
would: its image shift on top of the options' own, its device's Manufacturer
and model, its prevalence shift on the true logit and its label noise on the
recorded label (drawn from a ninth child stream, spawned after the others).
A flipped label keeps the nodes consistent: a recorded negative has none, a
recorded positive gets them from :func:`phantoms.labels.sample_nodes` with
the unshifted logit, so a case positive under both profiles has the same
nodes. Only a site other than :data:`~phantoms.site_profile.DEFAULT_SITE`
enters the UIDs, so default cases are as they were.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import cv2
import numpy as np
from numpy.typing import NDArray
from pydicom import Dataset

from phantoms.anatomy import Neck, Scene, sample_neck, scenes
from phantoms.burned_text import (
    Box,
    Layout,
    draw_annotations,
    draw_scale_marks,
    header_annotations,
)
from phantoms.headers import ImageHeader, StudyIds, text_report, ultrasound_image
from phantoms.labels import (
    Calcification,
    Echogenicity,
    Margin,
    Region,
    RiskFactors,
    Shape,
    llnm_logit,
    llnm_probability,
    nodal_stage,
    sample_nodes,
)
from phantoms.nodule import NoduleSpec, sample_nodule
from phantoms.patient import Encounter, sample_encounter
from phantoms.report import REPORT_LANGUAGES, ReportLanguage, TiRads, write_report
from phantoms.site_profile import DEFAULT_SITE, SiteProfile
from phantoms.speckle import render_bmode

ViewName = Literal["transverse", "longitudinal"]


@dataclass(frozen=True)
class PhantomOptions:
    """How the images are rendered and encoded, and which simulated site they come from.

    Raises
    ------
    ValueError
        If ``speckle_scale`` is not positive or ``depth_scale`` is below 1
        (a shallower field of view could cut the nodule off).
    """

    rgb: bool = False  # RGB (3 samples/pixel) instead of MONOCHROME2
    with_regions: bool = True  # include the Sequence of Ultrasound Regions
    rows: int = 480
    columns: int = 640
    gain_shift_db: float = 0.0  # added to the scanner gain of both views
    speckle_scale: float = 1.0  # multiplies the speckle grain size (point spread function)
    depth_scale: float = 1.0  # multiplies the imaging depth: same anatomy, more mm per pixel
    report_language: ReportLanguage = "en"  # en: English; zh: Simplified Chinese
    site: SiteProfile = DEFAULT_SITE  # simulated site: device, population, label records

    def __post_init__(self) -> None:
        if not self.speckle_scale > 0:
            raise ValueError(f"speckle_scale must be positive, not {self.speckle_scale}")
        if not self.depth_scale >= 1:
            raise ValueError(f"depth_scale must be at least 1, not {self.depth_scale}")
        if self.report_language not in REPORT_LANGUAGES:
            raise ValueError(
                f"report_language must be one of {REPORT_LANGUAGES}, not {self.report_language!r}"
            )

    @property
    def image_gain_shift_db(self) -> float:
        """The gain shift the images get: the options' plus the site's."""
        return self.gain_shift_db + self.site.gain_shift_db

    @property
    def image_speckle_scale(self) -> float:
        """The speckle scale the images get: the options' times the site's."""
        return self.speckle_scale * self.site.speckle_scale

    @property
    def image_depth_scale(self) -> float:
        """The depth scale the images get: the options' times the site's."""
        return self.depth_scale * self.site.depth_scale


# The encodings a PACS sends that the node must assess alike: grey with a Sequence of
# Ultrasound Regions, RGB, and grey without regions (cropped by the detector, uncalibrated).
ENCODINGS = (PhantomOptions(), PhantomOptions(rgb=True), PhantomOptions(with_regions=False))


@dataclass(frozen=True, eq=False)
class ImageTruth:
    """Ground truth of one image (arrays are full frame, ``(rows, columns)``)."""

    view: ViewName
    image_area: tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive); == the US region
    mm_per_pixel: tuple[float, float]  # (x, y)
    nodule_mask: NDArray[np.bool_]
    thyroid_mask: NDArray[np.bool_]  # gland including the nodule; its boundary is the capsule
    text_boxes: tuple[Box, ...]  # burned-in text boxes x0, y0, x1, y1, all outside image_area
    capsule_distance_mm: float  # true minimum nodule-capsule distance in this view
    pixels: NDArray[np.uint8]  # the frame as stored: (rows, columns) or (rows, columns, 3)


@dataclass(frozen=True, eq=False)
class PhantomCase:
    """A phantom study and everything known about it."""

    seed: int
    datasets: tuple[Dataset, Dataset]  # transverse, longitudinal; same study
    images: tuple[ImageTruth, ImageTruth]
    phi: tuple[str, ...]  # every identifying string in headers or pixels
    age_years: int
    sex: Literal["F", "M"]
    report_text: str | None
    llnm_probability: float  # the true probability under the label model
    llnm_label: bool  # drawn from it
    risk_stage: int  # nodal stage 1-3 from the metastatic nodes (phantoms.labels.nodal_stage)
    node_sizes_cm: tuple[float, ...]  # metastatic lateral nodes, largest dimension; () if negative
    capsule_distance_mm: float  # minimum over both views
    case_id: str
    report_dataset: Dataset | None  # Basic Text SR with report_text, same study
    lobe: Literal["right", "left"]
    region: Region  # third of the lobe holding the nodule centre
    size_mm: float  # largest nodule dimension
    dimensions_mm: tuple[float, float, float]  # transverse, anterior-posterior, longitudinal
    shape: Shape
    echogenicity: Echogenicity
    margin: Margin
    calcification: Calcification
    tirads: TiRads
    risk_factors: RiskFactors


def _key(seed: int, options: PhantomOptions) -> str:
    key = f"{seed}:{int(options.rgb)}:{int(options.with_regions)}:{options.rows}x{options.columns}"
    shifts = (
        ("gain", options.gain_shift_db, 0.0),
        ("speckle", options.speckle_scale, 1.0),
        ("depth", options.depth_scale, 1.0),
    )
    language = "" if options.report_language == "en" else f":report={options.report_language}"
    site = "" if options.site == DEFAULT_SITE else f":site={options.site!r}"
    return (
        key
        + "".join(f":{name}={value!r}" for name, value, neutral in shifts if value != neutral)
        + language
        + site
    )


def _deepened(neck: Neck, scale: float) -> Neck:
    """The neck seen with ``scale`` times the depth and width, the anatomy centred as before."""
    width = neck.width_mm * scale
    dx = (width - neck.width_mm) / 2
    return replace(
        neck,
        lobe_x=neck.lobe_x + dx,
        lobe_z_x=neck.lobe_z_x + dx,
        width_mm=width,
        depth_mm=neck.depth_mm * scale,
    )


def _extent(scene: Scene) -> tuple[float, float]:
    x0, y0, x1, y1 = scene.outline.bounds()
    return x1 - x0, y1 - y0


def _frame(
    scene: Scene,
    layout: Layout,
    spacing: float,
    rng: np.random.Generator,
    enc: Encounter,
    settings: tuple[int, int, int],
    options: PhantomOptions,
) -> tuple[NDArray[np.uint8], NDArray[np.bool_], NDArray[np.bool_], tuple[Box, ...]]:
    """Render one view into an RGB frame; returns frame, masks and text boxes."""
    gain, dynamic_range, frequency = settings
    maps, nodule, thyroid = scene.tissue(layout.area_shape, spacing, rng)
    bmode = render_bmode(
        maps,
        spacing_mm=spacing,
        rng=rng,
        dynamic_range_db=dynamic_range,
        gain_db=gain + options.image_gain_shift_db - 55,
        speckle_scale=options.image_speckle_scale,
    )
    x0, y0, x1, y1 = layout.image_area
    frame = np.zeros((layout.rows, layout.columns, 3), dtype=np.uint8)
    frame[y0:y1, x0:x1] = bmode[:, :, None]
    draw_scale_marks(frame, layout, spacing)
    when = enc.study_datetime
    annotations = header_annotations(
        layout,
        left=(
            f"{enc.patient.burned}   ID: {enc.patient_id}",
            f"DOB: {enc.birth_date.isoformat()}  {enc.sex}  {enc.age_years}Y",
        ),
        right=(enc.institution.upper(), f"{when:%Y-%m-%d}  {when:%H:%M:%S}"),
        panel=(
            "TRANS" if scene.view == "transverse" else "LONG",
            f"{'RT' if scene.neck.side == 'right' else 'LT'} LOBE",
            enc.transducer,
            f"{frequency / 1000:.0f}MHz",
            f"Gn {round(gain + options.image_gain_shift_db)}",
            f"DR {dynamic_range}",
            f"D {scene.neck.depth_mm / 10:.1f}cm",
        ),
    )
    boxes = draw_annotations(frame, layout, annotations)
    full_nodule = np.zeros((layout.rows, layout.columns), dtype=bool)
    full_thyroid = np.zeros_like(full_nodule)
    full_nodule[y0:y1, x0:x1] = nodule
    full_thyroid[y0:y1, x0:x1] = thyroid
    return frame, full_nodule, full_thyroid, boxes


def make_case(
    seed: int, options: PhantomOptions = PhantomOptions(), *, region: Region | None = None
) -> PhantomCase:
    """Generate the phantom case of ``seed``.

    ``region`` moves the nodule into that third of the lobe, everything else
    drawn as for ``seed`` (the UIDs then differ from the unmoved case's).

    Raises
    ------
    ValueError
        If the frame size in ``options`` is too small (see ``Layout.for_frame``).
    """
    layout = Layout.for_frame(options.rows, options.columns)
    streams = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(9)]
    enc_rng, nodule_rng, neck_rng, label_rng, report_rng, *view_rngs, node_rng, flip_rng = streams
    site = options.site
    enc = sample_encounter(enc_rng)
    enc = replace(
        enc,
        manufacturer=site.manufacturer or enc.manufacturer,
        model=site.model_name or enc.model,
    )
    spec: NoduleSpec = sample_nodule(nodule_rng)
    if region is not None:
        spec = replace(spec, region=region)
    area_h, area_w = layout.area_shape
    depth_mm = neck_rng.uniform(36.0, 46.0) * max(1.0, (spec.depth_mm + 4) / 14.0)
    spacing = depth_mm / area_h
    neck = sample_neck(neck_rng, spec, width_mm=area_w * spacing, depth_mm=depth_mm)
    settings = (
        int(neck_rng.integers(45, 66)),
        int(neck_rng.integers(50, 66)),
        int(neck_rng.choice([10000, 12000, 14000])),
    )
    key = _key(seed, options) + ("" if region is None else f":region={region}")
    ids = StudyIds.derive(key)
    views = scenes(neck, spec)  # the truth's geometry
    shown = scenes(_deepened(neck, options.image_depth_scale), spec)  # what the images show
    spacing *= options.image_depth_scale
    truths: list[ImageTruth] = []
    datasets: list[Dataset] = []
    phi = list(enc.phi)
    for number, (view, scene, rng) in enumerate(zip(views, shown, view_rngs, strict=True), 1):
        frame, nodule, thyroid, boxes = _frame(scene, layout, spacing, rng, enc, settings, options)
        pixels = (
            frame
            if options.rgb
            else np.asarray(cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY), dtype=np.uint8)
        )
        header = ImageHeader(
            view=scene.view,
            lobe=neck.side,
            instance_number=number,
            image_area=layout.image_area,
            spacing_mm=spacing,
            frequency_khz=settings[2],
            with_regions=options.with_regions,
        )
        ds, private = ultrasound_image(enc, ids, key, header, pixels)
        phi += private
        datasets.append(ds)
        truths.append(
            ImageTruth(
                view=scene.view,
                image_area=layout.image_area,
                mm_per_pixel=(spacing, spacing),
                nodule_mask=nodule,
                thyroid_mask=thyroid,
                text_boxes=boxes,
                capsule_distance_mm=view.capsule_distance_mm(),
                pixels=pixels,
            )
        )
    transverse, longitudinal = views
    width, depth = _extent(transverse)
    length, depth_long = _extent(longitudinal)
    dims = (width, max(depth, depth_long), length)
    capsule = min(t.capsule_distance_mm for t in truths)
    factors = RiskFactors(
        capsule_distance_mm=capsule,
        region=spec.region,
        size_mm=max(dims),
        shape=spec.shape,
        margin=spec.margin,
        calcification=spec.calcification,
        echogenicity=spec.echogenicity,
        sex=enc.sex,
        age_years=enc.age_years,
    )
    probability = llnm_probability(factors, site.prevalence_logit_shift)
    label = bool(label_rng.random() < probability)
    if flip_rng.random() < site.label_noise:
        label = not label  # a pathology or record error: the recorded label
    nodes = sample_nodes(llnm_logit(factors), label, node_rng)
    report = write_report(
        report_rng,
        spec,
        dims_mm=dims,
        capsule_distance_mm=capsule,
        lobe_dims_mm=(
            neck.lobe.length,
            neck.lobe.a_lateral + neck.lobe.a_medial,
            neck.lobe.b_anterior + neck.lobe.b_posterior,
        ),
        language=options.report_language,
    )
    sr = text_report(enc, ids, key, report, tuple(datasets)) if report is not None else None
    return PhantomCase(
        seed=seed,
        datasets=(datasets[0], datasets[1]),
        images=(truths[0], truths[1]),
        phi=tuple(dict.fromkeys(phi)),
        age_years=enc.age_years,
        sex=enc.sex,
        report_text=report,
        llnm_probability=probability,
        llnm_label=label,
        risk_stage=nodal_stage(nodes),
        node_sizes_cm=nodes,
        capsule_distance_mm=capsule,
        case_id=f"phantom-{seed}",
        report_dataset=sr,
        lobe=neck.side,
        region=spec.region,
        size_mm=max(dims),
        dimensions_mm=dims,
        shape=spec.shape,
        echogenicity=spec.echogenicity,
        margin=spec.margin,
        calcification=spec.calcification,
        tirads=TiRads.of(spec, capsule),
        risk_factors=factors,
    )
