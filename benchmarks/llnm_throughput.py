"""LLNM-Net (TMDL) inference speed: views/s per batch size, and the infer stage's jobs/min.

Forward
    Random inputs of the configured shapes (two views per patient, a report)
    go through the model in eval mode under ``torch.inference_mode``, once per
    ``--batch-views`` size; on CUDA with bf16 autocast. The first ``--warmup``
    batches are not timed. Peak memory is the process's resident set growth on
    the CPU and ``torch.cuda.max_memory_allocated`` on CUDA. Target (issue):
    ``base``, bf16, at least 500 views/s on one H100/H200.
Explained (the infer stage's model work)
    ``--explain-jobs`` one-patient jobs (two views each) explained in one pass
    as the infer stage batches concurrent jobs
    (:func:`models.llnm.batched.explain_patients`: forward, Grad-CAM++, exact
    Shapley values; pinned memory and bf16 autocast on CUDA), for each size of
    ``--explain-sizes``: jobs/min of one model worker and views/s. Median of
    ``--explain-passes`` timed passes after one untimed one-job pass.

Run::

    .venv/bin/python benchmarks/llnm_throughput.py [--sizes tiny base] [--device cpu|cuda]
        [--batch-views 2 8 32 64] [--batches 5] [--explain-sizes tiny]
        [--explain-jobs 1 4 16] [--threads 2] [--out benchmarks/out/llnm.json]
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from models.llnm.batched import explain_patients, precision
from models.llnm.config import TMDLConfig
from models.llnm.shapley import select
from models.llnm.tmdl import TMDL, TMDLBatch

VIEWS_PER_PATIENT = 2


def random_batch(config: TMDLConfig, patients: int, generator: torch.Generator) -> TMDLBatch:
    s, v = config.image_size, VIEWS_PER_PATIENT

    def maps() -> torch.Tensor:
        return torch.rand(patients, v, 1, s, s, generator=generator)

    return TMDLBatch(
        location=maps(),
        texture=maps(),
        margin=maps(),
        echogenicity=torch.rand(patients, v, generator=generator),
        shape=torch.rand(patients, v, config.shape_features, generator=generator),
        position=torch.rand(patients, v, config.position_features, generator=generator),
        view_mask=torch.ones(patients, v, dtype=torch.bool),
        text=torch.rand(patients, config.text_tokens, config.text_width, generator=generator),
        text_present=torch.ones(patients, dtype=torch.bool),
        sex=torch.ones(patients),
        age=torch.full((patients,), 0.45),
    )


def resident_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(size: str, batch_views: int, args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(args.device)
    config = TMDLConfig.preset(size)
    before = resident_mib()
    model = TMDL(config).to(device).eval()
    patients = max(1, batch_views // VIEWS_PER_PATIENT)
    batch = random_batch(config, patients, torch.Generator().manual_seed(0)).to(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    with torch.inference_mode(), precision(device):
        for index in range(args.warmup + args.batches):
            started = time.perf_counter()
            model(batch)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if index >= args.warmup:
                times.append(time.perf_counter() - started)
    views = patients * VIEWS_PER_PATIENT
    seconds = sorted(times)[len(times) // 2]
    peak = (
        torch.cuda.max_memory_allocated() / 2**20
        if device.type == "cuda"
        else resident_mib() - before
    )
    return {
        "size": size,
        "parameters_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "device": args.device,
        "precision": "bf16" if device.type == "cuda" else "fp32",
        "batch_views": views,
        "median_batch_s": seconds,
        "views_per_s": views / seconds,
        "peak_memory_mib": peak,
    }


def measure_explained(size: str, jobs: int, args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(args.device)
    config = TMDLConfig.preset(size)
    model = TMDL(config).to(device).eval()
    stacked = random_batch(config, jobs, torch.Generator().manual_seed(0))
    batches = [select(stacked, torch.tensor([i])) for i in range(jobs)]
    explain_patients(model, batches[:1], device, args.chunk_rows)  # warm-up, untimed
    times = []
    for _ in range(args.explain_passes):
        started = time.perf_counter()
        explain_patients(model, batches, device, args.chunk_rows)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    seconds = sorted(times)[len(times) // 2]
    return {
        "size": size,
        "device": args.device,
        "precision": "bf16" if device.type == "cuda" else "fp32",
        "jobs_per_pass": jobs,
        "median_pass_s": seconds,
        "jobs_per_min": 60 * jobs / seconds,
        "views_per_s": jobs * VIEWS_PER_PATIENT / seconds,
    }


def print_tables(
    forward: list[dict[str, Any]], explained: list[dict[str, Any]], device: str, threads: int
) -> None:
    table = Table(title=f"LLNM-Net forward on {device} ({threads} threads)")
    for column in ("size", "parameters", "precision", "batch (views)", "views/s", "peak MiB"):
        table.add_column(column, justify="right")
    for row in forward:
        table.add_row(
            row["size"],
            f"{row['parameters_m']:.2f} M",
            row["precision"],
            str(row["batch_views"]),
            f"{row['views_per_s']:.1f}",
            f"{row['peak_memory_mib']:.0f}",
        )
    Console().print(table)
    if not explained:
        return
    table = Table(title=f"Infer stage model work (forward + Grad-CAM++ + Shapley) on {device}")
    for column in ("size", "precision", "jobs per pass", "s per pass", "jobs/min", "views/s"):
        table.add_column(column, justify="right")
    for row in explained:
        table.add_row(
            row["size"],
            row["precision"],
            str(row["jobs_per_pass"]),
            f"{row['median_pass_s']:.2f}",
            f"{row['jobs_per_min']:.1f}",
            f"{row['views_per_s']:.2f}",
        )
    Console().print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["tiny", "base"])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--batch-views", type=int, nargs="+", default=[2, 8, 32, 64])
    parser.add_argument("--batches", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--explain-sizes", nargs="*", default=["tiny"])
    parser.add_argument("--explain-jobs", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--explain-passes", type=int, default=1)
    parser.add_argument("--chunk-rows", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    forward = [measure(size, views, args) for size in args.sizes for views in args.batch_views]
    explained = [
        measure_explained(size, jobs, args)
        for size in args.explain_sizes
        for jobs in args.explain_jobs
    ]
    print_tables(forward, explained, args.device, args.threads)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        rows = {"forward": forward, "explained": explained}
        args.out.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
