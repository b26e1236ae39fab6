"""The site's own training data set, exported from the spool (``llnm-node dataset export``).

Cases
    Every study with an imported outcome (:mod:`db.outcomes`), from its newest
    job that is done and still has its crop record
    (:meth:`pipeline.spool.SpoolLayout.crop_record`): the de-identified crops,
    the live bundle's segmenter masks of them (``work_dir/segment/NNN_nodule.png``
    and ``NNN_thyroid.png``, the drafts) and the de-identified model inputs
    (age, sex, redacted report text). A study that gives no case is reported
    with why (:data:`NO_DONE_JOB`, :data:`NO_CROP_RECORD`, :data:`BAD_CROP_RECORD`,
    :data:`NO_VIEW`), never silently dropped.
Views
    One transverse and one longitudinal view per case: the first crop of each
    plane (in the study's order) whose two masks exist. The plane is read from
    the image's View Code Sequence meaning as the features stage reads it
    (:func:`pipeline.features.view_plane`). A crop whose plane is unknown, a
    further crop of a plane, and a crop without masks are left out of both
    files and counted (``views_left_out``): the LLNM-Net training needs the
    plane, and both files list the same views.
Format (read by ``llnm-node train``, :mod:`models.llnm.dataset`, and
``llnm-node train-seg``, :mod:`models.segmentation.data`)::

    OUT/images/<case>_<plane>.png              the crop, as the node cut it
    OUT/masks/<case>_<plane>_nodule.png        the segmenter's draft, 0/255
    OUT/masks/<case>_<plane>_thyroid.png
    OUT/cases.csv                              one row per case
    OUT/cases.jsonl                            one JSON object per case
    OUT/manifest.json                          counts, provenance, flags

    ``<case>`` is ``case-<the study's key in the job database>``: pseudonymous,
    no UID, accession number, name or patient ID. ``cases.csv`` columns:
    ``case_id``, ``age_years``, ``sex``, ``report_text``, ``llnm_label`` (the
    outcome), ``risk_stage`` (the outcome's nodal stage, empty when unknown) and
    per plane ``<plane>_image``, ``_nodule_mask``, ``_thyroid_mask``,
    ``_image_area`` (the whole crop, ``"0 0 W H"``) and ``_mm_per_pixel``
    (``"x y"`` from the crop's calibration; empty when uncalibrated). A
    ``cases.jsonl`` line::

        {"case_id": "case-12", "llnm_label": 1, "risk_stage": 2, "views": [
            {"view": "transverse", "image": "images/case-12_transverse.png",
             "nodule_mask": "masks/case-12_transverse_nodule.png",
             "thyroid_mask": "masks/case-12_transverse_thyroid.png",
             "image_area": [0, 0, 412, 306], "mm_per_pixel": [0.09, 0.09],
             "sop_instance_uid": "<the crop's pseudonymous SOP Instance UID>",
             "corrected": {"nodule": false, "thyroid": false}}]}

    ``sop_instance_uid`` is the de-identified copy's UID: a DICOM SEG drawn on
    the crop references it (:mod:`dicom_node.app.site_masks`), and only the
    node's pseudonym map links it to the original. ``corrected`` says which
    masks a reader replaced since.
Writing
    Into a folder that does not exist or is empty (anything else is refused):
    the data set is built in a hidden sibling folder and renamed into place, so
    ``OUT`` holds a whole data set or none. One audit event
    ``dataset.exported`` records the counts (and who), no identifier or path.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.events import record_event
from db.models import Job, JobState, Outcome
from models.llnm.dataset import CASES_CSV, VIEWS
from models.segmentation.data import CASES_FILE, MANIFEST_FILE
from pipeline.crop import CroppedStudy, CroppedView
from pipeline.features import view_plane
from pipeline.spool import SpoolLayout, fsync_dir, fsync_file
from pipeline.stage_outputs import StageOutputError, load_output

TARGETS = ("nodule", "thyroid")  # the two masks of a view
IMAGES, MASKS = "images", "masks"
DRAFTS = "drafts"  # masks/drafts/: the segmenter's drafts a corrected mask replaced
FORMAT = "llnm-node site data set 1"
DRAFT_MASKS = "segmenter drafts"
IDENTIFIERS = (
    "pseudonymous: case_id is case-<the study's key in the node's job database>, "
    "sop_instance_uid the de-identified copy's UID; no UID, accession number, name or "
    "patient ID of the original study"
)
INTENDED_USE = (
    "fine-tuning and measuring models on this site's own patients, on the node; "
    "the crops and masks are de-identified, the labels are the site's pathology outcomes"
)
VIEW_SELECTION = (
    "the first crop of each plane (View Code Sequence) with both masks; crops of an "
    "unknown plane and further crops of a plane are left out"
)
# Why a study with an outcome gives no case.
NO_DONE_JOB = "no job of the study is done"
NO_CROP_RECORD = "no crop record (not assessed before its crop stage, or its files were purged)"
BAD_CROP_RECORD = "unreadable crop record"
NO_VIEW = "no crop of a known plane with both masks"
# Why a crop of an exported case is left out.
UNKNOWN_PLANE = "plane unknown"
FURTHER_VIEW = "further crop of its plane"
NO_MASKS = "no segmenter masks"
CSV_COLUMNS = [
    "case_id", "age_years", "sex", "report_text", "llnm_label", "risk_stage",
    *(f"{plane}_{column}" for plane in VIEWS for column in (
        "image", "nodule_mask", "thyroid_mask", "image_area", "mm_per_pixel")),
]  # fmt: skip


class DatasetError(ValueError):
    """The data set cannot be written or read (the message says why)."""


@dataclass(frozen=True)
class SkippedStudy:
    """A study with an outcome that gives no case (its key in the job database), and why."""

    study_id: int
    reason: str


@dataclass
class ExportSummary:
    """What an export wrote and what it could not."""

    out: Path
    cases: int = 0
    positives: int = 0
    views: dict[str, int] = field(default_factory=lambda: dict.fromkeys(VIEWS, 0))
    views_left_out: dict[str, int] = field(default_factory=dict)
    skipped: list[SkippedStudy] = field(default_factory=list)

    def skipped_by_reason(self) -> dict[str, int]:
        """How many studies were skipped for each reason."""
        return dict(Counter(s.reason for s in self.skipped))

    def counts(self) -> dict[str, Any]:
        """The counts (for the manifest and the audit trail; no identifier)."""
        return {
            "cases": self.cases,
            "positives": self.positives,
            "negatives": self.cases - self.positives,
            "views": {**self.views, "total": sum(self.views.values())},
            "views_left_out": dict(self.views_left_out),
            "studies_skipped": self.skipped_by_reason(),
        }


@dataclass(frozen=True)
class _View:
    plane: str
    crop: CroppedView
    masks: tuple[Path, Path]  # nodule, thyroid drafts


def case_id(study_id: int) -> str:
    """The pseudonymous case id of a study (its key in the job database)."""
    return f"case-{study_id}"


def mask_name(case: str, plane: str, target: str) -> str:
    """The file name of a view's mask in ``masks/``."""
    return f"{case}_{plane}_{target}.png"


