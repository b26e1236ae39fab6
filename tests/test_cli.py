"""The admin CLI, run in-process against a real node and database."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from harness import wait_for, write_toml
from typer.testing import CliRunner

import dicom_factory
from db.models import Job, JobState
from db.session import Database
from dicom_node.app.node import Node
from dicom_node.cli.main import app
from models.demo import DEMO_BUNDLE_DIR

runner = CliRunner()


def write_config(tmp_path: Path, database_url: str) -> Path:
    return write_toml(
        tmp_path / "node.toml", {"data_dir": tmp_path / "data", "database_url": database_url}
    )


def invoke(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


def test_db_upgrade_then_empty_lists(tmp_path: Path, database_url: str) -> None:
    config = str(write_config(tmp_path, database_url))
    assert invoke("db", "upgrade", "--config", config)[0] == 0
    assert invoke("db", "upgrade", "--config", config)[0] == 0  # idempotent
    code, out = invoke("jobs", "list", "--config", config, "--json")
    assert code == 0 and json.loads(out) == []


def test_send_list_show_retry(tmp_path: Path, database_url: str, node_factory) -> None:  # type: ignore[no-untyped-def]
    node: Node = node_factory(database_url, completion={"quiet_seconds": 0.2})
    config = str(write_config(tmp_path, database_url))
    dicom_factory.write(
        dicom_factory.text_report(study_uid="1.2.3.4", text="no images"), tmp_path / "in" / "r.dcm"
    )
    dicom_factory.write(dicom_factory.ultrasound(patient_id="P9"), tmp_path / "in" / "u.dcm")
    (tmp_path / "in" / "notes.txt").write_text("not dicom")
    code, out = invoke(
        "send", "127.0.0.1", str(node.port), str(tmp_path / "in"), "--aet", "MY_PACS"
    )
    assert code == 1  # the text file could not be sent
    assert "sent 2 of 3" in out
    assert invoke("echo", "127.0.0.1", str(node.port))[0] == 0
    assert invoke("echo", "127.0.0.1", str(node.port), "--aec", "WRONG")[0] == 1

    def listed_jobs() -> list[dict[str, Any]]:
        code, out = invoke("jobs", "list", "--config", config, "--json")
        assert code == 0, out
        return list(json.loads(out))

    def both_finished() -> list[dict[str, Any]]:
        jobs = listed_jobs()
        finished = len(jobs) == 2 and all(j["state"] in ("done", "failed") for j in jobs)
        return jobs if finished else []

    jobs = wait_for(
        both_finished,
        timeout=15,
        what="both jobs to finish",
        interval=0.2,
        describe=lambda: str(listed_jobs()),
    )
    failed = next(j for j in jobs if j["state"] == "failed")
    done = next(j for j in jobs if j["state"] == "done")
    assert failed["calling_ae"] == "MY_PACS" and "no usable ultrasound image" in failed["error"]

    code, out = invoke("jobs", "list", "--config", config, "--state", "failed", "--json")
    assert [j["id"] for j in json.loads(out)] == [failed["id"]]
    code, out = invoke("jobs", "list", "--config", config, "--patient", done["patient_pseudonym"])
    assert code == 0 and done["patient_pseudonym"] in out and "P9" not in out
    code, out = invoke("studies", "list", "--config", config, "--ae", "MY_PACS", "--json")
    assert len(json.loads(out)) == 2
    code, out = invoke("studies", "list", "--config", config, "--since", "2999-01-01", "--json")
    assert json.loads(out) == []

    code, out = invoke("jobs", "show", str(failed["id"]), "--config", config)
    assert code == 0 and "intake started" in out and "failed" in out
    code, out = invoke("jobs", "show", str(failed["id"]), "--config", config, "--json")
    assert json.loads(out)["job"]["state"] == "failed"

    assert invoke("jobs", "retry", str(done["id"]), "--config", config)[0] == 1  # not failed
    assert invoke("jobs", "retry", "999999", "--config", config)[0] == 1
    code, out = invoke("jobs", "retry", str(failed["id"]), "--config", config)
    assert code == 0
    database = Database(database_url)

    def rerun_events() -> list[str]:  # the running node picks the retried job up again
        with database.session() as session:
            retried = session.get_one(Job, failed["id"])
            events = [e.kind for e in retried.events]
            rerun = retried.state == JobState.FAILED and retried.attempts == 1
        return events if rerun and events.count("stage.started") == 2 else []

    events = wait_for(rerun_events, timeout=15, what="the retried job to run again", interval=0.2)
    assert "job.retry_requested" in events
    database.dispose()


@pytest.mark.parametrize(
    "args", [["jobs", "list", "--since", "yesterday"], ["jobs", "list", "--state", "exploded"]]
)
def test_bad_arguments_are_usage_errors(tmp_path: Path, args: list[str]) -> None:
    config = str(write_config(tmp_path, f"sqlite:///{tmp_path / 'x.db'}"))
    assert invoke(*args, "--config", config)[0] == 2


def test_bad_config_is_a_clear_error(tmp_path: Path) -> None:
    bad = write_toml(tmp_path / "bad.toml", {"dicom": {"host": "0.0.0.0"}})
    code, out = invoke("jobs", "list", "--config", str(bad))
    assert code == 2 and "allowed_callers" in out
    code, out = invoke("jobs", "list", "--config", str(tmp_path / "missing.toml"))
    assert code == 2 and "not found" in out


def test_risk_map_show_and_a_build_without_data(tmp_path: Path) -> None:
    code, output = invoke("risk-map", "show", "--bundle", str(DEMO_BUNDLE_DIR))
    assert code == 0, output
    assert "longitudinal.right" in output and "Dice median" in output
    assert "LLNM rate by capsule distance" in output
    code, output = invoke("risk-map", "build", "--data", str(tmp_path), "--bundle", str(tmp_path))
    assert code == 1 and "holds no cases.jsonl" in " ".join(output.split())
    code, output = invoke("risk-map", "show", "--bundle", str(tmp_path))
    assert code == 1 and "no risk map" in " ".join(output.split())
