"""C-STORE ingest throughput: ``llnm-node serve`` against a bare pynetdicom SCP and Orthanc.

One corpus of uncompressed RGB ultrasound instances (about 0.9 MB each) is sent
by dcmtk's ``storescu`` over loopback to three receivers, each started fresh
(empty storage) for every run:

``bare``
    A pynetdicom SCP with the node's presentation contexts and maximum PDU that
    only writes each received data set to a file (no fsync, no database). It
    is started by this script itself (``--bare-scp PORT DIR``).
``node``
    ``llnm-node serve`` with its default durability: every instance fsynced in
    the spool and registered in SQLite (WAL, ``synchronous = FULL``) before the
    C-STORE response.
``orthanc``
    The Debian package's Orthanc with its default settings except for the
    storage folders, ports, AE title and the options listed in the output.

Each receiver is measured in two modes: one ``storescu`` sending every file
over one association, and four concurrent ``storescu`` processes sending a
quarter each. The time is the wall time from starting the first sender to the
last one exiting; every sender must exit 0 and the receiver must hold exactly
the instances sent.

Run::

    .venv/bin/python benchmarks/ingest_throughput.py [--instances 400] [--out benchmarks/out]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from harness import Process, free_port, log_tail, stop_all, write_toml
from orthanc_peer import ORTHANC_AE, ORTHANC_BIN, Orthanc

REPO_ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
NODE_BIN = VENV_BIN / "llnm-node"

CORPUS_VERSION = 2
ROWS, COLUMNS = 480, 640
STUDIES = 20
SENDERS_CONCURRENT = 4
NODE_AE = "LLNM_NODE"
BARE_AE = "BARE_SCP"
CALLING_AE = "BENCH_SCU"
STARTUP_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 30.0
SEND_TIMEOUT_S = 600.0

# Settings given to Orthanc besides folders and ports; everything else is its default.
ORTHANC_OVERRIDES: dict[str, Any] = {
    "DicomAet": ORTHANC_AE,
    "RemoteAccessAllowed": False,
    "AuthenticationEnabled": False,
    "DicomCheckCalledAet": False,
    "StorageCompression": False,
}
# Orthanc 1.10 defaults that matter for ingest (documented in /etc/orthanc/orthanc.json;
# the sync behaviour was checked with strace: one fdatasync per stored file, no folder
# sync, index commits in SQLite WAL mode not synced one by one).
ORTHANC_DEFAULTS_NOTED: dict[str, Any] = {
    "SyncStorageArea": True,
    "MaximumPduLength": 16384,
    "DicomThreadsCount": 4,
    "StoreMD5ForAttachments": True,
    "OverwriteInstances": False,
    "IngestTranscoding": None,
    "index": "built-in SQLite (WAL)",
}

# The targets per mode (None: none set): throughput of the node over the bare SCP's
# and Orthanc's (at least), and the node's receiver CPU per instance over the bare SCP's (at most).
TARGETS: dict[str, dict[str, float | None]] = {
    "single": {"vs_bare": 0.8, "vs_orthanc": 3.0, "cpu_vs_bare": 1.5},
    "concurrent": {"vs_bare": None, "vs_orthanc": 2.0, "cpu_vs_bare": 1.5},
}

RECEIVERS = ("bare", "node", "node-unsynced", "orthanc")
DEFAULT_RECEIVERS = ("bare", "node", "orthanc")
LOAD_AT_START: list[float] = [0.0, 0.0, 0.0]
MODES = ("single", "concurrent")

# Wide enough for the results table when the output is a pipe or a file.
console = Console() if sys.stdout.isatty() else Console(width=150)


# --- helpers -------------------------------------------------------------------------


def find_dcmtk_tool(name: str) -> Path:
    """Locate a dcmtk command-line tool, skipping pynetdicom's same-named scripts.

    The virtual environment's ``bin`` holds pynetdicom apps called ``storescu``
    and ``echoscu``; only dcmtk's are wanted here.

    Parameters
    ----------
    name
        The tool, e.g. ``"storescu"``.

    Returns
    -------
    Path
        The dcmtk executable.

    Raises
    ------
    FileNotFoundError
        If no dcmtk tool of that name is on ``PATH`` (or in ``/usr/bin``).
    """
    folders = [*os.environ.get("PATH", "").split(os.pathsep), "/usr/bin", "/usr/local/bin"]
    for folder in folders:
        if not folder:
            continue
        candidate = Path(folder) / name
        if not candidate.is_file() or not os.access(candidate, os.X_OK):
            continue
        probe = subprocess.run(
            [str(candidate), "--version"], capture_output=True, text=True, timeout=10, check=False
        )
        if "dcmtk" in (probe.stdout + probe.stderr).lower():
            return candidate
    raise FileNotFoundError(f"dcmtk {name} not found on PATH")


def tool_version(argv: Sequence[str]) -> str:
    """First non-empty output line of ``argv`` (a ``--version`` call).

    Parameters
    ----------
    argv
        The command to run.

    Returns
    -------
    str
        The line, or ``"unknown"``.
    """
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return "unknown"
    for line in (done.stdout + done.stderr).splitlines():
        if line.strip():
            return line.strip()
    return "unknown"


def process_cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds used so far by a live process and its live descendants.

    The node's listener processes are its children; their time counts as the node's.

    Parameters
    ----------
    pid
        The process id.

    Returns
    -------
    float
        CPU seconds, or ``nan`` if ``/proc`` cannot be read.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return float("nan")
    fields = stat[stat.rindex(")") + 2 :].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    # children a process has reaped count in its cutime/cstime, live ones are read here
    own = (ticks + int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")
    children = (process_cpu_seconds(child) for child in _children(pid))
    return own + sum(c for c in children if not math.isnan(c))  # nan: exited meanwhile


def _children(pid: int) -> list[int]:
    """Live child processes of ``pid`` (started by any of its threads)."""
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                found.extend(int(p) for p in (task / "children").read_text().split())
    return found


_PF_KTHREAD = 0x00200000


def _process_cpu_ticks(stat: str) -> tuple[int, int]:
    """(flags, utime + stime) from the text of a ``/proc/<pid>/stat``."""
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[6]), int(fields[11]) + int(fields[12])


class OtherProcessesCpu:
    """CPU time that unrelated processes used while a benchmark run was going on.

    The machine's user + system time (``/proc/stat``, interrupts left out) minus
    the time of kernel threads (writeback and journal work that the receivers
    cause), of this script and of the excluded processes; the senders' time is
    given by the caller. Short-lived processes are included, because the
    machine-wide counters see them.
    """

    def __init__(self) -> None:
        self._machine = self._machine_ticks()
        self._kernel = self._kernel_thread_ticks()
        self._self = self._own_seconds()

    @staticmethod
    def _machine_ticks() -> int:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()
        user, nice, system = (int(v) for v in fields[1:4])
        return user + nice + system

    @staticmethod
    def _kernel_thread_ticks() -> dict[int, int]:
        ticks: dict[int, int] = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError, ValueError, IndexError):
                flags, cpu = _process_cpu_ticks((entry / "stat").read_text())
                if flags & _PF_KTHREAD:
                    ticks[int(entry.name)] = cpu
        return ticks

    @staticmethod
    def _own_seconds() -> float:
        times = os.times()
        return times.user + times.system

    def seconds(self, *, excluded_cpu_s: float) -> float:
        """Unrelated processes' CPU seconds since construction (never below 0).

        Parameters
        ----------
        excluded_cpu_s
            CPU seconds of the run's own processes (receiver, senders) meanwhile.

        Returns
        -------
        float
            The seconds.
        """
        tick = os.sysconf("SC_CLK_TCK")
        machine = (self._machine_ticks() - self._machine) / tick
        kernel_after = self._kernel_thread_ticks()
        kernel = sum(cpu - self._kernel.get(pid, 0) for pid, cpu in kernel_after.items()) / tick
        own = self._own_seconds() - self._self
        return max(0.0, machine - kernel - own - excluded_cpu_s)


def children_cpu_seconds() -> float:
    """CPU seconds of all reaped children of this process so far.

    Returns
    -------
    float
        User plus system seconds.
    """
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# --- corpus --------------------------------------------------------------------------


@dataclass(frozen=True)
class Corpus:
    """The instances to send, split into the parts the concurrent senders get."""

    root: Path
    parts: tuple[Path, ...]
    instances: int
    studies: int
    total_bytes: int
    pixel_bytes_per_instance: int


def _uid(seed: int, *names: object) -> str:
    from pydicom.uid import generate_uid

    return str(generate_uid(entropy_srcs=["llnm-ingest-bench", str(seed), *map(str, names)]))


def _ultrasound_pixels(rng: Any, base: Any) -> bytes:
    """An RGB frame: a smooth sector-like background times Rayleigh speckle, plus an overlay."""
    import numpy as np

    speckle = rng.rayleigh(scale=0.6, size=(ROWS, COLUMNS)).astype(np.float32)
    gray = np.clip(base * speckle, 0, 255).astype(np.uint8)
    rgb = np.repeat(gray[:, :, None], 3, axis=2)
    # A coloured annotation strip as consoles burn into screens, different per frame.
    rgb[8:24, 16 : 16 + int(rng.integers(80, 300)), :] = rng.integers(0, 256, 3, dtype=np.uint8)
    return rgb.tobytes()


def _sector_background() -> Any:
    import numpy as np

    y, x = np.mgrid[0:ROWS, 0:COLUMNS].astype(np.float32)
    depth = y / ROWS
    angle = np.abs((x - COLUMNS / 2) / (y + 40.0))
    inside = (angle < 1.2) & (y > 30)
    return np.where(inside, 160.0 * np.exp(-1.5 * depth) + 40.0, 0.0).astype(np.float32)


def _ultrasound_dataset(
    *, seed: int, study: int, index: int, number_in_study: int, pixels: bytes
) -> Any:
    from pydicom import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence as DicomSequence
    from pydicom.uid import UID, ExplicitVRLittleEndian, UltrasoundImageStorage

    study_uid = _uid(seed, "study", study)
    series_uid = _uid(seed, "series", study)
    sop_uid = _uid(seed, "instance", index)
    study_date = f"2026{1 + study % 12:02d}{1 + study % 28:02d}"
    study_time = f"{8 + study % 9:02d}{(7 * study) % 60:02d}00"

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UltrasoundImageStorage
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian

    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "ABDOMINAL", "0001"]
    ds.InstanceCreationDate = study_date
    ds.InstanceCreationTime = study_time
    ds.SOPClassUID = UltrasoundImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = study_date
    ds.StudyTime = ds.SeriesTime = study_time
    ds.ContentTime = f"{study_time[:4]}{number_in_study % 60:02d}"
    ds.AccessionNumber = f"A{2026000000 + study:010d}"[:16]
    ds.Modality = "US"
    ds.Manufacturer = "Acme Medical Systems"
    ds.InstitutionName = "Saint Example University Hospital"
    ds.ReferringPhysicianName = "Endo^Thea^^Dr."
    ds.StationName = f"US-ROOM-{1 + study % 3}"
    ds.StudyDescription = "US THYROID AND NECK"
    ds.SeriesDescription = "Thyroid / lateral neck"
    ds.ManufacturerModelName = "SonoExample 7"
    ds.PatientName = f"Testpatient^Number{study:02d}"
    ds.PatientID = f"MRN{100000 + study * 37:08d}"
    ds.IssuerOfPatientID = "SEUH"
    ds.PatientBirthDate = f"19{50 + study:02d}0{1 + study % 9}15"
    ds.PatientSex = "F" if study % 4 else "M"
    ds.BodyPartExamined = "NECK"
    ds.DeviceSerialNumber = "SN-0042-7731"
    ds.SoftwareVersions = "4.2.1"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = str(1000 + study)
    ds.SeriesNumber = 1
    ds.InstanceNumber = number_in_study + 1
    ds.PatientOrientation = ""
    ds.ImageLaterality = "R" if number_in_study % 2 else "L"
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    ds.PlanarConfiguration = 0
    ds.Rows = ROWS
    ds.Columns = COLUMNS
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.LossyImageCompression = "00"
    region = Dataset()
    region.RegionSpatialFormat = 1
    region.RegionDataType = 1
    region.RegionFlags = 0
    region.RegionLocationMinX0 = 40
    region.RegionLocationMinY0 = 30
    region.RegionLocationMaxX1 = COLUMNS - 40
    region.RegionLocationMaxY1 = ROWS - 10
    region.PhysicalUnitsXDirection = 3  # cm
    region.PhysicalUnitsYDirection = 3
    region.PhysicalDeltaX = 0.0078
    region.PhysicalDeltaY = 0.0078
    ds.SequenceOfUltrasoundRegions = DicomSequence([region])
    ds.PixelData = pixels
    return ds


def build_corpus(root: Path, *, instances: int, studies: int, seed: int) -> Corpus:
    """Write the corpus under ``root`` (reusing it when a matching one is there).

    Files are ``root/part<k>/<study>_<instance>.dcm``; part ``k`` holds whole
    studies and is what concurrent sender ``k`` sends. A ``manifest.json``
    beside the parts records what was built.

    Parameters
    ----------
    root
        Folder of the corpus (created).
    instances
        Number of instances.
    studies
        Number of studies they are spread over.
    seed
        Seed of UIDs and pixel content.

    Returns
    -------
    Corpus
        The corpus.
    """
    import numpy as np
    from pydicom import dcmwrite

    parts = tuple(root / f"part{k}" for k in range(SENDERS_CONCURRENT))
    manifest_path = root / "manifest.json"
    wanted = {
        "version": CORPUS_VERSION,
        "instances": instances,
        "studies": studies,
        "seed": seed,
        "rows": ROWS,
        "columns": COLUMNS,
    }
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text())
        files = sorted(root.glob("part*/*.dcm"))
        if manifest.get("built") == wanted and len(files) == instances:
            console.print(f"corpus: reusing {instances} instances in {root}")
            return Corpus(
                root=root,
                parts=parts,
                instances=instances,
                studies=studies,
                total_bytes=sum(f.stat().st_size for f in files),
                pixel_bytes_per_instance=ROWS * COLUMNS * 3,
            )
    if root.exists():
        shutil.rmtree(root)
    for part in parts:
        part.mkdir(parents=True)

    rng = np.random.default_rng(seed)
    base = _sector_background()
    per_study = [
        instances // studies + (1 if s < instances % studies else 0) for s in range(studies)
    ]
    total = 0
    index = 0
    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        task = progress.add_task("building corpus", total=instances)
        for study, count in enumerate(per_study):
            part = parts[study * SENDERS_CONCURRENT // studies]
            for number in range(count):
                ds = _ultrasound_dataset(
                    seed=seed,
                    study=study,
                    index=index,
                    number_in_study=number,
                    pixels=_ultrasound_pixels(rng, base),
                )
                path = part / f"s{study:03d}_i{number:04d}.dcm"
                dcmwrite(path, ds, enforce_file_format=True)
                total += path.stat().st_size
                index += 1
                progress.advance(task)
    manifest_path.write_text(json.dumps({"built": wanted, "total_bytes": total}, indent=2))
    return Corpus(
        root=root,
        parts=parts,
        instances=instances,
        studies=studies,
        total_bytes=total,
        pixel_bytes_per_instance=ROWS * COLUMNS * 3,
    )


def warm_page_cache(corpus: Corpus) -> None:
    """Read every corpus file once so that all runs send from the page cache.

    Parameters
    ----------
    corpus
        The corpus.
    """
    for path in sorted(corpus.root.glob("part*/*.dcm")):
        with path.open("rb") as fh:
            while fh.read(1 << 20):
                pass


# --- receivers -----------------------------------------------------------------------


def this_script(*args: str) -> list[str]:
    """The command line that runs this script with ``args`` (the receivers it serves itself)."""
    return [sys.executable, str(Path(__file__).resolve()), *args]


class Receiver:
    """A C-STORE SCP under test, started fresh on empty storage."""

    name = ""
    ae_title = ""

    def __init__(self, workdir: Path, echoscu: Path) -> None:
        self.workdir = workdir
        self.echoscu = echoscu
        self.port = free_port()
        self.log_path = workdir / f"{self.name}.log"
        self.process: Process | None = None

    def command(self) -> list[str]:
        """The command line that starts the receiver."""
        raise NotImplementedError

    def prepare(self) -> None:
        """Write configuration files; called before the process starts."""

    def ready(self) -> bool:
        """Whether the receiver answers C-ECHO."""
        echo = subprocess.run(
            [
                str(self.echoscu),
                *("-aet", CALLING_AE, "-aec", self.ae_title, "-to", "2"),
                *("127.0.0.1", str(self.port)),
            ],
            capture_output=True,
            timeout=30,
            check=False,
        )
        return echo.returncode == 0

    def start(self) -> None:
        """Start the process and wait until it accepts associations.

        Raises
        ------
        AssertionError
            If the process exits or is not ``ready`` within the startup timeout.
        """
        self.prepare()
        self.process = Process(
            self.command(), log_path=self.log_path, cwd=self.workdir, grace_s=STOP_TIMEOUT_S
        )
        self.process.start().wait_until(
            self.ready, timeout=STARTUP_TIMEOUT_S, what=f"{self.name} to answer C-ECHO"
        )

    def stored_instances(self) -> int:
        """How many instances the receiver holds now."""
        raise NotImplementedError

    def cpu_seconds(self) -> float:
        """CPU seconds the receiver process has used so far."""
        return float("nan") if self.process is None else process_cpu_seconds(self.process.pid)

    def stop(self) -> None:
        """Stop the process (SIGTERM, then SIGKILL)."""
        if self.process is not None:
            self.process.stop()


class BareReceiver(Receiver):
    """The bare pynetdicom SCP of this script: write each data set to a file, nothing else."""

    name = "bare"
    ae_title = BARE_AE

    def __init__(self, workdir: Path, echoscu: Path) -> None:
        super().__init__(workdir, echoscu)
        self.store_dir = workdir / "bare-store"

    def command(self) -> list[str]:
        """``python ingest_throughput.py --bare-scp PORT DIR``."""
        return this_script("--bare-scp", str(self.port), str(self.store_dir))

    def prepare(self) -> None:
        """Create the empty storage folder."""
        self.store_dir.mkdir(parents=True)

    def stored_instances(self) -> int:
        """Files written by the SCP."""
        return sum(1 for _ in self.store_dir.glob("*.dcm"))


class NodeReceiver(Receiver):
    """``llnm-node serve`` with a fresh data folder and SQLite database."""

    name = "node"
    ae_title = NODE_AE

    def __init__(self, workdir: Path, echoscu: Path) -> None:
        super().__init__(workdir, echoscu)
        self.data_dir = workdir / "node"
        self.config_path = workdir / "node.toml"

    def command(self) -> list[str]:
        """``llnm-node serve --config node.toml``."""
        return [str(NODE_BIN), "serve", "--config", str(self.config_path)]

    def prepare(self) -> None:
        """Write the TOML configuration (durability defaults, no jobs during the run)."""
        settings = {
            "data_dir": self.data_dir,
            "log_level": "WARNING",
            "dicom": {"host": "127.0.0.1", "port": self.port},
            "completion": {"quiet_seconds": 3600},
        }
        write_toml(self.config_path, settings)

    def stored_instances(self) -> int:
        """Sum of ``instance_count`` over ``llnm-node studies list --json``.

        Raises
        ------
        RuntimeError
            If the database count and the spool's file count differ.
        """
        listing = subprocess.run(
            [
                str(NODE_BIN),
                *("studies", "list", "--config", str(self.config_path)),
                *("--json", "--limit", "10000"),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        in_db = sum(int(row["instance_count"]) for row in json.loads(listing.stdout))
        in_spool = sum(1 for _ in (self.data_dir / "spool" / "incoming").glob("*/*.dcm"))
        if in_db != in_spool:
            raise RuntimeError(f"node: {in_db} instances in the database, {in_spool} in the spool")
        return in_db


class UnsyncedNodeReceiver(NodeReceiver):
    """Diagnostic: the node's own code with every fsync and SQLite's sync switched off."""

    name = "node-unsynced"

    def command(self) -> list[str]:
        """``python ingest_throughput.py --node-unsynced node.toml``."""
        return this_script("--node-unsynced", str(self.config_path))


class OrthancReceiver(Receiver):
    """Orthanc (Debian package) with its own storage and index folders."""

    name = "orthanc"
    ae_title = ORTHANC_AE

    def __init__(self, workdir: Path, echoscu: Path) -> None:
        super().__init__(workdir, echoscu)
        self.orthanc = Orthanc(self.port, free_port(), self.log_path)
        self.config_path = workdir / "orthanc.json"

    def command(self) -> list[str]:
        """``Orthanc orthanc.json``."""
        return [str(ORTHANC_BIN), str(self.config_path)]

    def prepare(self) -> None:
        """Write the JSON configuration."""
        storage = self.workdir / "orthanc-storage"
        index = self.workdir / "orthanc-index"
        storage.mkdir()
        index.mkdir()
        config = {
            "Name": "llnm-ingest-benchmark",
            "StorageDirectory": str(storage),
            "IndexDirectory": str(index),
            "DicomPort": self.port,
            "HttpPort": self.orthanc.http_port,
            **ORTHANC_OVERRIDES,
        }
        self.config_path.write_text(json.dumps(config, indent=2))

    def ready(self) -> bool:
        """Whether Orthanc's REST API answers and then C-ECHO does."""
        return self.orthanc.answers() and super().ready()

    def stored_instances(self) -> int:
        """``CountInstances`` of ``/statistics``."""
        return int(self.orthanc.get("/statistics")["CountInstances"])