def _record_of(session: Session, spool: SpoolLayout, study_id: int) -> CroppedStudy | str:
    """The crop record of the study's newest done job that has one, or why there is none."""
    jobs = session.scalars(
        select(Job)
        .where(Job.study_fk == study_id, Job.state == JobState.DONE)
        .order_by(Job.version.desc())
    ).all()
    for job in jobs:
        folder = spool.crop_record(job.id)
        if folder.is_dir():
            try:
                return load_output(folder, CroppedStudy, root=spool.root)
            except StageOutputError:
                return BAD_CROP_RECORD
    return NO_CROP_RECORD if jobs else NO_DONE_JOB


def pick_views(spool: SpoolLayout, record: CroppedStudy, left_out: Counter[str]) -> list[_View]:
    """The case's views (module docstring), in :data:`VIEWS` order; the rest counted."""
    chosen: dict[str, _View] = {}
    segment = spool.work_dir(record.job.job_id) / "segment"
    for crop in record.images:
        plane = view_plane(crop.view)
        stem = crop.png_path.stem
        masks = (segment / f"{stem}_nodule.png", segment / f"{stem}_thyroid.png")
        if plane is None:
            left_out[UNKNOWN_PLANE] += 1
        elif not all(m.is_file() for m in masks):
            left_out[NO_MASKS] += 1
        elif plane in chosen:
            left_out[FURTHER_VIEW] += 1
        else:
            chosen[plane] = _View(plane, crop, masks)
    return [chosen[p] for p in VIEWS if p in chosen]


def _numbers(values: Sequence[float] | None) -> str:
    """``"x y ..."`` (``str`` of a float is its shortest exact form); empty for None."""
    return "" if values is None else " ".join(str(v) for v in values)


