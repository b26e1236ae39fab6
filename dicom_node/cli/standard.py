"""``llnm-node standard-tables``: which edition of the DICOM standard the node's tables are."""

from __future__ import annotations

import typer

from imaging.standard import editions


def standard_tables() -> None:
    """Print each table of the DICOM standard the node uses, with its edition and source."""
    for table, edition in editions().items():
        typer.echo(f"{table}: {edition}")
