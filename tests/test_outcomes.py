"""Outcome import: identifiers resolved through the pseudonym map, every row accounted for.

Real SQLite and PostgreSQL databases; studies registered as the listener does and
their accession numbers stored only in the pseudonym map, as de-identification does.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from harness import write_toml
from sqlalchemy import inspect, select
from test_cli import invoke
from test_db_queries import new_instance, register

from db.migrate import upgrade
from db.models import Event, Outcome, PseudonymKind, Study
from db.outcomes import OutcomeFileError, import_outcomes, outcome_counts
from db.pseudonyms import PseudonymEntry, save_pseudonyms
from db.session import Database

STUDIES = ("1.2.826.0.9.1", "1.2.826.0.9.2", "1.2.826.0.9.3")
ACCESSIONS = {STUDIES[0]: "ACC-0001", STUDIES[1]: "ACC-0002"}
FILE = f"""Accession_Number,study_instance_uid,LLNM,nodal_stage,date,source
ACC-0001,,yes,2,2026-11-30,pathology
,{STUDIES[1]},no,,,
ACC-9999,,yes,,,
ACC-0001,,Y,2,20261130,pathology
,{STUDIES[2]},yes,,,
,{STUDIES[2]},no,,,
ACC-0002,,maybe,,,
,,yes,,,
ACC-0002,{STUDIES[0]},yes,,,
"""


@pytest.fixture
def studies(database: Database) -> Database:
    """The migrated database with three studies, two with an accession number."""
    for uid in STUDIES:
        job_id = register(database, new_instance(uid)).job_id
        if uid in ACCESSIONS:
            entry = PseudonymEntry(PseudonymKind.ACCESSION_NUMBER, ACCESSIONS[uid], "A-PSEUDO")
            with database.session() as session:
                save_pseudonyms(session, job_id=job_id, entries=[entry])
    return database


def _outcomes(database: Database) -> dict[str, tuple[bool, int | None, str, str]]:
    with database.session() as session:
        rows = session.execute(
            select(Study.study_instance_uid, Outcome).join(Outcome, Outcome.study_fk == Study.id)
        ).all()
        return {uid: (o.llnm, o.nodal_stage, o.outcome_date, o.source) for uid, o in rows}


def test_every_row_is_applied_or_reported_and_no_identifier_is_stored(
    studies: Database,
) -> None:
    with studies.session() as session:
        report = import_outcomes(session, FILE, imported_by="site admin")
    assert (report.rows, report.imported, report.updated, report.unchanged) == (9, 2, 0, 0)
    assert [line for line, _ in report.invalid] == [8, 9]
    assert "yes or no" in report.invalid[0][1] and "no accession" in report.invalid[1][1]
    assert report.unmatched == [4]
    assert report.duplicates == [5]  # the same outcome again, written another way
    assert report.conflicting == [6, 7]  # disagreeing rows of one study: neither applied
    assert report.ambiguous == [10]  # accession and UID name different studies
    assert _outcomes(studies) == {
        STUDIES[0]: (True, 2, "20261130", "pathology"),
        STUDIES[1]: (False, None, "", ""),
    }
    columns = {c["name"] for c in inspect(studies.engine).get_columns("outcomes")}
    assert columns == {
        "id", "study_fk", "llnm", "nodal_stage", "outcome_date", "source", "imported_at",
        "imported_by",
    }  # fmt: skip
    with studies.session() as session:
        (event,) = session.scalars(select(Event).where(Event.kind == "outcomes.imported"))
        assert event.detail is not None
        assert event.detail["imported"] == 2 and event.detail["unmatched"] == 1
        assert event.detail["by"] == "site admin" and len(event.detail["sha256"]) == 64
        trail = event.message + json.dumps(event.detail)
        assert not any(i in trail for i in (*ACCESSIONS.values(), *STUDIES, "ACC-9999"))
        assert outcome_counts(session) == {"studies": 2, "positive": 1}


def test_importing_again_changes_nothing_and_a_correction_updates(studies: Database) -> None:
    with studies.session() as session:
        import_outcomes(session, FILE, imported_by="a")
    with studies.session() as session:
        again = import_outcomes(session, FILE, imported_by="a")
    assert (again.imported, again.updated, again.unchanged) == (0, 0, 2)
    corrected = f"study_instance_uid,llnm\n{STUDIES[1]},yes\n"
    with studies.session() as session:
        fixed = import_outcomes(session, corrected, imported_by="b")
    assert (fixed.imported, fixed.updated, fixed.unchanged) == (0, 1, 0)
    assert _outcomes(studies)[STUDIES[1]] == (True, None, "", "")
    with studies.session() as session:
        events = session.scalars(select(Event).where(Event.kind == "outcomes.imported")).all()
    assert len(events) == 3


@pytest.mark.parametrize(
    "text", ["", "llnm\nyes\n", "accession_number,stage\nA,1\n", "\ufeffnothing,here\n"]
)
def test_a_file_without_the_needed_columns_is_refused(studies: Database, text: str) -> None:
    with studies.session() as session, pytest.raises(OutcomeFileError):
        import_outcomes(session, text, imported_by="a")


def test_the_cli_imports_and_reports_by_line(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    database = Database(url)
    upgrade(database)
    register(database, new_instance(STUDIES[0]))
    database.dispose()
    config = write_toml(
        tmp_path / "node.toml", {"data_dir": tmp_path / "data", "database_url": url}
    )
    csv = tmp_path / "outcomes.csv"
    csv.write_text(f"study_instance_uid,llnm\n{STUDIES[0]},1\n{STUDIES[2]},0\n")
    code, output = invoke("outcomes", "import", str(csv), "--config", str(config))
    assert code == 0, output
    assert "2 rows: 1 new, 0 updated, 0 unchanged" in output
    assert "unmatched: lines 3" in output and STUDIES[2] not in output
    assert "1 studies have an outcome, 1 LLNM-positive" in output
    csv.write_text("patient,llnm\nX,1\n")
    code, output = invoke("outcomes", "import", str(csv), "--config", str(config))
    assert code == 1 and "not an outcome file" in output
