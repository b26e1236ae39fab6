"""The report stage (queue ``cpu``) and the failure notice.

Input
    The infer stage's :class:`~pipeline.infer.PredictedStudy`. The stage's
    ``load`` step pairs each used view with its original instance through the
    job's pseudonym map (:func:`~pipeline.report.reidentify.report_input`).
Output
    In ``work_dir/report``: the TID 1500 SR, one heatmap Secondary Capture per
    used view (with the PNG a person opens), one population map Secondary
    Capture per view the features stage placed on the bundle's risk map and,
    when configured, a SEG of the masks, all in the original study. The
    ``store`` step lists them in the job's result and queues them for export
    to the study's destinations.
Notices
    A job that failed for good, found no nodule, or was not assessed by the
    scope gate gets (when configured) a short SR saying so and why, queued for
    export like a result (:class:`Notices`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from sqlalchemy.orm import Session

from db import bundles, events, exports, jobs, pseudonyms, results
from db.models import EventLevel, PseudonymKind
from imaging.sop_classes import ULTRASOUND_IMAGE_CLASSES
from models.bundle import BundleIdentity, bundle_identity
from pipeline.contracts import instance_refs
from pipeline.features import NO_NODULE_FOUND
from pipeline.infer import PredictedStudy
from pipeline.report.common import result_caption
from pipeline.report.inputs import ReportInput, ReportObject, ReportOptions
from pipeline.report.population import build_population_scs
from pipeline.report.reidentify import report_input
from pipeline.report.secondary_capture import build_heatmap_scs
from pipeline.report.segmentation import build_seg
from pipeline.report.sr import build_sr, failure_sr, no_nodule_sr, not_assessed_sr
from pipeline.scope import NOT_ASSESSED
from pipeline.spool import SpoolLayout
from pipeline.stage import Stage

log = logging.getLogger(__name__)

# Names of the export destinations for a study sent by the given calling AE.
DestinationsFor = Callable[[str], Sequence[str]]


@dataclass(frozen=True)
class ReportObjects:
    """The report stage's output: the objects made for the PACS, SR first."""

    SCHEMA_VERSION: ClassVar[int] = 1  # of the stage output file (pipeline.stage_outputs)

    job_id: int
    caption: str
    objects: tuple[ReportObject, ...]


