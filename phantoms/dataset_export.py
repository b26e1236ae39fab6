"""Write phantom cases as DICOM studies and as a training data set.

Layout of ``out`` after :func:`export_phantoms`::

    out/
      dicom/<case_id>/            one study per case (send it with `llnm-node send`)
        US_transverse.dcm         Ultrasound Image Storage, Explicit VR Little Endian
        US_longitudinal.dcm
        SR_report.dcm             Basic Text SR with the report (only when the case has one)
      dataset/
        manifest.json             generator, seed, count, options, site profile (only when
                                  not the default), stage definition, positives, best
                                  achievable AUC
        cases.jsonl               one JSON object per case (fields below)
        cases.csv                 the same, flattened: one row per case, per-view columns
                                  prefixed ``transverse_`` / ``longitudinal_``
        images/<case_id>_<view>.png          the full frame as stored in the DICOM file
                                             (8-bit gray, or RGB), burned-in text included
        masks/<case_id>_<view>_nodule.png    full-frame masks, 0 or 255
        masks/<case_id>_<view>_thyroid.png   gland including the nodule

Case fields: ``case_id``, ``seed`` (the case's seed for ``make_case``),
``study_instance_uid``, ``age_years``, ``sex`` (F/M), ``report_text`` (null
when the case has no report), ``llnm_label`` (0/1), ``llnm_probability``
(the true probability), ``risk_stage`` (the nodal stage 1-3,
:func:`phantoms.labels.nodal_stage`), ``node_count`` (metastatic lateral
nodes, 0 when negative), ``largest_node_cm`` (0 when none), ``node_sizes_cm``
(each node, cases.jsonl only), ``study_dir`` (the case's DICOM study folder,
relative to ``dataset/``), ``capsule_distance_mm`` (true
minimum over both views), ``lobe``, ``region`` (upper/middle/lower),
``size_mm`` (largest dimension), ``dimensions_mm`` (transverse, AP,
longitudinal), ``shape``, ``echogenicity``, ``margin``, ``calcification``,
``tirads_level``, ``tirads_points``, and ``views``: for each view its
``view``, ``image``, ``nodule_mask``, ``thyroid_mask`` (paths relative to
``dataset/``), ``image_area`` ([x0, y0, x1, y1], x1/y1 exclusive; crop with
``image[y0:y1, x0:x1]``), ``mm_per_pixel`` ([x, y]) and
``capsule_distance_mm``.

With a site profile (``options.site``, :mod:`phantoms.site_profile`),
``llnm_probability`` is the site's true probability (prevalence shift
applied), ``llnm_label`` the recorded label (label noise applied), and the
manifest's ``best_achievable_auc`` the AUC of the one against the other: the
site's Bayes AUC. The manifest's ``site_profile`` holds the profile's name and
values; it is absent for the default profile, whose files are as they were.

Case ``i`` of a run with seed ``S`` has seed
``SeedSequence([S, i]).generate_state(1)[0]``, so runs with different seeds
do not share cases and case ``i`` does not depend on ``n``.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from rich.progress import track

from imaging.png import write_png
from phantoms.case import PhantomCase, PhantomOptions, make_case
from phantoms.labels import (
    MACRO_NODE_CM,
    MAX_MICRO_NODES,
    MICRO_NODE_CM,
    best_achievable_auc,
)
from phantoms.site_profile import DEFAULT_SITE

_CASE_COLUMNS = (
    "case_id",
    "seed",
    "study_instance_uid",
    "age_years",
    "sex",
    "report_text",
    "llnm_label",
    "llnm_probability",
    "risk_stage",
    "node_count",
    "largest_node_cm",
    "study_dir",
    "capsule_distance_mm",
    "lobe",
    "region",
    "size_mm",
    "dimensions_mm",
    "shape",
    "echogenicity",
    "margin",
    "calcification",
    "tirads_level",
    "tirads_points",
)
_VIEW_COLUMNS = (
    "image",
    "nodule_mask",
    "thyroid_mask",
    "image_area",
    "mm_per_pixel",
    "capsule_distance_mm",
)


@dataclass(frozen=True)
class ExportSummary:
    """What an export wrote."""

    cases: int
    reports: int
    positives: int
    best_achievable_auc: float | None  # None when one class is absent
    dicom_dir: Path
    dataset_dir: Path


def case_seed(seed: int, index: int) -> int:
    """The seed of case ``index`` in a run with ``seed``."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def _write_png(path: Path, pixels: NDArray[np.uint8]) -> str:
    write_png(path, pixels)
    return f"{path.parent.name}/{path.name}"


