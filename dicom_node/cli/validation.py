"""``llnm-node validate`` and ``calibrate``: a bundle against the site's imported outcomes."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from db.session import Database
from dicom_node.app.recalibration import calibrate_bundle
from dicom_node.app.site_validation import MIN_CASES, collect, validate
from dicom_node.app.wiring import spool_layout
from dicom_node.cli.common import ConfigOption, console, fail, settings_or_exit
from models.bundle import BundleError, verify_bundle


class CalibrationMethod(StrEnum):
    """How the probability is recalibrated (:mod:`models.calibration`)."""

    platt = "platt"
    isotonic = "isotonic"


def validate_command(
    bundle: Annotated[str, typer.Option(help="The bundle's name, as its results record it.")],
    version: Annotated[str | None, typer.Option(help="Only this version's answers.")] = None,
    vs: Annotated[str | None, typer.Option(help="Compare with this bundle's results.")] = None,
    vs_version: Annotated[
        str | None, typer.Option(help="Only this version of the --vs bundle.")
    ] = None,
    since: Annotated[
        datetime | None, typer.Option(help="Only jobs created from then on (UTC).")
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Report folder (default: DATA_DIR/validation/BUNDLE).")
    ] = None,
    min_cases: Annotated[int, typer.Option(min=2, help="Fewer predicted cases: no numbers.")] = (
        MIN_CASES
    ),
    config: ConfigOption = None,
) -> None:
    """Measure a bundle on every study with a result and an outcome; write HTML, PNG, JSON."""
    settings = settings_or_exit(config)
    spool = spool_layout(settings)
    database = Database(settings.resolved_database_url)
    when = None if since is None else since.replace(tzinfo=since.tzinfo or UTC)
    with database.session() as session:
        cases = collect(session, spool, bundle, version=version, since=when)
        versus = (
            None
            if vs is None
            else (vs, collect(session, spool, vs, version=vs_version, since=when))
        )
    if not cases:
        raise fail(
            "nothing to validate", ValueError(f"no study has an outcome and a {bundle} result")
        )
    label = bundle if version is None else f"{bundle}-{version}"
    folder = out or settings.data_dir / "validation" / label
    report = validate(cases, label, folder, min_cases=min_cases, versus=versus)
    overall = report["overall"]
    found = overall["metrics"]
    auc = (
        f"AUC {found['auc']['value']:.3f} ({found['auc']['low']:.3f}-{found['auc']['high']:.3f})"
        if isinstance(found, dict)
        else str(found)
    )
    console.print(
        f"{overall['cases']} studies, {overall['predicted']} predicted "
        f"({overall['positive']} LLNM-positive): {auc}; not assessed "
        f"{report['not_assessed']['count']}; report in {folder / 'validation.html'}"
    )
    if "versus" in report:
        console.print(f"against {vs}: {report['versus']}")


def calibrate_command(
    bundle: Annotated[Path, typer.Option(help="The bundle folder to recalibrate.")],
    out: Annotated[Path, typer.Option(help="The new bundle's folder (must not exist).")],
    version: Annotated[str, typer.Option(help="The new bundle's version.")],
    method: Annotated[CalibrationMethod, typer.Option(help="platt or isotonic.")] = (
        CalibrationMethod.platt
    ),
    target_sensitivity: Annotated[
        float | None, typer.Option(min=0.01, max=1.0, help="Threshold for this sensitivity.")
    ] = None,
    holdout: Annotated[
        float, typer.Option(min=0.0, max=0.9, help="Share of cases kept out of the fit to test it.")
    ] = 0.0,
    seed: Annotated[int, typer.Option(min=0, help="Seeds the held-out split.")] = 0,
    config: ConfigOption = None,
) -> None:
    """Fit a calibration on the site's outcomes and write it as a new, sealed bundle version.

    The cases are the site's answers of this bundle's name and version (live or shadow).
    """
    settings = settings_or_exit(config)
    try:
        manifest = verify_bundle(bundle)
    except BundleError as exc:
        raise fail("invalid bundle", exc) from exc
    name = manifest.name
    database = Database(settings.resolved_database_url)
    with database.session() as session:
        cases = collect(session, spool_layout(settings), name, version=manifest.version)
    try:
        summary = calibrate_bundle(
            bundle,
            out,
            cases,
            method=method.value,
            version=version,
            target_sensitivity=target_sensitivity,
            holdout=holdout,
            seed=seed,
        )
    except (ValueError, BundleError) as exc:
        raise fail("cannot calibrate", exc) from exc
    console.print(
        f"{name} {version} in {out}: {summary['method']} on {summary['cases']} cases "
        f"({summary['positives']} LLNM-positive), threshold {summary['threshold']}; "
        f"calibration error {summary['calibration_error_before']} -> "
        f"{summary['calibration_error_after_in_sample']} (on the fitting cases)"
    )
    if "held_out" in summary:
        held = summary["held_out"]
        console.print(
            f"held out {held['cases']} cases: calibration error "
            f"{held['calibration_error_before']} -> {held['calibration_error_after']}"
        )
