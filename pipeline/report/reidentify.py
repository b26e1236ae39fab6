"""Pair the views the model used with the original instances they came from."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from db.models import PseudonymKind
from db.pseudonyms import PseudonymEntry
from imaging.errors import StageError
from models.bundle import BundleIdentity
from pipeline.infer import PredictedStudy
from pipeline.report.inputs import ReportInput, ReportView


def report_input(
    predicted: PredictedStudy,
    pseudonyms: Sequence[PseudonymEntry],
    originals: Mapping[str, Path],
) -> ReportInput:
    """The report stage's input for ``predicted``.

    ``pseudonyms`` is the job's pseudonym map; ``originals`` maps each original
    SOP Instance UID of the study to its file in the spool.

    Raises
    ------
    StageError
        If a used view's pseudonym is not in the map or its original file is gone.
    """
    original_uid = {e.pseudonym: e.original for e in pseudonyms if e.kind is PseudonymKind.UID}
    views = []
    for view, heatmap in zip(predicted.views, predicted.heatmaps, strict=True):
        pseudonym = view.segmented.crop.sop_instance_uid
        uid = original_uid.get(pseudonym)
        if uid is None:
            raise StageError(f"view {pseudonym} is not in the job's pseudonym map")
        path = originals.get(uid)
        if path is None or not path.is_file():
            raise StageError(f"the original of view {pseudonym} is no longer in the spool")
        views.append(
            ReportView(measured=view, heatmap=heatmap, original=path, original_sop_instance_uid=uid)
        )
    return ReportInput(
        job=predicted.job,
        prediction=predicted.prediction,
        stage_probabilities=predicted.stage_probabilities,
        views=tuple(views),
        algorithm=BundleIdentity(
            name=predicted.prediction.bundle_name,
            version=predicted.prediction.bundle_version,
            device_uid=predicted.bundle_uid,
            clinical_use_label=predicted.clinical_use_label,
        ),
        not_used=tuple(
            f"{original_uid.get(e.sop_instance_uid, e.sop_instance_uid)}: {e.exclusion.text}"
            for e in predicted.excluded
        ),
    )