def _write_case(case: PhantomCase, dicom_dir: Path, dataset_dir: Path) -> dict[str, Any]:
    study = dicom_dir / case.case_id
    study.mkdir(parents=True, exist_ok=True)
    for truth, ds in zip(case.images, case.datasets, strict=True):
        ds.save_as(study / f"US_{truth.view}.dcm", enforce_file_format=True)
    if case.report_dataset is not None:
        case.report_dataset.save_as(study / "SR_report.dcm", enforce_file_format=True)
    views = []
    for truth in case.images:
        stem = f"{case.case_id}_{truth.view}"
        views.append(
            {
                "view": truth.view,
                "image": _write_png(dataset_dir / "images" / f"{stem}.png", truth.pixels),
                "nodule_mask": _write_png(
                    dataset_dir / "masks" / f"{stem}_nodule.png",
                    truth.nodule_mask.astype(np.uint8) * 255,
                ),
                "thyroid_mask": _write_png(
                    dataset_dir / "masks" / f"{stem}_thyroid.png",
                    truth.thyroid_mask.astype(np.uint8) * 255,
                ),
                "image_area": list(truth.image_area),
                "mm_per_pixel": list(truth.mm_per_pixel),
                "capsule_distance_mm": round(truth.capsule_distance_mm, 4),
            }
        )
    return {
        "case_id": case.case_id,
        "seed": case.seed,
        "study_instance_uid": str(case.datasets[0].StudyInstanceUID),
        "age_years": case.age_years,
        "sex": case.sex,
        "report_text": case.report_text,
        "llnm_label": int(case.llnm_label),
        "llnm_probability": round(case.llnm_probability, 6),
        "risk_stage": case.risk_stage,
        "node_count": len(case.node_sizes_cm),
        "largest_node_cm": max(case.node_sizes_cm, default=0.0),
        "node_sizes_cm": list(case.node_sizes_cm),
        "study_dir": Path(os.path.relpath(study, dataset_dir)).as_posix(),
        "capsule_distance_mm": round(case.capsule_distance_mm, 4),
        "lobe": case.lobe,
        "region": case.region,
        "size_mm": round(case.size_mm, 3),
        "dimensions_mm": [round(d, 3) for d in case.dimensions_mm],
        "shape": case.shape,
        "echogenicity": case.echogenicity,
        "margin": case.margin,
        "calcification": case.calcification,
        "tirads_level": case.tirads.level,
        "tirads_points": case.tirads.points,
        "views": views,
    }


def _csv_row(record: dict[str, Any]) -> dict[str, Any]:
    row = {c: record[c] for c in _CASE_COLUMNS}
    row["dimensions_mm"] = " ".join(str(d) for d in record["dimensions_mm"])
    row["report_text"] = record["report_text"] or ""
    for view in record["views"]:
        for column in _VIEW_COLUMNS:
            value = view[column]
            text = " ".join(str(v) for v in value) if isinstance(value, list) else value
            row[f"{view['view']}_{column}"] = text
    return row


def export_phantoms(
    out: Path,
    *,
    n: int,
    seed: int = 0,
    options: PhantomOptions | None = None,
    progress: bool = False,
) -> ExportSummary:
    """Generate ``n`` cases and write them under ``out`` (see the module docstring).

    Raises
    ------
    ValueError
        If ``n`` is not positive or the options' frame is too small.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, not {n}")
    dicom_dir, dataset_dir = out / "dicom", out / "dataset"
    for folder in (dicom_dir, dataset_dir / "images", dataset_dir / "masks"):
        folder.mkdir(parents=True, exist_ok=True)
    options = options or PhantomOptions()
    records: list[dict[str, Any]] = []
    cases: list[tuple[float, bool]] = []
    for index in track(range(n), description="phantoms", disable=not progress):
        case = make_case(case_seed(seed, index), options)
        records.append(_write_case(case, dicom_dir, dataset_dir))
        cases.append((case.llnm_probability, case.llnm_label))
    with (dataset_dir / "cases.jsonl").open("w", encoding="utf-8") as fp:
        for record in records:
            fp.write(json.dumps(record) + "\n")
    rows = [_csv_row(r) for r in records]
    with (dataset_dir / "cases.csv").open("w", encoding="utf-8", newline="") as fp:
        writer = csv.DictWriter(fp, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    positives = sum(label for _, label in cases)
    auc = best_achievable_auc(_Labelled(p, y) for p, y in cases) if 0 < positives < n else None
    rendering = {k: v for k, v in asdict(options).items() if k != "site"}
    site = {} if options.site == DEFAULT_SITE else {"site_profile": asdict(options.site)}
    manifest = {
        "generator": "phantoms",
        "synthetic": True,
        "intended_use": "testing and development only; NOT FOR CLINICAL USE",
        "seed": seed,
        "cases": n,
        "options": rendering,
        **site,
        "risk_stage": {
            "definition": "nodal (phantoms.labels.nodal_stage)",
            "micro_node_cm": MICRO_NODE_CM,
            "max_micro_nodes": MAX_MICRO_NODES,
            "macro_node_cm": MACRO_NODE_CM,
        },
        "positives": positives,
        "best_achievable_auc": auc,
    }
    (dataset_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return ExportSummary(
        cases=n,
        reports=sum(r["report_text"] is not None for r in records),
        positives=positives,
        best_achievable_auc=auc,
        dicom_dir=dicom_dir,
        dataset_dir=dataset_dir,
    )


@dataclass(frozen=True)
class _Labelled:
    llnm_probability: float
    llnm_label: bool
