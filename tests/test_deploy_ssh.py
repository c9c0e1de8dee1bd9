"""``trainer.deploy`` against a real OpenSSH server on 127.0.0.1, plus card folders and URL parsing.

The sshd is throw-away: its own host key, one authorised user key, a free port, started once per
test session (about 0.1 s) and stopped at the end. Nothing in ``~/.ssh`` is read or written.
"""

from __future__ import annotations

import getpass
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest

from twinlock.daemon.errors import DataNotFoundError, UsageError
from twinlock.trainer.errors import DeployError
from twinlock.trainer.household.deploy import (
    DEFAULT_REMOTE_DIR,
    LocalTarget,
    SshTarget,
    deploy,
    parse_target,
)

SSHD = Path("/usr/sbin/sshd")


def _under_ci() -> bool:
    return os.environ.get("TWINLOCK_REQUIRE_DATA") == "1" or os.environ.get("CI") == "true"


def _require_tools() -> None:
    """Skip without OpenSSH here; under CI a missing sshd is a failure (setup.sh installs it)."""
    missing = [str(SSHD)] if not SSHD.is_file() else []
    missing += [tool for tool in ("ssh", "sftp", "ssh-keygen") if shutil.which(tool) is None]
    if missing:
        message = (f"OpenSSH not installed ({', '.join(missing)} missing); "
                   "run scripts/setup.sh (apt: openssh-server openssh-client)")
        if _under_ci():
            pytest.fail(message + " (CI)")
        pytest.skip(message)


@dataclass(frozen=True)
class Door:
    """A running sshd and what a client needs to reach it."""

    port: int
    user: str
    key: Path
    wrong_key: Path
    known_hosts: Path
    options: list[str]

    def url(self, path: Path | str) -> str:
        return f"ssh://{self.user}@127.0.0.1:{self.port}{path}"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _keygen(path: Path) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f",
                    str(path)], check=True, stdin=subprocess.DEVNULL)
    return path


