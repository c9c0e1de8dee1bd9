"""deploy/: the systemd unit (``systemd-analyze verify`` and the offline security exposure) and the
install/uninstall scripts, run into throw-away roots (``--root DIR --no-apt --skip-pip``)."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest
import yaml

from twinlock.daemon.config.schema import ReviewConfig

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
UNIT = DEPLOY / "twinlockd.service"
INSTALL = DEPLOY / "install.sh"
UNINSTALL = DEPLOY / "uninstall.sh"
CONFIG = REPO / "config.yaml"
VENV_BIN = "opt/twinlock/venv/bin/twinlockd"
MAX_EXPOSURE = 2.0
SPOOL = "var/spool/twinlock"
REVIEW = "var/lib/twinlock-review"
DEPLOY_GROUP = "twinlock-deploy"
SUDOERS = "etc/sudoers.d/twinlock-deploy"
SUDOERS_RULE = ("%twinlock-deploy ALL=(root) NOPASSWD: /usr/bin/systemctl reload twinlockd, "
                "/bin/systemctl reload twinlockd\n")
DEPLOY_HINT = ("twinlock install: deploy: from the machine with the signing key: "
               "twinlock deploy BUNDLE --to ssh://USER@HOST/var/spool/twinlock/")

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None,
    reason="systemd-analyze is not installed (Debian package `systemd`; scripts/setup.sh installs it)")
ENV = {**os.environ, "PATH": os.environ.get("PATH", "/usr/bin:/bin") + ":/usr/sbin:/sbin"}
needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("useradd", path=ENV["PATH"]) is None,
    reason="install.sh/uninstall.sh need root and useradd (they add a user to the root's "
           "/etc/passwd and chown its state folder)")
VISUDO = shutil.which("visudo", path=ENV["PATH"])
needs_visudo = pytest.mark.skipif(
    VISUDO is None, reason="visudo is not installed (Debian package `sudo`): the sudoers rule's "
                           "syntax cannot be checked here")
SETPRIV = shutil.which("setpriv", path=ENV["PATH"])


# ---- helpers ----------------------------------------------------------------------------------

def run(script: Path, *args: str | Path, check: bool = True,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    argv = ["bash", str(script), *map(str, args)]
    if script == INSTALL and not Path("/usr/bin/python3").exists():
        argv += ["--python", shutil.which("python3") or "python3"]
    proc = subprocess.run(argv, check=False, capture_output=True, text=True, env=env or ENV,
                          timeout=120)
    if check and proc.returncode != 0:
        pytest.fail(f"{' '.join(argv)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def install(root: Path, *extra: str | Path, check: bool = True,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run(INSTALL, "--root", root, "--no-apt", "--skip-pip", *extra, check=check, env=env)


def image_with_pi(root: Path) -> Path:
    """A root that already has a login user `pi` (uid 1000), as a Raspberry Pi OS image does."""
    etc = root / "etc"
    etc.mkdir(parents=True)
    (etc / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n"
                                "pi:x:1000:1000:,,,:/home/pi:/bin/bash\n")
    (etc / "group").write_text("root:x:0:\npi:x:1000:\n")
    for name, lines in (("shadow", "root:*:0:0:99999:7:::\npi:*:0:0:99999:7:::\n"),
                        ("gshadow", "root:*::\npi:!::\n")):
        (etc / name).write_text(lines)
        (etc / name).chmod(0o640)
    return root


def members(root: Path, group: str) -> list[str]:
    return [m for m in db(root, "group")[group][3].split(",") if m]


def tree(root: Path) -> dict[str, tuple[object, ...]]:
    """Every entry under root: type, mode, owner, mtime and content hash (or link target)."""
    out: dict[str, tuple[object, ...]] = {}
    for path in [root, *sorted(root.rglob("*"))]:
        st = path.lstat()
        if stat.S_ISLNK(st.st_mode):
            what: object = os.readlink(path)
        elif stat.S_ISREG(st.st_mode):
            what = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            what = None
        out[str(path.relative_to(root))] = (stat.filemode(st.st_mode), st.st_uid, st.st_gid,
                                            st.st_mtime_ns, what)
    return out


def db(root: Path, name: str) -> dict[str, list[str]]:
    """A colon-separated user database of the root (passwd, group, ...), keyed by name."""
    lines = (root / "etc" / name).read_text().splitlines()
    return {f[0]: f for f in (line.split(":") for line in lines if line)}


def as_user(uid: int, gid: int, groups: list[int], script: str) -> int:
    """``sh -c script``'s exit status as uid:gid with those groups (setpriv: the root's own ids,
    no NSS)."""
    argv = [str(SETPRIV), f"--reuid={uid}", f"--regid={gid}",
            f"--groups={','.join(map(str, groups))}", "--", "sh", "-c", script]
    return subprocess.run(argv, check=False, capture_output=True, text=True, env=ENV,
                          cwd="/", timeout=30).returncode


def service_groups(root: Path) -> list[int]:
    """The service user's groups as systemd gives them (initgroups on the root's /etc/group)."""
    svc_gid = int(db(root, "passwd")["twinlock"][3])
    return [svc_gid, *(int(g[2]) for g in db(root, "group").values()
                       if "twinlock" in g[3].split(","))]


def mode_owner(path: Path) -> tuple[str, int, int]:
    st = path.lstat()
    return oct(stat.S_IMODE(st.st_mode)), st.st_uid, st.st_gid


def unit_settings(path: Path) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith(("#", "[")) and "=" in line:
            key, value = line.split("=", 1)
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


# ---- the unit ---------------------------------------------------------------------------------

def test_unit_has_the_settings_the_daemon_relies_on() -> None:
    s = unit_settings(UNIT)
    one = {k: v[-1] for k, v in s.items()}
    assert one["Type"] == "notify"          # systemd 252 (bookworm) has no notify-reload
    assert one["NotifyAccess"] == "main"
    assert one["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert one["ExecStartPre"] == "/opt/twinlock/venv/bin/twinlockd check-config " \
                                  "/etc/twinlock/config.yaml"
    assert one["ExecStart"] == "/opt/twinlock/venv/bin/twinlockd run --config " \
                               "/etc/twinlock/config.yaml"
    # the relay goes off after every stop, even after kill -9 in a pulse (tests/test_relay_off.py)
    assert one["ExecStopPost"] == "/opt/twinlock/venv/bin/twinlockd relay-off --config " \
                                  "/etc/twinlock/config.yaml"
    assert (one["WatchdogSec"], one["Restart"], one["RestartSec"]) == ("30", "on-failure", "5")
    assert (one["User"], one["SupplementaryGroups"]) == ("twinlock", "video gpio")
    assert (one["StateDirectory"], one["StateDirectoryMode"]) == ("twinlock", "0700")
    # The bundle drop folder (model.incoming): the daemon deletes and moves uploads there. The
    # leading "-": a missing folder must not stop the lock from starting.
    assert "-/var/spool/twinlock" in s["ReadWritePaths"]
    # The review folder (review.dir): outside the 0700 state folder, made by install.sh.
    assert "-/var/lib/twinlock-review" in s["ReadWritePaths"]
    assert one["StateDirectory"] == "twinlock"    # never the review folder: 0700 at each start
    assert one["UMask"] == "0077" and one["ProtectSystem"] == "strict"
    assert one["NoNewPrivileges"] == "yes" and one["DevicePolicy"] == "closed"
    assert s["CapabilityBoundingSet"] == [""] and s["AmbientCapabilities"] == [""]
    for device_class in ("char-video4linux", "char-media", "char-dma_heap", "char-gpiochip"):
        assert f"{device_class} rw" in s["DeviceAllow"]
    assert one.get("PrivateDevices", "no") == "no"   # the camera and GPIO nodes must stay visible
    assert "PrivateUsers" not in one                 # it would unmap the video and gpio groups


def verify_root(tmp_path: Path, unit: Path) -> Path:
    """A root in which `verify` can resolve everything the unit names: the unit, stand-ins for its
    executables, and the host's own unit folder (sysinit.target, multi-user.target, ...)."""
    root = tmp_path / "verify-root"
    (root / "etc/systemd/system").mkdir(parents=True)
    shutil.copy(unit, root / "etc/systemd/system/twinlockd.service")
    units = next((d for d in ("/usr/lib/systemd/system", "/lib/systemd/system") if Path(d).is_dir()),
                 None)
    if units is None:
        pytest.skip("no systemd unit folder on this machine to resolve sysinit.target & co.")
    shutil.copytree(units, root / "usr/lib/systemd/system", symlinks=True)
    for exe in (VENV_BIN, "bin/kill"):
        path = root / exe
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("#!/bin/sh\nexit 0\n")
        path.chmod(0o755)
    return root


