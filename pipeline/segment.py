"""Segment stage: the nodule and thyroid masks of every crop (queue ``gpu``).

Rules
-----
Segmenters
    A model bundle (:mod:`models.bundle`) holds ``nodule/`` (YOLOv8-seg) and
    ``thyroid/`` (UNet++) segmenter folders. On first use, once per process,
    the bundle's checksums are verified and both are loaded and kept
    (:class:`SegmenterLoader`).
    The crops of a study are segmented in one batch per segmenter, on CUDA
    when the worker has it; when several jobs segment at once (a worker with
    ``--concurrency`` above 1), their crops share forward passes
    (:class:`pipeline.batching.MicroBatcher`).
Masks
    Both masks come back at the crop's resolution and are written next to the
    crops as ``work_dir/segment/NNN_nodule.png`` and ``NNN_thyroid.png`` (0 or
    255; NNN as the crop's), for the report and heatmap stages.
Next
    :mod:`pipeline.features` reads the crops and masks and measures the
    nodules; a study with no nodule ends there with its own job result.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from numpy.typing import NDArray

from imaging.errors import StageError
from imaging.png import read_png, write_mask
from models.bundle import BundleLoader, Manifest
from models.segmentation import Segmenter, load_segmenter, segment
from pipeline.batching import MicroBatcher
from pipeline.contracts import JobContext, Skipped
from pipeline.crop import CroppedStudy, CroppedView
from pipeline.stage import Stage

NODULE_DIR = "nodule"
THYROID_DIR = "thyroid"


# Views per forward pass at most when jobs' calls are batched together.
MAX_BATCH_VIEWS = 32

Crop = NDArray[np.uint8]
Mask = NDArray[np.bool_]


@dataclass(frozen=True)
class Segmenters:
    """The two segmenters of a model bundle, its manifest, and their batched mask makers.

    ``nodule_masks``/``thyroid_masks`` map crops to masks at the crops' sizes and
    batch concurrent calls (several jobs at once) into one forward pass.
    """

    nodule: Segmenter
    thyroid: Segmenter
    manifest: Manifest
    nodule_masks: MicroBatcher[Crop, Mask]
    thyroid_masks: MicroBatcher[Crop, Mask]

    @classmethod
    def of(cls, nodule: Segmenter, thyroid: Segmenter, manifest: Manifest) -> Segmenters:
        """The segmenters with their batchers."""
        return cls(
            nodule=nodule,
            thyroid=thyroid,
            manifest=manifest,
            nodule_masks=MicroBatcher(
                functools.partial(segment, nodule, target="nodule"),
                max_items=MAX_BATCH_VIEWS,
                name="nodule",
            ),
            thyroid_masks=MicroBatcher(
                functools.partial(segment, thyroid, target="thyroid"),
                max_items=MAX_BATCH_VIEWS,
                name="thyroid",
            ),
        )


def load_segmenters(
    bundle_dir: Path, manifest: Manifest, device: torch.device | None = None
) -> Segmenters:
    """The bundle's two segmenters on ``device`` (default: CUDA when present).

    Raises
    ------
    FileNotFoundError
        If the bundle lacks a segmenter's weights or config.
    ValueError
        If a segmenter finds something other than its folder says.
    """
    nodule = load_segmenter(bundle_dir / NODULE_DIR, device)
    thyroid = load_segmenter(bundle_dir / THYROID_DIR, device)
    for name, segmenter in ((NODULE_DIR, nodule), (THYROID_DIR, thyroid)):
        if segmenter.config.target != name:
            raise ValueError(f"{bundle_dir / name} finds {segmenter.config.target!r}")
    return Segmenters.of(nodule, thyroid, manifest)


class SegmenterLoader(BundleLoader[Segmenters]):
    """The segmenters of the bundle in ``bundle_dir``, loaded once (:func:`load_segmenters`)."""

    def __init__(self, bundle_dir: Path, device: torch.device | None = None) -> None:
        super().__init__(bundle_dir, functools.partial(load_segmenters, device=device))


@dataclass(frozen=True)
class SegmentedView:
    """One crop with its masks, written as PNG (0 or 255) at the crop's resolution."""

    crop: CroppedView
    nodule_mask: Path
    thyroid_mask: Path
    nodule_pixels: int
    thyroid_pixels: int


@dataclass(frozen=True)
class SegmentedStudy:
    """The segment stage's output: every crop with its two masks."""

    SCHEMA_VERSION: ClassVar[int] = 1  # of the stage output file (pipeline.stage_outputs)

    job: JobContext
    views: tuple[SegmentedView, ...]
    skipped: tuple[Skipped, ...]


def segment_study(study: CroppedStudy, segmenters: Segmenters) -> SegmentedStudy:
    """Segment every crop of ``study`` and write the masks next to the crops.

    Raises
    ------
    StageError
        If the study has no crops or a crop cannot be read.
    """
    if not study.images:
        raise StageError("the study has no cropped images to segment")
    out_dir = study.job.folder("segment")
    crops = [read_png(view.png_path) for view in study.images]
    nodules = segmenters.nodule_masks(crops)
    thyroids = segmenters.thyroid_masks(crops)
    views = []
    for view, nodule, thyroid in zip(study.images, nodules, thyroids, strict=True):
        stem = view.png_path.stem
        views.append(
            SegmentedView(
                crop=view,
                nodule_mask=write_mask(out_dir / f"{stem}_nodule.png", nodule),
                thyroid_mask=write_mask(out_dir / f"{stem}_thyroid.png", thyroid),
                nodule_pixels=int(np.count_nonzero(nodule)),
                thyroid_pixels=int(np.count_nonzero(thyroid)),
            )
        )
    return SegmentedStudy(job=study.job, views=tuple(views), skipped=study.skipped)


def summarize_segmentation(study: SegmentedStudy) -> dict[str, Any]:
    """Mask sizes per view for the audit trail."""
    return {
        "views": [
            {
                "sop_instance_uid": v.crop.sop_instance_uid,
                "nodule_pixels": v.nodule_pixels,
                "thyroid_pixels": v.thyroid_pixels,
            }
            for v in study.views
        ],
    }


def segment_stage(loader: SegmenterLoader) -> Stage[CroppedStudy, SegmentedStudy]:
    """The segment stage, using the segmenters ``loader`` provides."""
    return Stage(
        name="segment",
        run=lambda study: segment_study(study, loader()),
        summarize=summarize_segmentation,
        queue="gpu",
        output_type=SegmentedStudy,
    )
