"""Typed inputs that the runner hands to a job's first stage."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class InstanceRef:
    """One stored instance of the study, as a file in the spool."""

    sop_instance_uid: str
    sop_class_uid: str
    series_instance_uid: str
    path: Path


@dataclass(frozen=True)
class StudyInput:
    """Everything the node received for one study, for one job."""

    job_id: int
    study_instance_uid: str
    instances: tuple[InstanceRef, ...]
    work_dir: Path
