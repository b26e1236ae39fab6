"""``llnm-node jobs``: list, show and retry jobs."""

from __future__ import annotations

import getpass
import socket
from collections.abc import Sequence

import typer
from rich.table import Table

from db import exports, jobs, listings
from dicom_node.cli.common import (
    ConfigOption,
    JsonOption,
    console,
    database,
    fail,
    format_time,
    listing_command,
    print_json,
)
from imaging.scope_reasons import outcome_text

jobs_app = typer.Typer(no_args_is_help=True, help="Inspect and retry jobs.")


def _jobs_table(rows: Sequence[listings.JobRow]) -> Table:
    table = Table(
        "job", "study", "ver", "state", "stage", "tries", "patient", "AE", "updated", "result",
        "error",
    )  # fmt: skip
    for r in rows:
        table.add_row(
            str(r.id),
            str(r.study_id),
            str(r.version),
            r.state,
            r.stage or "",
            str(r.attempts),
            r.patient_pseudonym,
            r.calling_ae,
            format_time(r.updated_at),
            "" if r.outcome is None else outcome_text(r.outcome, r.reason),
            (r.error or "")[:60],
        )
    return table


jobs_app.command("list", help="List jobs, newest first.")(
    listing_command(listings.list_jobs, _jobs_table)
)


@jobs_app.command("show")
def jobs_show(job_id: int, config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """Show one job and its event timeline."""
    try:
        with database(config).session() as session:
            detail = listings.job_detail(session, job_id=job_id)
    except jobs.JobNotFoundError as exc:
        raise fail("", exc) from exc
    if as_json:
        print_json(detail)
        return
    job = detail.job
    console.print(
        f"job {job.id} v{job.version}  state [bold]{job.state}[/bold]"
        f"{' (' + job.stage + ')' if job.stage else ''}  attempts {job.attempts}  "
        f"patient {job.patient_pseudonym}  from {job.calling_ae}"
    )
    if job.error:
        console.print(f"[red]error:[/red] {job.error}")
    result = detail.result
    if result is not None:
        probability = (
            "" if result.probability is None else f"  probability {result.probability:.3f}"
        )
        stage = "" if result.risk_stage is None else f"  risk stage {result.risk_stage}"
        synthetic = "  [yellow]NOT FOR CLINICAL USE[/yellow]" if result.synthetic_bundle else ""
        console.print(f"result: [bold]{result.outcome}[/bold]{probability}{stage}{synthetic}")
        if result.reason is not None:
            console.print(f"not assessed: {(result.detail or {}).get('text', result.reason)}")
            for image in (result.detail or {}).get("excluded", []):
                console.print(f"  excluded {image['sop_instance_uid']}: {image['text']}")
    table = Table("time", "level", "event", "message")
    for e in detail.events:
        table.add_row(format_time(e.created_at), e.level, e.kind, e.message)
    console.print(table)


@jobs_app.command("retry")
def jobs_retry(job_id: int, config: ConfigOption = None) -> None:
    """Queue a failed or dead job again, or resend a done job's dead exports.

    A running node picks it up; resending re-computes nothing.
    """
    actor = f"{getpass.getuser()}@{socket.gethostname()} (cli)"
    try:
        with database(config).session() as session:
            resent = exports.retry_job_or_exports(session, job_id=job_id, requested_by=actor)
    except (jobs.JobNotFoundError, jobs.JobStateError) as exc:
        raise fail("", exc) from exc
    if resent:
        console.print(f"{resent} dead export(s) of job {job_id} queued again")
    else:
        console.print(f"job {job_id} queued again")
