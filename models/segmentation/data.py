"""Segmentation training data: the data set folder format, the case split and the samples.

Format (what ``llnm-node phantom`` writes, and what a site supplies)::

    DIR/                      or DIR/dataset/ holding the same
      cases.jsonl             one JSON object per case (patient), one per line
      manifest.json           optional; ``synthetic`` and ``intended_use`` are copied
                              into the trained model's metrics.json
      images/...              the images, PNG (8-bit grey or RGB)
      masks/...               the masks, PNG, same size as their image; > 127 is inside

Each line of ``cases.jsonl`` needs ``case_id`` (the split is by case, so both
views of a patient stay on one side) and ``views``: a list of objects with
``image`` and ``thyroid_mask`` (paths relative to the folder holding
``cases.jsonl``) and optionally ``image_area`` ``[x0, y0, x1, y1]`` (ends
exclusive; the image and mask are cropped with ``[y0:y1, x0:x1]``; without
it the image is taken to be already cropped to the ultrasound area). Other
fields are ignored. For example::

    {"case_id": "site-0001", "views": [
        {"image": "images/0001_a.png", "thyroid_mask": "masks/0001_a_thyroid.png",
         "image_area": [96, 40, 880, 620]}]}

Crops go through the pipeline's brightness standardisation
(:func:`imaging.crop.standardise_brightness`) and to grey, as at inference.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from numpy.typing import NDArray
from torch.utils.data import Dataset

from imaging.crop import standardise_brightness
from imaging.errors import StageError
from models.segmentation.config import AnyConfig, Target
from models.segmentation.letterbox import Letterbox, normalise

CASES_FILE = "cases.jsonl"
MANIFEST_FILE = "manifest.json"
# Augmentation ranges: zoom keeps this share of each side at least; gain and offset of grey levels.
MIN_ZOOM = 0.9
CONTRAST = (0.8, 1.2)
BRIGHTNESS = (-0.1, 0.1)  # of the full grey range


@dataclass(frozen=True)
class ViewRecord:
    """One image and its mask in a data set folder."""

    case_id: str
    image: Path
    mask: Path
    image_area: tuple[int, int, int, int] | None  # x0, y0, x1, y1; ends exclusive


def dataset_folder(folder: Path) -> Path:
    """The folder holding ``cases.jsonl``: ``folder`` itself or ``folder/dataset``.

    Raises
    ------
    FileNotFoundError
        If neither holds ``cases.jsonl``.
    """
    for candidate in (folder, folder / "dataset"):
        if (candidate / CASES_FILE).is_file():
            return candidate
    raise FileNotFoundError(f"no {CASES_FILE} in {folder} or {folder / 'dataset'}")


def read_manifest(folder: Path) -> dict[str, Any]:
    """``manifest.json`` of a data set folder, or an empty dict when there is none."""
    path = dataset_folder(folder) / MANIFEST_FILE
    return dict(json.loads(path.read_text(encoding="utf-8"))) if path.is_file() else {}


def read_records(folder: Path, target: Target = "thyroid") -> list[ViewRecord]:
    """Every view with a ``<target>_mask`` in the data set under ``folder``.

    Raises
    ------
    FileNotFoundError
        If there is no ``cases.jsonl``.
    ValueError
        If a line lacks ``case_id`` or ``views``, an image area is malformed, or
        no view has a mask.
    """
    root = dataset_folder(folder)
    records: list[ViewRecord] = []
    lines = (root / CASES_FILE).read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        case = json.loads(line)
        if "case_id" not in case or not isinstance(case.get("views"), list):
            raise ValueError(f"{CASES_FILE} line {number}: needs case_id and a views list")
        for view in case["views"]:
            mask = view.get(f"{target}_mask")
            if mask is None:
                continue
            area = view.get("image_area")
            if area is not None and (len(area) != 4 or area[0] >= area[2] or area[1] >= area[3]):
                raise ValueError(f"{CASES_FILE} line {number}: bad image_area {area}")
            records.append(
                ViewRecord(
                    case_id=str(case["case_id"]),
                    image=root / view["image"],
                    mask=root / mask,
                    image_area=None if area is None else (area[0], area[1], area[2], area[3]),
                )
            )
    if not records:
        raise ValueError(f"no view in {root / CASES_FILE} has a {target}_mask")
    return records


def split_by_case(
    records: list[ViewRecord], val_fraction: float, seed: int
) -> tuple[list[ViewRecord], list[ViewRecord]]:
    """Training and validation views, with each case wholly on one side (seeded).

    Raises
    ------
    ValueError
        If ``val_fraction`` is not in (0, 1) or there are fewer than two cases.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must lie in (0, 1), not {val_fraction}")
    cases = sorted({r.case_id for r in records})
    if len(cases) < 2:
        raise ValueError("at least two cases are needed to split training from validation")
    order = np.random.default_rng(seed).permutation(len(cases))
    n_val = min(len(cases) - 1, max(1, round(val_fraction * len(cases))))
    val_cases = {cases[i] for i in order[:n_val]}
    return (
        [r for r in records if r.case_id not in val_cases],
        [r for r in records if r.case_id in val_cases],
    )


