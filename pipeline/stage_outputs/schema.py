"""The stage output format: its constants and error, and how annotations map to JSON."""

from __future__ import annotations

import dataclasses
import enum
import math
import os
from functools import cache
from pathlib import Path
from types import NoneType, UnionType
from typing import Any, Literal, TypeVar, Union, cast, get_args, get_origin, get_type_hints

import numpy as np

T = TypeVar("T")

FORMAT = 1
DOCUMENT = "output.json"
HEADER_KEYS = frozenset({"format", "type", "schema_version", "value"})
ARRAY_KEYS = frozenset({"array", "dtype", "shape"})
TAG_KEYS = frozenset({"kind", "value"})
_ARRAY_KINDS = "biufc"  # bool, signed, unsigned, float, complex
NON_FINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}
_LITERAL_TYPES = (str, int, bool, NoneType)
# Every kind of value :func:`kind_of` tells apart; the reader and the writer have a
# method ``_<kind>`` for each.
KINDS = ("any", "none", "bool", "int", "float", "str", "path", "literal", "enum", "union",
         "dataclass", "tuple", "list", "dict", "array")  # fmt: skip
_SCALARS: dict[Any, str] = {
    NoneType: "none",
    bool: "bool",
    int: "int",
    float: "float",
    str: "str",
    Path: "path",
}
NPY_HEADERS = {
    (1, 0): np.lib.format.read_array_header_1_0,
    (2, 0): np.lib.format.read_array_header_2_0,
}
REPLACE_TRIES = 5
OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW


class StageOutputError(ValueError):
    """A stage output folder is missing, corrupt, planted, or of another type or schema.

    Messages name the folder, the field (e.g. ``views[0].features.index.texture``)
    and the problem, never a value.
    """


def kind_of(hint: Any, where: str) -> str:
    """Which of the supported kinds of value ``hint`` annotates (module docstring)."""
    origin = get_origin(hint)
    if isinstance(hint, TypeVar):
        raise TypeError(f"{at(where)}: type variable {hint} is not bound (load Class[Type])")
    if hint is Any:
        return "any"
    if origin in (Union, UnionType):
        return "union"
    if origin is Literal:
        if not all(isinstance(arg, _LITERAL_TYPES) for arg in get_args(hint)):
            raise TypeError(f"{at(where)}: Literal values must be str, int, bool or None")
        return "literal"
    if dataclass_of(hint) is not None:
        return "dataclass"
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return "enum"
    scalar = next((kind for cls, kind in _SCALARS.items() if hint is cls), None)
    if scalar is not None:
        return scalar
    if origin is tuple or origin is list:
        return origin.__name__
    if origin is dict and get_args(hint)[0] is str:
        return "dict"
    if hint is np.ndarray or origin is np.ndarray:
        return "array"
    raise TypeError(f"{at(where)}: annotation {hint!r} is not supported")


def dataclass_of(hint: Any) -> type | None:
    """The dataclass ``hint`` names (``C`` or ``C[...]``), else None."""
    cls = get_origin(hint) or hint
    return cls if isinstance(cls, type) and dataclasses.is_dataclass(cls) else None


def require_dataclass(hint: Any, what: str) -> type:
    """The dataclass ``hint`` names; ``what`` names it in the TypeError otherwise."""
    cls = dataclass_of(hint)
    if cls is None:
        raise TypeError(f"{what} {hint!r} is not a dataclass")
    return cls


def schema_version(cls: type) -> int:
    """The ``SCHEMA_VERSION`` a stage output class declares (a TypeError without one)."""
    version = getattr(require_dataclass(cls, "a stage output"), "SCHEMA_VERSION", None)
    if type(version) is not int or version < 1:
        raise TypeError(f"{cls.__name__} declares no SCHEMA_VERSION: ClassVar[int] (1 or more)")
    return version


