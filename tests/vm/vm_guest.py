"""A Debian guest with systemd as PID 1, booted once per session under qemu, for tests/vm/.

Started by ``scripts/vm-tests.sh``, which builds (or finds in its cache) the image, the wheel and the
wheelhouse and passes them in ``TWINLOCK_VM_*``; without them every test here is skipped. The guest
boots on a throw-away qcow2 overlay in software emulation (TCG: this machine's /dev/kvm is a
nested one that hangs Debian's kernel), its ssh is forwarded to 127.0.0.1 only, every wait has a
limit, and the qemu started here is always killed by its pid at the end; when a wait gives up, the
failure shows the tail of the guest's serial console.

``door`` installs TwinLock in the guest as a user would (the host's wheel, ``deploy/install.sh``
with its dependencies from the wheelhouse: the guest cannot reach PyPI) and deploys a signed
bundle with ``twinlock deploy`` over ssh.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

#: the model the guest's bundles carry: the compact tower (emulated, the default's dlib ResNet
#: manages about 0.2 frames a second; the unit and the daemon's code are the same for both)
GUEST_MODEL = REPO / "models" / "compact"
CLIP = "short_hamilton_clip.mp4"
#: where the clip lives in the guest: readable by the service user under ProtectSystem=strict
GUEST_CLIP = f"/srv/twinlock-test/{CLIP}"
#: the review folder install.sh makes (config.yaml's default review.dir) and the door's name
GUEST_REVIEW_DIR = "/var/lib/twinlock-review"
REVIEW_DOOR = "vm"
#: frames of the clip showing each performer (tests/daemon_helpers.py)
MIRANDA_FRAMES = range(82, 211)
LACAMOIRE_FRAMES = range(20, 82)
#: the relay: BCM pin 17 of the gpio-sim chip the image makes at boot (/dev/gpiochip0, 28 lines;
#: scripts/vm-tests.sh), driven by gpiozero + lgpio as on a Pi; a pulse long enough to watch
RELAY_PIN = 17
PULSE_S = 1.5
#: gpio-sim's sysfs folder of that chip in the guest: sim_gpioN/value is each line's level
GUEST_GPIO_SIM = "/run/twinlock-vm/gpiochip"

ENV = {name: os.environ.get(f"TWINLOCK_VM_{name}", "") for name in
       ("IMAGE", "WHEEL", "WHEELHOUSE", "SUITE", "DEPLOY_USER", "TIMES", "ACCEL", "MEM", "CPUS",
        "NICE", "CPU")}


def examples() -> Path:
    """The real faces and clip (``$TWINLOCK_DATA`` or ../shared/data): a failure without them,
    since this suite only runs when asked for (scripts/vm-tests.sh)."""
    root = Path(os.environ.get("TWINLOCK_DATA") or REPO.parent / "shared" / "data")
    path = root / "face_recognition_examples"
    if not (path / CLIP).is_file():
        pytest.fail(f"test data not found: {path / CLIP}")
    return path


def _skip_without_vm() -> None:
    if not ENV["IMAGE"]:
        pytest.skip("no VM image: run scripts/vm-tests.sh (boots Debian under qemu)")


@dataclass
class Times:
    """Seconds each stage took, written to $TWINLOCK_VM_TIMES at the end of the session."""

    seconds: dict[str, float] = field(default_factory=dict)
    figures: dict[str, object] = field(default_factory=dict)

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        started = time.monotonic()
        try:
            yield
        finally:
            self.seconds[name] = round(time.monotonic() - started, 1)
            print(f"\nvm stage {name}: {self.seconds[name]} s", flush=True)

    def save(self) -> None:
        if ENV["TIMES"]:
            Path(ENV["TIMES"]).write_text(json.dumps(
                {"suite": ENV["SUITE"], "seconds": self.seconds, "figures": self.figures},
                indent=2) + "\n")


@pytest.fixture(scope="session")
def times() -> Iterator[Times]:
    t = Times()
    yield t
    t.save()


class GuestError(AssertionError):
    """A command in the guest failed or timed out."""


@dataclass
class Guest:
    """A booted guest: run commands over ssh, copy files in."""

    port: int
    key: Path
    known_hosts: Path
    console: Path
    qemu_pid: int

    def ssh_options(self) -> list[str]:
        return ["-F", "/dev/null", "-o", f"UserKnownHostsFile={self.known_hosts}",
                "-o", "GlobalKnownHostsFile=/dev/null", "-o", "StrictHostKeyChecking=yes",
                "-o", "LogLevel=ERROR", "-o", "BatchMode=yes", "-o", "ConnectTimeout=20",
                "-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=4"]

    def run(self, command: str, timeout: float = 120, check: bool = True,
            user: str = "root") -> subprocess.CompletedProcess[str]:
        """``command`` through the guest's shell; fails (with the console's tail) on a timeout,
        and on a non-zero exit when ``check``."""
        argv = ["ssh", *self.ssh_options(), "-i", str(self.key), "-p", str(self.port),
                f"{user}@127.0.0.1", command]
        try:
            result = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=timeout,
                                    stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as exc:
            raise GuestError(f"guest command timed out after {timeout} s: {command}\n"
                             f"{self.console_tail()}") from exc
        if check and result.returncode != 0:
            raise GuestError(f"guest command failed ({result.returncode}): {command}\n"
                             f"stdout: {result.stdout[-3000:]}\nstderr: {result.stderr[-3000:]}")
        return result

    def put(self, src: Path, dest: str, timeout: float = 300) -> None:
        argv = ["scp", "-q", "-r", *self.ssh_options(), "-i", str(self.key), "-P", str(self.port),
                str(src), f"root@127.0.0.1:{dest}"]
        try:
            subprocess.run(argv, check=True, timeout=timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as exc:
            raise GuestError(f"scp {src} timed out after {timeout} s\n{self.console_tail()}") \
                from exc

    def console_tail(self, lines: int = 40) -> str:
        try:
            text = self.console.read_text(errors="replace").splitlines()[-lines:]
        except OSError as exc:
            return f"(no console log: {exc})"
        return "guest console (last lines):\n" + "\n".join(text)

    def wait_until(self, command: str, limit_s: float, what: str, every_s: float = 3) -> str:
        """Run ``command`` until it exits 0 (its stdout) or fail after ``limit_s``."""
        deadline = time.monotonic() + limit_s
        last = None
        while time.monotonic() < deadline:
            last = self.run(command, timeout=max(30.0, every_s * 4), check=False)
            if last.returncode == 0:
                return last.stdout
            time.sleep(every_s)
        detail = f"stdout: {last.stdout[-2000:]}\nstderr: {last.stderr[-1000:]}" if last else ""
        raise GuestError(f"{what}: not within {limit_s:.0f} s\n{detail}")

    def journal(self, since: str = "", unit: str = "twinlockd") -> str:
        cursor = f" --since {shlex.quote(since)}" if since else ""
        return self.run(f"journalctl -u {unit} -o short-monotonic --no-pager{cursor}").stdout

    def show(self, *props: str) -> dict[str, str]:
        out = self.run("systemctl show twinlockd " + " ".join(f"-p {p}" for p in props)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _host_key(image: Path) -> str:
    """The guest's ssh host key, read from the image itself (debugfs: no mount, no root needed)."""
    out = subprocess.run(["debugfs", "-R", "cat /etc/ssh/ssh_host_ed25519_key.pub",
                          str(image / "disk.img")], capture_output=True, text=True, check=True,
                         timeout=60)
    parts = out.stdout.split()
    assert parts and parts[0] == "ssh-ed25519", out.stdout + out.stderr
    return f"{parts[0]} {parts[1]}"