def _write_case(
    staging: Path, case: str, outcome: Outcome, record: CroppedStudy, views: list[_View]
) -> tuple[dict[str, str], dict[str, Any]]:
    """Copy the case's files into ``staging``; its ``cases.csv`` row and ``cases.jsonl`` line."""
    inputs = record.job.inputs
    stage = "" if outcome.nodal_stage is None else str(outcome.nodal_stage)
    row = dict.fromkeys(CSV_COLUMNS, "")
    row.update(
        case_id=case,
        age_years="" if inputs.age_years is None else f"{inputs.age_years:g}",
        sex=inputs.sex or "",
        report_text=inputs.report_text or "",
        llnm_label=str(int(outcome.llnm)),
        risk_stage=stage,
    )
    line: dict[str, Any] = {
        "case_id": case,
        "llnm_label": int(outcome.llnm),
        "risk_stage": outcome.nodal_stage,
        "views": [],
    }
    for view in views:
        image = f"{IMAGES}/{case}_{view.plane}.png"
        masks = [f"{MASKS}/{mask_name(case, view.plane, t)}" for t in TARGETS]
        for source, target in zip((view.crop.png_path, *view.masks), (image, *masks), strict=True):
            shutil.copyfile(source, staging / target)
        area = [0, 0, view.crop.columns, view.crop.rows]
        spacing = view.crop.mm_per_pixel
        prefix = f"{view.plane}_"
        row[f"{prefix}image"] = image
        row[f"{prefix}nodule_mask"], row[f"{prefix}thyroid_mask"] = masks
        row[f"{prefix}image_area"] = _numbers(area)
        row[f"{prefix}mm_per_pixel"] = _numbers(spacing)
        line["views"].append(
            {
                "view": view.plane,
                "image": image,
                "nodule_mask": masks[0],
                "thyroid_mask": masks[1],
                "image_area": area,
                "mm_per_pixel": None if spacing is None else list(spacing),
                "sop_instance_uid": view.crop.sop_instance_uid,
                "corrected": dict.fromkeys(TARGETS, False),
            }
        )
    return row, line


def write_text(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` (UTF-8) atomically and durably."""
    write_bytes(path, text.encode("utf-8"))


def write_bytes(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically and durably (a temporary file renamed)."""
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        temporary.write_bytes(data)
        fsync_file(temporary)
        temporary.replace(path)
    finally:
        temporary.unlink(missing_ok=True)
    fsync_dir(path.parent)


def jsonl(lines: Sequence[dict[str, Any]]) -> str:
    """``cases.jsonl`` text: one compact JSON object per line."""
    return "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines)


def manifest_json(manifest: dict[str, Any]) -> str:
    """``manifest.json`` text."""
    return json.dumps(manifest, indent=2, ensure_ascii=False) + "\n"


def _check_target(out: Path) -> None:
    if out.is_dir():
        if any(out.iterdir()):
            raise DatasetError(f"{out} is not empty; export into a new or empty folder")
    elif out.exists():
        raise DatasetError(f"{out} exists and is not a folder")


@contextlib.contextmanager
def _staging(out: Path) -> Iterator[Path]:
    """A hidden sibling of ``out`` to build in, renamed to ``out`` when the block succeeds."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    (staging / MASKS).mkdir(parents=True)
    (staging / IMAGES).mkdir()
    try:
        yield staging
        _check_target(out)  # again: something may have appeared meanwhile
        if out.is_dir():
            out.rmdir()
        staging.rename(out)
        fsync_dir(out.parent)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def export_dataset(
    session: Session, spool: SpoolLayout, out: Path, *, exported_by: str = ""
) -> ExportSummary:
    """Write the site's data set into ``out`` (module docstring); one audit event.

    Raises
    ------
    DatasetError
        If ``out`` is a non-empty folder or a file, no study has an outcome, or
        no study with one gives a case (the reasons are in the message).
    """
    _check_target(out)
    outcomes = session.scalars(select(Outcome).order_by(Outcome.study_fk)).all()
    if not outcomes:
        raise DatasetError("no study has an outcome: import the pathology outcomes first")
    summary = ExportSummary(out=out)
    left_out: Counter[str] = Counter()
    rows: list[dict[str, str]] = []
    lines: list[dict[str, Any]] = []
    with _staging(out) as staging:
        for outcome in outcomes:
            record = _record_of(session, spool, outcome.study_fk)
            if isinstance(record, str):
                summary.skipped.append(SkippedStudy(outcome.study_fk, record))
                continue
            views = pick_views(spool, record, left_out)
            if not views:
                summary.skipped.append(SkippedStudy(outcome.study_fk, NO_VIEW))
                continue
            row, line = _write_case(staging, case_id(outcome.study_fk), outcome, record, views)
            rows.append(row)
            lines.append(line)
            summary.cases += 1
            summary.positives += int(outcome.llnm)
            for view in views:
                summary.views[view.plane] += 1
        summary.views_left_out = dict(left_out)
        if not rows:
            reasons = "; ".join(f"{n}: {why}" for why, n in summary.skipped_by_reason().items())
            raise DatasetError(f"no study with an outcome gives a case ({reasons})")
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=CSV_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        write_text(staging / CASES_CSV, text.getvalue())
        write_text(staging / CASES_FILE, jsonl(lines))
        manifest = {
            "format": FORMAT,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "source": "site",
            "synthetic": False,
            "intended_use": INTENDED_USE,
            "identifiers": IDENTIFIERS,
            "masks": DRAFT_MASKS,
            "corrected_masks": [],
            "view_selection": VIEW_SELECTION,
            **summary.counts(),
        }
        write_text(staging / MANIFEST_FILE, manifest_json(manifest))
    record_event(
        session,
        kind="dataset.exported",
        message=f"site data set exported: {summary.cases} cases, {summary.positives} positive",
        detail={**summary.counts(), "by": exported_by},
    )
    return summary
