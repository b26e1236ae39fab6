"""Reader-corrected masks replace the drafts of an exported data set (``dataset import-masks``).

The data set is one ``llnm-node dataset export`` wrote
(:mod:`dicom_node.app.site_dataset`). The source is a file or a folder (all
its files, recursively, in name order); each file is accepted or rejected
with its reason, and a rejected file changes nothing.

PNG (``*.png``)
    Named like a mask of the data set (``<case>_<plane>_nodule.png`` or
    ``_thyroid.png``), 8-bit grey (or colour with equal channels), the size of
    its crop; > 127 is inside.
DICOM SEG (any other file)
    Read with :func:`highdicom.seg.segread`. Every referenced source SOP
    Instance UID must be a view's ``sop_instance_uid`` in ``cases.jsonl`` (the
    crop's pseudonymous UID), the frames the size of that crop, and every
    segment labelled (Segment Label, case and surrounding spaces ignored)
    ``nodule`` or ``thyroid nodule`` (the nodule mask) or ``thyroid`` or
    ``thyroid gland`` (the gland mask, nodules included), each at most once;
    the node's own SEGs use "Thyroid nodule" and "Thyroid gland". Fractional
    segments are inside above one half. A SEG referencing several crops
    corrects each of them.
Rules
    Two files of one import giving the same mask: the later one is rejected.
    A file inside the data set folder is never read (its drafts would come back).
Writing
    An accepted mask is written as 0/255 PNG atomically (a temporary file
    renamed); the draft it replaces is kept once, as ``masks/drafts/<name>``
    (never overwritten: it stays the segmenter's). The view's ``corrected``
    flags in ``cases.jsonl`` and the manifest's ``corrected_masks`` (and
    ``masks``) say which masks a reader gave. Importing the same files again
    leaves every file as it was (the masks are ``unchanged``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import highdicom as hd
import numpy as np
from numpy.typing import NDArray
from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from pydicom.uid import SegmentationStorage

from dicom_node.app.site_dataset import (
    DRAFT_MASKS,
    DRAFTS,
    FORMAT,
    MASKS,
    TARGETS,
    DatasetError,
    jsonl,
    manifest_json,
    write_bytes,
    write_text,
)
from models.segmentation.data import CASES_FILE, MANIFEST_FILE

LABELS = {"nodule": "nodule", "thyroid nodule": "nodule", "thyroid": "thyroid",
          "thyroid gland": "thyroid"}  # fmt: skip
Mask = NDArray[np.bool_]
Key = tuple[int, int, str]  # line of cases.jsonl, view in the line, target


class Rejected(Exception):
    """A source file is not applied; the message says why."""


@dataclass(frozen=True)
class AcceptedFile:
    """A file applied: the mask files it gave (names in ``masks/``)."""

    path: Path
    masks: tuple[str, ...]


@dataclass(frozen=True)
class RejectedFile:
    """A file not applied, and why."""

    path: Path
    reason: str


@dataclass
class ImportSummary:
    """What an import did."""

    accepted: list[AcceptedFile] = field(default_factory=list)
    rejected: list[RejectedFile] = field(default_factory=list)
    written: int = 0  # masks replaced
    unchanged: int = 0  # masks given as they already were
    corrected_masks: int = 0  # in the data set after the import
    masks: int = 0  # in the data set


class _Dataset:
    """The exported data set's cases and where each mask and crop is."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        try:
            self.manifest: dict[str, Any] = json.loads(
                (folder / MANIFEST_FILE).read_text(encoding="utf-8")
            )
            self.lines: list[dict[str, Any]] = [
                json.loads(text)
                for text in (folder / CASES_FILE).read_text(encoding="utf-8").splitlines()
                if text.strip()
            ]
        except (OSError, ValueError) as exc:
            raise DatasetError(f"{folder} is no exported site data set: {exc}") from exc
        if not isinstance(self.manifest, dict) or self.manifest.get("format") != FORMAT:
            raise DatasetError(f"{folder} is no data set written by `llnm-node dataset export`")
        self.by_name: dict[str, Key] = {}
        self.by_uid: dict[str, tuple[int, int]] = {}
        try:
            for i, line in enumerate(self.lines):
                for j, view in enumerate(line["views"]):
                    self.by_uid[str(view["sop_instance_uid"])] = (i, j)
                    for target in TARGETS:
                        self.by_name[Path(view[f"{target}_mask"]).name] = (i, j, target)
                        view["corrected"][target] = bool(view["corrected"][target])
        except (KeyError, TypeError, AttributeError, IndexError) as exc:
            raise DatasetError(
                f"{folder / CASES_FILE} is not as the export wrote it: {exc}"
            ) from exc
        self._shapes: dict[tuple[int, int], tuple[int, int]] = {}

    def view(self, key: tuple[int, int]) -> dict[str, Any]:
        """The view's object in ``cases.jsonl``."""
        view: dict[str, Any] = self.lines[key[0]]["views"][key[1]]
        return view

    def shape(self, key: tuple[int, int]) -> tuple[int, int]:
        """(rows, columns) of the view's crop."""
        if key not in self._shapes:
            image = cv2.imread(str(self.folder / self.view(key)["image"]), cv2.IMREAD_UNCHANGED)
            if image is None:
                raise DatasetError(f"cannot read {self.view(key)['image']} of the data set")
            self._shapes[key] = (int(image.shape[0]), int(image.shape[1]))
        return self._shapes[key]

    def mask_path(self, key: Key) -> Path:
        """The mask file of ``key``."""
        return self.folder / str(self.view(key[:2])[f"{key[2]}_mask"])


