"""daemon/storage/files.py (the one atomic write), private_db.migrate_schema and processes.py."""

from __future__ import annotations

import errno
import json
import os
import sqlite3
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from twinlock.daemon.errors import AuditError
from twinlock.daemon.processes import kill_group, output_tail
from twinlock.daemon.storage import files
from twinlock.daemon.storage.files import atomic_write, atomic_write_json, atomic_writer, fsync_dir
from twinlock.daemon.storage.private_db import migrate_schema


def test_an_error_mid_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "gallery.json"
    target.write_bytes(b"old and whole")
    with pytest.raises(RuntimeError, match="boom"), atomic_writer(target, 0o600) as handle:
        handle.write(b"new but half")
        raise RuntimeError("boom")
    assert target.read_bytes() == b"old and whole"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gallery.json"]


def test_a_process_killed_mid_write_never_leaves_a_partial_target(tmp_path: Path) -> None:
    """A real crash: the writer dies (os._exit, no clean-up) after writing half of the data."""
    target = tmp_path / "model.json"
    target.write_bytes(b"old and whole")
    script = textwrap.dedent(f"""
        import os
        from twinlock.daemon.storage.files import atomic_writer
        with atomic_writer({str(target)!r}, 0o644) as handle:
            handle.write(b"x" * 100_000)
            handle.flush()
            os._exit(3)
    """)
    run = subprocess.run([sys.executable, "-c", script], check=False, timeout=60)
    assert run.returncode == 3
    assert target.read_bytes() == b"old and whole"
    left = [p for p in tmp_path.iterdir() if p != target]
    assert all(p.name.startswith(".model.json.") for p in left), left  # hidden: drops skip it


@pytest.mark.parametrize("mode", [0o600, 0o640, 0o644])
def test_the_mode_is_applied_whatever_the_umask(tmp_path: Path, mode: int) -> None:
    for umask in (0o000, 0o077):
        target = tmp_path / f"file-{umask:o}"
        old = os.umask(umask)
        try:
            atomic_write(target, b"data", mode)
        finally:
            os.umask(old)
        assert stat.S_IMODE(target.stat().st_mode) == mode
        atomic_write(target, b"again", mode)  # replacing keeps it too
        assert stat.S_IMODE(target.stat().st_mode) == mode


def test_mode_none_leaves_the_umask_mode(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        atomic_write(tmp_path / "bundle", b"data", None)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "bundle").stat().st_mode) == 0o644


