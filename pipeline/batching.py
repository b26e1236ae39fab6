"""Batching model calls across jobs: one forward pass for the views of every waiting job.

A worker that runs several jobs' stages at once (``llnm-node worker
--concurrency N``) calls the models from several threads. :class:`MicroBatcher`
puts those calls in one queue; its thread takes every call waiting when it is
free, runs the model once on all their views, and hands each caller its part.
Nothing waits for company: a lone call runs at once, and calls pile up (and so
batch) only while the model is busy, which is when batching pays.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class BatchStats:
    """How the batcher has batched so far."""

    calls: int = 0  # requests served
    passes: int = 0  # model calls made
    items: int = 0  # items (views) through the model

    @property
    def items_per_pass(self) -> float:
        """Mean batch size."""
        return self.items / self.passes if self.passes else 0.0


class MicroBatcher(Generic[T, R]):
    """Serves ``fn(items) -> results`` (same length, same order) to many threads in batches."""

    def __init__(self, fn: Callable[[list[T]], list[R]], *, max_items: int, name: str) -> None:
        self._fn = fn
        self._max_items = max_items
        self._queue: queue.SimpleQueue[tuple[list[T], Future[list[R]]]] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name=f"batcher-{name}", daemon=True)
        self._started = threading.Lock()
        self.stats = BatchStats()

    def __call__(self, items: Sequence[T]) -> list[R]:
        """``fn(items)``, possibly computed together with other threads' items.

        Raises
        ------
        Exception
            Whatever ``fn`` raised on the batch holding ``items``.
        """
        if not items:
            return []
        with self._started:
            if not self._thread.is_alive():
                self._thread.start()
        future: Future[list[R]] = Future()
        self._queue.put((list(items), future))
        return future.result()

    def _take(self) -> list[tuple[list[T], Future[list[R]]]]:
        """The first waiting request and every other one already waiting, up to max_items."""
        batch = [self._queue.get()]
        count = len(batch[0][0])
        while count < self._max_items:
            try:
                request = self._queue.get_nowait()
            except queue.Empty:
                break
            batch.append(request)
            count += len(request[0])
        return batch

    def _serve(self) -> None:
        while True:
            batch = self._take()
            items = [item for request, _ in batch for item in request]
            try:
                results = self._fn(items)
            except Exception as exc:  # boundary: the callers get the error, the thread goes on
                for _, future in batch:
                    future.set_exception(exc)
                continue
            self.stats.calls += len(batch)
            self.stats.passes += 1
            self.stats.items += len(items)
            offset = 0
            for request, future in batch:
                future.set_result(results[offset : offset + len(request)])
                offset += len(request)
