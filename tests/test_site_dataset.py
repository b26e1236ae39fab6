"""Site data set: exported from a running node's spool, read by both trainings, masks corrected.

Real node (C-STORE over a socket, the embedded executor, the job database on
SQLite and PostgreSQL), real phantom studies through the whole pipeline,
outcomes imported as a site does; corrected masks as PNG files and as DICOM
SEGs made with highdicom on the exported crops.
"""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path
from typing import Any

import cv2
import highdicom as hd
import numpy as np
import pytest
from harness import write_toml
from numpy.typing import NDArray
from pydicom import Dataset
from pydicom.sr.codedict import codes
from sqlalchemy import select
from test_cli import invoke
from test_db_queries import new_instance, register
from test_imaging_jobs import Factory, finished_jobs, send

from db.models import Event, Job, Outcome, Study
from db.outcomes import import_outcomes
from db.session import Database
from dicom_node.app.site_dataset import (
    FURTHER_VIEW,
    NO_CROP_RECORD,
    NO_DONE_JOB,
    NO_MASKS,
    UNKNOWN_PLANE,
    DatasetError,
    export_dataset,
    pick_views,
)
from dicom_node.app.site_masks import import_masks
from dicom_node.app.wiring import spool_layout
from imaging.crop import ImageArea
from models.llnm.dataset import build_features, read_data_manifest, read_patients
from models.llnm.dataset import view_crop_and_masks as llnm_view
from models.segmentation.data import load_view, read_manifest, read_records
from phantoms import PhantomCase, make_case
from pipeline.contracts import JobContext, ModelInputs
from pipeline.crop import CroppedStudy, CroppedView
from pipeline.spool import SpoolLayout

SEEDS = (3, 4, 1)  # exported, exported, its crop record removed
PNG_CHUNKS = {b"IHDR", b"IDAT", b"IEND", b"PLTE"}  # no text chunk: nothing but pixels


def _files(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()
    }


def _png_chunks(data: bytes) -> set[bytes]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, at = set(), 8
    while at < len(data):
        (length,) = struct.unpack(">I", data[at : at + 4])
        chunks.add(data[at + 4 : at + 8])
        at += 12 + length
    return chunks


def _identifiers(cases: list[PhantomCase]) -> set[str]:
    """Every identifier of the phantom studies as sent (patient, study, series, instances)."""
    found: set[str] = set()
    for case in cases:
        for ds in (*case.datasets, *([case.report_dataset] if case.report_dataset else [])):
            name = str(ds.PatientName)
            found |= {str(ds.PatientID), name, *(p for p in name.split("^") if len(p) > 2)}
            found |= {str(ds.AccessionNumber), str(ds.StudyInstanceUID)}
            found |= {str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)}
    return {i for i in found if i}


def _source_image(uid: str, pixels: NDArray[np.uint8]) -> Dataset:
    """A secondary capture of a crop under the crop's pseudonymous UID (a reader's tool)."""
    image: Dataset = hd.sc.SCImage(
        pixel_array=pixels,
        photometric_interpretation="MONOCHROME2",
        bits_allocated=8,
        coordinate_system="PATIENT",
        study_instance_uid=hd.UID(),
        series_instance_uid=hd.UID(),
        series_number=1,
        sop_instance_uid=uid,
        instance_number=1,
        manufacturer="reader workstation",
        patient_orientation=("L", "P"),
    )
    return image