def _wait_for_banner(port: int, proc: subprocess.Popen[bytes], log: Path, limit_s: float) -> None:
    """Ready means the server says ``SSH-``, not merely that the port accepts."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"sshd exited with {proc.returncode}:\n{log.read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                if sock.recv(4).startswith(b"SSH-"):
                    return
        except OSError:
            pass
        time.sleep(0.02)
    raise RuntimeError(f"sshd did not answer on port {port} within {limit_s} s:\n{log.read_text()}")


@pytest.fixture(scope="session")
def door(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Door]:
    _require_tools()
    home = tmp_path_factory.mktemp("sshd")
    host_key = _keygen(home / "host_ed25519")
    user_key = _keygen(home / "user_ed25519")
    wrong_key = _keygen(home / "wrong_ed25519")
    authorized = home / "authorized_keys"
    authorized.write_text(user_key.with_suffix(".pub").read_text())
    remote_home = home / "home"
    remote_home.mkdir()
    port = _free_port()
    config = home / "sshd_config"
    config.write_text("\n".join([
        f"Port {port}",
        "ListenAddress 127.0.0.1",
        f"HostKey {host_key}",
        f"AuthorizedKeysFile {authorized}",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "UsePAM no",
        "StrictModes no",
        "PermitRootLogin prohibit-password",
        f"PidFile {home / 'sshd.pid'}",
        "Subsystem sftp internal-sftp",
        "UseDNS no",
        "PrintMotd no",
        "PrintLastLog no",
        "LogLevel ERROR",
        # a clean HOME: the developer's ~/.bashrc (pyenv, conda, ...) would otherwise run for
        # every remote command and cost up to a second each; a Pi's non-interactive shell is quick
        f"SetEnv HOME={remote_home}",
        "",
    ]))
    # sshd insists on its privilege-separation folder even when it runs in the foreground
    try:
        Path("/run/sshd").mkdir(mode=0o755, parents=True, exist_ok=True)
    except OSError:
        pass
    known_hosts = home / "known_hosts"
    host_pub = host_key.with_suffix(".pub").read_text().split()
    known_hosts.write_text(f"[127.0.0.1]:{port} {host_pub[0]} {host_pub[1]}\n")
    log = home / "sshd.log"
    with log.open("wb") as log_file:
        proc = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(config)],
                                stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file)
    try:
        _wait_for_banner(port, proc, log, limit_s=10)
        # -F /dev/null: the tests never read the developer's ~/.ssh/config
        options = ["-F", "/dev/null", "-o", f"UserKnownHostsFile={known_hosts}",
                   "-o", "GlobalKnownHostsFile=/dev/null", "-o", "StrictHostKeyChecking=yes",
                   "-o", "LogLevel=ERROR"]
        yield Door(port=port, user=getpass.getuser(), key=user_key, wrong_key=wrong_key,
                   known_hosts=known_hosts, options=options)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    """Bundle-like random bytes (3 MB): deploy does not look inside, only moves them."""
    path = tmp_path / "src" / "door-2024.twinlock"
    path.parent.mkdir()
    path.write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    return path


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".part"))


# -- over ssh -----------------------------------------------------------------------------------


def test_deploy_over_ssh_arrives_whole_and_reloads(door: Door, bundle: Path,
                                                   tmp_path: Path) -> None:
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    marker = tmp_path / "reloaded"
    report = deploy(bundle, door.url(f"{incoming}/"), reload_command=f"touch {marker}",
                    ssh_options=door.options, identity=door.key, timeout_s=30)
    arrived = incoming / bundle.name
    assert arrived.read_bytes() == bundle.read_bytes()
    # readable by the drop folder's group (the daemon's user), whatever mode it had on the host
    assert arrived.stat().st_mode & 0o777 == 0o640
    assert _leftovers(incoming) == []
    assert marker.exists()
    assert report.reloaded is True
    assert report.remote_path == str(arrived)
    assert report.bytes == bundle.stat().st_size
    assert 0 < report.seconds < 30
    assert [s.split()[0] for s in report.steps] == ["ssh", "sftp", "ssh", "ssh"]
    assert any("mv -f" in s for s in report.steps)
    assert all("BatchMode=yes" in s for s in report.steps)


def test_deploy_over_ssh_path_names_the_file_and_replaces_it(door: Door, bundle: Path,
                                                            tmp_path: Path) -> None:
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    dest = incoming / "current.twinlock"
    dest.write_bytes(b"the old bundle")
    report = deploy(bundle, door.url(dest), reload_command=None, ssh_options=door.options,
                    identity=door.key)
    assert dest.read_bytes() == bundle.read_bytes()
    assert report.remote_path == str(dest)
    assert report.reloaded is False
    assert len(report.steps) == 3
    assert _leftovers(incoming) == []


def test_deploy_over_ssh_existing_folder_without_slash_keeps_name(door: Door, bundle: Path,
                                                                  tmp_path: Path) -> None:
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    report = deploy(bundle, door.url(incoming), reload_command="", ssh_options=door.options,
                    identity=door.key)
    assert (incoming / bundle.name).read_bytes() == bundle.read_bytes()
    assert report.remote_path == str(incoming / bundle.name)


def test_deploy_over_ssh_quotes_awkward_paths(door: Door, tmp_path: Path) -> None:
    """Spaces, quotes, $, ;, glob characters and a backslash survive sftp and the remote shell."""
    incoming = tmp_path / "in coming 'q' \"dq\" $HOME; x"
    incoming.mkdir()
    src = tmp_path / "src [1] *"
    src.mkdir()
    (src / "other").write_bytes(b"must not be picked up by a glob")
    bundle = src / "b*nd?le \\ $(id).twinlock"
    bundle.write_bytes(os.urandom(4096))
    marker = tmp_path / "reloaded it"
    report = deploy(bundle, door.url(quote(f"{incoming}/")),
                    reload_command=f"touch '{marker}'", ssh_options=door.options,
                    identity=door.key)
    assert (incoming / bundle.name).read_bytes() == bundle.read_bytes()
    assert sorted(p.name for p in incoming.iterdir()) == [bundle.name]
    assert marker.exists()
    assert report.remote_path == f"{incoming}/{bundle.name}"


def test_deploy_wrong_key_fails_at_connect_without_hanging(door: Door, bundle: Path,
                                                           tmp_path: Path) -> None:
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    start = time.monotonic()
    with pytest.raises(DeployError) as err:
        deploy(bundle, door.url(f"{incoming}/"), ssh_options=door.options,
               identity=door.wrong_key, timeout_s=20)
    assert time.monotonic() - start < 10
    assert err.value.step == "connect"
    assert "'connect'" in str(err.value)
    assert "Permission denied" in err.value.stderr
    assert "did not accept" in str(err.value)
    assert list(incoming.iterdir()) == []


def test_deploy_unknown_host_key_fails_at_connect(door: Door, bundle: Path,
                                                  tmp_path: Path) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    options = [o.replace(str(door.known_hosts), str(empty)) for o in door.options]
    start = time.monotonic()
    with pytest.raises(DeployError) as err:
        deploy(bundle, door.url(f"{tmp_path}/"), ssh_options=options, identity=door.key)
    assert time.monotonic() - start < 10
    assert err.value.step == "connect"
    assert "Host key verification failed" in err.value.stderr
    assert "known_hosts" in str(err.value)


def test_deploy_nothing_listening_fails_at_connect(door: Door, bundle: Path,
                                                   tmp_path: Path) -> None:
    with pytest.raises(DeployError) as err:
        deploy(bundle, f"ssh://{door.user}@127.0.0.1:{_free_port()}{tmp_path}/",
               ssh_options=door.options, identity=door.key)
    assert err.value.step == "connect"
    assert "refused" in str(err.value).lower()


def test_deploy_failing_reload_names_reload_with_bundle_in_place(door: Door, bundle: Path,
                                                                 tmp_path: Path) -> None:
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    with pytest.raises(DeployError) as err:
        deploy(bundle, door.url(f"{incoming}/"),
               reload_command="echo 'twinlockd: no such unit' >&2; exit 5",
               ssh_options=door.options, identity=door.key)
    assert err.value.step == "reload"
    assert "'reload'" in str(err.value) and "exit 5" in str(err.value)
    assert "no such unit" in err.value.stderr
    assert "in place" in str(err.value)
    assert (incoming / bundle.name).read_bytes() == bundle.read_bytes()
    assert _leftovers(incoming) == []


def test_deploy_slow_reload_times_out(door: Door, bundle: Path, tmp_path: Path) -> None:
    start = time.monotonic()
    with pytest.raises(DeployError) as err:
        deploy(bundle, door.url(f"{tmp_path}/"), reload_command="sleep 10",
               ssh_options=door.options, identity=door.key, timeout_s=3)
    assert time.monotonic() - start < 8
    assert err.value.step == "reload"
    assert "timed out" in str(err.value)


def test_deploy_verbose_ssh_does_not_hang(door: Door, bundle: Path, tmp_path: Path) -> None:
    """``-v`` would pin a shared master's stderr to our pipe: deploy then does not share one."""
    start = time.monotonic()
    report = deploy(bundle, door.url(f"{tmp_path}/"), reload_command=f"touch {tmp_path}/r",
                    ssh_options=["-v", *door.options], identity=door.key, timeout_s=20)
    assert time.monotonic() - start < 15
    assert report.reloaded and (tmp_path / "r").exists()
    assert not any("ControlPath" in step for step in report.steps)


