"""Peak memory of ``llnm-node serve`` under concurrent hostile inputs.

Starts ``llnm-node serve`` (SQLite, its default limits, no job ever queued),
sends a few ordinary instances to warm it up, reads its peak resident memory
(``VmHWM`` in ``/proc/<pid>/status``), then opens ``--associations`` (default
16, the node's ``dicom.max_associations``) simultaneous associations that each
send every hostile input below, and reads the peak again:

* ``deflate_bomb``: a Deflated Explicit VR Little Endian data set whose Pixel
  Data is ``--bomb-mib`` (default 1024) MiB of zeros, about 1 MB on the wire;
* ``deflate_just_under``: a deflated data set that inflates to just under the
  node's 64 MiB limit (the worst it must inflate to read; it is taken);
* ``nested_3000``: Content Sequences nested 3,000 deep;
* ``never_closed``: sequences of undefined length that never close;
* ``element_past_end``: a Text Value declared 0x7FFFFFF0 bytes long.

The target (issue "Hardening"): the peak rises by at most 1 GiB, every hostile
input but the one just under the limit gets a refusal status, and the node
still answers C-ECHO.

Run::

    .venv/bin/python benchmarks/hostile_memory.py [--associations 16] [--bomb-mib 1024]
        [--out benchmarks/out/hostile_memory.json]
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    generate_uid,
)
from pynetdicom import AE, _config
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from rich.console import Console
from rich.table import Table

from phantoms import make_case
from phantoms.hostile import OVERLONG_TEXT_VALUE, before_pixels, nested_sequences

NODE_AE = "LLNM_NODE"
CHUNK = 1 << 20


def _dataset_bytes(dataset: Dataset) -> bytes:
    """``dataset`` encoded explicit VR little endian, without file meta."""
    bare = copy.deepcopy(dataset)
    bare.file_meta = FileMetaDataset()  # no file meta, so nothing says "deflate"
    buffer = io.BytesIO()
    bare.save_as(buffer, implicit_vr=False, little_endian=True)
    return buffer.getvalue()


def _part10(
    path: Path, like: Dataset, syntax: str, body: Callable[[io.BufferedWriter], object]
) -> Path:
    """A Part 10 file: ``like``'s file meta with ``syntax``, then what ``body`` writes."""
    meta = copy.deepcopy(like.file_meta)
    meta.TransferSyntaxUID = UID(syntax)
    with path.open("wb") as fp:
        fp.write(b"\0" * 128 + b"DICM")
        header = io.BytesIO()
        write_file_meta_info(header, meta, enforce_standard=True)  # type: ignore[arg-type]
        fp.write(header.getvalue())
        body(fp)
    return path


def _without_pixels(like: Dataset) -> bytes:
    """``like``'s data set bytes before its Pixel Data."""
    without = copy.deepcopy(like)
    del without.PixelData
    return _dataset_bytes(without)