def _seg(path: Path, source: Dataset, masks: dict[str, NDArray[np.bool_]]) -> Path:
    """A DICOM SEG of ``source`` with one segment per label."""
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=n,
            segment_label=label,
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=codes.SCT.Nodule,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
        )
        for n, label in enumerate(masks, start=1)
    ]
    seg = hd.seg.Segmentation(
        source_images=[source],
        pixel_array=np.stack(list(masks.values()), axis=-1)[None],
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=2,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="reader workstation",
        manufacturer_model_name="contouring",
        software_versions="1",
        device_serial_number="1",
        omit_empty_frames=False,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    seg.save_as(path)
    return path


def _box(shape: tuple[int, ...], y0: int, x0: int, y1: int, x1: int) -> NDArray[np.bool_]:
    mask = np.zeros(shape[:2], dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


def _run(*args: str) -> tuple[int, str]:
    """The command's exit code and output, the console's line breaks undone."""
    code, output = invoke(*args)
    return code, " ".join(output.split())


def _grey(path: Path) -> NDArray[np.uint8]:
    image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    assert image is not None, path
    return np.asarray(image, dtype=np.uint8)


def _mask(path: Path) -> NDArray[np.bool_]:
    return np.asarray(_grey(path) > 127)


def _run_site(node_factory: Factory, database_url: str, tmp_path: Path) -> tuple[Any, ...]:
    """Three phantom studies through the node, their outcomes, and a study with no done job."""
    node = node_factory(database_url=database_url)
    cases = [make_case(seed) for seed in SEEDS]
    for n, case in enumerate(cases):
        report = [case.report_dataset] if case.report_dataset is not None else []
        send(node, [*case.datasets, *report], tmp_path / f"case{n}")
    jobs = finished_jobs(node, len(cases), timeout=400)
    assert all(j.state == "done" for j in jobs), jobs
    waiting = register(node.database, new_instance("1.2.826.0.77.1", patient="WAITING-PATIENT"))
    first, second, third = (c.datasets[0] for c in cases)
    outcomes = (
        "accession_number,study_instance_uid,llnm,nodal_stage\n"
        f"{first.AccessionNumber},,yes,2\n"
        f",{second.StudyInstanceUID},no,\n"
        f",{third.StudyInstanceUID},yes,1\n"
        ",1.2.826.0.77.1,no,\n"
    )
    with node.database.session() as session:
        imported = import_outcomes(session, outcomes, imported_by="test")
        assert imported.imported == 4, imported
        keys = dict(session.execute(select(Study.study_instance_uid, Study.id)).all())
        job_of = dict(session.execute(select(Job.study_fk, Job.id)).all())
    spool = spool_layout(node.settings)
    removed = keys[str(third.StudyInstanceUID)]
    assert spool.crop_record(job_of[removed]).is_dir()
    shutil.rmtree(spool.crop_record(job_of[removed]))  # as if its files had been purged
    study_ids = [keys[str(c.datasets[0].StudyInstanceUID)] for c in cases]
    return node, spool, cases, study_ids, waiting.study_id


def test_export_reads_back_in_both_trainings_and_corrected_masks_replace_the_drafts(
    node_factory: Factory, database_url: str, tmp_path: Path
) -> None:
    node, spool, cases, (a, b, c), waiting = _run_site(node_factory, database_url, tmp_path)
    out = tmp_path / "export"
    out.mkdir()  # an empty folder is fine
    with node.database.session() as session:
        summary = export_dataset(session, spool, out, exported_by="tester")
    case_a, case_b = f"case-{a}", f"case-{b}"

    # What was exported and what was not, by reason.
    assert (summary.cases, summary.positives) == (2, 1)
    assert summary.views == {"transverse": 2, "longitudinal": 2}
    assert summary.skipped_by_reason() == {NO_CROP_RECORD: 1, NO_DONE_JOB: 1}
    assert {(s.study_id, s.reason) for s in summary.skipped} == {
        (c, NO_CROP_RECORD),
        (waiting, NO_DONE_JOB),
    }
    files = _files(out)
    expected = {"cases.csv", "cases.jsonl", "manifest.json"}
    for case in (case_a, case_b):
        for plane in ("transverse", "longitudinal"):
            expected |= {f"images/{case}_{plane}.png"}
            expected |= {f"masks/{case}_{plane}_{t}.png" for t in ("nodule", "thyroid")}
    assert set(files) == expected
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".export")]

    # The copies are the node's crops and draft masks, byte for byte.
    with node.database.session() as session:
        job_of = dict(session.execute(select(Job.study_fk, Job.id)).all())
    lines = [json.loads(line) for line in files["cases.jsonl"].decode().splitlines()]
    assert [line["case_id"] for line in lines] == [case_a, case_b]
    for line, study in zip(lines, (a, b), strict=True):
        work = spool.work_dir(job_of[study])
        assert [v["view"] for v in line["views"]] == ["transverse", "longitudinal"]
        for view in line["views"]:
            record = {v.sop_instance_uid: v for v in _record(spool, job_of[study]).images}
            crop = record[view["sop_instance_uid"]].png_path
            assert files[view["image"]] == crop.read_bytes()
            for target in ("nodule", "thyroid"):
                draft = work / "segment" / f"{crop.stem}_{target}.png"
                assert files[view[f"{target}_mask"]] == draft.read_bytes()
            height, width = _grey(crop).shape
            assert view["image_area"] == [0, 0, width, height]
            assert view["mm_per_pixel"] is not None and all(0 < s < 1 for s in view["mm_per_pixel"])
            assert view["corrected"] == {"nodule": False, "thyroid": False}

    # No identifier of a patient or study in any file; no PNG carries text.
    identifiers = _identifiers(cases) | {"WAITING-PATIENT", "1.2.826.0.77.1"}
    for name, data in files.items():
        leaked = [i for i in identifiers if i.encode() in data or i.upper().encode() in data]
        assert leaked == [], name
        if name.endswith(".png"):
            assert _png_chunks(data) <= PNG_CHUNKS, name

    # The manifest and the audit event: counts only.
    manifest = json.loads(files["manifest.json"])
    assert manifest["synthetic"] is False and manifest["source"] == "site"
    assert manifest["masks"] == "segmenter drafts" and "pseudonymous" in manifest["identifiers"]
    assert (manifest["cases"], manifest["positives"], manifest["negatives"]) == (2, 1, 1)
    assert manifest["views"] == {"transverse": 2, "longitudinal": 2, "total": 4}
    assert manifest["studies_skipped"] == {NO_CROP_RECORD: 1, NO_DONE_JOB: 1}
    with node.database.session() as session:
        (event,) = session.scalars(select(Event).where(Event.kind == "dataset.exported"))
        assert event.detail is not None and event.detail["cases"] == 2
        assert event.detail["by"] == "tester"
        trail = event.message + json.dumps(event.detail)
        assert not any(i in trail for i in identifiers) and str(out) not in trail

    # LLNM-Net's reader: labels joined from the outcomes, inputs from the de-identified study.
    patients = {p.case_id: p for p in read_patients(out)}
    assert read_data_manifest(out)["synthetic"] is False
    assert {k: (p.label, p.stage) for k, p in patients.items()} == {
        case_a: (1, 2),
        case_b: (0, None),
    }
    for case, phantom in zip((case_a, case_b), cases[:2], strict=True):
        header = phantom.datasets[0]
        patient = patients[case]
        assert patient.age_years == int(str(header.PatientAge)[:3])
        assert patient.sex == header.PatientSex
        assert (patient.report_text is not None) == (phantom.report_dataset is not None)
        for files_ in patient.views:
            assert files_ is not None and files_.mm_per_pixel is not None
            pixels, nodule, thyroid = llnm_view(files_)
            assert pixels.shape == nodule.shape == thyroid.shape and thyroid.any()
    table = build_features(list(patients.values()), 32, progress=False)
    assert table.arrays["view_mask"].any()

    # The segmenters' reader: every view, both masks.
    assert read_manifest(out)["source"] == "site"
    for target in ("nodule", "thyroid"):
        records = read_records(out, target)  # type: ignore[arg-type]
        assert len(records) == 4 and {r.case_id for r in records} == {case_a, case_b}
        for seg_view in records:
            image, mask = load_view(seg_view)
            assert image.shape == mask.shape

    # The command: the same data set; a non-empty folder is refused.
    config = write_toml(
        tmp_path / "node.toml",
        {"data_dir": node.settings.data_dir, "database_url": node.settings.resolved_database_url},
    )
    code, output = _run("dataset", "export", "--out", str(tmp_path / "cli"), "-c", str(config))
    assert code == 0, output
    assert "2 cases" in output and NO_CROP_RECORD in output and NO_DONE_JOB in output
    assert (tmp_path / "cli" / "cases.csv").read_bytes() == files["cases.csv"]
    code, output = _run("dataset", "export", "--out", str(out), "-c", str(config))
    assert code == 1 and "not empty" in output

    _check_corrections(out, lines, tmp_path / "corrected")