def analyze_verify(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SYSTEMD_ANALYZE, "verify", f"--root={root}",
                           "/etc/systemd/system/twinlockd.service"],
                          check=False, capture_output=True, text=True, timeout=60)


@needs_analyze
def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    root = verify_root(tmp_path, UNIT)
    proc = analyze_verify(root)
    messages = (proc.stdout + proc.stderr).strip()
    assert proc.returncode == 0, messages
    assert "twinlockd" not in messages, messages   # no warning about our unit at all

    # The check has teeth: without the venv's twinlockd the same verification fails.
    (root / VENV_BIN).unlink()
    proc = analyze_verify(root)
    assert proc.returncode != 0
    assert "/opt/twinlock/venv/bin/twinlockd is not executable" in proc.stdout + proc.stderr


@needs_analyze
def test_unit_security_exposure_is_at_most_2() -> None:
    proc = subprocess.run([SYSTEMD_ANALYZE, "security", "--offline=true", "--no-pager", str(UNIT)],
                          check=False, capture_output=True, text=True, timeout=60)
    out = proc.stdout + proc.stderr
    assert "Unknown key" not in out and "ignoring" not in out, out
    found = re.search(r"Overall exposure level for twinlockd\.service: (\d+\.\d+)", out)
    assert found, out
    exposure = float(found.group(1))
    assert exposure <= MAX_EXPOSURE, out


