"""Stage outputs as files in the job's folder, for workers on other hosts.

In the distributed mode a stage's output travels to the next stage's worker
through the shared spool, never through the broker: ``work_dir/stages/NN-name.pkl``.
They are pickles the node's own workers wrote on the node's own volume; still,
reading one only ever builds the project's own types, numpy arrays and a few
standard ones (:class:`_ProjectUnpickler`), so a file planted there cannot run code.
"""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path
from typing import Any

_ALLOWED_MODULE_PREFIXES = ("pipeline.", "db.jobs", "db.models")
_ALLOWED_GLOBALS = frozenset(
    {
        ("builtins", "frozenset"),
        ("builtins", "set"),
        ("builtins", "slice"),
        ("builtins", "complex"),
        ("copyreg", "_reconstructor"),
        ("builtins", "object"),
        ("pathlib", "PosixPath"),
        ("pathlib", "Path"),
        ("datetime", "datetime"),
        ("datetime", "timezone"),
        ("datetime", "timedelta"),
        ("numpy", "dtype"),
        ("numpy", "ndarray"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
    }
)


class UnsafeStageOutputError(pickle.UnpicklingError):
    """A stage output file names a type no stage produces."""


class _ProjectUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if module.startswith(_ALLOWED_MODULE_PREFIXES) or (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise UnsafeStageOutputError(f"stage output refers to {module}.{name}")


def output_path(work_dir: Path, index: int, stage: str) -> Path:
    """Where stage number ``index`` (0-based) called ``stage`` leaves its output."""
    return work_dir / "stages" / f"{index:02d}-{stage}.pkl"


def save_output(path: Path, value: Any) -> None:
    """Write ``value`` durably (temporary file, fsync, rename) for the next stage's worker."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    with partial.open("wb") as file:
        pickle.dump(value, file, protocol=pickle.HIGHEST_PROTOCOL)
        file.flush()
        os.fsync(file.fileno())
    partial.replace(path)


def load_output(path: Path) -> Any:
    """Read a stage output :func:`save_output` wrote.

    Raises
    ------
    FileNotFoundError
        If the previous stage left no output there.
    UnsafeStageOutputError
        If the file names a type outside the project's own, numpy's and a few standard ones.
    """
    return _ProjectUnpickler(io.BytesIO(path.read_bytes())).load()
