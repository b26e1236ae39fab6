"""The query layer on both real databases (SQLite file and PostgreSQL)."""

from __future__ import annotations

import itertools
import threading
from datetime import timedelta
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import func, select

from db import jobs, listings, metrics, registration
from db.models import Base, CompletionRule, Event, Instance, Job, JobState, Study, utcnow
from db.session import Database

_counter = itertools.count(1)


def new_instance(
    study: str = "1.2.3", *, patient: str = "PAT1", issuer: str = "", ae: str = "PACS"
) -> registration.NewInstance:
    n = next(_counter)
    return registration.NewInstance(
        sop_instance_uid=f"1.2.826.0.1.{n}",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.6.1",
        series_instance_uid=f"{study}.1",
        study_instance_uid=study,
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        modality="US",
        patient_id=patient,
        issuer_of_patient_id=issuer,
        study_date="20261120",
        path=f"incoming/{study}/{n}.dcm",
        size_bytes=100,
        calling_ae=ae,
    )


def register(database: Database, new: registration.NewInstance) -> registration.RegisteredInstance:
    with database.connection() as connection:
        return registration.register_instance(connection, new=new)


def set_state(database: Database, job_id: int, state: JobState, **values: object) -> None:
    with database.session() as session:
        job = session.get_one(Job, job_id)
        job.state = state
        for key, value in values.items():
            setattr(job, key, value)


def test_migrations_match_the_models(database: Database) -> None:
    with database.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []


def test_instances_of_a_study_share_patient_study_and_job(database: Database) -> None:
    first = register(database, new_instance("1.1"))
    second = register(database, new_instance("1.1"))
    other_study = register(database, new_instance("1.2"))
    other_issuer = register(database, new_instance("1.3", issuer="OTHER_HOSPITAL"))
    assert (first.study_id, first.job_id) == (second.study_id, second.job_id)
    assert other_study.study_id != first.study_id
    with database.session() as session:
        studies = {s.id: s for s in session.scalars(select(Study))}
        assert studies[first.study_id].instance_count == 2
        assert studies[first.study_id].patient_fk == studies[other_study.study_id].patient_fk
        assert studies[other_issuer.study_id].patient_fk != studies[first.study_id].patient_fk
        pseudonym = studies[first.study_id].patient.pseudonym
        assert pseudonym.startswith("P-") and "PAT1" not in pseudonym


def test_rerun_policy(database: Database) -> None:
    job_id = register(database, new_instance("2.1")).job_id
    # queued but not started: reopened, same job
    set_state(database, job_id, JobState.QUEUED, queued_at=utcnow())
    assert register(database, new_instance("2.1")).job_id == job_id
    with database.session() as session:
        assert session.get_one(Job, job_id).state == JobState.RECEIVED
    # running: a new version, the old job untouched
    set_state(database, job_id, JobState.RUNNING, started_at=utcnow())
    late = register(database, new_instance("2.1"))
    assert late.job_id != job_id and late.job_version == 2
    # done: yet another version
    set_state(database, late.job_id, JobState.DONE)
    assert register(database, new_instance("2.1")).job_version == 3
    with database.session() as session:
        assert session.get_one(Job, job_id).state == JobState.RUNNING
        kinds = session.scalars(select(Event.kind).where(Event.job_fk == job_id)).all()
        assert "job.reopened" in kinds


def test_quiet_period_then_dispatch_once(database: Database) -> None:
    job_id = register(database, new_instance("3.1")).job_id
    with database.session() as session:
        assert jobs.queue_settled_jobs(session, settled_before=utcnow() - timedelta(hours=1)) == []
        assert jobs.queue_settled_jobs(session, settled_before=utcnow()) == [job_id]
    with database.session() as session:
        assert jobs.take_dispatchable_jobs(session) == [job_id]
    with database.session() as session:
        assert jobs.take_dispatchable_jobs(session) == []


