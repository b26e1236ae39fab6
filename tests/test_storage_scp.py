"""The listener in-process, over real loopback sockets, with pynetdicom as the peer."""

from __future__ import annotations

import errno
import logging
import os
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import psycopg
import pytest
from harness import wait_for
from pydicom import dcmread
from pydicom.uid import PYDICOM_ROOT_UID, SecondaryCaptureImageStorage, generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from sqlalchemy import func, select

import dicom_factory
from db.models import Event, Instance, Job, JobState, Study
from dicom_node.app.listeners import ListenerProcesses
from dicom_node.app.node import Node
from dicom_node.network import scu
from dicom_node.network import spool as spool_module
from dicom_node.network.statuses import StoreStatus
from dicom_node.network.tls import client_context

Factory = Callable[..., Node]


def peer(node: Node, calling_ae: str = "TEST_SCU", tls: ssl.SSLContext | None = None) -> scu.Peer:
    return scu.Peer(
        host="127.0.0.1",
        port=node.port,
        called_ae=node.settings.dicom.ae_title,
        calling_ae=calling_ae,
        tls=tls,
    )


def dataset_bytes(path: Path) -> bytes:
    """The bytes after the file meta group: what travels over the network."""
    with path.open("rb") as fh:
        ds = dcmread(fh, stop_before_pixels=True)
        start = 132 + 12 + int(ds.file_meta.FileMetaInformationGroupLength)
    return path.read_bytes()[start:]


def events(node: Node, kind: str) -> list[Event]:
    with node.database.session() as session:
        return list(session.scalars(select(Event).where(Event.kind == kind)))


def job_states(node: Node) -> list[JobState]:
    with node.database.session() as session:
        return list(session.scalars(select(Job.state).order_by(Job.id)))


def wait_for_jobs(node: Node, *states: JobState) -> None:
    """Wait until the node's jobs, oldest first, are in ``states``."""
    wait_for(
        lambda: job_states(node) == list(states),
        timeout=60,  # jobs run the whole pipeline on the CPU: allow for a busy CI machine
        what=f"jobs {[str(s) for s in states]}",
        interval=0.05,
        describe=lambda: f"jobs now: {job_states(node)}",
    )


VENDOR = [
    "US1_J2KR.dcm",
    "gdcm-US-ALOKA-16_big.dcm",
    "OBXXXX1A_rle.dcm",
    "color3d_jpeg_baseline.dcm",
    "color-pl.dcm",
]


def test_vendor_files_stored_byte_for_byte_and_analysed(
    database_url: str, node_factory: Factory, vendor_dir: Path
) -> None:
    node = node_factory(database_url)
    files = [vendor_dir / name for name in VENDOR]
    outcomes = scu.send_files(peer(node), files)
    assert [o.status for o in outcomes] == [0] * len(files)
    with node.database.session() as session:
        stored = {i.sop_instance_uid: i for i in session.scalars(select(Instance))}
    assert len(stored) == len(files)
    for path in files:
        uid = dcmread(path, stop_before_pixels=True).SOPInstanceUID
        spool_file = node.spool.layout.path_of(stored[uid].path)
        assert dataset_bytes(spool_file) == dataset_bytes(path), path.name
        assert dcmread(spool_file).file_meta.TransferSyntaxUID == stored[uid].transfer_syntax_uid
    wait_for_jobs(node, *[JobState.DONE] * len(files))  # one study each


def test_resend_is_deduplicated(node_factory: Factory, tmp_path: Path, vendor_dir: Path) -> None:
    node = node_factory(completion={"quiet_seconds": 3600})
    study = generate_uid()
    files = [
        dicom_factory.write(
            dicom_factory.ultrasound(study_uid=study, seed=i), tmp_path / f"{i}.dcm"
        )
        for i in range(3)
    ]
    assert all(o.ok for o in scu.send_files(peer(node), files))
    assert all(o.ok for o in scu.send_files(peer(node), files))  # same bytes again
    # the Aloka pair shares a SOP Instance UID with different bytes: first copy kept, warned
    aloka = [vendor_dir / "gdcm-US-ALOKA-16.dcm", vendor_dir / "gdcm-US-ALOKA-16_big.dcm"]
    assert all(o.ok for o in scu.send_files(peer(node), aloka))
    with node.database.session() as session:
        assert session.scalar(select(func.count(Instance.id))) == 4
        assert session.scalar(select(func.count(Job.id))) == 2
        assert sum(session.scalars(select(Instance.duplicates_received))) == 4
    assert len(events(node, "instance.duplicate_differs")) == 1