def deflated_zeros(path: Path, like: Dataset, mib: int) -> Path:
    """A deflated data set whose Pixel Data is ``mib`` MiB of zeros, deflated as a stream."""
    head = _without_pixels(like)
    length = mib << 20

    def body(fp: io.BufferedWriter) -> None:
        deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
        fp.write(deflater.compress(head))
        fp.write(deflater.compress(struct.pack("<HH2sHL", 0x7FE0, 0x0010, b"OB", 0, length)))
        zeros = bytes(CHUNK)
        for _ in range(length // CHUNK):
            fp.write(deflater.compress(zeros))
        fp.write(deflater.flush())

    return _part10(path, like, DeflatedExplicitVRLittleEndian, body)


def _explicit(path: Path, like: Dataset, inserted: bytes) -> Path:
    """``like`` explicit VR little endian with ``inserted`` before its Pixel Data."""
    data = before_pixels(_dataset_bytes(like), inserted)
    return _part10(path, like, ExplicitVRLittleEndian, lambda fp: fp.write(data))


def hostile_files(folder: Path, like: Dataset, bomb_mib: int) -> dict[str, Path]:
    """Every hostile input of the module docstring, written into ``folder``."""

    def own(name: str) -> Dataset:  # each input its own SOP Instance UID: never a duplicate
        dataset = copy.deepcopy(like)
        dataset.SOPInstanceUID = generate_uid(entropy_srcs=[name])
        dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
        return dataset

    return {
        "deflate_bomb": deflated_zeros(folder / "bomb.dcm", own("bomb"), bomb_mib),
        "deflate_just_under": deflated_zeros(folder / "under.dcm", own("under"), 63),
        "nested_3000": _explicit(
            folder / "nest.dcm", own("nest"), nested_sequences(3000, closed=True)
        ),
        "never_closed": _explicit(
            folder / "open.dcm", own("open"), nested_sequences(5, closed=False)
        ),
        "element_past_end": _explicit(folder / "past.dcm", own("past"), OVERLONG_TEXT_VALUE),
    }


def peak_rss_mib(pid: int) -> float:
    """The process's peak resident set size (VmHWM), MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc status")


def _associate(port: int, contexts: set[tuple[str, str]]) -> object:
    ae = AE(ae_title="HOSTILE")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 120
    for sop_class, syntax in sorted(contexts):
        ae.add_requested_context(sop_class, syntax)
    ae.add_requested_context(Verification)
    return ae.associate("127.0.0.1", port, ae_title=NODE_AE)


def send(port: int, files: dict[str, Path], sop_class: str) -> dict[str, int | None]:
    """C-STORE each file's stored bytes on one association; the status of each."""
    contexts = {
        (sop_class, str(ExplicitVRLittleEndian)),
        (sop_class, str(DeflatedExplicitVRLittleEndian)),
    }
    assoc = _associate(port, contexts)
    statuses: dict[str, int | None] = {}
    try:
        for name, path in files.items():
            try:
                response = assoc.send_c_store(path)  # type: ignore[attr-defined]
                statuses[name] = int(response.Status) if "Status" in response else None
            except (RuntimeError, OSError, ValueError):
                statuses[name] = None
    finally:
        if assoc.is_established:  # type: ignore[attr-defined]
            assoc.release()  # type: ignore[attr-defined]
    return statuses


def echo(port: int) -> bool:
    assoc = _associate(port, set())
    if not assoc.is_established:  # type: ignore[attr-defined]
        return False
    try:
        response = assoc.send_c_echo()  # type: ignore[attr-defined]
        return int(response.Status) == 0
    finally:
        assoc.release()  # type: ignore[attr-defined]


def start_node(root: Path) -> tuple[subprocess.Popen[bytes], int]:
    """``llnm-node serve`` on a free port with no API and jobs that never start."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    config = root / "node.toml"
    config.write_text(
        f'data_dir = "{root / "data"}"\n'
        f'[dicom]\nhost = "127.0.0.1"\nport = {port}\nae_title = "{NODE_AE}"\n'
        "[completion]\nquiet_seconds = 86400\n[api]\nenabled = false\n",
        encoding="utf-8",
    )
    exe = Path(sys.executable).with_name("llnm-node")
    log = (root / "serve.log").open("wb")
    process = subprocess.Popen([str(exe), "serve", "--config", str(config)], stdout=log, stderr=log)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if echo(port):
                return process, port
        except (OSError, RuntimeError):
            pass
        time.sleep(0.5)
    process.kill()
    raise RuntimeError(f"serve did not answer C-ECHO; see {root / 'serve.log'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--associations", type=int, default=16)
    parser.add_argument("--bomb-mib", type=int, default=1024)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    console = Console()
    _config.STORE_SEND_CHUNKED_DATASET = True  # the files' bytes exactly as written
    with tempfile.TemporaryDirectory(prefix="llnm-hostile-") as scratch:
        root = Path(scratch)
        case = make_case(1)
        like = case.datasets[0]
        files = hostile_files(root, like.copy(), args.bomb_mib)
        sizes = {name: path.stat().st_size for name, path in files.items()}
        process, port = start_node(root)
        try:
            warm = root / "warm"
            warm.mkdir()
            ordinary = {}
            for n, dataset in enumerate(make_case(s).datasets[0] for s in range(2, 7)):
                dataset.save_as(warm / f"{n}.dcm", enforce_file_format=True)
                ordinary[f"ordinary_{n}"] = warm / f"{n}.dcm"
            warm_statuses = send(port, ordinary, str(like.SOPClassUID))
            before = peak_rss_mib(process.pid)
            started = time.perf_counter()
            with ThreadPoolExecutor(args.associations) as pool:
                results = list(
                    pool.map(
                        lambda _: send(port, files, str(like.SOPClassUID)),
                        range(args.associations),
                    )
                )
            seconds = time.perf_counter() - started
            after = peak_rss_mib(process.pid)
            alive = process.poll() is None and echo(port)
        finally:
            process.terminate()
            process.wait(timeout=30)
    table = Table("input", "bytes sent", "statuses (all associations)")
    for name in files:
        statuses = sorted({f"0x{r[name]:04X}" if r[name] is not None else "none" for r in results})
        table.add_row(name, str(sizes[name]), ", ".join(statuses))
    console.print(table)
    rise = after - before
    warmed = sorted({str(v) for v in warm_statuses.values()})
    console.print(
        f"{args.associations} associations x {len(files)} hostile inputs in {seconds:.1f} s; "
        f"peak resident memory {before:.0f} MiB -> {after:.0f} MiB (+{rise:.0f} MiB; "
        f"target at most +1024); warm-up statuses {warmed}; "
        f"node answers C-ECHO afterwards: {alive}"
    )
    report = {
        "associations": args.associations,
        "bomb_mib": args.bomb_mib,
        "bytes_sent": sizes,
        "statuses": results,
        "peak_rss_mib_before": round(before, 1),
        "peak_rss_mib_after": round(after, 1),
        "rise_mib": round(rise, 1),
        "seconds": round(seconds, 1),
        "echo_after": alive,
    }
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
