"""Export of result objects by C-STORE to real peers on loopback (dcmtk's storescp)."""

from __future__ import annotations

import itertools
import json
import shutil
import types
import typing
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from harness import Process, free_port, wait_for, write_toml
from pydantic import ValidationError
from pydicom.filereader import read_file_meta_info
from sqlalchemy import select
from typer.testing import CliRunner

import dicom_factory
from db import exports
from db.jobs import JobStateError
from db.models import Event, ExportState, Job, JobState, utcnow
from db.registration import NewInstance, register_instance
from db.session import Database
from dicom_node.app.node import Node
from dicom_node.cli.main import app
from dicom_node.network.exporter import Exporter, RoundSummary
from dicom_node.network.scu import AssociationError, Peer, echo
from dicom_node.network.senders import registered_variants
from dicom_node.network.tls import client_context
from dicom_node.settings import (
    Destination,
    DestinationTLS,
    DicomWebDestination,
    DimseDestination,
    ExportSettings,
)
from pipeline.spool import SpoolLayout

pytestmark = [
    pytest.mark.dcmtk,
    pytest.mark.skipif(shutil.which("storescp") is None, reason="dcmtk storescp is missing"),
]

SCP_AE = "ARCHIVE"
_counter = itertools.count(1)


class StoreSCP:
    """dcmtk's storescp on a loopback port, keeping every object it receives as a file."""

    def __init__(self, folder: Path, port: int, *, tls: dict[str, Path] | None = None) -> None:
        self.folder = folder
        self.port = port
        self._tls = tls  # the certificates fixture: TLS with client certificates required
        tls_options = []
        if tls is not None:
            tls_options = ["+tls", str(tls["server.key"]), str(tls["server.pem"])]
            tls_options += ["+cf", str(tls["ca.pem"]), "-rc"]
        options = ["-aet", SCP_AE, "-od", str(folder), "+B", "+uf"]
        self._process = Process(
            ["storescp", *tls_options, *options, str(port)],
            log_path=folder.with_name(f"{folder.name}-storescp.log"),
            grace_s=10,
        )

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self._process.start().wait_until(
            self._answers_echo, timeout=15, what="storescp to listen", interval=0.05
        )

    def _answers_echo(self) -> bool:
        context = None
        if self._tls is not None:
            context = client_context(
                ca_file=self._tls["ca.pem"],
                cert_file=self._tls["client.pem"],
                key_file=self._tls["client.key"],
            )
        try:
            return echo(Peer("127.0.0.1", self.port, SCP_AE, tls=context)) == 0
        except AssociationError:
            return False

    def received(self) -> list[Path]:
        return sorted(self.folder.glob("*")) if self.folder.is_dir() else []

    def stop(self) -> None:
        self._process.stop()


@pytest.fixture
def scp(tmp_path: Path) -> Iterator[StoreSCP]:
    """A storescp on a free port, not started yet."""
    peer = StoreSCP(tmp_path / "received", free_port())
    yield peer
    peer.stop()


def make_done_job(database: Database, *, ae: str = "PACS") -> int:
    n = next(_counter)
    new = NewInstance(
        sop_instance_uid=f"1.2.826.0.1.99.{n}",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.6.1",
        series_instance_uid=f"1.2.99.{n}.1",
        study_instance_uid=f"1.2.99.{n}",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        modality="US",
        patient_id="PAT1",
        issuer_of_patient_id="",
        study_date="20261120",
        path=f"incoming/{n}.dcm",
        size_bytes=100,
        calling_ae=ae,
    )
    with database.connection() as connection:
        job_id = register_instance(connection, new=new).job_id
    with database.session() as session:
        session.get_one(Job, job_id).state = JobState.DONE
    return job_id


def write_result(spool_root: Path, job_id: int, name: str = "sr.dcm") -> tuple[str, str]:
    """A Basic Text SR saved where the report stage puts its objects: (SOP UID, relative path)."""
    ds = dicom_factory.text_report(study_uid="1.2.3", text="LLNM risk 0.83, stage 2")
    relative = f"work/job-{job_id}/report/{name}"
    dicom_factory.write(ds, spool_root / relative)
    return str(ds.SOPInstanceUID), relative


