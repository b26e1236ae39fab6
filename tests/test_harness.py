"""The shared harness: waiting, child processes and TOML behave as the tests rely on."""

from __future__ import annotations

import itertools
import signal
import socket
import sys
import tomllib
from pathlib import Path

import pytest
from harness import Process, free_port, wait_for, write_toml


def test_free_port_can_be_bound() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", free_port()))


def test_wait_for_returns_the_first_true_value_and_times_out_with_the_description() -> None:
    counter = itertools.count()
    found = wait_for(lambda: next(counter) >= 2 and "ready", timeout=5, what="x", interval=0)
    assert found == "ready"
    with pytest.raises(AssertionError, match=r"(?s)waiting for the moon.*last seen: nothing"):
        wait_for(
            lambda: False, timeout=0.05, what="the moon", describe=lambda: "last seen: nothing"
        )


def test_a_process_deaf_to_sigterm_is_killed_after_its_grace(tmp_path: Path) -> None:
    deaf = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('up', flush=True); time.sleep(60)"
    )
    with Process([sys.executable, "-c", deaf], log_path=tmp_path / "deaf.log", grace_s=0.5) as proc:
        proc.wait_until(lambda: "up" in proc.log().splitlines()[1:], timeout=30, what="start")
    assert proc.popen.returncode == -signal.SIGKILL
    assert not proc.running()


def test_wait_until_fails_with_the_log_when_the_process_exits(tmp_path: Path) -> None:
    proc = Process(
        [sys.executable, "-c", "print('bad config'); raise SystemExit(3)"],
        log_path=tmp_path / "short.log",
    ).start()
    with pytest.raises(AssertionError, match=r"(?s)exited \(3\) before it listens.*bad config"):
        proc.wait_until(lambda: False, timeout=30, what="it listens", interval=0.01)
    assert proc.stop() == 3


def test_write_toml_writes_paths_as_strings(tmp_path: Path) -> None:
    data = {"data_dir": tmp_path / "data", "dicom": {"port": 4000, "callers": [{"ae": "A"}]}}
    written = write_toml(tmp_path / "node.toml", data)
    assert tomllib.loads(written.read_text()) == {
        "data_dir": str(tmp_path / "data"),
        "dicom": {"port": 4000, "callers": [{"ae": "A"}]},
    }