# ---- install.sh / uninstall.sh ----------------------------------------------------------------

@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """One image with a user pi, installed twice (with a trusted key and pi as the deploy user),
    and what each run printed and left."""
    base = tmp_path_factory.mktemp("deploy")
    root = image_with_pi(base / "root")
    key = base / "trusted_key.pub"
    key.write_text("-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\n"
                   "-----END PUBLIC KEY-----\n")
    first = install(root, "--key", key, "--deploy-user", "pi")
    after_first = tree(root)
    second = install(root, "--key", key, "--deploy-user", "pi")
    return {"root": root, "key": key, "first": first.stdout, "second": second.stdout,
            "after_first": after_first, "after_second": tree(root)}


@needs_root
def test_install_creates_user_folders_and_files(installed: dict[str, object]) -> None:
    root = installed["root"]
    assert isinstance(root, Path)
    user = db(root, "passwd")["twinlock"]
    uid, gid = int(user[2]), int(user[3])
    assert 0 < uid < 1000 and user[5] == "/var/lib/twinlock" and user[6] == "/usr/sbin/nologin"
    groups = db(root, "group")
    for group in ("video", "gpio"):
        assert "twinlock" in groups[group][3].split(","), groups[group]
    assert int(groups["twinlock"][2]) == gid

    assert mode_owner(root / "etc/twinlock") == ("0o755", 0, 0)
    assert mode_owner(root / "var/lib/twinlock") == ("0o700", uid, gid)
    assert mode_owner(root / "opt/twinlock") == ("0o755", 0, 0)
    for path, source in (("etc/twinlock/config.yaml", CONFIG),
                         ("etc/twinlock/trusted_key.pub", installed["key"]),
                         ("etc/systemd/system/twinlockd.service", UNIT)):
        assert mode_owner(root / path) == ("0o644", 0, 0), path
        assert (root / path).read_bytes() == Path(str(source)).read_bytes(), path
    assert not (root / "etc/twinlock/config.yaml.new").exists()
    wants = root / "etc/systemd/system/multi-user.target.wants/twinlockd.service"
    assert os.readlink(wants) == "/etc/systemd/system/twinlockd.service"
    cfg = (root / "opt/twinlock/venv/pyvenv.cfg").read_text()
    assert re.search(r"^include-system-site-packages = true$", cfg, re.MULTILINE), cfg
    assert str(root) not in cfg          # written for the image's own /opt/twinlock
    assert "changed:" in str(installed["first"])


