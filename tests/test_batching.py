"""Batching model calls across jobs: the batcher itself, then the real segmenters."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from models.demo import DEMO_BUNDLE_DIR
from models.segmentation.nodule import yolo_outputs
from phantoms import make_case
from pipeline.batching import MicroBatcher
from pipeline.segment import SegmenterLoader


def test_concurrent_calls_share_passes_and_each_gets_its_own_results() -> None:
    passes: list[list[int]] = []

    def slow_square(items: list[int]) -> list[int]:
        passes.append(items)
        time.sleep(0.1)
        return [i * i for i in items]

    batcher = MicroBatcher(slow_square, max_items=64, name="test")
    requests = [[n, n + 100] for n in range(8)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(batcher, requests))
    assert results == [[a * a, b * b] for a, b in requests]
    assert batcher.stats.calls == 8 and batcher.stats.items == 16
    assert len(passes) < 8  # the first call ran alone, the others waited and went together
    assert max(len(p) for p in passes) > 2


def test_a_lone_call_does_not_wait_and_errors_reach_their_callers_only() -> None:
    def fail_on_negative(items: list[int]) -> list[int]:
        if any(i < 0 for i in items):
            raise ValueError("negative")
        return items

    batcher = MicroBatcher(fail_on_negative, max_items=4, name="test")
    started = time.perf_counter()
    assert batcher([1, 2]) == [1, 2]
    assert time.perf_counter() - started < 0.5
    with pytest.raises(ValueError, match="negative"):
        batcher([-1])
    assert batcher([3]) == [3]  # the batcher thread survived
    assert batcher([]) == []


def test_segmenting_several_jobs_at_once_batches_and_changes_no_mask() -> None:
    segmenters = SegmenterLoader(DEMO_BUNDLE_DIR)()
    studies = []
    for seed in range(30, 36):
        case = make_case(seed)
        studies.append(
            [np.ascontiguousarray(image.pixels[48:468, 90:602]) for image in case.images]
        )
    alone = [yolo_outputs(segmenters.nodule, crops) for crops in studies]
    barrier = threading.Barrier(len(studies))

    def at_once(crops: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        barrier.wait()
        return segmenters.nodule_masks(crops)

    with ThreadPoolExecutor(max_workers=len(studies)) as pool:
        together = list(pool.map(at_once, studies))
    for one, other in zip(alone, together, strict=True):
        for (probability, confidence), (p, c) in zip(one, other, strict=True):
            assert np.array_equal(probability, p) and np.array_equal(confidence, c)
    assert segmenters.nodule_masks.stats.items_per_pass > 2.0