def queue(database: Database, job_id: int, objects: list[tuple[str, str]], *dest: str) -> int:
    with database.session() as session:
        return exports.queue_exports(session, job_id=job_id, objects=objects, destinations=dest)


def export_settings(port: int, **values: Any) -> ExportSettings:
    values = {"initial_backoff_s": 0.05, "max_backoff_s": 1.0, **values}
    destination = DimseDestination(name="archive", ae_title=SCP_AE, host="127.0.0.1", port=port)
    return ExportSettings(destinations=[destination], **values)


def exporter(database: Database, spool_root: Path, settings: ExportSettings) -> Exporter:
    return Exporter(
        database=database,
        spool=SpoolLayout.at(spool_root),
        settings=settings,
        calling_ae="LLNM_NODE",
    )


def rows(database: Database, **filters: Any) -> list[exports.ExportRow]:
    with database.session() as session:
        return exports.list_exports(session, **filters)


def event_kinds(database: Database, job_id: int) -> list[str]:
    with database.session() as session:
        return list(session.scalars(select(Event.kind).where(Event.job_fk == job_id)))


def dataset_bytes(path: Path) -> bytes:
    """The bytes after the file meta group: what travels over the network."""
    meta_end = 132 + 12 + int(read_file_meta_info(path).FileMetaInformationGroupLength)
    return path.read_bytes()[meta_end:]


def test_delivered_once_with_event(database: Database, tmp_path: Path, scp: StoreSCP) -> None:
    spool = tmp_path / "spool"
    job_id = make_done_job(database)
    sop_uid, relative = write_result(spool, job_id)
    assert queue(database, job_id, [(sop_uid, relative)], "archive") == 1
    scp.start()
    summary = exporter(database, spool, export_settings(scp.port)).run_round()

    assert summary == RoundSummary(sent=1)
    [received] = scp.received()
    assert str(read_file_meta_info(received).MediaStorageSOPInstanceUID) == sop_uid
    assert dataset_bytes(received) == dataset_bytes(spool / relative)
    [row] = rows(database, job_id=job_id)
    assert (row.state, row.last_status, row.attempts, row.error) == ("sent", 0, 1, None)
    assert "export.sent" in event_kinds(database, job_id)


def test_no_destination_is_a_warning(database: Database, tmp_path: Path) -> None:
    job_id = make_done_job(database, ae="MODALITY")
    assert queue(database, job_id, [write_result(tmp_path, job_id)]) == 0
    assert rows(database, job_id=job_id) == []
    with database.session() as session:
        event = session.scalars(select(Event).where(Event.kind == "export.none")).one()
    assert event.level == "warning" and "calling AE MODALITY" in event.message


def test_down_then_up_backs_off_and_delivers_once(
    database: Database, tmp_path: Path, scp: StoreSCP
) -> None:
    spool = tmp_path / "spool"
    job_id = make_done_job(database)
    objects = [write_result(spool, job_id)]
    queue(database, job_id, objects, "archive")
    node = exporter(database, spool, export_settings(scp.port))
    t0 = utcnow()
    waits = []
    for round_ in range(3):
        now = t0 + timedelta(seconds=round_)
        assert node.run_round(now) == RoundSummary(retrying=1)
        [row] = rows(database, job_id=job_id)
        assert row.state == "pending" and row.attempts == round_ + 1
        assert row.error is not None and "association" in row.error
        assert row.next_attempt_at is not None
        waits.append((row.next_attempt_at - now).total_seconds())
    assert waits == pytest.approx([0.05, 0.1, 0.2])
    assert node.run_round(t0 + timedelta(seconds=2.1)) == RoundSummary()  # not due yet

    scp.start()
    assert node.run_round(t0 + timedelta(seconds=3)) == RoundSummary(sent=1)
    assert node.run_round(t0 + timedelta(seconds=4)) == RoundSummary()
    assert queue(database, job_id, objects, "archive") == 0  # already sent: left alone
    assert node.run_round(t0 + timedelta(seconds=5)) == RoundSummary()
    assert len(scp.received()) == 1
    [row] = rows(database, job_id=job_id)
    assert (row.state, row.attempts) == ("sent", 4)


