"""Intake on real files, and the runner's bookkeeping on both databases."""

from __future__ import annotations

import itertools
import shutil
from pathlib import Path

import pytest
from pydicom.uid import SecondaryCaptureImageStorage, generate_uid
from sqlalchemy.orm import Session

import dicom_factory
from db import events, jobs, listings, registration, results
from db.models import Job, JobState
from db.session import Database
from imaging.errors import StageError
from imaging.scope_reasons import Reason
from pipeline.contracts import InstanceRef, StudyInput
from pipeline.intake import INTAKE, IntakeReport, intake
from pipeline.runner import JobRunner, RetryPolicy
from pipeline.scope import NotAssessed
from pipeline.spool import SpoolLayout
from pipeline.stage import JobConcluded, Stage

_n = itertools.count()


def ref(path: Path) -> InstanceRef:
    from pydicom import dcmread

    return InstanceRef.of(dcmread(path, stop_before_pixels=True), path)


def study(*paths: Path, work: Path) -> StudyInput:
    return StudyInput(
        job_id=1, study_instance_uid="1.2", instances=tuple(ref(p) for p in paths), work_dir=work
    )


def test_intake_sorts_vendor_images_reports_and_rejects(vendor_dir: Path, tmp_path: Path) -> None:
    uid = generate_uid()
    sr = dicom_factory.write(
        dicom_factory.text_report(study_uid=uid, text="Left lobe, 8 mm hypoechoic nodule."),
        tmp_path / "sr.dcm",
    )
    sc_ct = dicom_factory.write(
        dicom_factory.ultrasound(sop_class=SecondaryCaptureImageStorage, modality="CT"),
        tmp_path / "sc.dcm",
    )
    broken = tmp_path / "broken.dcm"
    shutil.copy(vendor_dir / "US1_J2KR.dcm", broken)
    broken.write_bytes(broken.read_bytes()[:-100])
    instances = study(
        vendor_dir / "gdcm-US-ALOKA-16.dcm",
        vendor_dir / "color3d_jpeg_baseline.dcm",
        vendor_dir / "color-pl.dcm",
        sr,
        sc_ct,
        broken,
        work=tmp_path,
    )
    # With the site's scope rules none of these vendor images is a thyroid B-mode view.
    gated = intake(instances)
    assert isinstance(gated, NotAssessed)
    assert [e.exclusion.reason for e in gated.excluded] == [Reason.STUDY_OUT_OF_SCOPE] * 3
    assert INTAKE.summarize(gated)["not_assessed"] == "study_out_of_scope"
    # The sorting itself, with the gate off.
    report = intake(instances, None)
    assert isinstance(report, IntakeReport)
    assert [i.ref.path.name for i in report.images] == [
        "gdcm-US-ALOKA-16.dcm",
        "color3d_jpeg_baseline.dcm",
        "color-pl.dcm",
    ]
    aloka, cine, _ = report.images
    assert aloka.has_ultrasound_regions and aloka.photometric_interpretation == "PALETTE COLOR"
    assert cine.frames == 120 and cine.transfer_syntax_uid == "1.2.840.10008.1.2.4.50"
    assert report.reports[0].text == "Left lobe, 8 mm hypoechoic nodule."  # the model text
    reasons = {s.sop_instance_uid: s.reason for s in report.skipped}
    assert "not ultrasound" in reasons[ref(sc_ct).sop_instance_uid]
    assert any("unreadable" in r for r in reasons.values())
    summary = INTAKE.summarize(report)
    assert summary["ultrasound_images"] == 3 and summary["frames"] == 122
    assert "Left lobe" not in str(summary)  # report text stays out of the audit trail


def test_intake_without_images_is_a_stage_error(tmp_path: Path) -> None:
    sr = dicom_factory.write(
        dicom_factory.text_report(study_uid="1.2", text="x"), tmp_path / "r.dcm"
    )
    with pytest.raises(StageError, match="no usable ultrasound image"):
        intake(study(sr, work=tmp_path))


