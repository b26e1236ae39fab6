"""Phantom studies through a running node: intake, de-identification and crop as jobs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from harness import wait_for
from pydicom import Dataset
from pydicom.uid import RLELossless
from sqlalchemy import select

from db import listings
from db.models import Job, JobState, Pseudonym
from dicom_node.app.node import Node
from dicom_node.network import scu
from phantoms import PhantomOptions, make_case

Factory = Callable[..., Node]
FINISHED = {"done", "failed", "dead"}


def send(node: Node, datasets: list[Dataset], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for n, dataset in enumerate(datasets):
        paths.append(folder / f"{n}.dcm")
        dataset.save_as(paths[-1], enforce_file_format=True)
    peer = scu.Peer(host="127.0.0.1", port=node.port, called_ae=node.settings.dicom.ae_title)
    assert [o.status for o in scu.send_files(peer, paths)] == [0] * len(paths)


def finished_jobs(
    node: Node, count: int, timeout: float = 60.0, describe: Callable[[], str] | None = None
) -> list[listings.JobRow]:
    """Wait until ``count`` jobs exist and all are done, failed or dead; they, newest first."""

    def jobs() -> list[listings.JobRow]:
        with node.database.session() as session:
            return listings.list_jobs(session)

    def finished() -> list[listings.JobRow]:
        found = jobs()
        return found if len(found) == count and all(j.state in FINISHED for j in found) else []

    def why() -> str:
        return f"jobs: {jobs()}" + ("" if describe is None else f"\n{describe()}")

    return wait_for(finished, timeout=timeout, what=f"{count} finished job(s)", describe=why)


def done_study(
    node: Node, datasets: list[Dataset], folder: Path, timeout: float = 120.0
) -> listings.JobDetail:
    """Send ``datasets`` as one study, wait for its job to be done; its detail."""
    send(node, datasets, folder)
    (job,) = finished_jobs(node, 1, timeout=timeout)
    assert job.state == "done", job.error
    with node.database.session() as session:
        return listings.job_detail(session, job_id=job.id)


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
        assert stages == [
            "intake",
            "deidentify",
            "crop",
            "segment",
            "features",
            "infer",
            "report",
            "shadow",
        ]
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