@pytest.fixture()
def sync_events(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Every fsync and rename files.py makes, as (call, inode of the file or folder)."""
    events: list[tuple[str, int]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append(("fsync", os.fstat(fd).st_ino))
        real_fsync(fd)

    def replace(src: str | Path, dst: str | Path) -> None:
        events.append(("replace", os.stat(src).st_ino))
        real_replace(src, dst)

    monkeypatch.setattr(files.os, "fsync", fsync)
    monkeypatch.setattr(files.os, "replace", replace)
    return events


def test_data_is_synced_before_the_rename_and_the_folder_after(
        tmp_path: Path, sync_events: list[tuple[str, int]]) -> None:
    target = tmp_path / "anchors.json"
    atomic_write_json(target, {"a": 1}, 0o600)
    file_ino, folder_ino = target.stat().st_ino, tmp_path.stat().st_ino
    assert sync_events == [("fsync", file_ino), ("replace", file_ino), ("fsync", folder_ino)]


def test_a_file_another_library_wrote_is_synced_like_one_written_here(
        tmp_path: Path, sync_events: list[tuple[str, int]]) -> None:
    """durable_replace (Keras checkpoints): the same order for a file written by path."""
    written, target = tmp_path / "last.tmp.weights.h5", tmp_path / "last.weights.h5"
    target.write_bytes(b"epoch 1")
    written.write_bytes(b"epoch 2")
    file_ino = written.stat().st_ino
    files.durable_replace(written, target)
    assert target.read_bytes() == b"epoch 2" and not written.exists()
    assert sync_events == [("fsync", file_ino), ("replace", file_ino),
                           ("fsync", tmp_path.stat().st_ino)]


def test_a_folder_that_cannot_be_synced_is_accepted_other_errors_are_not(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(code: int):  # type: ignore[no-untyped-def]
        def fsync(fd: int) -> None:
            raise OSError(code, os.strerror(code))
        return fsync

    monkeypatch.setattr(files.os, "fsync", refuse(errno.EINVAL))
    fsync_dir(tmp_path)  # a FAT card or share: nothing more can be asked of it
    monkeypatch.setattr(files.os, "fsync", refuse(errno.EIO))
    with pytest.raises(OSError, match="Input/output"):
        fsync_dir(tmp_path)


def test_json_variant_writes_numpy_scalars_and_refuses_arrays(tmp_path: Path) -> None:
    target = tmp_path / "report.json"
    atomic_write_json(target, {"auc": np.float32(0.5), "n": np.int64(3), "p": Path("/x")}, 0o644)
    assert json.loads(target.read_text()) == {"auc": 0.5, "n": 3, "p": "/x"}
    assert target.read_text().endswith("\n")
    with pytest.raises(TypeError, match="embeddings never go"):
        atomic_write_json(tmp_path / "bad.json", {"e": np.zeros(3)}, 0o644)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


def test_migration_steps_each_commit_with_their_version(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "db", isolation_level=None)

    def broken(c: sqlite3.Connection) -> None:
        c.execute("CREATE TABLE half (x)")
        raise sqlite3.OperationalError("power cut")

    steps = {1: lambda c: c.execute("CREATE TABLE one (x)"), 2: broken}
    with pytest.raises(sqlite3.OperationalError):
        migrate_schema(conn, 2, steps, AuditError, "test db")
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 1  # step 1 kept, step 2 undone
    names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    assert names == {"one"}
    steps[2] = lambda c: c.execute("CREATE TABLE two (x)")
    assert migrate_schema(conn, 2, steps, AuditError, "test db") == 1
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 2
    with pytest.raises(AuditError, match="schema 2, newer"):
        migrate_schema(conn, 1, steps, AuditError, "test db")


def test_a_new_file_is_created_at_once_when_a_create_step_is_given(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "db", isolation_level=None)
    made: list[str] = []
    assert migrate_schema(conn, 3, {3: lambda c: made.append("upgrade")}, AuditError, "db",
                          create=lambda c: made.append("create")) == 0
    assert made == ["create"]
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 3


def test_kill_group_kills_grandchildren_that_hold_the_pipe(tmp_path: Path) -> None:
    """A shell's child keeps stdout open: killing the shell alone would leave a reader hanging."""
    proc = subprocess.Popen(["sh", "-c", "sleep 300 & echo $!; wait"],
                            stdout=subprocess.PIPE, start_new_session=True)
    assert proc.stdout is not None
    grandchild = int(proc.stdout.readline())
    kill_group(proc, reap=True)
    assert proc.returncode == -9
    assert proc.stdout.closed
    deadline = time.monotonic() + 30
    while _alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(grandchild), "the shell's child outlived kill_group"


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for its reaper is dead)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def test_output_tail_keeps_the_last_lines_and_characters() -> None:
    text = "\n".join(f"line {i}" for i in range(30)) + "\n\n"
    assert output_tail(text, 2000, max_lines=2) == "line 28\nline 29"
    assert output_tail(text.encode(), 7) == "line 29"
    assert output_tail(None, 100) == ""



def test_closing_closes_on_the_way_out_and_lets_the_error_through(tmp_path: Path) -> None:
    """``with`` from daemon/storage/closing.py: the thing itself is handed in, ``close()`` runs
    once after the block even when the block raises, and the error is not swallowed."""
    from twinlock.daemon.storage.audit import AuditLog
    from twinlock.daemon.storage.closing import Closing

    class Counted(Closing):
        closes = 0

        def close(self) -> None:
            self.closes += 1

    thing = Counted()
    with pytest.raises(KeyError), thing as entered:
        assert entered is thing
        raise KeyError("inside")
    assert thing.closes == 1
    with AuditLog(tmp_path / "audit.db") as log:  # the audit log takes its with from there
        assert isinstance(log, Closing)


def test_private_store_rolls_back_a_failed_write_and_refuses_once_closed(tmp_path: Path) -> None:
    """daemon/storage/private_db.PrivateStore, through the real enrolment store: a write that
    fails inside its transaction leaves nothing behind, sqlite's own errors and use after
    close() come out as the store's error class, naming the store."""
    from twinlock.trainer.errors import EnrolmentError
    from twinlock.trainer.household.enroll_store import EnrolmentStore

    store = EnrolmentStore(tmp_path / "enrolment.db")
    with pytest.raises(KeyError), store._tx(write=True) as conn:
        conn.execute("CREATE TABLE scratch (x INTEGER)")
        raise KeyError("half way")
    with store._tx() as conn:
        assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'scratch'").fetchall() == []
    with pytest.raises(EnrolmentError, match="enrolment store .*no such table"), store._tx() as conn:
        conn.execute("SELECT * FROM no_such_table")
    store.close()
    with pytest.raises(EnrolmentError, match="enrolment store .* is closed"):
        store.has_user("alice")
