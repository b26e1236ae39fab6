"""LLNM-Net data: the data set's ``cases.csv``, each view's features, patient-level splits.

Format (what ``llnm-node phantom`` writes; a site writes the same)::

    DIR/cases.csv            or DIR/dataset/cases.csv; one row per patient
    DIR/images/..., masks/...  8-bit PNGs; masks > 127 are inside

Columns: ``case_id``; ``age_years`` and ``sex`` (``F``/``M``; either may be
empty); ``report_text`` (may be empty; read as the model text of
:func:`models.llnm.report_text.model_text`, as the node reads a received SR);
``llnm_label`` (0/1); ``risk_stage`` (1-3, empty when unknown); for each view
prefix ``transverse_`` and ``longitudinal_``: ``image``, ``nodule_mask``, ``thyroid_mask`` (paths
relative to the CSV's folder; ``image`` empty when the view is missing),
``image_area`` (``"x0 y0 x1 y1"``, ends exclusive; optional) and
``mm_per_pixel`` (``"x y"``; optional, else distances stay in pixels).
Optional ``llnm_probability`` (the phantom generator's true probability)
gives the best achievable AUC; optional ``study_dir`` (the patient's DICOM
study folder, relative to the CSV's folder) lets ``llnm-node evaluate
--segment-with`` run the node's whole chain from the DICOM files. Other
columns are ignored.

Each view is cropped to its image area, standardised like the crop stage,
and its features are extracted from its masks
(:func:`imaging.features.extract_view`); a view whose nodule mask is empty
counts as missing. The result is a :class:`FeatureTable` (letterboxed maps
and scalars per patient and view), which ``save``/``load`` keep as
safetensors + JSON (the "precomputed features" a run may start from).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from numpy.typing import NDArray
from rich.progress import track
from safetensors.torch import load_file, save_file

from imaging.crop import standardise_brightness
from imaging.features import NoduleFeatures, View, extract_view
from models.llnm.report_text import model_text
from models.llnm.view_inputs import (
    POSITION_FEATURES,
    SHAPE_FEATURES,
    demographics,
    study_position,
    view_inputs,
)

CASES_CSV = "cases.csv"
VIEWS: tuple[View, ...] = ("transverse", "longitudinal")


@dataclass(frozen=True)
class ViewFiles:
    """One view's files and geometry."""

    image: Path
    nodule_mask: Path
    thyroid_mask: Path
    image_area: tuple[int, int, int, int] | None
    mm_per_pixel: tuple[float, float] | None


@dataclass(frozen=True)
class Patient:
    """One row of ``cases.csv``."""

    case_id: str
    age_years: float | None
    sex: str | None
    report_text: str | None
    label: int
    stage: int | None
    views: tuple[ViewFiles | None, ...]  # in VIEWS order
    true_probability: float | None
    study_dir: Path | None = None  # the DICOM study folder, when the data set names it


def csv_path(folder: Path) -> Path:
    """``folder/cases.csv`` or ``folder/dataset/cases.csv``.

    Raises
    ------
    FileNotFoundError
        If neither exists.
    """
    for candidate in (folder / CASES_CSV, folder / "dataset" / CASES_CSV):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"no {CASES_CSV} in {folder} or {folder / 'dataset'}")


def read_data_manifest(folder: Path) -> dict[str, Any]:
    """The data set's ``manifest.json`` beside ``cases.csv`` (``synthetic``, ...), or {}."""
    path = csv_path(folder).parent / "manifest.json"
    return dict(json.loads(path.read_text(encoding="utf-8"))) if path.is_file() else {}


def _numbers(text: str, count: int, what: str) -> tuple[float, ...] | None:
    if not text.strip():
        return None
    values = tuple(float(v) for v in text.split())
    if len(values) != count:
        raise ValueError(f"{what} needs {count} numbers, got {text!r}")
    return values


