"""Stage outputs as folders of JSON and ``.npy`` files, for workers on other hosts; no pickle.

In the distributed mode a stage's output (a tree of dataclasses) travels to the
next stage's worker through the shared spool, never through the broker.
:func:`save_output` writes it into a folder; :func:`load_output` reads it back
and builds only the types that the expected class's annotations name (resolved
with :func:`typing.get_type_hints`): no class is ever looked up by a name found
in a file, and nothing in a file is executed. A planted, corrupt or outdated
folder can only fail to load, with :class:`StageOutputError`.

Folder
    ``output.json``, ASCII JSON ``{"format": 1, "type": <class name>,
    "schema_version": <int>, "value": <tree>}``, and ``<n>.npy`` for the n-th
    array (NumPy format 1.0 or 2.0, no pickled data: NumPy's own format holds
    every bool and numeric dtype and shape, and each header is checked against
    the document and the annotation before any data is read). Saving writes a
    hidden temporary sibling folder, fsyncs its files and itself, then renames it over
    the older output (which is moved aside and deleted first): a reader sees the
    older output, the newer one or none, never half of one. A reader opens the
    folder once and reads every file through that handle, so it never mixes two.
Schema versions
    The class saved at the top declares ``SCHEMA_VERSION: ClassVar[int]`` (1 or
    more); a file of another version does not load. Nested dataclasses carry no
    version: the top-level one covers its whole tree, so bump it when the meaning
    or layout of anything in the tree changes. Changed field names or types are
    caught anyway: every field is checked against the annotations.
Values, by annotation
    A dataclass is an object of its fields; ``int``, ``str``, ``bool`` and
    ``None`` are themselves (a bool is never an int, nor an int a bool); a
    ``float`` is a number, or ``{"float": "nan" | "inf" | "-inf"}`` (strict JSON
    has no NaN); a ``Literal`` or ``Enum`` is its value; ``tuple[...]`` and
    ``list[T]`` are arrays; ``dict[str, T]`` is an object; ``Any`` holds JSON
    values only (tuples come back as lists); a ``Path`` is written relative to
    ``root`` in POSIX form and read back under the reader's ``root`` (an absolute
    one, or one with ``..``, does not load); a NumPy array of a bool or numeric
    dtype is ``{"array": n, "dtype": "<f4", "shape": [...]}``, its dtype and
    dimensions checked against ``NDArray[...]`` where that names them.
Unions
    ``X | None`` is null or X. In a union of several members each dataclass is
    tagged, ``{"kind": <class name>, "value": {...}}``, and at most one other
    member may appear (Literals count as one; ``str`` absorbs string Literals),
    never a dict or ``Any`` beside a dataclass. Other unions are a TypeError.
Type variables
    A generic dataclass loads as e.g. ``CroppedStudy[ModelInputs]``; when saving,
    a field typed by an unbound type variable is written as its value's own class.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import cast

from pipeline.stage_outputs.reader import Reader
from pipeline.stage_outputs.schema import (
    DIR_FLAGS,
    FORMAT,
    StageOutputError,
    T,
    normalised,
    require_dataclass,
    schema_version,
)
from pipeline.stage_outputs.writer import Writer, sibling, swap_in, write_folder

__all__ = ["StageOutputError", "load_output", "save_output"]


def save_output(directory: Path, value: object, *, root: Path) -> None:
    """Write ``value``, a dataclass declaring ``SCHEMA_VERSION``, durably into ``directory``.

    An older output there is replaced (module docstring).

    Parameters
    ----------
    directory
        The output's folder; its parent is created if needed.
    value
        The output; its fields are written as their annotations say.
    root
        The spool root every path in ``value`` lies under.

    Raises
    ------
    TypeError
        If the class declares no schema version, an annotation is not supported,
        or a value does not match its annotation (the message names the field).
    ValueError
        If a path lies outside ``root``, or an ``Any`` value holds a non-finite float.
    """
    cls = type(value)
    writer = Writer(normalised(root))
    document = {
        "format": FORMAT,
        "type": cls.__name__,
        "schema_version": schema_version(cls),
        "value": writer.encode(value, cls, ""),
    }
    text = json.dumps(document, allow_nan=False, separators=(",", ":"))
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = sibling(directory, "partial")
    staging.mkdir()
    try:
        write_folder(staging, text, writer.arrays)
        swap_in(staging, directory)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # already gone once swapped in


def load_output(directory: Path, expected: type[T], *, root: Path) -> T:
    """Read the output :func:`save_output` left in ``directory`` as an ``expected``.

    Parameters
    ----------
    directory
        The output's folder.
    expected
        The dataclass the output must be (parametrised if generic, e.g.
        ``CroppedStudy[ModelInputs]``); only the types its annotations reach are built.
    root
        The spool root as this host mounts it; paths are resolved under it.

    Raises
    ------
    StageOutputError
        If the folder or a file is missing or not what :func:`save_output` writes
        for ``expected`` at its current schema version.
    TypeError
        If ``expected`` is not a dataclass declaring ``SCHEMA_VERSION``, or one
        of the annotations it reaches is not supported.
    """
    cls = require_dataclass(expected, "the expected type")
    version = schema_version(cls)
    try:
        dir_fd = os.open(directory, DIR_FLAGS)
    except OSError as exc:
        raise StageOutputError(f"{directory}: no stage output ({exc.strerror})") from None
    try:
        reader = Reader(directory, dir_fd, normalised(root))
        tree = reader.body(reader.document(), cls.__name__, version)
        return cast(T, reader.decode(tree, expected, ""))
    finally:
        os.close(dir_fd)
