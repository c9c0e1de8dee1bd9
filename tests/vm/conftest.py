"""Fixtures of tests/vm/: one Debian guest per session under qemu (see vm_guest.py)."""

from vm_guest import door, guest, times

__all__ = ["door", "guest", "times"]
