"""``llnm-node studies``: the received studies and their newest job."""

from __future__ import annotations

import typer
from rich.table import Table

from db import listings
from dicom_node.cli.common import (
    AeOption,
    ConfigOption,
    JsonOption,
    LimitOption,
    PatientOption,
    SinceOption,
    StateOption,
    UntilOption,
    admin_filter,
    console,
    database,
    format_time,
    print_json,
)

studies_app = typer.Typer(no_args_is_help=True, help="Inspect received studies.")


@studies_app.command("list")
def studies_list(
    config: ConfigOption = None,
    state: StateOption = None,
    since: SinceOption = None,
    until: UntilOption = None,
    ae: AeOption = None,
    patient: PatientOption = None,
    limit: LimitOption = 50,
    as_json: JsonOption = False,
) -> None:
    """List received studies, most recent first, with their newest job."""
    with database(config).session() as session:
        rows = listings.list_studies(
            session, admin_filter(state, since, until, ae, patient), limit=limit
        )
    if as_json:
        print_json(rows)
        return
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
    console.print(table)