@needs_root
def test_install_makes_the_drop_folder_group_and_sudoers_rule(installed: dict[str, object]) -> None:
    root = installed["root"]
    assert isinstance(root, Path)
    uid = int(db(root, "passwd")["twinlock"][2])
    group = db(root, "group")[DEPLOY_GROUP]
    deploy_gid = int(group[2])
    assert 0 < deploy_gid < 1000                        # a system group
    # pi uploads; the service user reads the uploads (owned by pi) through the group.
    assert sorted(members(root, DEPLOY_GROUP)) == ["pi", "twinlock"]
    assert "twinlock-deploy" in (root / "etc/gshadow").read_text()

    # setgid (2770): uploads get the group twinlock-deploy, whoever makes them.
    assert mode_owner(root / SPOOL) == ("0o2770", uid, deploy_gid)
    assert mode_owner(root / SPOOL / "rejected") == ("0o2770", uid, deploy_gid)
    assert mode_owner(root / "var/spool") == ("0o755", 0, 0)
    # The review folder: the daemon writes, the deploy group only reads (setgid: records and
    # crops get the group). The config's default review.dir is this folder.
    assert mode_owner(root / REVIEW) == ("0o2750", uid, deploy_gid)
    assert mode_owner(root / REVIEW / "crops") == ("0o2750", uid, deploy_gid)
    assert yaml.safe_load(CONFIG.read_text())["review"]["dir"] == "/" + REVIEW
    assert str(ReviewConfig().dir) == "/" + REVIEW

    sudoers = root / SUDOERS
    assert mode_owner(sudoers) == ("0o440", 0, 0)
    assert sudoers.read_text() == SUDOERS_RULE
    assert mode_owner(root / "etc/sudoers.d") == ("0o750", 0, 0)

    out = str(installed["first"])
    assert "user pi: added to group twinlock-deploy" in out
    assert DEPLOY_HINT in out and "may upload bundles and reload: pi" in out
    for line in ("/var/spool/twinlock", "/var/spool/twinlock/rejected", "/etc/sudoers.d",
                 "/var/lib/twinlock-review",
                 "/etc/sudoers.d/twinlock-deploy"):
        assert f"\n  {line}\n" in out, out
    # The second run says where to deploy too, and still ends with "nothing changed".
    assert DEPLOY_HINT in str(installed["second"])
    assert "user pi: in group twinlock-deploy" in str(installed["second"])


@needs_root
@needs_visudo
def test_installed_sudoers_rule_passes_visudo(installed: dict[str, object]) -> None:
    assert isinstance(installed["root"], Path)
    proc = subprocess.run([str(VISUDO), "-cf", str(installed["root"] / SUDOERS)],
                          check=False, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@needs_root
def test_install_never_installs_a_sudoers_rule_visudo_refuses(tmp_path: Path) -> None:
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "visudo").write_text("#!/bin/sh\necho \"$*: syntax error\" >&2\nexit 1\n")
    (fake / "visudo").chmod(0o755)
    env = {**ENV, "PATH": f"{fake}:{ENV['PATH']}"}
    root = tmp_path / "root"
    proc = install(root, check=False, env=env)
    assert proc.returncode != 0 and "visudo refused" in proc.stderr, proc.stderr
    assert not (root / SUDOERS).exists()


@needs_root
def test_deploy_user_added_later_then_nothing_changes(tmp_path: Path) -> None:
    root = tmp_path / "root"
    out = install(root).stdout
    assert members(root, DEPLOY_GROUP) == ["twinlock"]
    assert "nobody may deploy yet" in out and DEPLOY_HINT in out

    proc = install(root, "--deploy-user", "pi", check=False)   # not a user of this root (yet)
    assert proc.returncode != 0 and "--deploy-user pi: no such user" in proc.stderr
    before = tree(root)
    for bad in ("twinlock", "-x", "a:b"):
        assert install(root, "--deploy-user", bad, check=False).returncode != 0
    assert tree(root) == before                         # refused before touching anything

    for name in ("alice", "bob"):
        subprocess.run(["useradd", "--root", str(root), name], check=True, env=ENV,
                       capture_output=True)
    out = install(root, "--deploy-user", "alice", "--deploy-user=bob").stdout
    assert members(root, DEPLOY_GROUP) == ["twinlock", "alice", "bob"]
    assert "  /etc/group\n" in out and "may upload bundles and reload: alice bob" in out
    out = install(root, "--deploy-user", "bob").stdout
    assert out.strip().endswith("nothing changed"), out
    out = install(root).stdout                          # never takes anyone out
    assert out.strip().endswith("nothing changed"), out
    assert members(root, DEPLOY_GROUP) == ["twinlock", "alice", "bob"]


