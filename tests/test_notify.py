"""sd_notify against real datagram sockets, the way systemd listens for them."""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from twinlock.daemon.door.notify import Notifier, watchdog_interval


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A bound AF_UNIX/SOCK_DGRAM socket on a file path, as systemd's NOTIFY_SOCKET is."""
    path = tmp_path / "notify.sock"
    if len(str(path)) > 100:  # sun_path holds 108 bytes
        pytest.skip(f"tmp path too long for AF_UNIX: {path}")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(2.0)
    yield sock, str(path)
    sock.close()


def receive(sock: socket.socket) -> str:
    return sock.recv(4096).decode()


def test_messages_reach_a_path_socket(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    with Notifier.from_env({"NOTIFY_SOCKET": path}) as notifier:
        assert notifier.enabled
        assert notifier.ready() is True
        assert receive(sock) == "READY=1"
        assert notifier.status("watching camera 0") is True
        assert receive(sock) == "STATUS=watching camera 0"
        assert notifier.watchdog() is True
        assert receive(sock) == "WATCHDOG=1"
        assert notifier.stopping() is True
        assert receive(sock) == "STOPPING=1"

        before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        assert notifier.reloading() is True
        after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        lines = receive(sock).split("\n")
        assert lines[0] == "RELOADING=1"
        key, value = lines[1].split("=")
        assert key == "MONOTONIC_USEC"
        assert before <= int(value) <= after
        assert len(lines) == 2

        assert notifier.notify(READY=1, STATUS="reloaded") is True
        assert receive(sock) == "READY=1\nSTATUS=reloaded"
        # a newline in a value must not smuggle in a field of its own
        assert notifier.status("bad\nREADY=1") is True
        assert receive(sock) == "STATUS=bad READY=1"


def test_messages_reach_an_abstract_socket() -> None:
    name = f"twinlock-test-{os.getpid()}-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(2.0)
    try:
        notifier = Notifier.from_env({"NOTIFY_SOCKET": "@" + name})
        assert notifier.address == "\0" + name
        assert notifier.ready() is True
        assert receive(sock) == "READY=1"
        assert notifier.watchdog() is True
        assert receive(sock) == "WATCHDOG=1"
        assert notifier.reloading() is True
        assert receive(sock).startswith("RELOADING=1\nMONOTONIC_USEC=")
        notifier.close()
    finally:
        sock.close()


@pytest.mark.parametrize("environ", [{}, {"NOTIFY_SOCKET": ""}, {"NOTIFY_SOCKET": "relative"}])
def test_without_a_socket_everything_is_a_no_op(environ: dict[str, str]) -> None:
    notifier = Notifier.from_env(environ)
    assert not notifier.enabled
    for call in (notifier.ready, notifier.watchdog, notifier.stopping, notifier.reloading):
        assert call() is False
    assert notifier.status("x") is False
    assert notifier.notify(READY=1) is False
    assert notifier.send("READY=1") is False
    notifier.close()


def test_a_vanished_socket_does_not_raise(
    listener: tuple[socket.socket, str], caplog: pytest.LogCaptureFixture
) -> None:
    sock, path = listener
    notifier = Notifier.from_env({"NOTIFY_SOCKET": path})
    assert notifier.ready() is True
    sock.close()
    os.unlink(path)  # systemd went away
    caplog.set_level(logging.DEBUG, logger="twinlock.daemon.door.notify")
    assert notifier.watchdog() is False
    assert notifier.watchdog() is False
    assert notifier.status("still here") is False
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1  # loud once, quiet after, so the journal is not flooded
    assert "carrying on without systemd" in warnings[0].getMessage()

    # and it recovers when a listener is back on the same path
    back = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    back.bind(path)
    back.settimeout(2.0)
    try:
        assert notifier.watchdog() is True
        assert receive(back) == "WATCHDOG=1"
    finally:
        back.close()
        notifier.close()


def test_watchdog_interval() -> None:
    me = str(os.getpid())
    assert watchdog_interval({"WATCHDOG_USEC": "10000000"}) == 5.0
    assert watchdog_interval({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": me}) == 1.5
    assert watchdog_interval({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": str(os.getpid() + 1)}) \
        is None
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_PID": me}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "soon"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "x"}) is None