RECEIVER_CLASSES: dict[str, Callable[[Path, Path], Receiver]] = {
    "bare": BareReceiver,
    "node": NodeReceiver,
    "node-unsynced": UnsyncedNodeReceiver,
    "orthanc": OrthancReceiver,
}


# --- the bare SCP --------------------------------------------------------------------


def run_bare_scp(port: int, store_dir: Path) -> None:
    """Serve C-STORE until killed, writing every data set as received to ``store_dir``.

    The AE is built by the node's own ``build_ae`` with default settings, so it
    proposes the same presentation contexts, maximum PDU (262144) and
    association limit as the node. Data sets stay in memory as pynetdicom
    receives them and are written as preamble + file meta + raw bytes.

    Parameters
    ----------
    port
        TCP port on 127.0.0.1.
    store_dir
        Existing folder for the files.
    """
    from pynetdicom import evt

    from dicom_node.network.listener import build_ae
    from dicom_node.settings import DicomSettings

    settings = DicomSettings(ae_title=BARE_AE, host="127.0.0.1", port=port)
    ae = build_ae(settings)

    def handle_store(event: Any) -> int:
        uid = str(event.request.AffectedSOPInstanceUID)
        (store_dir / f"{uid}.dcm").write_bytes(event.encoded_dataset(include_meta=True))
        return 0x0000

    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    ae.start_server(("127.0.0.1", port), block=True, evt_handlers=[(evt.EVT_C_STORE, handle_store)])


