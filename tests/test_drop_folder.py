"""The drop folder cannot break the door: whatever lands in it, the daemon keeps running, refuses
it with a reason, keeps its good bundle, and never reads through a link or blocks on a FIFO."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from twinlock.daemon.bundle import format as fmt
from twinlock.daemon.bundle import store
from twinlock.daemon.bundle.intake import pick_up_incoming
from twinlock.daemon.cli import main as twinlockd
from twinlock.daemon.config.loader import parse_config
from twinlock.daemon.config.schema import Config
from twinlock.daemon.door.assemble import build_matcher
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


# -- what the deploy group can read after a pick-up (issue 20, item 12) ------------------------

SETPRIV = shutil.which("setpriv")
DEPLOY_GID, UPLOADER_UID, MEMBER_UID = 4242, 4243, 4244  # ids nobody else has; no NSS needed


def _group_readable(spool: Path) -> list[str]:
    return sorted(str(p.relative_to(spool)) for p in spool.rglob("*")
                  if p.is_file() and not p.is_symlink() and p.stat().st_mode & 0o044)


def test_picked_up_uploads_keep_no_group_readable_copy(home: Home,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Uploads arrive 0640 (twinlock deploy makes them so, for the daemon to read through the
    group). Once picked up, neither the copy being checked, nor a refused one in rejected/, nor
    an installed one is readable by the group. Without the fix the refused bundle (anchors and
    all) stayed 0640 in rejected/, and the one being checked was the upload itself."""
    other_key, other_pub = home.root / "other.key", home.root / "other.pub"
    signing.generate_keypair(other_key, other_pub)
    refused = home.spool / "foreign.twinlock"
    signing.write_bundle(MODEL, home.root / "gallery.json", other_key, refused)
    refused.chmod(0o640)
    data = refused.read_bytes()
    seen: list[list[str]] = []
    install = store.install_bundle

    def checking(path: Path, *args: object) -> Path:  # what lies in the spool while checked
        seen.append(_group_readable(home.spool) + [f"mode {oct(path.stat().st_mode & 0o777)}"])
        return install(path, *args)  # type: ignore[arg-type]

    from twinlock.daemon.bundle import intake

    monkeypatch.setattr(intake, "install_bundle", checking)
    reasons = home.pick_up()
    assert any("foreign.twinlock refused" in r for r in reasons), reasons
    assert seen == [["mode 0o600"]], seen
    assert (home.spool / "rejected" / "foreign.twinlock").read_bytes() == data
    assert _group_readable(home.spool) == []
    newer = home.newer()
    newer.chmod(0o640)
    home.pick_up()
    assert seen[1:] == [["mode 0o600"]] and _group_readable(home.spool) == []
    assert sorted(p.name for p in home.spool.iterdir()) == ["rejected"]


@pytest.mark.skipif(os.geteuid() != 0 or SETPRIV is None, reason="needs root and setpriv")
def test_a_deploy_group_member_cannot_read_a_refused_bundle(home: Home) -> None:
    """With real ids (setpriv): the spool is 2770 of the deploy group, an uploader in the group
    uploads a bundle the door refuses (0640, as twinlock deploy leaves it); another member of
    the group can read the upload, and after the pick-up cannot read what was kept of it."""
    base = Path(tempfile.mkdtemp(prefix="twinlock-spool-", dir="/tmp"))
    try:
        base.chmod(0o755)
        spool = base / "spool"
        for folder in (spool, spool / "rejected"):  # as deploy/install.sh makes them
            folder.mkdir()
            os.chown(folder, 0, DEPLOY_GID)
            folder.chmod(0o2770)
        other_key, other_pub = base / "other.key", base / "other.pub"
        signing.generate_keypair(other_key, other_pub)
        source = base / "foreign.twinlock"
        signing.write_bundle(MODEL, home.root / "gallery.json", other_key, source)
        source.chmod(0o644)

        def as_user(uid: int, script: str) -> int:
            argv = [str(SETPRIV), f"--reuid={uid}", f"--regid={uid}",
                    f"--groups={DEPLOY_GID}", "--", "sh", "-c", script]
            return subprocess.run(argv, check=False, capture_output=True, timeout=60,
                                  cwd="/").returncode

        upload = spool / "foreign.twinlock"
        assert as_user(UPLOADER_UID, f"cat {source} > {upload}.part && chmod 0640 "
                       f"{upload}.part && mv -f {upload}.part {upload}") == 0
        assert as_user(MEMBER_UID, f"cat {upload} > /dev/null") == 0  # the group reads uploads
        cfg = parse_config(f"state_dir: {home.state}\nmodel:\n  incoming: {spool}\n"
                           f"  public_key: {home.pub}\n")
        with AuditLog(base / "audit.db") as audit:
            within(lambda: pick_up_incoming(cfg, audit))
            assert any("foreign.twinlock refused" in r.reason
                       for r in audit.query(event="bundle"))
        kept = spool / "rejected" / "foreign.twinlock"
        assert kept.read_bytes() == source.read_bytes()
        assert as_user(MEMBER_UID, f"ls {spool}/rejected > /dev/null") == 0
        assert as_user(MEMBER_UID, f"cat {kept} > /dev/null") != 0, \
            "a deploy group member can still read the refused bundle's anchors"
        assert as_user(MEMBER_UID, f"rm -f {kept}") == 0  # but may clear it away
    finally:
        shutil.rmtree(base)