def queued_job(database: Database, tmp_path: Path) -> int:
    path = dicom_factory.write(dicom_factory.ultrasound(), tmp_path / f"spool/{next(_n)}.dcm")
    r = ref(path)
    with database.connection() as connection:
        registered = registration.register_instance(
            connection,
            new=registration.NewInstance(
                sop_instance_uid=r.sop_instance_uid,
                sop_class_uid=r.sop_class_uid,
                series_instance_uid=r.series_instance_uid,
                study_instance_uid=generate_uid(),
                transfer_syntax_uid="1.2.840.10008.1.2.1",
                modality="US",
                patient_id="P",
                issuer_of_patient_id="",
                study_date="",
                path=path.name,
                size_bytes=1,
                calling_ae="T",
            ),
        )
    with database.session() as session:
        session.get_one(Job, registered.job_id).state = JobState.QUEUED
    return registered.job_id


def job(database: Database, job_id: int) -> listings.JobDetail:
    with database.session() as session:
        return listings.job_detail(session, job_id=job_id)


def runner(database: Database, tmp_path: Path, *stages: Stage[object, object]) -> JobRunner:
    return JobRunner(
        database=database,
        spool=SpoolLayout.at(tmp_path / "spool"),
        stages=stages,
        retry=RetryPolicy(max_attempts=2, backoff_s=0),
    )


def test_runner_runs_intake_and_records_each_stage(database: Database, tmp_path: Path) -> None:
    job_id = queued_job(database, tmp_path)
    runner(database, tmp_path, INTAKE).run(job_id)  # type: ignore[arg-type]
    detail = job(database, job_id)
    assert detail.job.state == "done" and detail.job.attempts == 1
    kinds = [e.kind for e in detail.events]
    assert kinds[-3:] == ["stage.started", "stage.done", "job.done"]
    assert detail.events[-2].detail["summary"]["ultrasound_images"] == 1  # type: ignore[index]
    assert (tmp_path / "spool" / "work" / f"job-{job_id}").is_dir()
    runner(database, tmp_path, INTAKE).run(job_id)  # type: ignore[arg-type]
    assert job(database, job_id).job.attempts == 1  # not queued any more: not run twice


def test_bad_input_fails_at_once(database: Database, tmp_path: Path) -> None:
    def reject(_: object) -> object:
        raise StageError("no pixel data")

    job_id = queued_job(database, tmp_path)
    runner(database, tmp_path, Stage("check", reject, lambda _: {})).run(job_id)
    detail = job(database, job_id)
    assert detail.job.state == "failed" and detail.job.error == "check: no pixel data"


def test_unexpected_errors_are_retried_then_dead(database: Database, tmp_path: Path) -> None:
    calls = []

    def flaky(_: object) -> object:
        calls.append(1)
        raise ConnectionError("GPU host unreachable")

    job_id = queued_job(database, tmp_path)
    run = runner(database, tmp_path, Stage("segment", flaky, lambda _: {}, queue="gpu"))
    run.run(job_id)
    assert job(database, job_id).job.state == "queued"  # retry scheduled
    with database.session() as session:
        assert jobs.take_dispatchable_jobs(session) == [job_id]
    run.run(job_id)
    detail = job(database, job_id)
    assert len(calls) == 2
    assert detail.job.state == "dead" and "GPU host unreachable" in (detail.job.error or "")
    assert [e.kind for e in detail.events].count("job.retry_scheduled") == 1


