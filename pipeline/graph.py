"""The ordered stages every job runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from imaging.scope import ScopeRules
from pipeline.crop import CROP
from pipeline.deidentify import DEIDENTIFY
from pipeline.features import RiskMapLoader, ScopeLoader, features_stage
from pipeline.infer import LlnmLoader, infer_stage
from pipeline.intake import intake_stage
from pipeline.report.inputs import ReportOptions
from pipeline.report.stage import DestinationsFor, report_stage
from pipeline.segment import SegmenterLoader, segment_stage
from pipeline.spool import SpoolLayout
from pipeline.stage import Stage


def default_stages(
    bundle_dir: Path,
    *,
    spool: SpoolLayout,
    report: ReportOptions,
    destinations_for: DestinationsFor,
    scope: ScopeRules | None = None,
) -> tuple[Stage[Any, Any], ...]:
    """The stages of a job, first to last, with the models of the bundle in ``bundle_dir``.

    The report's objects are queued for export to ``destinations_for(calling AE)``;
    ``scope`` is the site's scope rules (default: :class:`ScopeRules`'s).
    """
    return (
        intake_stage(scope or ScopeRules()),
        DEIDENTIFY,
        CROP,
        segment_stage(SegmenterLoader(bundle_dir)),
        features_stage(ScopeLoader(bundle_dir), RiskMapLoader(bundle_dir)),
        infer_stage(LlnmLoader(bundle_dir)),
        report_stage(report, spool, destinations_for),
    )
