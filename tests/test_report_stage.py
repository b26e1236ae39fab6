"""The report stage and notices in a running node: objects reach a real receiving SCP."""

from __future__ import annotations

import time
from pathlib import Path

from harness import wait_for
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import RLELossless, generate_uid
from sqlalchemy import select
from test_imaging_jobs import Factory, finished_jobs

from db import exports, listings
from db.models import Event, ExportState
from dicom_node.app.demo import DemoPacs
from dicom_node.app.node import Node
from dicom_node.network import scu
from phantoms import make_case

PACS_AE = "TEST_PACS"


def _node_with_pacs(
    node_factory: Factory, tmp_path: Path, bundle: Path | None = None, **report: bool
) -> tuple[Node, DemoPacs]:
    pacs = DemoPacs(tmp_path / "pacs")
    port = pacs.start()
    node = node_factory(
        report=report,
        **({} if bundle is None else {"model": {"bundle_dir": bundle}}),
        export={
            "destinations": [
                {"name": "pacs", "ae_title": PACS_AE, "host": "127.0.0.1", "port": port}
            ],
            "initial_backoff_s": 0.1,
            "poll_seconds": 0.1,
        },
    )
    return node, pacs


def _send_as_pacs(node: Node, datasets: list[Dataset], folder: Path) -> None:
    from dicom_node.network import scu

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for n, dataset in enumerate(datasets):
        paths.append(folder / f"{n}.dcm")
        dataset.save_as(paths[-1], enforce_file_format=True)
    peer = scu.Peer(
        host="127.0.0.1", port=node.port, called_ae=node.settings.dicom.ae_title, calling_ae=PACS_AE
    )
    assert all(o.ok for o in scu.send_files(peer, paths))


def _delivered(node: Node, pacs: DemoPacs, count: int, timeout: float = 60.0) -> list[Dataset]:
    def sent() -> list[exports.ExportRow]:
        with node.database.session() as session:
            rows = exports.list_exports(session)
        return rows if len(rows) >= count and all(r.state == ExportState.SENT for r in rows) else []

    rows = wait_for(sent, timeout=timeout, what=f"{count} export(s) delivered")
    return [dcmread(pacs.received[r.sop_instance_uid]) for r in rows]


def test_a_study_gets_sr_heatmaps_and_segs_back_in_its_own_study(
    node_factory: Factory, tmp_path: Path
) -> None:
    node, pacs = _node_with_pacs(node_factory, tmp_path, segmentation=True)
    try:
        case = make_case(1)
        assert case.report_dataset is not None
        _send_as_pacs(node, [*case.datasets, case.report_dataset], tmp_path / "case")
        (job,) = finished_jobs(node, 1, timeout=120)
        assert job.state == "done", job.error
        objects = _delivered(node, pacs, 7)
    finally:
        pacs.stop()
    kinds = sorted(str(o.Modality) for o in objects)
    assert kinds == ["OT"] * 4 + ["SEG", "SEG", "SR"]  # heatmaps and population maps
    original = case.datasets[0]
    for obj in objects:
        assert obj.PatientID == original.PatientID and obj.PatientName == original.PatientName
        assert obj.StudyInstanceUID == original.StudyInstanceUID
        assert obj.SeriesInstanceUID != original.SeriesInstanceUID
    with node.database.session() as session:
        result = listings.job_detail(session, job_id=job.id).result
    assert result is not None and result.detail is not None
    listed = {o["sop_instance_uid"] for o in result.detail["objects"]}
    assert listed == {str(o.SOPInstanceUID) for o in objects}
    # The PACS sends the whole study back (e.g. to another node): every object the node
    # made, SEG included, is acknowledged and not stored again; a stranger's SEG is refused.
    _send_as_pacs(node, objects, tmp_path / "back")
    with node.database.session() as session:
        own = session.scalars(select(Event).where(Event.kind == "instance.own_result")).all()
        assert len(own) == len(objects)
        assert len(listings.list_jobs(session)) == 1
    stranger = next(o for o in objects if o.Modality == "SEG").copy()
    stranger.Manufacturer = "Other Vendor"
    stranger.SOPInstanceUID = generate_uid()
    stranger.file_meta.MediaStorageSOPInstanceUID = stranger.SOPInstanceUID
    path = tmp_path / "stranger.dcm"
    stranger.save_as(path, enforce_file_format=True)
    peer = scu.Peer(
        host="127.0.0.1", port=node.port, called_ae=node.settings.dicom.ae_title, calling_ae=PACS_AE
    )
    (outcome,) = scu.send_files(peer, [path])
    assert outcome.status == 0x0122


def _notice_text(notice: Dataset) -> str:
    return " ".join(str(item.TextValue) for item in notice.ContentSequence)


def test_a_failed_job_sends_a_short_sr_with_the_reason(
    node_factory: Factory, tmp_path: Path
) -> None:
    node, pacs = _node_with_pacs(node_factory, tmp_path)
    try:
        broken = make_case(11).datasets[0]
        broken.compress(RLELossless)
        stream = bytearray(broken.PixelData)
        stream[200:-200] = bytes(len(stream) - 400)  # segments no longer decode
        broken.PixelData = bytes(stream)
        _send_as_pacs(node, [broken], tmp_path / "broken")
        (job,) = finished_jobs(node, 1)
        assert job.state == "failed"
        (notice,) = _delivered(node, pacs, 1)
    finally:
        pacs.stop()
    assert notice.StudyInstanceUID == broken.StudyInstanceUID
    assert notice.PatientID == broken.PatientID
    assert notice.ConceptNameCodeSequence[0].CodeMeaning == "LLNM analysis failed"
    text = _notice_text(notice)
    assert "failed" in text and "deidentify" in text and "NOT FOR CLINICAL USE" in text


def test_no_nodule_sends_a_short_sr_and_the_switches_turn_notices_off(
    node_factory: Factory, blind_bundle: Path, tmp_path: Path
) -> None:
    vendor = make_case(4).datasets[0]  # a thyroid B-mode view; the blind segmenter misses it
    node, pacs = _node_with_pacs(node_factory, tmp_path, blind_bundle)
    try:
        _send_as_pacs(node, [vendor], tmp_path / "vendor")
        (job,) = finished_jobs(node, 1)
        assert job.state == "done"
        (notice,) = _delivered(node, pacs, 1)
    finally:
        pacs.stop()
    assert notice.StudyInstanceUID == vendor.StudyInstanceUID
    assert "no thyroid nodule" in _notice_text(notice)

    quiet, quiet_pacs = _node_with_pacs(
        node_factory,
        tmp_path / "quiet",
        blind_bundle,
        no_nodule_report=False,
        failure_report=False,
    )
    try:
        _send_as_pacs(quiet, [vendor], tmp_path / "vendor2")
        (job,) = finished_jobs(quiet, 1)
        time.sleep(1.0)
    finally:
        quiet_pacs.stop()
    with quiet.database.session() as session:
        assert exports.list_exports(session) == []
    assert quiet_pacs.received == {}