def load_view(record: ViewRecord) -> tuple[NDArray[np.uint8], NDArray[np.bool_]]:
    """The grey, brightness-standardised crop (H, W) of a view and its mask (H, W).

    Raises
    ------
    FileNotFoundError
        If the image or mask cannot be read.
    ValueError
        If their sizes differ, the image area lies outside them, or the crop is flat.
    """
    colour = cv2.imread(str(record.image), cv2.IMREAD_COLOR)
    mask = cv2.imread(str(record.mask), cv2.IMREAD_GRAYSCALE)
    if colour is None or mask is None:
        raise FileNotFoundError(f"cannot read {record.image} or {record.mask}")
    image = np.asarray(cv2.cvtColor(colour, cv2.COLOR_BGR2GRAY), dtype=np.uint8)
    if image.shape != mask.shape:
        raise ValueError(f"{record.mask} is {mask.shape}, its image {image.shape}")
    if record.image_area is not None:
        x0, y0, x1, y1 = record.image_area
        if x0 < 0 or y0 < 0 or x1 > image.shape[1] or y1 > image.shape[0]:
            raise ValueError(f"image_area {record.image_area} outside {record.image}")
        image, mask = image[y0:y1, x0:x1], mask[y0:y1, x0:x1]
    try:
        standardised = standardise_brightness(np.ascontiguousarray(image))
    except StageError as exc:
        raise ValueError(f"{record.image}: {exc}") from exc
    return standardised, np.asarray(mask > 127)


class SegmentationDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Crops and masks held in memory, letterboxed to the input size, optionally augmented.

    Augmentation (``augment=True``): horizontal flip, a zoom into a random
    window of at least :data:`MIN_ZOOM` of each side (the aspect ratio kept),
    and grey-level contrast and brightness. Vertical flips are not used: the
    transducer is always at the top of an ultrasound image. Call
    :meth:`reseed` before each epoch for reproducible augmentation.
    """

    def __init__(
        self, views: list[tuple[NDArray[np.uint8], NDArray[np.bool_]]], config: AnyConfig
    ) -> None:
        self.views = views
        self.config = config
        self.augment = False
        self.rng = np.random.default_rng(0)

    def reseed(self, seed: int, *, augment: bool) -> None:
        """Restart the augmentation random stream; ``augment`` switches it on or off."""
        self.rng = np.random.default_rng(seed)
        self.augment = augment

    def __len__(self) -> int:
        return len(self.views)

    def _augmented(
        self, image: NDArray[np.uint8], mask: NDArray[np.bool_]
    ) -> tuple[NDArray[np.uint8], NDArray[np.bool_]]:
        rng = self.rng
        if rng.random() < 0.5:
            image, mask = image[:, ::-1], mask[:, ::-1]
        zoom = rng.uniform(MIN_ZOOM, 1.0)
        height = max(1, round(image.shape[0] * zoom))
        width = max(1, round(image.shape[1] * zoom))
        top = int(rng.integers(0, image.shape[0] - height + 1))
        left = int(rng.integers(0, image.shape[1] - width + 1))
        image = image[top : top + height, left : left + width]
        mask = mask[top : top + height, left : left + width]
        gain, offset = rng.uniform(*CONTRAST), rng.uniform(*BRIGHTNESS) * 255.0
        levels = np.clip(image.astype(np.float32) * gain + offset, 0, 255)
        return levels.astype(np.uint8), mask

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.views[index]
        if self.augment:
            image, mask = self._augmented(image, mask)
        shape = (self.config.input_height, self.config.input_width)
        box = Letterbox.fit(image.shape[0], image.shape[1], *shape)
        padded = box.apply(np.ascontiguousarray(image), shape)
        target = box.apply(np.ascontiguousarray(mask, dtype=np.uint8), shape, nearest=True)
        x = torch.from_numpy(normalise(padded, self.config))[None]  # (1, H, W)
        y = torch.from_numpy(target.astype(np.float32))[None]  # (1, H, W)
        return x, y