def _stop(pid: int, guest: Guest | None) -> None:
    """Power the guest off (briefly), then kill its qemu by pid, whatever state it is in."""
    if guest is not None and _alive(pid):
        with contextlib.suppress(Exception):
            guest.run("systemctl poweroff", timeout=15, check=False)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.5)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if not _alive(pid):
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.2)


@pytest.fixture(scope="session")
def guest(tmp_path_factory: pytest.TempPathFactory, times: Times) -> Iterator[Guest]:
    """One booted guest for the session; always stopped at its end."""
    _skip_without_vm()
    image = Path(ENV["IMAGE"])
    work = tmp_path_factory.mktemp("vm")
    overlay = work / "run.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(image / "disk.img"),
                    "-F", "raw", str(overlay)], check=True, timeout=60)
    known_hosts = work / "known_hosts"
    port = free_port()
    known_hosts.write_text(f"[127.0.0.1]:{port} {_host_key(image)}\n")
    console, pidfile = work / "console.log", work / "qemu.pid"
    accel = ENV["ACCEL"] or "tcg"
    argv = ["nice", "-n", ENV["NICE"] or "15", "qemu-system-x86_64",
            "-accel", "tcg,thread=multi" if accel == "tcg" else accel,
            "-cpu", ENV["CPU"] or ("max" if accel == "tcg" else "host"),
            "-m", ENV["MEM"] or "2048", "-smp", ENV["CPUS"] or "2",
            "-display", "none", "-monitor", "none", "-serial", f"file:{console}",
            "-kernel", str(image / "vmlinuz"), "-initrd", str(image / "initrd.img"),
            "-append", "root=/dev/vda rw console=ttyS0 quiet",
            "-drive", f"file={overlay},format=qcow2,if=virtio",
            "-nic", f"user,model=virtio-net-pci,hostfwd=tcp:127.0.0.1:{port}-:22",
            "-pidfile", str(pidfile), "-daemonize"]
    # pytest runs finalizers on KeyboardInterrupt only: make a SIGTERM (and a SIGINT that a
    # background shell ignored) one, so the qemu below is always stopped
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.default_int_handler)
    with times.stage("boot"):
        subprocess.run(argv, check=True, timeout=60)
        pid = int(pidfile.read_text().strip())
        vm = Guest(port=port, key=image / "id_ed25519", known_hosts=known_hosts,
                   console=console, qemu_pid=pid)
        try:
            deadline = time.monotonic() + 600
            while True:
                if not _alive(pid):
                    raise GuestError(f"qemu exited during boot\n{vm.console_tail()}")
                if vm.run("true", timeout=40, check=False).returncode == 0:
                    break
                if time.monotonic() > deadline:
                    raise GuestError(f"no ssh within 600 s\n{vm.console_tail()}")
                time.sleep(3)
            state = vm.run("systemctl is-system-running --wait", timeout=300, check=False)
            times.figures["boot_state"] = state.stdout.strip()
            if state.stdout.strip() != "running":
                failed = vm.run("systemctl --failed --no-legend", check=False).stdout
                print(f"guest is {state.stdout.strip()}: failed units:\n{failed}")
        except BaseException:
            _stop(pid, None)
            raise
    try:
        times.figures["guest"] = vm.run(
            "uname -r; systemctl --version | head -n 1; python3 -V").stdout.split("\n")
        yield vm
    finally:
        with times.stage("poweroff"):
            _stop(pid, vm)


