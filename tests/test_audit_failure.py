"""No record, no unlock: a door whose audit log cannot be written stays locked and keeps running.

The audit log is made full for real: SQLite's ``max_page_count`` caps the file, and every write
then fails with SQLite's own "database or disk is full", as on a full card.
"""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest
import yaml
from daemon_helpers import CLIP, Doorway, enrol_miranda, liveness_off, scored, write_config
from gpiozero.pins.mock import MockFactory

from twinlock.daemon.config.loader import parse_config
from twinlock.daemon.door.actions import LogAction
from twinlock.daemon.door.notify import Notifier
from twinlock.daemon.door.service import Daemon
from twinlock.daemon.errors import AuditError
from twinlock.daemon.recognition.verify import FrameVerdict
from twinlock.daemon.storage.audit import AuditLog

RESIDENT = FrameVerdict("lin", "lin", 0.9, 1.0)


def fill(audit: AuditLog) -> None:
    """Cap the file at its current size and write until SQLite says it is full."""
    conn = audit._conn
    assert conn is not None
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count = {pages}")
    with pytest.raises(AuditError, match="full"):
        for _ in range(10_000):
            audit.record("fault", "deny", "filler " * 50)


def free(audit: AuditLog) -> None:
    assert audit._conn is not None
    audit._conn.execute("PRAGMA max_page_count = 1000000000")


class CheckingAction(LogAction):
    """The log action, noting how many unlock records were committed when each unlock began."""

    def __init__(self, audit: AuditLog) -> None:
        super().__init__()
        self.audit = audit
        self.records_at_unlock: list[int] = []

    def unlock(self, user: str) -> None:
        self.records_at_unlock.append(len(self.audit.query(event="unlock")))
        super().unlock(user)


def knock(d: Doorway, start: float, frames: int = 5) -> float:
    for i in range(frames):
        d.step(start + i * 0.1, i, scored(RESIDENT, int(start * 100) + i))
    return start + frames * 0.1 + 20


def test_the_unlock_is_committed_before_the_door_opens_and_never_without_it(
        tmp_path: Path) -> None:
    cfg = parse_config(yaml.safe_dump({"action": {"type": "log", "cooldown_seconds": 5},
                                       **liveness_off()}))
    d = Doorway(cfg, tmp_path / "audit.db")
    audit = d.audit
    action = d.action = CheckingAction(audit)
    fill(audit)
    t = knock(d, 1000.0)  # the resident, recognised, while no record can be written
    assert action.calls == [], "the door opened without an audit record"
    assert d.records.failures >= 1 and "audit log" in d.door.last_decision
    free(audit)
    knock(d, t)
    assert len(action.calls) == 1
    assert action.records_at_unlock == [1], "the unlock record must be committed first"


@pytest.mark.data
@pytest.mark.slow
def test_a_full_audit_log_keeps_the_running_door_locked_and_says_so(
        tmp_path: Path, door_model: Path, examples_dir: Path, mock_pins: MockFactory) -> None:
    enrol_miranda(door_model, examples_dir, tmp_path / "gallery.json")
    config = write_config(tmp_path / "config.yaml", tmp_path / "state", door_model,
                          tmp_path / "gallery.json", str(examples_dir / CLIP),
                          camera={"realtime": False}, **liveness_off())
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(str(tmp_path / "notify.sock"))
    server.setblocking(False)
    try:
        daemon = Daemon(config, Notifier(str(tmp_path / "notify.sock")))
        fill(daemon.audit)
        assert daemon.run() == 0, "the daemon plays the whole clip and stops normally"
        messages = []
        while True:
            try:
                messages.append(server.recv(65536).decode())
            except BlockingIOError:
                break
    finally:
        server.close()
    assert daemon.camera.stats["frames"] == 275
    pin = mock_pins.pin(17)
    assert pin.state is False and len(pin.states) == 1, "the relay never switched on"
    assert daemon.records.failures > 0
    assert any("STATUS=AUDIT LOG FAILING" in m and "no unlock" in m for m in messages), messages