def test_deploy_missing_remote_folder(door: Door, bundle: Path, tmp_path: Path) -> None:
    with pytest.raises(DeployError) as err:
        deploy(bundle, door.url(f"{tmp_path}/nowhere/"), ssh_options=door.options,
               identity=door.key)
    assert err.value.step == "upload"
    assert "does not exist" in str(err.value)
    with pytest.raises(DeployError, match="does not exist"):
        deploy(bundle, door.url(f"{tmp_path}/nowhere/b.twinlock"), ssh_options=door.options,
               identity=door.key)


def test_deploy_leaves_no_ssh_master_behind(door: Door, bundle: Path, tmp_path: Path) -> None:
    """The shared connection (ControlPersist) is closed and its socket folder removed."""
    report = deploy(bundle, door.url(f"{tmp_path}/"), reload_command=None,
                    ssh_options=door.options, identity=door.key)
    match = re.search(r"ControlPath=(\S+)/%C", report.steps[0])
    assert match is not None
    control_dir = match.group(1)
    assert not Path(control_dir).exists()

    def masters() -> list[bytes]:
        found = []
        for proc in Path("/proc").iterdir():
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            if control_dir.encode() in cmdline:
                found.append(cmdline)
        return found

    # `ssh -O exit` asks the master to go; on a busy machine it takes a moment to exit
    deadline = time.monotonic() + 10.0
    while masters() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert masters() == [], "the ssh master outlived deploy by more than 10 s"


# -- local folder (an SD card) ------------------------------------------------------------------


