"""The installed model bundles and their roles: at most one live, others shadow or off.

A bundle is installed once per name and version (:mod:`dicom_node.app.bundles`
verifies and copies it, then :func:`register_bundle` records the copy). Its
``sha256`` is that of its manifest (``models.bundle.bundle_digest``), so the same
name and version with other contents is refused: a new bundle needs a new
version. Making a bundle live demotes the former live one to shadow in the same
transaction. Every change is an audit event (``bundle.installed``,
``bundle.role_changed``). Registry writes are serialised: by SQLite's write lock,
and on PostgreSQL by a lock on the table, so two concurrent activations cannot
leave two bundles live.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Select, select, text
from sqlalchemy.orm import Session

from db.events import record_event
from db.models import BundleRole, InstalledBundle, utcnow


class BundleRegistryError(ValueError):
    """An unknown bundle, or a name and version already installed with other contents."""


def _lock_registry(session: Session) -> None:
    """Serialise registry writes until the transaction ends (SQLite: already by BEGIN IMMEDIATE)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("LOCK TABLE bundles IN SHARE ROW EXCLUSIVE MODE"))


def _fresh(session: Session, query: Select[InstalledBundle]) -> list[InstalledBundle]:
    """Rows as the database holds them now (after the lock), not as the session last saw them."""
    return list(session.scalars(query.execution_options(populate_existing=True)))


def _label(bundle: InstalledBundle) -> str:
    return f"{bundle.name} {bundle.version} ({bundle.sha256[:12]})"


def check_installable(
    session: Session, name: str, version: str, sha256: str
) -> InstalledBundle | None:
    """The row of this very bundle if it is installed already; None if it is not.

    Takes the registry lock (module docstring).

    Raises
    ------
    BundleRegistryError
        If ``name`` ``version`` is installed with another sha256.
    """
    _lock_registry(session)
    query = select(InstalledBundle).where(
        InstalledBundle.name == name, InstalledBundle.version == version
    )
    existing = next(iter(_fresh(session, query)), None)
    if existing is not None and existing.sha256 != sha256:
        raise BundleRegistryError(
            f"{name} {version} is installed already with other contents (sha256 "
            f"{existing.sha256[:12]}, this one {sha256[:12]}); seal the new bundle "
            "under a new version"
        )
    return existing


def _change_role(session: Session, bundle: InstalledBundle, role: BundleRole) -> None:
    """Set ``bundle``'s role and record the change (nothing when it has that role)."""
    former = bundle.role
    if former == role:
        return
    bundle.role = role
    bundle.changed_at = utcnow()
    session.flush()
    record_event(
        session,
        kind="bundle.role_changed",
        message=f"bundle {_label(bundle)}: {former} -> {role}",
        detail={
            "name": bundle.name,
            "version": bundle.version,
            "sha256": bundle.sha256,
            "from": str(former),
            "to": str(role),
        },
    )


def _demote_live(session: Session, *, keep: int | None) -> None:
    """Every live bundle but ``keep`` becomes shadow."""
    live = select(InstalledBundle).where(InstalledBundle.role == BundleRole.LIVE)
    for bundle in _fresh(session, live):
        if bundle.id != keep:
            _change_role(session, bundle, BundleRole.SHADOW)


def register_bundle(
    session: Session, *, name: str, version: str, sha256: str, path: str, role: BundleRole
) -> InstalledBundle:
    """Record an installed copy at ``path`` (absolute); returns its row.

    The same name, version and sha256 again returns the existing row unchanged.
    A live bundle demotes the former live one to shadow.

    Raises
    ------
    BundleRegistryError
        If ``name`` ``version`` is installed with another sha256.
    """
    existing = check_installable(session, name, version, sha256)
    if existing is not None:
        return existing
    if role == BundleRole.LIVE:
        _demote_live(session, keep=None)
    now = utcnow()
    bundle = InstalledBundle(
        name=name,
        version=version,
        sha256=sha256,
        path=path,
        role=role,
        installed_at=now,
        changed_at=now,
    )
    session.add(bundle)
    session.flush()
    record_event(
        session,
        kind="bundle.installed",
        message=f"bundle {_label(bundle)} installed as {role}",
        detail={
            "name": name,
            "version": version,
            "sha256": sha256,
            "role": str(role),
            "path": path,
        },
    )
    return bundle


def find_bundle(session: Session, name: str, version: str | None = None) -> InstalledBundle:
    """Bundle ``name`` at ``version``; None means its newest installed version.

    Raises
    ------
    BundleRegistryError
        If no such bundle is installed.
    """
    query = select(InstalledBundle).where(InstalledBundle.name == name)
    if version is not None:
        query = query.where(InstalledBundle.version == version)
    query = query.order_by(InstalledBundle.installed_at.desc(), InstalledBundle.id.desc())
    bundle = next(iter(_fresh(session, query.limit(1))), None)
    if bundle is None:
        known = ", ".join(f"{b.name} {b.version}" for b in installed_bundles(session)) or "none"
        wanted = name if version is None else f"{name} {version}"
        raise BundleRegistryError(f"no installed bundle {wanted} (installed: {known})")
    return bundle


def set_role(
    session: Session, name: str, role: BundleRole, version: str | None = None
) -> InstalledBundle:
    """Give bundle ``name`` (``version``, or its newest) ``role``; returns its row.

    Making it live demotes the former live bundle to shadow; each change is an event.

    Raises
    ------
    BundleRegistryError
        If no such bundle is installed.
    """
    _lock_registry(session)
    bundle = find_bundle(session, name, version)
    if role == BundleRole.LIVE:
        _demote_live(session, keep=bundle.id)
    _change_role(session, bundle, role)
    return bundle


def live_bundle(session: Session) -> InstalledBundle | None:
    """The live bundle; None when no installed bundle is live."""
    query = select(InstalledBundle).where(InstalledBundle.role == BundleRole.LIVE)
    return session.scalars(query).one_or_none()


def folder_in_use(session: Session, configured: Path | None) -> Path | None:
    """The folder of the bundle new jobs run with: the live one's, else ``configured``.

    ``configured`` is the node's ``model.bundle_dir``.
    """
    live = live_bundle(session)
    return configured if live is None else Path(live.path)


def shadow_bundles(session: Session) -> list[InstalledBundle]:
    """The shadow bundles, by name and install order."""
    query = select(InstalledBundle).where(InstalledBundle.role == BundleRole.SHADOW)
    return list(session.scalars(_ordered(query)))


def installed_bundles(session: Session) -> list[InstalledBundle]:
    """Every installed bundle, by name and install order."""
    return list(session.scalars(_ordered(select(InstalledBundle))))


def _ordered(query: Select[InstalledBundle]) -> Select[InstalledBundle]:
    return query.order_by(InstalledBundle.name, InstalledBundle.installed_at, InstalledBundle.id)
