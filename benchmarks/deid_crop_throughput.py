"""De-identification + crop throughput on one CPU core, for 640x480 ultrasound phantoms.

A corpus of phantom studies (two B-mode images each, with a Sequence of
Ultrasound Regions unless ``--no-regions``) is written to a scratch spool. Each
study then goes through ``intake`` (header reads, timed apart), ``deidentify``
(``pipeline.deidentify``) and ``crop`` (``pipeline.crop``), the way the job
runner chains them. The process is pinned to one core and every thread pool
(OpenMP, BLAS, OpenCV, torch) is set to one thread before the libraries load.
The first ``--warmup`` studies are not counted. The target is 50 instances/s
through de-identification and crop together.

Run::

    .venv/bin/python benchmarks/deid_crop_throughput.py [--studies 100] [--out benchmarks/out]
"""

from __future__ import annotations

import os

for _variable in (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
):
    os.environ[_variable] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from datetime import UTC, datetime  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import cv2  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from phantoms import PhantomOptions, make_case  # noqa: E402
from pipeline.contracts import InstanceRef, StudyInput  # noqa: E402
from pipeline.crop import crop  # noqa: E402
from pipeline.deidentify import deidentify  # noqa: E402
from pipeline.intake import intake  # noqa: E402
from pipeline.scope import NotAssessed  # noqa: E402
from pipeline.spool import SpoolLayout  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
ROWS, COLUMNS = 480, 640
TARGET_PER_S = 50.0
console = Console()


def _pin_to_one_core() -> int | None:
    """Pin this process to its first allowed CPU; the CPU, or None where unsupported."""
    cv2.setNumThreads(1)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)
    if not hasattr(os, "sched_setaffinity"):
        return None
    cpu = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})
    return cpu


def _write_corpus(root: Path, studies: int, seed: int, regions: bool) -> list[StudyInput]:
    inputs: list[StudyInput] = []
    options = PhantomOptions(with_regions=regions, rows=ROWS, columns=COLUMNS)
    spool = SpoolLayout.at(root)
    for number in range(studies):
        case = make_case(seed + number, options)
        refs = []
        for ds in case.datasets:
            path = spool.path_of(
                spool.instance_path(study_uid=str(ds.StudyInstanceUID), sop_uid=ds.SOPInstanceUID)
            )
            path.parent.mkdir(parents=True, exist_ok=True)
            ds.save_as(path, enforce_file_format=True)
            refs.append(InstanceRef.of(ds, path))
        inputs.append(
            StudyInput(
                job_id=number + 1,
                study_instance_uid=str(case.datasets[0].StudyInstanceUID),
                instances=tuple(refs),
                work_dir=spool.work_dir(number + 1),
            )
        )
    return inputs


def _measure(studies: list[StudyInput], warmup: int) -> dict[str, Any]:
    timings: dict[str, list[float]] = {"intake": [], "deidentify": [], "crop": []}
    counted = 0
    cpu_start = time.process_time()
    for number, study in enumerate(studies):
        study.work_dir.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        report = intake(study)
        t1 = time.perf_counter()
        if isinstance(report, NotAssessed):
            raise RuntimeError(f"study {number} not assessed: {report.exclusion.text}")
        source = deidentify(report).study
        t2 = time.perf_counter()
        cropped = crop(source)
        t3 = time.perf_counter()
        if len(cropped.images) != len(study.instances):
            raise RuntimeError(f"study {number}: {len(cropped.skipped)} image(s) skipped")
        if number == warmup - 1:
            cpu_start = time.process_time()
        if number < warmup:
            continue
        counted += len(study.instances)
        timings["intake"].append(t1 - t0)
        timings["deidentify"].append(t2 - t1)
        timings["crop"].append(t3 - t2)
    cpu = time.process_time() - cpu_start
    totals = {name: sum(values) for name, values in timings.items()}
    measured = totals["deidentify"] + totals["crop"]
    return {
        "instances": counted,
        "studies": len(studies) - warmup,
        "seconds": totals,
        "per_instance_ms": {k: 1000 * v / counted for k, v in totals.items()},
        "median_study_ms": {
            k: 1000 * statistics.median(v) for k, v in timings.items() if v and any(v)
        },
        "instances_per_s": counted / measured,
        "instances_per_s_with_intake": counted / (measured + totals["intake"]),
        "cpu_seconds_per_wall_second": cpu / (measured + totals["intake"]),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Build the corpus, run the stages, print and save the numbers; 1 below target."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=100, help="studies of two images")
    parser.add_argument("--warmup", type=int, default=3, help="first studies not counted")
    parser.add_argument("--seed", type=int, default=20261123)
    parser.add_argument("--no-regions", action="store_true", help="phantoms without regions")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "out")
    args = parser.parse_args(argv)
    if args.studies <= args.warmup:
        parser.error("--studies must exceed --warmup")

    cpu = _pin_to_one_core()
    root = Path(tempfile.mkdtemp(prefix="llnm-deid-crop-bench-"))
    try:
        studies = _write_corpus(root, args.studies, args.seed, not args.no_regions)
        result = _measure(studies, args.warmup)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    table = Table(title=f"deidentify + crop, one core, {COLUMNS}x{ROWS} phantoms")
    table.add_column("stage")
    table.add_column("ms / instance", justify="right")
    table.add_column("median ms / study", justify="right")
    for stage in ("intake", "deidentify", "crop"):
        table.add_row(
            stage,
            f"{result['per_instance_ms'][stage]:.2f}",
            f"{result['median_study_ms'].get(stage, 0.0):.2f}",
        )
    console.print(table)
    rate = result["instances_per_s"]
    ok = rate >= TARGET_PER_S
    colour = "green" if ok else "red"
    console.print(
        f"[{colour}]deidentify + crop: {rate:.1f} instances/s[/] (target {TARGET_PER_S:.0f}/s; "
        f"{result['instances_per_s_with_intake']:.1f}/s with intake) over "
        f"{result['instances']} instances, CPU {cpu}, "
        f"{result['cpu_seconds_per_wall_second']:.2f} CPU s per wall s"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    report = {
        "benchmark": "deid_crop_throughput",
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "rows": ROWS,
        "columns": COLUMNS,
        "with_regions": not args.no_regions,
        "seed": args.seed,
        "pinned_cpu": cpu,
        "target_instances_per_s": TARGET_PER_S,
        "meets_target": ok,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "opencv": cv2.__version__,
        **result,
    }
    path = args.out / "deid_crop_throughput.json"
    path.write_text(json.dumps(report, indent=2))
    console.print(f"results: {path}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
