"""Malformed header values through a real ``llnm-node serve``: a result comes back, no value leaks.

Each study is a phantom whose headers carry values that break their Value
Representation, every one a unique string. The node must still predict (the
result objects are built from normalised values), record which attributes it
dropped (keywords only), fail bad pixel-module input for good on the first
attempt with a failure notice, and never write one of the values into its log,
its database (outside the patient and pseudonym maps) or an API response.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
from harness import free_port, wait_for
from pydicom import Dataset, dcmread
from pydicom.dataelem import RawDataElement
from pydicom.tag import Tag
from sqlalchemy import inspect
from test_api import API, TOKEN
from test_report_stage import PACS_AE
from test_serve_dcmtk import NODE_AE, ServeFactory

from dicom_node.app.demo import DemoPacs
from dicom_node.network import scu
from phantoms import make_case

# keyword -> (VR, a value that breaks it and appears nowhere else)
MALFORMED = {
    "PatientBirthDate": ("DA", "1992-03-25"),
    "StudyDate": ("DA", "Grace-66894204"),
    "StudyTime": ("TM", "<script>77</script>"),
    "SeriesTime": ("TM", "Tm-Lyra-31417"),
    "AcquisitionDateTime": ("DT", "Dt-Orion-58213"),
    "PatientAge": ("AS", "Age-Vega-9090"),
    "PatientWeight": ("DS", "Ds-Rigel-4471"),
    "ReferringPhysicianName": ("PN", "Kovacs\x01Ruth-60613"),
}
UNIQUE = [value for _, value in MALFORMED.values()] + ["Kovacs", "ISO 2022 IR 999"]


def _set(dataset: Dataset, keyword: str, vr: str, value: str) -> None:
    """``value`` as the raw bytes of ``keyword``: no check, no conversion, as a sender writes."""
    raw = value.encode("latin-1")
    raw += b" " * (len(raw) % 2)
    dataset[Tag(keyword)] = RawDataElement(Tag(keyword), vr, len(raw), raw, 0, False, True)


def _malformed(seed: int) -> list[Dataset]:
    case = make_case(seed)
    datasets = [*case.datasets, *([case.report_dataset] if case.report_dataset else [])]
    for dataset in datasets:
        for keyword, (vr, value) in MALFORMED.items():
            _set(dataset, keyword, vr, value)
    return datasets


def _unknown_character_set(seed: int) -> list[Dataset]:
    datasets = list(make_case(seed).datasets)
    for dataset in datasets:
        _set(dataset, "SpecificCharacterSet", "CS", "ISO 2022 IR 999")
    return datasets


def _bad_frames(seed: int) -> list[Dataset]:
    datasets = list(make_case(seed).datasets)
    for dataset in datasets:
        _set(dataset, "NumberOfFrames", "IS", "abc")
    return datasets


def _send(port: int, datasets: list[Dataset], folder: Path) -> None:
    folder.mkdir(parents=True)
    paths = []
    for number, dataset in enumerate(datasets):
        paths.append(folder / f"{number}.dcm")
        dataset.save_as(paths[-1], enforce_file_format=True)
    peer = scu.Peer(host="127.0.0.1", port=port, called_ae=NODE_AE, calling_ae=PACS_AE)
    assert all(o.ok for o in scu.send_files(peer, paths))


def _database_text(node: Any) -> str:
    """Every row of every table but the patient and pseudonym maps, as text."""
    tables = [
        t for t in inspect(node.engine).get_table_names() if t not in ("patients", "pseudonyms")
    ]
    rows = [f"{table}: {row}" for table in tables for row in node.rows(f"SELECT * FROM {table}")]
    assert any(r.startswith("events:") for r in rows)
    return "\n".join(rows)


def test_malformed_values_still_give_a_result_and_never_leak(tmp_path: Path) -> None:
    pacs = DemoPacs(tmp_path / "pacs")
    pacs_port = pacs.start()
    api_port = free_port()
    factory = ServeFactory(tmp_path)
    node = factory(
        quiet_seconds=1.0,
        extra={
            "api": {**API, "port": api_port},
            "export": {
                "destinations": [
                    {"name": "pacs", "ae_title": PACS_AE, "host": "127.0.0.1", "port": pacs_port}
                ],
                "initial_backoff_s": 0.1,
                "poll_seconds": 0.2,
            },
        },
    )
    try:
        node.wait_ready()
        studies = {
            "malformed": _malformed(11),
            "charset": _unknown_character_set(12),
            "frames": _bad_frames(13),
        }
        for name, datasets in studies.items():
            _send(node.port, datasets, tmp_path / name)
        uids = {name: str(ds[0].StudyInstanceUID) for name, ds in studies.items()}

        def finished() -> list[Any]:
            rows = node.rows(
                "SELECT s.study_instance_uid, j.id, j.state, j.attempts, j.error FROM jobs j "
                "JOIN studies s ON s.id = j.study_fk"
            )
            done = len(rows) == 3 and all(r[2] in ("done", "failed", "dead") for r in rows)
            return rows if done else []

        jobs = {r[0]: r for r in wait_for(finished, timeout=180, what="three jobs finished")}
        # a prediction comes back despite the malformed values; the bad frames fail at once
        for name in ("malformed", "charset"):
            job = jobs[uids[name]]
            assert job[2] == "done", job[4]
        frames = jobs[uids["frames"]]
        assert frames[2] == "failed" and frames[3] == 1 and "NumberOfFrames" in frames[4]

        def delivered() -> dict[str, list[Dataset]]:
            objects = [dcmread(p) for p in list(pacs.received.values())]
            by_study: dict[str, list[Dataset]] = {}
            for o in objects:
                by_study.setdefault(str(o.StudyInstanceUID), []).append(o)
            srs = {u: [o for o in by_study.get(u, []) if o.Modality == "SR"] for u in uids.values()}
            return by_study if all(srs.values()) else {}

        returned = wait_for(delivered, timeout=120, what="an SR back for every study")
        sr = next(o for o in returned[uids["malformed"]] if o.Modality == "SR")
        for name in ("malformed", "charset"):
            ((outcome, probability),) = node.rows(
                "SELECT r.outcome, r.probability FROM results r WHERE r.job_fk = :job",
                job=jobs[uids[name]][1],
            )
            assert outcome == "predicted" and probability is not None
        assert "LLNM probability" in sr.to_json()
        assert sr.get("PatientBirthDate", "") == "" and sr.get("StudyDate", "") == ""
        notice = next(o for o in returned[uids["frames"]] if o.Modality == "SR")
        assert "NumberOfFrames" in notice.to_json()

        repaired = node.events("header.repaired")
        assert len(repaired) == 2
        named = " ".join(str(e.message) for e in repaired)
        for keyword in [*MALFORMED, "SpecificCharacterSet"]:
            assert keyword in named
        assert all(e.level == "warning" for e in repaired)

        with httpx.Client(base_url=f"http://127.0.0.1:{api_port}", timeout=30) as client:
            bearer = {"Authorization": f"Bearer {TOKEN}"}
            paths = ["/api/v1/jobs", "/api/v1/studies", "/api/v1/exports", "/metrics"]
            paths += [f"/api/v1/jobs/{job[1]}" for job in jobs.values()]
            responses = [client.get(path, headers=bearer) for path in paths]
            origin = {"Origin": f"http://127.0.0.1:{api_port}"}
            client.post("/ui/login", data={"token": TOKEN}, headers=origin)  # a session
            pages = ["/ui/", "/ui/jobs.json", "/ui/exports"]
            pages += [f"/ui/jobs/{job[1]}" for job in jobs.values()]
            responses += [client.get(page) for page in pages]
        assert [r.status_code for r in responses] == [200] * len(responses)
        answered = responses
        places = {
            "log": node.log(),
            "database": _database_text(node),
            "api": "\n".join(r.text for r in answered),
        }
    finally:
        factory.close_all()
        pacs.stop()
    for where, content in places.items():
        leaked = [value for value in UNIQUE if value in content]
        assert not leaked, f"{where} holds {leaked}"