def test_dead_after_max_attempts_then_cli_resend(
    database: Database, database_url: str, tmp_path: Path, scp: StoreSCP
) -> None:
    runner = CliRunner()
    config = str(
        write_toml(
            tmp_path / "node.toml", {"data_dir": tmp_path / "data", "database_url": database_url}
        )
    )
    spool = tmp_path / "spool"
    job_id = make_done_job(database)
    queue(database, job_id, [write_result(spool, job_id)], "archive")
    node = exporter(database, spool, export_settings(scp.port, max_attempts=2))
    t0 = utcnow()
    assert node.run_round(t0) == RoundSummary(retrying=1)
    assert node.run_round(t0 + timedelta(seconds=1)) == RoundSummary(dead=1)
    assert node.run_round(t0 + timedelta(days=1)) == RoundSummary()

    result = runner.invoke(app, ["exports", "list", "-c", config, "--state", "dead", "--json"])
    assert result.exit_code == 0, result.output
    [dead] = json.loads(result.output)
    assert (dead["job_id"], dead["destination"], dead["attempts"]) == (job_id, "archive", 2)
    assert f"association with {SCP_AE}@127.0.0.1:{scp.port}" in dead["error"]
    assert dead["next_attempt_at"] is None
    assert "export.dead" in event_kinds(database, job_id)

    result = runner.invoke(app, ["jobs", "retry", str(job_id), "-c", config])
    assert result.exit_code == 0 and "1 dead export(s)" in result.output, result.output
    result = runner.invoke(app, ["jobs", "retry", str(job_id), "-c", config])
    assert result.exit_code == 1 and "only failed or dead jobs retry" in result.output
    scp.start()
    assert node.run_round() == RoundSummary(sent=1)
    assert len(scp.received()) == 1
    result = runner.invoke(app, ["exports", "list", "-c", config, "--job", str(job_id)])
    assert result.exit_code == 0 and "sent" in result.output and "archive" in result.output
    with database.session() as session:
        job = session.get_one(Job, job_id)
        assert job.state == JobState.DONE and job.attempts == 0  # nothing re-computed
    kinds = event_kinds(database, job_id)
    assert "export.retry" in kinds and "job.retry_requested" not in kinds


def test_unconfigured_destination_and_missing_file(
    database: Database, tmp_path: Path, scp: StoreSCP
) -> None:
    spool = tmp_path / "spool"
    job_id = make_done_job(database)
    kept = write_result(spool, job_id, "kept.dcm")
    lost = write_result(spool, job_id, "lost.dcm")
    queue(database, job_id, [kept, lost], "archive", "removed")
    (spool / lost[1]).unlink()
    scp.start()
    node = exporter(database, spool, export_settings(scp.port, max_attempts=2))
    t0 = utcnow()

    assert node.run_round(t0) == RoundSummary(sent=1, retrying=2, dead=1)
    state = {(r.destination, r.sop_instance_uid): r for r in rows(database)}
    assert state["archive", kept[0]].state == "sent"
    missing = state["archive", lost[0]]
    assert (missing.state, missing.attempts) == ("dead", 1)
    assert missing.error is not None
    assert "missing from the spool" in missing.error and "cannot re-create" in missing.error
    assert state["removed", kept[0]].error == "destination 'removed' is no longer configured"
    assert node.run_round(t0 + timedelta(seconds=1)) == RoundSummary(dead=2)
    assert len(scp.received()) == 1

    # queueing again resets every row not sent; the sent one stays sent
    assert queue(database, job_id, [kept, lost], "archive", "removed") == 3
    assert {r.state for r in rows(database)} == {"pending", "sent"}
    assert [r.attempts for r in rows(database, state=ExportState.PENDING)] == [0, 0, 0]