def _record(spool: SpoolLayout, job_id: int) -> CroppedStudy:
    from pipeline.stage_outputs import load_output

    return load_output(spool.crop_record(job_id), CroppedStudy, root=spool.root)


def _check_corrections(data: Path, lines: list[dict[str, Any]], source: Path) -> None:
    """PNG and SEG corrections accepted, the wrong ones rejected with why; idempotent."""
    (a_trans, a_long), (b_trans, b_long) = (line["views"] for line in lines)
    drafts = _files(data)
    crop = _grey(data / a_trans["image"])
    shape = crop.shape
    seg_nodule, seg_thyroid = _box(shape, 10, 12, 30, 40), _box(shape, 5, 5, 60, 80)
    _seg(
        source / "a_seg.dcm",
        _source_image(a_trans["sop_instance_uid"], crop),
        {"Thyroid nodule": seg_nodule, " THYROID ": seg_thyroid},
    )
    long_shape = _grey(data / a_long["image"]).shape
    png_thyroid = _box(long_shape, 3, 4, 50, 70)
    png = Path(a_long["thyroid_mask"]).name
    cv2.imwrite(str(source / png), png_thyroid.astype(np.uint8) * 200)  # > 127 is inside
    # Rejected: another mask of one already given, a wrong size, an unknown name, an
    # unknown UID, an unlabelled segment, a SEG of the wrong size, not a mask at all.
    (source / "z_again").mkdir()
    cv2.imwrite(str(source / "z_again" / png), np.zeros(long_shape, np.uint8))
    cv2.imwrite(str(source / Path(b_trans["nodule_mask"]).name), np.zeros((10, 10), np.uint8))
    cv2.imwrite(str(source / "case-999_transverse_nodule.png"), np.zeros(shape, np.uint8))
    _seg(source / "b_unknown.dcm", _source_image(hd.UID(), crop), {"nodule": seg_nodule})
    b_crop = _grey(data / b_long["image"])
    lesion = _box(b_crop.shape, 1, 1, 5, 5)
    _seg(
        source / "c_label.dcm",
        _source_image(b_long["sop_instance_uid"], b_crop),
        {"Lesion": lesion},
    )
    small = _source_image(b_long["sop_instance_uid"], crop[:20, :30])
    _seg(source / "d_size.dcm", small, {"nodule": _box((20, 30), 1, 1, 5, 5)})
    (source / "notes.txt").write_text("contoured by Dr. Reader\n")

    summary = import_masks(data, source)
    assert {p.path.name: p.masks for p in summary.accepted} == {
        "a_seg.dcm": (Path(a_trans["nodule_mask"]).name, Path(a_trans["thyroid_mask"]).name),
        png: (png,),
    }
    reasons = {p.path.relative_to(source).as_posix(): p.reason for p in summary.rejected}
    assert set(reasons) == {
        f"z_again/{png}", Path(b_trans["nodule_mask"]).name, "case-999_transverse_nodule.png",
        "b_unknown.dcm", "c_label.dcm", "d_size.dcm", "notes.txt",
    }  # fmt: skip
    assert "also given by" in reasons[f"z_again/{png}"]
    assert "wrong size 10x10" in reasons[Path(b_trans["nodule_mask"]).name]
    assert "unknown name" in reasons["case-999_transverse_nodule.png"]
    assert "no crop of this data set" in reasons["b_unknown.dcm"]
    assert "labelled 'Lesion'" in reasons["c_label.dcm"]
    assert "wrong size: frames 30x20" in reasons["d_size.dcm"]
    assert "neither a PNG mask nor a DICOM file" in reasons["notes.txt"]
    assert (summary.written, summary.unchanged, summary.corrected_masks) == (3, 0, 3)

    # The new masks in place, the drafts kept, the corrections recorded.
    assert np.array_equal(_mask(data / a_trans["nodule_mask"]), seg_nodule)
    assert np.array_equal(_mask(data / a_trans["thyroid_mask"]), seg_thyroid)
    assert np.array_equal(_mask(data / a_long["thyroid_mask"]), png_thyroid)
    for view, target in ((a_trans, "nodule"), (a_trans, "thyroid"), (a_long, "thyroid")):
        name = Path(view[f"{target}_mask"]).name
        assert (data / "masks" / "drafts" / name).read_bytes() == drafts[view[f"{target}_mask"]]
    assert drafts[a_long["nodule_mask"]] == (data / a_long["nodule_mask"]).read_bytes()
    assert not (data / "masks" / "drafts" / Path(b_trans["nodule_mask"]).name).exists()
    now = [json.loads(line) for line in (data / "cases.jsonl").read_text().splitlines()]
    assert [v["corrected"] for line in now for v in line["views"]] == [
        {"nodule": True, "thyroid": True},
        {"nodule": False, "thyroid": True},
        {"nodule": False, "thyroid": False},
        {"nodule": False, "thyroid": False},
    ]
    manifest = json.loads((data / "manifest.json").read_text())
    assert manifest["corrected_masks"] == sorted(
        [a_trans["nodule_mask"], a_trans["thyroid_mask"], a_long["thyroid_mask"]]
    )
    assert "3 corrected" in manifest["masks"] and manifest["cases"] == 2
    records = {r.mask.name: r for r in read_records(data, "nodule")}
    assert np.array_equal(load_view(records[Path(a_trans["nodule_mask"]).name])[1], seg_nodule)
    assert len(read_patients(data)) == 2 and len(read_records(data, "thyroid")) == 4

    # Again: nothing changes; the drafts stay the segmenter's after a second correction.
    before = _files(data)
    again = import_masks(data, source)
    assert (again.written, again.unchanged, len(again.rejected)) == (0, 3, 7)
    assert _files(data) == before
    second = source.parent / "second"
    second.mkdir()
    cv2.imwrite(str(second / png), _box(long_shape, 0, 0, 10, 10).astype(np.uint8) * 255)
    code, output = _run("dataset", "import-masks", "--data", str(data), str(second))
    assert code == 0, output
    assert "1 masks replaced" in output and "accepted" in output
    assert (data / "masks" / "drafts" / png).read_bytes() == drafts[a_long["thyroid_mask"]]
    code, output = _run("dataset", "import-masks", "--data", str(data), str(source))
    assert code == 1 and "7 files rejected" in output and "labelled 'Lesion'" in output
    with pytest.raises(DatasetError, match="inside the data set"):
        import_masks(data, data / "masks")
    with pytest.raises(DatasetError, match="no exported site data set"):
        import_masks(source, second)


