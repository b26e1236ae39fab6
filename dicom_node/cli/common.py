"""What every command shares: the consoles, options, settings with config errors, formatting."""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from db.listings import AdminFilter
from db.models import JobState
from db.session import Database
from dicom_node.settings import Settings, load_settings

# Wide when piped, so ids and pseudonyms are never cut; the terminal's width otherwise.
console = Console(width=None if sys.stdout.isatty() else 200)
err_console = Console(stderr=True)

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="TOML settings file (default: $LLNM_CONFIG)."),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def settings_or_exit(config: Path | None) -> Settings:
    """The settings; a missing file or an invalid value prints why and exits 2."""
    try:
        return load_settings(config)
    except (FileNotFoundError, ValidationError) as exc:
        err_console.print(f"[red]configuration error:[/red] {exc}")
        raise typer.Exit(2) from exc


def database(config: Path | None) -> Database:
    """The job database the settings name (exits 2 on a configuration error)."""
    return Database(settings_or_exit(config).resolved_database_url)


def fail(prefix: str, exc: Exception, *, code: int = 1) -> typer.Exit:
    """Print ``prefix: exc`` in red; the exit to raise."""
    err_console.print(f"[red]{prefix}:[/red] {exc}" if prefix else f"[red]{exc}[/red]")
    return typer.Exit(code)


def setup_logging(level: str) -> None:
    """Log to stderr at ``level``; pynetdicom's chatter only when debugging."""
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if level != "DEBUG":
        logging.getLogger("pynetdicom").setLevel(logging.WARNING)


def parse_time(value: str | None) -> datetime | None:
    """An ISO date or date-time option as a UTC datetime (naive values are UTC)."""
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise typer.BadParameter(f"{value!r} is not an ISO date or date-time") from exc
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def format_time(value: datetime | None) -> str:
    """A time as ``YYYY-MM-DD HH:MM:SS`` in UTC; empty for None."""
    return "" if value is None else value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def print_json(value: Any) -> None:
    """Print dataclasses, lists and dicts of them as indented JSON (times in ISO form)."""

    def default(obj: Any) -> Any:
        if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            return dataclasses.asdict(obj)
        if isinstance(obj, datetime):
            return obj.isoformat()
        return str(obj)

    typer.echo(json.dumps(value, default=default, indent=2))


StateOption = Annotated[
    list[JobState] | None, typer.Option("--state", help="Job state (repeatable).")
]
SinceOption = Annotated[str | None, typer.Option(help="From this ISO date/time (UTC).")]
UntilOption = Annotated[str | None, typer.Option(help="Before this ISO date/time (UTC).")]
AeOption = Annotated[str | None, typer.Option("--ae", help="Sending (calling) AE title.")]
PatientOption = Annotated[str | None, typer.Option("--patient", help="Patient pseudonym.")]
LimitOption = Annotated[int, typer.Option(min=1, max=10_000)]


def admin_filter(
    state: list[JobState] | None,
    since: str | None,
    until: str | None,
    ae: str | None,
    patient: str | None,
) -> AdminFilter:
    """The listing filter the ``jobs list`` and ``studies list`` options describe."""
    return AdminFilter(
        states=state or (),
        since=parse_time(since),
        until=parse_time(until),
        calling_ae=ae,
        patient_pseudonym=patient,
    )


Row = TypeVar("Row")


def listing_command(
    rows_of: Callable[..., Sequence[Row]], table_of: Callable[[Sequence[Row]], Table]
) -> Callable[..., None]:
    """A ``list`` command: the admin filter options, a table or ``--json``.

    ``rows_of(session, filter, limit=...)`` is the listing query (:mod:`db.listings`).
    """

    def command(
        config: ConfigOption = None,
        state: StateOption = None,
        since: SinceOption = None,
        until: UntilOption = None,
        ae: AeOption = None,
        patient: PatientOption = None,
        limit: LimitOption = 50,
        as_json: JsonOption = False,
    ) -> None:
        with database(config).session() as session:
            rows = rows_of(session, admin_filter(state, since, until, ae, patient), limit=limit)
        if as_json:
            print_json(rows)
        else:
            console.print(table_of(rows))

    return command
