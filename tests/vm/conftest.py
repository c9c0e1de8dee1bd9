"""Fixtures of tests/vm/: one Debian guest per session under qemu (see vm_guest.py), and the
relay's GPIO line watched from outside the daemon (relay_line.py)."""

from __future__ import annotations

import pytest
from relay_line import relay
from vm_guest import door, guest, times

__all__ = ["door", "guest", "relay", "times"]

#: the order the files share their one guest in: the unit's tests install TwinLock with
#: install.sh on a clean guest and end by uninstalling it (--purge); the Ansible tests then
#: install again, as a household with many doors would, on the clean guest that leaves.
#: Run the other way round, the unit's tests found the Ansible doors' review records in the
#: folder and an upgrade instead of a first install.
FILE_ORDER = ("test_systemd_unit.py", "test_ansible.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        name = item.path.name
        return FILE_ORDER.index(name) if name in FILE_ORDER else len(FILE_ORDER)

    items.sort(key=rank)  # stable: each file keeps its own order
