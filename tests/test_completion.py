"""Study completion by instance count: real Orthanc as the sender, real peers that cannot answer."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from harness import free_port, wait_for
from orthanc_peer import ORTHANC_AE, Orthanc, running_orthanc
from pydicom import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
    Verification,
)
from report_cases import write_case
from test_imaging_jobs import Factory, finished_jobs

from db import listings, metrics
from db.models import CompletionRule
from dicom_factory import ultrasound
from dicom_node.app.node import Node
from dicom_node.network import scu
from dicom_node.network.study_size import SizeUnknown, study_size
from phantoms import make_case

PEER_AE = "QUERY_PEER"
# (status, identifier) answers of a C-FIND peer, given the query.
Answers = Callable[[Dataset], Iterator[tuple[int, Dataset | None]]]


@contextmanager
def find_peer(answers: Answers | None) -> Iterator[tuple[scu.Peer, list[Dataset]]]:
    """A pynetdicom peer on a free port that answers C-FIND with ``answers``.

    ``None``: it supports C-ECHO only, so it refuses C-FIND. Yields the peer as the node
    calls it and the queries it received.
    """
    ae = AE(ae_title=PEER_AE)
    ae.add_supported_context(Verification)
    queries: list[Dataset] = []
    handlers: list[Any] = []
    if answers is not None:
        ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind)

        def handle_find(event: Any) -> Iterator[tuple[int, Dataset | None]]:
            queries.append(event.identifier)
            yield from answers(event.identifier)

        handlers.append((evt.EVT_C_FIND, handle_find))
    server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=handlers)
    assert server is not None  # block=False returns the running server
    try:
        port = int(server.server_address[1])
        yield (
            scu.Peer(host="127.0.0.1", port=port, called_ae=PEER_AE, calling_ae="LLNM_NODE"),
            queries,
        )
    finally:
        server.shutdown()


def match(query: Dataset, **values: Any) -> Dataset:
    found = Dataset()
    found.QueryRetrieveLevel = query.QueryRetrieveLevel
    found.StudyInstanceUID = query.StudyInstanceUID
    for keyword, value in values.items():
        setattr(found, keyword, value)
    return found


def series_counts_only(query: Dataset) -> Iterator[tuple[int, Dataset | None]]:
    """A peer that knows no study-level count but the series-level ones."""
    if query.QueryRetrieveLevel == "STUDY":
        yield 0xFF00, match(query)
    else:
        yield 0xFF00, match(query, SeriesInstanceUID="1.2.3.1", NumberOfSeriesRelatedInstances=2)
        yield 0xFF00, match(query, SeriesInstanceUID="1.2.3.2", NumberOfSeriesRelatedInstances=1)
    yield 0x0000, None


def no_count(query: Dataset) -> Iterator[tuple[int, Dataset | None]]:
    yield 0xFF00, match(query, SeriesInstanceUID="1.2.3.1")
    yield 0x0000, None


def failure(query: Dataset) -> Iterator[tuple[int, Dataset | None]]:
    yield 0xC000, None


def nothing_matches(query: Dataset) -> Iterator[tuple[int, Dataset | None]]:
    yield 0x0000, None


def test_study_size_asks_by_study_uid_only_and_adds_up_series_counts() -> None:
    with find_peer(series_counts_only) as (peer, queries):
        assert study_size(peer, "1.2.3", timeout_s=2.0) == 3
    study, series = queries
    assert {e.keyword for e in study} == {
        "QueryRetrieveLevel",
        "StudyInstanceUID",
        "NumberOfStudyRelatedInstances",
    }
    assert {e.keyword for e in series} == {
        "QueryRetrieveLevel",
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "NumberOfSeriesRelatedInstances",
    }
    assert study.StudyInstanceUID == series.StudyInstanceUID == "1.2.3"
    assert all(e.value in ("", None) for e in study if e.keyword.startswith("NumberOf"))


@pytest.mark.parametrize(
    ("answers", "why"),
    [
        (None, "aborted"),  # no C-FIND context: the association is refused
        (failure, "0xC000"),
        (no_count, "without Number of Study/Series Related Instances"),
        (nothing_matches, "0 studies matched"),
    ],
)
def test_study_size_unknown_when_the_peer_cannot_say(answers: Answers | None, why: str) -> None:
    with find_peer(answers) as (peer, _), pytest.raises(SizeUnknown, match=why):
        study_size(peer, "1.2.3", timeout_s=2.0)


def test_study_size_gives_up_quickly_on_a_silent_or_absent_peer() -> None:
    release = threading.Event()

    def silent(query: Dataset) -> Iterator[tuple[int, Dataset | None]]:
        release.wait(10)
        yield 0x0000, None

    with find_peer(silent) as (peer, _):
        started = time.monotonic()
        with pytest.raises(SizeUnknown, match="no C-FIND answer"):
            study_size(peer, "1.2.3", timeout_s=0.5)
        assert time.monotonic() - started < 2.0
        release.set()
    absent = scu.Peer(host="127.0.0.1", port=free_port(), called_ae=PEER_AE)
    with pytest.raises(SizeUnknown, match="aborted"):
        study_size(absent, "1.2.3", timeout_s=0.5)


def _queued_events(node: Node) -> list[dict[str, Any]]:
    with node.database.session() as session:
        return [
            {"job": job.id, "version": job.version, **(event.detail or {})}
            for job in reversed(listings.list_jobs(session))
            for event in listings.job_detail(session, job_id=job.id).events
            if event.kind == "job.queued"
        ]


def _orthanc_study(orthanc: Orthanc, paths: list[Path]) -> str:
    instance = orthanc.upload(paths[0])
    for path in paths[1:]:
        orthanc.upload(path)
    return str(orthanc.get(f"/instances/{instance}/study")["ID"])


def test_a_study_orthanc_sends_is_complete_when_released_and_late_instances_rerun(
    node_factory: Factory, tmp_path: Path
) -> None:
    orthanc_port = free_port()
    node = node_factory(
        completion={
            "quiet_seconds": 3600,
            "query_callers": [{"ae_title": ORTHANC_AE, "host": "127.0.0.1", "port": orthanc_port}],
        }
    )
    case = make_case(1)
    paths = write_case(case, tmp_path / "outbox")
    with running_orthanc(
        tmp_path / "orthanc",
        dicom_port=orthanc_port,
        node_ae=node.settings.dicom.ae_title,
        node_port=node.port,
        route_stable_studies=False,
    ) as orthanc:
        orthanc.send_to_node(_orthanc_study(orthanc, paths))
        sent = time.monotonic()
        (first,) = wait_for(
            lambda: _queued_events(node), timeout=10, what="the study complete by count"
        )
        waited = time.monotonic() - sent
        finished_jobs(node, 1, timeout=120)

        late = case.datasets[0].copy()
        late.SOPInstanceUID = generate_uid()
        late.file_meta.MediaStorageSOPInstanceUID = late.SOPInstanceUID
        late.save_as(tmp_path / "late.dcm", enforce_file_format=True)
        orthanc.send_to_node(orthanc.upload(tmp_path / "late.dcm"))
        second = wait_for(
            lambda: _queued_events(node)[1:], timeout=10, what="the grown study complete again"
        )[0]
        finished_jobs(node, 2, timeout=120)

    assert waited < 5, waited  # not the quiet time
    assert first == {
        "job": first["job"],
        "version": 1,
        "rule": CompletionRule.INSTANCE_COUNT,
        "asked": ORTHANC_AE,
        "expected": 3,
        "held": 3,
    }
    # The late instance made a new job version (re-run policy), complete by count again.
    assert (second["version"], second["rule"], second["held"]) == (2, "instance_count", 4)
    with node.database.session() as session:
        counts = metrics.node_counts(session).completions_by_rule
    assert counts == {CompletionRule.INSTANCE_COUNT: 2, CompletionRule.QUIET_TIME: 0}


def test_a_caller_that_refuses_c_find_completes_by_the_quiet_time(
    node_factory: Factory, tmp_path: Path
) -> None:
    with find_peer(None) as (peer, _):
        node = node_factory(
            completion={
                "quiet_seconds": 2.0,
                "query_callers": [{"ae_title": PEER_AE, "host": "127.0.0.1", "port": peer.port}],
            }
        )
        folder = tmp_path / "study"
        folder.mkdir()
        study_uid = generate_uid()
        for n in range(2):
            ultrasound(study_uid=study_uid, seed=n).save_as(
                folder / f"{n}.dcm", enforce_file_format=True
            )
        sender = scu.Peer(
            host="127.0.0.1", port=node.port, called_ae=node.settings.dicom.ae_title,
            calling_ae=PEER_AE,
        )  # fmt: skip
        started = time.monotonic()
        assert all(o.ok for o in scu.send_files(sender, [folder]))
        (queued,) = wait_for(
            lambda: _queued_events(node), timeout=15, what="the study complete by quiet time"
        )
        waited = time.monotonic() - started
        (job,) = finished_jobs(node, 1, timeout=120)
    with node.database.session() as session:
        events = listings.job_detail(session, job_id=job.id).events
    unknown = [e for e in events if e.kind == "completion.count_unknown"]
    assert len(unknown) == 1 and unknown[0].detail is not None
    assert unknown[0].detail["asked"] == PEER_AE and "aborted" in unknown[0].detail["reason"]
    assert queued["rule"] == CompletionRule.QUIET_TIME
    assert waited >= 2.0


def test_an_aborted_association_leaves_its_study_to_the_quiet_time(
    node_factory: Factory, tmp_path: Path
) -> None:
    with find_peer(series_counts_only) as (peer, queries):
        node = node_factory(
            completion={
                "quiet_seconds": 1.0,
                "query_callers": [{"ae_title": PEER_AE, "host": "127.0.0.1", "port": peer.port}],
            }
        )
        image = ultrasound()
        ae = AE(ae_title=PEER_AE)
        ae.add_requested_context(image.SOPClassUID, image.file_meta.TransferSyntaxUID)
        assoc = ae.associate("127.0.0.1", node.port, ae_title=node.settings.dicom.ae_title)
        assert assoc.is_established
        assert assoc.send_c_store(image).Status == 0x0000
        assoc.abort()
        (queued,) = wait_for(
            lambda: _queued_events(node), timeout=15, what="the study complete by quiet time"
        )
        finished_jobs(node, 1, timeout=120)
    assert queued["rule"] == CompletionRule.QUIET_TIME
    assert queries == []  # nobody was asked
