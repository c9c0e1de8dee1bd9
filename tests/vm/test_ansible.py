"""deploy/ansible/playbook.yml against a real systemd (Debian in a VM: tests/vm/vm_guest.py).

The one guest plays two doors of an inventory, front and back, one after the other: the playbook
installs TwinLock with install.sh from the host's wheel, writes front's config, deploys the
household's bundle; a second run changes nothing; the run for back rewrites the config (its own
door name) and leaves the current bundle alone. Then the household lists the inventory's doors
(plus one that is down) and ``twinlock doors update`` deploys to each, reporting the one that is
down. Run by scripts/vm-tests.sh (``-k ansible`` for these alone); skipped otherwise.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from vm_guest import (
    CLIP,
    ENV,
    GUEST_CLIP,
    GUEST_MODEL,
    GUEST_REVIEW_DIR,
    REPO,
    Guest,
    Times,
    examples,
    free_port,
    twinlock,
)

PLAYBOOK = REPO / "deploy" / "ansible" / "playbook.yml"
BIN = Path(sys.executable).parent
WHEELHOUSE = "/root/twinlock/wheelhouse"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _recap(output: str) -> dict[str, dict[str, int]]:
    """PLAY RECAP's counts per host."""
    out = {}
    for line in output.splitlines():
        match = re.match(r"^(\S+)\s+:\s+(ok=.*)$", line.strip())
        if match:
            out[match.group(1)] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", match.group(2))}
    return out


class Household:
    """The household's machine: key, enrolment, bundle, inventory; runs ansible-playbook."""

    def __init__(self, guest: Guest, work: Path) -> None:
        self.guest, self.work = guest, work
        # a copy: scripts/vm-tests.sh rebuilds its wheel in place at each run (another run may
        # start meanwhile), and a different wheel is an upgrade, not a second run
        self.wheel = work / Path(ENV["WHEEL"]).name
        shutil.copyfile(ENV["WHEEL"], self.wheel)
        photos = examples()
        twinlock("keygen", "--out", str(work / "signing"))
        self.key = work / "signing.key"
        self.db = work / "enrolment.db"
        twinlock("enroll", "lin", "--images", str(photos / "lin-manuel-miranda.png"),
                 "--model", str(GUEST_MODEL), "--db", str(self.db))
        self.bundle = work / "household.twinlock"
        twinlock("bundle", "--model", str(GUEST_MODEL), "--users", "lin", "--key", str(self.key),
                 "--out", str(self.bundle), "--db", str(self.db))
        self.inventory = work / "inventory.yml"
        ssh_args = " ".join(f"-o {v}" for f, v in zip(guest.ssh_options()[2::2],
                                                      guest.ssh_options()[3::2], strict=True)
                            if f == "-o")
        common = {"ansible_host": "127.0.0.1", "ansible_user": "root",
                  "ansible_ssh_private_key_file": str(guest.key),
                  "ansible_ssh_common_args": ssh_args}
        self.inventory.write_text(yaml.safe_dump({"twinlock_doors": {
            "vars": {
                "twinlock_wheel": str(self.wheel), "twinlock_public_key": str(work / "signing.pub"),
                "twinlock_bundle": str(self.bundle), "twinlock_deploy_users": [
                    ENV["DEPLOY_USER"] or "pi"],
                "twinlock_install_args": ["--no-apt"],
                "twinlock_install_environment": {"PIP_NO_INDEX": "1",
                                                 "PIP_FIND_LINKS": WHEELHOUSE},
                # the clip and the log action: these tests check provisioning (the relay line is
                # checked by test_systemd_unit.py)
                "twinlock_camera": {"type": "replay", "source": GUEST_CLIP, "realtime": False,
                                    "loop": True},
                "twinlock_action": {"type": "log", "cooldown_seconds": 2.0},
                "twinlock_review": {"enabled": True, "dir": GUEST_REVIEW_DIR},
                "twinlock_config_extra": {"liveness": {"mode": "off"},
                                          "verification": {"threshold_name": "far_1e-02"}},
            },
            "hosts": {
                "door-a": {**common, "ansible_port": guest.port, "twinlock_door_name": "front"},
                "door-b": {**common, "ansible_port": guest.port, "twinlock_door_name": "back"},
                # never installed: a door that is down, for doors update
                "door-c": {**common, "ansible_port": free_port(), "twinlock_door_name": "gone"},
            }}}))

    def playbook(self, limit: str, timeout: float = 2400) -> tuple[str, dict[str, int]]:
        env = {**os.environ, "ANSIBLE_NOCOLOR": "1", "ANSIBLE_PIPELINING": "1",
               "ANSIBLE_HOST_KEY_CHECKING": "True", "ANSIBLE_LOCAL_TEMP": str(self.work / "tmp"),
               "PATH": f"{BIN}:{os.environ.get('PATH', '')}"}
        result = subprocess.run([str(BIN / "ansible-playbook"), "-i", str(self.inventory),
                                 "--limit", limit, str(PLAYBOOK)], capture_output=True,
                                text=True, timeout=timeout, env=env, check=False,
                                stdin=subprocess.DEVNULL)
        out = result.stdout + result.stderr
        print(out[-6000:])
        assert result.returncode == 0, out[-8000:] + "\n" + self.guest.console_tail(10)
        return out, _recap(out)[limit]

    def door_state(self) -> tuple[str, str, str]:
        """(is-active, review.door in the config, sha256 of the door's current bundle)."""
        out = self.guest.run(
            "systemctl is-active twinlockd; "
            "sed -n 's/^  door: //p' /etc/twinlock/config.yaml; "
            "sha256sum /var/lib/twinlock/bundles/current.twinlock | cut -c1-64").stdout.split()
        return out[0], out[1], out[2]


