"""The models of every bundle a job may run with, each bundle verified and loaded once.

A job is pinned to one bundle when it starts (``JobContext.bundle_dir``: the
live installed bundle then, or the node's configured ``model.bundle_dir``), so
all of its stages use the same one even if an admin activates another
meanwhile; shadow bundles (:mod:`pipeline.shadow`) are read the same way.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from models.bundle import BundleLoader
from models.risk_map import RiskMap
from models.scope import ScopeStatistics
from pipeline.contracts import JobContext
from pipeline.features import RiskMapLoader, ScopeLoader
from pipeline.infer import LlnmLoader, LoadedLlnm
from pipeline.segment import SegmenterLoader, Segmenters

T = TypeVar("T")


class BundleModels:
    """Loaders per bundle folder; ``default`` serves jobs pinned to no installed bundle."""

    def __init__(self, default: Path) -> None:
        self.default = default
        self._lock = threading.Lock()
        self._loaders: dict[tuple[str, Path], BundleLoader[Any]] = {}

    def folder(self, job: JobContext) -> Path:
        """The bundle folder ``job`` runs with."""
        return self.default if job.bundle_dir is None else Path(job.bundle_dir)

    def _get(self, kind: Callable[[Path], BundleLoader[T]], job: JobContext) -> T:
        key = (kind.__name__, self.folder(job))
        with self._lock:
            loader = self._loaders.get(key)
            if loader is None:
                loader = self._loaders[key] = kind(key[1])
        result: T = loader()
        return result

    def segmenters(self, job: JobContext) -> Segmenters:
        """The nodule and thyroid segmenters of ``job``'s bundle."""
        return self._get(SegmenterLoader, job)

    def scope(self, job: JobContext) -> ScopeStatistics | None:
        """The scope statistics of ``job``'s bundle (None: it has none)."""
        return self._get(ScopeLoader, job)

    def risk_map(self, job: JobContext) -> RiskMap | None:
        """The population risk map of ``job``'s bundle (None: it has none)."""
        return self._get(RiskMapLoader, job)

    def llnm(self, job: JobContext) -> LoadedLlnm:
        """LLNM-Net of ``job``'s bundle."""
        return self._get(LlnmLoader, job)
