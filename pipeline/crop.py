"""Crop stage: every de-identified image of a study cropped to its ultrasound image area.

:func:`crop` reads each de-identified file, crops its middle frame with
:func:`imaging.crop.crop_image` (the rules are there) and writes
``work_dir/crop/NNN.png`` (NNN: the image's position in the study). An image
that raises :class:`~imaging.errors.StageError` is skipped with its reason;
the stage fails only when no image is left.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from pydicom import Dataset, dcmread
from pydicom.errors import InvalidDicomError
from sqlalchemy.orm import Session

from imaging.crop import Calibration, ImageArea, crop_image
from imaging.errors import StageError
from imaging.png import write_png
from pipeline.contracts import (
    DeidentifiedImage,
    DeidentifiedStudy,
    ExcludedImage,
    JobContext,
    Skipped,
    summarize_skipped,
)
from pipeline.scope import describe_excluded
from pipeline.spool import SpoolLayout
from pipeline.stage import Stage
from pipeline.stage_outputs import save_output


@dataclass(frozen=True)
class CroppedView(Calibration):
    """One image's crop, saved as PNG; ``view`` is the View Code Sequence meaning if any."""

    sop_instance_uid: str
    png_path: Path
    area: ImageArea
    frame_index: int
    rows: int
    columns: int
    colour: bool
    view: str | None


@dataclass(frozen=True)
class CroppedStudy:
    """The crop stage's output: one crop per image in scope; the rest skipped or excluded."""

    SCHEMA_VERSION: ClassVar[int] = 2  # of the stage output file (pipeline.stage_outputs)

    job: JobContext
    images: tuple[CroppedView, ...]
    skipped: tuple[Skipped, ...]
    excluded: tuple[ExcludedImage, ...] = ()


def _view(ds: Dataset) -> str | None:
    codes = ds.get("ViewCodeSequence")
    if not codes:
        return None
    meaning = codes[0].get("CodeMeaning")
    return str(meaning) if meaning else None


def _crop_one(image: DeidentifiedImage, out_dir: Path, index: int) -> CroppedView:
    try:
        ds = dcmread(image.path)
    except (InvalidDicomError, ValueError, EOFError) as exc:
        raise StageError(f"file cannot be read: {exc}") from exc
    cropped = crop_image(ds)
    png = out_dir / f"{index:03d}.png"
    write_png(png, cropped.pixels, speckle=True)
    return CroppedView(
        sop_instance_uid=image.sop_instance_uid,
        png_path=png,
        area=cropped.area,
        frame_index=cropped.frame_index,
        rows=int(cropped.pixels.shape[0]),
        columns=int(cropped.pixels.shape[1]),
        colour=cropped.pixels.ndim == 3,
        view=_view(ds),
    )


def crop(study: DeidentifiedStudy) -> CroppedStudy:
    """Crop every image of the study into ``work_dir/crop``; unusable images are skipped.

    Raises
    ------
    StageError
        If no image of the study could be cropped.
    """
    out_dir = study.job.folder("crop")
    views: list[CroppedView] = []
    skipped: list[Skipped] = []
    for index, image in enumerate(study.images):
        try:
            views.append(_crop_one(image, out_dir, index))
        except StageError as exc:
            skipped.append(Skipped(image.sop_instance_uid, str(exc)))
    if not views:
        reasons = "; ".join(f"{s.sop_instance_uid}: {s.reason}" for s in skipped)
        raise StageError(f"no image of the study could be cropped ({reasons or 'no images'})")
    return CroppedStudy(
        job=study.job,
        images=tuple(views),
        skipped=tuple(skipped),
        excluded=study.excluded,
    )


def summarize_crop(study: CroppedStudy) -> dict[str, Any]:
    """Counts and crop geometry for the audit trail (no pixels, no patient data)."""
    return {
        "images": len(study.images),
        "calibrated": sum(v.calibrated for v in study.images),
        "uncalibrated": sum(not v.calibrated for v in study.images),
        "from_regions": sum(v.area.source == "regions" for v in study.images),
        "detected": sum(v.area.source == "detected" for v in study.images),
        "colour": sum(v.colour for v in study.images),
        "crops": [
            {
                "sop_instance_uid": v.sop_instance_uid,
                "width": v.columns,
                "height": v.rows,
                "frame_index": v.frame_index,
                "mm_per_pixel": list(v.mm_per_pixel) if v.mm_per_pixel else None,
            }
            for v in study.images
        ],
        "skipped": summarize_skipped(study.skipped),
        "excluded": describe_excluded(study.excluded),
    }


def crop_stage(spool: SpoolLayout) -> Stage[DeidentifiedStudy, CroppedStudy]:
    """The crop stage; it keeps its output as the job's crop record.

    The record (:meth:`SpoolLayout.crop_record`) serves the shadow stage and
    ``llnm-node dataset export``.
    """

    def keep(_session: Session, job_id: int, study: CroppedStudy) -> CroppedStudy:
        save_output(spool.crop_record(job_id), study, root=spool.root)
        return study

    return Stage[DeidentifiedStudy, CroppedStudy](
        name="crop", run=crop, summarize=summarize_crop, store=keep, output_type=CroppedStudy
    )