def _size(shape: tuple[int, int]) -> str:
    return f"{shape[1]}x{shape[0]}"


def _png_masks(path: Path, data: _Dataset) -> dict[Key, Mask]:
    key = data.by_name.get(path.name)
    if key is None:
        raise Rejected("unknown name: no mask of the data set is called so")
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise Rejected("not a readable PNG")
    if image.dtype != np.uint8:
        raise Rejected(f"{image.dtype} pixels, not 8-bit")
    if image.ndim == 3:
        colours = image[:, :, :3]
        if not (colours == colours[:, :, :1]).all():
            raise Rejected("a colour image, not a grey mask")
        image = colours[:, :, 0]
    crop = data.shape(key[:2])
    if image.shape != crop:
        raise Rejected(f"wrong size {_size(image.shape)}, the crop is {_size(crop)}")
    return {key: np.asarray(image > 127)}


def _segment_targets(seg: Any) -> dict[str, int]:
    """Target -> segment number, from the segment labels."""
    numbers: dict[str, int] = {}
    for number in seg.get_segment_numbers():
        label = str(seg.get_segment_description(number).segment_label or "")
        target = LABELS.get(label.strip().lower())
        if target is None:
            raise Rejected(f"segment {number} is labelled {label!r}, not nodule or thyroid")
        if target in numbers:
            raise Rejected(f"segments {numbers[target]} and {number} are both {target}")
        numbers[target] = number
    if not numbers:
        raise Rejected("no segment")
    return numbers


def _seg_masks(path: Path, data: _Dataset) -> dict[Key, Mask]:
    try:
        header = dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, OSError, ValueError, EOFError):
        raise Rejected("neither a PNG mask nor a DICOM file") from None
    if header.get("SOPClassUID") != SegmentationStorage:
        raise Rejected("a DICOM file but no Segmentation (SEG)")
    try:
        seg = hd.seg.segread(path)
        numbers = _segment_targets(seg)
        uids = [str(sop) for _study, _series, sop in seg.get_source_image_uids()]
    except (ValueError, KeyError, AttributeError, TypeError) as exc:
        raise Rejected(f"unreadable SEG: {exc}") from None
    if not uids:
        raise Rejected("the SEG references no source image")
    masks: dict[Key, Mask] = {}
    for uid in uids:
        view = data.by_uid.get(uid)
        if view is None:
            raise Rejected(f"references {uid}, no crop of this data set")
        frame, crop = (int(seg.Rows), int(seg.Columns)), data.shape(view)
        if frame != crop:
            raise Rejected(f"wrong size: frames {_size(frame)}, the crop is {_size(crop)}")
        try:
            pixels = seg.get_pixels_by_source_instance(
                source_sop_instance_uids=[uid], segment_numbers=list(numbers.values())
            )
        except (ValueError, KeyError, IndexError, AttributeError, RuntimeError) as exc:
            raise Rejected(f"unreadable SEG frames: {exc}") from None
        for index, target in enumerate(numbers):
            masks[(*view, target)] = np.asarray(pixels[0, :, :, index].astype(float) > 0.5)
    return masks


