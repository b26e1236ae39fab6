"""The installed-bundle registry: verified copies, roles with one live bundle, audited changes.

Real SQLite and PostgreSQL databases and real sealed bundles (copies of the demo
bundle, resealed under other versions).
"""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import pytest
from sqlalchemy import func, select
from test_cli import invoke, write_config

from db.bundles import (
    BundleRegistryError,
    installed_bundles,
    live_bundle,
    set_role,
    shadow_bundles,
)
from db.models import BundleRole, Event, InstalledBundle
from db.session import Database
from dicom_node.app.bundles import install_bundle
from models.bundle import MANIFEST_FILE, BundleError, bundle_digest, seal_bundle, verify_bundle
from models.demo import DEMO_BUNDLE_DIR

NAME = "llnm-demo"


def make_bundle(tmp_path: Path, version: str | None = None, *, note: str = "") -> Path:
    """A sealed copy of the demo bundle; ``version`` reseals it as that version."""
    folder = tmp_path / "sources" / f"{version or 'demo'}{note}"
    shutil.copytree(DEMO_BUNDLE_DIR, folder)
    if note:
        with (folder / "README.md").open("a", encoding="utf-8") as handle:
            handle.write(f"\n{note}\n")
    if version is not None or note:
        old = json.loads((folder / MANIFEST_FILE).read_text(encoding="utf-8"))
        seal_bundle(
            folder,
            name=old["name"],
            version=version or old["version"],
            intended_use=old["intended_use"],
            training_data=old["training_data"],
            input_spec=old["input_spec"],
            text_encoder=old["text_encoder"],
            metrics=old["metrics"],
        )
    return folder


def _roles(database: Database) -> dict[str, BundleRole]:
    with database.session() as session:
        return {b.version: b.role for b in installed_bundles(session)}


def _live_count(database: Database) -> int:
    with database.session() as session:
        query = select(func.count()).where(InstalledBundle.role == BundleRole.LIVE)
        return int(session.scalar(query) or 0)


def _events(database: Database, kind: str) -> list[dict[str, str]]:
    with database.session() as session:
        events = session.scalars(select(Event).where(Event.kind == kind).order_by(Event.id))
        return [dict(e.detail or {}) for e in events]


def test_install_copies_verifies_and_reinstalling_is_idempotent(
    database: Database, tmp_path: Path
) -> None:
    source = make_bundle(tmp_path)
    store = tmp_path / "store"
    with database.session() as session:
        bundle = install_bundle(session, source, store, BundleRole.SHADOW)
    sha256 = bundle_digest(source)
    installed = Path(bundle.path)
    assert installed.is_absolute() and installed.parent == store.resolve()
    assert installed.name == f"{NAME}-0.4.0-{sha256[:8]}"
    assert (bundle.name, bundle.version, bundle.sha256, bundle.role) == (
        NAME, "0.4.0", sha256, BundleRole.SHADOW,
    )  # fmt: skip
    assert verify_bundle(installed).name == NAME and bundle_digest(installed) == sha256
    assert [p.name for p in store.iterdir()] == [installed.name]  # no temporary folder left
    with database.session() as session:
        again = install_bundle(session, source, store, BundleRole.LIVE)
        assert again.id == bundle.id and again.role == BundleRole.SHADOW  # unchanged
        assert len(installed_bundles(session)) == 1
    assert [p.name for p in store.iterdir()] == [installed.name]
    (event,) = _events(database, "bundle.installed")
    assert event == {
        "name": NAME, "version": "0.4.0", "sha256": sha256, "role": "shadow",
        "path": str(installed),
    }  # fmt: skip


