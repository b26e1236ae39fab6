"""``llnm-node``: the command line for admins. Each command is a shim over importable code."""

from __future__ import annotations

import dataclasses
import getpass
import json
import logging
import signal
import socket
import sys
import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from db import exports, queries
from db.migrate import upgrade
from db.models import JobState
from db.session import Database
from dicom_node import llnm_commands, scu
from dicom_node.bundle_commands import bundle_app
from dicom_node.export_commands import exports_app
from dicom_node.settings import Settings, load_settings

app = typer.Typer(
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    help="LLNM node: thyroid ultrasound LLNM prediction.",
)
jobs_app = typer.Typer(no_args_is_help=True, help="Inspect and retry jobs.")
studies_app = typer.Typer(no_args_is_help=True, help="Inspect received studies.")
db_app = typer.Typer(no_args_is_help=True, help="Job database maintenance.")
app.add_typer(jobs_app, name="jobs")
app.add_typer(studies_app, name="studies")
app.add_typer(db_app, name="db")
app.add_typer(bundle_app, name="bundle")
app.add_typer(exports_app, name="exports")
app.command("train")(llnm_commands.train)
app.command("evaluate")(llnm_commands.evaluate)

# Wide when piped, so ids and pseudonyms are never cut; the terminal's width otherwise.
console = Console(width=None if sys.stdout.isatty() else 200)
err_console = Console(stderr=True)

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="TOML settings file (default: $LLNM_CONFIG)."),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def _settings(config: Path | None) -> Settings:
    try:
        return load_settings(config)
    except (FileNotFoundError, ValidationError) as exc:
        err_console.print(f"[red]configuration error:[/red] {exc}")
        raise typer.Exit(2) from exc


def _database(config: Path | None) -> Database:
    return Database(_settings(config).resolved_database_url)


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if level != "DEBUG":
        logging.getLogger("pynetdicom").setLevel(logging.WARNING)


