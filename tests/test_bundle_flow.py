"""Enrol -> signed bundle -> drop folder -> the door installs it; bad bundles change nothing.

Runs the real CLIs (``twinlock enroll/keygen/bundle/deploy``, ``twinlockd check-bundle/rollback``)
and the real daemon's bundle loading, with the shipped model and real photos.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from twinlock.daemon.cli import main as twinlockd
from twinlock.daemon.door.service import Daemon
from twinlock.daemon.storage.audit import AuditLog
from twinlock.trainer.cli import main as twinlock

pytestmark = [pytest.mark.data]


@pytest.fixture()
def home(tmp_path: Path, door_model: Path, examples_dir: Path,
         monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> dict[str, Path]:
    """A household: two residents enrolled, a signing key, a bundle; and a door config."""
    monkeypatch.setenv("TWINLOCK_ENROL_DB", str(tmp_path / "enrol.db"))
    assert twinlock(["enroll", "lin", "--images", str(examples_dir / "lin-manuel-miranda.png"),
                     "--model", str(door_model)]) == 0
    assert twinlock(["enroll", "barack", "--images", str(examples_dir / "obama.jpg"),
                     str(examples_dir / "obama2.jpg"), "--model", str(door_model)]) == 0
    assert twinlock(["keygen", "--out", str(tmp_path / "home")]) == 0
    assert twinlock(["keygen", "--out", str(tmp_path / "intruder")]) == 0
    for name, users in (("both", []), ("lin-only", ["--users", "lin"])):
        assert twinlock(["bundle", "--model", str(door_model), "--key", str(tmp_path / "home.key"),
                         "--out", str(tmp_path / f"{name}.twinlock"), *users]) == 0
    assert twinlock(["bundle", "--model", str(door_model), "--key",
                     str(tmp_path / "intruder.key"), "--out", str(tmp_path / "evil.twinlock")]) == 0
    capsys.readouterr()
    state, spool = tmp_path / "door", tmp_path / "spool"
    spool.mkdir()
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({
        "state_dir": str(state),
        "model": {"source": "bundle", "public_key": str(tmp_path / "home.pub"),
                  "incoming": str(spool)},
        "camera": {"type": "replay", "source": str(examples_dir / "short_hamilton_clip.mp4")},
        "action": {"type": "log"},
        "audit": {"db": str(state / "audit.db")},
    }))
    return {"tmp": tmp_path, "state": state, "spool": spool, "config": config}


def _deploy(h: dict[str, Path], name: str) -> None:
    assert twinlock(["deploy", str(h["tmp"] / name), "--to", str(h["spool"])]) == 0


def test_check_bundle_reports_users_and_refuses_the_wrong_key(
        home: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert twinlockd(["check-bundle", str(home["tmp"] / "both.twinlock"), "--key",
                      str(home["tmp"] / "home.pub")]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["ok"] and sorted(summary["users"]) == ["barack", "lin"]
    code = twinlockd(["check-bundle", str(home["tmp"] / "evil.twinlock"), "--key",
                      str(home["tmp"] / "home.pub")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and "key" in err


def test_the_door_installs_deployed_bundles_and_keeps_its_last_good_one(
        home: dict[str, Path]) -> None:
    _deploy(home, "both.twinlock")
    daemon = Daemon(home["config"])
    daemon.load_matcher()
    assert daemon.matcher is not None and daemon.matcher.users == 2
    good_origin = daemon.matcher.origin
    current = home["state"] / "bundles" / "current.twinlock"
    good_bytes = current.read_bytes()
    assert not list(home["spool"].glob("*.twinlock")), "the drop folder is emptied"

    # one flipped byte in the middle of the model: refused, nothing changes
    tampered = bytearray((home["tmp"] / "lin-only.twinlock").read_bytes())
    tampered[len(tampered) // 2] ^= 0x01
    (home["spool"] / "tampered.twinlock").write_bytes(bytes(tampered))
    daemon.reload()
    # a bundle signed with a key the door does not trust: refused too
    shutil.copy(home["tmp"] / "evil.twinlock", home["spool"] / "evil.twinlock")
    daemon.reload()
    assert daemon.matcher.origin == good_origin and daemon.matcher.users == 2
    assert current.read_bytes() == good_bytes
    rejected = sorted(p.name for p in (home["spool"] / "rejected").iterdir())
    assert rejected == ["evil.twinlock", "tampered.twinlock"]

    # a good new bundle is taken, and rollback brings the old one back
    _deploy(home, "lin-only.twinlock")
    daemon.reload()
    assert daemon.matcher.users == 1 and daemon.matcher.origin != good_origin
    assert twinlockd(["rollback", "--config", str(home["config"])]) == 0
    daemon.reload()
    assert daemon.matcher.origin == good_origin and daemon.matcher.users == 2
    daemon.shutdown()
    with AuditLog(home["state"] / "audit.db") as audit:
        bundle_events = audit.query(event="bundle")
    refused = [r.reason for r in bundle_events if r.decision == "deny"]
    assert len(refused) == 2 and all("refused" in r for r in refused)


def test_a_door_without_any_bundle_stays_locked(home: dict[str, Path]) -> None:
    daemon = Daemon(home["config"])
    daemon.load_matcher()
    assert daemon.matcher is None
    daemon.shutdown()
    with AuditLog(home["state"] / "audit.db") as audit:
        faults = audit.query(event="fault")
    assert any("door stays locked" in r.reason for r in faults)
