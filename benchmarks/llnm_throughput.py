"""LLNM-Net (TMDL) inference speed: views per second and peak memory, tiny and base.

Random inputs of the configured shapes (two views per patient, a 50-token
report) go through the model in eval mode under ``torch.inference_mode``; on
CUDA with bf16 autocast. The first ``--warmup`` batches are not timed. Peak
memory is the process's resident set growth on the CPU and
``torch.cuda.max_memory_allocated`` on CUDA. Target (issue): ``base``, bf16,
batch 64 views, at least 500 views/s on one H100.

Run::

    .venv/bin/python benchmarks/llnm_throughput.py [--sizes tiny base] [--device cpu|cuda]
        [--batch-views 64] [--batches 5] [--threads 2] [--out benchmarks/out/llnm.json]
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

from models.llnm.config import TMDLConfig
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


def measure(size: str, args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(args.device)
    config = TMDLConfig.preset(size)
    before = resident_mib()
    model = TMDL(config).to(device).eval()
    patients = max(1, args.batch_views // VIEWS_PER_PATIENT)
    batch = random_batch(config, patients, torch.Generator().manual_seed(0)).to(device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    with torch.inference_mode(), autocast:
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["tiny", "base"])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--batch-views", type=int, default=64)
    parser.add_argument("--batches", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = [measure(size, args) for size in args.sizes]
    table = Table(title=f"LLNM-Net inference on {args.device} ({args.threads} threads)")
    for column in ("size", "parameters", "precision", "batch (views)", "views/s", "peak MiB"):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(
            row["size"],
            f"{row['parameters_m']:.2f} M",
            row["precision"],
            str(row["batch_views"]),
            f"{row['views_per_s']:.1f}",
            f"{row['peak_memory_mib']:.0f}",
        )
    Console().print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
