"""What the tests and benchmarks share to run things: ports, waiting, child processes, TOML.

Benchmarks import this module too (they put ``tests/`` on ``sys.path``), so it
depends on nothing of pytest's.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path, PurePath
from types import TracebackType
from typing import Any, Self, TypeVar

import tomli_w

T = TypeVar("T")

KILL_WAIT_S = 10.0  # after SIGKILL a process is gone at once; this only bounds a hung wait


def free_port() -> int:
    """A TCP port on loopback that nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def accepts_connections(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something listens on ``host:port`` (a TCP connect succeeds)."""
    try:
        socket.create_connection((host, port), timeout=0.5).close()
    except OSError:
        return False
    return True


def wait_for(
    predicate: Callable[[], T],
    *,
    timeout: float,
    what: str,
    interval: float = 0.1,
    describe: Callable[[], str] | None = None,
) -> T:
    """Call ``predicate`` every ``interval`` seconds until it returns a true value; return that.

    After ``timeout`` seconds raise ``AssertionError`` naming ``what``, followed
    by the text of ``describe`` (a process log, the last rows seen) if given.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            detail = "" if describe is None else f"\n{describe()}"
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}{detail}")
        time.sleep(interval)


def log_tail(path: Path, lines: int = 30) -> str:
    """The last ``lines`` lines of a log file, for failure messages ("" if it is missing)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _toml_ready(value: Any) -> Any:
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): _toml_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_toml_ready(v) for v in value]
    return value


def write_toml(path: Path, data: Mapping[str, Any]) -> Path:
    """Write ``data`` as a TOML document (paths become strings); returns ``path``."""
    path.write_text(tomli_w.dumps(_toml_ready(data)), encoding="utf-8")
    return path


def environ_without(prefix: str) -> dict[str, str]:
    """This process's environment less the variables whose names start with ``prefix``."""
    return {k: v for k, v in os.environ.items() if not k.startswith(prefix)}


class Process:
    """A child process whose stdout and stderr are appended to a log file.

    The constructor starts nothing; ``start`` may be called again once the
    process has exited (each start is marked in the log). Used as a context
    manager it is started on entry and stopped on exit.

    Parameters
    ----------
    argv
        The command line.
    log_path
        The log file (appended to).
    env, cwd
        Environment and working folder of the child (default: this process's).
    own_session
        Start it in a new session, so that ``kill`` reaches its whole process group.
    grace_s
        Seconds ``stop`` waits after SIGTERM before SIGKILL.
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        own_session: bool = False,
        grace_s: float = 30.0,
    ) -> None:
        self.argv = [str(a) for a in argv]
        self.log_path = log_path
        self.env = None if env is None else dict(env)
        self.cwd = cwd
        self.own_session = own_session
        self.grace_s = grace_s
        self._popen: subprocess.Popen[bytes] | None = None

    def start(self) -> Self:
        """Start the process (returns at once)."""
        assert not self.running(), f"{self.argv[0]} is already running"
        with self.log_path.open("ab") as log:
            log.write(f"=== {time.strftime('%H:%M:%S')} {shlex.join(self.argv)}\n".encode())
            log.flush()
            self._popen = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
                cwd=self.cwd,
                start_new_session=self.own_session,
            )
        return self

    @property
    def popen(self) -> subprocess.Popen[bytes]:
        """The running (or last) child; an ``AssertionError`` if it was never started."""
        assert self._popen is not None, f"{self.argv[0]} was never started"
        return self._popen

    @property
    def pid(self) -> int:
        """The child's process id."""
        return self.popen.pid

    def running(self) -> bool:
        """Whether the child was started and has not exited."""
        return self._popen is not None and self._popen.poll() is None

    def wait(self, timeout: float) -> int:
        """Wait for the child to exit; its exit code (``subprocess.TimeoutExpired`` if not)."""
        return self.popen.wait(timeout)

    def wait_until(
        self, predicate: Callable[[], T], *, timeout: float, what: str, interval: float = 0.2
    ) -> T:
        """``wait_for`` while the child lives: its exit or the timeout fail with its log tail."""

        def alive_and(check: Callable[[], T]) -> T:
            if not self.running():
                code = None if self._popen is None else self._popen.returncode
                raise AssertionError(
                    f"{self.argv[0]} exited ({code}) before {what}\n{self.log_tail()}"
                )
            return check()

        return wait_for(
            lambda: alive_and(predicate),
            timeout=timeout,
            what=what,
            interval=interval,
            describe=self.log_tail,
        )

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after ``grace_s``; the exit code (None if never started)."""
        stop_all([self])
        return None if self._popen is None else self._popen.returncode

    def kill(self) -> int:
        """SIGKILL the child (its process group with ``own_session``); its exit code."""
        popen = self.popen
        with contextlib.suppress(ProcessLookupError):  # already reaped
            if self.own_session:
                os.killpg(popen.pid, signal.SIGKILL)
            else:
                popen.kill()
        return popen.wait(KILL_WAIT_S)

    def log(self) -> str:
        """Everything the child (and each earlier start) wrote so far."""
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of the log."""
        return log_tail(self.log_path, lines)

    def __enter__(self) -> Self:
        return self if self.running() else self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def stop_all(processes: Iterable[Process]) -> None:
    """SIGTERM every running process at once, then SIGKILL each still there after its grace."""
    running = [p for p in processes if p.running()]
    signalled = time.monotonic()
    for process in running:
        process.popen.terminate()
    for process in running:
        try:
            process.wait(max(0.0, signalled + process.grace_s - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