def test_count_rule_queues_a_released_job_once_the_node_holds_the_study(
    database: Database,
) -> None:
    first = register(database, new_instance("3.2"))
    register(database, new_instance("3.2"))
    quiet = register(database, new_instance("3.3")).job_id
    with database.connection() as connection:
        jobs.mark_released(connection, study_ids=[first.study_id], calling_ae="PACS")
    with database.session() as session:
        assert jobs.take_released_jobs(session) == [jobs.ReleasedJob(first.job_id, "3.2", "PACS")]
    with database.session() as session:
        assert jobs.take_released_jobs(session) == []  # taken once
        assert not jobs.queue_counted_job(session, job_id=first.job_id, expected=3, asked="PACS")
        assert jobs.queue_counted_job(session, job_id=first.job_id, expected=2, asked="PACS")
    with database.session() as session:
        assert not jobs.queue_counted_job(session, job_id=first.job_id, expected=2, asked="PACS")
        assert session.get_one(Job, first.job_id).state == JobState.QUEUED
        assert jobs.queue_settled_jobs(session, settled_before=utcnow()) == [quiet]
    with database.connection() as connection:  # a queued job is not marked again
        jobs.mark_released(connection, study_ids=[first.study_id], calling_ae="PACS")
    with database.session() as session:
        assert jobs.take_released_jobs(session) == []
        assert metrics.completions_by_rule(session) == {
            CompletionRule.INSTANCE_COUNT: 1,
            CompletionRule.QUIET_TIME: 1,
        }


def test_claim_is_exclusive_and_fail_paths(database: Database) -> None:
    job_id = register(database, new_instance("4.1")).job_id
    set_state(database, job_id, JobState.QUEUED)
    with database.session() as session:
        claimed = jobs.claim_job(session, job_id=job_id)
        assert len(jobs.job_source(session, job_id=job_id).instances) == 1
    assert claimed is not None and claimed.attempt == 1
    with database.session() as session:
        assert jobs.claim_job(session, job_id=job_id) is None
    # transient failure: retried later
    with database.session() as session:
        state = jobs.fail_job(
            session, job_id=job_id, stage="intake", error="boom", max_attempts=2, backoff_s=60
        )
    assert state == JobState.QUEUED
    with database.session() as session:
        assert jobs.take_dispatchable_jobs(session) == []  # backoff not over
        due = jobs.take_dispatchable_jobs(session, now=utcnow() + timedelta(seconds=61))
        assert due == [job_id]
        assert jobs.claim_job(session, job_id=job_id) is not None
        state = jobs.fail_job(
            session, job_id=job_id, stage="intake", error="boom", max_attempts=2, backoff_s=60
        )
    assert state == JobState.DEAD
    with database.session() as session:
        job = session.get_one(Job, job_id)
        assert job.error == "intake: boom" and job.finished_at is not None


def test_permanent_failure_and_audited_retry(database: Database) -> None:
    job_id = register(database, new_instance("5.1")).job_id
    set_state(database, job_id, JobState.QUEUED)
    with database.session() as session:
        jobs.claim_job(session, job_id=job_id)
        assert (
            jobs.fail_job(
                session,
                job_id=job_id,
                stage="intake",
                error="no images",
                max_attempts=0,
                backoff_s=1,
            )
            == JobState.FAILED
        )
    with database.session() as session:
        jobs.retry_job(session, job_id=job_id, requested_by="alice@ws1 (cli)")
    with database.session() as session:
        job = session.get_one(Job, job_id)
        assert job.state == JobState.QUEUED and job.attempts == 0 and job.error is None
        detail = listings.job_detail(session, job_id=job_id)
        retry = [e for e in detail.events if e.kind == "job.retry_requested"]
        assert retry and retry[0].detail == {"actor": "alice@ws1 (cli)"}
    with database.session() as session, pytest.raises(jobs.JobStateError):
        jobs.retry_job(session, job_id=job_id, requested_by="x")
    with database.session() as session, pytest.raises(jobs.JobNotFoundError):
        jobs.retry_job(session, job_id=999_999, requested_by="x")


