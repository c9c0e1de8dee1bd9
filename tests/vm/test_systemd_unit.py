"""deploy/twinlockd.service under a real systemd (Debian in a VM: tests/vm/vm_guest.py).

The tests share one guest and run in this file's order: start, the clip, the sandbox, faults,
reloads, a broken config, and last the uninstall. Run by scripts/vm-tests.sh; skipped otherwise.
"""

from __future__ import annotations

import itertools
import re
import time

from vm_guest import (
    GUEST_MODEL,
    LACAMOIRE_FRAMES,
    MIRANDA_FRAMES,
    Door,
    Guest,
    Times,
    door_config,
    examples,
    twinlock,
)

#: what a sandbox that breaks the daemon leaves in its journal
SANDBOX_TROUBLE = re.compile(
    r"EPERM|Operation not permitted|SIGSYS|status=31/SYS|Bad system call|Permission denied"
    r"|denied|PermissionError", re.IGNORECASE)
#: ExecStopPost's line (the log action has no relay; with gpio it names the pin it drove low)
RELAY_OFF = "relay-off: "


def _restarted(guest: Guest, old_pid: int, limit_s: float) -> int:
    """Wait until the unit runs again under a new main pid (active: past READY)."""
    out = guest.wait_until(
        f"test \"$(systemctl show -p MainPID --value twinlockd)\" != {old_pid} "
        "&& test \"$(systemctl show -p MainPID --value twinlockd)\" != 0 "
        "&& systemctl is-active --quiet twinlockd && systemctl show -p MainPID --value twinlockd",
        limit_s, f"twinlockd back under a new pid (was {old_pid})", every_s=3)
    return int(out.strip())


def _cursor(guest: Guest) -> str:
    """A journal position to read from later (the guest's own clock)."""
    return guest.run("date '+%Y-%m-%d %H:%M:%S'").stdout.strip()


def test_start_returns_once_the_daemon_is_ready(door: Door, times: Times) -> None:
    guest = door.guest
    since = _cursor(guest)
    started = time.monotonic()
    # one ssh call: nothing runs between the start returning and the look at its state
    out = guest.run("systemctl restart twinlockd && systemctl show twinlockd "
                    "-p ActiveState -p SubState -p StatusText", timeout=600).stdout
    times.seconds["restart-to-ready"] = round(time.monotonic() - started, 1)
    state = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    assert (state["ActiveState"], state["SubState"]) == ("active", "running"), state
    # STATUS= is sent right after READY=1; before it, the model is loaded and the camera opened
    assert "fps" in state["StatusText"], state
    journal = guest.journal(since)
    assert re.search(r"twinlockd\[\d+\]: .*loaded", journal), journal[-3000:]


def test_the_clip_opens_the_door_for_the_resident_only(door: Door, times: Times) -> None:
    guest = door.guest
    pid = door.main_pid()
    started = time.monotonic()

    deadline = time.monotonic() + 1500
    unlocks: list[dict[str, object]] = []
    records: list[dict[str, object]] = []

    def wrapped(unlocks: list[dict[str, object]]) -> bool:
        """Unlock frames went back: the replay passed the clip's end (and, since an unpaced
        replay drops no frame, judged the audience, then Lacamoire) between two of them."""
        frames = [int(str(r["frame"])) for r in unlocks]
        return any(b < a for a, b in itertools.pairwise(frames))

    # two passes of the clip: Miranda (frames 82-210) let in each time, Lacamoire (20-81) and the
    # audience (211-274) never (deny records carry no frame number; unlocks do)
    while time.monotonic() < deadline:
        records = door.audit(None)
        unlocks = sorted((r for r in records if r["event"] == "unlock"), key=lambda r: int(str(r["id"])))
        if wrapped(unlocks):
            break
        time.sleep(10)
    times.seconds["clip-two-passes"] = round(time.monotonic() - started, 1)
    assert door.main_pid() == pid, "the daemon restarted while replaying the clip"
    assert unlocks, f"no unlock within the limit; last records: {records[-5:]}"
    assert all(r["user"] == "lin" and r["frame"] in MIRANDA_FRAMES for r in unlocks), unlocks
    assert wrapped(unlocks), f"the clip did not come round again: {unlocks}"
    assert any(r["event"] == "deny" for r in records), "nobody else was ever refused"
    assert not any(r["event"] == "fault" and "bundle" not in str(r["reason"])
                   for r in records), records
    # the log action's own line in the journal, as a relay's would be
    assert "door would open for lin" in guest.journal(), guest.journal()[-3000:]
    # memory under the unit, on the clip
    cg = guest.run("cat /sys/fs/cgroup/system.slice/twinlockd.service/memory.peak "
                   "/sys/fs/cgroup/system.slice/twinlockd.service/memory.current").stdout.split()
    status = guest.run(f"grep -E '^(VmHWM|VmRSS|RssAnon|RssFile|RssShmem):' /proc/{pid}/status"
                       ).stdout
    times.figures["memory"] = {"cgroup_memory_peak_mb": round(int(cg[0]) / 2**20, 1),
                               "cgroup_memory_current_mb": round(int(cg[1]) / 2**20, 1),
                               "daemon_status": {
                                   line.split(":")[0]: line.split(":")[1].strip()
                                   for line in status.splitlines()}}
    times.figures["clip_unlocks"] = len(unlocks)


