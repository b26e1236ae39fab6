"""A fine-tuned bundle: a base bundle with components retrained on the site's data.

:func:`derive_bundle` copies the base bundle, replaces each given component
(``llnm``, ``nodule``, ``thyroid``) with a training run's kept weights, config,
metrics and plots (``llnm-node train --init-from`` / ``train-seg --init-from``;
never its checkpoint or feature cache), records the lineage in the manifest
(the parent's name, version and SHA-256, and per component the run's data and
best validation score) and seals it. Replaced models embed images differently,
so the base's scope statistics no longer describe them; a site calibration of
the parent's LLNM-Net probabilities is removed with it. The scope statistics are
fitted again (:func:`pipeline.scope_fit.fit_bundle_scope`) on the site's own received
studies, read in the node's spool (80 % to fit, 20 % to set the thresholds;
seeded), so the new bundle gates what this site sends. Nothing leaves the node.
"""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from db import jobs
from db.listings import newest_versions
from db.models import Job, JobState
from models.bundle import MANIFEST_FILE, bundle_digest, reseal_bundle, verify_bundle
from models.calibration import CALIBRATION_DIR
from pipeline.scope_fit import fit_bundle_scope
from pipeline.spool import SpoolLayout

COMPONENTS = ("llnm", "nodule", "thyroid")
RUN_FILES = ("model.safetensors", "config.json", "metrics.json")
MIN_SCOPE_STUDIES = 10
FIT_FRACTION = 0.8


def site_studies(session: Session, spool: SpoolLayout, limit: int) -> list[list[Path]]:
    """The instance files of the ``limit`` newest studies whose newest job is done."""
    newest = newest_versions()
    done = session.scalars(
        select(Job.id)
        .join(newest, (Job.study_fk == newest.c.study_fk) & (Job.version == newest.c.version))
        .where(Job.state == JobState.DONE)
        .order_by(Job.study_fk.desc())
        .limit(limit)
    ).all()
    files = []
    for job_id in done:
        paths = [
            spool.path_of(i.relative_path)
            for i in jobs.job_source(session, job_id=job_id).instances
        ]
        present = [path for path in paths if path.is_file()]
        if present:
            files.append(present)
    return files


def _copy_run(run: Path, target: Path) -> dict[str, Any]:
    """The run's kept files into ``target`` (replaced); returns the run's metrics."""
    for name in RUN_FILES:
        if not (run / name).is_file():
            raise FileNotFoundError(f"{run} has no {name}: is it a finished training run?")
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir()
    for name in RUN_FILES:
        shutil.copy2(run / name, target / name)
    for plot in sorted(run.glob("*.png")):
        shutil.copy2(plot, target / plot.name)
    metrics: dict[str, Any] = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    return metrics


def _run_summary(metrics: Mapping[str, Any]) -> dict[str, Any]:
    keys = ("best_epoch", "best_val_auc", "best_val_dice", "split", "training_data", "data")
    return {k: metrics[k] for k in keys if k in metrics}


def derive_bundle(
    base: Path,
    out: Path,
    *,
    version: str,
    runs: Mapping[str, Path],
    scope_studies: Sequence[Sequence[Path]],
    seed: int = 0,
) -> dict[str, Any]:
    """Write the fine-tuned copy of ``base`` to ``out`` (module docstring); its lineage entry.

    Raises
    ------
    ValueError
        If ``out`` exists, a component name is unknown, no run is given, or there
        are fewer than :data:`MIN_SCOPE_STUDIES` studies to fit the scope on.
    FileNotFoundError
        If a run folder lacks its weights, config or metrics.
    BundleError
        If ``base`` is not a sealed bundle.
    """
    manifest = verify_bundle(base)
    if out.exists():
        raise ValueError(f"{out} exists; the new bundle needs a new folder")
    unknown = sorted(set(runs) - set(COMPONENTS))
    if unknown or not runs:
        raise ValueError(f"components to replace must be some of {COMPONENTS}, not {unknown}")
    if len(scope_studies) < MIN_SCOPE_STUDIES:
        raise ValueError(
            f"{len(scope_studies)} finished studies in the spool; the scope statistics need "
            f"{MIN_SCOPE_STUDIES}"
        )
    parent = {
        "name": manifest.name,
        "version": manifest.version,
        "manifest_sha256": bundle_digest(base),
    }
    shutil.copytree(base, out)
    metrics = {name: _copy_run(run, out / name) for name, run in sorted(runs.items())}
    lineage = {
        "parent": parent,
        "fine_tuned": {name: _run_summary(m) for name, m in metrics.items()},
    }
    data = json.loads((out / MANIFEST_FILE).read_text(encoding="utf-8"))
    data["version"] = version
    data["training_data"] = {**data["training_data"], **lineage}
    data["metrics"].update(metrics)
    if "llnm" in runs and (out / CALIBRATION_DIR).exists():
        shutil.rmtree(out / CALIBRATION_DIR)  # it mapped the parent model's probabilities
        lineage["calibration"] = "removed: fitted for the parent's LLNM-Net"
    (out / MANIFEST_FILE).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    reseal_bundle(out)
    studies = list(scope_studies)
    random.Random(seed).shuffle(studies)
    cut = max(1, int(len(studies) * FIT_FRACTION))
    lineage["scope"] = fit_bundle_scope(
        out,
        studies[:cut],
        studies[cut:],
        fitted_on={
            "source": "site studies in the node's spool",
            "studies": len(studies),
            "fit": cut,
            "validation": len(studies) - cut,
            "seed": seed,
        },
        sizes=(cut, len(studies) - cut),
    )
    return lineage
