"""The model's report text: one definition for training, evaluation and the node.

A report reaches the model as the text values of its parts in document order
(for a DICOM SR: its TEXT content items, depth first, without their concept
names), each Unicode NFKC-normalised, whitespace collapsed to single spaces,
joined by a space. The same function turns a ``cases.csv`` ``report_text``
and a received SR into the same string, so training and serving embed the
same text. Torch-free: the intake stage imports it.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from typing import Any

from pydicom import Dataset

_SPACE = re.compile(r"\s+")


def model_text(values: Iterable[str | None]) -> str | None:
    """The model text of a report's parts; None when no part holds text."""
    parts = (_SPACE.sub(" ", unicodedata.normalize("NFKC", v)).strip() for v in values if v)
    text = " ".join(p for p in parts if p)
    return text or None


def sr_text_values(dataset: Dataset) -> tuple[str, ...]:
    """The TextValue of every TEXT content item of an SR, depth first, in document order."""
    values: list[str] = []

    def walk(items: Any) -> None:
        for item in items:
            if item.get("ValueType") == "TEXT" and item.get("TextValue"):
                values.append(str(item.TextValue))
            if "ContentSequence" in item:
                walk(item.ContentSequence)

    if "ContentSequence" in dataset:
        walk(dataset.ContentSequence)
    return tuple(values)


def sr_model_text(dataset: Dataset) -> str | None:
    """The model text of a structured report (None when it holds no text)."""
    return model_text(sr_text_values(dataset))