def test_retry_needs_dead_exports(database: Database) -> None:
    job_id = make_done_job(database)
    with database.session() as session, pytest.raises(JobStateError, match="no dead exports"):
        exports.retry_dead_exports(session, job_id=job_id, requested_by="test")


def test_node_exports_in_the_background(
    node_factory: Callable[..., Node], tmp_path: Path, scp: StoreSCP
) -> None:
    scp.start()
    destination = {"name": "archive", "ae_title": SCP_AE, "host": "127.0.0.1", "port": scp.port}
    node = node_factory(export={"destinations": [destination], "poll_seconds": 0.05})
    job_id = make_done_job(node.database)
    sop_uid, relative = write_result(node.spool.layout.root, job_id)
    queue(node.database, job_id, [(sop_uid, relative)], "archive")

    delivered = "the exporter to deliver"
    wait_for(lambda: len(scp.received()) == 1, timeout=15, what=delivered, interval=0.05)
    marked = "the export to be marked sent"
    wait_for(lambda: rows(node.database)[0].state == "sent", timeout=15, what=marked, interval=0.05)
    [received] = scp.received()
    assert str(read_file_meta_info(received).MediaStorageSOPInstanceUID) == sop_uid


def test_tls_destination_with_client_certificate(
    database: Database, tmp_path: Path, certificates: dict[str, Path]
) -> None:
    spool = tmp_path / "spool"
    job_id = make_done_job(database)
    sop_uid, relative = write_result(spool, job_id)
    scp = StoreSCP(tmp_path / "received", free_port(), tls=certificates)
    scp.start()
    try:
        no_client_cert = DestinationTLS(enabled=True, ca_file=certificates["ca.pem"])
        with_client_cert = DestinationTLS(
            enabled=True,
            ca_file=certificates["ca.pem"],
            cert_file=certificates["client.pem"],
            key_file=certificates["client.key"],
        )
        destinations = [
            DimseDestination(name=name, ae_title=SCP_AE, host="127.0.0.1", port=scp.port, tls=tls)
            for name, tls in (("anonymous", no_client_cert), ("archive", with_client_cert))
        ]
        queue(database, job_id, [(sop_uid, relative)], "anonymous", "archive")
        settings = ExportSettings(destinations=destinations, initial_backoff_s=60)
        exporter(database, spool, settings).run_round()
        refused, sent = sorted(rows(database, job_id=job_id), key=lambda r: r.destination)
        assert refused.destination == "anonymous" and refused.state == "pending"
        assert refused.error is not None and refused.attempts == 1
        assert sent.destination == "archive" and sent.state == "sent"
        [received] = scp.received()
        assert dataset_bytes(received) == dataset_bytes(spool / relative)
    finally:
        scp.stop()


def _variants(union: object) -> set[type]:
    """The settings classes of a (possibly one-member, Annotated) tagged union."""
    if typing.get_origin(union) is typing.Annotated:
        return _variants(typing.get_args(union)[0])
    if typing.get_origin(union) in (typing.Union, types.UnionType):
        return set().union(*(_variants(member) for member in typing.get_args(union)))
    assert isinstance(union, type)
    return {union}


def test_every_destination_kind_has_a_sender() -> None:
    assert _variants(Destination) == {DimseDestination, DicomWebDestination}
    assert registered_variants() == _variants(Destination)


def test_destinations_are_tagged_by_kind_dimse_by_default() -> None:
    table = {"name": "pacs", "ae_title": "PACS", "host": "10.0.0.5", "port": 104}
    default = ExportSettings(destinations=[table])
    explicit = ExportSettings(destinations=[{**table, "kind": "dimse"}])
    assert default == explicit and isinstance(default.destinations[0], DimseDestination)
    with pytest.raises(ValidationError, match="stow-rs"):
        ExportSettings(destinations=[{**table, "kind": "stow-rs"}])