def test_the_sandbox_denies_the_daemon_nothing(door: Door) -> None:
    guest = door.guest
    daemon_lines = guest.run("journalctl -u twinlockd -o cat --no-pager").stdout
    trouble = [line for line in daemon_lines.splitlines() if SANDBOX_TROUBLE.search(line)]
    assert not trouble, trouble
    kernel = guest.run("journalctl -k -o cat --no-pager | grep -iE 'type=1326|denied|twinlockd' "
                       "|| true").stdout
    assert not kernel.strip(), kernel
    assert guest.show("NRestarts")["NRestarts"] == "0"


def test_systemd_rates_the_live_unit_safe(door: Door, times: Times) -> None:
    out = door.guest.run("systemd-analyze security twinlockd --no-pager").stdout
    match = re.search(r"Overall exposure level for twinlockd\.service: (\d+\.\d+)", out)
    assert match, out[-2000:]
    times.figures["exposure"] = float(match.group(1))
    assert float(match.group(1)) <= 1.0, out


def test_a_hung_daemon_is_restarted_by_the_watchdog(door: Door, times: Times) -> None:
    guest = door.guest
    pid = door.main_pid()
    since = _cursor(guest)
    started = time.monotonic()
    guest.run(f"kill -STOP {pid}")
    # WatchdogSec=30, then SIGABRT, ExecStopPost, RestartSec=5 and a new start up to READY
    new = _restarted(guest, pid, 300)
    times.seconds["sigstop-to-ready"] = round(time.monotonic() - started, 1)
    assert new != pid
    journal = guest.journal(since)
    assert "Watchdog timeout" in journal, journal[-3000:]
    assert RELAY_OFF in journal, journal[-3000:]


def test_kill_9_runs_exec_stop_post_and_the_unit_comes_back(door: Door, times: Times) -> None:
    guest = door.guest
    pid = door.main_pid()
    since = _cursor(guest)
    started = time.monotonic()
    guest.run(f"kill -9 {pid}")
    new = _restarted(guest, pid, 600)
    times.seconds["kill9-to-ready"] = round(time.monotonic() - started, 1)
    journal = guest.journal(since)
    assert re.search(r"Main process exited, code=killed, status=9/KILL", journal), journal[-3000:]
    killed = journal.index("status=9/KILL")
    assert RELAY_OFF in journal[killed:], "ExecStopPost did not run after kill -9:\n" + journal
    assert new != pid


def test_reload_applies_a_newly_deployed_bundle(door: Door, times: Times) -> None:
    guest = door.guest
    twinlock("enroll", "alex", "--images", str(examples() / "alex-lacamoire.png"), "--model",
             str(GUEST_MODEL), "--db", str(door.enrol_db))
    bundle = door.bundle("household-2", ["lin", "alex"])
    pid = door.main_pid()
    since = _cursor(guest)
    started = time.monotonic()
    result = door.deploy(bundle)
    times.seconds["deploy-and-reload"] = round(time.monotonic() - started, 1)
    assert result.returncode == 0, result.stdout + result.stderr
    journal = guest.wait_until(
        f"journalctl -u twinlockd --since '{since}' -o cat --no-pager | grep -E 'reloaded: '",
        600, "the daemon's reload line")
    assert "2 user(s)" in journal, journal
    assert door.main_pid() == pid, "a reload must not restart the daemon"
    assert guest.run("systemctl is-active twinlockd").stdout.strip() == "active"
    # the drop folder was emptied: the bundle installed, not left or refused
    assert guest.run("ls -A /var/spool/twinlock").stdout.split() == ["rejected"]
    assert guest.run("ls -A /var/spool/twinlock/rejected").stdout.split() == []
    # the new resident is let in, in his own frames of the clip, by the same process
    started = time.monotonic()
    deadline = started + 900
    alex: list[dict[str, object]] = []
    while time.monotonic() < deadline and not alex:
        alex = [r for r in door.audit("unlock") if r["user"] == "alex"]
        time.sleep(10)
    times.seconds["reload-to-new-resident-unlock"] = round(time.monotonic() - started, 1)
    assert alex, "the newly enrolled resident was never let in"
    assert all(r["frame"] in LACAMOIRE_FRAMES for r in alex), alex
    assert door.main_pid() == pid


