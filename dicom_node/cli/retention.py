"""``llnm-node purge``: apply the retention settings (dry run unless ``--apply``)."""

from __future__ import annotations

import getpass
import socket
from typing import Annotated

import typer
from rich.table import Table

from db.session import Database
from dicom_node.app.retention import plan, purge
from dicom_node.cli.common import ConfigOption, console, settings_or_exit
from pipeline.spool import SpoolLayout


def purge_command(
    config: ConfigOption = None,
    apply: Annotated[
        bool, typer.Option("--apply", help="Remove the files; without it, only list them.")
    ] = False,
) -> None:
    """Remove originals, working folders and quarantined files older than [retention] allows.

    Counts from when a study's or job's results were delivered (every job ended, nothing
    left to send); quarantined files from when they were refused. Database rows stay.
    """
    settings = settings_or_exit(config)
    database = Database(settings.resolved_database_url)
    planned = plan(database, SpoolLayout.at(settings.data_dir / "spool"), settings.retention)
    rules = settings.retention
    days = {
        "originals": rules.originals_days,
        "work": rules.work_days,
        "quarantine": rules.quarantine_days,
    }
    table = Table("kind", "kept (days)", "to remove", "MB")
    for name, category in planned.categories().items():
        size = f"{category.size_bytes / 1e6:.1f}"
        table.add_row(name, f"{days[name]:g}", str(len(category.paths)), size)
    console.print(table)
    if not apply:
        console.print("dry run: nothing removed (add --apply)")
        return
    actor = f"{getpass.getuser()}@{socket.gethostname()} (cli)"
    removed = purge(database, planned, actor=actor)
    console.print("removed: " + ", ".join(f"{n} {name}" for name, n in removed.items()))
