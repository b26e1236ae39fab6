"""``llnm-node exports``: what was sent where, what is still pending, what is dead."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from db.exports import ExportRow, list_exports
from db.models import ExportState
from dicom_node.cli.common import (
    ConfigOption,
    JsonOption,
    console,
    database,
    format_time,
    print_json,
)

exports_app = typer.Typer(no_args_is_help=True, help="Inspect result exports.")


def _table(rows: list[ExportRow]) -> Table:
    table = Table("id", "job", "study", "destination", "state", "tries", "status", "next", "error")
    for r in rows:
        table.add_row(
            str(r.id),
            str(r.job_id),
            str(r.study_id),
            r.destination,
            r.state,
            str(r.attempts),
            "" if r.last_status is None else f"0x{r.last_status:04X}",
            format_time(r.next_attempt_at),
            (r.error or "")[:60],
        )
    return table


@exports_app.command("list")
def exports_list(
    config: ConfigOption = None,
    state: Annotated[ExportState | None, typer.Option(help="Export state.")] = None,
    destination: Annotated[str | None, typer.Option(help="Destination name.")] = None,
    job: Annotated[int | None, typer.Option(help="Job id.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000)] = 100,
    as_json: JsonOption = False,
) -> None:
    """List exports (one per object and destination), newest first."""
    with database(config).session() as session:
        rows = list_exports(session, state=state, destination=destination, job_id=job, limit=limit)
    if as_json:
        print_json(rows)
        return
    console.print(_table(rows))