def _source_files(source: Path, data: Path) -> list[Path]:
    if not source.exists():
        raise DatasetError(f"{source} does not exist")
    resolved = source.resolve()
    if resolved == data.resolve() or data.resolve() in resolved.parents:
        raise DatasetError(f"{source} lies inside the data set: give the corrected files apart")
    if source.is_file():
        return [source]
    return sorted(p for p in source.rglob("*") if p.is_file())


def _png_bytes(mask: Mask) -> bytes:
    ok, encoded = cv2.imencode(".png", mask.astype(np.uint8) * 255)
    if not ok:
        raise OSError("could not encode a mask as PNG")
    return bytes(encoded.tobytes())


def _apply(data: _Dataset, key: Key, mask: Mask) -> bool:
    """Write ``mask`` over the draft (kept once); whether the mask file changed."""
    path = data.mask_path(key)
    drafts = path.parent / DRAFTS
    draft = drafts / path.name
    if not draft.exists():
        drafts.mkdir(exist_ok=True)
        write_bytes(draft, path.read_bytes())
    data.view(key[:2])["corrected"][key[2]] = True
    current = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if current is not None and np.array_equal(current > 127, mask):
        return False
    write_bytes(path, _png_bytes(mask))
    return True


def import_masks(data: Path, source: Path) -> ImportSummary:
    """Replace the drafts of data set ``data`` with the corrected masks in ``source``.

    Raises
    ------
    DatasetError
        If ``data`` is no exported data set, or ``source`` does not exist or
        lies inside it.
    """
    dataset = _Dataset(data)
    files = _source_files(source, data)
    summary = ImportSummary()
    given: dict[Key, tuple[Mask, Path]] = {}
    for path in files:
        try:
            masks = (_png_masks if path.suffix.lower() == ".png" else _seg_masks)(path, dataset)
            for key in masks:
                if key in given:
                    name = dataset.mask_path(key).name
                    raise Rejected(f"{name} is also given by {given[key][1]}")
        except Rejected as exc:
            summary.rejected.append(RejectedFile(path, str(exc)))
            continue
        given.update({key: (mask, path) for key, mask in masks.items()})
        names = tuple(dataset.mask_path(key).name for key in masks)
        summary.accepted.append(AcceptedFile(path, names))
    for key, (mask, _path) in given.items():
        if _apply(dataset, key, mask):
            summary.written += 1
        else:
            summary.unchanged += 1
    corrected = sorted(
        view[f"{target}_mask"]
        for line in dataset.lines
        for view in line["views"]
        for target in TARGETS
        if view["corrected"][target]
    )
    manifest = {
        **dataset.manifest,
        "masks": f"{DRAFT_MASKS}; {len(corrected)} corrected by a reader "
        f"(the drafts they replaced in {MASKS}/{DRAFTS}/)"
        if corrected
        else DRAFT_MASKS,
        "corrected_masks": corrected,
    }
    lines_text, manifest_text = jsonl(dataset.lines), manifest_json(manifest)
    if (data / CASES_FILE).read_text(encoding="utf-8") != lines_text:
        write_text(data / CASES_FILE, lines_text)
    if (data / MANIFEST_FILE).read_text(encoding="utf-8") != manifest_text:
        write_text(data / MANIFEST_FILE, manifest_text)
    summary.corrected_masks = len(corrected)
    summary.masks = len(dataset.by_name)
    return summary