def _parse_time(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise typer.BadParameter(f"{value!r} is not an ISO date or date-time") from exc
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _print_json(value: Any) -> None:
    def default(obj: Any) -> Any:
        if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            return dataclasses.asdict(obj)
        if isinstance(obj, datetime):
            return obj.isoformat()
        return str(obj)

    typer.echo(json.dumps(value, default=default, indent=2))


def _fmt(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


# --- serve ----------------------------------------------------------------------


@app.command()
def serve(config: ConfigOption = None) -> None:
    """Run the node: DICOM listener, completion watcher and job workers, until SIGTERM."""
    from dicom_node.node import Node

    settings = _settings(config)
    _setup_logging(settings.log_level)
    node = Node(settings)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    try:
        node.start()
    except OSError as exc:
        err_console.print(f"[red]cannot start:[/red] {exc}")
        node.stop()
        raise typer.Exit(1) from exc
    stop.wait()
    logging.getLogger(__name__).info("stop requested; shutting down")
    node.stop()


@app.command()
def worker(
    queues: Annotated[
        str, typer.Option(help="Comma-separated queues: gpu (segment, infer), cpu (the rest).")
    ] = "gpu,cpu",
    concurrency: Annotated[int, typer.Option(min=1, help="Tasks run at once (threads).")] = 1,
    config: ConfigOption = None,
) -> None:
    """Run a Celery worker for the distributed mode (needs executor.broker_url)."""
    from dicom_node.worker import run_worker

    settings = _settings(config)
    _setup_logging(settings.log_level)
    try:
        run_worker(
            settings, [q.strip() for q in queues.split(",") if q.strip()], concurrency=concurrency
        )
    except ValueError as exc:
        err_console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc


# --- SCU helpers ------------------------------------------------------------------


def _peer(host: str, port: int, called_ae: str, calling_ae: str, tls_ca: Path | None) -> scu.Peer:
    from dicom_node.tls import client_context

    tls = client_context(ca_file=tls_ca) if tls_ca is not None else None
    return scu.Peer(host=host, port=port, called_ae=called_ae, calling_ae=calling_ae, tls=tls)


CalledAe = Annotated[str, typer.Option("--aec", help="Called AE title.")]
CallingAe = Annotated[str, typer.Option("--aet", help="Our (calling) AE title.")]
TlsCa = Annotated[
    Path | None, typer.Option("--tls-ca", help="Use TLS; verify the peer with this CA.")
]


@app.command()
def echo(
    host: str,
    port: int,
    called_ae: CalledAe = "LLNM_NODE",
    calling_ae: CallingAe = "LLNM_SCU",
    tls_ca: TlsCa = None,
) -> None:
    """C-ECHO a DICOM peer."""
    try:
        status = scu.echo(_peer(host, port, called_ae, calling_ae, tls_ca))
    except scu.AssociationError as exc:
        err_console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from exc
    console.print(f"C-ECHO status 0x{status:04X}")
    if status != 0:
        raise typer.Exit(1)


@app.command()
def send(
    host: str,
    port: int,
    paths: Annotated[list[Path], typer.Argument(help="DICOM files or folders.")],
    called_ae: CalledAe = "LLNM_NODE",
    calling_ae: CallingAe = "LLNM_SCU",
    tls_ca: TlsCa = None,
    as_json: JsonOption = False,
) -> None:
    """C-STORE files (folders recursively) to a DICOM peer, bytes as stored."""
    outcomes = scu.send_files(_peer(host, port, called_ae, calling_ae, tls_ca), paths)
    failed = [o for o in outcomes if not o.ok]
    if as_json:
        _print_json(outcomes)
    else:
        for outcome in failed:
            status = "-" if outcome.status is None else f"0x{outcome.status:04X}"
            err_console.print(f"[red]{outcome.path}[/red]: {status} {outcome.error or ''}")
        console.print(f"sent {len(outcomes) - len(failed)} of {len(outcomes)} file(s)")
    if failed:
        raise typer.Exit(1)


# --- jobs and studies ---------------------------------------------------------------

StateOption = Annotated[
    list[JobState] | None, typer.Option("--state", help="Job state (repeatable).")
]
SinceOption = Annotated[str | None, typer.Option(help="From this ISO date/time (UTC).")]
UntilOption = Annotated[str | None, typer.Option(help="Before this ISO date/time (UTC).")]
AeOption = Annotated[str | None, typer.Option("--ae", help="Sending (calling) AE title.")]
PatientOption = Annotated[str | None, typer.Option("--patient", help="Patient pseudonym.")]
LimitOption = Annotated[int, typer.Option(min=1, max=10_000)]


def _filters(
    state: list[JobState] | None,
    since: str | None,
    until: str | None,
    ae: str | None,
    patient: str | None,
) -> queries.AdminFilter:
    return queries.AdminFilter(
        states=state or (),
        since=_parse_time(since),
        until=_parse_time(until),
        calling_ae=ae,
        patient_pseudonym=patient,
    )


@jobs_app.command("list")
def jobs_list(
    config: ConfigOption = None,
    state: StateOption = None,
    since: SinceOption = None,
    until: UntilOption = None,
    ae: AeOption = None,
    patient: PatientOption = None,
    limit: LimitOption = 50,
    as_json: JsonOption = False,
) -> None:
    """List jobs, newest first."""
    with _database(config).session() as session:
        rows = queries.list_jobs(session, _filters(state, since, until, ae, patient), limit=limit)
    if as_json:
        _print_json(rows)
        return
    table = Table(
        "job", "study", "ver", "state", "stage", "tries", "patient", "AE", "updated", "error"
    )
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
            _fmt(r.updated_at),
            (r.error or "")[:60],
        )
    console.print(table)


@jobs_app.command("show")
def jobs_show(job_id: int, config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """Show one job and its event timeline."""
    try:
        with _database(config).session() as session:
            detail = queries.job_detail(session, job_id=job_id)
    except queries.JobNotFoundError as exc:
        err_console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from exc
    if as_json:
        _print_json(detail)
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
    table = Table("time", "level", "event", "message")
    for e in detail.events:
        table.add_row(_fmt(e.created_at), e.level, e.kind, e.message)
    console.print(table)


@jobs_app.command("retry")
def jobs_retry(job_id: int, config: ConfigOption = None) -> None:
    """Queue a failed or dead job again, or resend a done job's dead exports.

    A running node picks it up; resending re-computes nothing.
    """
    actor = f"{getpass.getuser()}@{socket.gethostname()} (cli)"
    try:
        with _database(config).session() as session:
            resent = exports.retry_job_or_exports(session, job_id=job_id, requested_by=actor)
    except (queries.JobNotFoundError, queries.JobStateError) as exc:
        err_console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from exc
    if resent:
        console.print(f"{resent} dead export(s) of job {job_id} queued again")
    else:
        console.print(f"job {job_id} queued again")


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
    with _database(config).session() as session:
        rows = queries.list_studies(
            session, _filters(state, since, until, ae, patient), limit=limit
        )
    if as_json:
        _print_json(rows)
        return
    table = Table("study", "patient", "AE", "date", "instances", "last received", "job", "state")
    for r in rows:
        table.add_row(
            str(r.id),
            r.patient_pseudonym,
            r.calling_ae,
            r.study_date,
            str(r.instance_count),
            _fmt(r.last_received_at),
            str(r.latest_job_id or ""),
            r.latest_job_state or "",
        )
    console.print(table)


@app.command("api-token")
def api_token(
    name: Annotated[str, typer.Argument(help="Who holds the token (shown in the audit trail).")],
) -> None:
    """Make an admin API token: print it once, and the settings entry that admits it."""
    from dicom_node.api.auth import new_token, token_digest
    from dicom_node.settings import ApiToken

    token = new_token()
    try:
        entry = ApiToken(name=name, sha256=token_digest(token))
    except ValidationError as exc:
        err_console.print(f"[red]invalid name:[/red] {exc}")
        raise typer.Exit(2) from exc
    typer.echo(f"token (shown only now): {token}")
    typer.echo("add to the settings file:")
    typer.echo(f'[[api.tokens]]\nname = {json.dumps(entry.name)}\nsha256 = "{entry.sha256}"')


@db_app.command("upgrade")
def db_upgrade(config: ConfigOption = None) -> None:
    """Create or migrate the job database schema to the newest revision."""
    settings = _settings(config)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade(Database(settings.resolved_database_url))
    console.print("database is at the newest schema revision")


@app.command()
def demo(
    data_dir: Annotated[
        Path | None, typer.Option(help="Keep the demo's data here (default: a temporary folder).")
    ] = None,
) -> None:
    """Start a node on the embedded default, send it sample ultrasound studies, show the jobs."""
    from dicom_node.demo import run_demo

    _setup_logging("WARNING")
    raise typer.Exit(run_demo(console, data_dir))


@app.command()
def phantom(
    out: Annotated[Path, typer.Option(help="Write dicom/ and dataset/ under this folder.")],
    n: Annotated[int, typer.Option(min=1, help="Number of cases (studies).")] = 200,
    seed: Annotated[int, typer.Option(min=0, help="Seed of the run; same seed, same files.")] = 0,
    rgb: Annotated[bool, typer.Option("--rgb", help="RGB images instead of MONOCHROME2.")] = False,
    regions: Annotated[
        bool, typer.Option("--regions/--no-regions", help="Sequence of Ultrasound Regions.")
    ] = True,
    rows: Annotated[int, typer.Option(min=120)] = 480,
    columns: Annotated[int, typer.Option(min=160)] = 640,
) -> None:
    """Write synthetic thyroid ultrasound studies and a training data set (NOT FOR CLINICAL USE)."""
    from pipeline.phantom import PhantomOptions, export_phantoms

    options = PhantomOptions(rgb=rgb, with_regions=regions, rows=rows, columns=columns)
    summary = export_phantoms(out, n=n, seed=seed, options=options, progress=True)
    auc = summary.best_achievable_auc
    console.print(
        f"{summary.cases} studies in {summary.dicom_dir}, data set in {summary.dataset_dir}; "
        f"{summary.positives} LLNM-positive, {summary.reports} with a report; "
        f"best achievable AUC {'n/a' if auc is None else f'{auc:.3f}'}"
    )


class SegTarget(StrEnum):
    """What ``train-seg`` can train: the thyroid (UNet++) or the nodules (YOLOv8-seg)."""

    thyroid = "thyroid"
    nodule = "nodule"


@app.command("train-seg")
def train_seg(
    target: Annotated[SegTarget, typer.Argument(help="thyroid: UNet++; nodule: YOLOv8n-seg.")],
    data: Annotated[Path, typer.Option(help="Data set folder holding cases.jsonl (or dataset/).")],
    out: Annotated[Path, typer.Option(help="Write weights, metrics, curve, checkpoint here.")],
    epochs: Annotated[int, typer.Option(min=1, help="Total epochs (also when resuming).")] = 30,
    batch_size: Annotated[int, typer.Option(min=1)] = 8,
    seed: Annotated[int, typer.Option(min=0, help="Seeds the split, init and augmentation.")] = 0,
    val_fraction: Annotated[float, typer.Option(min=0.01, max=0.99)] = 0.2,
    patience: Annotated[int, typer.Option(min=1, help="Stop after N epochs without gain.")] = 6,
    height: Annotated[int, typer.Option(min=32, help="Input height, multiple of 32.")] = 256,
    width: Annotated[int, typer.Option(min=32, help="Input width, multiple of 32.")] = 320,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from OUT/checkpoint.")] = False,
    learning_rate: Annotated[float, typer.Option(min=1e-6, help="AdamW learning rate.")] = 1e-3,
    half: Annotated[bool, typer.Option("--half", help="Keep the weights as float16.")] = False,
    init_from: Annotated[
        Path | None,
        typer.Option(help="Fine-tune: start from this segmenter folder's weights (same config)."),
    ] = None,
) -> None:
    """Train a segmenter (CPU or CUDA) on a data set folder; NOT FOR CLINICAL USE as is."""
    from models.segmentation.config import AnyConfig, SegmenterConfig, YoloSegConfig
    from models.segmentation.training import TrainOptions, train_segmenter

    try:
        config: AnyConfig = (
            SegmenterConfig(input_height=height, input_width=width)
            if target is SegTarget.thyroid
            else YoloSegConfig(input_height=height, input_width=width)
        )
        options = TrainOptions(
            epochs=epochs,
            batch_size=batch_size,
            seed=seed,
            val_fraction=val_fraction,
            patience=patience,
            resume=resume,
            learning_rate=learning_rate,
            half_weights=half,
            init_from=init_from,
        )
        result = train_segmenter(data, out, config, options)
    except (FileNotFoundError, ValueError) as exc:
        err_console.print(f"[red]cannot train:[/red] {exc}")
        raise typer.Exit(1) from exc
    console.print(
        f"best validation Dice {result.best_val_dice:.4f} at epoch {result.best_epoch} "
        f"of {result.epochs_run}{' (stopped early)' if result.stopped_early else ''}; "
        f"weights in {result.out}"
    )


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point."""
    app(args=list(argv) if argv is not None else None, prog_name="llnm-node")
