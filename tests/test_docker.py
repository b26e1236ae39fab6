"""docker/: the compose file as `docker-compose config` resolves it, the images, the Orthanc rule.

No image is built here (no Docker daemon on CI machines): the compose file is checked by the
real `docker-compose` (Debian package, installed by scripts/setup.sh), its settings are loaded
into the node's own Settings, the images' health check is run against a real node, and the
Orthanc routing script runs in a real Orthanc (Debian package).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]  # PyYAML (an ultralytics dependency), no stubs
from harness import free_port, wait_for
from orthanc_peer import ORTHANC_BIN, Orthanc, start_orthanc
from pydantic import BaseModel
from pydicom.uid import generate_uid
from pynetdicom import AE, StoragePresentationContexts, evt
from typer.testing import CliRunner

import dicom_factory
from dicom_node.app.node import Node
from dicom_node.cli.main import app
from dicom_node.settings import (
    CONFIG_ENV_VAR,
    DicomWebDestination,
    DimseDestination,
    ExportSettings,
    Settings,
    load_settings,
)

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"
COMPOSE_FILE = DOCKER / "compose.yaml"
NODE_TOML = DOCKER / "node.toml"
LUA_SCRIPT = DOCKER / "orthanc" / "route-to-llnm.lua"
DOCKERFILES = {"cpu": DOCKER / "Dockerfile", "cuda": DOCKER / "Dockerfile.cuda"}
SERVICES = {"node", "worker-gpu", "worker-cpu", "redis", "postgres", "orthanc"}
VIEWER_SERVICES = {"viewer-orthanc", "viewer", "viewer-proxy"}  # profile "viewer"
VIEWER = DOCKER / "viewer"
LLNM_SERVICES = ("node", "worker-gpu", "worker-cpu")
SPOOL_PATH = "/var/lib/llnm"
TORCH_PINS = ("torch==2.14.1", "torchvision==0.29.1")
COMPOSE_VARIABLES = {
    "POSTGRES_PASSWORD",
    "POSTGRES_HOST",
    "REDIS_HOST",
    "ORTHANC_PASSWORD",
    "LLNM_LOG_LEVEL",
    "TORCH_INDEX_URL",
}


def _compose_config(*options: str) -> dict[str, Any]:
    """`docker-compose [options] config` of docker/compose.yaml: validated and resolved."""
    tool = shutil.which("docker-compose")
    if tool is None:
        pytest.fail(
            "docker-compose is not installed; scripts/setup.sh installs the Debian package "
            "docker-compose (apt-get install docker-compose) to validate docker/compose.yaml"
        )
    # The file's own defaults, whatever this shell has set for its ${...} variables.
    env = {k: v for k, v in os.environ.items() if k not in COMPOSE_VARIABLES}
    result = subprocess.run(
        [tool, "-f", str(COMPOSE_FILE), *options, "config"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"docker-compose config failed:\n{result.stderr}"
    config = yaml.safe_load(result.stdout)
    assert isinstance(config, dict)
    return config


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """`docker-compose config` of docker/compose.yaml: validated and resolved by the real tool."""
    return _compose_config()


@pytest.fixture(scope="module")
def viewer_compose() -> dict[str, Any]:
    """The same with the viewer profile enabled (`--profile viewer`)."""
    return _compose_config("--profile", "viewer")


def _service(compose: dict[str, Any], name: str) -> dict[str, Any]:
    service = compose["services"][name]
    assert isinstance(service, dict)
    return service


def _environment(compose: dict[str, Any], name: str) -> dict[str, str]:
    return {k: str(v) for k, v in (_service(compose, name).get("environment") or {}).items()}


def _volume_targets(compose: dict[str, Any], name: str) -> dict[str, str]:
    """Mount target -> source of a service's volumes (short syntax, as 1.29 prints them)."""
    mounts: dict[str, str] = {}
    for entry in _service(compose, name).get("volumes", []):
        source, target = entry.split(":")[:2]
        mounts[target] = source
    return mounts