def _view(root: Path, row: dict[str, str], prefix: str) -> ViewFiles | None:
    image = row.get(f"{prefix}image", "").strip()
    if not image:
        return None
    area = _numbers(row.get(f"{prefix}image_area", ""), 4, f"{prefix}image_area")
    spacing = _numbers(row.get(f"{prefix}mm_per_pixel", ""), 2, f"{prefix}mm_per_pixel")
    return ViewFiles(
        image=root / image,
        nodule_mask=root / row[f"{prefix}nodule_mask"],
        thyroid_mask=root / row[f"{prefix}thyroid_mask"],
        image_area=None
        if area is None
        else (int(area[0]), int(area[1]), int(area[2]), int(area[3])),
        mm_per_pixel=None if spacing is None else (spacing[0], spacing[1]),
    )


def read_patients(folder: Path) -> list[Patient]:
    """Every patient of the data set under ``folder``.

    Raises
    ------
    FileNotFoundError
        If there is no ``cases.csv``.
    ValueError
        If a row lacks its id or label, a number is malformed, or a row has no view.
    """
    path = csv_path(folder)
    patients = []
    with path.open(newline="", encoding="utf-8") as handle:
        for number, row in enumerate(csv.DictReader(handle), start=2):
            if not row.get("case_id") or row.get("llnm_label", "").strip() not in ("0", "1"):
                raise ValueError(f"{path} line {number}: needs case_id and llnm_label 0/1")
            views = tuple(_view(path.parent, row, f"{view}_") for view in VIEWS)
            if not any(views):
                raise ValueError(f"{path} line {number}: no view image")
            age, sex = row.get("age_years", "").strip(), row.get("sex", "").strip().upper()
            stage = row.get("risk_stage", "").strip()
            probability = row.get("llnm_probability", "").strip()
            study = row.get("study_dir", "").strip()
            patients.append(
                Patient(
                    case_id=row["case_id"],
                    age_years=float(age) if age else None,
                    sex=sex if sex in ("F", "M") else None,
                    report_text=model_text([row.get("report_text")]),
                    label=int(row["llnm_label"]),
                    stage=int(stage) if stage else None,
                    views=views,
                    true_probability=float(probability) if probability else None,
                    study_dir=path.parent / study if study else None,
                )
            )
    if not patients:
        raise ValueError(f"{path} has no rows")
    return patients