def test_a_tampered_bundle_and_a_conflicting_hash_are_refused(
    database: Database, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    tampered = make_bundle(tmp_path, "9.9.9")
    with (tampered / "llnm" / "config.json").open("a", encoding="utf-8") as handle:
        handle.write(" ")
    with database.session() as session, pytest.raises(BundleError, match="sha256"):
        install_bundle(session, tampered, store, BundleRole.LIVE)
    with database.session() as session:
        install_bundle(session, make_bundle(tmp_path), store, BundleRole.LIVE)
    other = make_bundle(tmp_path, note="same version, other contents")
    with database.session() as session, pytest.raises(BundleRegistryError, match="new version"):
        install_bundle(session, other, store, BundleRole.SHADOW)
    assert _roles(database) == {"0.4.0": BundleRole.LIVE}
    assert len(list(store.iterdir())) == 1  # neither refused bundle was copied


def test_roles_keep_one_live_bundle_and_every_change_is_an_event(
    database: Database, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    with database.session() as session:
        install_bundle(session, make_bundle(tmp_path), store, BundleRole.LIVE)
        install_bundle(session, make_bundle(tmp_path, "1.0.0"), store, BundleRole.SHADOW)
    assert _roles(database) == {"0.4.0": BundleRole.LIVE, "1.0.0": BundleRole.SHADOW}
    with database.session() as session:
        install_bundle(session, make_bundle(tmp_path, "2.0.0"), store, BundleRole.LIVE)
    assert _roles(database)["0.4.0"] == BundleRole.SHADOW  # installing live demotes
    with database.session() as session:
        assert set_role(session, NAME, BundleRole.LIVE, "1.0.0").role == BundleRole.LIVE
    assert _roles(database) == {
        "0.4.0": BundleRole.SHADOW, "1.0.0": BundleRole.LIVE, "2.0.0": BundleRole.SHADOW,
    }  # fmt: skip
    with database.session() as session:
        newest = set_role(session, NAME, BundleRole.LIVE)  # no version: the newest
        assert newest.version == "2.0.0"
        set_role(session, NAME, BundleRole.OFF, "0.4.0")
        live = live_bundle(session)
        assert live is not None and live.version == "2.0.0"
        assert [b.version for b in shadow_bundles(session)] == ["1.0.0"]
    assert _live_count(database) == 1
    changes = [(e["version"], e["from"], e["to"]) for e in _events(database, "bundle.role_changed")]
    assert changes == [
        ("0.4.0", "live", "shadow"),
        ("2.0.0", "live", "shadow"),
        ("1.0.0", "shadow", "live"),
        ("1.0.0", "live", "shadow"),
        ("2.0.0", "shadow", "live"),
        ("0.4.0", "shadow", "off"),
    ]
    assert all(
        len(e["sha256"]) == 64 and e["name"] == NAME
        for e in _events(database, "bundle.role_changed")
    )
    with database.session() as session:
        set_role(session, NAME, BundleRole.OFF, "2.0.0")
        assert live_bundle(session) is None
        with pytest.raises(BundleRegistryError, match="no installed bundle other"):
            set_role(session, "other", BundleRole.LIVE)
        with pytest.raises(BundleRegistryError, match=r"llnm-demo 7\.0"):
            set_role(session, NAME, BundleRole.LIVE, "7.0")


def test_concurrent_activations_leave_one_live_bundle(database: Database, tmp_path: Path) -> None:
    versions = ("1", "2", "3", "4")
    with database.session() as session:
        for version in versions:
            install_bundle(
                session, make_bundle(tmp_path, version), tmp_path / "store", BundleRole.LIVE
            )
    start = threading.Barrier(len(versions))
    errors: list[BaseException] = []

    def activate(version: str) -> None:
        try:
            start.wait(timeout=30)
            with database.session() as session:
                live_bundle(session)  # the session has read before it writes
                set_role(session, NAME, BundleRole.LIVE, version)
        except BaseException as exc:
            errors.append(exc)

    for _ in range(3):
        threads = [threading.Thread(target=activate, args=(v,)) for v in versions]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert errors == [] and _live_count(database) == 1


def test_cli_install_activate_list(database: Database, tmp_path: Path) -> None:
    config = str(write_config(tmp_path, database.url))
    first, second = make_bundle(tmp_path), make_bundle(tmp_path, "1.0.0")
    code, out = invoke("bundle", "install", str(first), "--role", "live", "--config", config)
    assert code == 0, out
    assert f"{NAME} 0.4.0 ({bundle_digest(first)[:12]}): live" in out
    assert (tmp_path / "data" / "bundles" / f"{NAME}-0.4.0-{bundle_digest(first)[:8]}").is_dir()
    code, out = invoke("bundle", "install", str(second), "--config", config)
    assert code == 0 and "1.0.0" in out and ": shadow at" in out, out
    code, out = invoke("bundle", "activate", NAME, "--version", "1.0.0", "--config", config)
    assert code == 0, out
    assert "1.0.0" in out and ": live" in out and f"{NAME} 0.4.0: shadow (was live)" in out
    code, out = invoke("bundle", "list", "--config", config)
    assert code == 0, out
    lines = {line.split()[3]: line for line in out.splitlines() if NAME in line}
    assert set(lines) == {"0.4.0", "1.0.0"}
    assert "live" in lines["1.0.0"] and bundle_digest(second)[:12] in lines["1.0.0"]
    assert "shadow" in lines["0.4.0"]
    code, out = invoke("bundle", "activate", "nothing", "--config", config)
    assert code == 1 and "no installed bundle nothing" in out
    code, out = invoke(
        "bundle", "install", str(make_bundle(tmp_path, note="x")), "--config", config
    )
    assert code == 1 and "cannot install" in out and "new version" in out
    tampered = make_bundle(tmp_path, "5.0")
    (tampered / "README.md").write_text("changed", encoding="utf-8")
    code, out = invoke("bundle", "install", str(tampered), "--config", config)
    assert code == 1 and "invalid bundle" in out
