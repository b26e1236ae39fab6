"""Installing a sealed model bundle into the node's bundle store (``llnm-node bundle install``).

The bundle is verified (:func:`models.bundle.verify_bundle`), copied into a
temporary sibling of ``<store>/<name>-<version>-<sha8>/``, verified again there
and renamed into place, then recorded in the registry (:mod:`db.bundles`), which
lives in the database layer and so cannot read bundles itself. A copy left by an
install whose transaction failed is reused when it verifies.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path

from sqlalchemy.orm import Session

from db.bundles import BundleRegistryError, check_installable, register_bundle
from db.models import BundleRole, InstalledBundle
from models.bundle import BundleError, bundle_digest, verify_bundle

_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]")


def store_folder(store: Path, name: str, version: str, sha256: str) -> Path:
    """Where bundle ``name`` ``version`` is installed in ``store`` (a single folder name)."""
    folder = _UNSAFE.sub("_", f"{name}-{version}-{sha256[:8]}")
    return store / folder.lstrip(".")


def _verified_copy(folder: Path, sha256: str) -> None:
    """Check ``folder`` holds the sealed bundle whose manifest hash is ``sha256``."""
    verify_bundle(folder)
    if bundle_digest(folder) != sha256:
        raise BundleError(f"{folder} does not hold the bundle being installed (it changed?)")


def _copy(source: Path, target: Path, sha256: str) -> None:
    """Copy ``source`` to ``target`` through a verified temporary sibling and a rename."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        shutil.copytree(source, partial, dirs_exist_ok=True)
        _verified_copy(partial, sha256)
        partial.rename(target)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


def install_bundle(
    session: Session, source: Path, store: Path, role: BundleRole = BundleRole.SHADOW
) -> InstalledBundle:
    """Verify the bundle in ``source``, copy it into ``store`` and record it with ``role``.

    Installing the same bundle again (name, version and manifest sha256) returns
    its row unchanged, without a second copy. A live bundle demotes the former
    live one to shadow. The caller's transaction commits the row.

    Raises
    ------
    BundleError
        If ``source`` is not a sealed, unaltered bundle (or changed while copied).
    BundleRegistryError
        If its name and version are installed with other contents, or the store
        holds a damaged folder in its place.
    """
    manifest = verify_bundle(source)
    sha256 = bundle_digest(source)
    existing = check_installable(session, manifest.name, manifest.version, sha256)
    if existing is not None:
        return existing
    target = store_folder(store, manifest.name, manifest.version, sha256)
    if target.exists():
        try:
            _verified_copy(target, sha256)
        except BundleError as exc:
            raise BundleRegistryError(
                f"{target} is in the way and is not this bundle ({exc}); remove it"
            ) from exc
    else:
        _copy(source, target, sha256)
    return register_bundle(
        session,
        name=manifest.name,
        version=manifest.version,
        sha256=sha256,
        path=str(target.resolve()),
        role=role,
    )
