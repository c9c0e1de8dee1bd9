"""The drop folder cannot break the door: whatever lands in it, the daemon keeps running, refuses
it with a reason, keeps its good bundle, and never reads through a link or blocks on a FIFO."""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from twinlock.daemon.bundle import format as fmt
from twinlock.daemon.bundle import store
from twinlock.daemon.cli import main as twinlockd
from twinlock.daemon.config.loader import parse_config
from twinlock.daemon.config.schema import Config
from twinlock.daemon.door.service import build_matcher, pick_up_incoming
from twinlock.daemon.errors import BundleError
from twinlock.daemon.recognition.gallery import Gallery
from twinlock.daemon.recognition.model import read_metadata
from twinlock.daemon.storage.audit import AuditLog
from twinlock.trainer.household import signing

MODEL = Path(__file__).resolve().parents[1] / "models" / "default"


class Home:
    """A signing key, the shipped model, a two-user gallery, a door state and drop folder."""

    def __init__(self, root: Path) -> None:
        meta = read_metadata(MODEL)
        gallery = Gallery(meta.model_id)
        rng = np.random.default_rng(0)
        for name in ("alice", "bob"):
            gallery.add(name, rng.normal(size=(2, meta.embedding_dim)).astype(np.float32))
        gallery.save(root / "gallery.json")
        self.key, self.pub = root / "home.key", root / "home.pub"
        signing.generate_keypair(self.key, self.pub)
        self.root, self.state, self.spool = root, root / "state", root / "spool"
        self.spool.mkdir()
        self.good = root / "good.twinlock"
        signing.write_bundle(MODEL, root / "gallery.json", self.key, self.good)
        store.install_bundle(self.good, self.pub, self.state)
        self.installed = store.current_bundle(self.state).read_bytes()
        self.cfg: Config = parse_config(f"state_dir: {self.state}\nmodel:\n  incoming: "
                                        f"{self.spool}\n  public_key: {self.pub}\n")

    def newer(self, name: str = "newer.twinlock") -> Path:
        path = self.spool / name
        signing.write_bundle(MODEL, self.root / "gallery.json", self.key, path)
        return path

    def pick_up(self) -> list[str]:
        """Run the daemon's drop-folder pick-up in a thread (a hang fails, it does not block
        the suite); returns the audited bundle reasons."""
        with AuditLog(self.root / "audit.db") as audit:
            within(lambda: pick_up_incoming(self.cfg, audit))
            return [r.reason for r in audit.query(event="bundle")]


def within(work: Callable[[], object], seconds: float = 60.0) -> None:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            work()
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        pytest.fail(f"still blocked after {seconds:g} s (a FIFO opened for reading?)")
    if errors:
        raise errors[0]


@pytest.fixture()
def home(tmp_path: Path) -> Home:
    return Home(tmp_path)


def test_a_dangling_symlink_is_quarantined_and_a_good_bundle_still_installs(home: Home) -> None:
    (home.spool / "ghost.twinlock").symlink_to(home.root / "nowhere")
    newer = home.newer().read_bytes()
    reasons = home.pick_up()
    assert any("ghost.twinlock refused: not a regular file" in r for r in reasons)
    assert os.path.islink(home.spool / "rejected" / "ghost.twinlock")
    assert store.current_bundle(home.state).read_bytes() == newer


def test_a_fifo_is_refused_without_blocking(home: Home, capsys: pytest.CaptureFixture[str]) -> None:
    os.mkfifo(home.spool / "pipe.twinlock")
    reasons = home.pick_up()
    assert any("pipe.twinlock refused: not a regular file" in r for r in reasons)
    os.mkfifo(home.root / "other.twinlock")
    within(lambda: twinlockd(["check-bundle", str(home.root / "other.twinlock"), "--key",
                              str(home.pub)]))
    assert "is a FIFO, not a regular bundle file" in capsys.readouterr().err
    with pytest.raises(BundleError, match="is a symbolic link"):
        (home.root / "link.twinlock").symlink_to(home.good)
        store.verify_bundle(home.root / "link.twinlock", home.pub)
    assert store.current_bundle(home.state).read_bytes() == home.installed


def test_a_rejected_plain_file_is_moved_aside(home: Home) -> None:
    (home.spool / "rejected").write_text("not a folder")
    (home.spool / "junk.twinlock").write_bytes(b"junk" * 100)
    reasons = home.pick_up()
    assert any("junk.twinlock refused" in r for r in reasons)
    assert (home.spool / "rejected" / "junk.twinlock").is_file()
    assert [p.read_text() for p in home.spool.glob("rejected.not-a-folder-*")] == ["not a folder"]


def test_a_rejected_symlink_is_never_followed(home: Home) -> None:
    """``rejected`` pointing at the door's own bundles folder, and junk called current.twinlock:
    followed, the junk would replace the good bundle."""
    (home.spool / "rejected").symlink_to(store.bundles_dir(home.state))
    (home.spool / "current.twinlock").write_bytes(b"junk" * 100)
    home.pick_up()
    assert store.current_bundle(home.state).read_bytes() == home.installed
    assert (home.spool / "rejected").is_dir() and not (home.spool / "rejected").is_symlink()
    assert (home.spool / "rejected" / "current.twinlock").read_bytes() == b"junk" * 100
    assert build_matcher(home.cfg).users == 2  # what the next start loads


def test_an_oversized_bundle_is_refused_before_it_is_read(home: Home) -> None:
    """300 MB (sparse: no disk used) would not fit beside the daemon in the unit's MemoryMax."""
    big = home.spool / "big.twinlock"
    with big.open("wb") as handle:
        handle.truncate(300 * 1024 * 1024)
    assert fmt.MAX_BUNDLE_SIZE < big.stat().st_size
    reasons = home.pick_up()
    assert any("big.twinlock refused" in r and "larger than any bundle can be" in r
               for r in reasons), reasons
    assert store.current_bundle(home.state).read_bytes() == home.installed


def test_a_folder_named_like_a_bundle_changes_nothing(home: Home) -> None:
    (home.spool / "folder.twinlock").mkdir()
    shutil.copyfile(home.good, home.spool / "folder.twinlock" / "inner.twinlock")
    reasons = home.pick_up()
    assert any("folder.twinlock refused: not a regular file" in r for r in reasons)
    assert store.current_bundle(home.state).read_bytes() == home.installed


def test_a_bundle_the_door_died_checking_is_not_tried_again(home: Home) -> None:
    """A bundle whose check killed the daemon (say, a tower that crashes the runtime) is left as
    .checking-NAME; the next start quarantines it instead of crashing again."""
    shutil.copyfile(home.newer(), home.spool / ".checking-crasher.twinlock")
    (home.spool / "newer.twinlock").unlink()
    reasons = home.pick_up()
    assert any("crasher.twinlock refused: the door stopped while checking it" in r
               for r in reasons), reasons
    assert (home.spool / "rejected" / "crasher.twinlock").is_file()
    assert store.current_bundle(home.state).read_bytes() == home.installed
    newer = home.newer().read_bytes()  # an ordinary pick-up leaves nothing behind
    home.pick_up()
    assert store.current_bundle(home.state).read_bytes() == newer
    assert sorted(p.name for p in home.spool.iterdir()) == ["rejected"]
