"""Shared fixtures: real databases (SQLite and PostgreSQL), nodes on free ports, sample files."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from db.migrate import upgrade
from db.session import Database
from dicom_node.app.node import Node
from dicom_node.settings import Settings

sys.path.insert(0, str(Path(__file__).parent))

POSTGRES_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


@pytest.fixture(scope="session")
def vendor_dir() -> Path:
    """Real vendor files from the pydicom-data package."""
    import data_store

    return Path(data_store.__file__).parent / "data"


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database on the local server, dropped afterwards."""
    name = f"llnm_test_{uuid.uuid4().hex[:12]}"
    try:
        admin = psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL is not reachable at 127.0.0.1:5432: {exc}")
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each test using it runs once on a SQLite file and once on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'jobs.db'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
def database(database_url: str) -> Iterator[Database]:
    """A migrated job database."""
    db = Database(database_url)
    upgrade(db)
    yield db
    db.dispose()


@pytest.fixture
def node_factory(tmp_path: Path) -> Iterator[Callable[..., Node]]:
    """Start in-process nodes on free ports; all are stopped at teardown."""
    started: list[Node] = []

    def make(database_url: str = "", **overrides: Any) -> Node:
        # One listener in the test's process (its logs reach caplog) unless a test asks for more.
        dicom = {
            "host": "127.0.0.1",
            "port": 0,
            "listener_processes": 1,
            **overrides.pop("dicom", {}),
        }
        completion = {"quiet_seconds": 0.5, "poll_seconds": 0.1, **overrides.pop("completion", {})}
        api = {"port": 0, **overrides.pop("api", {})}  # never the fixed default port
        overrides.setdefault("min_free_disk_mb", 5)  # CI disks can be nearly full
        settings = Settings(
            data_dir=overrides.pop("data_dir", tmp_path / f"node{len(started)}"),
            database_url=database_url,
            dicom=dicom,
            completion=completion,
            api=api,
            **overrides,
        )
        node = Node(settings)
        node.start()
        started.append(node)
        return node

    yield make
    for node in started:
        node.stop()


@pytest.fixture(scope="session")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A CA, a server certificate and a client certificate made with openssl."""
    d = tmp_path_factory.mktemp("pki")

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=d)

    run(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=test-ca",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    )
    for name in ("server", "client"):
        run(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            f"/CN={name}",
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
        )
        run(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            f"{name}.pem",
        )
    return {
        name: d / name
        for name in ("ca.pem", "server.pem", "server.key", "client.pem", "client.key")
    }


@pytest.fixture(scope="session")
def blind_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A sealed bundle whose nodule segmenter is an untrained YOLOv8-seg: it never finds one."""
    import torch

    from models.bundle import seal_bundle
    from models.segmentation import SegmenterConfig, YoloSegConfig, build_model, save_segmenter

    bundle = tmp_path_factory.mktemp("blind")
    torch.manual_seed(0)
    nodule = YoloSegConfig(input_height=128, input_width=160)
    save_segmenter(bundle / "nodule", build_model(nodule), nodule)
    thyroid = SegmenterConfig(input_height=64, input_width=96)
    save_segmenter(bundle / "thyroid", build_model(thyroid), thyroid)
    seal_bundle(
        bundle,
        name="blind",
        version="0",
        intended_use="tests; NOT FOR CLINICAL USE",
        training_data={"synthetic": True},
        input_spec={},
    )
    return bundle
