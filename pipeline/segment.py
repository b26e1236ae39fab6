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
    255; NNN as the crop's), for the report and heatmap stages, with the
    nodule detections' confidence map ``NNN_nodule_confidence.png`` (0-255
    for 0-1) that the features stage reads the index nodule's confidence from.
Scope gate
    A view is used only when the thyroid is there as in training: a non-empty
    mask and, when the bundle has scope statistics (:mod:`models.scope`), the
    mask's share of the crop and its mean probability within the ranges seen
    in training (else ``no_thyroid``); and when the crop's image embedding
    (:func:`image_embedding`: the thyroid segmenter's encoder stages and the
    crop's texture statistics) lies within its training distribution in every
    part (else ``out_of_distribution``, "image score 41.2 > 18.0 (texture)").
    A study left with no view is not assessed (:mod:`pipeline.scope`).
Next
    :mod:`pipeline.features` reads the crops and masks and measures the
    nodules; a study with no nodule ends there with its own job result.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from numpy.typing import NDArray

from imaging.errors import StageError
from imaging.png import read_png, write_mask, write_png
from imaging.scope_reasons import Exclusion, Reason
from imaging.texture import TEXTURE_WIDTH, texture_statistics
from models.bundle import BundleError, BundleLoader, Manifest
from models.scope import PartScore, ScopeStatistics, ViewLimits, load_scope
from models.segmentation import Segmenter, load_segmenter
from models.segmentation.nodule import yolo_outputs
from models.segmentation.thyroid import encoder_parts, unet_outputs
from pipeline.batching import MicroBatcher
from pipeline.contracts import ExcludedImage, JobContext, Skipped
from pipeline.crop import CroppedStudy, CroppedView
from pipeline.scope import (
    NotAssessed,
    describe_excluded,
    gated,
    gated_summary,
    not_assessed,
    partition,
)
from pipeline.stage import Stage

NODULE_DIR = "nodule"
THYROID_DIR = "thyroid"
TEXTURE_PART = "texture"


# Views per forward pass at most when jobs' calls are batched together.
MAX_BATCH_VIEWS = 32

Crop = NDArray[np.uint8]
Probability = NDArray[np.float32]
NoduleMaps = tuple[Probability, Probability]  # mask probability, detection confidence
ThyroidMaps = tuple[Probability, NDArray[np.float32]]  # mask probability, encoder embedding


@dataclass(frozen=True)
class Segmenters:
    """The two segmenters of a model bundle, its manifest, and their batched mask makers.

    ``nodule_masks``/``thyroid_masks`` map crops to probability maps at the crops'
    sizes (the nodule's with its confidence map) and batch concurrent calls
    (several jobs at once) into one forward pass. ``scope`` is the bundle's
    scope statistics, None for a bundle without them.
    """

    nodule: Segmenter
    thyroid: Segmenter
    manifest: Manifest
    scope: ScopeStatistics | None
    nodule_masks: MicroBatcher[Crop, NoduleMaps]
    thyroid_masks: MicroBatcher[Crop, ThyroidMaps]

    @classmethod
    def of(
        cls,
        nodule: Segmenter,
        thyroid: Segmenter,
        manifest: Manifest,
        scope: ScopeStatistics | None = None,
    ) -> Segmenters:
        """The segmenters with their batchers.

        Raises
        ------
        BundleError
            If ``scope`` was fitted on image embeddings of another layout.
        """
        if scope is not None and scope.image.layout != image_parts(thyroid):
            raise BundleError(
                f"the scope statistics' image parts {scope.image.layout} are not the thyroid "
                f"segmenter's {image_parts(thyroid)}; fit them again with llnm-node bundle "
                "fit-scope"
            )
        return cls(
            nodule=nodule,
            thyroid=thyroid,
            manifest=manifest,
            scope=scope,
            nodule_masks=MicroBatcher(
                functools.partial(yolo_outputs, nodule),
                max_items=MAX_BATCH_VIEWS,
                name="nodule",
            ),
            thyroid_masks=MicroBatcher(
                functools.partial(unet_outputs, thyroid),
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
    return Segmenters.of(nodule, thyroid, manifest, load_scope(bundle_dir))


class SegmenterLoader(BundleLoader[Segmenters]):
    """The segmenters of the bundle in ``bundle_dir``, loaded once (:func:`load_segmenters`)."""

    def __init__(self, bundle_dir: Path, device: torch.device | None = None) -> None:
        super().__init__(bundle_dir, functools.partial(load_segmenters, device=device))


def image_parts(thyroid: Segmenter) -> tuple[tuple[str, int], ...]:
    """Name and width of each part of a view's image embedding (:func:`image_embedding`)."""
    return (*encoder_parts(thyroid), (TEXTURE_PART, TEXTURE_WIDTH))


def image_embedding(crop: Crop, encoded: NDArray[np.float32]) -> NDArray[np.float32]:
    """A crop's image embedding: the thyroid segmenter's ``encoded`` view, then its texture."""
    return np.concatenate([encoded, texture_statistics(crop)]).astype(np.float32)


@dataclass(frozen=True)
class SegmentedView:
    """One crop with its masks, written as PNG (0 or 255) at the crop's resolution."""

    crop: CroppedView
    nodule_mask: Path
    thyroid_mask: Path
    nodule_confidence: Path  # detection confidence map, 0-255 for 0-1
    nodule_pixels: int
    thyroid_pixels: int
    thyroid_confidence: float  # mean thyroid probability inside the mask (0 when empty)
    image_embedding: NDArray[np.float32]  # of the whole crop (:func:`image_embedding`)
    image_score: PartScore | None  # its worst part; None without scope statistics

    @property
    def thyroid_area(self) -> float:
        """The thyroid mask's share of the crop."""
        return self.thyroid_pixels / float(self.crop.rows * self.crop.columns)


@dataclass(frozen=True)
class SegmentedStudy:
    """The segment stage's output: the crops in scope with their two masks."""

    SCHEMA_VERSION: ClassVar[int] = 3  # of the stage output file (pipeline.stage_outputs)

    job: JobContext
    views: tuple[SegmentedView, ...]
    skipped: tuple[Skipped, ...]
    excluded: tuple[ExcludedImage, ...] = ()


def view_exclusion(view: SegmentedView, scope: ScopeStatistics | None) -> Exclusion | None:
    """Why ``view`` is not like the views seen in training, or None (module docstring)."""
    if view.thyroid_pixels == 0:
        return Exclusion(Reason.NO_THYROID, "empty thyroid mask")
    if scope is None:
        return None
    thyroid = _thyroid_exclusion(view, scope.limits)
    score = view.image_score
    if thyroid is not None or score is None or not score.exceeded:
        return thyroid
    detail = f"image score {score.distance:.1f} > {score.threshold:.1f} ({score.part})"
    return Exclusion(Reason.OUT_OF_DISTRIBUTION, detail)


def _thyroid_exclusion(view: SegmentedView, limits: ViewLimits) -> Exclusion | None:
    area, confidence = view.thyroid_area, view.thyroid_confidence
    if area not in limits.thyroid_area:
        seen = limits.thyroid_area
        return Exclusion(
            Reason.NO_THYROID,
            f"thyroid area {area:.1%} outside {seen.low:.1%}-{seen.high:.1%} seen in training",
        )
    if confidence not in limits.thyroid_confidence:
        seen = limits.thyroid_confidence
        return Exclusion(
            Reason.NO_THYROID,
            f"thyroid confidence {confidence:.2f} outside {seen.low:.2f}-{seen.high:.2f}",
        )
    return None


def segment_study(study: CroppedStudy, segmenters: Segmenters) -> SegmentedStudy | NotAssessed:
    """Segment every crop of ``study``, write the masks next to the crops, gate the thyroid.

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
    nodule_threshold = segmenters.nodule.config.threshold
    thyroid_threshold = segmenters.thyroid.config.threshold
    scope = segmenters.scope
    segmented: list[SegmentedView] = []
    for view, crop, (nodule_p, confidence), (thyroid_p, encoded) in zip(
        study.images, crops, nodules, thyroids, strict=True
    ):
        stem = view.png_path.stem
        embedding = image_embedding(crop, encoded)
        nodule, thyroid = nodule_p > nodule_threshold, thyroid_p > thyroid_threshold
        segmented.append(
            SegmentedView(
                crop=view,
                nodule_mask=write_mask(out_dir / f"{stem}_nodule.png", nodule),
                thyroid_mask=write_mask(out_dir / f"{stem}_thyroid.png", thyroid),
                nodule_confidence=write_png(
                    out_dir / f"{stem}_nodule_confidence.png",
                    np.clip(np.rint(confidence * 255.0), 0, 255).astype(np.uint8),
                ),
                nodule_pixels=int(np.count_nonzero(nodule)),
                thyroid_pixels=int(np.count_nonzero(thyroid)),
                thyroid_confidence=float(thyroid_p[thyroid].mean()) if thyroid.any() else 0.0,
                image_embedding=embedding,
                image_score=None if scope is None else scope.image.worst(embedding),
            )
        )
    views, excluded = partition(
        segmented, lambda v: view_exclusion(v, scope), lambda v: v.crop.sop_instance_uid
    )
    if not views:
        return not_assessed(study.job.job_id, excluded, before=study.excluded)
    return SegmentedStudy(
        job=study.job, views=views, skipped=study.skipped, excluded=(*study.excluded, *excluded)
    )


def summarize_segmentation(study: SegmentedStudy) -> dict[str, Any]:
    """Mask sizes per view for the audit trail."""
    return {
        "views": [
            {
                "sop_instance_uid": v.crop.sop_instance_uid,
                "nodule_pixels": v.nodule_pixels,
                "thyroid_pixels": v.thyroid_pixels,
                "thyroid_area": round(v.thyroid_area, 4),
                "thyroid_confidence": round(v.thyroid_confidence, 3),
                "image_score": None
                if v.image_score is None
                else {"part": v.image_score.part, "score": round(v.image_score.distance, 2)},
            }
            for v in study.views
        ],
        "excluded": describe_excluded(study.excluded),
    }


def segment_stage(
    segmenters: Callable[[JobContext], Segmenters],
) -> Stage[CroppedStudy, SegmentedStudy | NotAssessed]:
    """The segment stage, using the segmenters of the job's bundle (``segmenters(job)``)."""
    return Stage(
        name="segment",
        run=lambda study: segment_study(study, segmenters(study.job)),
        summarize=gated_summary(summarize_segmentation),
        queue="gpu",
        store=gated(),
        output_type=SegmentedStudy,
    )
