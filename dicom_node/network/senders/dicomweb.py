"""DICOMweb destinations (``kind = "dicomweb"``): STOW-RS, one request per file.

One file per request makes each outcome that file's own: the HTTP status of its
request and, in the STOW-RS answer, its item of the Referenced SOP Sequence (stored,
perhaps with a Warning Reason) or of the Failed SOP Sequence (with a Failure Reason),
and no request body holds more than one file. A request that gets no answer (refused
connection, timeout, TLS failure) fails the rest of the batch without trying them, as a
failed association does for C-STORE. Only counts and UIDs are logged, never data
elements of the files.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

import requests
from dicomweb_client import DICOMwebClient
from pydicom import Dataset, dcmread
from pydicom.errors import InvalidDicomError

from dicom_node.network.senders import Outcome, sends_to
from dicom_node.settings import BasicAuth, BearerAuth, DicomWebDestination

log = logging.getLogger(__name__)

STORED = 0x0000  # the status recorded for a stored instance without a Warning Reason


class _NoAnswer(Exception):
    """The request got no HTTP answer: every later request of the batch would fail alike."""


@sends_to(DicomWebDestination)
class DicomWebSender:
    """Stores files to a DICOMweb service by STOW-RS with the destination's auth and TLS.

    Credentials are read when the sender is made (an unreadable secret is an
    ``OSError`` there); ``calling_ae`` has no place in HTTP and is not sent.
    """

    def __init__(self, destination: DicomWebDestination, calling_ae: str) -> None:
        self._url = destination.url
        parts = urlsplit(destination.url)
        self._origin = f"{parts.scheme}://{parts.netloc}"
        self._timeout_s = destination.timeout_s
        self._tls = destination.tls
        self._basic: tuple[str, str] | None = None
        self._headers: dict[str, str] = {}
        auth = destination.auth
        if isinstance(auth, BasicAuth):
            self._basic = (auth.username, auth.password.reveal())
        elif isinstance(auth, BearerAuth):
            self._headers["Authorization"] = f"Bearer {auth.token.reveal()}"

    def send(self, paths: Sequence[Path]) -> list[Outcome]:
        """STOW-RS every file in its own request over one HTTP session."""
        outcomes: list[Outcome] = []
        with self._session() as session:
            client = DICOMwebClient(self._url, session=session, timeout=self._timeout_s)
            client.set_http_retry_params(retry=False)  # the exporter retries, with backoff
            for index, path in enumerate(paths):
                try:
                    outcomes.append(self._store(client, path))
                except _NoAnswer as exc:
                    outcomes.extend(Outcome(p, False, None, str(exc)) for p in paths[index:])
                    break
        stored = sum(o.delivered for o in outcomes)
        log.info("STOW-RS to %s: %d of %d file(s) stored", self._origin, stored, len(outcomes))
        return outcomes

    def _session(self) -> requests.Session:
        session = requests.Session()
        session.trust_env = False  # no proxy, CA bundle or .netrc from the environment
        session.headers.update(self._headers)
        session.auth = self._basic
        tls = self._tls
        session.verify = True if tls.ca_file is None else str(tls.ca_file)
        if tls.cert_file is not None and tls.key_file is not None:
            session.cert = (str(tls.cert_file), str(tls.key_file))
        return session

    def _store(self, client: DICOMwebClient, path: Path) -> Outcome:
        try:
            dataset = dcmread(path)
        except (InvalidDicomError, OSError) as exc:
            return Outcome(path, False, None, f"result file cannot be read: {exc}")
        uid = str(dataset.get("SOPInstanceUID", ""))
        try:
            answer = client.store_instances([dataset])
        except requests.HTTPError as exc:
            return _refused(path, uid, exc.response)
        except requests.Timeout as exc:
            raise _NoAnswer(f"no answer from {self._origin} within {self._timeout_s:g} s") from exc
        except requests.exceptions.SSLError as exc:
            raise _NoAnswer(f"TLS with {self._origin} failed: {_reason(exc)}") from exc
        except (requests.RequestException, OSError) as exc:
            raise _NoAnswer(f"cannot reach {self._origin}: {_reason(exc)}") from exc
        except (ValueError, KeyError) as exc:  # a success answer that is not STOW-RS
            return Outcome(path, False, None, f"unreadable STOW-RS answer: {exc}")
        failure = _item(answer, "FailedSOPSequence", uid)
        if failure is not None:
            return _failed(path, uid, failure, http_status=None)
        stored = _item(answer, "ReferencedSOPSequence", uid)
        warning = None if stored is None else stored.get("WarningReason")
        return Outcome(path, True, STORED if warning is None else int(warning))


def _item(answer: Dataset, keyword: str, uid: str) -> Dataset | None:
    """The item of the answer's ``keyword`` sequence that references SOP Instance ``uid``."""
    for item in answer.get(keyword) or []:
        if str(item.get("ReferencedSOPInstanceUID", "")) == uid:
            return item  # type: ignore[no-any-return]  # pydicom is untyped
    return None


def _failed(path: Path, uid: str, item: Dataset, *, http_status: int | None) -> Outcome:
    reason = item.get("FailureReason")
    after = "" if http_status is None else f" (HTTP {http_status})"
    if reason is None:
        error = f"the destination did not store instance {uid}{after}"
        return Outcome(path, False, http_status, error)
    error = f"the destination refused instance {uid}: Failure Reason 0x{int(reason):04X}{after}"
    return Outcome(path, False, int(reason), error)


def _refused(path: Path, uid: str, response: requests.Response | None) -> Outcome:
    """The outcome of an HTTP error answer: its Failure Reason for the file, if it gives one."""
    if response is None:
        return Outcome(path, False, None, "HTTP error without an answer")
    status = response.status_code
    failure = _item(_answer_body(response), "FailedSOPSequence", uid)
    if failure is not None:
        return _failed(path, uid, failure, http_status=status)
    hint = " (check the destination's auth settings)" if status in (401, 403) else ""
    return Outcome(path, False, status, f"HTTP {status} {response.reason}{hint}")


def _answer_body(response: requests.Response) -> Dataset:
    """The DICOM JSON body of an error answer; empty when it has none or it does not parse."""
    if "json" not in response.headers.get("Content-Type", "") or not response.content:
        return Dataset()
    try:
        return Dataset.from_json(response.json())
    except (ValueError, TypeError, KeyError):
        return Dataset()


def _reason(exc: Exception) -> str:
    """The cause of a requests error, without urllib3's wrapping and object addresses."""
    cause = exc.args[0] if exc.args else exc
    cause = getattr(cause, "reason", cause)  # urllib3's MaxRetryError holds the cause
    return re.sub(r"<[^>]+>: ", "", str(cause))
