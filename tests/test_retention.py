"""Retention: ``llnm-node purge`` removes delivered originals, old working folders and
quarantined files (dry run first, audited), and accession numbers are not kept in the clear."""

from __future__ import annotations

import os
import time
from pathlib import Path

from harness import write_toml
from sqlalchemy import inspect, select
from test_cli import invoke
from test_imaging_jobs import Factory, finished_jobs
from test_report_stage import _delivered, _node_with_pacs, _send_as_pacs

from db.models import Event
from dicom_node.network import scu
from phantoms import make_case


def _files(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file()} if folder.is_dir() else set()


def test_purge_lists_then_removes_what_the_rules_allow(
    node_factory: Factory, tmp_path: Path
) -> None:
    node, pacs = _node_with_pacs(node_factory, tmp_path)
    try:
        _send_as_pacs(node, [make_case(21).datasets[0]], tmp_path / "case")
        (job,) = finished_jobs(node, 1, timeout=120)
        assert job.state == "done", job.error
        _delivered(node, pacs, 2)
        (node.spool.layout.quarantine / "old.dcm").write_bytes(b"refused two days ago")
    finally:
        pacs.stop()
    spool = node.spool.layout
    stamp = time.time() - 2 * 86400
    os.utime(spool.quarantine / "old.dcm", (stamp, stamp))
    (spool.quarantine / "new.dcm").write_bytes(b"refused today")
    originals, work = _files(spool.incoming), spool.work_dir(job.id)
    assert originals and work.is_dir()
    config = str(
        write_toml(
            tmp_path / "purge.toml",
            {
                "data_dir": node.settings.data_dir,
                "database_url": node.settings.resolved_database_url,
                "retention": {"originals_days": 0, "work_days": 0, "quarantine_days": 1},
            },
        )
    )
    code, out = invoke("purge", "--config", config)
    assert code == 0 and "dry run" in out, out
    assert _files(spool.incoming) == originals and work.is_dir()  # nothing removed yet
    code, out = invoke("purge", "--config", config, "--apply")
    assert code == 0 and "removed: 1 originals, 1 work, 1 quarantine" in out, out
    assert _files(spool.incoming) == set() and not work.exists()
    assert {p.name for p in spool.quarantine.iterdir()} == {"new.dcm"}
    with node.database.session() as session:
        (event,) = session.scalars(select(Event).where(Event.kind == "retention.purged")).all()
        assert event.detail is not None and event.detail["removed"]["originals"] == 1
        assert "(cli)" in event.detail["actor"]
        columns = {c["name"] for c in inspect(session.connection()).get_columns("studies")}
    assert "accession_number" not in columns


def test_a_study_with_results_still_to_send_keeps_its_files(
    node_factory: Factory, tmp_path: Path
) -> None:
    node = node_factory(
        export={
            "destinations": [{"name": "down", "ae_title": "DOWN", "host": "127.0.0.1", "port": 9}],
            "initial_backoff_s": 60,
        }
    )
    peer = scu.Peer("127.0.0.1", node.port, node.settings.dicom.ae_title, "DOWN")
    path = tmp_path / "case.dcm"
    make_case(22).datasets[0].save_as(path, enforce_file_format=True)
    assert [o.status for o in scu.send_files(peer, [path])] == [0]
    (job,) = finished_jobs(node, 1, timeout=120)
    assert job.state == "done", job.error
    config = str(
        write_toml(
            tmp_path / "purge.toml",
            {
                "data_dir": node.settings.data_dir,
                "database_url": node.settings.resolved_database_url,
                "retention": {"originals_days": 0, "work_days": 0},
            },
        )
    )
    code, out = invoke("purge", "--config", config, "--apply")
    assert code == 0 and "removed: 0 originals, 0 work" in out, out
    assert _files(node.spool.layout.incoming)
