"""A planted or corrupt stage output on the shared spool: nothing runs, the job fails cleanly.

A worker of the distributed mode reads the previous stage's output from the
spool before its stage runs. Each file below is planted where the features
stage's output of a running job lies, and the infer stage's task is run as a
worker runs it (``run_stage_task``): the file must not load, the infer stage
must not start, no code in the file may run, and the job must record the
failure and be queued again (to recompute from its first stage).
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_pipeline import job, queued_job
from test_stage_outputs import Payload, real_outputs

from db.session import Database
from models.demo import DEMO_BUNDLE_DIR
from pipeline.celery_executor import celery_app, run_stage_task
from pipeline.graph import default_stages
from pipeline.report.inputs import ReportOptions
from pipeline.runner import JobRunner, RetryPolicy
from pipeline.spool import SpoolLayout
from pipeline.stage_outputs import save_output
from pipeline.stage_outputs.schema import DOCUMENT

FEATURES, INFER = 4, 5  # stage indices


def _plant_pickle(folder: Path, marker: Path) -> None:
    (folder / DOCUMENT).write_bytes(pickle.dumps(Payload(marker), protocol=4))


def _plant_object_array(folder: Path, marker: Path) -> None:
    objects = np.array([Payload(marker)], dtype=object)
    np.save(folder / "0.npy", objects, allow_pickle=True)


def _plant_json(folder: Path, marker: Path) -> None:
    document = json.loads((folder / DOCUMENT).read_text())
    crop = document["value"]["views"][0]["segmented"]["crop"]
    crop["png_path"] = "../../../../../../etc/passwd"  # a path out of the spool
    (folder / DOCUMENT).write_text(json.dumps(document))


def _plant_schema(folder: Path, marker: Path) -> None:
    document = json.loads((folder / DOCUMENT).read_text())
    document["schema_version"] += 1
    (folder / DOCUMENT).write_text(json.dumps(document))


def _plant_truncated(folder: Path, marker: Path) -> None:
    array = folder / "0.npy"
    array.write_bytes(array.read_bytes()[:-7])


PLANTS: dict[str, Callable[[Path, Path], None]] = {
    "crafted pickle": _plant_pickle,
    "pickle inside an array file": _plant_object_array,
    "crafted JSON": _plant_json,
    "wrong schema version": _plant_schema,
    "truncated array": _plant_truncated,
}


@pytest.mark.parametrize("plant", PLANTS, ids=list(PLANTS))
def test_a_planted_output_runs_nothing_and_the_job_fails_cleanly(
    database: Database, tmp_path: Path, plant: str
) -> None:
    spool = SpoolLayout.at(tmp_path / "spool")
    job_id = queued_job(database, tmp_path)
    runner = JobRunner(
        database=database,
        spool=spool,
        stages=default_stages(
            DEMO_BUNDLE_DIR,
            spool=spool,
            report=ReportOptions(),
            destinations_for=lambda calling_ae: [],
        ),
        retry=RetryPolicy(max_attempts=3, backoff_s=0),
    )
    attempt = runner.claim(job_id)
    assert attempt is not None
    folder = spool.stage_output(job_id, FEATURES, "features")
    save_output(folder, real_outputs(spool.root)["features"], root=spool.root)
    marker = tmp_path / "marker"
    PLANTS[plant](folder, marker)

    app = celery_app("redis://127.0.0.1:1/0", visibility_timeout_s=60)  # never reached
    outcome = run_stage_task(app, runner, job_id, INFER, attempt)

    assert outcome == "failed"
    assert not marker.exists()  # no code in the file ran
    detail = job(database, job_id)
    started: list[Any] = [e.detail for e in detail.events if e.kind == "stage.started"]
    assert all(d["stage"] != "infer" for d in started)  # the stage never started
    assert detail.job.state == "queued"  # retried: the next attempt recomputes the output
    assert detail.job.error is not None
    assert detail.job.error.startswith("infer: input not readable: ")
    assert str(folder) in detail.job.error  # names the output, not a value in it
    retry = detail.events[-1]
    assert retry.kind == "job.retry_scheduled" and "input not readable" in retry.message
