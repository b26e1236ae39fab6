"""The infer stage: LLNM-Net on a study's measured views, its result, heatmaps and labels."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from test_imaging_jobs import Factory, done_study, finished_jobs, send

from db import listings
from models.bundle import NOT_FOR_CLINICAL_USE, seal_bundle, verify_bundle
from models.demo import DEMO_BUNDLE_DIR
from models.llnm.explain import CONTRIBUTION_GROUPS
from phantoms import make_case


def stage_summary(detail: listings.JobDetail, stage: str) -> dict[str, object]:
    return next(
        e.detail["summary"]
        for e in detail.events
        if e.kind == "stage.done" and e.detail and e.detail["stage"] == stage
    )


def test_a_phantom_study_gets_a_probability_stage_contributions_and_heatmaps(
    node_factory: Factory, tmp_path: Path
) -> None:
    node = node_factory()
    case = make_case(1)
    assert case.report_dataset is not None
    detail = done_study(node, [*case.datasets, case.report_dataset], tmp_path / "case")
    result = detail.result
    assert result is not None and result.outcome == "predicted"
    assert result.probability is not None and 0.0 <= result.probability <= 1.0
    assert result.risk_stage in (1, 2, 3)
    assert result.positive == (result.probability >= 0.5)
    assert result.synthetic_bundle is True
    assert result.detail is not None
    assert result.detail["clinical_use_label"] == NOT_FOR_CLINICAL_USE
    assert sum(result.detail["stage_probabilities"]) == pytest.approx(1.0, abs=1e-3)
    summary = stage_summary(detail, "infer")
    assert summary["report_text_used"] is True
    contributions = summary["contributions"]
    assert isinstance(contributions, dict) and list(contributions) == list(CONTRIBUTION_GROUPS)
    assert sum(contributions.values()) == pytest.approx(100.0, abs=0.1)
    signed = result.detail["shapley_logit"]
    assert list(signed) == list(CONTRIBUTION_GROUPS)
    total = sum(abs(v) for v in signed.values())
    for group, value in signed.items():  # the percentages are the |signed values|' shares
        assert contributions[group] == pytest.approx(100 * abs(value) / total, abs=0.1)
    views = result.detail["views"]
    assert [v["view"] for v in views] == ["transverse", "longitudinal"]
    work = node.spool.layout.work_dir(detail.job.id)
    for view in views:
        heatmap = cv2.imread(str(work / view["heatmap"]), cv2.IMREAD_GRAYSCALE)
        assert heatmap is not None and heatmap.max() > 200
        crop = cv2.imread(str(work / "crop" / Path(view["heatmap"]).name.replace("_heatmap", "")))
        assert crop is not None and heatmap.shape == crop.shape[:2]
        nodule = cv2.imread(
            str(work / "segment" / Path(view["heatmap"]).name.replace("heatmap", "nodule")), 0
        )
        assert nodule is not None
        ys, xs = np.nonzero(heatmap)
        assert nodule[ys, xs].any()  # the map sits on the nodule's box


def test_a_study_without_report_is_predicted_from_the_images(
    node_factory: Factory, tmp_path: Path
) -> None:
    node = node_factory()
    detail = done_study(node, [*make_case(2).datasets], tmp_path / "case")
    assert detail.result is not None and detail.result.outcome == "predicted"
    assert stage_summary(detail, "infer")["report_text_used"] is False
    assert stage_summary(detail, "infer")["contributions"]["report"] == 0.0  # type: ignore[index]


def test_a_bundle_without_llnm_net_fails_the_job_clearly(
    node_factory: Factory, tmp_path: Path
) -> None:
    bundle = tmp_path / "segmenters-only"
    for component in ("nodule", "thyroid"):
        shutil.copytree(DEMO_BUNDLE_DIR / component, bundle / component)
    manifest = verify_bundle(DEMO_BUNDLE_DIR)
    seal_bundle(bundle, name="seg", version="1", intended_use=manifest.intended_use,
                training_data={"synthetic": True}, input_spec={})  # fmt: skip
    node = node_factory(model={"bundle_dir": bundle})
    send(node, [*make_case(1).datasets], tmp_path / "case")
    (job,) = finished_jobs(node, 1, timeout=120)
    assert job.state == "failed"
    assert job.error is not None and "has no LLNM-Net" in job.error