def test_resend_under_another_study_keeps_the_first_copy(
    node_factory: Factory, tmp_path: Path
) -> None:
    node = node_factory(completion={"quiet_seconds": 3600})
    sop = generate_uid()
    first, second = (
        dicom_factory.write(
            dicom_factory.ultrasound(sop_uid=sop, seed=i), tmp_path / f"{i}.dcm"
        )  # each gets a new Study Instance UID
        for i in range(2)
    )
    assert [o.status for o in scu.send_files(peer(node), [first, second])] == [0, 0]
    with node.database.session() as session:
        (instance,) = session.scalars(select(Instance))
        assert instance.duplicates_received == 1
    assert dataset_bytes(node.spool.layout.path_of(instance.path)) == dataset_bytes(first)
    assert len(list(node.spool.layout.incoming.glob("*/*.dcm"))) == 1  # the second copy was dropped
    assert len(events(node, "instance.duplicate_differs")) == 1


def test_file_left_by_a_crash_before_registration_is_replaced(
    node_factory: Factory, tmp_path: Path
) -> None:
    node = node_factory(completion={"quiet_seconds": 3600})
    ds = dicom_factory.ultrasound()
    path = dicom_factory.write(ds, tmp_path / "x.dcm")
    target = node.spool.layout.path_of(
        node.spool.layout.instance_path(study_uid=ds.StudyInstanceUID, sop_uid=ds.SOPInstanceUID)
    )
    target.parent.mkdir(parents=True)
    target.write_bytes(path.read_bytes()[:1000])  # half a file, never acknowledged
    assert scu.send_files(peer(node), [path])[0].status == StoreStatus.SUCCESS
    with node.database.session() as session:
        (instance,) = session.scalars(select(Instance))
        assert instance.duplicates_received == 0
    assert dataset_bytes(target) == dataset_bytes(path)


def test_study_over_several_associations_is_one_job_and_late_instance_a_new_version(
    node_factory: Factory, tmp_path: Path
) -> None:
    node = node_factory(completion={"quiet_seconds": 0.5})
    study = generate_uid()
    for i in range(3):  # three associations
        path = dicom_factory.write(
            dicom_factory.ultrasound(study_uid=study, seed=i), tmp_path / f"{i}.dcm"
        )
        assert scu.send_files(peer(node), [path])[0].ok
    wait_for_jobs(node, JobState.DONE)
    late = dicom_factory.write(
        dicom_factory.ultrasound(study_uid=study, seed=9), tmp_path / "l.dcm"
    )
    assert scu.send_files(peer(node), [late])[0].ok
    wait_for_jobs(node, JobState.DONE, JobState.DONE)
    with node.database.session() as session:
        versions = list(session.scalars(select(Job.version).order_by(Job.id)))
        assert versions == [1, 2]
        assert session.scalars(select(Study)).one().instance_count == 4


def test_report_sr_is_found_by_intake(node_factory: Factory, tmp_path: Path) -> None:
    node = node_factory()
    study = generate_uid()
    image = dicom_factory.write(dicom_factory.ultrasound(study_uid=study), tmp_path / "i.dcm")
    report = dicom_factory.write(
        dicom_factory.text_report(study_uid=study, text="Right lobe nodule, TI-RADS 5."),
        tmp_path / "r.dcm",
    )
    assert all(o.ok for o in scu.send_files(peer(node), [image, report]))
    wait_for_jobs(node, JobState.DONE)
    done = [e for e in events(node, "stage.done") if e.detail and e.detail["stage"] == "intake"]
    summary = done[0].detail["summary"]  # type: ignore[index]
    assert summary["report_found"] is True
    assert summary["ultrasound_images"] == 1
    assert summary["report_characters"] > len("Right lobe nodule")


