"""A real Orthanc (Debian package) on loopback: the PACS of the end-to-end test and benchmark."""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ORTHANC_BIN = Path("/usr/sbin/Orthanc")
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


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class Orthanc:
    """A running Orthanc: its DICOM port and a small REST client."""

    dicom_port: int
    http_port: int
    log_path: Path

    def get(self, path: str) -> Any:
        """GET ``path`` of the REST API, decoded from JSON."""
        url = f"http://127.0.0.1:{self.http_port}{path}"
        with urllib.request.urlopen(url, timeout=10) as response:
            return json.loads(response.read())

    def post(self, path: str, body: bytes) -> Any:
        """POST ``body`` to ``path`` of the REST API, decoded from JSON."""
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.http_port}{path}", data=body, method="POST"
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    def upload(self, path: Path) -> str:
        """Store a Part 10 file through the REST API; returns Orthanc's instance id."""
        return str(self.post("/instances", path.read_bytes())["ID"])

    def series_of_study(self, study_uid: str) -> list[dict[str, Any]]:
        """The expanded series of the study with Study Instance UID ``study_uid``."""
        found = self.post(
            "/tools/find",
            json.dumps({"Level": "Study", "Query": {"StudyInstanceUID": study_uid}}).encode(),
        )
        if not found:
            return []
        return list(self.get(f"/studies/{found[0]}/series?expand"))

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of Orthanc's log, for failure messages."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def _wait_ready(orthanc: Orthanc, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"Orthanc exited ({proc.returncode})\n{orthanc.log_tail()}")
        try:
            orthanc.get("/system")
            return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.2)
    raise RuntimeError(f"Orthanc did not come up in time\n{orthanc.log_tail()}")


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
    orthanc = Orthanc(dicom_port, free_port(), workdir / "orthanc.log")
    lua = workdir / "route.lua"
    lua.write_text(ROUTE_STABLE_STUDIES)
    config = {
        "Name": "llnm-test-pacs",
        "StorageDirectory": str(workdir / "storage"),
        "IndexDirectory": str(workdir / "index"),
        "DicomAet": ORTHANC_AE,
        "DicomPort": orthanc.dicom_port,
        "HttpPort": orthanc.http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomCheckCalledAet": False,
        "DicomModalities": {NODE_MODALITY: [node_ae, "127.0.0.1", node_port]},
        "StableAge": 1,
        "LuaScripts": [str(lua)] if route_stable_studies else [],
    }
    (workdir / "orthanc.json").write_text(json.dumps(config, indent=2))
    with orthanc.log_path.open("wb") as log:
        proc = subprocess.Popen(
            [str(ORTHANC_BIN), str(workdir / "orthanc.json")],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=workdir,
        )
        try:
            _wait_ready(orthanc, proc)
            yield orthanc
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
