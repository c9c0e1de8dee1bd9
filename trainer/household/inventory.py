"""The doors of an Ansible inventory (deploy/ansible/), for ``twinlock doors add --from-inventory``.

The playbook installs TwinLock on every host of the group ``twinlock_doors``; this reads the same
YAML inventory so that the household's list names the same doors, each with the SSH target the
role set up: the first of ``twinlock_deploy_users`` (else ``ansible_user``) at ``ansible_host``
(else the host's inventory name) and ``ansible_port``, reading the review folder
``twinlock_review.dir``. ``twinlock doors update`` then deploys to each of them (their drop
folder on the same host). Variables are inherited as Ansible does for a YAML inventory: a group's
``vars`` reach its hosts and its children's, a host's own win. Nothing is templated: a value the
import needs that is a Jinja expression is refused with its host and variable.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from twinlock.daemon.errors import UsageError
from twinlock.daemon.review.format import ReviewRecordError, check_door_name

from .doors import DEFAULT_REVIEW_DIR, parse_door_target

#: the playbook's hosts (deploy/ansible/playbook.yml)
DOORS_GROUP = "twinlock_doors"
#: an inventory larger than this is no household's
MAX_INVENTORY_BYTES = 1024 * 1024


@dataclass(frozen=True)
class InventoryDoor:
    """One host of the inventory as a door of the household's list."""

    host: str
    name: str
    target: str
    identity: str | None
    ssh_options: list[str]


def _walk(group: Mapping[str, Any], inherited: dict[str, Any], in_doors: bool,
          out: dict[str, dict[str, Any]], depth: int = 0) -> None:
    """Collect the hosts under ``group`` (those in the doors group) with their variables."""
    if depth > 32:
        raise UsageError("inventory: groups nested more than 32 deep")
    own = group.get("vars") or {}
    if not isinstance(own, Mapping):
        raise UsageError("inventory: a group's vars must be a mapping")
    values = {**inherited, **own}
    for host, host_vars in (group.get("hosts") or {}).items():
        if host_vars is not None and not isinstance(host_vars, Mapping):
            raise UsageError(f"inventory: host {host}'s variables must be a mapping")
        if in_doors:
            out[str(host)] = {**out.get(str(host), {}), **values, **(host_vars or {})}
    for name, child in (group.get("children") or {}).items():
        _walk(child or {}, values, in_doors or name == DOORS_GROUP, out, depth + 1)


def _plain(host: str, key: str, value: object) -> str:
    text = str(value)
    if "{{" in text or "{%" in text:
        raise UsageError(f"inventory: host {host}: {key} is a template ({text!r}); give the "
                         "value itself for doors add --from-inventory")
    return text


def _door(host: str, values: Mapping[str, Any], base: Path) -> InventoryDoor:
    name = _plain(host, "twinlock_door_name", values.get("twinlock_door_name") or host)
    try:
        check_door_name(name)
    except ReviewRecordError as exc:
        raise UsageError(f"inventory: host {host}: {exc}") from None
    users = values.get("twinlock_deploy_users") or []
    user = users[0] if isinstance(users, list) and users else values.get("ansible_user")
    address = _plain(host, "ansible_host", values.get("ansible_host") or host)
    port = values.get("ansible_port")
    review = values.get("twinlock_review") or {}
    folder = review.get("dir", DEFAULT_REVIEW_DIR) if isinstance(review, Mapping) \
        else DEFAULT_REVIEW_DIR
    target = "ssh://{}{}{}{}".format(
        f"{_plain(host, 'twinlock_deploy_users', user)}@" if user else "",
        f"[{address}]" if ":" in address else address,
        f":{int(_plain(host, 'ansible_port', port))}" if port else "",
        "/" + _plain(host, "twinlock_review.dir", folder).strip("/") + "/")
    parse_door_target(target)
    key = values.get("ansible_ssh_private_key_file") or values.get("ansible_private_key_file")
    identity = None
    if key:
        identity = str((base / Path(_plain(host, "ansible_ssh_private_key_file", key))
                        .expanduser()).resolve())
    options: list[str] = []
    for var in ("ansible_ssh_common_args", "ansible_ssh_extra_args"):
        if values.get(var):
            options += shlex.split(_plain(host, var, values[var]))
    return InventoryDoor(host, name, target, identity, options)


def doors_from_inventory(path: Path) -> list[InventoryDoor]:
    """The hosts of group ``twinlock_doors`` in the YAML inventory at ``path``, in its order.
    A relative private key path is taken from the inventory's folder."""
    try:
        if path.stat().st_size > MAX_INVENTORY_BYTES:
            raise UsageError(f"inventory {path}: larger than {MAX_INVENTORY_BYTES} bytes")
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UsageError(f"inventory {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise UsageError(f"inventory {path}: not a YAML inventory ({exc})") from None
    if not isinstance(data, Mapping):
        raise UsageError(f"inventory {path}: not a YAML inventory (no groups at the top)")
    hosts: dict[str, dict[str, Any]] = {}
    for name, group in data.items():
        _walk(group or {}, {}, name == DOORS_GROUP, hosts)
    if not hosts:
        raise UsageError(f"inventory {path}: no hosts in group {DOORS_GROUP} (the group "
                         "deploy/ansible/playbook.yml installs)")
    base = path.resolve().parent
    doors = [_door(host, values, base) for host, values in hosts.items()]
    seen: dict[str, str] = {}
    for door in doors:
        if door.name in seen:
            raise UsageError(f"inventory {path}: hosts {seen[door.name]} and {door.host} are "
                             f"both door {door.name!r}")
        seen[door.name] = door.host
    return doors
