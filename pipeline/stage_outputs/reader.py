"""Reading a stage output back, building only the types the expected annotations name."""

from __future__ import annotations

import json
import math
import os
import stat
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from types import NoneType
from typing import IO, Any, get_args

import numpy as np

from pipeline.stage_outputs.schema import (
    ARRAY_KEYS,
    DOCUMENT,
    FORMAT,
    HEADER_KEYS,
    KINDS,
    NON_FINITE,
    NPY_HEADERS,
    OPEN_FLAGS,
    TAG_KEYS,
    StageOutputError,
    array_problem,
    at,
    fields_of,
    join_field,
    kind_of,
    require_dataclass,
    union_parts,
)


class Reader:
    """Builds a value from JSON by its annotation, reading arrays from the output's folder."""

    def __init__(self, directory: Path, dir_fd: int, root: Path) -> None:
        self.directory = directory
        self.dir_fd = dir_fd
        self.root = root
        self._by_kind: dict[str, Callable[[Any, Any, str], Any]] = {
            kind: getattr(self, f"_{kind}") for kind in KINDS
        }

    def error(self, where: str, problem: str) -> StageOutputError:
        """The error for ``problem`` at field ``where``."""
        return StageOutputError(f"{self.directory}: {at(where)}: {problem}")

    def document(self) -> Any:
        """The parsed ``output.json``."""
        with self._open(DOCUMENT, "") as file:
            raw = file.read()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self.error("", f"{DOCUMENT} is not UTF-8") from None
        try:
            return json.loads(text, parse_constant=_no_constant, object_pairs_hook=_no_duplicates)
        except (ValueError, RecursionError) as exc:
            raise self.error("", f"{DOCUMENT} is not JSON ({exc})") from None

    def body(self, document: Any, name: str, version: int) -> Any:
        """The value of ``document`` after its header was checked."""
        if not isinstance(document, dict) or document.keys() != HEADER_KEYS:
            raise self.error("", "not a stage output document")
        if type(document["format"]) is not int or document["format"] != FORMAT:
            raise self.error("", f"not format {FORMAT}")
        if document["type"] != name:
            raise self.error("", f"holds another type than {name}")
        found = document["schema_version"]
        if type(found) is not int or found != version:
            shown = found if type(found) is int else "none"
            raise self.error("", f"schema version {shown}, expected {version}")
        return document["value"]

    def decode(self, data: Any, hint: Any, where: str) -> Any:
        """The value annotation ``hint`` gives JSON ``data``; ``where`` names the field."""
        return self._by_kind[kind_of(hint, where)](data, hint, where)

    def _expect(self, ok: bool, data: Any, where: str, what: str) -> None:
        if not ok:
            raise self.error(where, f"expected {what}, found {_json_type(data)}")

    def _any(self, data: Any, hint: Any, where: str) -> Any:
        return data

    def _none(self, data: Any, hint: Any, where: str) -> None:
        self._expect(data is None, data, where, "null")

    def _bool(self, data: Any, hint: Any, where: str) -> bool:
        self._expect(type(data) is bool, data, where, "a boolean")
        return bool(data)

    def _int(self, data: Any, hint: Any, where: str) -> int:
        self._expect(type(data) is int, data, where, "an integer")
        return int(data)

    def _float(self, data: Any, hint: Any, where: str) -> float:
        if type(data) is int or type(data) is float:
            return float(data)
        ok = isinstance(data, dict) and data.keys() == {"float"}
        ok = ok and type(data["float"]) is str and data["float"] in NON_FINITE
        self._expect(ok, data, where, "a number")
        return NON_FINITE[data["float"]]

    def _str(self, data: Any, hint: Any, where: str) -> str:
        self._expect(type(data) is str, data, where, "a string")
        return str(data)

    def _path(self, data: Any, hint: Any, where: str) -> Path:
        self._expect(type(data) is str, data, where, "a path")
        relative = PurePosixPath(data)
        if relative.is_absolute() or ".." in relative.parts or "\0" in data:
            raise self.error(where, "path is absolute or leaves the spool root")
        return self.root / relative

    def _literal(self, data: Any, hint: Any, where: str) -> Any:
        allowed = get_args(hint)
        if not any(type(data) is type(a) and data == a for a in allowed):
            raise self.error(where, f"value is not one of {allowed}")
        return data

    def _enum(self, data: Any, hint: Any, where: str) -> Any:
        member = next((m for m in hint if type(m.value) is type(data) and m.value == data), None)
        if member is None:
            raise self.error(where, f"value is not one of {hint.__name__}")
        return member

    def _union(self, data: Any, hint: Any, where: str) -> Any:
        parts = union_parts(hint, where)
        if data is None and parts.nullable:
            return None
        if parts.tagged and isinstance(data, dict) and "kind" in data:
            kind = data["kind"]
            member = parts.tagged.get(kind) if type(kind) is str else None
            if member is None or data.keys() != TAG_KEYS:
                raise self.error(where, f"kind is not one of {', '.join(parts.tagged)}")
            return self._dataclass(data["value"], member, where)
        self._expect(parts.plain is not None, data, where, f"one of {', '.join(parts.tagged)}")
        return self.decode(data, parts.plain, where)

    def _dataclass(self, data: Any, hint: Any, where: str) -> Any:
        fields = fields_of(hint)
        cls = require_dataclass(hint, "a field's type")
        self._expect(isinstance(data, dict), data, where, f"an object ({cls.__name__})")
        names = [name for name, _ in fields]
        missing = [name for name in names if name not in data]
        if missing:
            raise self.error(where, f"field {missing[0]!r} of {cls.__name__} is missing")
        extra = sorted(data.keys() - set(names))
        if extra:
            raise self.error(where, f"{cls.__name__} has no field {extra[0][:64]!r}")
        values = {name: self.decode(data[name], h, join_field(where, name)) for name, h in fields}
        try:
            return cls(**values)
        except (TypeError, ValueError) as exc:
            problem = f"{cls.__name__} refused its fields ({type(exc).__name__})"
            raise self.error(where, problem) from None

    def _tuple(self, data: Any, hint: Any, where: str) -> tuple[Any, ...]:
        self._expect(isinstance(data, list), data, where, "an array")
        args = get_args(hint)
        if len(args) == 2 and args[1] is ...:
            args = (args[0],) * len(data)
        elif len(data) != len(args):
            raise self.error(where, f"expected {len(args)} items, found {len(data)}")
        pairs = enumerate(zip(data, args, strict=True))
        return tuple(self.decode(d, h, f"{where}[{i}]") for i, (d, h) in pairs)

    def _list(self, data: Any, hint: Any, where: str) -> list[Any]:
        self._expect(isinstance(data, list), data, where, "an array")
        (item,) = get_args(hint)
        return [self.decode(d, item, f"{where}[{i}]") for i, d in enumerate(data)]

    def _dict(self, data: Any, hint: Any, where: str) -> dict[str, Any]:
        self._expect(isinstance(data, dict), data, where, "an object")
        item = get_args(hint)[1]
        return {
            k: self.decode(d, item, f"{where}[entry {i}]") for i, (k, d) in enumerate(data.items())
        }

    def _array(self, data: Any, hint: Any, where: str) -> np.ndarray[Any, Any]:
        ok = isinstance(data, dict) and data.keys() == ARRAY_KEYS
        self._expect(ok, data, where, "an array reference")
        index, dtype, shape = data["array"], data["dtype"], data["shape"]
        if type(index) is not int or index < 0 or type(dtype) is not str:
            raise self.error(where, "array reference is malformed")
        self._expect(isinstance(shape, list), shape, where, "an array shape")
        if not all(type(n) is int and n >= 0 for n in shape):
            raise self.error(where, "array shape is malformed")
        with self._open(f"{index}.npy", where) as file:
            return self._read_npy(file, where, (dtype, tuple(shape)), hint)

    def _read_npy(
        self, file: IO[bytes], where: str, recorded: tuple[str, tuple[int, ...]], hint: Any
    ) -> np.ndarray[Any, Any]:
        """The array in ``file`` after its header was checked against the document and hint."""
        try:
            read_header = NPY_HEADERS.get(np.lib.format.read_magic(file))
            if read_header is None:
                raise self.error(where, "array file is of an unsupported .npy version")
            shape, _, dtype = read_header(file)
        except (ValueError, SyntaxError) as exc:
            raise self.error(where, f"array file is not a .npy file ({exc})") from None
        if (dtype.str, tuple(shape)) != recorded:
            raise self.error(where, "array file's dtype or shape differs from the document")
        problem = array_problem(dtype, len(shape), hint)
        if problem is not None:
            raise self.error(where, problem)
        size = file.tell() + dtype.itemsize * math.prod(shape)
        found = os.fstat(file.fileno()).st_size
        if found != size:
            raise self.error(
                where, "array file is truncated" if found < size else "array file is too long"
            )
        file.seek(0)
        try:
            return np.asarray(np.load(file, allow_pickle=False))
        except (ValueError, OSError) as exc:
            raise self.error(where, f"array file cannot be read ({exc})") from None

    def _open(self, name: str, where: str) -> IO[bytes]:
        """File ``name`` of the output's folder: a regular file, never through a symlink."""
        try:
            fd = os.open(name, OPEN_FLAGS, dir_fd=self.dir_fd)
        except OSError as exc:
            raise self.error(where, f"{name} cannot be opened ({exc.strerror})") from None
        file = os.fdopen(fd, "rb")
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            file.close()
            raise self.error(where, f"{name} is not a regular file")
        return file


def _json_type(data: Any) -> str:
    names = {NoneType: "null", bool: "a boolean", int: "an integer", float: "a number"}
    names |= {str: "a string", list: "an array", dict: "an object"}
    return names.get(type(data), type(data).__name__)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise ValueError("an object has a key twice")
    return out
