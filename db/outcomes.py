"""Pathology outcomes a site imports: LLNM (yes/no) per study, found through its identifiers.

File (CSV, UTF-8, a header row; column names case-insensitive)
    ``accession_number`` or ``study_instance_uid`` (one of them, or both when
    they agree), ``llnm`` (yes/no, y/n, true/false, 1/0, positive/negative),
    optional ``nodal_stage`` (1-3), ``date`` (YYYYMMDD or YYYY-MM-DD) and
    ``source`` (e.g. "pathology"; at most 64 characters).
Resolution
    A Study Instance UID is looked up in the studies; an accession number in
    the pseudonym map (it is kept nowhere else), so it may name a study only
    the node received. Neither is stored with the outcome: the outcome row
    holds the study's key only.
What is reported, never silently dropped (line numbers, no identifiers)
    ``invalid`` (a value that does not parse, or no identifier), ``unmatched``
    (no study has it), ``ambiguous`` (an accession number of several studies,
    or identifiers naming different studies), ``duplicates`` (a later row
    repeating an earlier one of the same study), ``conflicting`` (rows of one
    study that disagree: none of them is applied).
Idempotent
    An outcome equal to the stored one is ``unchanged``; a different one
    replaces it (``updated``). Each import is one audit event
    (``outcomes.imported``) with the counts, the file's SHA-256 and who
    imported it (not the file's name: it may name a patient).
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.events import record_event
from db.models import Job, Outcome, Pseudonym, PseudonymKind, Study, utcnow

MAX_SOURCE = 64  # characters of a source, and of the importer's name kept
_YES = {"yes", "y", "true", "1", "positive", "pos"}
_NO = {"no", "n", "false", "0", "negative", "neg"}
_DATE = re.compile(r"^(\d{4})-?(\d{2})-?(\d{2})$")
IDENTIFIERS = ("accession_number", "study_instance_uid")


class OutcomeFileError(ValueError):
    """The file as a whole cannot be read (not CSV, no header, no identifier column)."""


@dataclass(frozen=True)
class OutcomeRow:
    """One parsed line of an outcome file."""

    line: int
    accession_number: str | None
    study_instance_uid: str | None
    llnm: bool
    nodal_stage: int | None
    date: str  # YYYYMMDD or ""
    source: str


@dataclass
class ImportReport:
    """What an import did, by file line (module docstring)."""

    rows: int = 0
    imported: int = 0
    updated: int = 0
    unchanged: int = 0
    invalid: list[tuple[int, str]] = field(default_factory=list)
    unmatched: list[int] = field(default_factory=list)
    ambiguous: list[int] = field(default_factory=list)
    duplicates: list[int] = field(default_factory=list)
    conflicting: list[int] = field(default_factory=list)

    def problems(self) -> dict[str, list[int]]:
        """File lines that were not applied, by why (invalid lines without their reason)."""
        return {
            "invalid": [line for line, _ in self.invalid],
            "unmatched": self.unmatched,
            "ambiguous": self.ambiguous,
            "duplicates": self.duplicates,
            "conflicting": self.conflicting,
        }

    def counts(self) -> dict[str, int]:
        """Every count, for the audit trail."""
        return {
            key: len(value) if isinstance(value, list) else value
            for key, value in asdict(self).items()
        }


def _llnm(value: str) -> bool:
    word = value.strip().lower()
    if word in _YES:
        return True
    if word in _NO:
        return False
    raise ValueError("llnm must be yes or no")


def _stage(value: str) -> int | None:
    if not value.strip():
        return None
    if value.strip() not in ("1", "2", "3"):
        raise ValueError("nodal_stage must be 1, 2 or 3")
    return int(value)


def _date(value: str) -> str:
    if not value.strip():
        return ""
    match = _DATE.match(value.strip())
    if match is None:
        raise ValueError("date must be YYYYMMDD or YYYY-MM-DD")
    return "".join(match.groups())


def parse_outcomes(text: str) -> tuple[list[OutcomeRow], list[tuple[int, str]]]:
    """The rows of an outcome file and its invalid lines (line number, why).

    Raises
    ------
    OutcomeFileError
        If there is no header, no identifier column or no ``llnm`` column.
    """
    reader = csv.DictReader(io.StringIO(text.lstrip("\ufeff")))
    if not reader.fieldnames:
        raise OutcomeFileError("the file is empty: a header row is needed")
    names = {name.strip().lower(): name for name in reader.fieldnames}
    if not any(name in names for name in IDENTIFIERS) or "llnm" not in names:
        raise OutcomeFileError("the header needs accession_number or study_instance_uid, and llnm")

    def cell(record: dict[str, str | None], name: str) -> str:
        return (record.get(names[name]) or "").strip() if name in names else ""

    rows, invalid = [], []
    for record in reader:
        line = reader.line_num
        accession, uid = cell(record, "accession_number"), cell(record, "study_instance_uid")
        try:
            if not accession and not uid:
                raise ValueError("no accession number or study instance UID")
            source = cell(record, "source")
            if len(source) > MAX_SOURCE:
                raise ValueError(f"source is longer than {MAX_SOURCE} characters")
            rows.append(
                OutcomeRow(
                    line=line,
                    accession_number=accession or None,
                    study_instance_uid=uid or None,
                    llnm=_llnm(cell(record, "llnm")),
                    nodal_stage=_stage(cell(record, "nodal_stage")),
                    date=_date(cell(record, "date")),
                    source=source,
                )
            )
        except ValueError as exc:
            invalid.append((line, str(exc)))
    return rows, invalid


def _studies(session: Session, row: OutcomeRow) -> set[int]:
    found: set[int] = set()
    if row.study_instance_uid is not None:
        found |= set(
            session.scalars(
                select(Study.id).where(Study.study_instance_uid == row.study_instance_uid)
            )
        )
    if row.accession_number is not None:
        by_accession = set(
            session.scalars(
                select(Job.study_fk)
                .join(Pseudonym, Pseudonym.job_fk == Job.id)
                .where(
                    Pseudonym.kind == PseudonymKind.ACCESSION_NUMBER,
                    Pseudonym.original == row.accession_number,
                )
                .distinct()
            )
        )
        if row.study_instance_uid is not None and by_accession and found != by_accession:
            return found | by_accession  # the two identifiers name different studies
        found |= by_accession
    return found


def _values(row: OutcomeRow) -> tuple[bool, int | None, str, str]:
    return row.llnm, row.nodal_stage, row.date, row.source


def import_outcomes(
    session: Session,
    text: str,
    *,
    imported_by: str,
) -> ImportReport:
    """Parse ``text`` and store its outcomes (module docstring); one audit event.

    Raises
    ------
    OutcomeFileError
        If the file as a whole cannot be read.
    """
    imported_by = imported_by[:MAX_SOURCE]
    rows, invalid = parse_outcomes(text)
    report = ImportReport(rows=len(rows) + len(invalid), invalid=invalid)
    by_study: dict[int, list[OutcomeRow]] = {}
    for row in rows:
        studies = _studies(session, row)
        if not studies:
            report.unmatched.append(row.line)
        elif len(studies) > 1:
            report.ambiguous.append(row.line)
        else:
            by_study.setdefault(studies.pop(), []).append(row)
    for study_id, study_rows in by_study.items():
        if len({_values(r) for r in study_rows}) > 1:
            report.conflicting.extend(r.line for r in study_rows)
            continue
        report.duplicates.extend(r.line for r in study_rows[1:])
        _store(session, study_id, study_rows[0], imported_by, report)
    record_event(
        session,
        kind="outcomes.imported",
        message=(
            f"outcomes imported by {imported_by}: {report.imported} new, "
            f"{report.updated} updated, {report.unchanged} unchanged of {report.rows} rows"
        ),
        detail={
            **report.counts(),
            "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
            "by": imported_by,
        },
    )
    return report


def _store(
    session: Session, study_id: int, row: OutcomeRow, imported_by: str, report: ImportReport
) -> None:
    stored = session.scalars(select(Outcome).where(Outcome.study_fk == study_id)).one_or_none()
    if stored is None:
        session.add(
            Outcome(
                study_fk=study_id,
                llnm=row.llnm,
                nodal_stage=row.nodal_stage,
                outcome_date=row.date,
                source=row.source,
                imported_at=utcnow(),
                imported_by=imported_by,
            )
        )
        report.imported += 1
        return
    if (stored.llnm, stored.nodal_stage, stored.outcome_date, stored.source) == _values(row):
        report.unchanged += 1
        return
    stored.llnm, stored.nodal_stage = row.llnm, row.nodal_stage
    stored.outcome_date, stored.source = row.date, row.source
    stored.imported_at, stored.imported_by = utcnow(), imported_by
    report.updated += 1


def outcome_counts(session: Session) -> dict[str, int]:
    """How many studies have an outcome, and how many of them are LLNM-positive."""
    values: Sequence[bool] = session.scalars(select(Outcome.llnm)).all()
    return {"studies": len(values), "positive": sum(values)}
