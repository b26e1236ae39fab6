"""Model bundles: a folder of safetensors weights and JSON, described and sealed by a manifest.

Layout::

    bundle/
      manifest.json         name, version, architecture, inputs, text encoder,
                            training data, metrics, intended use, sha256 of every file
      nodule/               YOLOv8-seg nodule segmenter (model.safetensors, config.json, ...)
      thyroid/              UNet++ thyroid segmenter
      llnm/                 LLNM-Net (TMDL) weights and config, when trained
      text_encoder/         LLNM-Net's report encoder when it is not the packaged default
                            (config.json, safetensors weights, tokenizer files)

Rules
    Only ``.safetensors``, ``.json``, ``.png``, ``.md`` and ``.txt`` files may
    be in a bundle: a pickle (``.pt``, ``.pkl``, ...) or any other file is
    refused when sealing and when loading. Loading checks every file against
    its sha256 in the manifest and refuses files the manifest does not list.
    The manifest's ``text_encoder`` names the packaged default by package
    (``folder`` null) or any other encoder by its folder inside the bundle
    (``text_encoder``), so a sealed bundle is self-contained.
    A bundle trained on synthetic data says so (``training_data.synthetic``)
    and its intended use must contain NOT FOR CLINICAL USE; every object made
    with it carries :attr:`Manifest.clinical_use_label`.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Generic, TypeVar

from pydicom.uid import generate_uid

MANIFEST_FILE = "manifest.json"
LLNM_DIR = "llnm"  # LLNM-Net's component folder in a bundle
FORMAT = "llnm-bundle/1"
ALLOWED_SUFFIXES = frozenset({".safetensors", ".json", ".png", ".md", ".txt"})
NOT_FOR_CLINICAL_USE = "NOT FOR CLINICAL USE"
TEXT_ENCODER_DIR = "text_encoder"
_ENCODER_SUFFIXES = frozenset({".json", ".safetensors", ".txt"})  # config, weights, tokenizer
_CHUNK = 1 << 20


class BundleError(ValueError):
    """The bundle is incomplete, altered, or holds a file it must not."""


@dataclass(frozen=True)
class Manifest:
    """What ``manifest.json`` says about a bundle."""

    format: str
    name: str
    version: str
    created: str  # ISO 8601, UTC
    intended_use: str
    architecture: dict[str, Any]  # per component: its config.json
    input_spec: dict[str, Any]
    text_encoder: dict[str, Any] | None
    training_data: dict[str, Any]  # includes "synthetic": bool
    metrics: dict[str, Any]
    files: dict[str, str]  # relative POSIX path -> sha256 hex

    @property
    def synthetic(self) -> bool:
        """Whether the bundle was trained on synthetic data."""
        return bool(self.training_data.get("synthetic"))

    @property
    def clinical_use_label(self) -> str | None:
        """NOT FOR CLINICAL USE for a synthetic bundle, else None."""
        return NOT_FOR_CLINICAL_USE if self.synthetic else None

    @property
    def identity(self) -> BundleIdentity:
        """The bundle as the objects made with it name it."""
        return BundleIdentity(
            name=self.name,
            version=self.version,
            device_uid=device_uid(self.name, self.version, self.files),
            clinical_use_label=self.clinical_use_label,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return asdict(self)


@dataclass(frozen=True)
class BundleIdentity:
    """What every object made with a bundle says about it (IHE AI Results' algorithm entry)."""

    name: str
    version: str
    device_uid: str  # changes whenever any file of the bundle changes
    clinical_use_label: str | None  # NOT FOR CLINICAL USE for a synthetic bundle


def device_uid(name: str, version: str, files: dict[str, str]) -> str:
    """A DICOM UID for the bundle: derived from its name, version and every file's sha256."""
    sources = [name, version, *(f"{path}={digest}" for path, digest in sorted(files.items()))]
    return str(generate_uid(entropy_srcs=["llnm-node bundle", *sources]))


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def bundle_digest(folder: Path) -> str:
    """Hex SHA-256 of the bundle's ``manifest.json``: a content hash of the whole bundle.

    The manifest lists every file's sha256, so any change to any file (once sealed)
    changes it. The files themselves are not checked here (:func:`verify_bundle`).
    """
    return sha256_file(folder / MANIFEST_FILE)


def _bundle_files(folder: Path) -> list[Path]:
    """Every file of the bundle but the manifest, sorted; refuses disallowed kinds."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST_FILE)
    refused = [p.relative_to(folder).as_posix() for p in files if p.suffix not in ALLOWED_SUFFIXES]
    if refused:
        raise BundleError(
            f"{folder} holds files a bundle may not hold (only safetensors, JSON, PNG, "
            f"Markdown, text; never pickles): {refused}"
        )
    return files


def seal_bundle(
    folder: Path,
    *,
    name: str,
    version: str,
    intended_use: str,
    training_data: dict[str, Any],
    input_spec: dict[str, Any],
    text_encoder: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
) -> Manifest:
    """Write ``manifest.json`` for the files now in ``folder``.

    The architecture of each component is read from its ``config.json``.

    Raises
    ------
    BundleError
        If the folder holds a disallowed file or no component.
    ValueError
        If the data is synthetic and the intended use does not say NOT FOR CLINICAL USE.
    """
    if training_data.get("synthetic") and NOT_FOR_CLINICAL_USE not in intended_use:
        raise ValueError(f"a bundle trained on synthetic data must say {NOT_FOR_CLINICAL_USE}")
    files = _bundle_files(folder)
    architecture = {
        path.parent.relative_to(folder).as_posix(): json.loads(path.read_text(encoding="utf-8"))
        for path in files
        if path.name == "config.json" and path.parent != folder
    }
    if not architecture:
        raise BundleError(f"{folder} holds no component (no */config.json)")
    manifest = Manifest(
        format=FORMAT,
        name=name,
        version=version,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        intended_use=intended_use,
        architecture=architecture,
        input_spec=input_spec,
        text_encoder=text_encoder,
        training_data=training_data,
        metrics=metrics or {},
        files={p.relative_to(folder).as_posix(): sha256_file(p) for p in files},
    )
    text = json.dumps(manifest.to_dict(), indent=2, sort_keys=False) + "\n"
    (folder / MANIFEST_FILE).write_text(text, encoding="utf-8")
    return manifest


def reseal_bundle(folder: Path, **metrics: Any) -> Manifest:
    """Seal ``folder`` again after files were added or replaced, keeping its manifest's fields.

    ``metrics`` entries are added to (or replace those of) the manifest's metrics.

    Raises
    ------
    BundleError
        As :func:`seal_bundle`, or if the folder has no readable manifest.
    """
    path = folder / MANIFEST_FILE
    try:
        old = Manifest(**json.loads(path.read_text(encoding="utf-8")))
    except (OSError, json.JSONDecodeError, TypeError) as exc:
        raise BundleError(f"{path} cannot be read: {exc}") from exc
    return seal_bundle(
        folder,
        name=old.name,
        version=old.version,
        intended_use=old.intended_use,
        training_data=old.training_data,
        input_spec=old.input_spec,
        text_encoder=old.text_encoder,
        metrics={**old.metrics, **metrics},
    )


def include_text_encoder(folder: Path, source: Path) -> Path:
    """Copy the local BERT-family encoder in ``source`` into ``folder/text_encoder``.

    Its top-level config, safetensors weights and tokenizer files (JSON, text)
    are copied; anything else (a pickled ``pytorch_model.bin``, sub-folders) is not.

    Raises
    ------
    BundleError
        If ``source`` has no ``config.json`` or no safetensors weights.
    """
    target = folder / TEXT_ENCODER_DIR
    if source.resolve() == target.resolve():
        return target
    files = sorted(p for p in source.iterdir() if p.is_file() and p.suffix in _ENCODER_SUFFIXES)
    names = {p.name for p in files}
    if "config.json" not in names or not any(p.suffix == ".safetensors" for p in files):
        raise BundleError(
            f"the text encoder {source} needs config.json and safetensors weights "
            "(save it with save_pretrained(..., safe_serialization=True))"
        )
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    for path in files:
        shutil.copyfile(path, target / path.name)
    return target


def text_encoder_folder(folder: Path, manifest: Manifest) -> Path | None:
    """The bundle's text encoder folder; None for the packaged default.

    Raises
    ------
    BundleError
        If the manifest names a folder outside the bundle (sealed before encoders
        travelled with bundles: seal it again).
    """
    reference = (manifest.text_encoder or {}).get("folder")
    if reference is None:
        return None
    relative = Path(reference)
    if relative.is_absolute() or ".." in relative.parts:
        raise BundleError(
            f"{folder}: the text encoder {reference} lies outside the bundle; seal it again "
            "so the encoder is copied into it"
        )
    return folder / relative


def bundle_identity(folder: Path) -> BundleIdentity:
    """The identity of the bundle in ``folder`` as its manifest gives it, without verifying files.

    Its label is NOT FOR CLINICAL USE unless the manifest says it was trained on
    real data; a bundle whose manifest cannot be read is named by its folder and
    gets the label too (a notice about a job must still say what made it).
    """
    try:
        manifest = json.loads((folder / MANIFEST_FILE).read_text(encoding="utf-8"))
        name, version, files = str(manifest["name"]), str(manifest["version"]), manifest["files"]
        synthetic = manifest["training_data"]["synthetic"]
        uid = device_uid(name, version, {str(k): str(v) for k, v in files.items()})
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return BundleIdentity(
            name=folder.name,
            version="unknown",
            device_uid=device_uid(folder.name, "unknown", {}),
            clinical_use_label=NOT_FOR_CLINICAL_USE,
        )
    label = None if synthetic is False else NOT_FOR_CLINICAL_USE
    return BundleIdentity(name=name, version=version, device_uid=uid, clinical_use_label=label)


def verify_bundle(folder: Path) -> Manifest:
    """Read the manifest and check every file against it.

    Raises
    ------
    BundleError
        If the manifest is missing or malformed, a listed file is missing or
        altered, or the folder holds a file the manifest does not list or a
        bundle may not hold.
    """
    path = folder / MANIFEST_FILE
    if not path.is_file():
        raise BundleError(f"{folder} is not a model bundle: no {MANIFEST_FILE}")
    try:
        manifest = Manifest(**json.loads(path.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, TypeError) as exc:
        raise BundleError(f"{path} is malformed: {exc}") from exc
    if manifest.format != FORMAT:
        raise BundleError(f"{path}: unknown bundle format {manifest.format!r}")
    present = {p.relative_to(folder).as_posix(): p for p in _bundle_files(folder)}
    unlisted = sorted(set(present) - set(manifest.files))
    if unlisted:
        raise BundleError(f"{folder} holds files its manifest does not list: {unlisted}")
    for relative, expected in manifest.files.items():
        if relative not in present:
            raise BundleError(f"{folder}: {relative} is missing")
        if sha256_file(present[relative]) != expected:
            raise BundleError(f"{folder}: {relative} does not match its sha256 in the manifest")
    return manifest


T = TypeVar("T")


class BundleLoader(Generic[T]):
    """Loads something from a bundle on first call and returns the same thing after.

    The bundle is verified first (:func:`verify_bundle`); ``load(folder,
    manifest)`` does the rest. Thread-safe: concurrent first calls load once.
    """

    def __init__(self, bundle_dir: Path, load: Callable[[Path, Manifest], T]) -> None:
        self.bundle_dir = bundle_dir
        self._load = load
        self._lock = threading.Lock()
        self._loaded: tuple[T] | None = None  # a tuple: the loaded thing may be None

    def __call__(self) -> T:
        """The loaded thing, loading it the first time.

        Raises
        ------
        BundleError
            If the bundle is not sealed, altered, or holds a disallowed file.
        Exception
            Whatever ``load`` raises (e.g. a component missing from the bundle).
        """
        with self._lock:
            if self._loaded is None:
                self._loaded = (self._load(self.bundle_dir, verify_bundle(self.bundle_dir)),)
            return self._loaded[0]
