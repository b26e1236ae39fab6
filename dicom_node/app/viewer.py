"""A viewer on loopback: Orthanc (Debian package) with DICOMweb, and OHIF in front of it.

Orthanc keeps what it receives (the studies and the node's results) in a given
folder; OHIF (``ohif_server.py``) shows them at ``http://127.0.0.1:PORT``. Orthanc's
REST API accepts loopback requests only, and its DICOM port stores only from the
application entities it was told to admit.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from dicom_node.app.ohif_server import OhifServer

OHIF_VERSION = "3.13.2"  # scripts/fetch_ohif.sh fetches this one
ORTHANC_BIN = Path("/usr/sbin/Orthanc")
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
VIEWER_AE = "LLNM_VIEWER"
STARTUP_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0


class ViewerError(RuntimeError):
    """The viewer cannot start: a piece is not installed, or Orthanc does not come up."""


def default_ohif_dir() -> Path:
    """Where ``scripts/fetch_ohif.sh`` puts the OHIF build: ``.viewer/`` of the checkout."""
    return Path(__file__).resolve().parents[2] / ".viewer" / f"ohif-{OHIF_VERSION}"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def orthanc_config(folder: Path, *, dicom_port: int, http_port: int) -> dict[str, Any]:
    """Orthanc's configuration: storage in ``folder``, DICOMweb on, loopback REST, no auth."""
    return {
        "Name": "llnm-viewer",
        "DicomAet": VIEWER_AE,
        "DicomPort": dicom_port,
        "HttpPort": http_port,
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "index"),
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomCheckCalledAet": False,
        "DicomAlwaysAllowStore": False,  # only the admitted modalities, from loopback
        "DicomCheckModalityHost": True,
        "DicomModalities": {},
        "Plugins": [str(DICOMWEB_PLUGIN)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
    }


class Viewer:
    """Orthanc with DICOMweb and OHIF on loopback, files under ``folder``; a context manager.

    Parameters
    ----------
    folder
        Orthanc's configuration, log, index and storage.
    ohif_dir
        OHIF's static build (default: ``default_ohif_dir()``).
    """

    def __init__(self, folder: Path, ohif_dir: Path | None = None) -> None:
        self.folder = folder
        self.ohif_dir = ohif_dir or default_ohif_dir()
        self.dicom_port = _free_port()
        self.http_port = _free_port()
        self.log_path = folder / "orthanc.log"
        self._orthanc: subprocess.Popen[bytes] | None = None
        self._ohif: OhifServer | None = None

    @property
    def ohif(self) -> OhifServer:
        """The OHIF server (once started)."""
        assert self._ohif is not None, "the viewer was not started"
        return self._ohif

    def study_url(self, study_uid: str) -> str:
        """Where OHIF shows the study with Study Instance UID ``study_uid``."""
        return self.ohif.study_url(study_uid)

    def start(self) -> Self:
        """Start Orthanc, wait for its REST API, then serve OHIF.

        Raises
        ------
        ViewerError
            If Orthanc, its DICOMweb plugin or the OHIF build is missing, or Orthanc
            does not come up (it is stopped again then).
        """
        for needed in (ORTHANC_BIN, DICOMWEB_PLUGIN):
            if not needed.is_file():
                raise ViewerError(f"{needed} is missing: run scripts/setup.sh")
        try:
            ohif = OhifServer(self.ohif_dir, self.http_port)
        except FileNotFoundError as exc:
            raise ViewerError(str(exc)) from exc
        self.folder.mkdir(parents=True, exist_ok=True)
        config = self.folder / "orthanc.json"
        config.write_text(
            json.dumps(
                orthanc_config(self.folder, dicom_port=self.dicom_port, http_port=self.http_port),
                indent=2,
            )
        )
        with self.log_path.open("ab") as log:
            self._orthanc = subprocess.Popen(
                [str(ORTHANC_BIN), str(config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.folder,
            )
        try:
            self._wait_for_orthanc()
        except ViewerError:
            self.stop()
            raise
        ohif.start()
        self._ohif = ohif
        return self

    def _wait_for_orthanc(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            assert self._orthanc is not None
            if (code := self._orthanc.poll()) is not None:
                raise ViewerError(f"Orthanc exited ({code}); see {self.log_path}")
            try:
                self.rest("GET", "/system")
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if time.monotonic() > deadline:
                    raise ViewerError(f"Orthanc did not answer; see {self.log_path}") from None
                time.sleep(0.2)
            else:
                return

    def rest(self, method: str, path: str, body: bytes | None = None) -> Any:
        """Call Orthanc's REST API; the answer decoded from JSON."""
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.http_port}{path}", data=body, method=method
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read() or b"null")

    def admit(self, name: str, ae_title: str, port: int) -> None:
        """Let ``ae_title`` on loopback (listening on ``port``) store into Orthanc."""
        entry = {"AET": ae_title, "Host": "127.0.0.1", "Port": port}
        self.rest("PUT", f"/modalities/{name}", json.dumps(entry).encode())

    def upload(self, path: Path) -> None:
        """Store a DICOM file (Part 10) through the REST API."""
        self.rest("POST", "/instances", path.read_bytes())

    def stop(self) -> None:
        """Stop serving OHIF, then Orthanc (SIGTERM, SIGKILL after a grace period)."""
        if self._ohif is not None:
            self._ohif.stop()
            self._ohif = None
        if self._orthanc is not None:
            self._orthanc.terminate()
            try:
                self._orthanc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self._orthanc.kill()
                self._orthanc.wait()
            self._orthanc = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
