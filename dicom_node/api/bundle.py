"""The model bundle as the API reports it: manifest facts, verification and metrics."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from db.bundles import folder_in_use, installed_bundles
from db.session import Database
from dicom_node.api.schemas import Bundle, InstalledBundle
from models.bundle import MANIFEST_FILE, BundleError, Manifest, verify_bundle


def bundle_in_use(database: Database, configured: Path) -> Path:
    """The live installed bundle's folder, else the configured ``model.bundle_dir``."""
    with database.session() as session:
        return folder_in_use(session, configured) or configured


def installed(database: Database) -> list[InstalledBundle]:
    """Every installed bundle (:mod:`db.bundles`), newest first."""
    with database.session() as session:
        return [
            InstalledBundle(
                name=b.name,
                version=b.version,
                sha256=b.sha256,
                role=str(b.role),
                installed_at=b.installed_at,
                changed_at=b.changed_at,
            )
            for b in installed_bundles(session)
        ]


def read_manifest(folder: Path) -> Manifest:
    """The manifest of the bundle in ``folder``, without checking its files.

    Raises
    ------
    BundleError
        If the manifest is missing or malformed.
    """
    path = folder / MANIFEST_FILE
    try:
        return Manifest(**json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError) as exc:
        raise BundleError(f"{MANIFEST_FILE} of the model bundle is not readable: {exc}") from exc


def _metrics_summary(metrics: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Per component, its numeric ``best_*`` values and best validation metrics."""
    summary: dict[str, dict[str, float]] = {}
    for component, values in metrics.items():
        if not isinstance(values, dict):
            continue
        flat = {**values, **(values.get("best_val_metrics") or {})}
        summary[component] = {
            key: float(value)
            for key, value in flat.items()
            if isinstance(value, int | float) and not isinstance(value, bool)
        }
    return summary


@cache
def bundle_summary(folder: Path) -> Bundle:
    """What the API shows of the bundle in ``folder``; verified (hashing) once per process.

    Raises
    ------
    BundleError
        If the manifest is missing or malformed.
    """
    manifest = read_manifest(folder)
    try:
        verify_bundle(folder)
        problem = None
    except BundleError as exc:
        problem = str(exc)
    return Bundle(
        name=manifest.name,
        version=manifest.version,
        created=manifest.created,
        synthetic=manifest.synthetic,
        clinical_use_label=manifest.clinical_use_label,
        intended_use=manifest.intended_use,
        verified=problem is None,
        problem=problem,
        metrics=_metrics_summary(manifest.metrics),
    )
