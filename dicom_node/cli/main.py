"""The ``llnm-node`` command: every sub-command group, each a shim over importable code."""

from __future__ import annotations

from collections.abc import Sequence

import typer

from dicom_node.cli import api, dicom, node, retention, standard, training, validation
from dicom_node.cli.bundle import bundle_app
from dicom_node.cli.dataset import dataset_app
from dicom_node.cli.exports import exports_app
from dicom_node.cli.jobs import jobs_app
from dicom_node.cli.outcomes import outcomes_app
from dicom_node.cli.risk_map import risk_map_app
from dicom_node.cli.studies import studies_app

app = typer.Typer(
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    help="LLNM node: thyroid ultrasound LLNM prediction.",
)
app.command()(node.serve)
app.command()(node.worker)
app.command()(node.demo)
app.command()(dicom.echo)
app.command()(dicom.send)
app.command("api-token")(api.api_token)
app.command("standard-tables")(standard.standard_tables)
app.command("purge")(retention.purge_command)
app.command()(training.phantom)
app.command("train-seg")(training.train_seg)
app.command()(training.train)
app.command()(training.evaluate)
app.command("validate")(validation.validate_command)
app.command("calibrate")(validation.calibrate_command)
app.add_typer(jobs_app, name="jobs")
app.add_typer(studies_app, name="studies")
app.add_typer(node.db_app, name="db")
app.add_typer(bundle_app, name="bundle")
app.add_typer(exports_app, name="exports")
app.add_typer(risk_map_app, name="risk-map")
app.add_typer(outcomes_app, name="outcomes")
app.add_typer(dataset_app, name="dataset")


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point."""
    app(args=list(argv) if argv is not None else None, prog_name="llnm-node")