def _command(compose: dict[str, Any], name: str) -> list[str]:
    command = _service(compose, name)["command"]
    return command.split() if isinstance(command, str) else [str(c) for c in command]


# --- the compose file ----------------------------------------------------------------------


def test_the_six_services_exist_and_the_viewer_is_a_profile(compose: dict[str, Any]) -> None:
    # docker-compose 1.29 lists profile services too; `up` leaves them out unless asked.
    assert set(compose["services"]) == SERVICES | VIEWER_SERVICES
    for name in SERVICES:
        assert "profiles" not in _service(compose, name), name
    for name in VIEWER_SERVICES:
        assert _service(compose, name)["profiles"] == ["viewer"], name


def test_the_fixture_knows_every_variable_the_compose_file_interpolates() -> None:
    assert set(re.findall(r"\$\{(\w+)", COMPOSE_FILE.read_text())) == COMPOSE_VARIABLES


def test_node_and_workers_share_the_spool_volume_at_the_same_path(
    compose: dict[str, Any],
) -> None:
    assert "spool" in compose["volumes"]
    for name in LLNM_SERVICES:
        assert _volume_targets(compose, name).get(SPOOL_PATH) == "spool", name
        assert _environment(compose, name)["LLNM_DATA_DIR"] == SPOOL_PATH, name


def test_node_and_workers_use_the_broker_and_postgresql(compose: dict[str, Any]) -> None:
    for name in LLNM_SERVICES:
        env = _environment(compose, name)
        assert env["LLNM_EXECUTOR__BROKER_URL"].startswith("redis://redis:6379/"), name
        # psycopg 3 is the project's PostgreSQL driver (pyproject: psycopg[binary]).
        assert env["LLNM_DATABASE_URL"].startswith("postgresql+psycopg://"), name
        assert "@postgres:5432/" in env["LLNM_DATABASE_URL"], name
    urls = {_environment(compose, name)["LLNM_DATABASE_URL"] for name in LLNM_SERVICES}
    assert len(urls) == 1, "node and workers must use the same database"


def test_workers_run_their_queues_from_their_images(compose: dict[str, Any]) -> None:
    gpu, cpu, node = (_service(compose, n) for n in ("worker-gpu", "worker-cpu", "node"))
    assert _command(compose, "worker-gpu") == ["worker", "--queues", "gpu"]
    assert _command(compose, "worker-cpu") == ["worker", "--queues", "cpu"]
    assert _command(compose, "node") == ["serve"]
    assert gpu["build"]["dockerfile"] == "docker/Dockerfile.cuda"
    assert cpu["build"]["dockerfile"] == node["build"]["dockerfile"] == "docker/Dockerfile"
    assert cpu["image"] == node["image"]
    for service in (gpu, cpu, node):
        assert Path(service["build"]["context"]).resolve() == ROOT
    # Scalable: nothing that two copies of worker-cpu could not share.
    assert "container_name" not in cpu and "ports" not in cpu
    # The image's health check is the node's C-ECHO; workers switch it off.
    assert cpu["healthcheck"]["test"] == ["NONE"]


@pytest.mark.parametrize("service", LLNM_SERVICES)
def test_each_command_is_one_the_cli_accepts(compose: dict[str, Any], service: str) -> None:
    result = CliRunner().invoke(app, [*_command(compose, service), "--help"])
    assert result.exit_code == 0, result.output


