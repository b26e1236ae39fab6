"""The ordered stages every job runs; later stages append here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.crop import CROP
from pipeline.deidentify import DEIDENTIFY
from pipeline.features.stage import FEATURES
from pipeline.infer import LlnmLoader, infer_stage
from pipeline.intake import INTAKE
from pipeline.segment import SegmenterLoader, segment_stage
from pipeline.stage import Stage


def default_stages(bundle_dir: Path) -> tuple[Stage[Any, Any], ...]:
    """The stages of a job, first to last, with the models of the bundle in ``bundle_dir``."""
    return (
        INTAKE,
        DEIDENTIFY,
        CROP,
        segment_stage(SegmenterLoader(bundle_dir)),
        FEATURES,
        infer_stage(LlnmLoader(bundle_dir)),
    )
