"""``llnm-node serve`` as its own process, with real peers: dcmtk and pynetdicom.

Every test here starts the command-line program (``llnm-node serve --config
X.toml``) on a free port, talks to it over loopback like a PACS or an
ultrasound console would, and looks only at what the node leaves behind: the
DIMSE statuses, the files under ``<data_dir>/spool`` and the rows of its job
database (read with plain SQL). Nothing is mocked.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from harness import (
    Process,
    accepts_connections,
    environ_without,
    free_port,
    wait_for,
    write_toml,
)
from pydicom import dcmread
from pydicom.encaps import generate_frames
from pydicom.filereader import read_file_meta_info
from pydicom.pixels.utils import pixel_array
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    RLELossless,
    generate_uid,
)
from pynetdicom import AE, _config, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from sqlalchemy import JSON, Engine, create_engine, text
from sqlalchemy.pool import NullPool

import dicom_factory
from dicom_node.network.sop_classes import (
    ACCEPTED_STORAGE_CLASSES,
    TRANSFER_SYNTAXES,
    register_retired_storage_classes,
)
from phantoms.hostile import OVERLONG_TEXT_VALUE, before_pixels, nested_sequences

NODE_AE = "LLNM_NODE"
TEST_AE = "LLNM_TEST"  # the calling AE of the pynetdicom peer in this file
LLNM_NODE_EXE = Path(sys.executable).with_name("llnm-node")
START_TIMEOUT_S = 45.0
STOP_TIMEOUT_S = 10.0

needs_dcmtk = pytest.mark.skipif(
    shutil.which("storescu") is None or shutil.which("echoscu") is None,
    reason="dcmtk (storescu, echoscu) is not installed",
)

# --- the serve process ------------------------------------------------------------


def _echo_status(port: int) -> int | None:
    """C-ECHO the node from pynetdicom as ``TEST_AE``; the status, or None without an answer."""
    ae = AE(ae_title=TEST_AE)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 5
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title=NODE_AE)
    if not assoc.is_established:
        return None
    try:
        response = assoc.send_c_echo()
    finally:
        assoc.release()
    return int(response.Status) if "Status" in response else None


class ServeProcess:
    """One ``llnm-node serve`` subprocess with its own TOML config and data folder."""

    def __init__(
        self,
        root: Path,
        *,
        database_url: str = "",
        quiet_seconds: float = 3600.0,
        poll_seconds: float = 0.2,
        allowed_callers: Sequence[str] = (),
        dicom_extra: dict[str, Any] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self.data_dir = root / "data"
        self.spool = self.data_dir / "spool"
        self.port = free_port()
        self.database_url = database_url or f"sqlite:///{self.data_dir.resolve() / 'llnm.db'}"
        self._engine: Engine | None = None
        dicom: dict[str, Any] = {
            "host": "127.0.0.1",
            "port": self.port,
            "ae_title": NODE_AE,
            **(dicom_extra or {}),
        }
        if allowed_callers:
            dicom["allowed_callers"] = [{"ae_title": ae} for ae in allowed_callers]
        settings = {
            "data_dir": self.data_dir,
            "database_url": database_url,
            "log_level": "INFO",
            "dicom": dicom,
            "completion": {"quiet_seconds": quiet_seconds, "poll_seconds": poll_seconds},
            "api": {"port": 0},  # a free port: several nodes run at once
            **(extra or {}),
        }
        self.config = write_toml(root / "llnm.toml", settings)
        self.process = Process(
            [str(LLNM_NODE_EXE), "serve", "--config", str(self.config)],
            log_path=root / "serve.log",
            env=environ_without("LLNM_"),
            cwd=root,
            own_session=True,
            grace_s=STOP_TIMEOUT_S,
        )

    # process control

    def start(self) -> None:
        """Launch ``llnm-node serve`` (returns at once; see ``wait_ready``)."""
        self.process.start()

    def wait_ready(self, timeout: float = START_TIMEOUT_S) -> None:
        """Wait until the node answers a C-ECHO (it listens only after migration and recovery)."""
        self.process.wait_until(
            self._answers_echo,
            timeout=timeout,
            what=f"serve to answer C-ECHO on port {self.port}",
            interval=0.05,
        )

    def _answers_echo(self) -> bool:
        # a cheap TCP probe first; pynetdicom logs an error for every refused connect
        return accepts_connections(self.port) and _echo_status(self.port) == 0x0000

    @property
    def pid(self) -> int:
        return self.process.pid

    def is_running(self) -> bool:
        return self.process.running()

    def terminate(self) -> int:
        """SIGTERM, and SIGKILL if it is not gone after 10 s; returns the exit code."""
        code = self.process.stop()
        assert code is not None, "serve was never started"
        return code

    def kill9(self) -> int:
        return self.process.kill()

    def log(self) -> str:
        return self.process.log()

    # the node's database, read and written with plain SQL

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = create_engine(self.database_url, poolclass=NullPool)
        return self._engine

    def rows(self, statement: str, **params: Any) -> list[Any]:
        with self.engine.connect() as conn:
            return list(conn.execute(text(statement), params))

    def execute(self, statement: str, **params: Any) -> None:
        with self.engine.begin() as conn:
            conn.execute(text(statement), params)

    def events(self, kind: str) -> list[Any]:
        query = text(
            "SELECT id, kind, level, message, detail FROM events WHERE kind = :kind ORDER BY id"
        ).columns(detail=JSON)
        with self.engine.connect() as conn:
            return list(conn.execute(query, {"kind": kind}))

    def instance(self, sop_instance_uid: str) -> Any:
        rows = self.rows(
            "SELECT sop_instance_uid, path, size_bytes, transfer_syntax_uid, study_fk "
            "FROM instances WHERE sop_instance_uid = :uid",
            uid=sop_instance_uid,
        )
        assert len(rows) == 1, f"{len(rows)} instance rows for {sop_instance_uid}"
        return rows[0]

    def close(self) -> None:
        self.process.stop()
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None


class ServeFactory:
    """Creates serve processes under one folder; ``close_all`` stops every one."""

    def __init__(self, root: Path) -> None:
        self._root = root
        self.started: list[ServeProcess] = []

    def __call__(self, name: str = "node", *, start: bool = True, **kwargs: Any) -> ServeProcess:
        node = ServeProcess(self._root / f"{name}{len(self.started)}", **kwargs)
        self.started.append(node)
        if start:
            node.start()
            node.wait_ready()
        return node

    def close_all(self) -> None:
        for node in self.started:
            node.close()


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[ServeFactory]:
    """Start ``llnm-node serve`` processes; every one is stopped (TERM, then KILL) at teardown."""
    if not LLNM_NODE_EXE.is_file():
        pytest.fail(f"{LLNM_NODE_EXE} not found: install the project into the virtualenv")
    factory = ServeFactory(tmp_path)
    yield factory
    factory.close_all()


# --- peers ---------------------------------------------------------------------------


def run_tool(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, check=False)


def echoscu(port: int, *args: str) -> subprocess.CompletedProcess[str]:
    return run_tool("echoscu", "-v", "-to", "5", "-ta", "5", "-td", "5", *args,
                    "127.0.0.1", str(port))  # fmt: skip


def assert_echo_ok(node: ServeProcess) -> None:
    result = echoscu(node.port, "-aec", NODE_AE)
    assert result.returncode == 0, f"echoscu failed:\n{result.stdout}{result.stderr}"
    assert node.is_running(), f"serve died:\n{node.log()}"


# storescu proposes only uncompressed syntaxes unless told; -R plus the flag of the file's own
# transfer syntax makes it send the data set in that syntax instead of converting it.
STORESCU_SYNTAX_FLAG = {
    ExplicitVRLittleEndian: "-xe",
    ImplicitVRLittleEndian: "-xi",
    ExplicitVRBigEndian: "-xb",
    JPEG2000Lossless: "-xv",
    JPEG2000: "-xw",
    JPEGBaseline8Bit: "-xy",
    RLELossless: "-xr",
}


def storescu(port: int, path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    syntax = read_file_meta_info(path).TransferSyntaxUID
    return run_tool(
        "storescu", "-v", "-R", STORESCU_SYNTAX_FLAG[syntax], "-to", "10", "-ta", "10",
        "-td", "60", *extra, "-aec", NODE_AE, "127.0.0.1", str(port), str(path),
    )  # fmt: skip


@contextlib.contextmanager
def chunked_send() -> Iterator[None]:
    """Make pynetdicom send a file's data set bytes exactly as stored (no decode/re-encode)."""
    old = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        yield
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = old