@dataclass
class Door:
    """TwinLock installed in the guest, and what the host needs to deploy to it."""

    guest: Guest
    signing_key: Path
    enrol_db: Path
    workdir: Path
    deploy_user: str

    def ssh_option_args(self) -> list[str]:
        """The guest's ssh options as ``twinlock deploy``/``doors add`` take them."""
        options = self.guest.ssh_options()
        return [f"--ssh-option=-o {value}" for flag, value in itertools.pairwise(options)
                if flag == "-o"]

    def target(self) -> str:
        return f"ssh://{self.deploy_user}@127.0.0.1:{self.guest.port}/var/spool/twinlock/"

    def deploy(self, bundle: Path, reload: bool = True,
               timeout: float = 600) -> subprocess.CompletedProcess[str]:
        """``twinlock deploy`` from the host, as the household would (the pi account's key)."""
        argv = [str(Path(sys.executable).parent / "twinlock"), "deploy", str(bundle),
                "--to", self.target(), "-i", str(self.guest.key)]
        argv += self.ssh_option_args()
        if not reload:
            argv.append("--no-reload")
        return subprocess.run(argv, check=False, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)

    def bundle(self, name: str, users: list[str]) -> Path:
        out = self.workdir / f"{name}.twinlock"
        twinlock("bundle", "--model", str(GUEST_MODEL), "--users", *users,
                  "--key", str(self.signing_key), "--out", str(out), "--db", str(self.enrol_db))
        return out

    def audit(self, event: str | None = "unlock") -> list[dict[str, object]]:
        """The guest's audit records (read as the service user: a root-owned SQLite
        journal file would shut the daemon out of its own database)."""
        which = f" --event {event}" if event else ""
        out = self.guest.run("runuser -u twinlock -- /opt/twinlock/venv/bin/twinlockd log "
                             f"--json --limit 0{which} -c /etc/twinlock/config.yaml",
                             timeout=300).stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def main_pid(self) -> int:
        return int(self.guest.show("MainPID")["MainPID"])