def test_a_tampered_bundle_is_refused_and_the_door_keeps_running(door: Door) -> None:
    guest = door.guest
    good = door.bundle("household-3", ["lin"])
    data = bytearray(good.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit, inside the model
    tampered = good.with_name("household-3-tampered.twinlock")
    tampered.write_bytes(bytes(data))
    pid = door.main_pid()
    since = _cursor(guest)
    result = door.deploy(tampered)
    assert result.returncode == 0, result.stdout + result.stderr  # the daemon refuses, later
    guest.wait_until(
        f"journalctl -u twinlockd --since '{since}' -o cat --no-pager | grep -E 'refused: '",
        600, "the daemon's refusal")
    journal = guest.journal(since)
    assert re.search(rf"bundle {re.escape(tampered.name)} refused: ", journal), \
        journal[-3000:]
    # the door keeps the last good bundle (both residents): nothing installed, nothing reloaded
    assert "installed bundle" not in journal, journal[-3000:]
    assert "1 user(s)" not in journal, journal[-3000:]
    assert guest.run("ls -A /var/spool/twinlock/rejected").stdout.split() == [tampered.name]
    assert door.main_pid() == pid
    assert guest.run("systemctl is-active twinlockd").stdout.strip() == "active"


def test_a_config_broken_on_disk_keeps_the_unit_down_with_a_clear_line(door: Door) -> None:
    guest = door.guest
    guest.run("cp /etc/twinlock/config.yaml /root/config.good")
    broken = door_config().replace("state_dir:", "stat_dir:")
    guest.run(f"cat > /etc/twinlock/config.yaml <<'EOF'\n{broken}EOF")
    since = _cursor(guest)
    try:
        restart = guest.run("systemctl restart twinlockd", check=False, timeout=300)
        assert restart.returncode != 0
        time.sleep(12)  # RestartSec=5: at least one retry, still refused
        state = guest.show("ActiveState", "SubState", "Result", "MainPID")
        assert state["ActiveState"] != "active", state
        assert state["MainPID"] == "0", state
        journal = guest.journal(since)
        assert re.search(r"stat_dir", journal), journal[-3000:]
        assert RELAY_OFF in journal, "ExecStopPost must run after a refused start:\n" + journal
    finally:
        guest.run("cp /root/config.good /etc/twinlock/config.yaml")
        guest.run("systemctl restart twinlockd", timeout=600, check=False)
    assert guest.run("systemctl is-active twinlockd", check=False).stdout.strip() == "active"


def test_uninstall_leaves_no_unit_user_or_file(door: Door) -> None:
    guest = door.guest
    uid, gid, deploy_gid = guest.run("id -u twinlock; getent group twinlock twinlock-deploy "
                                     "| cut -d: -f3").stdout.split()
    # a local change as `systemctl edit twinlockd` makes it (and the MQTT drop-in goes there too)
    guest.run("install -d /etc/systemd/system/twinlockd.service.d && printf '[Service]\\n"
              "Environment=TWINLOCK_SITE=vm\\n' > /etc/systemd/system/twinlockd.service.d/"
              "override.conf && systemctl daemon-reload")
    kept = guest.run("/root/twinlock/deploy/uninstall.sh").stdout
    print(kept)
    # without --purge: the data, the config and the drop-ins stay, named as kept
    for path in ("/var/lib/twinlock", "/etc/twinlock", "/var/spool/twinlock",
                 "/etc/systemd/system/twinlockd.service.d"):
        assert f"kept {path} " in kept, kept
    assert guest.run("systemctl is-active twinlockd", check=False).stdout.strip() != "active"
    result = guest.run("/root/twinlock/deploy/uninstall.sh --purge")
    print(result.stdout)
    gone = guest.run(
        "systemctl list-unit-files 'twinlockd*' --no-legend; systemctl list-units --all "
        "'twinlockd*' --no-legend; getent passwd twinlock; getent group twinlock "
        "twinlock-deploy; ls -d /etc/systemd/system/twinlockd.service* /etc/systemd/system/"
        "*.wants/twinlockd* /opt/twinlock /etc/twinlock /var/lib/twinlock /var/spool/twinlock "
        "/run/twinlock /etc/sudoers.d/twinlock-deploy 2>/dev/null; "
        f"find / -xdev \\( -uid {uid} -o -gid {gid} -o -gid {deploy_gid} \\) -print 2>/dev/null "
        "| head; "
        f"pgrep -u {uid} -l", check=False).stdout
    assert gone.strip() == "", gone
    again = guest.run("/root/twinlock/deploy/uninstall.sh --purge").stdout
    assert "nothing to remove" in again