def test_recovery_after_a_crash(database: Database) -> None:
    running = register(database, new_instance("6.1")).job_id
    queued = register(database, new_instance("6.2")).job_id
    set_state(database, running, JobState.RUNNING, stage="intake", attempts=2)
    set_state(database, queued, JobState.QUEUED, dispatched_at=utcnow())
    with database.session() as session:
        assert jobs.recover_interrupted_jobs(session) == [running]
    with database.session() as session:
        assert sorted(jobs.take_dispatchable_jobs(session)) == sorted([running, queued])
        assert session.get_one(Job, running).attempts == 1  # the interrupted one is not counted
    # A job that was running at every one of the last three stops is given up.
    for stop in range(2, jobs.MAX_RECOVERIES + 1):
        set_state(database, running, JobState.RUNNING, stage="segment")
        with database.session() as session:
            requeued = jobs.recover_interrupted_jobs(session)
        assert requeued == ([running] if stop < jobs.MAX_RECOVERIES else [])
    with database.session() as session:
        job = session.get_one(Job, running)
        assert job.state == JobState.DEAD and "stopped 3 times" in (job.error or "")


def test_admin_filters(database: Database) -> None:
    a = register(database, new_instance("7.1", patient="PA", ae="PACS_A"))
    b = register(database, new_instance("7.2", patient="PB", ae="PACS_B"))
    set_state(database, b.job_id, JobState.FAILED, error="x")
    with database.session() as session:
        pseudonym_a = session.get_one(Study, a.study_id).patient.pseudonym

        def jobs(**filters: Any) -> list[int]:
            return [r.id for r in listings.list_jobs(session, listings.AdminFilter(**filters))]

        def studies(**filters: Any) -> list[listings.StudyRow]:
            return listings.list_studies(session, listings.AdminFilter(**filters))

        later = utcnow() + timedelta(minutes=1)
        assert jobs(states=[JobState.FAILED]) == [b.job_id]
        assert jobs(calling_ae="PACS_A") == [a.job_id]
        assert jobs(patient_pseudonym=pseudonym_a) == [a.job_id]
        assert jobs(since=later) == []
        assert len(jobs(until=later)) == 2
        received = studies(states=[JobState.RECEIVED])
        assert [s.id for s in received] == [a.study_id]
        assert received[0].latest_job_state == "received"
        assert [s.id for s in studies(calling_ae="PACS_B")] == [b.study_id]
        assert listings.unfinished_job_count(session) == 1


def test_concurrent_first_instances_of_one_study(database: Database) -> None:
    """Eight associations deliver the first instances of a new study at once."""
    barrier = threading.Barrier(8)
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            barrier.wait()
            register(database, new_instance("8.1", patient="RACE"))
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with database.session() as session:
        assert session.scalar(select(func.count(Study.id))) == 1
        assert session.scalar(select(func.count(Job.id))) == 1
        assert session.scalar(select(func.count(Instance.id))) == 8
        assert session.scalars(select(Study)).one().instance_count == 8


@pytest.mark.parametrize(("options", "durable"), [({}, True), ({"durable": False}, False)])
def test_commits_wait_for_the_disk_unless_made_not_durable(
    database_url: str, options: dict[str, bool], durable: bool
) -> None:
    db = Database(database_url, **options)
    try:
        with db.connection() as connection:
            if database_url.startswith("sqlite"):
                setting = connection.exec_driver_sql("PRAGMA synchronous").scalar()
                assert setting == (2 if durable else 0)  # FULL or OFF
            else:
                setting = connection.exec_driver_sql("SHOW synchronous_commit").scalar()
                assert setting == ("on" if durable else "off")
    finally:
        db.dispose()