def test_worker_gpu_reserves_an_nvidia_gpu(compose: dict[str, Any]) -> None:
    devices = _service(compose, "worker-gpu")["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]


def test_redis_keeps_queued_tasks_across_restarts(compose: dict[str, Any]) -> None:
    redis = _service(compose, "redis")
    assert redis["image"].startswith("redis:7")
    command = _command(compose, "redis")
    assert command[command.index("--appendonly") + 1] == "yes"
    assert _volume_targets(compose, "redis")["/data"] == "redis-data"
    assert "redis-data" in compose["volumes"]


def test_postgres_keeps_its_data_and_reports_ready(compose: dict[str, Any]) -> None:
    postgres = _service(compose, "postgres")
    assert postgres["image"].startswith("postgres:16")
    assert _volume_targets(compose, "postgres")["/var/lib/postgresql/data"] == "pgdata"
    assert "pgdata" in compose["volumes"]
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    env = _environment(compose, "postgres")
    url = _environment(compose, "node")["LLNM_DATABASE_URL"]
    user_password = f"{env['POSTGRES_USER']}:{env['POSTGRES_PASSWORD']}@"
    assert user_password in url and url.endswith(f"/{env['POSTGRES_DB']}")
    for name in LLNM_SERVICES:
        assert _service(compose, name)["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_node_publishes_the_dicom_port(compose: dict[str, Any]) -> None:
    ports = _service(compose, "node")["ports"]
    published = [
        (int(p["published"]), int(p["target"])) if isinstance(p, dict) else p for p in ports
    ]
    assert (11112, 11112) in published, ports
    assert set(_service(compose, "node")["depends_on"]) >= {"postgres", "redis"}


def _settings_path(name: str) -> list[str]:
    """The Settings fields an ``LLNM_A__B`` variable sets; fails on a name that sets nothing."""
    parts = name.removeprefix("LLNM_").lower().split("__")
    model: type[BaseModel] = Settings
    for depth, part in enumerate(parts):
        assert part in model.model_fields, f"{name}: {model.__name__} has no field {part!r}"
        if depth < len(parts) - 1:
            annotation = model.model_fields[part].annotation
            assert isinstance(annotation, type) and issubclass(annotation, BaseModel), (
                f"{name}: {part!r} is not a settings table"
            )
            model = annotation
    return parts


def _dockerfile_env_names(path: Path) -> set[str]:
    text = path.read_text().replace("\\\n", " ")
    names: set[str] = set()
    for line in text.splitlines():
        if line.strip().startswith("ENV "):
            names.update(re.findall(r"\b(LLNM_[A-Z0-9_]+)=", line))
    return names


def test_every_llnm_variable_names_a_settings_field(compose: dict[str, Any]) -> None:
    names = {n for s in compose["services"] for n in _environment(compose, s)}
    names |= {n for path in DOCKERFILES.values() for n in _dockerfile_env_names(path)}
    names = {n for n in names if n.startswith("LLNM_")} - {CONFIG_ENV_VAR}
    assert {"LLNM_DATA_DIR", "LLNM_DATABASE_URL", "LLNM_EXECUTOR__BROKER_URL"} <= names
    for name in sorted(names):
        _settings_path(name)
    with pytest.raises(AssertionError, match="no field 'brokr_url'"):
        _settings_path("LLNM_EXECUTOR__BROKR_URL")
    with pytest.raises(AssertionError, match="not a settings table"):
        _settings_path("LLNM_DATA_DIR__X")


@pytest.mark.parametrize("service", LLNM_SERVICES)
def test_each_service_environment_and_node_toml_load_as_settings(
    compose: dict[str, Any], service: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the container sees (its environment, node.toml at LLNM_CONFIG) is a valid config."""
    for name in list(os.environ):
        if name.startswith("LLNM_"):
            monkeypatch.delenv(name)
    env = _environment(compose, service)
    assert _volume_targets(compose, service)[env[CONFIG_ENV_VAR]] == str(NODE_TOML)
    for name, value in env.items():
        monkeypatch.setenv(name, str(NODE_TOML) if name == CONFIG_ENV_VAR else value)
    if service != "worker-gpu":  # the CPU image sets it (docker/Dockerfile); the node repeats it
        monkeypatch.setenv("LLNM_DICOM__HOST", "0.0.0.0")

    settings = load_settings()

    assert str(settings.data_dir) == SPOOL_PATH
    assert settings.executor.broker_url == env["LLNM_EXECUTOR__BROKER_URL"]
    assert settings.resolved_database_url == env["LLNM_DATABASE_URL"]
    assert settings.dicom.admits("LLNM_HEALTH", "127.0.0.1")
    assert not settings.dicom.admits("LLNM_HEALTH", "172.18.0.5")
    orthanc_env = _environment(compose, "orthanc")
    # Results of a study Orthanc sent go back to Orthanc's AE at the orthanc service.
    assert settings.dicom.admits(orthanc_env["ORTHANC__DICOM_AET"], "172.18.0.7")
    (name,) = settings.export.destinations_for(orthanc_env["ORTHANC__DICOM_AET"])
    destination = settings.export.destination(name)
    assert isinstance(destination, DimseDestination)
    assert (destination.host, destination.port) == (
        "orthanc",
        int(orthanc_env["ORTHANC__DICOM_PORT"]),
    )


def test_orthanc_knows_the_node_and_runs_the_routing_script(compose: dict[str, Any]) -> None:
    env = _environment(compose, "orthanc")
    node_settings = tomllib.loads(NODE_TOML.read_text())["dicom"]
    assert json.loads(env["ORTHANC__DICOM_MODALITIES"]) == {
        "llnm": [node_settings["ae_title"], "node", node_settings["port"]]
    }
    (script,) = json.loads(env["ORTHANC__LUA_SCRIPTS"])
    assert Path(_volume_targets(compose, "orthanc")[script]) == LUA_SCRIPT
    lua = LUA_SCRIPT.read_text()
    assert "local NODE_MODALITY = 'llnm'" in lua
    assert f"local NODE_AET = '{node_settings['ae_title']}'" in lua
    assert env["ORTHANC__AUTHENTICATION_ENABLED"] == "true"
    # Orthanc's web UI and DICOM port are published on this host only.
    assert all(str(p).startswith("127.0.0.1:") for p in _service(compose, "orthanc")["ports"])


# --- the images ----------------------------------------------------------------------------


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    lines = [line for line in path.read_text().splitlines() if not line.lstrip().startswith("#")]
    joined = "\n".join(lines).replace("\\\n", " ")
    found = []
    for line in joined.splitlines():
        if line.strip():
            keyword, _, rest = line.strip().partition(" ")
            found.append((keyword.upper(), rest.strip()))
    return found


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_dockerfile_pins_torch_and_runs_as_a_non_root_user(kind: str) -> None:
    instructions = _instructions(DOCKERFILES[kind])
    runs = [args for keyword, args in instructions if keyword == "RUN"]
    (torch_install,) = [r for r in runs if "torch==" in r]
    for pin in TORCH_PINS:
        assert pin in torch_install, f"{kind}: {pin} not pinned"
    if kind == "cpu":
        assert "--extra-index-url https://download.pytorch.org/whl/cpu" in torch_install
        assert "torch==2.14.1+cpu" in torch_install
    # The project install keeps that torch build.
    (project_install,) = [r for r in runs if re.search(r"pip install .*-c \S+ \.(\s|$)", r)]
    assert "torch-constraints.txt" in project_install
    assert "useradd --system --uid 10001" in project_install
    users = [args for keyword, args in instructions if keyword == "USER"]
    assert users and users[-1] not in ("root", "0"), f"{kind}: runs as root"
    entrypoint = [args for keyword, args in instructions if keyword == "ENTRYPOINT"]
    assert entrypoint == ['["llnm-node"]']
    cmd = [args for keyword, args in instructions if keyword == "CMD"]
    assert json.loads(cmd[-1]) == (["serve"] if kind == "cpu" else ["worker", "--queues", "gpu"])
    env = " ".join(args for keyword, args in instructions if keyword == "ENV")
    assert f"LLNM_DATA_DIR={SPOOL_PATH}" in env
    installed = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    for package in (pattern.rstrip("*") for pattern in installed["packages"]["find"]["include"]):
        assert ("COPY", f"{package} {package}") in instructions, f"{kind}: {package} not copied"


def test_demo_bundle_is_package_data() -> None:
    """`pip install .` (the images) installs every file of the default bundle."""
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]["models"]
    models = ROOT / "models"
    packaged = {p for pattern in patterns for p in models.glob(pattern) if p.is_file()}
    bundle = {p for p in (models / "demo_bundle").rglob("*") if p.is_file()}
    assert (models / "demo_bundle" / "manifest.json") in bundle
    assert bundle - packaged == set()


def test_the_node_health_check_passes_against_a_node_configured_by_node_toml(
    node_factory: Callable[..., Node],
) -> None:
    (healthcheck,) = [
        args for keyword, args in _instructions(DOCKERFILES["cpu"]) if keyword == "HEALTHCHECK"
    ]
    argv = json.loads(healthcheck[healthcheck.index("CMD") + 3 :])
    assert argv[:4] == ["llnm-node", "echo", "127.0.0.1", "11112"]
    dicom = tomllib.loads(NODE_TOML.read_text())["dicom"]
    node = node_factory(dicom={"allowed_callers": dicom["allowed_callers"]})

    args = [str(node.port) if a == "11112" else a for a in argv[1:]]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "0x0000" in result.output
    # Another calling AE is turned away: the allow-list, not an open listener, lets it in.
    other = [("LLNM_OTHER" if a == "LLNM_HEALTH" else a) for a in args]
    assert CliRunner().invoke(app, other).exit_code == 1


# --- the Orthanc routing rule, in a real Orthanc --------------------------------------------


class _FakeNode:
    """A storage SCP with the node's AE title that records what Orthanc sends it."""

    def __init__(self, ae_title: str) -> None:
        self.received: list[str] = []
        self.port = free_port()
        ae = AE(ae_title=ae_title)
        ae.supported_contexts = StoragePresentationContexts
        server = ae.start_server(
            ("127.0.0.1", self.port),
            block=False,
            evt_handlers=[(evt.EVT_C_STORE, self._on_store)],
        )
        assert server is not None
        self._server = server

    def _on_store(self, event: Any) -> int:
        self.received.append(str(event.dataset.SOPInstanceUID))
        return 0x0000

    def stop(self) -> None:
        self._server.shutdown()


@pytest.fixture
def fake_node() -> Iterator[_FakeNode]:
    node = _FakeNode(tomllib.loads(NODE_TOML.read_text())["dicom"]["ae_title"])
    yield node
    node.stop()


@pytest.fixture
def orthanc_with_rule(tmp_path: Path, fake_node: _FakeNode) -> Iterator[Orthanc]:
    """The Debian Orthanc running docker/orthanc/route-to-llnm.lua, the fake node as ``llnm``."""
    if not ORTHANC_BIN.exists():
        pytest.fail(f"{ORTHANC_BIN} missing: scripts/setup.sh installs the orthanc package")
    settings = {
        "Name": "llnm-rule-test",
        "DicomAet": "ORTHANC",
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomModalities": {"llnm": ["LLNM_NODE", "127.0.0.1", fake_node.port]},
        "StableAge": 1,
        "LuaScripts": [str(LUA_SCRIPT)],
    }
    with start_orthanc(tmp_path, settings) as orthanc:
        yield orthanc


def _upload(orthanc: Orthanc, tmp_path: Path, study_uid: str, seed: int) -> str:
    sop_uid = generate_uid()
    ds = dicom_factory.ultrasound(study_uid=study_uid, sop_uid=sop_uid, seed=seed)
    orthanc.upload(dicom_factory.write(ds, tmp_path / f"{sop_uid}.dcm"))
    return sop_uid


def _store_as_node(orthanc: Orthanc, study_uid: str) -> str:
    """C-STORE a result object into the study as the node does (calling AE LLNM_NODE)."""
    sop_uid = generate_uid()
    ds = dicom_factory.ultrasound(study_uid=study_uid, sop_uid=sop_uid, seed=9)
    ae = AE(ae_title="LLNM_NODE")
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", orthanc.dicom_port, ae_title="ORTHANC")
    assert assoc.is_established
    try:
        status = assoc.send_c_store(ds)
        assert status.Status == 0x0000
    finally:
        assoc.release()
    return sop_uid


def test_orthanc_rule_routes_stable_studies_once_and_never_the_nodes_results(
    orthanc_with_rule: Orthanc, fake_node: _FakeNode, tmp_path: Path
) -> None:
    orthanc = orthanc_with_rule
    study_uid = generate_uid()
    first = _upload(orthanc, tmp_path, study_uid, seed=1)
    wait_for(
        lambda: fake_node.received == [first],
        timeout=30,
        what="the study to be routed",
        interval=0.2,
        describe=orthanc.log_tail,
    )

    result = _store_as_node(orthanc, study_uid)  # the node's SR/SC coming back
    later = _upload(orthanc, tmp_path, study_uid, seed=2)  # an image sent after the analysis
    wait_for(
        lambda: later in fake_node.received,
        timeout=30,
        what="the later image to be routed",
        interval=0.2,
        describe=orthanc.log_tail,
    )
    time.sleep(3.0)  # two more StableAge periods: nothing else may follow

    assert fake_node.received == [first, later]
    assert result not in fake_node.received


# --- the viewer profile ----------------------------------------------------------------------


def test_viewer_profile_serves_ohif_and_orthanc_dicomweb_on_one_origin(
    viewer_compose: dict[str, Any],
) -> None:
    assert set(viewer_compose["services"]) >= SERVICES | VIEWER_SERVICES
    assert "viewer-orthanc-db" in viewer_compose["volumes"]
    assert _service(viewer_compose, "viewer")["image"] == "ohif/app:v3.13.2"
    orthanc = _service(viewer_compose, "viewer-orthanc")
    assert re.fullmatch(r"orthancteam/orthanc:\d+\.\d+\.\d+", orthanc["image"])
    env = _environment(viewer_compose, "viewer-orthanc")
    assert env["DICOM_WEB_PLUGIN_ENABLED"] == "true"
    assert env["ORTHANC__DICOM_WEB__ROOT"] == "/dicom-web/"
    assert "ports" not in orthanc and "ports" not in _service(viewer_compose, "viewer")
    proxy = _service(viewer_compose, "viewer-proxy")
    assert re.fullmatch(r"nginx:\d+\.\d+\.\d+-alpine", proxy["image"])
    assert [str(p) for p in proxy["ports"]] == ["127.0.0.1:3000:80/tcp"]  # this host only
    mounts = _volume_targets(viewer_compose, "viewer-proxy")
    assert Path(mounts["/etc/nginx/conf.d/default.conf"]) == VIEWER / "nginx.conf"
    assert Path(mounts["/usr/share/nginx/viewer/app-config.js"]) == VIEWER / "app-config.js"

    nginx = (VIEWER / "nginx.conf").read_text()
    locations = dict(re.findall(r"location\s+(?:=\s+)?(\S+)\s*\{([^}]*)\}", nginx))
    assert "proxy_pass http://viewer-orthanc:8042/dicom-web/;" in locations["/dicom-web/"]
    assert "proxy_pass http://viewer:80;" in locations["/"]
    assert "alias /usr/share/nginx/viewer/app-config.js;" in locations["/app-config.js"]
    app_config = (VIEWER / "app-config.js").read_text()
    assert "const dicomWebRoot = `${window.location.origin}/dicom-web`;" in app_config
    for root in ("qidoRoot", "wadoRoot"):
        assert f"{root}: dicomWebRoot," in app_config
    assert "defaultDataSourceName: 'orthanc'" in app_config


def test_the_documented_viewer_destination_is_valid_settings() -> None:
    """README's dicomweb destination for viewer-orthanc loads and names its DICOMweb root."""
    readme = (ROOT / "README.md").read_text()
    [snippet] = re.findall(
        r"```toml\n(# docker/node\.toml: results to the viewer.*?)```", readme, re.S
    )
    [destination] = ExportSettings.model_validate(tomllib.loads(snippet)["export"]).destinations
    assert isinstance(destination, DicomWebDestination)
    assert destination.url == "http://viewer-orthanc:8042/dicom-web"
    assert destination.always