@needs_root
def test_second_install_changes_nothing(installed: dict[str, object]) -> None:
    second = str(installed["second"]).strip().splitlines()
    assert second[-1] == "twinlock install: nothing changed", second
    before, after = installed["after_first"], installed["after_second"]
    assert isinstance(before, dict) and isinstance(after, dict)
    assert before.keys() == after.keys()
    assert {k: v for k, v in after.items() if before[k] != v} == {}   # bytes, modes, owners, mtimes


@needs_root
def test_user_edited_config_survives_reinstall(tmp_path: Path) -> None:
    root = tmp_path / "root"
    config = root / "etc/twinlock/config.yaml"
    install(root)
    edited = config.read_text().replace("pin: 17", "pin: 27")
    assert edited != CONFIG.read_text()
    config.write_text(edited)

    out = install(root).stdout
    assert config.read_text() == edited
    assert not (root / "etc/twinlock/config.yaml.new").exists()
    assert "kept your edited" in out and out.strip().endswith("nothing changed")

    # A newer shipped config: the user's file stays, the new one lands beside it, once.
    source = tmp_path / "newer"
    source.mkdir()
    shipped = CONFIG.read_text() + "\n# a setting added by a newer release\n"
    (source / "config.yaml").write_text(shipped)
    out = install(root, "--from", source).stdout
    assert config.read_text() == edited
    assert (root / "etc/twinlock/config.yaml.new").read_text() == shipped
    assert "config.yaml.new" in out
    out = install(root, "--from", source).stdout
    assert out.strip().endswith("nothing changed"), out
    assert config.read_text() == edited


@needs_root
def test_install_refuses_a_private_key(tmp_path: Path) -> None:
    key = tmp_path / "signing.key"
    key.write_text("-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIA==\n-----END PRIVATE KEY-----\n")
    proc = install(tmp_path / "root", "--key", key, check=False)
    assert proc.returncode != 0 and "private key" in proc.stderr
    assert not (tmp_path / "root/etc/twinlock").exists()   # refused before touching anything


@needs_root
def test_uninstall_keeps_data_unless_purged(tmp_path: Path) -> None:
    root = image_with_pi(tmp_path / "root")
    install(root, "--deploy-user", "pi")
    audit = root / "var/lib/twinlock/audit.db"
    audit.write_bytes(b"decisions")
    waiting = root / SPOOL / "door.twinlock"          # uploaded, not yet picked up
    waiting.write_bytes(b"bundle")
    day = root / REVIEW / "2026-12-06.jsonl"
    day.write_bytes(b"{}\n")

    out = run(UNINSTALL, "--root", root).stdout
    assert not (root / "opt/twinlock").exists()
    assert not (root / "etc/systemd/system/twinlockd.service").exists()
    assert not (root / "etc/systemd/system/multi-user.target.wants/twinlockd.service").is_symlink()
    assert "twinlock" not in db(root, "passwd") and "twinlock" not in db(root, "group")
    assert DEPLOY_GROUP not in db(root, "group") and DEPLOY_GROUP not in db(root, "gshadow")
    assert not (root / SUDOERS).exists() and "sudoers: removed" in out
    assert "pi" in db(root, "passwd")                  # deploy users stay, only the group goes
    assert all("twinlock" not in g[3].split(",") for g in db(root, "group").values())
    assert audit.read_bytes() == b"decisions"
    assert waiting.read_bytes() == b"bundle"
    assert (root / "etc/twinlock/config.yaml").read_bytes() == CONFIG.read_bytes()
    assert "kept /var/lib/twinlock" in out and "kept /etc/twinlock" in out
    assert "kept /var/spool/twinlock" in out
    assert day.read_bytes() == b"{}\n" and "kept /var/lib/twinlock-review" in out
    assert run(UNINSTALL, "--root", root).stdout.strip().endswith("nothing to remove")

    out = run(UNINSTALL, "--root", root, "--purge").stdout
    assert not (root / "var/lib/twinlock").exists() and not (root / "etc/twinlock").exists()
    assert not (root / SPOOL).exists()
    assert "purged /var/lib/twinlock" in out and "purged /etc/twinlock" in out
    assert "purged /var/spool/twinlock" in out
    assert not (root / REVIEW).exists() and "purged /var/lib/twinlock-review" in out