def split_patients(
    patients: list[Patient], val_fraction: float, seed: int
) -> tuple[list[Patient], list[Patient]]:
    """Training and validation patients, stratified by label (seeded).

    Raises
    ------
    ValueError
        If ``val_fraction`` is not in (0, 1) or a side would lack a class.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must lie in (0, 1), not {val_fraction}")
    rng = np.random.default_rng(seed)
    val: set[str] = set()
    for label in (0, 1):
        ids = sorted(p.case_id for p in patients if p.label == label)
        n_val = round(val_fraction * len(ids))
        if len(ids) < 2 or n_val < 1 or n_val >= len(ids):
            raise ValueError("each class needs patients on both sides of the split")
        val.update(ids[i] for i in rng.permutation(len(ids))[:n_val])
    return (
        [p for p in patients if p.case_id not in val],
        [p for p in patients if p.case_id in val],
    )


def _read(path: Path, flags: int) -> NDArray[np.uint8]:
    image = cv2.imread(str(path), flags)
    if image is None:
        raise FileNotFoundError(f"cannot read {path}")
    return np.asarray(image, dtype=np.uint8)


@dataclass(frozen=True, eq=False)
class FeatureTable:
    """Per patient (N) and view (V = 2) inputs; maps are (N, V, S, S) float32."""

    case_ids: tuple[str, ...]
    reports: tuple[str | None, ...]
    labels: NDArray[np.int64]  # (N,)
    stages: NDArray[np.int64]  # (N,), 0 when unknown
    arrays: dict[str, NDArray[Any]]  # _ARRAYS: maps, echogenicity (N, V), shape (N, V, F), ...

    def __len__(self) -> int:
        return len(self.case_ids)

    def subset(self, indices: NDArray[np.int64]) -> FeatureTable:
        """The rows at ``indices``."""
        return FeatureTable(
            case_ids=tuple(self.case_ids[i] for i in indices),
            reports=tuple(self.reports[i] for i in indices),
            labels=self.labels[indices],
            stages=self.stages[indices],
            arrays={k: v[indices] for k, v in self.arrays.items()},
        )

    def save(self, path: Path) -> None:
        """Write ``path`` (.safetensors) and its ``.json`` companion (ids, reports)."""
        tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in self.arrays.items()}
        tensors["labels"], tensors["stages"] = (
            torch.from_numpy(self.labels),
            torch.from_numpy(self.stages),
        )
        save_file(tensors, str(path))
        meta = {"case_ids": list(self.case_ids), "reports": list(self.reports)}
        path.with_suffix(".json").write_text(json.dumps(meta) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> FeatureTable:
        """Read what :meth:`save` wrote."""
        tensors = {k: v.numpy() for k, v in load_file(str(path)).items()}
        meta = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
        return cls(
            case_ids=tuple(meta["case_ids"]),
            reports=tuple(meta["reports"]),
            labels=tensors.pop("labels"),
            stages=tensors.pop("stages"),
            arrays=tensors,
        )


def view_crop_and_masks(
    files: ViewFiles,
) -> tuple[NDArray[np.uint8], NDArray[np.uint8], NDArray[np.uint8]]:
    """A view's standardised grey crop and its two masks, cut to the image area."""
    image = _read(files.image, cv2.IMREAD_GRAYSCALE)
    nodule = _read(files.nodule_mask, cv2.IMREAD_GRAYSCALE)
    thyroid = _read(files.thyroid_mask, cv2.IMREAD_GRAYSCALE)
    if files.image_area is not None:
        x0, y0, x1, y1 = files.image_area
        image, nodule, thyroid = (a[y0:y1, x0:x1] for a in (image, nodule, thyroid))
    crop = standardise_brightness(np.ascontiguousarray(image))
    return crop, (nodule > 127).astype(np.uint8), (thyroid > 127).astype(np.uint8)


def build_features(patients: list[Patient], size: int, *, progress: bool = True) -> FeatureTable:
    """Extract every view's features and letterbox its maps to ``size`` (module docstring)."""
    n, v = len(patients), len(VIEWS)
    people = np.array([demographics(p.sex, p.age_years) for p in patients], np.float32)
    arrays: dict[str, NDArray[Any]] = {
        "location": np.zeros((n, v, size, size), np.float32),
        "texture": np.zeros((n, v, size, size), np.float32),
        "margin": np.zeros((n, v, size, size), np.float32),
        "echogenicity": np.zeros((n, v), np.float32),
        "shape": np.zeros((n, v, SHAPE_FEATURES), np.float32),
        "position": np.zeros((n, v, POSITION_FEATURES), np.float32),
        "view_mask": np.zeros((n, v), np.bool_),
        "sex": people[:, 0].copy(),
        "age": people[:, 1].copy(),
    }
    for i, patient in enumerate(track(patients, "extracting features", disable=not progress)):
        found: dict[int, NoduleFeatures] = {}
        for j, (files, plane) in enumerate(zip(patient.views, VIEWS, strict=True)):
            if files is None:
                continue
            crop, nodule, thyroid = view_crop_and_masks(files)
            index = extract_view(crop, nodule, thyroid, files.mm_per_pixel, view=plane).index
            if index is not None:
                found[j] = index
        study = study_position(list(found.values()))
        for j, index in found.items():
            inputs = view_inputs(index, size, study)
            for name in ("location", "texture", "margin", "echogenicity", "shape", "position"):
                arrays[name][i, j] = getattr(inputs, name)
            arrays["view_mask"][i, j] = True
    return FeatureTable(
        case_ids=tuple(p.case_id for p in patients),
        reports=tuple(p.report_text for p in patients),
        labels=np.array([p.label for p in patients], np.int64),
        stages=np.array([p.stage or 0 for p in patients], np.int64),
        arrays=arrays,
    )