def twinlock(*args: str, timeout: float = 600) -> str:
    result = subprocess.run([str(Path(sys.executable).parent / "twinlock"), *args],
                            check=False, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"twinlock {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def door_config(**overrides: object) -> str:
    """The door's config in the guest: the real clip replayed in a loop, every frame handled
    (the emulated CPU is slow), liveness off (too few frames a second for a head turn), the gpio
    action on the image's gpio-sim chip (``TWINLOCK_VM_ACTION``, JSON, changes its keys: a wrong
    pin or polarity, to watch the line's tests fail), the bundle from the drop folder, the
    watchdog on, review records on (in the folder install.sh makes for them)."""
    import yaml

    action = {"type": "gpio", "pin": RELAY_PIN, "active_high": True, "pulse_seconds": PULSE_S,
              "cooldown_seconds": 2.0, **json.loads(os.environ.get("TWINLOCK_VM_ACTION") or "{}")}

    cfg: dict[str, object] = {
        "state_dir": "/var/lib/twinlock",
        "model": {"source": "bundle", "public_key": "/etc/twinlock/trusted_key.pub",
                  "incoming": "/var/spool/twinlock"},
        "camera": {"type": "replay", "source": GUEST_CLIP, "realtime": False, "loop": True},
        "liveness": {"mode": "off"},
        "action": action,
        # the compact model's pair threshold: at its door-level ones (door_far_1e-02: 0.988) no
        # 2 frames in a row of the clip pass for either performer, so nobody would be let in
        "verification": {"threshold_name": "far_1e-02"},
        "audit": {"db": "/var/lib/twinlock/audit.db"},
        "service": {"status_interval_s": 5},
        "review": {"enabled": True, "dir": GUEST_REVIEW_DIR, "door": REVIEW_DOOR},
    }
    cfg.update(overrides)
    return yaml.safe_dump(cfg)


@pytest.fixture(scope="session")
def door(guest: Guest, times: Times, tmp_path_factory: pytest.TempPathFactory) -> Door:
    """TwinLock installed in the guest by install.sh from the host's wheel, started by systemd,
    with a first bundle (resident: Lin-Manuel Miranda) deployed over ssh."""
    photos = examples()
    work = tmp_path_factory.mktemp("household")
    key = work / "signing"
    db = work / "enrolment.db"
    with times.stage("enrol-and-bundle"):
        twinlock("keygen", "--out", str(key))
        twinlock("enroll", "lin", "--images", str(photos / "lin-manuel-miranda.png"),
                  "--model", str(GUEST_MODEL), "--db", str(db))
    d = Door(guest=guest, signing_key=key.with_suffix(".key"), enrol_db=db, workdir=work,
             deploy_user=ENV["DEPLOY_USER"] or "pi")
    first = d.bundle("household-1", ["lin"])
    with times.stage("copy-in"):
        guest.run("mkdir -p /root/twinlock/deploy /srv/twinlock-test")
        guest.put(Path(ENV["WHEEL"]), "/root/twinlock/")
        guest.put(Path(ENV["WHEELHOUSE"]), "/root/twinlock/wheelhouse")
        for name in ("install.sh", "uninstall.sh", "twinlockd.service", "mqtt.conf"):
            guest.put(REPO / "deploy" / name, "/root/twinlock/deploy/")
        guest.put(REPO / "config.yaml", "/root/twinlock/config.yaml")
        guest.put(key.with_suffix(".pub"), "/root/twinlock/signing.pub")
        guest.put(photos / CLIP, GUEST_CLIP)
        guest.run(f"chmod 0755 /srv/twinlock-test && chmod 0644 {GUEST_CLIP}")
    # Drop-ins that break the unit on purpose, to see a test fail (docs/development/testing.md):
    # TWINLOCK_VM_UNIT_DROPIN=FILE[:FILE...], installed before install.sh starts the unit, last
    # in the drop-ins' order (after a test's own mqtt.conf too).
    mutants = [m for m in os.environ.get("TWINLOCK_VM_UNIT_DROPIN", "").split(os.pathsep) if m]
    for i, mutant in enumerate(mutants):
        guest.run("install -d /etc/systemd/system/twinlockd.service.d")
        guest.put(Path(mutant), f"/etc/systemd/system/twinlockd.service.d/zz-vm-mutant-{i}.conf")
    # The household's own config, in place before the install (install.sh keeps an existing one).
    config = work / "config.yaml"
    config.write_text(door_config())
    guest.run("install -d -m 0755 /etc/twinlock")
    guest.put(config, "/etc/twinlock/config.yaml")
    wheel = Path(ENV["WHEEL"]).name
    with times.stage("install.sh"):
        result = guest.run(
            "cd /root/twinlock && PIP_NO_INDEX=1 PIP_FIND_LINKS=/root/twinlock/wheelhouse "
            f"deploy/install.sh --no-apt --from /root/twinlock/{wheel} "
            f"--key /root/twinlock/signing.pub --deploy-user {d.deploy_user}",
            timeout=1800, check=False)
    times.figures["install_sh"] = {"exit": result.returncode,
                                   "stdout_tail": result.stdout.splitlines()[-25:],
                                   "stderr_tail": result.stderr.splitlines()[-10:]}
    print(result.stdout[-4000:], result.stderr[-2000:])
    # started by install.sh (Type=notify: once READY), with no bundle yet: the door stays locked
    assert result.returncode == 0, f"install.sh failed:\n{result.stdout}\n{result.stderr}\n" \
        + guest.journal()[-3000:]
    assert guest.run("systemctl is-enabled twinlockd; systemctl is-active twinlockd"
                     ).stdout.split() == ["enabled", "active"]
    since = guest.run("date '+%Y-%m-%d %H:%M:%S'").stdout.strip()
    with times.stage("first-deploy"):
        deployed = d.deploy(first)
    print(deployed.stdout, deployed.stderr)
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    guest.wait_until(f"journalctl -u twinlockd --since '{since}' -o cat --no-pager "
                     "| grep 'reloaded: '", 600, "the first bundle loaded by the reload")
    return d