def run_node_unsynced(config: Path) -> None:
    """``llnm-node serve --config CONFIG`` without durability, to price it (never a setting).

    The node's own ``Node`` with ``durable=False``: every check, the spool
    placement and the database registration run as in the node; only the
    spool's fsyncs are skipped and SQLite commits with ``synchronous = OFF``.
    The gap to ``node`` is what durability costs, the gap to ``bare`` what the
    node's checks and bookkeeping cost.
    """
    from dicom_node.app.node import Node
    from dicom_node.cli.common import settings_or_exit, setup_logging
    from dicom_node.cli.node import run_until_stopped

    settings = settings_or_exit(config)
    setup_logging(settings.log_level)
    run_until_stopped(Node(settings, durable=False))


# --- runs ----------------------------------------------------------------------------


@dataclass
class RunResult:
    """One receiver in one mode (one sample)."""

    receiver: str
    mode: str
    senders: int
    instances_sent: int
    instances_stored: int
    seconds: float
    instances_per_s: float
    mb_per_s: float
    receiver_cpu_s: float
    senders_cpu_s: float
    other_cpu_s: float
    sender_exit_codes: list[int]
    ok: bool
    error: str = ""


@dataclass
class Summary:
    """The median over the samples of one receiver and mode."""

    receiver: str
    mode: str
    samples: list[RunResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether every sample sent and stored everything."""
        return bool(self.samples) and all(s.ok for s in self.samples)

    def median(self, attribute: str) -> float:
        """Median of a numeric attribute over the samples."""
        return float(statistics.median(getattr(s, attribute) for s in self.samples))

    def spread(self, attribute: str) -> str:
        """``min-max`` of a numeric attribute over the samples."""
        values = [float(getattr(s, attribute)) for s in self.samples]
        return f"{min(values):.1f}-{max(values):.1f}"


def send_all(
    storescu: Path, *, port: int, called_ae: str, folders: Sequence[Path], logdir: Path
) -> tuple[float, list[int], float]:
    """Start one ``storescu`` per folder at once and wait for all of them.

    Parameters
    ----------
    storescu
        dcmtk's storescu.
    port
        The receiver's port on 127.0.0.1.
    called_ae
        The receiver's AE title.
    folders
        One folder per sender; each is scanned recursively for ``*.dcm``.
    logdir
        Where the senders' output goes.

    Returns
    -------
    tuple[float, list[int], float]
        Wall seconds from the first start to the last exit, exit codes, and the
        senders' CPU seconds.
    """
    senders = [
        Process(
            [
                str(storescu),
                *("-aet", CALLING_AE, "-aec", called_ae),
                *("+sd", "+r", "+sp", "*.dcm"),
                *("127.0.0.1", str(port), str(folder)),
            ],
            log_path=logdir / f"storescu-{k}.log",
            grace_s=5,
        )
        for k, folder in enumerate(folders)
    ]
    cpu_before = children_cpu_seconds()
    try:
        start = time.perf_counter()
        for sender in senders:
            sender.start()
        codes = [sender.wait(SEND_TIMEOUT_S) for sender in senders]
        elapsed = time.perf_counter() - start
    finally:
        stop_all(senders)
    return elapsed, codes, children_cpu_seconds() - cpu_before


def one_run(
    receiver_name: str,
    mode: str,
    *,
    corpus: Corpus,
    storescu: Path,
    echoscu: Path,
    scratch: Path,
    keep: list[Receiver],
) -> RunResult:
    """Start a fresh receiver, send the corpus in ``mode``, count, stop it, drop its storage.

    Parameters
    ----------
    receiver_name
        ``bare``, ``node`` or ``orthanc``.
    mode
        ``single`` (one sender, all files) or ``concurrent`` (one sender per part).
    corpus
        What to send.
    storescu, echoscu
        dcmtk tools.
    scratch
        Parent of the run's temporary folder.
    keep
        Started receivers are appended here so the caller can stop them on error.

    Returns
    -------
    RunResult
        The measurement.
    """
    workdir = Path(tempfile.mkdtemp(prefix=f"{receiver_name}-{mode}-", dir=scratch))
    receiver = RECEIVER_CLASSES[receiver_name](workdir, echoscu)
    keep.append(receiver)
    folders = [corpus.root] if mode == "single" else list(corpus.parts)
    try:
        receiver.start()
        os.sync()  # earlier runs' dirty pages must not be flushed during this one
        cpu_before = receiver.cpu_seconds()
        others = OtherProcessesCpu()
        elapsed, codes, senders_cpu = send_all(
            storescu,
            port=receiver.port,
            called_ae=receiver.ae_title,
            folders=folders,
            logdir=workdir,
        )
        receiver_cpu = receiver.cpu_seconds() - cpu_before
        other_cpu = others.seconds(excluded_cpu_s=receiver_cpu + senders_cpu)
        error = ""
        try:
            stored = receiver.stored_instances()
        except (RuntimeError, subprocess.SubprocessError, OSError, ValueError) as exc:
            stored, error = -1, f"cannot count stored instances: {exc}"
        if any(codes):
            tails = [log_tail(workdir / f"storescu-{k}.log", 5) for k in range(len(folders))]
            error = f"storescu exit codes {codes}: " + " | ".join(tails)
        elif stored != corpus.instances and not error:
            error = f"{stored} of {corpus.instances} instances stored"
        return RunResult(
            receiver=receiver_name,
            mode=mode,
            senders=len(folders),
            instances_sent=corpus.instances,
            instances_stored=stored,
            seconds=elapsed,
            instances_per_s=corpus.instances / elapsed,
            mb_per_s=corpus.total_bytes / elapsed / 1e6,
            receiver_cpu_s=receiver_cpu,
            senders_cpu_s=senders_cpu,
            other_cpu_s=other_cpu,
            sender_exit_codes=codes,
            ok=not error,
            error=error,
        )
    finally:
        receiver.stop()
        keep.remove(receiver)
        shutil.rmtree(workdir, ignore_errors=True)
        os.sync()


# --- report --------------------------------------------------------------------------


def ratio(a: float, b: float) -> float:
    """``a / b``, or ``nan`` when ``b`` is not positive."""
    return a / b if b > 0 else float("nan")


def print_report(
    summaries: dict[tuple[str, str], Summary], corpus: Corpus, repeats: int
) -> dict[str, Any]:
    """Print the results table and the node's ratios; return the ratios.

    Parameters
    ----------
    summaries
        Per (receiver, mode).
    corpus
        The corpus sent.
    repeats
        Samples per receiver and mode.

    Returns
    -------
    dict[str, Any]
        Per mode: node/bare and node/Orthanc throughput ratios and target checks.
    """
    each_mb = corpus.total_bytes / corpus.instances / 1e6
    title = [
        f"C-STORE ingest: {corpus.instances} x {each_mb:.2f} MB US RGB (Explicit VR LE)",
        f"{corpus.total_bytes / 1e6:.0f} MB",
        f"loopback, {os.cpu_count()} CPUs",
    ]
    if repeats > 1:
        title.append(f"median of {repeats}")
    table = Table(title=", ".join(title))
    for column in ("mode", "receiver", "senders", "stored", "seconds", "inst/s", "MB/s"):
        table.add_column(column, justify="left" if column in ("mode", "receiver") else "right")
    if repeats > 1:
        table.add_column("inst/s min-max", justify="right")
    table.add_column("receiver CPU s", justify="right")
    table.add_column("storescu CPU s", justify="right")
    table.add_column("other CPU s", justify="right")
    table.add_column("vs bare", justify="right")
    table.add_column("check")
    for mode in MODES:
        bare = summaries.get(("bare", mode))
        for name in RECEIVERS:
            summary = summaries.get((name, mode))
            if summary is None or not summary.samples:
                continue
            rate = summary.median("instances_per_s")
            vs_bare = (
                f"{ratio(rate, bare.median('instances_per_s')):.2f}" if bare and bare.ok else "-"
            )
            status = "[green]ok[/green]" if summary.ok else "[red]FAILED[/red]"
            stored = ",".join(str(s.instances_stored) for s in summary.samples)
            table.add_row(
                mode,
                name,
                str(summary.samples[0].senders),
                stored,
                f"{summary.median('seconds'):.2f}",
                f"{rate:.1f}",
                f"{summary.median('mb_per_s'):.1f}",
                *([summary.spread("instances_per_s")] if repeats > 1 else []),
                f"{summary.median('receiver_cpu_s'):.1f}",
                f"{summary.median('senders_cpu_s'):.1f}",
                f"{summary.median('other_cpu_s'):.1f}",
                vs_bare,
                status,
            )
        table.add_section()
    console.print(table)

    ratios: dict[str, Any] = {}
    targets = Table(title="llnm-node against the targets (medians)")
    for column in ("mode", "node / bare", "node / Orthanc", "CPU node / bare"):
        targets.add_column(column, justify="right")
    for mode in MODES:
        node = summaries.get(("node", mode))
        bare = summaries.get(("bare", mode))
        orthanc = summaries.get(("orthanc", mode))
        if node is None or not node.ok:
            continue
        goals = TARGETS[mode]
        measured = {
            "vs_bare": (node, bare, "instances_per_s"),
            "vs_orthanc": (node, orthanc, "instances_per_s"),
            "cpu_vs_bare": (node, bare, "receiver_cpu_s"),
        }
        entry: dict[str, Any] = {}
        cells = [mode]
        for key, (ours, other, field_name) in measured.items():
            if other is None or not other.ok:
                cells.append("-")
                continue
            value = ratio(ours.median(field_name), other.median(field_name))
            entry[f"node_{key}"] = round(value, 3)
            goal = goals[key]
            if goal is None:
                cells.append(f"{value:.2f}")
                continue
            met = value <= goal if key.startswith("cpu") else value >= goal
            entry[f"meets_target_{key}"] = met
            sign = "<=" if key.startswith("cpu") else ">="
            verdict = "[green]met[/green]" if met else "[red]missed[/red]"
            cells.append(f"{value:.2f} ({sign} {goal}: {verdict})")
        ratios[mode] = entry
        targets.add_row(*cells)
    console.print(targets)
    console.print(
        "Durability: node = fsync of every file and its folder + SQLite (WAL, synchronous=FULL) "
        "before each response; Orthanc = its defaults "
        + ", ".join(f"{k}={v}" for k, v in ORTHANC_DEFAULTS_NOTED.items())
        + f", overrides {ORTHANC_OVERRIDES}; bare = plain write, no fsync, no database."
    )
    console.print(
        "Times are wall time from starting the first storescu to the last one exiting; "
        "MB = 10^6 bytes of DICOM files sent; CPU s = user+system seconds during the send; "
        "other CPU s = CPU used meanwhile by unrelated processes on this machine "
        "(large values mean a disturbed run)."
    )
    return ratios


# --- main ----------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options.

    Parameters
    ----------
    argv
        Arguments (default: ``sys.argv[1:]``).

    Returns
    -------
    argparse.Namespace
        The options.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", type=int, default=400, help="corpus size (default 400)")
    parser.add_argument("--studies", type=int, default=STUDIES, help="studies in the corpus")
    parser.add_argument("--seed", type=int, default=20261123, help="corpus seed")
    parser.add_argument(
        "--out", type=Path, default=REPO_ROOT / "benchmarks" / "out", help="results folder"
    )
    parser.add_argument(
        "--repeats", type=int, default=1, help="samples per receiver and mode (median reported)"
    )
    parser.add_argument(
        "--receivers",
        default=",".join(DEFAULT_RECEIVERS),
        help=f"comma-separated subset of {','.join(RECEIVERS)}",
    )
    parser.add_argument(
        "--modes", default=",".join(MODES), help="comma-separated subset of single,concurrent"
    )
    parser.add_argument("--bare-scp", nargs=2, metavar=("PORT", "DIR"), help=argparse.SUPPRESS)
    parser.add_argument("--node-unsynced", metavar="CONFIG", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.bare_scp is None and args.node_unsynced is None:
        if args.instances < SENDERS_CONCURRENT or args.studies < SENDERS_CONCURRENT:
            parser.error(f"need at least {SENDERS_CONCURRENT} instances and studies")
        if args.studies > args.instances:
            parser.error("more studies than instances")
        for option, allowed in (("receivers", RECEIVERS), ("modes", MODES)):
            chosen = [v.strip() for v in getattr(args, option).split(",") if v.strip()]
            if not chosen or set(chosen) - set(allowed):
                parser.error(f"--{option} must be a subset of {','.join(allowed)}")
            setattr(args, option, [v for v in allowed if v in chosen])
    return args


def environment(storescu: Path) -> dict[str, Any]:
    """Versions and machine facts for the JSON report.

    Parameters
    ----------
    storescu
        dcmtk's storescu.

    Returns
    -------
    dict[str, Any]
        The facts.
    """
    import pydicom
    import pynetdicom

    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "pydicom": pydicom.__version__,
        "pynetdicom": pynetdicom.__version__,
        "storescu": tool_version([str(storescu), "--version"]),
        "orthanc": tool_version([str(ORTHANC_BIN), "--version"]),
        "scratch": tempfile.gettempdir(),
        "load_average_at_start": LOAD_AT_START,
        "git": git_state(),
    }


def git_state() -> dict[str, Any]:
    """The commit the node was measured at and its locally modified source files.

    Returns
    -------
    dict[str, Any]
        ``commit`` and ``modified`` (paths under dicom_node/, db/, pipeline/).
    """

    def git(*argv: str) -> str:
        done = subprocess.run(
            ["git", *argv], cwd=REPO_ROOT, capture_output=True, text=True, timeout=30, check=False
        )
        return done.stdout if done.returncode == 0 else ""

    status = git("status", "--porcelain", "--", "dicom_node", "db", "pipeline")
    return {
        "commit": git("rev-parse", "HEAD").strip() or "unknown",
        "modified": [line[3:] for line in status.splitlines() if line.strip()],
    }


@contextlib.contextmanager
def scratch_folder() -> Iterator[Path]:
    """A temporary folder for the runs, removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="llnm-ingest-bench-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    """Build the corpus, run every receiver in every mode, report.

    Parameters
    ----------
    argv
        Command-line arguments.

    Returns
    -------
    int
        0 when every run sent and stored every instance, else 1.
    """
    args = parse_args(argv)
    if args.bare_scp is not None:
        run_bare_scp(int(args.bare_scp[0]), Path(args.bare_scp[1]))
        return 0
    if args.node_unsynced is not None:
        run_node_unsynced(args.node_unsynced)
        return 0

    began = time.perf_counter()
    LOAD_AT_START[:] = os.getloadavg()
    # Turn SIGTERM into SystemExit so that the finally blocks stop every child process.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    storescu = find_dcmtk_tool("storescu")
    echoscu = find_dcmtk_tool("echoscu")
    if "orthanc" in args.receivers and not ORTHANC_BIN.is_file():
        raise SystemExit(f"{ORTHANC_BIN} not found (apt-get install orthanc)")
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    corpus_dir = out / f"corpus-us-rgb-{args.instances}x{args.studies}-seed{args.seed}"
    corpus = build_corpus(
        corpus_dir, instances=args.instances, studies=args.studies, seed=args.seed
    )
    warm_page_cache(corpus)
    state = git_state()
    console.print(
        f"node: commit {state['commit'][:12]}"
        + (f" with local changes in {', '.join(state['modified'])}" if state["modified"] else "")
    )
    if LOAD_AT_START[0] > 0.5:
        console.print(
            f"[yellow]warning:[/yellow] load average {LOAD_AT_START[0]:.2f} at start; "
            "other processes on this machine will skew the numbers"
        )
    console.print(
        f"corpus: {corpus.instances} instances, {corpus.studies} studies, "
        f"{corpus.total_bytes / 1e6:.1f} MB in {corpus.root} "
        f"(built/checked in {time.perf_counter() - began:.1f} s)"
    )

    summaries: dict[tuple[str, str], Summary] = {}
    started: list[Receiver] = []
    try:
        with scratch_folder() as scratch:
            for _ in range(args.repeats):
                for mode in args.modes:
                    for name in args.receivers:
                        label = f"{name:<13} {mode:<10}"
                        with console.status(f"running {label}"):
                            result = one_run(
                                name,
                                mode,
                                corpus=corpus,
                                storescu=storescu,
                                echoscu=echoscu,
                                scratch=scratch,
                                keep=started,
                            )
                        summaries.setdefault((name, mode), Summary(name, mode)).samples.append(
                            result
                        )
                        mark = "[green]ok[/green]" if result.ok else f"[red]{result.error}[/red]"
                        console.print(
                            f"{label} {result.seconds:6.2f} s  {result.instances_per_s:6.1f} inst/s"
                            f"  {result.mb_per_s:6.1f} MB/s  {mark}"
                        )
    finally:
        for receiver in started:
            receiver.stop()

    ratios = print_report(summaries, corpus, args.repeats)
    total = time.perf_counter() - began
    ok = all(s.ok for s in summaries.values())
    report = {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": [Path(sys.executable).name, *sys.argv],
        "environment": environment(storescu),
        "corpus": {
            "instances": corpus.instances,
            "studies": corpus.studies,
            "total_bytes": corpus.total_bytes,
            "pixel_bytes_per_instance": corpus.pixel_bytes_per_instance,
            "rows": ROWS,
            "columns": COLUMNS,
            "photometric": "RGB",
            "transfer_syntax": "1.2.840.10008.1.2.1",
            "path": str(corpus.root),
        },
        "receivers": {
            "node": "llnm-node serve, SQLite, default durability (fsync + synchronous=FULL)",
            "orthanc": {"overrides": ORTHANC_OVERRIDES, "defaults_noted": ORTHANC_DEFAULTS_NOTED},
            "bare": (
                "pynetdicom SCP via dicom_node.network.listener.build_ae, write only "
                "(no fsync, no DB)"
            ),
        },
        "repeats": args.repeats,
        "results": [
            {
                "receiver": s.receiver,
                "mode": s.mode,
                "ok": s.ok,
                "median_seconds": s.median("seconds"),
                "median_instances_per_s": s.median("instances_per_s"),
                "median_mb_per_s": s.median("mb_per_s"),
                "samples": [asdict(sample) for sample in s.samples],
            }
            for s in summaries.values()
        ],
        "node_ratios": ratios,
        "targets": TARGETS,
        "total_seconds": round(total, 1),
    }
    result_path = out / "ingest_throughput.json"
    result_path.write_text(json.dumps(report, indent=2))
    console.print(f"results: {result_path}; whole benchmark took {total:.0f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        console.print("[red]interrupted[/red]")
        sys.exit(130)