def build_report(report: ReportInput, options: ReportOptions) -> ReportObjects:
    """Make the SR, the heatmap SCs and (if configured) the SEG of ``report``."""
    objects = [build_sr(report), *build_heatmap_scs(report), *build_population_scs(report)]
    if options.segmentation:
        objects.extend(build_seg(report))
    return ReportObjects(
        job_id=report.job.job_id,
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


def _queue(
    session: Session,
    job_id: int,
    objects: Sequence[ReportObject],
    spool: SpoolLayout,
    destinations_for: DestinationsFor,
) -> int:
    source = jobs.job_source(session, job_id=job_id)
    return exports.queue_exports(
        session,
        job_id=job_id,
        objects=[(o.sop_instance_uid, spool.relative(o.path)) for o in objects],
        destinations=list(destinations_for(source.calling_ae)),
    )


@dataclass(frozen=True)
class _ReportSteps:
    spool: SpoolLayout
    destinations_for: DestinationsFor

    def load(self, session: Session, job_id: int, predicted: PredictedStudy) -> ReportInput:
        source = jobs.job_source(session, job_id=job_id)
        originals = {ref.sop_instance_uid: ref.path for ref in instance_refs(source, self.spool)}
        return report_input(
            predicted, pseudonyms.pseudonyms_for_job(session, job_id=job_id), originals
        )

    def store(self, session: Session, job_id: int, result: ReportObjects) -> ReportObjects:
        results.add_result_detail(
            session,
            job_id=job_id,
            objects=[
                {
                    "kind": o.kind,
                    "sop_instance_uid": o.sop_instance_uid,
                    "path": self.spool.relative(o.path),
                }
                for o in result.objects
            ],
        )
        _queue(session, job_id, result.objects, self.spool, self.destinations_for)
        return result


def report_stage(
    options: ReportOptions, spool: SpoolLayout, destinations_for: DestinationsFor
) -> Stage[ReportInput, ReportObjects]:
    """The report stage; its objects are queued for ``destinations_for(calling AE)``.

    It follows the infer stage: ``load`` turns the :class:`PredictedStudy` into its input.
    """
    steps = _ReportSteps(spool, destinations_for)
    return Stage[ReportInput, ReportObjects](
        name="report",
        run=lambda report: build_report(report, options),
        summarize=summarize_report,
        load=steps.load,
        store=steps.store,
        output_type=ReportObjects,
    )


class Notices:
    """Short SRs for jobs without a prediction: failed for good, no nodule, not assessed.

    Each is made and queued for export like a result when the options ask for
    it; a notice that cannot be made is an event, never an exception.
    """

    def __init__(
        self,
        options: ReportOptions,
        spool: SpoolLayout,
        destinations_for: DestinationsFor,
        algorithm: BundleIdentity,
    ) -> None:
        self._options = options
        self._spool = spool
        self._destinations_for = destinations_for
        self._algorithm = algorithm

    def _identity(self, session: Session) -> BundleIdentity:
        """The live installed bundle's identity, else the configured bundle's."""
        folder = bundles.folder_in_use(session, None)
        return self._algorithm if folder is None else bundle_identity(folder)

    def failed(self, session: Session, job_id: int, error: str) -> None:
        """Send the failure SR of job ``job_id`` (``report.failure_report``)."""
        if self._options.failure_report:
            algorithm = self._identity(session)
            self._send(
                session,
                job_id,
                lambda evidence, out_dir, _: failure_sr(
                    evidence,
                    out_dir=out_dir,
                    job_id=job_id,
                    reason=error,
                    algorithm=algorithm,
                ),
            )

    def concluded(self, session: Session, job_id: int, outcome: str) -> None:
        """Send the no-nodule or not-assessed SR of job ``job_id`` when the options ask."""
        algorithm = self._identity(session)
        if outcome == NOT_ASSESSED and self._options.not_assessed_report:
            detail = results.result_detail(session, job_id=job_id)
            original = {
                e.pseudonym: e.original
                for e in pseudonyms.pseudonyms_for_job(session, job_id=job_id)
                if e.kind is PseudonymKind.UID
            }
            self._send(
                session,
                job_id,
                lambda evidence, out_dir, _: not_assessed_sr(
                    evidence,
                    out_dir=out_dir,
                    job_id=job_id,
                    reason=str(detail.get("text", "outside the model's scope")),
                    excluded=[
                        f"{original.get(image['sop_instance_uid'], image['sop_instance_uid'])}: "
                        f"{image['text']}"
                        for image in detail.get("excluded", [])
                    ],
                    algorithm=algorithm,
                ),
            )
        if outcome == NO_NODULE_FOUND and self._options.no_nodule_report:
            self._send(
                session,
                job_id,
                lambda evidence, out_dir, images: no_nodule_sr(
                    evidence,
                    out_dir=out_dir,
                    job_id=job_id,
                    views=images,
                    algorithm=algorithm,
                ),
            )

    def _send(
        self, session: Session, job_id: int, make: Callable[[Path, Path, int], ReportObject]
    ) -> None:
        try:
            source = jobs.job_source(session, job_id=job_id)
            refs = instance_refs(source, self._spool)
            images = [r.path for r in refs if r.sop_class_uid in ULTRASOUND_IMAGE_CLASSES]
            out_dir = self._spool.work_dir(job_id) / "report"
            notice = make((images or [r.path for r in refs])[0], out_dir, len(images))
            _queue(session, job_id, [notice], self._spool, self._destinations_for)
        except Exception as exc:  # boundary: a notice must never hide the job's own outcome
            log.exception("job %d: the notice SR could not be made", job_id)
            events.record_event(
                session,
                kind="report.notice_failed",
                level=EventLevel.ERROR,
                job_id=job_id,
                message=f"the notice SR could not be made: {type(exc).__name__}: {exc}",
            )