def test_study_without_usable_images_fails_with_reason(
    node_factory: Factory, tmp_path: Path
) -> None:
    node = node_factory()
    report = dicom_factory.write(
        dicom_factory.text_report(study_uid=generate_uid(), text="report only"), tmp_path / "r.dcm"
    )
    assert scu.send_files(peer(node), [report])[0].ok
    wait_for_jobs(node, JobState.FAILED)
    with node.database.session() as session:
        error = session.scalars(select(Job.error)).one()
    assert error is not None and "no usable ultrasound image" in error


@pytest.mark.parametrize(
    ("make", "status"),
    [
        (lambda: dicom_factory.ct(), StoreStatus.SOP_CLASS_NOT_SUPPORTED),
        (
            lambda: dicom_factory.ultrasound(sop_class=SecondaryCaptureImageStorage, modality="CT"),
            StoreStatus.SOP_CLASS_NOT_SUPPORTED,
        ),
    ],
)
def test_non_ultrasound_is_refused_and_recorded(
    node_factory: Factory, tmp_path: Path, make: Callable[[], object], status: StoreStatus
) -> None:
    node = node_factory()
    path = dicom_factory.write(make(), tmp_path / "x.dcm")  # type: ignore[arg-type]
    assert scu.send_files(peer(node), [path])[0].status == status
    refused = events(node, "instance.refused")
    assert len(refused) == 1 and refused[0].detail["status"] == status  # type: ignore[index]
    assert scu.echo(peer(node)) == 0  # still alive


def _corrupt(tmp_path: Path, how: str) -> Path:
    good = dicom_factory.write(dicom_factory.ultrasound(rows=128, columns=128), tmp_path / "g.dcm")
    data = good.read_bytes()
    ds = dcmread(good, stop_before_pixels=True)
    meta_end = 132 + 12 + int(ds.file_meta.FileMetaInformationGroupLength)
    bad = tmp_path / f"{how}.dcm"
    if how == "garbage":
        bad.write_bytes(data[:meta_end] + b"\xff\xee" * 500)
    elif how == "truncated":
        bad.write_bytes(data[:-4000])
    else:  # the file meta (and so the request) names another SOP instance than the data set
        other = dcmread(good)
        other.SOPInstanceUID = generate_uid()
        renamed = dicom_factory.write(other, tmp_path / "renamed.dcm")
        bad.write_bytes(data[:meta_end] + dataset_bytes(renamed))
    return bad


@pytest.mark.parametrize(
    ("how", "status"),
    [
        ("garbage", StoreStatus.CANNOT_UNDERSTAND),
        ("truncated", StoreStatus.CANNOT_UNDERSTAND),
        ("mismatch", StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS),
    ],
)
def test_malformed_instances_are_quarantined(
    node_factory: Factory,
    tmp_path: Path,
    how: str,
    status: StoreStatus,
    caplog: pytest.LogCaptureFixture,
) -> None:
    node = node_factory()
    bad = _corrupt(tmp_path, how)
    with caplog.at_level(logging.INFO):
        assert scu.send_files(peer(node), [bad])[0].status == status
    assert "refused with" in caplog.text
    assert PYDICOM_ROOT_UID not in caplog.text  # UIDs identify: never in the logs
    quarantined = sorted(node.spool.layout.quarantine.glob("*.dcm"))
    assert len(quarantined) == 1
    assert quarantined[0].with_suffix(".txt").read_text().strip()
    assert (
        dataset_bytes(quarantined[0])
        == bad.read_bytes()[len(bad.read_bytes()) - len(dataset_bytes(quarantined[0])) :]
    )
    assert list(node.spool.layout.incoming.rglob("*.dcm")) == []
    assert scu.echo(peer(node)) == 0


