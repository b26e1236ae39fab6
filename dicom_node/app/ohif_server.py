"""OHIF served from one loopback origin: its static build, its configuration, DICOMweb proxied.

The browser sees a single origin: the OHIF files (any other path falls back to
``index.html``, OHIF's routes being client-side), an ``app-config.js`` written for
this server, and ``/dicom-web/...`` forwarded to Orthanc's DICOMweb plugin as it
comes (method, path, query, headers, streamed body). The pages are cross-origin
isolated (COOP/COEP), which lets OHIF's decoders use ``SharedArrayBuffer``.
"""

from __future__ import annotations

import http.client
import json
import logging
import shutil
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DICOMWEB_ROOT = "/dicom-web"
PROXY_TIMEOUT_S = 120.0
CHUNK_BYTES = 64 * 1024
# Not forwarded either way (RFC 9110 7.6.1); the server sets its own framing.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
ISOLATION_HEADERS = {
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "require-corp",
}


def app_config() -> str:
    """OHIF 3.x's ``app-config.js``: one DICOMweb data source, this origin's ``/dicom-web``."""
    data_source = {
        "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
        "sourceName": "orthanc",
        "configuration": {
            "friendlyName": "LLNM viewer Orthanc",
            "name": "orthanc",
            "wadoUriRoot": DICOMWEB_ROOT,
            "qidoRoot": DICOMWEB_ROOT,
            "wadoRoot": DICOMWEB_ROOT,
            "qidoSupportsIncludeField": False,
            "imageRendering": "wadors",
            "thumbnailRendering": "wadors",
            "enableStudyLazyLoad": True,
            "supportsFuzzyMatching": False,
            "supportsWildcard": True,
            "dicomUploadEnabled": False,
            "omitQuotationForMultipartRequest": True,
            "bulkDataURI": {"enabled": True},
        },
    }
    config = {
        "routerBasename": "/",
        "extensions": [],
        "modes": [],
        "showStudyList": True,
        "maxNumberOfWebWorkers": 3,
        "showLoadingIndicator": True,
        "showWarningMessageForCrossOrigin": False,
        "showCPUFallbackMessage": True,
        "strictZSpacingForVolumeViewport": True,
        "defaultDataSourceName": "orthanc",
        "dataSources": [data_source],
    }
    return f"window.config = {json.dumps(config, indent=2)};\n"


class _Handler(SimpleHTTPRequestHandler):
    """Static files with the SPA fallback, the generated configuration, and the proxy."""

    protocol_version = "HTTP/1.1"
    config_js = app_config().encode()

    def __init__(self, *args: Any, upstream_port: int, **kwargs: Any) -> None:
        self.upstream_port = upstream_port
        super().__init__(*args, **kwargs)

    def do_GET(self) -> None:
        """Proxy DICOMweb, answer the configuration, else serve a file."""
        if self._is_dicomweb():
            self._proxy()
        elif self.path.split("?", 1)[0] == "/app-config.js":
            self._send_bytes(self.config_js, "text/javascript; charset=utf-8")
        else:
            super().do_GET()

    def do_HEAD(self) -> None:
        """As GET, without the body."""
        if self._is_dicomweb():
            self._proxy()
        else:
            super().do_HEAD()

    def _is_dicomweb(self) -> bool:
        return self.path == DICOMWEB_ROOT or self.path.startswith(DICOMWEB_ROOT + "/")

    def translate_path(self, path: str) -> str:
        """The file under the build, or ``index.html`` for a client-side route."""
        found = super().translate_path(path)
        return found if Path(found).is_file() else str(Path(self.directory) / "index.html")

    def end_headers(self) -> None:
        """Every answer is cross-origin isolated."""
        for name, value in ISOLATION_HEADERS.items():
            self.send_header(name, value)
        super().end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        """Requests go to the debug log, not to stderr."""
        log.debug("%s " + format, self.address_string(), *args)

    def _send_bytes(self, body: bytes, content_type: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def _proxy(self) -> None:
        """Forward the request to Orthanc and stream its answer back."""
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        upstream = http.client.HTTPConnection(
            "127.0.0.1", self.upstream_port, timeout=PROXY_TIMEOUT_S
        )
        try:
            upstream.request(self.command, self.path, headers=headers)
            answer = upstream.getresponse()
            self.send_response(answer.status, answer.reason)
            for name, value in answer.getheaders():
                if name.lower() not in HOP_BY_HOP:
                    self.send_header(name, value)
            if answer.getheader("Content-Length") is None:
                self.send_header("Connection", "close")  # the body ends when the socket does
                self.close_connection = True
            self.end_headers()
            if self.command != "HEAD":
                shutil.copyfileobj(answer, self.wfile, CHUNK_BYTES)
        except (OSError, http.client.HTTPException) as exc:
            log.warning("DICOMweb proxy: %s %s failed: %s", self.command, self.path, exc)
            self.close_connection = True
        finally:
            upstream.close()


class OhifServer:
    """The OHIF build in ``ohif_dir`` on ``127.0.0.1:port`` (0: a free one), Orthanc behind it.

    Parameters
    ----------
    ohif_dir
        OHIF's static build (the ``dist`` folder of the npm package ``@ohif/app``).
    orthanc_http_port
        The loopback HTTP port of the Orthanc whose DICOMweb plugin answers ``/dicom-web``.
    """

    def __init__(self, ohif_dir: Path, orthanc_http_port: int, port: int = 0) -> None:
        if not (ohif_dir / "index.html").is_file():
            raise FileNotFoundError(
                f"no OHIF build in {ohif_dir}: run scripts/setup.sh (scripts/fetch_ohif.sh)"
            )
        handler = partial(_Handler, directory=str(ohif_dir), upstream_port=orthanc_http_port)
        self._server = ThreadingHTTPServer(("127.0.0.1", port), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="ohif-server", daemon=True
        )

    @property
    def url(self) -> str:
        """The origin, e.g. ``http://127.0.0.1:8042``."""
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def study_url(self, study_uid: str) -> str:
        """Where OHIF shows the study with Study Instance UID ``study_uid``."""
        return f"{self.url}/viewer?StudyInstanceUIDs={study_uid}"

    def start(self) -> None:
        """Serve in a background thread."""
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self._server.shutdown()
        self._server.server_close()