def raw_store(
    port: int,
    paths: Sequence[Path],
    *,
    calling_ae: str = TEST_AE,
    after_each: Callable[[int, int | None], bool] | None = None,
) -> list[int | None]:
    """C-STORE each file's raw data set bytes on one association; the status of each.

    ``None`` for a file that got no answer or was not sent because ``after_each``
    (called with the count sent so far and the last status) returned ``True``.
    """
    register_retired_storage_classes()  # pynetdicom must know color-pl.dcm's retired class
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 20
    contexts = set()
    for path in paths:
        meta = read_file_meta_info(path)
        contexts.add((str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID)))
    for sop_class, syntax in sorted(contexts):
        ae.add_requested_context(sop_class, syntax)
    assoc = ae.associate("127.0.0.1", port, ae_title=NODE_AE)
    assert assoc.is_established, "association with the node failed"
    statuses: list[int | None] = []
    try:
        with chunked_send():
            for path in paths:
                status: int | None = None
                if assoc.is_established:
                    try:
                        response = assoc.send_c_store(path)
                        status = int(response.Status) if "Status" in response else None
                    except (RuntimeError, OSError, ValueError):
                        status = None
                statuses.append(status)
                if after_each is not None and after_each(len(statuses), status):
                    break
    finally:
        if assoc.is_established:
            assoc.release()
    return statuses + [None] * (len(paths) - len(statuses))


def raw_store_concurrently(port: int, paths: Sequence[Path], associations: int) -> list[int | None]:
    """``raw_store`` over several simultaneous associations, files dealt out round-robin."""
    statuses: list[int | None] = [None] * len(paths)

    def send_share(first: int) -> None:
        indexes = range(first, len(paths), associations)
        shares = raw_store(port, [paths[i] for i in indexes])
        for i, status in zip(indexes, shares, strict=True):
            statuses[i] = status

    with chunked_send(), ThreadPoolExecutor(associations) as pool:
        for future in [pool.submit(send_share, k) for k in range(associations)]:
            future.result()
    return statuses