def _associates(node: Node, calling_ae: str, called_ae: str) -> bool:
    """Whether an association is accepted (it is released again at once)."""
    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", node.port, ae_title=called_ae)
    established = bool(assoc.is_established)
    if established:
        assoc.release()
    else:
        assert assoc.is_rejected
    return established


def test_association_policy(node_factory: Factory) -> None:
    node = node_factory(
        dicom={
            "allowed_callers": [
                {"ae_title": "PACS"},
                {"ae_title": "REMOTE", "hosts": ["10.0.0.0/8"]},
            ],
            "max_associations": 2,
            "listener_processes": 2,  # the limit holds over both
        }
    )
    assert _associates(node, "PACS", "LLNM_NODE")
    for calling, called in [("STRANGER", "LLNM_NODE"), ("REMOTE", "LLNM_NODE"), ("PACS", "WRONG")]:
        assert not _associates(node, calling, called), (calling, called)
    reasons = [e.detail["reason"] for e in events(node, "association.rejected")]  # type: ignore[index]
    assert reasons == [
        "CALLING_AE_NOT_RECOGNISED",
        "CALLING_AE_NOT_RECOGNISED",
        "CALLED_AE_NOT_RECOGNISED",
    ]
    # association limit: two open ones are fine, the third is turned away
    ae = AE(ae_title="PACS")
    ae.add_requested_context(Verification)
    held = [ae.associate("127.0.0.1", node.port, ae_title="LLNM_NODE") for _ in range(2)]
    assert all(a.is_established for a in held)
    third = ae.associate("127.0.0.1", node.port, ae_title="LLNM_NODE")
    assert third.is_rejected
    for assoc in held:
        assoc.release()
    assert _associates(node, "PACS", "LLNM_NODE")


def test_associations_are_spread_over_the_listener_processes(node_factory: Factory) -> None:
    """Connections opened right after the start land on the least busy listener process.

    Both processes accept from one queue from the start: four associations held
    open at once are served two by each (a uniform hash of connections over
    per-process sockets splits them 2/2 with probability 6/16).
    """
    node = node_factory(dicom={"listener_processes": 2})
    assert isinstance(node.listener, ListenerProcesses)
    ae = AE(ae_title="PACS")
    ae.add_requested_context(Verification)
    held = [ae.associate("127.0.0.1", node.port, ae_title="LLNM_NODE") for _ in range(4)]
    try:
        assert all(assoc.is_established for assoc in held)
        ports = {assoc.dul.socket.socket.getsockname()[1] for assoc in held}  # type: ignore[union-attr]
        served = sorted(
            sum(
                1
                for connection in psutil.Process(pid).net_connections(kind="tcp")
                if connection.raddr and connection.raddr.port in ports
            )
            for pid in node.listener.pids
        )
    finally:
        for assoc in held:
            assoc.release()
    assert served == [2, 2]