@pytest.fixture(scope="module")
def household(guest: Guest, tmp_path_factory: pytest.TempPathFactory, times: Times) -> Household:
    with times.stage("ansible-copy-in"):
        guest.run("mkdir -p /root/twinlock /srv/twinlock-test")
        guest.put(Path(ENV["WHEELHOUSE"]), WHEELHOUSE)
        guest.put(examples() / CLIP, GUEST_CLIP)
        guest.run(f"chmod 0755 /srv/twinlock-test && chmod 0644 {GUEST_CLIP}")
    return Household(guest, tmp_path_factory.mktemp("ansible"))


def test_the_playbook_installs_a_door_and_a_second_run_changes_nothing(
        household: Household, times: Times) -> None:
    with times.stage("ansible-first-run"):
        out, recap = household.playbook("door-a")
    assert recap["changed"] > 0 and recap["failed"] == 0, out[-3000:]
    active, door, bundle = household.door_state()
    assert (active, door, bundle) == ("active", "front", _sha256(household.bundle)), out[-3000:]
    household.guest.run("/opt/twinlock/venv/bin/twinlockd check-config /etc/twinlock/config.yaml")

    with times.stage("ansible-second-run"):
        out, recap = household.playbook("door-a")
    assert recap["changed"] == 0 and recap["failed"] == 0, out[-4000:]
    times.figures["ansible_second_run"] = recap


def test_the_second_door_gets_its_own_name_and_keeps_the_current_bundle(
        household: Household, times: Times) -> None:
    main_pid = household.guest.show("MainPID")["MainPID"]
    with times.stage("ansible-door-b"):
        out, recap = household.playbook("door-b")
    assert recap["failed"] == 0 and recap["changed"] > 0, out[-3000:]
    # the config changed, so the daemon restarted on it; the bundle was already the door's
    assert re.search(r"TASK \[twinlock : Upload the bundle into the drop folder\] \**\n"
                     r"skipping: \[door-b\]", out), out[-3000:]
    active, door, bundle = household.door_state()
    assert (active, door, bundle) == ("active", "back", _sha256(household.bundle))
    assert household.guest.show("MainPID")["MainPID"] != main_pid


def test_doors_from_the_inventory_are_updated_and_one_that_is_down_is_reported(
        household: Household, times: Times) -> None:
    act = ["--activity-db", str(household.work / "activity.db")]
    out = twinlock("doors", "add", "--from-inventory", str(household.inventory), *act)
    assert out.count("added door") == 3, out
    with times.stage("doors-update"):
        result = subprocess.run(
            [str(BIN / "twinlock"), "doors", "update", "--model", str(GUEST_MODEL),
             "--key", str(household.key), "--db", str(household.db), *act],
            capture_output=True, text=True, timeout=1800, check=False, stdin=subprocess.DEVNULL)
    text = result.stdout + result.stderr
    print(text[-4000:])
    assert result.returncode == 1, text
    assert re.search(r"^front: done", result.stdout, re.MULTILINE), text
    assert re.search(r"^back: done", result.stdout, re.MULTILINE), text
    assert re.search(r"^gone: FAILED", result.stderr, re.MULTILINE), text
    # the last deploy's reload may still be checking the bundle ("reloading"): then back to active
    household.guest.wait_until("systemctl is-active --quiet twinlockd", 600,
                               "twinlockd active after the doors update")