@cache
def fields_of(hint: Any) -> tuple[tuple[str, Any], ...]:
    """Name and annotation of each field of dataclass ``hint``, its type variables bound."""
    cls = require_dataclass(hint, "a field's type")
    bindings = dict(zip(getattr(cls, "__parameters__", ()), get_args(hint), strict=False))
    try:
        hints = get_type_hints(cls)
    except (NameError, TypeError) as exc:
        raise TypeError(f"the annotations of {cls.__name__} cannot be resolved: {exc}") from exc
    out = []
    for field in dataclasses.fields(cls):
        if not field.init:
            raise TypeError(f"{cls.__name__}.{field.name}: fields with init=False are unsupported")
        out.append((field.name, bind(hints[field.name], bindings)))
    return tuple(out)


def bind(hint: Any, bindings: dict[Any, Any]) -> Any:
    """``hint`` with the type variables of ``bindings`` replaced (others are left)."""
    if isinstance(hint, TypeVar):
        return bindings.get(hint, hint)
    parameters = getattr(hint, "__parameters__", ())
    if not parameters or not bindings:
        return hint
    return hint[tuple(bindings.get(p, p) for p in parameters)]


@dataclasses.dataclass(frozen=True)
class UnionParts:
    """A union's members: whether None is one, the tagged dataclasses, the one other."""

    nullable: bool
    tagged: dict[str, Any]  # class name -> dataclass member
    plain: Any | None  # the one other member, if any


def union_parts(hint: Any, where: str) -> UnionParts:
    """Split a union into None, tagged dataclasses and at most one other member."""
    members = [m for m in get_args(hint) if m is not NoneType]
    if len(members) == 1:  # X | None: no tag needed
        return UnionParts(True, {}, members[0])
    tagged: dict[str, Any] = {}
    plain = []
    for member in members:
        cls = dataclass_of(member)
        if cls is None:
            plain.append(member)
        elif cls.__name__ in tagged:
            raise TypeError(f"{at(where)}: two union members are called {cls.__name__}")
        else:
            tagged[cls.__name__] = member
    literals = [m for m in plain if get_origin(m) is Literal]
    values = tuple(v for literal in literals for v in get_args(literal))
    if str in plain and len(plain) == len(literals) + 1 and all(isinstance(v, str) for v in values):
        plain = [str]
    elif len(literals) > 1 and len(literals) == len(plain):
        plain = [cast(Any, Literal)[values]]
    if len(plain) > 1 or (tagged and plain and kind_of(plain[0], where) in ("dict", "any")):
        raise TypeError(f"{at(where)}: union {hint!r} is ambiguous")
    return UnionParts(len(members) < len(get_args(hint)), tagged, plain[0] if plain else None)


def array_spec(hint: Any) -> tuple[type[np.generic], int | None]:
    """The scalar type and the number of dimensions an ndarray annotation names."""
    args = get_args(hint)
    if not args:
        return np.generic, None
    shape, dtype = args
    dims = get_args(shape)
    ndim = len(dims) if get_origin(shape) is tuple and dims and dims[-1] is not ... else None
    scalars = get_args(dtype)
    known = scalars and isinstance(scalars[0], type) and issubclass(scalars[0], np.generic)
    return (scalars[0] if known else np.generic), ndim


def array_problem(dtype: np.dtype[Any], ndim: int, hint: Any) -> str | None:
    """Why an array of ``dtype`` and ``ndim`` does not fit annotation ``hint``, or None."""
    scalar, dims = array_spec(hint)
    if dtype.kind not in _ARRAY_KINDS:
        return "array dtype is not bool or numeric"
    if not issubclass(dtype.type, scalar):
        return f"array dtype is not {scalar.__name__}"
    if dims is not None and ndim != dims:
        return f"array does not have {dims} dimensions"
    return None


def at(where: str) -> str:
    """A field path for a message (the output itself when empty)."""
    return where or "the output"


def join_field(where: str, name: str) -> str:
    """The path of field ``name`` inside ``where``."""
    return f"{where}.{name}" if where else name


def normalised(path: Path) -> Path:
    """``path`` absolute, with ``.`` and ``..`` resolved lexically (symlinks are kept)."""
    return Path(os.path.normpath(path.absolute()))
