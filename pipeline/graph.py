"""The ordered stages every job runs; later stages append here."""

from __future__ import annotations

from typing import Any

from pipeline.crop import CROP
from pipeline.deidentify import DEIDENTIFY
from pipeline.intake import INTAKE
from pipeline.stage import Stage


def default_stages() -> tuple[Stage[Any, Any], ...]:
    """The stages of a job, first to last."""
    return (INTAKE, DEIDENTIFY, CROP)
