"""The ordered stages every job runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from imaging.scope import ScopeRules
from pipeline.bundle_models import BundleModels
from pipeline.crop import crop_stage
from pipeline.deidentify import DEIDENTIFY
from pipeline.features import features_stage
from pipeline.infer import infer_stage
from pipeline.intake import intake_stage
from pipeline.report.inputs import ReportOptions
from pipeline.report.stage import DestinationsFor, report_stage
from pipeline.segment import segment_stage
from pipeline.shadow import shadow_stage
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
    """The stages of a job, first to last, with the models of the job's bundle.

    A job pinned to no installed bundle uses the one in ``bundle_dir``.

    The report's objects are queued for export to ``destinations_for(calling AE)``;
    ``scope`` is the site's scope rules (default: :class:`ScopeRules`'s).
    """
    models = BundleModels(bundle_dir)
    return (
        intake_stage(scope or ScopeRules()),
        DEIDENTIFY,
        crop_stage(spool),
        segment_stage(models.segmenters),
        features_stage(models.scope, models.risk_map),
        infer_stage(models.llnm),
        report_stage(report, spool, destinations_for),
        shadow_stage(models, spool),
    )
