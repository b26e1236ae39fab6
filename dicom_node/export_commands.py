"""``llnm-node exports``: what was sent where, what is still pending, what is dead."""

from __future__ import annotations

import dataclasses
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from db.exports import ExportRow, list_exports
from db.models import ExportState
from db.session import Database
from dicom_node.settings import load_settings

exports_app = typer.Typer(no_args_is_help=True, help="Inspect result exports.")
console = Console(width=None if sys.stdout.isatty() else 200)
err_console = Console(stderr=True)


def _database(config: Path | None) -> Database:
    try:
        return Database(load_settings(config).resolved_database_url)
    except (FileNotFoundError, ValidationError) as exc:
        err_console.print(f"[red]configuration error:[/red] {exc}")
        raise typer.Exit(2) from exc


def _time(value: datetime | None) -> str:
    return "" if value is None else value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


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
            _time(r.next_attempt_at),
            (r.error or "")[:60],
        )
    return table


@exports_app.command("list")
def exports_list(
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", help="TOML settings file (default: $LLNM_CONFIG)."),
    ] = None,
    state: Annotated[ExportState | None, typer.Option(help="Export state.")] = None,
    destination: Annotated[str | None, typer.Option(help="Destination name.")] = None,
    job: Annotated[int | None, typer.Option(help="Job id.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000)] = 100,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """List exports (one per object and destination), newest first."""
    with _database(config).session() as session:
        rows = list_exports(session, state=state, destination=destination, job_id=job, limit=limit)
    if as_json:
        payload = [dataclasses.asdict(r) for r in rows]
        typer.echo(json.dumps(payload, default=datetime.isoformat, indent=2))
        return
    console.print(_table(rows))