@needs_root
def test_uninstall_removes_runtime_settings_and_purges_set_property(tmp_path: Path) -> None:
    """`systemctl set-property --runtime` leaves a drop-in under /run that kept a "not-found"
    twinlockd listed after --purge (seen in the bookworm VM after the OOM test); it goes with the
    unit. `systemctl set-property` without --runtime is the household's: kept, purged."""
    root = image_with_pi(tmp_path / "root")
    install(root)
    runtime = root / "run/systemd/system.control/twinlockd.service.d/50-MemoryMax.conf"
    edited = root / "run/systemd/system/twinlockd.service.d/override.conf"
    kept = root / "etc/systemd/system.control/twinlockd.service.d/50-MemoryHigh.conf"
    for path in (runtime, edited, kept):
        path.parent.mkdir(parents=True)
        path.write_text("[Service]\n")

    out = run(UNINSTALL, "--root", root).stdout
    assert not runtime.parent.exists() and not edited.parent.exists()
    assert "removed /run/systemd/system.control/twinlockd.service.d (runtime settings)" in out
    assert kept.exists() and "kept /etc/systemd/system.control/twinlockd.service.d" in out
    out = run(UNINSTALL, "--root", root, "--purge").stdout
    assert not kept.parent.exists()
    assert "purged /etc/systemd/system.control/twinlockd.service.d" in out


@needs_root
def test_reinstall_gives_a_kept_drop_folder_back(tmp_path: Path) -> None:
    """uninstall.sh keeps the spool; after it the user and group may come back with new ids."""
    root = image_with_pi(tmp_path / "root")
    install(root)
    waiting = root / SPOOL / "door.twinlock"
    waiting.write_bytes(b"bundle")
    os.chown(waiting, 1000, int(db(root, "group")[DEPLOY_GROUP][2]))   # uploaded by pi
    record = root / REVIEW / "2026-12-06.jsonl"                       # written by the daemon
    record.write_bytes(b"{}\n")
    run(UNINSTALL, "--root", root)
    for path in (root / SPOOL, root / SPOOL / "rejected", waiting):    # ids nobody has any more
        os.chown(path, 4242 if path != waiting else 1000, 4343)
    for path in (root / REVIEW, record):
        os.chown(path, 4242, 4343)

    out = install(root).stdout
    uid = int(db(root, "passwd")["twinlock"][2])
    gid = int(db(root, "group")[DEPLOY_GROUP][2])
    assert "/var/spool/twinlock: ownership given" in out
    assert mode_owner(root / SPOOL) == ("0o2770", uid, gid)
    assert mode_owner(root / SPOOL / "rejected") == ("0o2770", uid, gid)
    assert mode_owner(waiting)[1:] == (1000, gid)      # still pi's, readable by the group again
    assert waiting.read_bytes() == b"bundle"
    assert "/var/lib/twinlock-review: ownership given" in out
    assert mode_owner(root / REVIEW) == ("0o2750", uid, gid)
    assert mode_owner(record)[1:] == (uid, gid)          # the daemon appends to it again
    assert install(root).stdout.strip().endswith("nothing changed")


