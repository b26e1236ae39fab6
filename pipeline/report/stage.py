"""The report stage (queue ``cpu``) and the failure notice.

Input
    The infer stage's :class:`~pipeline.infer.PredictedStudy`. The stage's
    ``load`` step pairs each used view with its original instance through the
    job's pseudonym map (:func:`~pipeline.report.reidentify.report_input`).
Output
    In ``work_dir/report``: the TID 1500 SR, one heatmap Secondary Capture per
    used view (with the PNG a person opens) and, when configured, a SEG of the
    masks, all in the original study. The ``store`` step lists them in the
    job's result and queues them for export to the study's destinations.
Notices
    A job that failed for good, or found no nodule, gets (when configured) a
    short SR saying so and why, queued for export like a result (:class:`Notices`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from db import exports, queries
from db.models import EventLevel
from pipeline.features.stage import NO_NODULE_FOUND
from pipeline.infer import PredictedStudy
from pipeline.report.common import result_caption
from pipeline.report.inputs import ReportInput, ReportObject, ReportOptions
from pipeline.report.reidentify import report_input
from pipeline.report.secondary_capture import build_heatmap_scs
from pipeline.report.segmentation import build_seg
from pipeline.report.sr import build_sr, failure_sr, no_nodule_sr
from pipeline.sop_classes import ULTRASOUND_IMAGE_CLASSES
from pipeline.stage import Stage

log = logging.getLogger(__name__)

# Names of the export destinations for a study sent by the given calling AE.
DestinationsFor = Callable[[str], Sequence[str]]


@dataclass(frozen=True)
class ReportObjects:
    """The report stage's output: the objects made for the PACS, SR first."""

    job_id: int
    caption: str
    objects: tuple[ReportObject, ...]


def build_report(report: ReportInput, options: ReportOptions) -> ReportObjects:
    """Make the SR, the heatmap SCs and (if configured) the SEG of ``report``."""
    objects = [build_sr(report), *build_heatmap_scs(report)]
    if options.segmentation:
        objects.extend(build_seg(report))
    return ReportObjects(
        job_id=report.job_id,
        caption=result_caption(report.prediction, report.clinical_use_label),
        objects=tuple(objects),
    )


def summarize_report(result: ReportObjects) -> dict[str, Any]:
    """The objects for the audit trail (UIDs and descriptions, no patient data)."""
    return {
        "caption": result.caption,
        "objects": [
            {"kind": o.kind, "sop_instance_uid": o.sop_instance_uid, "series": o.description}
            for o in result.objects
        ],
    }


def _relative(path: Path, spool_root: Path) -> str:
    return path.resolve().relative_to(spool_root.resolve()).as_posix()


def _queue(
    session: Session,
    job_id: int,
    objects: Sequence[ReportObject],
    spool_root: Path,
    destinations_for: DestinationsFor,
) -> int:
    source = queries.job_source(session, job_id=job_id)
    return exports.queue_exports(
        session,
        job_id=job_id,
        objects=[(o.sop_instance_uid, _relative(o.path, spool_root)) for o in objects],
        destinations=list(destinations_for(source.calling_ae)),
    )


@dataclass(frozen=True)
class _ReportSteps:
    spool_root: Path
    destinations_for: DestinationsFor

    def load(self, session: Session, job_id: int, predicted: PredictedStudy) -> ReportInput:
        source = queries.job_source(session, job_id=job_id)
        originals = {uid: self.spool_root / path for uid, _, _, path in source.instances}
        return report_input(
            predicted, queries.pseudonyms_for_job(session, job_id=job_id), originals
        )

    def store(self, session: Session, job_id: int, result: ReportObjects) -> ReportObjects:
        queries.add_result_detail(
            session,
            job_id=job_id,
            objects=[
                {
                    "kind": o.kind,
                    "sop_instance_uid": o.sop_instance_uid,
                    "path": _relative(o.path, self.spool_root),
                }
                for o in result.objects
            ],
        )
        _queue(session, job_id, result.objects, self.spool_root, self.destinations_for)
        return result


def report_stage(
    options: ReportOptions, spool_root: Path, destinations_for: DestinationsFor
) -> Stage[ReportInput, ReportObjects]:
    """The report stage; its objects are queued for ``destinations_for(calling AE)``.

    It follows the infer stage: ``load`` turns the :class:`PredictedStudy` into its input.
    """
    steps = _ReportSteps(spool_root, destinations_for)
    return Stage[ReportInput, ReportObjects](
        name="report",
        run=lambda report: build_report(report, options),
        summarize=summarize_report,
        load=steps.load,
        store=steps.store,
    )


class Notices:
    """Short SRs for jobs without a prediction: failed for good, or no nodule found.

    Each is made and queued for export like a result when the options ask for
    it; a notice that cannot be made is an event, never an exception.
    """

    def __init__(
        self,
        options: ReportOptions,
        spool_root: Path,
        destinations_for: DestinationsFor,
        clinical_use_label: str | None,
    ) -> None:
        self._options = options
        self._spool_root = spool_root
        self._destinations_for = destinations_for
        self._label = clinical_use_label

    def failed(self, session: Session, job_id: int, error: str) -> None:
        """Send the failure SR of job ``job_id`` (``report.failure_report``)."""
        if self._options.failure_report:
            self._send(
                session,
                job_id,
                lambda evidence, out_dir, _: failure_sr(
                    evidence,
                    out_dir=out_dir,
                    job_id=job_id,
                    reason=error,
                    clinical_use_label=self._label,
                ),
            )

    def concluded(self, session: Session, job_id: int, outcome: str) -> None:
        """Send the no-nodule SR of job ``job_id`` (``report.no_nodule_report``)."""
        if outcome == NO_NODULE_FOUND and self._options.no_nodule_report:
            self._send(
                session,
                job_id,
                lambda evidence, out_dir, images: no_nodule_sr(
                    evidence,
                    out_dir=out_dir,
                    job_id=job_id,
                    views=images,
                    clinical_use_label=self._label,
                ),
            )

    def _send(
        self, session: Session, job_id: int, make: Callable[[Path, Path, int], ReportObject]
    ) -> None:
        try:
            source = queries.job_source(session, job_id=job_id)
            paths = [p for _, _, _, p in source.instances]
            images = [p for _, c, _, p in source.instances if c in ULTRASOUND_IMAGE_CLASSES]
            out_dir = self._spool_root / "work" / f"job-{job_id}" / "report"
            notice = make(self._spool_root / (images or paths)[0], out_dir, len(images))
            _queue(session, job_id, [notice], self._spool_root, self._destinations_for)
        except Exception as exc:  # boundary: a notice must never hide the job's own outcome
            log.exception("job %d: the notice SR could not be made", job_id)
            queries.record_event(
                session,
                kind="report.notice_failed",
                level=EventLevel.ERROR,
                job_id=job_id,
                message=f"the notice SR could not be made: {type(exc).__name__}: {exc}",
            )
