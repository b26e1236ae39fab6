"""``llnm-node outcomes``: import the pathology outcomes of received studies."""

from __future__ import annotations

import getpass
import socket
from pathlib import Path
from typing import Annotated

import typer

from db.outcomes import ImportReport, OutcomeFileError, import_outcomes, outcome_counts
from dicom_node.cli.common import ConfigOption, console, database, fail

outcomes_app = typer.Typer(
    no_args_is_help=True, help="Pathology outcomes (LLNM yes/no) of received studies."
)


def print_report(report: ImportReport) -> None:
    """The counts, then each kind of line not applied (line numbers only)."""
    console.print(
        f"{report.rows} rows: {report.imported} new, {report.updated} updated, "
        f"{report.unchanged} unchanged"
    )
    for line, why in report.invalid:
        console.print(f"  line {line}: invalid: {why}")
    for kind, lines in report.problems().items():
        if lines and kind != "invalid":
            console.print(f"  {kind}: lines {', '.join(map(str, lines))}")


@outcomes_app.command("import")
def import_command(
    file: Annotated[
        Path, typer.Argument(help="CSV: accession_number or study_instance_uid, llnm, ...")
    ],
    config: ConfigOption = None,
) -> None:
    """Import outcomes (idempotent; audited); report unmatched, duplicate and invalid rows."""
    actor = f"{getpass.getuser()}@{socket.gethostname()} (cli)"
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise fail("cannot read the outcome file", exc) from exc
    try:
        with database(config).session() as session:
            report = import_outcomes(session, text, imported_by=actor)
            counts = outcome_counts(session)
    except OutcomeFileError as exc:
        raise fail("not an outcome file", exc) from exc
    print_report(report)
    console.print(
        f"{counts['studies']} studies have an outcome, {counts['positive']} LLNM-positive"
    )
