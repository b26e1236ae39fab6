"""Segment + features per view: time, Dice, and capsule distance error against phantom truth.

Phantom cases of a seed the demo segmenters were not trained on (default 2;
they were trained on seed 1) are cropped the way the crop stage does it
(:func:`pipeline.crop.crop_image`). For every view it times the nodule and
thyroid segmenters (one crop per call, as the segment stage sees a study
view by view) and the feature extraction, scores both masks with Dice
against the generator's masks, and measures the minimum nodule-capsule
distance twice: from the true masks and from the predicted masks, each
against the generator's true distance. Medians and 95th percentiles are
printed; ``--out`` also writes them as JSON.

Run::

    .venv/bin/python benchmarks/segment_features.py [--cases 40] [--device cpu|cuda]
        [--threads 2] [--bundle models/demo_bundle] [--out benchmarks/out/segment.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import track
from rich.table import Table

from imaging.crop import crop_image
from imaging.features import Location, extract_view
from imaging.overlap import dice
from models.demo import DEMO_BUNDLE_DIR
from models.segmentation import predict_probabilities
from phantoms import make_case
from pipeline.segment import SegmenterLoader

TARGET_DICE = {"nodule": 0.85, "thyroid": 0.90}
TARGET_TRUE_MASK_ERROR_MM = 0.3


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def capsule_distance(
    image: np.ndarray[Any, Any],
    nodule: np.ndarray[Any, Any],
    thyroid: np.ndarray[Any, Any],
    mm_per_pixel: tuple[float, float],
) -> float | None:
    location = extract_view(image, nodule, thyroid, mm_per_pixel).index
    if location is None or not isinstance(location.location, Location):
        return None
    return location.location.capsule_distance


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    segmenters = SegmenterLoader(args.bundle, device)()
    rows: list[dict[str, Any]] = []
    seeds = [
        int(np.random.SeedSequence([args.seed, i]).generate_state(1)[0]) for i in range(args.cases)
    ]
    for seed in track(seeds, description="phantom cases"):
        case = make_case(seed)
        for dataset, truth in zip(case.datasets, case.images, strict=True):
            cropped = crop_image(dataset)
            area = cropped.area
            x0, y0, x1, y1 = area.x0, area.y0, area.x1, area.y1
            image = cropped.pixels
            true_nodule = truth.nodule_mask[y0:y1, x0:x1]
            true_thyroid = truth.thyroid_mask[y0:y1, x0:x1]
            spacing = cropped.area.mm_per_pixel or truth.mm_per_pixel
            started = time.perf_counter()
            (p_nodule,) = predict_probabilities(segmenters.nodule, [image])
            (p_thyroid,) = predict_probabilities(segmenters.thyroid, [image])
            if device.type == "cuda":
                torch.cuda.synchronize()
            segmented = time.perf_counter()
            nodule = p_nodule > segmenters.nodule.config.threshold
            thyroid = p_thyroid > segmenters.thyroid.config.threshold
            features = extract_view(image, nodule, thyroid, spacing, view=truth.view)
            done = time.perf_counter()
            predicted_distance = (
                features.index.location.capsule_distance
                if features.index is not None and isinstance(features.index.location, Location)
                else None
            )
            true_distance = capsule_distance(image, true_nodule, true_thyroid, spacing)
            rows.append(
                {
                    "seed": seed,
                    "view": truth.view,
                    "segment_ms": 1000 * (segmented - started),
                    "features_ms": 1000 * (done - segmented),
                    "nodule_dice": dice(nodule, true_nodule),
                    "thyroid_dice": dice(thyroid, true_thyroid),
                    "true_capsule_mm": truth.capsule_distance_mm,
                    "error_true_masks_mm": None
                    if true_distance is None
                    else abs(true_distance - truth.capsule_distance_mm),
                    "error_predicted_masks_mm": None
                    if predicted_distance is None
                    else abs(predicted_distance - truth.capsule_distance_mm),
                }
            )
    return summarise(rows, args)


def summarise(rows: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    def column(name: str) -> list[float]:
        return [float(r[name]) for r in rows if r[name] is not None]

    total = [r["segment_ms"] + r["features_ms"] for r in rows]
    missing = sum(r["error_predicted_masks_mm"] is None for r in rows)
    return {
        "views": len(rows),
        "device": args.device,
        "threads": args.threads,
        "bundle": str(args.bundle),
        "seed": args.seed,
        "machine": platform.processor() or platform.machine(),
        "ms_per_view": {
            "segment_median": statistics.median(column("segment_ms")),
            "features_median": statistics.median(column("features_ms")),
            "total_median": statistics.median(total),
            "total_p95": percentile(total, 95),
        },
        "dice_mean": {
            "nodule": statistics.fmean(column("nodule_dice")),
            "thyroid": statistics.fmean(column("thyroid_dice")),
        },
        "capsule_error_mm": {
            "true_masks_median": statistics.median(column("error_true_masks_mm")),
            "true_masks_max": max(column("error_true_masks_mm")),
            "predicted_masks_median": statistics.median(column("error_predicted_masks_mm")),
            "predicted_masks_p95": percentile(column("error_predicted_masks_mm"), 95),
            "predicted_masks_unavailable": missing,
        },
        "rows": rows,
    }


def show(result: dict[str, Any]) -> None:
    console = Console()
    table = Table(title=f"segment + features, {result['views']} views on {result['device']}")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_column("target", justify="right")
    ms, dices, errors = result["ms_per_view"], result["dice_mean"], result["capsule_error_mm"]
    table.add_row("segment (both models), median ms", f"{ms['segment_median']:.1f}", "")
    table.add_row("features, median ms", f"{ms['features_median']:.1f}", "")
    table.add_row("segment + features, median ms", f"{ms['total_median']:.1f}", "")
    table.add_row("segment + features, p95 ms", f"{ms['total_p95']:.1f}", "")
    for target, minimum in TARGET_DICE.items():
        table.add_row(f"{target} Dice, mean", f"{dices[target]:.3f}", f">= {minimum}")
    table.add_row(
        "capsule error, true masks, median mm",
        f"{errors['true_masks_median']:.3f}",
        f"<= {TARGET_TRUE_MASK_ERROR_MM}",
    )
    table.add_row("capsule error, true masks, max mm", f"{errors['true_masks_max']:.3f}", "")
    table.add_row(
        "capsule error, predicted masks, median mm", f"{errors['predicted_masks_median']:.3f}", ""
    )
    table.add_row(
        "capsule error, predicted masks, p95 mm", f"{errors['predicted_masks_p95']:.3f}", ""
    )
    table.add_row(
        "views without a predicted distance", str(errors["predicted_masks_unavailable"]), ""
    )
    console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=40)
    parser.add_argument("--seed", type=int, default=2)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--bundle", type=Path, default=DEMO_BUNDLE_DIR)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    result = run(args)
    show(result)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