@pytest.mark.data
@pytest.mark.slow
def test_a_full_audit_log_is_reported_over_mqtt(
        tmp_path: Path, door_model: Path, examples_dir: Path, mock_pins: MockFactory) -> None:
    """With MQTT on (a real mosquitto), Home Assistant hears that the audit log fails."""
    test_mqtt = pytest.importorskip("test_mqtt")
    if not Path(test_mqtt.MOSQUITTO).exists():
        pytest.skip("mosquitto not installed (scripts/setup.sh installs it)")
    port = test_mqtt.free_port()
    broker = test_mqtt.Broker(tmp_path / "broker", port).start()
    observer = test_mqtt.Observer(port).start()
    try:
        observer.wait_connected()
        enrol_miranda(door_model, examples_dir, tmp_path / "gallery.json")
        config = write_config(tmp_path / "config.yaml", tmp_path / "state", door_model,
                              tmp_path / "gallery.json", str(examples_dir / CLIP),
                              camera={"realtime": False},
                              mqtt=test_mqtt.mqtt_section(port, tmp_path), **liveness_off())
        daemon = Daemon(config)
        fill(daemon.audit)
        assert daemon.run() == 0
        assert observer.wait_for(lambda: any(
            e["event_type"] == "fault" and "audit log not writable" in e.get("reason", "")
            for e in observer.events())), observer.events()
    finally:
        observer.stop()
        broker.stop()
    assert mock_pins.pin(17).state is False and len(mock_pins.pin(17).states) == 1


def _chattr(flag: str, *paths: Path) -> bool:
    """``chattr flag`` on the files that exist; False where the file system or rights lack it."""
    import shutil
    import subprocess

    tool = shutil.which("chattr")
    present = [str(p) for p in paths if p.exists()]
    if tool is None or not present:
        return False
    done = subprocess.run([tool, flag, *present], check=False, capture_output=True)
    return done.returncode == 0


def _immutable_or_skip(*paths: Path) -> None:
    if not _chattr("+i", *paths):
        pytest.skip("chattr +i is not possible here (needs root and ext4/xfs/btrfs)")


IMMUTABLE_WRITER = """
import sys
from pathlib import Path
from twinlock.daemon.storage.audit import AuditLog
from twinlock.daemon.errors import AuditError
db = Path(sys.argv[1])
audit = AuditLog(db)
audit.record("start", "ignore", "before")
print("ready", flush=True)
sys.stdin.readline()  # the test makes the files immutable now
try:
    audit.record("unlock", "unlock", "after", user="lin")
    print("written")
except AuditError as exc:
    print("refused:", exc)
print("alive", flush=True)
sys.stdin.readline()  # the test makes the files writable again before SQLite closes them
audit.close()
"""


