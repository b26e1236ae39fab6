"""End to end with a real Orthanc: PACS routes a study to the node, the results come back."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from harness import free_port, wait_for
from orthanc_peer import ORTHANC_AE, Orthanc, running_orthanc
from report_cases import write_case
from test_imaging_jobs import Factory

from db import exports, listings
from db.models import ExportState
from phantoms import make_case

ROUND_TRIP_TIMEOUT_S = 180.0


def _wait_for_results(orthanc: Orthanc, study_uid: str) -> list[dict[str, Any]]:
    def results() -> list[dict[str, Any]]:
        series = orthanc.series_of_study(study_uid)
        modalities = {s["MainDicomTags"].get("Modality") for s in series}
        heatmaps = [s for s in series if s["MainDicomTags"].get("Modality") == "OT"]
        # 2 images + report SR + results, and both heatmaps stored (they are sent one by one)
        done = "SR" in modalities and len(series) >= 4
        return series if done and any(len(h["Instances"]) >= 2 for h in heatmaps) else []

    return wait_for(
        results,
        timeout=ROUND_TRIP_TIMEOUT_S,
        what="the results in Orthanc",
        interval=0.5,
        describe=orthanc.log_tail,
    )


def test_a_study_routed_by_orthanc_gets_its_sr_and_heatmaps_back_in_the_same_study(
    node_factory: Factory, tmp_path: Path
) -> None:
    orthanc_port = free_port()
    node = node_factory(
        export={
            "destinations": [
                {"name": "pacs", "ae_title": ORTHANC_AE, "host": "127.0.0.1", "port": orthanc_port}
            ],
            "initial_backoff_s": 0.2,
        }
    )
    case = make_case(1)
    study_uid = str(case.datasets[0].StudyInstanceUID)
    with running_orthanc(
        tmp_path / "orthanc",
        dicom_port=orthanc_port,
        node_ae=node.settings.dicom.ae_title,
        node_port=node.port,
    ) as orthanc:
        for path in write_case(case, tmp_path / "outbox"):
            orthanc.upload(path)
        series = _wait_for_results(orthanc, study_uid)
        # Orthanc routes the study again once the results made it unstable: the node
        # must acknowledge its own objects and start no second job.
        time.sleep(4.0)
        series = orthanc.series_of_study(study_uid)
        patients = orthanc.get("/patients")
        sr_series = [s for s in series if s["MainDicomTags"].get("SeriesNumber") == "9901"]
        sr_tags = [
            orthanc.get(f"/instances/{i}/simplified-tags") for i in sr_series[0]["Instances"]
        ]

    descriptions = sorted(s["MainDicomTags"].get("SeriesDescription", "") for s in series)
    results = [s for s in series if s["MainDicomTags"].get("SeriesNumber", "").startswith("99")]
    by_modality = {s["MainDicomTags"]["Modality"]: s for s in results}
    assert set(by_modality) == {"SR", "OT"}, descriptions
    assert len(sr_tags) == 1  # one SR, not one per routing
    assert all("NOT FOR CLINICAL USE" in s["MainDicomTags"]["SeriesDescription"] for s in results)
    assert len(patients) == 1  # same patient as the images, not a pseudonym
    assert sr_tags[0]["PatientID"] == case.datasets[0].PatientID
    assert sr_tags[0]["StudyInstanceUID"] == study_uid
    assert "LLNM probability" in str(sr_tags[0]["ContentSequence"])
    heatmaps = next(s for s in results if s["MainDicomTags"]["Modality"] != "SR")
    assert len(heatmaps["Instances"]) == 4  # a heatmap and a population map per view

    with node.database.session() as session:
        jobs = listings.list_jobs(session)
        sent = exports.list_exports(session)
        events = [e.kind for e in listings.job_detail(session, job_id=jobs[0].id).events]
    assert len(jobs) == 1 and jobs[0].state == "done", jobs
    assert len(sent) == 5 and all(e.state == ExportState.SENT for e in sent), sent
    assert "export.sent" in events
