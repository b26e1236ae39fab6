"""``llnm-node studies``: the received studies and their newest job."""

from __future__ import annotations

from collections.abc import Sequence

import typer
from rich.table import Table

from db import listings
from dicom_node.cli.common import format_time, listing_command

studies_app = typer.Typer(no_args_is_help=True, help="Inspect received studies.")


def _studies_table(rows: Sequence[listings.StudyRow]) -> Table:
    table = Table("study", "patient", "AE", "date", "instances", "last received", "job", "state")
    for r in rows:
        table.add_row(
            str(r.id),
            r.patient_pseudonym,
            r.calling_ae,
            r.study_date,
            str(r.instance_count),
            format_time(r.last_received_at),
            str(r.latest_job_id or ""),
            r.latest_job_state or "",
        )
    return table


studies_app.command(
    "list", help="List received studies, most recent first, with their newest job."
)(listing_command(listings.list_studies, _studies_table))