def test_store_keeps_data_in_the_database_and_hands_on_its_return(
    database: Database, tmp_path: Path
) -> None:
    """A stage's ``store`` writes in the stage's transaction; the next stage gets its return."""
    received: list[object] = []

    def keep_secret(session: Session, job_id: int, value: dict[str, str]) -> str:
        events.record_event(session, kind="test.kept", job_id=job_id, message=value["secret"])
        return value["public"]

    first: Stage[object, dict[str, str]] = Stage(
        "split",
        lambda _: {"secret": "s3cret", "public": "ok"},
        lambda _: {},
        store=keep_secret,
    )
    second = Stage("next", received.append, lambda _: {})
    job_id = queued_job(database, tmp_path)
    runner(database, tmp_path, first, second).run(job_id)  # type: ignore[arg-type]
    detail = job(database, job_id)
    assert detail.job.state == "done"
    assert received == ["ok"]
    assert [e.message for e in detail.events if e.kind == "test.kept"] == ["s3cret"]


def test_a_concluded_job_is_done_with_its_result_and_skips_later_stages(
    database: Database, tmp_path: Path
) -> None:
    """``store`` returning JobConcluded ends the job there, done, with the result it saved."""
    later: list[object] = []

    def conclude(session: Session, job_id: int, value: object) -> JobConcluded:
        results.save_result(session, job_id=job_id, outcome="no_nodule_found", detail={"n": 0})
        return JobConcluded("no_nodule_found")

    first: Stage[object, object] = Stage("look", lambda _: None, lambda _: {}, store=conclude)
    second = Stage("predict", later.append, lambda _: {})
    job_id = queued_job(database, tmp_path)
    runner(database, tmp_path, first, second).run(job_id)  # type: ignore[arg-type]
    detail = job(database, job_id)
    assert detail.job.state == "done" and later == []
    assert detail.result is not None and detail.result.outcome == "no_nodule_found"
    assert detail.result.probability is None and detail.result.detail == {"n": 0}
    assert detail.events[-1].kind == "job.done"
    assert detail.events[-1].detail == {"outcome": "no_nodule_found"}
    assert "predict" not in {e.detail.get("stage") for e in detail.events if e.detail}
    # A second attempt replaces the result rather than adding one.
    with database.session() as session:
        results.save_result(session, job_id=job_id, outcome="predicted")
    assert job(database, job_id).result.outcome == "predicted"  # type: ignore[union-attr]


def test_stages_after_a_conclusion_run_only_when_they_ask_to(
    database: Database, tmp_path: Path
) -> None:
    def conclude(session: Session, job_id: int, value: object) -> JobConcluded:
        results.save_result(session, job_id=job_id, outcome="no_nodule_found")
        return JobConcluded("no_nodule_found")

    loaded: list[object] = []

    def load(session: Session, job_id: int, value: object) -> int:
        loaded.append(value)
        return job_id

    def store(session: Session, job_id: int, value: int) -> int:
        events.record_event(session, kind="after.stored", message="kept", job_id=job_id)
        return value

    ending = Stage[object, object](name="ending", run=lambda v: v, summarize=lambda v: {},
                                   store=conclude)  # fmt: skip
    skipped = Stage[int, int](name="skipped", run=lambda v: v, summarize=lambda v: {}, load=load)
    after = Stage[int, int](name="after", run=lambda v: v * 2, summarize=lambda v: {"n": v},
                            load=load, store=store, after_conclusion=True)  # fmt: skip
    failing = Stage[int, int](name="failing", run=lambda v: 1 // 0, summarize=lambda v: {},
                              load=load, after_conclusion=True)  # fmt: skip
    job_id = queued_job(database, tmp_path)
    runner(database, tmp_path, INTAKE, ending, skipped, after, failing).run(job_id)  # type: ignore[arg-type]

    detail = job(database, job_id)
    assert detail.job.state == "done" and detail.result is not None
    assert detail.result.outcome == "no_nodule_found"
    assert loaded == [None, None]  # only the two stages that run after a conclusion
    kinds = [e.kind for e in detail.events]
    assert "after.stored" in kinds and "stage.failed_after_conclusion" in kinds
    done = [e for e in detail.events if e.kind == "stage.done" and e.detail
            and e.detail.get("stage") == "after"]  # fmt: skip
    assert done and done[0].detail is not None and done[0].detail["summary"] == {"n": 2 * job_id}
