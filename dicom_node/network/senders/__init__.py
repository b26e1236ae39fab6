"""Export senders: one module per destination kind, each delivering files to one destination.

A sender module defines a class that takes its destination's settings variant and
the node's calling AE title, and whose ``send(paths)`` delivers the files and says
what happened to each (:class:`Sender`). The class registers itself for its
settings variant with :func:`sends_to`; :func:`sender_for` finds it. Every module
of this package is loaded with the package, so a new kind needs only its module and
its settings variant (docs/ARCHITECTURE.md).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from dicom_node.settings import Destination


@dataclass(frozen=True)
class Outcome:
    """What happened to one file sent to a destination."""

    path: Path
    delivered: bool  # stored by the destination (with success or a warning)
    status: int | None  # the destination's status code (DIMSE, HTTP); None without an answer
    error: str | None = None  # why it was not delivered, for the audit trail


class Sender(Protocol):
    """Delivers files to one destination."""

    def send(self, paths: Sequence[Path]) -> list[Outcome]:
        """Send every file; one outcome per file, in order. Never raises for a failed send."""


D = TypeVar("D")
_FACTORIES: dict[type, Callable[[Any, str], Sender]] = {}


def sends_to(
    variant: type[D],
) -> Callable[[Callable[[D, str], Sender]], Callable[[D, str], Sender]]:
    """Register a sender class (or factory) for the destinations of settings class ``variant``."""

    def register(factory: Callable[[D, str], Sender]) -> Callable[[D, str], Sender]:
        _FACTORIES[variant] = factory
        return factory

    return register


def sender_for(destination: Destination, calling_ae: str) -> Sender:
    """The sender that delivers to ``destination`` as ``calling_ae``.

    Raises
    ------
    LookupError
        If no sender module handles the destination's kind.
    OSError
        If the sender cannot be set up (e.g. a TLS certificate cannot be read).
    """
    factory = _FACTORIES.get(type(destination))
    if factory is None:
        raise LookupError(f"no sender for destinations of kind {destination.kind!r}")
    return factory(destination, calling_ae)


def registered_variants() -> frozenset[type]:
    """The destination settings variants that have a sender."""
    return frozenset(_FACTORIES)


for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
