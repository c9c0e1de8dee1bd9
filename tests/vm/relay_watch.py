"""Watches the relay's gpio-sim line from outside the daemon; copied into the guest and run as root.

    python3 relay_watch.py CHIP_DEV SIM_VALUE OFFSET LOG

Appends one line per change to LOG, each with the guest's wall clock (``time.time()``, the
clock of the audit log and of ``journalctl -o short-unix``):

    T value 0|1                       the line's level, read from gpio-sim's sysfs every ~10 ms
    T requested output|input BIAS CONSUMER
                                      the pin was claimed (a process opened a line request),
                                      BIAS being pull-up, pull-down, bias-disabled or as-is
    T released                        the claim ended (the process let go, or died)

The claims come from the kernel's line-info watch on the chip (GPIO_V2_GET_LINEINFO_WATCH_IOCTL):
events, not samples, so a claim that lasts a millisecond (``twinlockd relay-off``) is seen too.
Standard library only: the guest's own Python runs it.
"""

from __future__ import annotations

import fcntl
import os
import select
import struct
import sys
import time

#: struct gpio_v2_line_info (256 bytes) and gpio_v2_line_info_changed (288) of linux/gpio.h
LINE_INFO_SIZE = 256
INFO_CHANGED_SIZE = 288
#: _IOWR(0xB4, 0x06, struct gpio_v2_line_info)
GPIO_V2_GET_LINEINFO_WATCH_IOCTL = 0xC000_0000 | (LINE_INFO_SIZE << 16) | (0xB4 << 8) | 0x06
FLAG_OUTPUT = 1 << 3
#: GPIO_V2_LINE_FLAG_BIAS_PULL_UP, _PULL_DOWN, _DISABLED
BIASES = {1 << 8: "pull-up", 1 << 9: "pull-down", 1 << 10: "bias-disabled"}
EVENTS = {1: "requested", 2: "released", 3: "reconfigured"}


def _describe(raw: bytes) -> str:
    consumer = raw[32:64].split(b"\0", 1)[0].decode(errors="replace") or "-"
    (flags,) = struct.unpack_from("=Q", raw, 72)
    (kind,) = struct.unpack_from("=I", raw, LINE_INFO_SIZE + 8)
    name = EVENTS.get(kind, f"event{kind}")
    if name == "released":
        return name
    bias = next((word for bit, word in BIASES.items() if flags & bit), "as-is")
    return f"{name} {'output' if flags & FLAG_OUTPUT else 'input'} {bias} {consumer}"


def main(chip: str, value_path: str, offset: int, log_path: str) -> None:
    fd = os.open(chip, os.O_RDONLY)
    info = bytearray(LINE_INFO_SIZE)
    struct.pack_into("=I", info, 64, offset)
    fcntl.ioctl(fd, GPIO_V2_GET_LINEINFO_WATCH_IOCTL, info)
    last = None
    with open(log_path, "a", buffering=1) as log:
        log.write(f"{time.time():.3f} watching {chip} line {offset}\n")
        while True:
            readable, _, _ = select.select([fd], [], [], 0.01)
            if readable:
                log.write(f"{time.time():.3f} {_describe(os.read(fd, INFO_CHANGED_SIZE))}\n")
            with open(value_path) as f:
                value = f.read().strip()
            if value != last:
                log.write(f"{time.time():.3f} value {value}\n")
                last = value


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4])