@needs_root
@pytest.mark.skipif(SETPRIV is None, reason="setpriv (util-linux) is not installed")
def test_drop_folder_permissions_work_for_uploader_and_daemon() -> None:
    """With the root's own ids (setpriv, no NSS): the deploy user can upload into the folder and
    the upload gets the group; the service user can read a group-readable upload, move it to
    rejected/ and delete it; anybody else cannot even look. (An upload must be group-readable:
    bundles are written 0600 and sftp keeps that mode, so the deploy step has to chmod it.)"""
    base = Path(tempfile.mkdtemp(prefix="twinlock-spool-", dir="/tmp"))
    try:
        base.chmod(0o755)                              # the test users must reach the root
        root = image_with_pi(base / "root")
        install(root, "--deploy-user", "pi")
        spool = root / SPOOL
        svc_uid, svc_gid = (int(x) for x in db(root, "passwd")["twinlock"][2:4])
        deploy_gid = int(db(root, "group")[DEPLOY_GROUP][2])

        upload = spool / "door.twinlock"
        assert as_user(1000, 1000, [1000, deploy_gid],
                       f"umask 022; printf bundle > {upload}.part && chmod 0640 {upload}.part "
                       f"&& mv -f {upload}.part {upload}") == 0
        assert mode_owner(upload) == ("0o640", 1000, deploy_gid)
        # The service user's groups come from the root's /etc/group (systemd: initgroups).
        svc_groups = service_groups(root)
        assert deploy_gid in svc_groups
        assert as_user(svc_uid, svc_gid, svc_groups, f"cat {upload} >/dev/null") == 0
        assert as_user(svc_uid, svc_gid, svc_groups,
                       f"mv {upload} {spool}/rejected/ && rm {spool}/rejected/door.twinlock") == 0
        assert not (spool / "rejected/door.twinlock").exists()

        private = spool / "private.twinlock"             # what a 0600 upload would be
        assert as_user(1000, 1000, [1000, deploy_gid], f"umask 077; printf x > {private}") == 0
        assert as_user(svc_uid, svc_gid, svc_groups, f"cat {private} >/dev/null") != 0

        assert as_user(1000, 1000, [1000], f"ls {spool}") != 0   # not (yet) in the group
        assert as_user(1000, 1000, [1000], f"touch {spool}/x.twinlock") != 0
    finally:
        shutil.rmtree(base)


@needs_root
@pytest.mark.skipif(SETPRIV is None, reason="setpriv (util-linux) is not installed")
def test_deploy_account_reads_review_records_and_nothing_else_of_the_state() -> None:
    """Issue 22: `twinlock doors sync` reads the door's review records over SSH as the deploy
    account. Records the daemon writes (under the unit's UMask=0077, through the review store)
    are readable by a member of twinlock-deploy, not writable, and not readable by anyone else;
    the state folder (audit log, anchors) stays shut to the deploy account."""
    base = Path(tempfile.mkdtemp(prefix="twinlock-review-", dir="/tmp"))
    try:
        base.chmod(0o755)
        root = image_with_pi(base / "root")
        install(root, "--deploy-user", "pi")
        svc_uid, svc_gid = (int(x) for x in db(root, "passwd")["twinlock"][2:4])
        deploy_gid = int(db(root, "group")[DEPLOY_GROUP][2])
        review, state = root / REVIEW, root / "var/lib/twinlock"
        # what the review store does (daemon/review/store.py) under the unit's umask: files
        # created, then chmod 0640, in the folder and in the crops/ install.sh made
        writer = (f"umask 077; printf rec > {review}/2026-12-06.jsonl && chmod 0640 {review}/2026-12-06.jsonl"
                  f" && printf jpg > {review}/crops/a.jpg && chmod 0640 {review}/crops/a.jpg && "
                  f"printf audit > {state}/audit.db")
        assert as_user(svc_uid, svc_gid, service_groups(root), writer) == 0
        assert mode_owner(review / "crops/a.jpg") == ("0o640", svc_uid, deploy_gid)
        pi = (1000, 1000, [1000, deploy_gid])
        assert as_user(*pi, f"cd {review} && ls && cat 2026-12-06.jsonl crops/a.jpg "
                            "&& tar -cf - crops/a.jpg >/dev/null") == 0
        assert as_user(*pi, f"touch {review}/x.jsonl") != 0           # reads only
        assert as_user(*pi, f"rm -f {review}/2026-12-06.jsonl") != 0
        assert as_user(*pi, f"ls {state}") != 0                        # nothing of the state
        assert as_user(*pi, f"cat {state}/audit.db") != 0
        assert as_user(1000, 1000, [1000], f"ls {review}") != 0        # not in the group
    finally:
        shutil.rmtree(base)


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed "
                    "(optional: apt install shellcheck)")
def test_scripts_pass_shellcheck() -> None:
    proc = subprocess.run(["shellcheck", str(INSTALL), str(UNINSTALL)],
                          check=False, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