class CaptureSCP:
    """A bare pynetdicom storage SCP that keeps the data set bytes exactly as received."""

    def __init__(self) -> None:
        register_retired_storage_classes()
        self.port = free_port()
        self.received: dict[str, tuple[str, bytes]] = {}
        ae = AE(ae_title=NODE_AE)
        for sop_class in sorted(ACCEPTED_STORAGE_CLASSES):
            ae.add_supported_context(sop_class, list(TRANSFER_SYNTAXES))
        self._old_chunked = _config.STORE_RECV_CHUNKED_DATASET
        _config.STORE_RECV_CHUNKED_DATASET = False  # keep the bytes in memory
        server = ae.start_server(
            ("127.0.0.1", self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._store)]
        )
        assert server is not None
        self._server = server

    def _store(self, event: Any) -> int:
        uid = str(event.request.AffectedSOPInstanceUID)
        syntax = str(event.context.transfer_syntax)
        self.received[uid] = (syntax, bytes(event.encoded_dataset(include_meta=False)))
        return 0x0000

    def close(self) -> None:
        self._server.shutdown()
        _config.STORE_RECV_CHUNKED_DATASET = self._old_chunked


# --- files ---------------------------------------------------------------------------

_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT"}
_LONG_VRS.add(b"UV")


def dataset_offset(data: bytes) -> int:
    """Where the data set starts in Part 10 bytes: after preamble, 'DICM' and group 0002."""
    assert data[128:132] == b"DICM", "not a Part 10 file"
    pos = 132
    while pos + 8 <= len(data) and struct.unpack_from("<H", data, pos)[0] == 0x0002:
        vr = data[pos + 4 : pos + 6]
        if vr in _LONG_VRS:
            pos += 12 + struct.unpack_from("<L", data, pos + 8)[0]
        else:
            pos += 8 + struct.unpack_from("<H", data, pos + 6)[0]
    return pos


def dataset_bytes(path: Path) -> bytes:
    """The bytes after the file meta group: what travels over the network."""
    data = path.read_bytes()
    return data[dataset_offset(data) :]


def sop_uid(path: Path) -> str:
    return str(read_file_meta_info(path).MediaStorageSOPInstanceUID)


def group_without_shared_uids(paths: Sequence[Path]) -> list[list[Path]]:
    """Split files into groups where no two share a SOP Instance UID (the node dedups those)."""
    groups: list[list[Path]] = []
    for path in paths:
        uid = sop_uid(path)
        for group in groups:
            if uid not in {sop_uid(p) for p in group}:
                group.append(path)
                break
        else:
            groups.append([path])
    return groups


def spool_files(node: ServeProcess, folder: str) -> list[Path]:
    return sorted(p for p in (node.spool / folder).rglob("*") if p.is_file())


# --- 1. C-ECHO ---------------------------------------------------------------------------


@pytest.mark.dcmtk
@needs_dcmtk
def test_echoscu_gets_success_from_serve(serve: ServeFactory) -> None:
    """The plain dcmtk C-ECHO a PACS admin would try first succeeds."""
    node = serve()  # default listener settings: loopback, any caller
    result = echoscu(node.port, "-aec", NODE_AE)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Received Echo Response (Success)" in output, output


# --- 2. real vendor ultrasound files ------------------------------------------------------

VENDOR_FILES = (
    "US1_J2KR.dcm",  # GE, JPEG 2000 lossless, YBR_RCT
    "US1_J2KI.dcm",  # GE, JPEG 2000 lossy, YBR_ICT
    "US1_UNCR.dcm",  # GE, uncompressed RGB
    "gdcm-US-ALOKA-16.dcm",  # Aloka, palette colour, implicit VR
    "gdcm-US-ALOKA-16_big.dcm",  # Aloka, explicit VR big endian (same SOP UID as above)
    "OBXXXX1A_rle.dcm",  # Philips, RLE lossless
    "color3d_jpeg_baseline.dcm",  # SonoSite, JPEG baseline, 120-frame cine
    "color-pl.dcm",  # retired Ultrasound Image Storage class, RGB
)


def _vendor_paths(vendor_dir: Path) -> list[Path]:
    paths = [vendor_dir / name for name in VENDOR_FILES]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        pytest.fail(f"pydicom-data files missing: {missing}")
    return paths


def _start_nodes(serve: ServeFactory, count: int, **kwargs: Any) -> list[ServeProcess]:
    nodes = [serve(f"n{i}-", start=False, **kwargs) for i in range(count)]
    for node in nodes:  # start them all, then wait: the imports run in parallel
        node.start()
    for node in nodes:
        node.wait_ready()
    return nodes