def _cropped_view(folder: Path, index: int, view: str | None) -> CroppedView:
    png = folder / "crop" / f"{index:03d}.png"
    png.parent.mkdir(parents=True, exist_ok=True)
    png.write_bytes(b"")
    area = ImageArea(0, 0, 8, 6, None, "detected")
    return CroppedView(
        area=area,
        sop_instance_uid=f"2.25.{index}",
        png_path=png,
        frame_index=0,
        rows=6,
        columns=8,
        colour=False,
        view=view,
    )


def test_views_of_an_unknown_plane_and_further_views_are_left_out_and_counted(
    tmp_path: Path,
) -> None:
    from collections import Counter

    spool = SpoolLayout.at(tmp_path)
    work = spool.work_dir(5)
    meanings = ["Right lobe", "Transverse", "Sagittal", "transverse", "Longitudinal"]
    views = tuple(_cropped_view(work, i, m) for i, m in enumerate(meanings))
    (work / "segment").mkdir()
    for i in (0, 1, 3, 4):  # the sagittal crop (2) has no masks
        for target in ("nodule", "thyroid"):
            (work / "segment" / f"{i:03d}_{target}.png").write_bytes(b"")
    job = JobContext(5, work, ModelInputs(None, None, None))
    left_out: Counter[str] = Counter()
    chosen = pick_views(spool, CroppedStudy(job, views, ()), left_out)
    assert [(v.plane, v.crop.sop_instance_uid) for v in chosen] == [
        ("transverse", "2.25.1"),
        ("longitudinal", "2.25.4"),
    ]
    assert left_out == {UNKNOWN_PLANE: 1, NO_MASKS: 1, FURTHER_VIEW: 1}


def test_export_refuses_a_non_empty_folder_and_a_site_without_outcomes(
    database: Database, tmp_path: Path
) -> None:
    spool = SpoolLayout.at(tmp_path / "spool")
    out = tmp_path / "out"
    with database.session() as session, pytest.raises(DatasetError, match="no study has an"):
        export_dataset(session, spool, out)
    assert not out.exists()
    study = register(database, new_instance("1.2.826.0.78.1")).study_id
    with database.session() as session:
        session.add(Outcome(study_fk=study, llnm=True, imported_by="test"))
    with database.session() as session, pytest.raises(DatasetError, match=NO_DONE_JOB):
        export_dataset(session, spool, out)
    assert not out.exists() and not list(tmp_path.glob(".out*"))
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with database.session() as session, pytest.raises(DatasetError, match="not empty"):
        export_dataset(session, spool, out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    with database.session() as session:
        assert not session.scalars(select(Event).where(Event.kind == "dataset.exported")).all()
