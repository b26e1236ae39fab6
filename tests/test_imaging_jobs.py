"""Phantom studies through a running node: intake, de-identification and crop as jobs."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from pydicom import Dataset
from pydicom.uid import RLELossless
from sqlalchemy import select

from db import listings
from db.models import Job, JobState, Pseudonym
from dicom_node.app.node import Node
from dicom_node.network import scu
from phantoms import PhantomOptions, make_case

Factory = Callable[..., Node]


def send(node: Node, datasets: list[Dataset], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for n, dataset in enumerate(datasets):
        paths.append(folder / f"{n}.dcm")
        dataset.save_as(paths[-1], enforce_file_format=True)
    peer = scu.Peer(host="127.0.0.1", port=node.port, called_ae=node.settings.dicom.ae_title)
    assert [o.status for o in scu.send_files(peer, paths)] == [0] * len(paths)


def finished_jobs(node: Node, count: int, timeout: float = 60.0) -> list[listings.JobRow]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with node.database.session() as session:
            jobs = listings.list_jobs(session)
        if len(jobs) == count and all(j.state in {"done", "failed", "dead"} for j in jobs):
            return jobs
        time.sleep(0.1)
    raise AssertionError(f"jobs did not finish: {jobs}")


def test_corrupt_pixel_stream_fails_its_job_and_the_node_goes_on(
    node_factory: Factory, tmp_path: Path
) -> None:
    node = node_factory()
    broken = make_case(11)
    transverse = broken.datasets[0]
    transverse.compress(RLELossless)
    stream = bytearray(transverse.PixelData)
    stream[200:-200] = bytes(len(stream) - 400)  # header and delimiters intact, segments not
    transverse.PixelData = bytes(stream)
    send(node, [transverse], tmp_path / "broken")
    (failed,) = finished_jobs(node, 1)
    assert failed.state == "failed"
    assert failed.error is not None and failed.error.startswith("deidentify:"), failed.error
    healthy = make_case(12, PhantomOptions(rgb=True))
    send(node, [*healthy.datasets], tmp_path / "healthy")
    jobs = {j.id: j for j in finished_jobs(node, 2)}
    done = jobs[max(jobs)]
    assert done.state == "done", done.error
    with node.database.session() as session:
        detail = listings.job_detail(session, job_id=done.id)
        stages = [e.detail["stage"] for e in detail.events if e.kind == "stage.done" and e.detail]
        assert stages == ["intake", "deidentify", "crop", "segment", "features", "infer", "report"]
        crop = next(
            e.detail["summary"]
            for e in detail.events
            if e.kind == "stage.done" and e.detail and e.detail["stage"] == "crop"
        )
        assert crop["images"] == 2 and crop["calibrated"] == 2
        mapped = session.scalars(select(Pseudonym).where(Pseudonym.job_fk == done.id)).all()
        originals = {p.original for p in mapped}
        assert str(healthy.datasets[0].StudyInstanceUID) in originals
        assert session.get_one(Job, done.id).state == JobState.DONE
    crops = sorted((node.spool.layout.work_dir(done.id) / "crop").glob("*.png"))
    assert len(crops) == 2