def test_deploy_to_local_folder(bundle: Path, tmp_path: Path) -> None:
    card = tmp_path / "card"
    card.mkdir()
    report = deploy(bundle, str(card))
    assert (card / bundle.name).read_bytes() == bundle.read_bytes()
    assert _leftovers(card) == []
    assert report.reloaded is False
    assert "card" in report.note
    assert report.remote_path == str(card / bundle.name)
    again = deploy(bundle, f"file://{quote(str(card))}", reload_command=None)
    assert again.remote_path == report.remote_path


def test_deploy_local_errors(bundle: Path, tmp_path: Path) -> None:
    with pytest.raises(DataNotFoundError, match="does not exist"):
        deploy(bundle, str(tmp_path / "not-mounted"))
    with pytest.raises(UsageError, match="not a folder"):
        deploy(bundle, str(bundle))
    with pytest.raises(DataNotFoundError, match="ssh://"):
        deploy(bundle, "pi@door:/var/spool/twinlock/")
    with pytest.raises(DataNotFoundError, match="bundle"):
        deploy(tmp_path / "missing.twinlock", str(tmp_path))


# -- parsing ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("url", "expected"), [
    ("ssh://pi@door", SshTarget("pi", "door", None, DEFAULT_REMOTE_DIR)),
    ("ssh://pi@door/", SshTarget("pi", "door", None, DEFAULT_REMOTE_DIR)),
    ("ssh://pi@door:2222", SshTarget("pi", "door", 2222, DEFAULT_REMOTE_DIR)),
    ("ssh://pi@192.168.1.20:22/srv/in/", SshTarget("pi", "192.168.1.20", 22, "/srv/in/")),
    ("ssh://pi@door/srv/in/front.twinlock",
     SshTarget("pi", "door", None, "/srv/in/front.twinlock")),
    ("ssh://door.local/srv/my%20bundles/", SshTarget(None, "door.local", None,
                                                      "/srv/my bundles/")),
    ("ssh://pi@[fe80::1]:2200/in/", SshTarget("pi", "fe80::1", 2200, "/in/")),
    ("ssh://user%40corp@door/x/", SshTarget("user@corp", "door", None, "/x/")),
    ("SSH://pi@door", SshTarget("pi", "door", None, DEFAULT_REMOTE_DIR)),
])
def test_parse_ssh_targets(url: str, expected: SshTarget) -> None:
    assert parse_target(url) == expected


def test_parse_ssh_destinations() -> None:
    v6 = parse_target("ssh://pi@[::1]:22/in/")
    assert isinstance(v6, SshTarget)
    assert v6.destination == "pi@::1" and v6.sftp_destination == "pi@[::1]"


@pytest.mark.parametrize(("text", "expected"), [
    ("/media/card", LocalTarget(Path("/media/card"))),
    ("file:///media/my%20card", LocalTarget(Path("/media/my card"))),
    ("file://localhost/media/card", LocalTarget(Path("/media/card"))),
    ("relative/dir", LocalTarget(Path("relative/dir"))),
])
def test_parse_local_targets(text: str, expected: LocalTarget) -> None:
    assert parse_target(text) == expected


@pytest.mark.parametrize(("url", "words"), [
    ("", "empty"),
    ("ssh://", "no host"),
    ("ssh://pi@", "no host"),
    ("ssh://pi@door:", "empty port"),
    ("ssh://pi@door:ssh/x", "port"),
    ("ssh://pi@door:0/x", "port"),
    ("ssh://pi@door:70000/x", "port"),
    ("ssh://pi:secret@door/x", "password"),
    ("ssh://@door/x", "empty user"),
    ("ssh://-oProxyCommand=x/y", "not a host"),
    ("ssh://pi@-oProxyCommand=x/y", "not a host"),
    ("ssh://pi@door/x?y=1", "query"),
    ("ssh://pi@[nothost]/x", "IPv6|IPv4"),
    ("http://door/x", "unsupported scheme"),
    ("file://otherhost/x", "local folder"),
])
def test_parse_bad_targets(url: str, words: str) -> None:
    with pytest.raises(UsageError, match=words):
        parse_target(url)


def test_port_belongs_in_the_url(bundle: Path) -> None:
    with pytest.raises(UsageError, match="port"):
        deploy(bundle, "ssh://pi@door/x/", ssh_options=["-p", "2222"])