def test_a_listener_process_that_cannot_restart_is_retried_with_back_off(
    node_factory: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A killed child whose replacements cannot start is tried after 1 s, 3 s, 7 s ... not
    every half second; once a replacement can start it takes its place."""
    node = node_factory(dicom={"listener_processes": 2})
    assert isinstance(node.listener, ListenerProcesses)
    victim, survivor = node.listener.pids
    monkeypatch.setattr(sys, "executable", "/bin/false")  # a replacement exits at once
    os.kill(victim, signal.SIGKILL)
    # noticed within 0.5 s; tries after 1 s, then 2 s later, then 4 s later (at 7 s or after)
    time.sleep(5.5)
    (restarted,) = events(node, "listener.restarted")
    assert restarted.detail == {"pid": victim, "exit_code": -signal.SIGKILL, "restart_in_s": 1.0}
    failed = events(node, "listener.restart_failed")
    assert [e.detail["retry_in_s"] for e in failed] == [2.0, 4.0]  # type: ignore[index]
    assert node.listener.pids == [survivor]
    assert scu.echo(peer(node)) == 0  # the other process serves meanwhile
    monkeypatch.undo()
    wait_for(lambda: len(node.listener.pids) == 2, timeout=30, what="a replacement")  # type: ignore[union-attr]
    assert len(events(node, "listener.restart_failed")) == 2
    assert scu.echo(peer(node)) == 0


def test_tls_listener_with_mutual_authentication(
    node_factory: Factory, certificates: dict[str, Path], tmp_path: Path
) -> None:
    node = node_factory(
        dicom={
            "tls": {
                "enabled": True,
                "cert_file": certificates["server.pem"],
                "key_file": certificates["server.key"],
                "ca_file": certificates["ca.pem"],
            }
        }
    )
    trusted = client_context(
        ca_file=certificates["ca.pem"],
        cert_file=certificates["client.pem"],
        key_file=certificates["client.key"],
    )
    assert scu.echo(peer(node, tls=trusted)) == 0
    path = dicom_factory.write(dicom_factory.ultrasound(), tmp_path / "u.dcm")
    assert scu.send_files(peer(node, tls=trusted), [path])[0].ok
    with pytest.raises(scu.AssociationError):
        scu.echo(peer(node))  # plain TCP to a TLS port
    anonymous = client_context(ca_file=certificates["ca.pem"])
    with pytest.raises(scu.AssociationError):
        scu.echo(peer(node, tls=anonymous))  # no client certificate


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs, so the spool can really run out of space."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_disk_full_answers_out_of_resources_and_keeps_nothing_half_written(
    node_factory: Factory, tmp_path: Path, tiny_disk: Path
) -> None:
    filler = tiny_disk / "filler"
    filler.write_bytes(b"\0" * 1024 * 1024)
    node = node_factory(
        data_dir=tiny_disk / "data",
        database_url=f"sqlite:///{tmp_path / 'jobs.db'}",
        completion={"quiet_seconds": 3600},
        min_free_disk_mb=1,
    )
    study = generate_uid()
    files = [
        dicom_factory.write(
            dicom_factory.ultrasound(study_uid=study, rows=480, columns=640, seed=i),
            tmp_path / f"{i}.dcm",
        )
        for i in range(12)
    ]  # 12 x 300 kB > the 2 MiB left above the 1 MiB minimum
    outcomes = scu.send_files(peer(node), files)
    statuses = [o.status for o in outcomes]
    accepted = [o for o in outcomes if o.status == 0]
    refused = [o for o in outcomes if o.status == StoreStatus.OUT_OF_RESOURCES]
    assert accepted and refused and len(accepted) + len(refused) == len(files), statuses
    with node.database.session() as session:
        rows = {i.sop_instance_uid: i for i in session.scalars(select(Instance))}
    assert set(rows) == {o.sop_instance_uid for o in accepted}
    sent = {o.sop_instance_uid: o.path for o in accepted}
    for uid, row in rows.items():
        assert dataset_bytes(node.spool.layout.path_of(row.path)) == dataset_bytes(sent[uid])
    assert len(list(node.spool.layout.incoming.rglob("*.dcm"))) == len(rows)
    assert list(node.spool.layout.tmp.iterdir()) == []
    assert events(node, "instance.not_stored")
    (tiny_disk / "filler2").write_bytes(b"\0" * (node.spool.free_bytes() - 512 * 1024))
    with pytest.raises(scu.AssociationError):  # full: new associations are turned away
        scu.echo(peer(node))
    assert any(
        e.detail and e.detail["reason"] == "TEMPORARY_CONGESTION"
        for e in events(node, "association.rejected")
    )
    filler.unlink()  # space freed: the refused instances can be sent again
    (tiny_disk / "filler2").unlink()
    assert scu.echo(peer(node)) == 0
    again = scu.send_files(peer(node), [o.path for o in refused[:2]])
    assert [o.status for o in again] == [0, 0]


@pytest.mark.postgres
def test_database_down_answers_out_of_resources_then_recovers(
    postgres_url: str, node_factory: Factory, tmp_path: Path
) -> None:
    node = node_factory(postgres_url, completion={"quiet_seconds": 3600})
    name = postgres_url.rsplit("/", 1)[1]
    path = dicom_factory.write(dicom_factory.ultrasound(), tmp_path / "u.dcm")
    admin = "postgresql://postgres@127.0.0.1:5432/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,)
        )
    try:
        outcome = scu.send_files(peer(node), [path])[0]
        assert outcome.status == StoreStatus.OUT_OF_RESOURCES
        assert list(node.spool.layout.incoming.rglob("*.dcm")) == []  # nothing half-written
        assert scu.echo(peer(node)) == 0
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
    assert scu.send_files(peer(node), [path])[0].status == 0
    with node.database.session() as session:
        assert session.scalar(select(func.count(Instance.id))) == 1
    assert len(list(node.spool.layout.incoming.rglob("*.dcm"))) == 1


def test_partial_receptions_of_aborted_associations_are_swept(node_factory: Factory) -> None:
    node = node_factory()
    abandoned, live = node.spool.layout.tmp / "abandoned.dcm", node.spool.layout.tmp / "live.dcm"
    abandoned.write_bytes(b"\0" * 1000)
    live.write_bytes(b"\0" * 1000)
    day_ago = time.time() - 86_400
    os.utime(abandoned, (day_ago, day_ago))
    scu.echo(peer(node))  # the sweep runs when an association's connection closes
    wait_for(lambda: not abandoned.exists(), timeout=60, what="the sweep", interval=0.05)
    assert live.exists()
    (event,) = events(node, "spool.partial_removed")
    assert event.detail == {"files": 1, "idle_s": 240.0}


def test_an_instance_received_in_many_pdus_is_stored_byte_for_byte(
    node_factory: Factory, tmp_path: Path
) -> None:
    node = node_factory(dicom={"max_pdu": 16384}, completion={"quiet_seconds": 3600})
    ds = dicom_factory.ultrasound(rows=480, columns=640)  # 300 kB: about 19 PDUs of 16 kB
    path = dicom_factory.write(ds, tmp_path / "large.dcm")
    assert scu.send_files(peer(node), [path])[0].status == StoreStatus.SUCCESS
    with node.database.session() as session:
        (instance,) = session.scalars(select(Instance))
    assert dataset_bytes(node.spool.layout.path_of(instance.path)) == dataset_bytes(path)


def test_failed_fsync_answers_out_of_resources_and_registers_nothing(
    node_factory: Factory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    node = node_factory(completion={"quiet_seconds": 3600})
    study = generate_uid()
    first, second = (
        dicom_factory.write(
            dicom_factory.ultrasound(study_uid=study, seed=i), tmp_path / f"{i}.dcm"
        )
        for i in range(2)
    )
    assert scu.send_files(peer(node), [first])[0].status == StoreStatus.SUCCESS
    study_dir = node.spool.layout.path_of(
        node.spool.layout.instance_path(study_uid=study, sop_uid="1")
    ).parent
    synced_dirs: list[Path] = []

    def failing_fsync(path: Path) -> None:  # the disk fails after the file got its name
        synced_dirs.append(path)
        raise OSError(errno.EIO, "Input/output error")

    with monkeypatch.context() as patch:
        patch.setattr(spool_module, "fsync_dir", failing_fsync)
        assert scu.send_files(peer(node), [second])[0].status == StoreStatus.OUT_OF_RESOURCES
    assert synced_dirs == [study_dir]
    with node.database.session() as session:
        assert session.scalar(select(func.count(Instance.id))) == 1
    assert len(list(study_dir.glob("*.dcm"))) == 1  # the second file was removed
    (event,) = events(node, "instance.not_stored")
    assert "Input/output error" in event.message
    assert scu.send_files(peer(node), [second])[0].status == StoreStatus.SUCCESS  # the resend
    with node.database.session() as session:
        assert session.scalar(select(func.count(Instance.id))) == 2
