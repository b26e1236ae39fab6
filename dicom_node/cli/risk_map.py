"""``llnm-node risk-map``: build and show a bundle's population location risk map."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from dicom_node.cli.common import console, fail
from models.bundle import BundleError
from models.risk_map import RISK_MAP_DIR, load_risk_map

risk_map_app = typer.Typer(
    no_args_is_help=True, help="The population location risk map: where metastasis comes from."
)
Bundle = Annotated[Path, typer.Option(help="The model bundle folder (sealed again after a build).")]


def _print_summary(summary: dict[str, Any]) -> None:
    console.print(
        f"{summary['cases']} cases ({summary['positives']} LLNM-positive), "
        f"{summary['views_registered']} views registered, "
        f"{summary['views_not_framed']} not framed; built in {summary['seconds']} s"
    )
    for key, entry in summary["maps"].items():
        line = (
            f"  {key}: {entry['cases']} cases, {entry['positives']} positive; registration "
            f"Dice median {entry['dice']['median']}, MSE median {entry['mse']['median']}"
        )
        truth = entry.get("truth")
        if truth:
            line += (
                f"; vs the generator: rate r = {truth['rate_correlation']}, paper map r = "
                f"{truth['difference_correlation']}, highest region {truth['highest_region']} "
                f"(true {truth['true_highest_region']})"
            )
        console.print(line)
    stats = summary["statistics"]
    for group, rows in stats.items():
        cells = ", ".join(
            f"{name}: {row['llnm_rate']} of {row['cases']}"
            + (f" (true {row['mean_true_probability']})" if "mean_true_probability" in row else "")
            for name, row in rows.items()
            if row["cases"]
        )
        console.print(f"  LLNM rate by {group.replace('_', ' ')}: {cells}")


@risk_map_app.command("build")
def build(
    data: Annotated[
        Path, typer.Option(help="A data set with outcomes: the folder holding cases.jsonl.")
    ],
    bundle: Bundle,
    template_cases: Annotated[
        int, typer.Option(min=1, help="Views per plane and side the templates are built from.")
    ] = 200,
    keep_templates: Annotated[
        bool, typer.Option(help="Keep the bundle's templates instead of rebuilding them.")
    ] = False,
    workers: Annotated[int, typer.Option(min=0, help="Processes; 0: one per core.")] = 0,
) -> None:
    """Build the templates and the population maps of DATA into BUNDLE (replacing any)."""
    from pipeline.risk_map_build import build_risk_map

    try:
        summary = build_risk_map(
            data,
            bundle,
            template_cases=template_cases,
            keep_templates=keep_templates,
            workers=workers or None,
        )
    except (BundleError, ValueError, OSError) as exc:
        raise fail("the risk map could not be built", exc) from exc
    _print_summary(summary)
    console.print(f"maps and pictures in {bundle / RISK_MAP_DIR}")


@risk_map_app.command("show")
def show(bundle: Bundle) -> None:
    """Print the bundle's risk map summary: counts, registration quality, statistics."""
    try:
        risk_map = load_risk_map(bundle)
    except BundleError as exc:
        raise fail("the risk map cannot be read", exc) from exc
    if risk_map is None:
        raise fail("no risk map", ValueError(f"{bundle} has no {RISK_MAP_DIR}/"))
    _print_summary(risk_map.summary)