def test_immutable_audit_files_refuse_the_write_instead_of_sigbus(tmp_path: Path) -> None:
    """SQLite writes its WAL index through a shared memory map; into a file made immutable that
    is SIGBUS, which kills the daemon. The write is refused first, and the process lives."""
    import subprocess
    import sys

    db = tmp_path / "audit.db"
    files = [db, tmp_path / "audit.db-wal", tmp_path / "audit.db-shm"]
    proc = subprocess.Popen([sys.executable, "-c", IMMUTABLE_WRITER, str(db)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        assert proc.stdout.readline() == "ready\n"
        _immutable_or_skip(*files)
        try:
            proc.stdin.write("\n")
            proc.stdin.flush()
            answer = proc.stdout.readline()
            alive = proc.stdout.readline()
        finally:
            _chattr("-i", *files)
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.wait(60) == 0, f"exit {proc.returncode} (-7 is SIGBUS)"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert answer.startswith("refused:") and "audit.db is immutable" in answer, answer
    assert alive == "alive\n"


IMMUTABLE_CLOSER = """
import sys
from pathlib import Path
from twinlock.daemon.storage.audit import AuditLog
audit = AuditLog(Path(sys.argv[1]))
for i in range(3):
    audit.record("deny", "deny", f"record {i}")
print("ready", flush=True)
sys.stdin.readline()  # the test makes the files immutable now
audit.close()  # what the daemon's shutdown does
print("closed", flush=True)
"""


def test_closing_an_audit_log_made_immutable_does_not_kill_the_process(tmp_path: Path) -> None:
    """The files made immutable while the daemon runs, then a normal shutdown: SQLite's close
    would write the WAL index through its memory map (SIGBUS). The process exits cleanly, and
    the committed records are all there once the files are writable again."""
    import subprocess
    import sys

    db = tmp_path / "audit.db"
    files = [db, tmp_path / "audit.db-wal", tmp_path / "audit.db-shm"]
    proc = subprocess.Popen([sys.executable, "-c", IMMUTABLE_CLOSER, str(db)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        assert proc.stdout.readline() == "ready\n"
        _immutable_or_skip(*files)
        try:
            _out, err = proc.communicate("\n", timeout=60)
        finally:
            _chattr("-i", *files)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, f"exit {proc.returncode} (-7 is SIGBUS): {err[-2000:]}"
    assert "not closing it" in err and "immutable" in err
    with AuditLog(db) as audit:
        assert [r.reason for r in audit.query()] == [f"record {i}" for i in range(3)]


@pytest.mark.data
@pytest.mark.slow
def test_a_door_whose_audit_log_cannot_be_opened_runs_locked(
        tmp_path: Path, door_model: Path, examples_dir: Path, mock_pins: MockFactory) -> None:
    """The audit database made immutable before the daemon starts: it cannot be opened, and the
    door runs locked (no restart loop), the relay never moving."""
    state = tmp_path / "state"
    AuditLog(state / "audit.db").close()
    files = [state / "audit.db", state / "audit.db-wal", state / "audit.db-shm"]
    enrol_miranda(door_model, examples_dir, tmp_path / "gallery.json")
    config = write_config(tmp_path / "config.yaml", state, door_model, tmp_path / "gallery.json",
                          str(examples_dir / CLIP), camera={"realtime": False}, **liveness_off())
    _immutable_or_skip(*files)
    try:
        daemon = Daemon(config)
        assert daemon.run() == 0
    finally:
        _chattr("-i", *files)
    assert daemon.camera.stats["frames"] == 275
    assert daemon.records.failures > 0 and "not open" in str(daemon.status_sink.audit_error)
    pin = mock_pins.pin(17)
    assert pin.state is False and len(pin.states) == 1


WRITER = """
import sys, time
from twinlock.daemon.storage.audit import AuditLog
audit = AuditLog(sys.argv[1])
print("open", flush=True)
for i in range(150):
    audit.record("deny", "deny", f"record {i}")
    time.sleep(0.004)
print("written", flush=True)
sys.stdin.readline()
audit.close()
"""


def test_records_survive_another_process_reading_the_log(tmp_path: Path) -> None:
    """``twinlockd log`` opening and closing the log while the daemon writes must not lose a
    record: the daemon must never open and close SQLite's files itself (a close() drops its POSIX
    locks, and the reader's close then checkpoints and deletes the WAL under the writer)."""
    import subprocess
    import sys

    db = tmp_path / "audit.db"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(db)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        assert proc.stdout.readline() == "open\n"
        reader = threading.Thread(target=lambda: proc.stdout.readline(), daemon=True)
        reader.start()
        while reader.is_alive():  # a reader opening and closing the log all the while
            with AuditLog(db) as audit:
                audit.query(event="deny")
        with AuditLog(db) as audit:
            seen = len(audit.query(event="deny"))
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert seen == 150, f"only {seen} of 150 records are in the log"
