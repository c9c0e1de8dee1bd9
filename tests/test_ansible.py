"""deploy/ansible/ on the host: ansible-lint, the playbook's syntax, the config check a door's
variables go through before any door changes, and ``twinlock doors add --from-inventory`` on the
example inventory. The playbook against a real systemd: tests/vm/test_ansible.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from twinlock.daemon.errors import UsageError
from twinlock.trainer.cli import main
from twinlock.trainer.household.inventory import doors_from_inventory

REPO = Path(__file__).resolve().parents[1]
ANSIBLE = REPO / "deploy" / "ansible"
EXAMPLE = ANSIBLE / "inventory.example.yml"
BIN = Path(sys.executable).parent


def tool(name: str) -> str:
    path = BIN / name
    if not path.exists():
        pytest.fail(f"{name} is missing: pip install -e '.[dev]' (ansible-core, ansible-lint)")
    return str(path)


def run(argv: list[str], timeout: float = 600, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False,
                          stdin=subprocess.DEVNULL, cwd=REPO, **kw)  # type: ignore[call-overload]


def test_the_role_and_playbook_pass_ansible_lint_production_profile() -> None:
    result = run([tool("ansible-lint"), "--profile", "production", "--nocolor",
                  "deploy/ansible"])
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "Profile 'production' was required, and it passed" in result.stdout + result.stderr


def test_the_playbook_passes_the_syntax_check_with_the_example_inventory() -> None:
    result = run([tool("ansible-playbook"), "--syntax-check", "-i", str(EXAMPLE),
                  str(ANSIBLE / "playbook.yml")])
    assert result.returncode == 0, result.stdout + result.stderr


def check_config(tmp_path: Path, inventory: dict[str, object]) -> subprocess.CompletedProcess[str]:
    """The role's check_config tasks for every door of ``inventory``, on this machine."""
    (tmp_path / "inventory.yml").write_text(yaml.safe_dump(inventory))
    (tmp_path / "roles").symlink_to(ANSIBLE / "roles")
    (tmp_path / "check.yml").write_text(yaml.safe_dump([{
        "name": "Check the doors' configs", "hosts": "twinlock_doors", "gather_facts": False,
        "connection": "local",
        "tasks": [{"name": "Check", "ansible.builtin.include_role": {
            "name": "twinlock", "tasks_from": "check_config"}}]}]))
    return run([tool("ansible-playbook"), "-i", str(tmp_path / "inventory.yml"),
                str(tmp_path / "check.yml")], env={"ANSIBLE_NOCOLOR": "1",
                                                   "PATH": f"{BIN}:/usr/bin:/bin",
                                                   "HOME": str(tmp_path)})


def test_a_bad_value_fails_clearly_on_its_door_before_it_changes(tmp_path: Path) -> None:
    inventory = yaml.safe_load(EXAMPLE.read_text())
    inventory["twinlock_doors"]["hosts"]["back"]["twinlock_camera"] = {"type": "webcam"}
    result = check_config(tmp_path, inventory)
    out = result.stdout + result.stderr
    assert result.returncode != 0, out
    # the door with the bad value fails, naming it; the other passes the same check
    assert "back: twinlockd check-config refused the config" in out, out
    assert "camera.type" in out, out
    recap = {line.split()[0]: line for line in out.splitlines() if ": ok=" in line}
    assert "failed=1" in recap["back"] and "failed=0" in recap["front"], out


def test_the_example_inventory_checks_clean(tmp_path: Path) -> None:
    result = check_config(tmp_path, yaml.safe_load(EXAMPLE.read_text()))
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


def test_the_example_inventorys_doors_are_read_with_their_ssh_targets() -> None:
    doors = doors_from_inventory(EXAMPLE)
    assert [(d.host, d.name, d.target) for d in doors] == [
        ("front", "front", "ssh://pi@front-door.local/var/lib/twinlock-review/"),
        ("back", "back", "ssh://pi@192.168.1.41:2222/var/lib/twinlock-review/")]


def test_group_vars_are_inherited_and_a_host_wins(tmp_path: Path) -> None:
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(yaml.safe_dump({"all": {
        "vars": {"ansible_user": "root", "ansible_ssh_common_args": "-o Port=1"},
        "hosts": {"broker": {"ansible_host": "10.0.0.2"}},   # not a door
        "children": {"twinlock_doors": {
            "vars": {"ansible_ssh_private_key_file": "keys/door"},
            "hosts": {"garage": {"ansible_host": "::1", "ansible_port": 2200,
                                 "twinlock_review": {"dir": "/srv/review"}},
                      "shed": {"twinlock_deploy_users": ["deployer"],
                               "ansible_ssh_common_args": "-o StrictHostKeyChecking=yes"}}}}}}))
    doors = {d.name: d for d in doors_from_inventory(inventory)}
    assert set(doors) == {"garage", "shed"}
    assert doors["garage"].target == "ssh://root@[::1]:2200/srv/review/"
    assert doors["garage"].identity == str(tmp_path / "keys" / "door")
    assert doors["garage"].ssh_options == ["-o", "Port=1"]
    assert doors["shed"].target == "ssh://deployer@shed/var/lib/twinlock-review/"
    assert doors["shed"].ssh_options == ["-o", "StrictHostKeyChecking=yes"]


@pytest.mark.parametrize(("host_vars", "message"), [
    ({"twinlock_door_name": "Front Door"}, "door name 'Front Door' is not valid"),
    ({"ansible_host": "{{ lookup('env', 'H') }}"}, "ansible_host is a template"),
])
def test_an_unusable_host_is_refused_with_its_name(tmp_path: Path, host_vars: dict[str, str],
                                                    message: str) -> None:
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(yaml.safe_dump({"twinlock_doors": {"hosts": {"front": host_vars}}}))
    with pytest.raises(UsageError, match="host front: " + message):
        doors_from_inventory(inventory)


def test_doors_add_from_inventory_lists_each_door_once(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    act = ["--activity-db", str(tmp_path / "activity.db")]
    assert main(["doors", "add", "--from-inventory", str(EXAMPLE), *act]) == 0
    assert "added door back (host back): ssh://pi@192.168.1.41:2222/" in capsys.readouterr().out
    # again: nothing new; a door listed elsewhere is reported and the others still go on
    assert main(["doors", "remove", "front", *act]) == 0
    assert main(["doors", "add", "front", "--to", "ssh://pi@elsewhere/", *act]) == 0
    capsys.readouterr()
    assert main(["doors", "add", "--from-inventory", str(EXAMPLE), *act]) == 1
    out, err = capsys.readouterr()
    assert "door back: already listed" in out
    assert "door front: listed with target ssh://pi@elsewhere/" in err
    assert main(["doors", "list", "--json", *act]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["back"]["target"] == "ssh://pi@192.168.1.41:2222/var/lib/twinlock-review/"
    assert rows["front"]["target"] == "ssh://pi@elsewhere/"