def test_vendor_files_sent_raw_are_stored_byte_identical(
    serve: ServeFactory, vendor_dir: Path
) -> None:
    """Every vendor file, sent as its own bytes, is stored with exactly those data set bytes.

    The peer is pynetdicom sending each file's data set straight from disk
    (``STORE_SEND_CHUNKED_DATASET``), in the file's own transfer syntax, so the
    bytes on the wire are the original file's data set bytes; the node must
    write exactly those after its file meta. Files sharing a SOP Instance UID go
    to different nodes, since a node keeps only the first copy of an instance.
    Covers JPEG 2000 (lossless and lossy), big endian, implicit VR, RLE, JPEG
    baseline multi-frame, uncompressed RGB and the retired US class.
    """
    groups = group_without_shared_uids(_vendor_paths(vendor_dir))
    nodes = _start_nodes(serve, len(groups))
    problems: list[str] = []
    for node, group in zip(nodes, groups, strict=True):
        statuses = raw_store(node.port, group)
        assert statuses == [0x0000] * len(group), dict(
            zip([p.name for p in group], statuses, strict=True)
        )
        for original in group:
            meta = read_file_meta_info(original)
            row = node.instance(str(meta.MediaStorageSOPInstanceUID))
            stored = node.spool / row.path
            if dataset_bytes(stored) != dataset_bytes(original):
                problems.append(f"{original.name}: stored data set bytes differ from the file's")
            if str(read_file_meta_info(stored).TransferSyntaxUID) != str(meta.TransferSyntaxUID):
                problems.append(f"{original.name}: stored under another transfer syntax")
            if row.transfer_syntax_uid != str(meta.TransferSyntaxUID):
                problems.append(f"{original.name}: database has syntax {row.transfer_syntax_uid}")
            if row.size_bytes != stored.stat().st_size:
                problems.append(f"{original.name}: database size does not match the file")
        assert spool_files(node, "quarantine") == []
    assert problems == []


def _assert_same_pixels(original: Path, stored: Path) -> None:
    a, b = dcmread(original), dcmread(stored)
    frames = int(a.get("NumberOfFrames", 1) or 1)
    if a.file_meta.TransferSyntaxUID.is_encapsulated and frames > 1:
        # Equal compressed frames decode equally; decoding all 120 frames twice costs ~8 s.
        assert list(generate_frames(a.PixelData, number_of_frames=frames)) == list(
            generate_frames(b.PixelData, number_of_frames=frames)
        ), f"{original.name}: compressed frames differ"
        for index in (0, frames - 1):
            assert np.array_equal(
                pixel_array(original, index=index), pixel_array(stored, index=index)
            ), f"{original.name}: frame {index} differs"
    else:
        assert np.array_equal(a.pixel_array, b.pixel_array), f"{original.name}: pixels differ"


@pytest.mark.dcmtk
@needs_dcmtk
def test_vendor_files_sent_with_storescu_are_stored_as_received(
    serve: ServeFactory, vendor_dir: Path
) -> None:
    """dcmtk's storescu: each vendor file is accepted and stored exactly as storescu sent it.

    storescu parses a file and encodes the data set again, so its bytes on the
    wire can differ from the file's (US1_UNCR.dcm, for one, arrives 150 bytes
    shorter; only the big-endian and color-pl files go out unchanged). What
    storescu sends is therefore first
    captured by a bare pynetdicom SCP; the node must store exactly those bytes,
    in the same transfer syntax (storescu is told to propose the file's own
    syntax, so nothing is transcoded), and the pixels must equal the original
    file's.
    """
    groups = group_without_shared_uids(_vendor_paths(vendor_dir))
    nodes = _start_nodes(serve, len(groups))
    for node, group in zip(nodes, groups, strict=True):
        capture = CaptureSCP()
        try:
            for original in group:
                result = storescu(capture.port, original)
                assert result.returncode == 0, f"{original.name}:\n{result.stdout}{result.stderr}"
        finally:
            capture.close()
        for original in group:
            uid = sop_uid(original)
            sent_syntax, sent_bytes = capture.received[uid]
            assert sent_syntax == str(read_file_meta_info(original).TransferSyntaxUID), (
                f"{original.name}: storescu transcoded to {sent_syntax}"
            )
            result = storescu(node.port, original)
            output = result.stdout + result.stderr
            assert result.returncode == 0, f"{original.name}:\n{output}"
            assert "Received Store Response (Success)" in output, f"{original.name}:\n{output}"
            row = node.instance(uid)
            stored = node.spool / row.path
            assert dataset_bytes(stored) == sent_bytes, (
                f"{original.name}: the node did not store the bytes storescu sent"
            )
            assert row.transfer_syntax_uid == sent_syntax
            _assert_same_pixels(original, stored)
        assert spool_files(node, "quarantine") == []


# --- 3. kill -9 in the middle of a send -------------------------------------------------------

KILL_AFTER_SUCCESSES = 80


def _synthetic_outbox(folder: Path, *, studies: int = 10, per_study: int = 20) -> list[Path]:
    paths = []
    for s in range(studies):
        study_uid, series_uid = generate_uid(), generate_uid()
        for i in range(per_study):
            ds = dicom_factory.ultrasound(
                study_uid=study_uid,
                series_uid=series_uid,
                patient_id=f"PAT{s:03d}",
                rows=64,
                columns=80,
                seed=s * per_study + i,
            )
            ds.InstanceNumber = i + 1
            paths.append(dicom_factory.write(ds, folder / f"s{s:02d}" / f"{i:03d}.dcm"))
    return paths


