"""``llnm-node dataset``: the site's own training data set, and reader-corrected masks for it."""

from __future__ import annotations

import getpass
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from db.session import Database
from dicom_node.cli.common import ConfigOption, console, fail, settings_or_exit

if TYPE_CHECKING:
    from dicom_node.app.site_dataset import ExportSummary
    from dicom_node.app.site_masks import ImportSummary

dataset_app = typer.Typer(
    no_args_is_help=True,
    help="The site's training data set: export it from the spool, import corrected masks.",
)


def print_export(summary: ExportSummary) -> None:
    """The counts, the crops left out and the studies without a case, by reason."""
    views = summary.views
    console.print(
        f"[green]{summary.cases} cases[/green] ({summary.positives} LLNM-positive) in "
        f"{summary.out}: " + ", ".join(f"{n} {plane}" for plane, n in views.items()) + " views"
    )
    if summary.views_left_out:
        table = Table("crops left out", "count", title=None)
        for why, n in summary.views_left_out.items():
            table.add_row(why, str(n))
        console.print(table)
    if summary.skipped:
        table = Table("studies with an outcome but no case", "count", "study keys")
        by_reason: dict[str, list[str]] = {}
        for skipped in summary.skipped:
            by_reason.setdefault(skipped.reason, []).append(str(skipped.study_id))
        for why, keys in by_reason.items():
            table.add_row(why, str(len(keys)), ", ".join(keys))
        console.print(table)


@dataset_app.command("export")
def export_command(
    out: Annotated[Path, typer.Option(help="The data set's folder (new or empty).")],
    config: ConfigOption = None,
) -> None:
    """Write every study with an outcome as a training case (crops, draft masks, labels)."""
    from dicom_node.app.site_dataset import DatasetError, export_dataset
    from dicom_node.app.wiring import spool_layout

    settings = settings_or_exit(config)
    actor = f"{getpass.getuser()}@{socket.gethostname()} (cli)"
    database = Database(settings.resolved_database_url)
    try:
        with database.session() as session:
            summary = export_dataset(session, spool_layout(settings), out, exported_by=actor)
    except DatasetError as exc:
        raise fail("cannot export the data set", exc) from exc
    except OSError as exc:
        raise fail("cannot write the data set", exc) from exc
    finally:
        database.dispose()
    print_export(summary)


def print_import(summary: ImportSummary) -> None:
    """Each file accepted or rejected, then the counts."""
    table = Table("file", "result", "masks or reason")
    for accepted in summary.accepted:
        table.add_row(str(accepted.path), "[green]accepted[/green]", ", ".join(accepted.masks))
    for rejected in summary.rejected:
        table.add_row(str(rejected.path), "[red]rejected[/red]", rejected.reason)
    console.print(table)
    console.print(
        f"{len(summary.accepted)} files accepted, {len(summary.rejected)} rejected; "
        f"{summary.written} masks replaced, {summary.unchanged} unchanged; "
        f"{summary.corrected_masks} of {summary.masks} masks of the data set corrected"
    )


@dataset_app.command("import-masks")
def import_masks_command(
    source: Annotated[
        Path, typer.Argument(help="A PNG mask or DICOM SEG file, or a folder of them.")
    ],
    data: Annotated[Path, typer.Option(help="The data set `dataset export` wrote.")],
) -> None:
    """Replace the segmenter's draft masks with a reader's corrected ones (PNG or DICOM SEG).

    Accepted files are applied even when others are rejected; any rejected file exits 1.
    """
    from dicom_node.app.site_dataset import DatasetError
    from dicom_node.app.site_masks import import_masks

    try:
        summary = import_masks(data, source)
    except DatasetError as exc:
        raise fail("cannot import masks", exc) from exc
    except OSError as exc:
        raise fail("cannot write the masks", exc) from exc
    print_import(summary)
    if summary.rejected:
        raise fail("", ValueError(f"{len(summary.rejected)} files rejected (see above)"))
