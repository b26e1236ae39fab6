"""The SQLite writer turn: one writer at a time over processes, freed when its holder dies."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

from sqlalchemy import text

from db.migrate import upgrade
from db.session import Database, WriterTurn

# A second process that takes the writer turn (and nothing of SQLite's), says so, and holds
# it until it is killed.
_HOLDER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from db.session import WriterTurn
    with WriterTurn(Path(sys.argv[1])):
        print("held", flush=True)
        time.sleep(600)
    """
)


def test_a_writer_waits_for_another_process_and_goes_on_when_it_dies(tmp_path: Path) -> None:
    database = Database(f"sqlite:///{tmp_path / 'node.sqlite'}")
    upgrade(database)
    lock_file = tmp_path / "node.sqlite.writer-lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(lock_file)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        written = threading.Event()

        def write() -> None:
            with database.session() as session:
                session.execute(text("CREATE TABLE probe (x INTEGER)"))
            written.set()

        writer = threading.Thread(target=write)
        writer.start()
        assert not written.wait(1.0)  # SQLite itself is free: the writer waits for the turn
        killed_at = time.monotonic()
        holder.kill()
        assert written.wait(10.0)
        waited_after_kill = time.monotonic() - killed_at
        writer.join()
    finally:
        holder.kill()
        holder.wait()
    assert waited_after_kill < 1.0  # the kernel frees a dead process's lock
    with database.session() as session:
        assert session.execute(text("SELECT count(*) FROM probe")).scalar_one() == 0
    database.dispose()


def _free_for_another_process(lock_file: Path) -> bool:
    probe = "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR)\n"
    probe += (
        "try:\n    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\nexcept OSError:\n    sys.exit(1)"
    )
    return (
        subprocess.run([sys.executable, "-c", probe, str(lock_file)], check=False).returncode == 0
    )


def test_the_turn_is_reentrant_and_held_until_the_outermost_exit(tmp_path: Path) -> None:
    lock_file = tmp_path / "node.sqlite.writer-lock"
    turn = WriterTurn(lock_file)
    with turn:
        with turn:
            assert not _free_for_another_process(lock_file)
        assert not _free_for_another_process(lock_file)
    assert _free_for_another_process(lock_file)
    turn.close()