def assert_ten_whole_studies(node: ServeProcess) -> None:
    """The synthetic outbox's 10 studies: 20 instances each, all registered, one job each."""
    studies = node.rows(
        "SELECT s.id, s.instance_count, COUNT(DISTINCT i.id) AS instances, "
        "COUNT(DISTINCT j.id) AS jobs FROM studies s "
        "LEFT JOIN instances i ON i.study_fk = s.id LEFT JOIN jobs j ON j.study_fk = s.id "
        "GROUP BY s.id, s.instance_count"
    )
    assert len(studies) == 10
    assert all(s.jobs == 1 and s.instances == 20 == s.instance_count for s in studies), studies


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_kill_9_mid_send_loses_no_acknowledged_instance(
    backend: str, serve: ServeFactory, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """SIGKILL while 200 instances arrive: every 0x0000 survives; a full resend dedups cleanly."""
    database_url = "" if backend == "sqlite" else str(request.getfixturevalue("postgres_url"))
    outbox = _synthetic_outbox(tmp_path / "outbox")
    by_uid = {sop_uid(p): p for p in outbox}
    assert len(by_uid) == 200
    node = serve(database_url=database_url, quiet_seconds=3600)

    successes = 0
    killer: threading.Timer | None = None

    def after_each(_sent: int, status: int | None) -> bool:
        nonlocal successes, killer
        successes += status == 0x0000
        if successes == KILL_AFTER_SUCCESSES and killer is None:
            # a few ms later, while the next instance is on the wire or being stored
            killer = threading.Timer(0.003, os.kill, (node.pid, signal.SIGKILL))
            killer.start()
            return False
        # once killed, stop: pynetdicom may wait out its DIMSE timeout on the dead socket
        return killer is not None and killer.finished.is_set()

    statuses = raw_store(node.port, outbox, after_each=after_each)
    assert killer is not None, f"never reached {KILL_AFTER_SUCCESSES} successes: {statuses}"
    killer.join()
    assert node.kill9() == -signal.SIGKILL
    acknowledged = {sop_uid(p) for p, s in zip(outbox, statuses, strict=True) if s == 0x0000}
    assert KILL_AFTER_SUCCESSES <= len(acknowledged) < 200, "the kill did not land mid-send"
    assert {s for s in statuses if s is not None} <= {0x0000}, statuses

    node.start()
    node.wait_ready()
    assert spool_files(node, "tmp") == [], "half-received files survived the restart"
    rows = node.rows("SELECT sop_instance_uid, path, size_bytes FROM instances")
    uids = [r.sop_instance_uid for r in rows]
    assert len(uids) == len(set(uids)), "a SOP Instance UID is stored twice"
    assert acknowledged <= set(uids), f"acknowledged but lost: {acknowledged - set(uids)}"
    assert set(uids) <= set(by_uid)
    for row in rows:  # every registered instance, acknowledged or not, is whole on disk
        stored = node.spool / row.path
        assert stored.is_file(), f"{row.path} registered but missing"
        dcmread(stored)
        assert dataset_bytes(stored) == dataset_bytes(by_uid[row.sop_instance_uid])
        assert row.size_bytes == stored.stat().st_size
    stored_before_resend = len(rows)

    # every study's instances arrive on four associations at once: dedup and job creation race
    assert raw_store_concurrently(node.port, outbox, associations=4) == [0x0000] * 200
    rows = node.rows("SELECT sop_instance_uid, path, study_fk FROM instances")
    assert len(rows) == 200 and {r.sop_instance_uid for r in rows} == set(by_uid)
    for row in rows:
        assert dataset_bytes(node.spool / row.path) == dataset_bytes(by_uid[row.sop_instance_uid])
    assert sorted(str(p.relative_to(node.spool)) for p in spool_files(node, "incoming")) == sorted(
        r.path for r in rows
    ), "files in incoming/ that no instance row names (or the reverse)"
    assert spool_files(node, "tmp") == [] and spool_files(node, "quarantine") == []
    (duplicates,) = node.rows("SELECT SUM(duplicates_received) AS n FROM instances")
    assert duplicates.n == stored_before_resend
    assert_ten_whole_studies(node)
    jobs = node.rows("SELECT version, state FROM jobs")
    assert [(j.version, j.state) for j in jobs] == [(1, "received")] * 10
    assert node.terminate() == 0


def _listener_pids(node: ServeProcess) -> list[int]:
    """The serve process's children (started by any of its threads): its listener processes."""
    tasks = Path(f"/proc/{node.pid}/task")
    return sorted(
        int(p) for task in tasks.iterdir() for p in (task / "children").read_text().split()
    )


def _sockets(pid: int) -> int:
    """Open sockets of a process: its listening socket and one per association."""
    fds = Path(f"/proc/{pid}/fd")
    with contextlib.suppress(OSError):
        return sum(1 for fd in fds.iterdir() if str(fd.readlink()).startswith("socket:"))
    return 0


def test_kill_9_of_one_listener_process_loses_nothing_acknowledged(
    serve: ServeFactory, tmp_path: Path
) -> None:
    """Two listener processes, four senders: SIGKILL one mid-send; the other keeps storing,
    the dead one is restarted, every 0x0000 survives and a resend dedups across processes."""
    outbox = _synthetic_outbox(tmp_path / "outbox")
    by_uid = {sop_uid(p): p for p in outbox}
    # four slots: the resend's four associations need the dead process's slots back
    node = serve(dicom_extra={"listener_processes": 2, "max_associations": 4})
    listeners = _listener_pids(node)
    assert len(listeners) == 2, node.log()

    lock = threading.Lock()
    successes = 0
    killed: list[int] = []

    def after_each(_sent: int, status: int | None) -> bool:
        nonlocal successes
        with lock:
            successes += status == 0x0000
            if successes >= KILL_AFTER_SUCCESSES and not killed:
                busiest = max(listeners, key=_sockets)  # the one with more associations
                assert _sockets(busiest) > 1, "no association on either listener"
                os.kill(busiest, signal.SIGKILL)
                killed.append(busiest)
        return False

    statuses: list[int | None] = [None] * len(outbox)

    def send_share(first: int) -> None:
        indexes = range(first, len(outbox), 4)
        shares = raw_store(node.port, [outbox[i] for i in indexes], after_each=after_each)
        for i, status in zip(indexes, shares, strict=True):
            statuses[i] = status

    with chunked_send(), ThreadPoolExecutor(4) as pool:
        for future in [pool.submit(send_share, k) for k in range(4)]:
            future.result()
    assert killed, f"never reached {KILL_AFTER_SUCCESSES} successes"
    acknowledged = {sop_uid(p) for p, s in zip(outbox, statuses, strict=True) if s == 0x0000}
    assert KILL_AFTER_SUCCESSES <= len(acknowledged) < 200, "the kill stopped no sender"
    assert {s for s in statuses if s is not None} <= {0x0000}, statuses

    wait_for(
        lambda: len(node.events("listener.restarted")) == 1 and len(_listener_pids(node)) == 2,
        timeout=30,
        what="the killed listener process replaced",
    )
    assert killed[0] not in _listener_pids(node)
    (event,) = node.events("listener.restarted")
    assert event.detail["pid"] == killed[0] and event.detail["exit_code"] == -signal.SIGKILL
    rows = node.rows("SELECT sop_instance_uid, path, size_bytes FROM instances")
    uids = {r.sop_instance_uid for r in rows}
    assert len(rows) == len(uids) and acknowledged <= uids <= set(by_uid)
    for row in rows:  # every registered instance, acknowledged or not, is whole on disk
        stored = node.spool / row.path
        assert dataset_bytes(stored) == dataset_bytes(by_uid[row.sop_instance_uid])
        assert row.size_bytes == stored.stat().st_size

    resent = raw_store_concurrently(node.port, outbox, associations=4)
    assert resent == [0x0000] * 200, node.events("association.rejected")
    rows = node.rows("SELECT sop_instance_uid, path FROM instances")
    assert len(rows) == 200 and {r.sop_instance_uid for r in rows} == set(by_uid)
    assert sorted(str(p.relative_to(node.spool)) for p in spool_files(node, "incoming")) == sorted(
        r.path for r in rows
    )
    assert_ten_whole_studies(node)

    survivors = _listener_pids(node)
    assert node.terminate() == 0, node.log()
    for pid in survivors:  # shutdown stopped every listener process
        assert not Path(f"/proc/{pid}").exists(), f"listener process {pid} outlived serve"


# --- 4. refusals keep the listener alive --------------------------------------------------

REFUSAL_CALLERS = ("ECHOSCU", "STORESCU", TEST_AE)


@pytest.fixture(scope="module")
def guarded_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    """One serve process with an allow-list, shared by the refusal tests."""
    node = ServeProcess(tmp_path_factory.mktemp("guarded"), allowed_callers=REFUSAL_CALLERS)
    try:
        node.start()
        node.wait_ready()
        yield node
    finally:
        node.close()


def _rejection(node: ServeProcess, text_in_message: str) -> Any:
    """The one rejection event naming ``text_in_message`` (recorded just after the reject)."""

    def matching() -> list[Any]:
        return [e for e in node.events("association.rejected") if text_in_message in e.message]

    wait_for(
        lambda: bool(matching()),
        timeout=10,
        what=f"an association.rejected event for {text_in_message}",
    )
    (event,) = matching()
    return event


def _refusals(node: ServeProcess, uid: str) -> list[Any]:
    return [e for e in node.events("instance.refused") if e.detail["sop_instance_uid"] == uid]


@pytest.mark.dcmtk
@needs_dcmtk
def test_unknown_calling_ae_is_rejected_and_recorded(guarded_node: ServeProcess) -> None:
    """A calling AE missing from dicom.allowed_callers gets A-ASSOCIATE-RJ and an event."""
    result = echoscu(guarded_node.port, "-aet", "INTRUDER", "-aec", NODE_AE)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "Association Rejected" in output and "Calling AE Title Not Recognized" in output, output
    event = _rejection(guarded_node, "'INTRUDER'")
    assert event.detail["calling_ae"] == "INTRUDER"
    assert event.detail["reason"] == "CALLING_AE_NOT_RECOGNISED"
    assert event.level == "warning"
    assert_echo_ok(guarded_node)


@pytest.mark.dcmtk
@needs_dcmtk
def test_wrong_called_ae_is_rejected_and_recorded(guarded_node: ServeProcess) -> None:
    """An allowed caller addressing another AE title is rejected, with an event."""
    result = echoscu(guarded_node.port, "-aec", "NOT_THE_NODE")  # calling AE ECHOSCU is allowed
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "Association Rejected" in output and "Called AE Title Not Recognized" in output, output
    event = _rejection(guarded_node, "'NOT_THE_NODE'")
    assert event.detail["calling_ae"] == "ECHOSCU"
    assert event.detail["reason"] == "CALLED_AE_NOT_RECOGNISED"
    assert_echo_ok(guarded_node)


def _part10_with_dataset_bytes(path: Path, uid: str, dataset: bytes) -> Path:
    """Valid file meta (US Image Storage, explicit VR little endian) followed by ``dataset``."""
    ds = dicom_factory.ultrasound(sop_uid=uid)
    valid = dicom_factory.write(ds, path)
    data = valid.read_bytes()
    path.write_bytes(data[: dataset_offset(data)] + dataset)
    return path


def _garbage(uid: str, tmp_path: Path) -> bytes:
    return np.random.default_rng(7).integers(0, 256, 4096, dtype=np.uint8).tobytes()


def _truncated(uid: str, tmp_path: Path) -> bytes:
    ds = dicom_factory.ultrasound(sop_uid=uid, rows=64, columns=80)
    whole = dataset_bytes(dicom_factory.write(ds, tmp_path / "whole.dcm"))
    return whole[: len(whole) - 1000]  # cut inside the Pixel Data value


def _element_past_end(uid: str, tmp_path: Path) -> bytes:
    """A UT (Text Value) declared 0x7FFFFFF0 long before the pixels: it swallows the rest."""
    ds = dicom_factory.ultrasound(sop_uid=uid, rows=64, columns=80)
    whole = dataset_bytes(dicom_factory.write(ds, tmp_path / "whole.dcm"))
    return before_pixels(whole, OVERLONG_TEXT_VALUE)


def _nested(uid: str, tmp_path: Path, depth: int, *, closed: bool) -> bytes:
    """Content Sequences of undefined length nested ``depth`` deep before the pixels."""
    ds = dicom_factory.ultrasound(sop_uid=uid, rows=64, columns=80)
    whole = dataset_bytes(dicom_factory.write(ds, tmp_path / "whole.dcm"))
    return before_pixels(whole, nested_sequences(depth, closed=closed))


def _nested_3000_deep(uid: str, tmp_path: Path) -> bytes:
    return _nested(uid, tmp_path, 3000, closed=True)


def _nested_70_deep(uid: str, tmp_path: Path) -> bytes:
    return _nested(uid, tmp_path, 70, closed=True)


def _never_closed(uid: str, tmp_path: Path) -> bytes:
    return _nested(uid, tmp_path, 5, closed=False)


@pytest.mark.dcmtk
@needs_dcmtk
@pytest.mark.parametrize(
    "make_dataset",
    [_garbage, _truncated, _element_past_end, _nested_3000_deep, _nested_70_deep, _never_closed],
    ids=["garbage", "truncated", "element_past_end", "nested_3000", "nested_70", "never_closed"],
)
def test_malformed_data_set_is_refused_0xC000_and_quarantined(
    guarded_node: ServeProcess,
    tmp_path: Path,
    make_dataset: Callable[[str, Path], bytes],
) -> None:
    """Valid file meta, unusable data set: 0xC000, the bytes kept in quarantine, an event."""
    uid = generate_uid()
    payload = make_dataset(uid, tmp_path)
    path = _part10_with_dataset_bytes(tmp_path / "malformed.dcm", uid, payload)
    before = set(spool_files(guarded_node, "quarantine"))

    (status,) = raw_store(guarded_node.port, [path])

    refusals = _refusals(guarded_node, uid)
    assert status == 0xC000, f"answered {status}, not 0xC000 (cannot understand): {refusals}"
    (event,) = refusals
    assert event.detail["status"] == 0xC000
    assert event.detail["calling_ae"] == TEST_AE
    assert guarded_node.rows("SELECT id FROM instances WHERE sop_instance_uid = :u", u=uid) == []
    kept = guarded_node.spool / event.detail["quarantined_as"]
    assert set(spool_files(guarded_node, "quarantine")) - before == {kept, kept.with_suffix(".txt")}
    assert dataset_bytes(kept) == payload, "quarantine must keep the bytes as received"
    assert kept.with_suffix(".txt").read_text(encoding="utf-8").strip()
    assert_echo_ok(guarded_node)
    assert "Traceback" not in guarded_node.log()  # one line, not a 176 KB trace


@pytest.mark.dcmtk
@needs_dcmtk
def test_a_deflate_bomb_is_refused_0xA700_without_being_inflated(
    guarded_node: ServeProcess, tmp_path: Path
) -> None:
    """96 MiB of zeros deflated to well under 1 MB: over dicom.max_inflated_mb (64)."""
    uid = generate_uid()
    ds = dicom_factory.ultrasound(sop_uid=uid, rows=64, columns=80)
    ds.PixelData = bytes(96 << 20)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    bomb = tmp_path / "bomb.dcm"
    ds.save_as(bomb, enforce_file_format=True)
    assert bomb.stat().st_size < 1 << 20
    before = set(spool_files(guarded_node, "quarantine"))

    (status,) = raw_store(guarded_node.port, [bomb])

    assert status == 0xA700
    (event,) = _refusals(guarded_node, uid)
    assert "max_inflated_mb" in event.message and event.detail["quarantined_as"] is None
    assert set(spool_files(guarded_node, "quarantine")) == before
    assert guarded_node.rows("SELECT id FROM instances WHERE sop_instance_uid = :u", u=uid) == []
    assert_echo_ok(guarded_node)


@pytest.mark.dcmtk
@needs_dcmtk
def test_ct_instance_from_storescu_is_refused_0x0122(
    guarded_node: ServeProcess, tmp_path: Path
) -> None:
    """A CT image is refused by status (not quarantined, not stored), with an event."""
    ct = dicom_factory.write(dicom_factory.ct(), tmp_path / "ct.dcm")
    uid = sop_uid(ct)
    before = set(spool_files(guarded_node, "quarantine"))

    result = storescu(guarded_node.port, ct, "-d")
    output = result.stdout + result.stderr
    assert re.search(r"DIMSE Status\s*:\s*0x0122", output), output

    (event,) = _refusals(guarded_node, uid)
    assert event.detail["status"] == 0x0122
    assert event.detail["calling_ae"] == "STORESCU"
    assert event.detail["quarantined_as"] is None
    assert set(spool_files(guarded_node, "quarantine")) == before
    assert guarded_node.rows("SELECT id FROM instances WHERE sop_instance_uid = :u", u=uid) == []
    assert_echo_ok(guarded_node)


# --- 5. SIGTERM and restart -----------------------------------------------------------------


def _job_of(node: ServeProcess, study_uid: str) -> Any:
    (job,) = node.rows(
        "SELECT j.id, j.state, j.version, j.attempts FROM jobs j "
        "JOIN studies s ON s.id = j.study_fk WHERE s.study_instance_uid = :uid",
        uid=study_uid,
    )
    return job


def test_sigterm_stops_cleanly_and_restart_recovers_running_job(
    serve: ServeFactory, tmp_path: Path
) -> None:
    """SIGTERM exits 0 quickly; after a restart finished jobs stay done, a running one reruns."""
    node = serve(quiet_seconds=0.5, poll_seconds=0.1)
    done_study, interrupted_study = generate_uid(), generate_uid()
    files = [
        dicom_factory.write(dicom_factory.ultrasound(study_uid=study), tmp_path / f"{n}.dcm")
        for n, study in enumerate((done_study, interrupted_study))
    ]
    assert raw_store(node.port, files) == [0x0000, 0x0000]
    wait_for(
        lambda: [_job_of(node, s).state for s in (done_study, interrupted_study)] == ["done"] * 2,
        timeout=90,  # a cold process loads the segmenters and LLNM-Net first
        what="both jobs done",
    )

    started = time.monotonic()
    assert node.terminate() == 0, node.log()  # SIGTERM (SIGKILL, and so -9, after 10 s)
    assert time.monotonic() - started < 5.0, "shutdown took too long"
    assert "stop requested; shutting down" in node.log()
    assert "node stopped" in node.log()

    # as if the node had died in the middle of the second job
    job = _job_of(node, interrupted_study)
    node.execute("UPDATE jobs SET state = 'running', stage = 'intake' WHERE id = :id", id=job.id)

    node.start()
    node.wait_ready()
    wait_for(
        lambda: _job_of(node, interrupted_study).state == "done",
        timeout=90,
        what="the recovered job done",
    )
    recovered = _job_of(node, interrupted_study)
    # the interrupted attempt was not counted: the job finished on its first counted one
    assert (recovered.id, recovered.version, recovered.attempts) == (job.id, 1, 1)
    (event,) = node.events("job.recovered")
    assert "queued again" in event.message
    assert "re-queued 1 job(s) interrupted by the last stop" in node.log()
    finished = _job_of(node, done_study)
    assert (finished.state, finished.version, finished.attempts) == ("done", 1, 1)
    assert len(node.rows("SELECT id FROM jobs")) == 2
    assert node.terminate() == 0


# --- 6. offline demo ------------------------------------------------------------------------


def test_demo_runs_with_no_network(tmp_path: Path) -> None:
    """``llnm-node demo`` in a network namespace with only loopback: it needs nothing outside."""
    probe = run_tool("unshare", "--net", "true", timeout=10)
    if probe.returncode != 0:
        pytest.skip(f"unshare --net not permitted here: {probe.stderr.strip()}")
    script = (
        "ip link set lo up || exit 96; "
        "if ip -o link show | grep -v ': lo:'; then exit 97; fi; "  # nothing but loopback
        f'exec "{LLNM_NODE_EXE}" demo --data-dir "{tmp_path / "demo"}"'
    )
    env = {**environ_without("LLNM_"), "COLUMNS": "200"}
    result = subprocess.run(
        ["unshare", "--net", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "C-ECHO: 0x0000" in output, output
    jobs = re.findall(r"│\s*(\d+)\s*│\s*(P-[0-9A-F]+)\s*│\s*(\w+)\s*│", output)
    assert len(jobs) >= 4, output
    assert {state for _, _, state in jobs} == {"done"}, output
    engine = create_engine(f"sqlite:///{tmp_path / 'demo' / 'llnm.db'}", poolclass=NullPool)
    try:
        with engine.connect() as conn:
            states = [row.state for row in conn.execute(text("SELECT state FROM jobs"))]
    finally:
        engine.dispose()
    assert len(states) == len(jobs) and set(states) == {"done"}, states
