"""A real Orthanc (Debian package) on loopback: the PACS of the end-to-end test and benchmark.

``start_orthanc(workdir, settings)`` runs one with any configuration; add
``dicomweb_settings()`` to the settings for its DICOMweb plugin (package
orthanc-dicomweb) at ``Orthanc.dicomweb_url``.
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import Process, free_port, log_tail

ORTHANC_BIN = Path("/usr/sbin/Orthanc")
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
DICOMWEB_ROOT = "/dicom-web"
ORTHANC_AE = "ORTHANC"
NODE_MODALITY = "llnm"
STARTUP_TIMEOUT_S = 60.0

# Orthanc sends every study that has been quiet for StableAge seconds to the node,
# results included when they come back (the node acknowledges those and ignores them).
ROUTE_STABLE_STUDIES = f"""
function OnStableStudy(studyId, tags, metadata)
  RestApiPost('/modalities/{NODE_MODALITY}/store', studyId)
end
"""


def dicomweb_settings() -> dict[str, Any]:
    """The settings fragment that loads the DICOMweb plugin, its root at ``DICOMWEB_ROOT``/."""
    if not DICOMWEB_PLUGIN.is_file():
        raise FileNotFoundError(
            f"{DICOMWEB_PLUGIN} missing: scripts/setup.sh installs the orthanc-dicomweb package"
        )
    return {
        "Plugins": [str(DICOMWEB_PLUGIN)],
        "DicomWeb": {"Enable": True, "Root": f"{DICOMWEB_ROOT}/"},
    }


@dataclass(frozen=True)
class Orthanc:
    """A running Orthanc: its ports and a small REST client.

    ``credentials`` (user, password) when its settings enable authentication. (The
    Debian package's HTTPS, "SslEnabled", resets every connection: it is not used.)
    """

    dicom_port: int
    http_port: int
    log_path: Path
    credentials: tuple[str, str] | None = None

    @property
    def base_url(self) -> str:
        """The REST API's root: http://127.0.0.1:<http_port>."""
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        """The DICOMweb service root (with ``dicomweb_settings()``)."""
        return f"{self.base_url}{DICOMWEB_ROOT}"

    def _open(self, request: urllib.request.Request, timeout: float) -> Any:
        if self.credentials is not None:
            token = base64.b64encode(":".join(self.credentials).encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())

    def get(self, path: str) -> Any:
        """GET ``path`` of the REST API, decoded from JSON."""
        return self._open(urllib.request.Request(f"{self.base_url}{path}"), timeout=10)

    def post(self, path: str, body: bytes) -> Any:
        """POST ``body`` to ``path`` of the REST API, decoded from JSON."""
        request = urllib.request.Request(f"{self.base_url}{path}", data=body, method="POST")
        return self._open(request, timeout=30)

    def upload(self, path: Path) -> str:
        """Store a Part 10 file through the REST API; returns Orthanc's instance id."""
        return str(self.post("/instances", path.read_bytes())["ID"])

    def send_to_node(self, *resources: str) -> None:
        """C-STORE Orthanc resources (ids of studies, instances, ...) to modality ``llnm``.

        Returns when Orthanc's send is over (its association released), as a PACS's
        routing call does.
        """
        body = {"Resources": list(resources), "Synchronous": True}
        self.post(f"/modalities/{NODE_MODALITY}/store", json.dumps(body).encode())

    def series_of_study(self, study_uid: str) -> list[dict[str, Any]]:
        """The expanded series of the study with Study Instance UID ``study_uid``."""
        found = self.post(
            "/tools/find",
            json.dumps({"Level": "Study", "Query": {"StudyInstanceUID": study_uid}}).encode(),
        )
        if not found:
            return []
        return list(self.get(f"/studies/{found[0]}/series?expand"))

    def answers(self) -> bool:
        """Whether the REST API answers (Orthanc is up)."""
        try:
            self.get("/system")
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False
        return True

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of Orthanc's log, for failure messages."""
        return log_tail(self.log_path, lines)


@contextmanager
def start_orthanc(
    workdir: Path,
    settings: dict[str, Any],
    *,
    dicom_port: int | None = None,
    http_port: int | None = None,
    credentials: tuple[str, str] | None = None,
) -> Iterator[Orthanc]:
    """Orthanc with ``settings``, its folders under ``workdir`` and its ports; stopped on exit.

    The ports are free ports unless given (started again with the same ``workdir`` and
    ports, it has what it stored before). ``credentials``: what its REST client sends
    when ``settings`` enable authentication.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    orthanc = Orthanc(
        dicom_port or free_port(),
        http_port or free_port(),
        workdir / "orthanc.log",
        credentials=credentials,
    )
    config = {
        "StorageDirectory": str(workdir / "storage"),
        "IndexDirectory": str(workdir / "index"),
        "DicomPort": orthanc.dicom_port,
        "HttpPort": orthanc.http_port,
        **settings,
    }
    (workdir / "orthanc.json").write_text(json.dumps(config, indent=2))
    argv = [str(ORTHANC_BIN), str(workdir / "orthanc.json")]
    with Process(argv, log_path=orthanc.log_path, cwd=workdir) as process:
        process.wait_until(orthanc.answers, timeout=STARTUP_TIMEOUT_S, what="Orthanc's REST API")
        yield orthanc


@contextmanager
def running_orthanc(
    workdir: Path,
    *,
    dicom_port: int,
    node_ae: str,
    node_port: int,
    route_stable_studies: bool = True,
) -> Iterator[Orthanc]:
    """Start Orthanc on ``dicom_port`` with the node as modality ``llnm``; stop it on exit."""
    workdir.mkdir(parents=True, exist_ok=True)
    lua = workdir / "route.lua"
    lua.write_text(ROUTE_STABLE_STUDIES)
    settings = {
        "Name": "llnm-test-pacs",
        "DicomAet": ORTHANC_AE,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomCheckCalledAet": False,
        "DicomModalities": {NODE_MODALITY: [node_ae, "127.0.0.1", node_port]},
        "StableAge": 1,
        "LuaScripts": [str(lua)] if route_stable_studies else [],
    }
    with start_orthanc(workdir, settings, dicom_port=dicom_port) as orthanc:
        yield orthanc
