"""Writing a stage output: values to JSON by their annotations, arrays to ``.npy``, atomically."""

from __future__ import annotations

import errno
import math
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, TypeVar, get_args

import numpy as np

from pipeline.spool import fsync_dir
from pipeline.stage_outputs.schema import (
    DOCUMENT,
    KINDS,
    REPLACE_TRIES,
    array_problem,
    at,
    dataclass_of,
    fields_of,
    join_field,
    kind_of,
    normalised,
    require_dataclass,
    union_parts,
)


class Writer:
    """Turns a value into JSON by its annotation, collecting its arrays."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.arrays: list[np.ndarray[Any, Any]] = []
        self._by_kind: dict[str, Callable[[Any, Any, str], Any]] = {
            kind: getattr(self, f"_{kind}") for kind in KINDS
        }

    def encode(self, value: Any, hint: Any, where: str) -> Any:
        """``value`` as JSON for annotation ``hint``; ``where`` names the field."""
        if isinstance(hint, TypeVar):
            hint = type(value)
        return self._by_kind[kind_of(hint, where)](value, hint, where)

    @staticmethod
    def _expect(ok: bool, value: Any, where: str, what: str) -> None:
        if not ok:
            raise TypeError(f"{at(where)}: expected {what}, got {type(value).__name__}")

    def _any(self, value: Any, hint: Any, where: str) -> Any:
        if value is None or isinstance(value, bool | int | str):
            return value
        if isinstance(value, float):
            if not math.isfinite(value):
                raise ValueError(f"{at(where)}: a non-finite float cannot be held by Any")
            return value
        if isinstance(value, list | tuple):
            return [self._any(v, hint, f"{where}[{i}]") for i, v in enumerate(value)]
        self._expect(isinstance(value, dict), value, where, "a JSON value")
        self._expect(all(isinstance(k, str) for k in value), value, where, "str keys")
        return {
            k: self._any(v, hint, f"{where}[entry {i}]") for i, (k, v) in enumerate(value.items())
        }

    def _none(self, value: Any, hint: Any, where: str) -> None:
        self._expect(value is None, value, where, "None")

    def _bool(self, value: Any, hint: Any, where: str) -> bool:
        self._expect(isinstance(value, bool), value, where, "bool")
        return bool(value)

    def _int(self, value: Any, hint: Any, where: str) -> int:
        self._expect(isinstance(value, int) and not isinstance(value, bool), value, where, "int")
        return int(value)

    def _float(self, value: Any, hint: Any, where: str) -> Any:
        ok = isinstance(value, float | int) and not isinstance(value, bool)
        self._expect(ok, value, where, "float")
        number = float(value)
        if math.isfinite(number):
            return number
        return {"float": "nan" if math.isnan(number) else ("inf" if number > 0 else "-inf")}

    def _str(self, value: Any, hint: Any, where: str) -> str:
        self._expect(isinstance(value, str), value, where, "str")
        return str(value)

    def _path(self, value: Any, hint: Any, where: str) -> str:
        self._expect(isinstance(value, Path), value, where, "Path")
        try:
            return normalised(value).relative_to(self.root).as_posix()
        except ValueError:
            raise ValueError(f"{at(where)}: path lies outside the spool root") from None

    def _literal(self, value: Any, hint: Any, where: str) -> Any:
        allowed = get_args(hint)
        ok = any(type(value) is type(a) and value == a for a in allowed)
        self._expect(ok, value, where, f"one of {allowed}")
        return value

    def _enum(self, value: Any, hint: Any, where: str) -> Any:
        self._expect(isinstance(value, hint), value, where, hint.__name__)
        member = value.value
        ok = isinstance(member, str | int) and not isinstance(member, bool)
        self._expect(ok, member, where, f"a str or int value of {hint.__name__}")
        return member

    def _union(self, value: Any, hint: Any, where: str) -> Any:
        parts = union_parts(hint, where)
        if value is None and parts.nullable:
            return None
        for name, member in parts.tagged.items():
            if type(value) is dataclass_of(member):
                return {"kind": name, "value": self._dataclass(value, member, where)}
        self._expect(parts.plain is not None, value, where, f"one of {hint!r}")
        return self.encode(value, parts.plain, where)

    def _dataclass(self, value: Any, hint: Any, where: str) -> dict[str, Any]:
        cls = require_dataclass(hint, "a field's type")
        self._expect(type(value) is cls, value, where, cls.__name__)
        return {
            name: self.encode(getattr(value, name), field_hint, join_field(where, name))
            for name, field_hint in fields_of(hint)
        }

    def _tuple(self, value: Any, hint: Any, where: str) -> list[Any]:
        self._expect(isinstance(value, tuple), value, where, "tuple")
        return [
            self.encode(v, h, f"{where}[{i}]")
            for i, (v, h) in enumerate(_items(value, hint, where))
        ]

    def _list(self, value: Any, hint: Any, where: str) -> list[Any]:
        self._expect(isinstance(value, list), value, where, "list")
        (item,) = get_args(hint)
        return [self.encode(v, item, f"{where}[{i}]") for i, v in enumerate(value)]

    def _dict(self, value: Any, hint: Any, where: str) -> dict[str, Any]:
        self._expect(isinstance(value, dict), value, where, "dict")
        self._expect(all(isinstance(k, str) for k in value), value, where, "str keys")
        item = get_args(hint)[1]
        return {
            k: self.encode(v, item, f"{where}[entry {i}]") for i, (k, v) in enumerate(value.items())
        }

    def _array(self, value: Any, hint: Any, where: str) -> dict[str, Any]:
        self._expect(isinstance(value, np.ndarray), value, where, "numpy.ndarray")
        problem = array_problem(value.dtype, value.ndim, hint)
        if problem is not None:
            raise TypeError(f"{at(where)}: {problem}")
        self.arrays.append(value)
        return {"array": len(self.arrays) - 1, "dtype": value.dtype.str, "shape": list(value.shape)}


def _items(value: tuple[Any, ...], hint: Any, where: str) -> list[tuple[Any, Any]]:
    """Each item of tuple ``value`` with its annotation from ``tuple[...]`` ``hint``."""
    args = get_args(hint)
    if len(args) == 2 and args[1] is ...:
        return [(v, args[0]) for v in value]
    if len(value) != len(args):
        raise TypeError(f"{at(where)}: expected a tuple of {len(args)} items, got {len(value)}")
    return list(zip(value, args, strict=True))


def write_folder(folder: Path, text: str, arrays: list[np.ndarray[Any, Any]]) -> None:
    """Write the document and the arrays into ``folder`` and flush it all to disk."""
    for index, array in enumerate(arrays):
        with (folder / f"{index}.npy").open("xb") as file:
            np.save(file, array, allow_pickle=False)
            _sync(file)
    with (folder / DOCUMENT).open("xb") as file:
        file.write(text.encode("ascii"))
        _sync(file)
    fsync_dir(folder)


def _sync(file: IO[bytes]) -> None:
    file.flush()
    os.fsync(file.fileno())


def sibling(directory: Path, suffix: str) -> Path:
    """A hidden, unique sibling of ``directory`` for a folder on its way in or out."""
    return directory.with_name(f".{directory.name}.{uuid.uuid4().hex}.{suffix}")


def swap_in(staging: Path, directory: Path) -> None:
    """Rename ``staging`` to ``directory``, deleting an older output there first."""
    for _ in range(REPLACE_TRIES):
        try:
            staging.rename(directory)
        except OSError as exc:
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
            _retire(directory)
        else:
            fsync_dir(directory.parent)
            return
    raise OSError(errno.EEXIST, "other writers keep replacing the stage output", str(directory))


def _retire(directory: Path) -> None:
    """Move an older output out of the way and delete it (another writer may have)."""
    retired = sibling(directory, "old")
    try:
        directory.rename(retired)
    except FileNotFoundError:
        return
    shutil.rmtree(retired)
