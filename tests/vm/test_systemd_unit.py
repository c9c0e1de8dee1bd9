"""deploy/twinlockd.service under a real systemd (Debian in a VM: tests/vm/vm_guest.py).

The tests share one guest and run in this file's order: start, the clip, the sandbox, faults,
reloads, a broken config, and last the uninstall. Run by scripts/vm-tests.sh; skipped otherwise.
"""

from __future__ import annotations

import itertools
import json
import re
import shlex
import subprocess
import time
from pathlib import Path

from relay_line import (
    KILL_MID_PULSE,
    PULL,
    VALUE,
    RelayLine,
    let_go_held_off,
    restart_scheduled_at,
    stop_post_claimed,
)
from vm_guest import (
    ENV,
    GUEST_CLIP,
    GUEST_MODEL,
    GUEST_REVIEW_DIR,
    LACAMOIRE_FRAMES,
    MIRANDA_FRAMES,
    PULSE_S,
    RELAY_PIN,
    REPO,
    REVIEW_DOOR,
    Door,
    Guest,
    GuestError,
    Times,
    door_config,
    examples,
    free_port,
    twinlock,
)

#: what a sandbox that breaks the daemon leaves in its journal
SANDBOX_TROUBLE = re.compile(
    r"EPERM|Operation not permitted|SIGSYS|status=31/SYS|Bad system call|Permission denied"
    r"|denied|PermissionError", re.IGNORECASE)
#: frames of the clip with a resident on screen (Lacamoire, then Miranda)
RESIDENTS_FRAMES = range(LACAMOIRE_FRAMES.start, MIRANDA_FRAMES.stop)
#: ExecStopPost's line, naming the pin it drove low
RELAY_OFF = f"relay-off: GPIO{RELAY_PIN} driven inactive (low)"
#: an unlock's audit record and the line's rise belong together within this many seconds
PULSE_MATCH_S = 3.0


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


def test_the_clip_opens_the_door_for_the_resident_only(door: Door, relay: RelayLine,
                                                       times: Times) -> None:
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
    # the relay, in the daemon's journal and on the gpio-sim line read from outside it
    assert f"relay on GPIO{RELAY_PIN} (active high)" in guest.journal(), guest.journal()[-3000:]
    _assert_one_pulse_per_unlock(door, relay)
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


def _assert_one_pulse_per_unlock(door: Door, relay: RelayLine) -> None:
    """Each unlock since the watcher started raised the line once, for about pulse_seconds,
    and the line never went high without an unlock (so only for the resident)."""
    events, read_at = relay.events()
    records = door.audit(None)  # after the line's log: every pulse in it has its record
    unlocks = [float(str(r["ts"])) for r in records
               if r["event"] == "unlock" and float(str(r["ts"])) > relay.started]
    pulses = relay.pulses(events)
    detail = f"unlocks at {unlocks}\nline: {events[-40:]}"
    assert pulses, f"the relay line never went high\n{detail}"
    for rise, fall in pulses:
        assert any(abs(ts - rise) < PULSE_MATCH_S for ts in unlocks), \
            f"the line went high at {rise} without an unlock\n{detail}"
        if fall is not None:  # the timer thread may wait on the emulated CPU: late, never early
            assert PULSE_S * 0.9 <= fall - rise <= PULSE_S + 3, \
                f"a pulse of {fall - rise:.3f} s (pulse_seconds {PULSE_S})\n{detail}"
    for ts in unlocks:
        if ts < read_at - PULSE_MATCH_S:
            assert any(abs(ts - rise) < PULSE_MATCH_S for rise, _ in pulses), \
                f"the unlock at {ts} raised no pulse on the line\n{detail}"


def _door_record_ids(guest: Guest) -> list[str]:
    """The ids of the review records on the door now (read as root)."""
    out = guest.run(f"cat {GUEST_REVIEW_DIR}/*.jsonl").stdout
    return [json.loads(line)["id"] for line in out.splitlines() if line.strip()]


def test_the_deploy_account_fetches_review_records_and_nothing_else(door: Door,
                                                                    times: Times) -> None:
    """Issue 22: the records the daemon wrote under the unit (UMask=0077, ProtectSystem=strict)
    are readable by the deploy account over ssh, `twinlock doors sync` on the host fetches them
    into its activity store, and the deploy account still cannot read the state folder."""
    guest, pi = door.guest, door.deploy_user
    guest.wait_until(f"grep -q . {GUEST_REVIEW_DIR}/*.jsonl", 900, "a review record on the door",
                     every_s=10)
    ids = _door_record_ids(guest)
    assert ids, "the clip run left no review record"
    listing = guest.run(f"ls -ld {GUEST_REVIEW_DIR} {GUEST_REVIEW_DIR}/crops /var/lib/twinlock; "
                        f"ls -l {GUEST_REVIEW_DIR} | head -5").stdout
    print(listing)
    # the deploy account, over ssh as `doors sync` logs in: reads records and crops ...
    seen = guest.run(f"cd {GUEST_REVIEW_DIR} && cat *.jsonl >/dev/null && ls crops >/dev/null "
                     "&& for f in crops/*.jpg; do cat \"$f\" >/dev/null || exit 1; done",
                     user=pi, check=False)
    assert seen.returncode == 0, f"{pi} cannot read the review records:\n{seen.stderr}\n{listing}"
    # ... and nothing of the state folder (audit log, anchors, bundles), nor may it write
    for command in ("ls /var/lib/twinlock", "cat /var/lib/twinlock/audit.db",
                    f"touch {GUEST_REVIEW_DIR}/x.jsonl", f"rm -f {GUEST_REVIEW_DIR}/crops/*"):
        denied = guest.run(command, user=pi, check=False)
        assert denied.returncode != 0, f"{pi} may: {command}\n{listing}"
    # `twinlock doors sync` on the host, into a fresh activity store
    store = door.workdir / "activity.db"
    twinlock("doors", "add", REVIEW_DOOR, "--to", f"ssh://{pi}@127.0.0.1:{guest.port}"
             f"{GUEST_REVIEW_DIR}/", "-i", str(guest.key), *door.ssh_option_args(),
             "--activity-db", str(store))
    started = time.monotonic()
    synced = twinlock("doors", "sync", REVIEW_DOOR, "--activity-db", str(store))
    times.seconds["doors-sync"] = round(time.monotonic() - started, 1)
    print(synced)
    fetched = _activity_ids(store)
    assert set(ids) <= fetched, f"not fetched: {sorted(set(ids) - fetched)[:5]}\n{synced}"
    # idempotent and resumable: a second sync adds only what the door wrote since
    twinlock("doors", "sync", REVIEW_DOOR, "--activity-db", str(store))
    again = _activity_ids(store)
    assert fetched <= again <= set(_door_record_ids(guest))
    times.figures["review_records_fetched"] = len(again)
    unlocks = json.loads(twinlock("activity", "list", "--json", "--limit", "0", "--decision",
                                  "unlock", "--activity-db", str(store)) or "[]")
    assert unlocks, "no unlock among the fetched records"


def _activity_ids(store: Path) -> set[str]:
    out = twinlock("activity", "list", "--json", "--limit", "0", "--activity-db", str(store))
    rows = json.loads(out) if out.strip().startswith("[") else \
        [json.loads(line) for line in out.splitlines() if line.strip()]
    return {str(row["id"]) for row in rows}


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


#: the clip on a V4L2 loopback device (tests/vm/v4l2_feed.py): every other frame, each held for
#: a second (the emulated door judges about 1.5 frames a second), written 5 times a second
FEED_STEP, FEED_HOLD_S, FEED_FPS = 2, 1.0, 5
#: a decision comes at most this long after the frame it judged was first written: the device's
#: two buffers and a few frames' work of the emulated CPU (Lacamoire is shown for 31 s)
FEED_LAG_S = 8.0
FEED_DIR = "/root/twinlock/feed"
FEED_UNIT = "twinlock-v4l2-feed"


def _feed_log(guest: Guest) -> list[dict[str, float]]:
    out = guest.run(f"cat {FEED_DIR}/shown.jsonl 2>/dev/null || true").stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def _shown_between(log: list[dict[str, float]], start: float, end: float) -> list[int]:
    """The clip's frames that were on the device at some moment in [start, end]."""
    ends = [entry["t"] for entry in log[1:]] + [float("inf")]
    return [int(entry["frame"]) for entry, until in zip(log, ends, strict=True)
            if entry["t"] <= end and until >= start]


def test_a_v4l2_webcam_opens_the_door_for_the_resident_only(door: Door, times: Times) -> None:
    """Issue 24: the `opencv` camera on /dev/video0, a v4l2loopback device (the module built from
    Debian's v4l2loopback-dkms), fed the clip as YUYV by tests/vm/v4l2_feed.py from outside the
    unit, as a USB webcam delivers it. The unit's DevicePolicy=closed admits the device
    (DeviceAllow=char-video4linux, group video); the door opens for the resident while her
    frames are on the device, and for nobody else."""
    guest = door.guest
    module = guest.run("modinfo -F filename v4l2loopback", check=False)
    # scripts/vm-tests.sh's recipe builds the module into every image: its absence is a failure
    assert module.returncode == 0, f"no v4l2loopback module in the image: {module.stderr}"
    # loaded before the unit (re)starts, as videodev is at a Pi's boot: systemd resolves
    # DeviceAllow=char-video4linux from /proc/devices when the unit starts
    guest.run("lsmod | grep -q '^v4l2loopback ' || modprobe v4l2loopback devices=1 video_nr=0 "
              "exclusive_caps=1 card_label=twinlock-test-camera")
    # (root 0600 for a moment after modprobe, until udev applies its rule: group video)
    node = guest.wait_until("udevadm settle; test \"$(stat -c %G /dev/video0)\" = video "
                            "&& stat -c '%F %G %a' /dev/video0", 60,
                            "/dev/video0 made by udev, group video").strip()
    assert node == "character special file video 660", node
    built = guest.run("grep -o 'v4l2loopback-[0-9.]*' /etc/twinlock-vm-modules || true"
                      ).stdout.strip()
    figures: dict[str, object] = {"module": built or module.stdout.strip(), "node": node}
    times.figures["v4l2"] = figures
    guest.put(REPO / "tests" / "vm" / "v4l2_feed.py", "/root/twinlock/v4l2_feed.py")
    guest.run(f"rm -rf {FEED_DIR} && mkdir -p {FEED_DIR} "
              "&& cp /etc/twinlock/config.yaml /root/config.before-v4l2")
    last_id = max((int(str(r["id"])) for r in door.audit(None)), default=0)
    since = _cursor(guest)
    records: list[dict[str, object]] = []
    log: list[dict[str, float]] = []
    opened = journal = feeder = ""
    pids: set[int] = set()
    ready = 0.0
    try:
        # the writer first: with exclusive_caps=1 the device announces capture (which OpenCV
        # requires) only once a writer has written a frame
        guest.run(f"systemd-run --unit {FEED_UNIT} --collect /opt/twinlock/venv/bin/python "
                  f"/root/twinlock/v4l2_feed.py --device /dev/video0 --clip {GUEST_CLIP} "
                  f"--step {FEED_STEP} --hold {FEED_HOLD_S} --fps {FEED_FPS} "
                  f"--progress {FEED_DIR}/progress.json --log {FEED_DIR}/shown.jsonl")
        guest.wait_until(f"test -s {FEED_DIR}/progress.json", 300,
                         "the feeder's first frame on /dev/video0")
        config = door_config(camera={"type": "opencv", "device": "/dev/video0", "width": 640,
                                     "height": 360, "fps": FEED_FPS})
        guest.run(f"cat > /etc/twinlock/config.yaml <<'EOF'\n{config}EOF")
        started = time.monotonic()
        restart = guest.run("systemctl restart twinlockd", timeout=600, check=False)
        if restart.returncode != 0:  # slower than TimeoutStartSec: systemd retries by itself
            print("restart:", restart.stderr)
        guest.wait_until("systemctl is-active --quiet twinlockd", 900,
                         "twinlockd up with the opencv camera", every_s=5)
        ready = float(guest.run("date +%s.%N").stdout)
        times.seconds["v4l2-restart-to-ready"] = round(time.monotonic() - started, 1)
        pids.add(door.main_pid())
        # the camera opens, or the journal says why not (a unit that denies the device: EPERM)
        deadline = time.monotonic() + 180  # opened before READY, unless a retry was needed
        while time.monotonic() < deadline and not opened:
            journal = guest.journal(since)
            opened = "\n".join(line for line in journal.splitlines()
                               if "camera /dev/video0 open: " in line)
            time.sleep(5)
        if opened:
            # until the door has seen every frame of the clip since it started, and let someone in
            deadline = time.monotonic() + 1200
            while time.monotonic() < deadline:
                log = _feed_log(guest)
                clip = {int(e["frame"]) for e in log if e["pass"] == 1}
                seen = {int(e["frame"]) for e in log if e["t"] >= ready}
                records = [r for r in door.audit(None) if int(str(r["id"])) > last_id]
                if any(e["pass"] > 1 for e in log) and clip <= seen and \
                        any(r["event"] == "unlock" for r in records):
                    break
                time.sleep(15)
            times.seconds["v4l2-clip"] = round(time.monotonic() - started, 1)
        pids.add(door.main_pid())
        feeder = guest.run(f"systemctl is-active {FEED_UNIT}", check=False).stdout.strip()
        journal = guest.journal(since)
    finally:
        feed_journal = guest.journal(unit=FEED_UNIT)[-2000:]
        guest.run(f"systemctl stop {FEED_UNIT}", check=False)
        guest.run("cp /root/config.before-v4l2 /etc/twinlock/config.yaml")
        guest.run("systemctl restart twinlockd", timeout=600, check=False)
        guest.wait_until("systemctl is-active --quiet twinlockd", 900,
                         "twinlockd back on the replay camera", every_s=5)
    camera_lines = [line for line in journal.splitlines() if "camera" in line]
    assert opened, "the opencv camera never opened /dev/video0:\n" + "\n".join(camera_lines[-20:])
    assert feeder == "active", f"the feeder stopped ({feeder}):\n{feed_journal}"
    assert len(pids) == 1, f"the daemon restarted while reading the webcam: {pids}"
    unlocks = [r for r in records if r["event"] == "unlock"]
    first = min((float(str(r["ts"])) for r in unlocks), default=ready)
    figures |= {"camera": opened.split("]: ")[-1], "unlocks": len(unlocks),
                "frames_shown": len(log), "first_unlock_after_ready_s": round(first - ready, 1),
                "frame_on_the_device_at_each_unlock": [
                    _shown_between(log, float(str(r["ts"])), float(str(r["ts"])))
                    for r in unlocks]}
    assert unlocks, f"no unlock from the webcam; last records: {records[-5:]}\n" \
        + "\n".join(camera_lines[-10:])
    # only the resident, and only while her frames were on the device
    for r in unlocks:
        ts = float(str(r["ts"]))
        shown = _shown_between(log, ts - FEED_LAG_S, ts)
        assert r["user"] == "lin" and any(f in MIRANDA_FRAMES for f in shown), \
            (r["id"], r["user"], r["ts_iso"], shown)
    assert any(r["event"] == "deny" for r in records), "nobody else was ever refused"
    # the sandbox admitted the device: nothing denied, no EPERM, in the daemon's journal
    trouble = [line for line in journal.splitlines() if SANDBOX_TROUBLE.search(line)]
    assert not trouble, trouble


def _assert_stop_post_drove_the_pin(relay: RelayLine, since: str, after: float) -> None:
    """Between the daemon's end (``after``) and systemd's restart, something claimed the pin as
    an output and let it go: ExecStopPost's relay-off (relay_line.py: why a claim, not a level)."""
    scheduled = restart_scheduled_at(relay.guest, since)
    events, _ = relay.events()
    claims = relay.claims_between(events, after, scheduled)
    assert stop_post_claimed(claims), \
        f"after the daemon's end nothing drove GPIO{RELAY_PIN} (ExecStopPost?): {claims}\n" \
        f"line: {events[-20:]}"
    assert relay.value() == "0"


def test_a_hung_daemon_is_restarted_by_the_watchdog(door: Door, relay: RelayLine,
                                                    times: Times) -> None:
    guest = door.guest
    pid = door.main_pid()
    since = _cursor(guest)
    started = time.monotonic()
    stopped_at = float(guest.run(f"kill -STOP {pid}; date +%s.%N").stdout)
    # WatchdogSec=30, then SIGABRT, ExecStopPost, RestartSec=5 and a new start up to READY
    new = _restarted(guest, pid, 300)
    times.seconds["sigstop-to-ready"] = round(time.monotonic() - started, 1)
    assert new != pid
    _assert_stop_post_drove_the_pin(relay, since, stopped_at)
    journal = guest.journal(since)
    assert "Watchdog timeout" in journal, journal[-3000:]
    assert RELAY_OFF in journal, journal[-3000:]


def test_kill_9_runs_exec_stop_post_and_the_unit_comes_back(door: Door, relay: RelayLine,
                                                            times: Times) -> None:
    """kill -9 while the relay is on (the line high for the resident's pulse, seen from the
    guest itself, no ssh round trip): the line is low within 1 s, ExecStopPost drove the pin,
    and the unit comes back. With gpio-sim the line's fall is the kernel's doing (relay_line.py)."""
    guest = door.guest
    since = _cursor(guest)
    started = time.monotonic()
    killed = guest.run(f"python3 -c {shlex.quote(KILL_MID_PULSE)}", timeout=1200).stdout.split()
    pid, killed_at = int(killed[0]), float(killed[1])
    times.seconds["line-high-to-kill9"] = round(time.monotonic() - started, 1)
    started = time.monotonic()
    new = _restarted(guest, pid, 600)
    times.seconds["kill9-to-ready"] = round(time.monotonic() - started, 1)
    events, _ = relay.events()
    # the pulse the kill cut short (the watcher logs the rise up to a sample after the killer saw it)
    pulse = [(rise, fall) for rise, fall in relay.pulses(events) if rise <= killed_at + 0.5][-1:]
    assert pulse and pulse[0][1] is not None, f"no pulse at the kill ({killed_at}): {events[-20:]}"
    rise, fall = pulse[0][0], float(pulse[0][1] or 0)
    assert killed_at <= fall <= killed_at + 1.0, \
        f"the line was not low within 1 s of kill -9 (at {killed_at}): {events[-20:]}"
    assert fall - rise < PULSE_S * 0.9, f"the pulse was not cut short: {events[-20:]}"
    times.figures["kill9_line_low_after_s"] = round(fall - killed_at, 3)
    _assert_stop_post_drove_the_pin(relay, since, killed_at)
    # how long a Pi whose kernel keeps a dead process's output (Raspberry Pi OS) would hold the
    # relay on: until relay-off claims the pin (under emulation: an upper bound; not asserted)
    events, _ = relay.events()
    claimed = relay.stop_post_output_at(events, killed_at)
    assert claimed is not None, f"relay-off never claimed the pin: {events[-20:]}"
    times.figures["kill9_relay_off_claim_after_s"] = round(claimed - killed_at, 3)
    journal = guest.journal(since)
    assert re.search(r"Main process exited, code=killed, status=9/KILL", journal), journal[-3000:]
    after_kill = journal.index("status=9/KILL")
    assert RELAY_OFF in journal[after_kill:], "ExecStopPost did not run after kill -9:\n" + journal
    assert new != pid


def test_an_active_low_relay_is_held_off_after_a_stop(door: Door, relay: RelayLine,
                                                     times: Times) -> None:
    """An active-low relay (the common opto-isolated boards) is on while its input is low. The
    image's chip pulls its lines down, and a line nobody holds falls to its pull (relay_line.py),
    as on a kernel that turns a released output into an input: so after a stop the line shows
    where the relay's input was left. The daemon and relay-off claim the pin as an output at the
    off level, pulled towards off (daemon/door/relay_pin.py): it stays high, relay off. gpiozero's
    own pin let it go as an input without bias: it fell to the chip's pull-down, relay on."""
    import yaml

    guest = door.guest
    action = yaml.safe_load(door_config())["action"] | {"active_high": False}
    guest.run("cp /etc/twinlock/config.yaml /root/config.before-active-low")
    since = _cursor(guest)
    try:
        guest.run(f"cat > /etc/twinlock/config.yaml <<'EOF'\n{door_config(action=action)}EOF")
        pid = door.main_pid()
        started = time.monotonic()
        guest.run("systemctl restart twinlockd", timeout=600, check=False)
        _restarted(guest, pid, 900)
        times.seconds["active-low-restart-to-ready"] = round(time.monotonic() - started, 1)
        # high while running, but for a pulse: the clip may let a resident in meanwhile
        running = guest.wait_until(f"grep -x 1 {VALUE}", 60, "the active-low line high (off)")
        stopped_at = float(guest.run("date +%s.%N").stdout)
        guest.run("systemctl stop twinlockd", timeout=600)  # returns after ExecStopPost
        time.sleep(1)  # the watcher samples every 10 ms
        events, read_at = relay.events()
        after, pull = relay.value(), guest.run(f"cat {PULL}").stdout.strip()
        journal = guest.journal(since)
    finally:
        guest.run("cp /root/config.before-active-low /etc/twinlock/config.yaml")
        guest.run("systemctl start twinlockd", timeout=600, check=False)
        guest.wait_until("systemctl is-active --quiet twinlockd", 900,
                         "twinlockd back with the active-high relay", every_s=5)
    claims = relay.claims_between(events, stopped_at, read_at)
    # once the daemon let go of the pin (a pulse may still have been running before)
    let_go = next((when for when, what in events if stopped_at < when and what == "released"),
                  read_at)
    fell = [when for when, what in events if let_go <= when < read_at and what == "value 0"]
    assert running.strip() == "1", running
    assert not fell and after == "1", \
        f"after the stop the active-low relay's line went low (relay on) at {fell}, now " \
        f"{after}, pull {pull}: {events[-20:]}"
    assert pull == "pull-up", pull
    assert let_go_held_off(claims, "pull-up"), claims
    assert f"relay-off: GPIO{RELAY_PIN} driven inactive (high)" in journal, journal[-3000:]
    assert relay.value() == "0", "the active-high relay's line is not low again"


#: what a child's peak resident set was (kB), as the guest's Python reports it
PEAK_RSS = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], capture_output=True)"
            "; print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
#: where `systemctl set-property --runtime` puts its drop-in
RUNTIME_LIMIT = "/run/systemd/system.control/twinlockd.service.d/50-MemoryMax.conf"


def _status_kb(guest: Guest, pid: int, field: str) -> int:
    return int(guest.run(f"awk '/^{field}:/ {{print $2}}' /proc/{pid}/status").stdout)


def test_an_oom_kill_runs_exec_stop_post_and_the_unit_comes_back(door: Door,
                                                                 times: Times) -> None:
    """The kernel's cgroup OOM killer ends the daemon as a real overrun would: MemoryMax=
    lowered at run time below the daemon's private memory (the guest has no swap, so reclaim
    cannot make room). systemd records the OOM kill, ExecStopPost switches the relay off, and
    with the unit's own limit back the daemon comes back READY. The lowered limit is still
    above what ExecStopPost's own process needs (measured here first), as after a real
    overrun, when the daemon's memory is freed before it runs."""
    guest = door.guest
    pid = door.main_pid()
    cgroup = "/sys/fs/cgroup/system.slice/twinlockd.service"
    limit = guest.run(f"cat {cgroup}/memory.max").stdout.strip()
    anon_kb = _status_kb(guest, pid, "RssAnon")
    relay_off_kb = int(guest.run(
        f"python3 -c '{PEAK_RSS}' /opt/twinlock/venv/bin/twinlockd "
        "relay-off --config /etc/twinlock/config.yaml").stdout)
    assert relay_off_kb + 8 * 1024 < anon_kb, \
        f"no room for the test: relay-off peaks at {relay_off_kb} kB, the daemon holds {anon_kb}"
    cap_kb = (relay_off_kb + anon_kb) // 2
    times.figures["oom_kill"] = {"daemon_rss_anon_kb": anon_kb, "relay_off_peak_rss_kb":
                                 relay_off_kb, "memory_max_kb": cap_kb, "unit_memory_max": limit}
    print("OOM kill:", times.figures["oom_kill"])
    since = _cursor(guest)
    started = time.monotonic()
    try:
        guest.run(f"systemctl set-property --runtime twinlockd MemoryMax={cap_kb}K",
                  timeout=300, check=False)
        try:
            guest.wait_until(f"journalctl -u twinlockd --since '{since}' -o cat --no-pager "
                             "| grep -F \"Failed with result 'oom-kill'\"", 300,
                             "systemd's record of the OOM kill")
        except GuestError as error:  # say what systemd and the kernel recorded instead
            kills = guest.run("journalctl -k -o cat --no-pager | grep -F 'Memory cgroup out of "
                              "memory' | tail -n 5", check=False).stdout
            raise GuestError(f"{error}\nthe unit's journal:\n{guest.journal(since)[-3000:]}\n"
                             f"the kernel's OOM kills:\n{kills}") from error
    finally:
        guest.run(f"rm -f {RUNTIME_LIMIT} && systemctl daemon-reload", timeout=300)
    assert guest.run(f"cat {cgroup}/memory.max", check=False).stdout.strip() in (limit, ""), \
        "the unit's own MemoryMax= was not restored"
    new = _restarted(guest, pid, 900)
    times.seconds["oom-kill-to-ready"] = round(time.monotonic() - started, 1)
    assert guest.run(f"cat {cgroup}/memory.max").stdout.strip() == limit
    journal = guest.journal(since)
    assert "Failed with result 'oom-kill'" in journal, journal[-3000:]
    # systemd logs the result once ExecStopPost is done: relay-off comes between the two lines
    oom = journal.index("A process of this unit has been killed by the OOM killer")
    assert RELAY_OFF in journal[oom:], "ExecStopPost did not run after the OOM kill:\n" + journal
    # the kernel's OOM killer did it, in the unit's cgroup, to the daemon
    kernel = guest.run("journalctl -k -o cat --no-pager").stdout
    assert re.search(rf"Memory cgroup out of memory: Killed process {pid}\b", kernel), \
        kernel[-3000:]
    assert new != pid


def test_reload_applies_a_newly_deployed_bundle(door: Door, times: Times) -> None:
    guest = door.guest
    twinlock("enroll", "alex", "--images", str(examples() / "alex-lacamoire.png"), "--model",
             str(GUEST_MODEL), "--db", str(door.enrol_db))
    bundle = door.bundle("household-2", ["lin", "alex"])
    pid = door.main_pid()
    before = max((int(str(r["id"])) for r in door.audit(None)), default=0)
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
    # the new resident is let in, in his own frames of the clip (where the first bundle let
    # nobody in), by the same process
    started = time.monotonic()
    deadline = started + 900
    unlocks: list[dict[str, object]] = []
    while time.monotonic() < deadline and not any(
            r["user"] == "alex" and r["frame"] in LACAMOIRE_FRAMES for r in unlocks):
        unlocks = [r for r in door.audit("unlock") if int(str(r["id"])) > before]
        time.sleep(10)
    times.seconds["reload-to-new-resident-unlock"] = round(time.monotonic() - started, 1)
    seen = [(r["id"], r["user"], r["frame"]) for r in unlocks]
    assert any(r["user"] == "alex" and r["frame"] in LACAMOIRE_FRAMES for r in unlocks), \
        f"the newly enrolled resident was never let in in his frames: {seen}"
    # a resident on screen each time, and in Lacamoire's frames always him (Miranda's photo
    # scores at most 0.55 there). Not asserted: the name in Miranda's frames. With the compact
    # model and one photo each, Lacamoire's photo scores up to 0.994 on Miranda's face (frame
    # 131), above Lacamoire's own best, 0.968: no threshold and no k of n separates them on this
    # clip (measured on the host by replaying it through the daemon with this config: per pass,
    # 3 unlocks of Miranda as lin, 2 of Lacamoire, 5 of Miranda as alex). The default model,
    # about 7 times slower here, keeps Lacamoire's photo below 0.97 on Miranda's face.
    assert all(r["frame"] in RESIDENTS_FRAMES for r in unlocks), seen
    assert all(r["user"] == "alex" for r in unlocks if r["frame"] in LACAMOIRE_FRAMES), seen
    times.figures["reload_unlocks"] = {
        f"{user} in {whose} frames": sum(
            1 for r in unlocks if r["user"] == user and r["frame"] in frames)
        for user in ("lin", "alex")
        for whose, frames in (("Miranda's", MIRANDA_FRAMES), ("Lacamoire's", LACAMOIRE_FRAMES))}
    print("unlocks after the reload:", times.figures["reload_unlocks"])
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


def test_rollback_under_the_unit_brings_back_the_previous_bundle(door: Door,
                                                                 times: Times) -> None:
    """`twinlockd rollback` as the docs say (sudo, on the door), then `systemctl reload`: the
    previous bundle (Miranda alone) is current again, without a restart, and the door keeps
    deciding."""
    guest = door.guest
    pid = door.main_pid()
    since = _cursor(guest)
    started = time.monotonic()
    out = guest.run("/opt/twinlock/venv/bin/twinlockd rollback -c /etc/twinlock/config.yaml "
                    "&& systemctl reload twinlockd", timeout=300)
    print(out.stdout, out.stderr)
    journal = guest.wait_until(
        f"journalctl -u twinlockd --since '{since}' -o cat --no-pager "
        "| grep -E 'reloaded: |reload refused'", 600, "the reload after rollback")
    times.seconds["rollback-and-reload"] = round(time.monotonic() - started, 1)
    assert "1 user(s)" in journal, guest.journal(since)[-3000:]
    assert door.main_pid() == pid, "a rollback's reload must not restart the daemon"
    last_id = max((int(str(r["id"])) for r in door.audit(None)), default=0)  # after the reload
    owners = guest.run("stat -c '%U %a %n' /var/lib/twinlock/bundles/*").stdout
    assert all(line.startswith("twinlock ") for line in owners.splitlines()), owners
    # the door keeps deciding on the rolled-back bundle: new records, Miranda still let in
    started = time.monotonic()
    newer: list[dict[str, object]] = []
    while time.monotonic() < started + 900 and not any(
            r["event"] == "unlock" for r in newer):
        newer = [r for r in door.audit(None) if int(str(r["id"])) > last_id]
        time.sleep(10)
    unlocks = [r for r in newer if r["event"] == "unlock"]
    assert unlocks and all(r["user"] == "lin" for r in unlocks), newer[-5:]
    assert door.main_pid() == pid
    assert guest.run("systemctl is-active twinlockd").stdout.strip() == "active"


def test_a_config_broken_on_disk_keeps_the_unit_down_with_a_clear_line(door: Door,
                                                                      relay: RelayLine) -> None:
    guest = door.guest
    guest.run("cp /etc/twinlock/config.yaml /root/config.good")
    broken = door_config().replace("state_dir:", "stat_dir:")
    guest.run(f"cat > /etc/twinlock/config.yaml <<'EOF'\n{broken}EOF")
    since = _cursor(guest)
    try:
        broken_at = float(guest.run("date +%s.%N").stdout)
        restart = guest.run("systemctl restart twinlockd", check=False, timeout=300)
        assert restart.returncode != 0
        time.sleep(12)  # RestartSec=5: at least one retry, still refused
        state = guest.show("ActiveState", "SubState", "Result", "MainPID")
        assert state["ActiveState"] != "active", state
        assert state["MainPID"] == "0", state
        # the line: low, nobody holds the pin, and ExecStopPost drove it after the stop and
        # again after each refused start (check-config never touches it, the daemon never ran)
        events, read_at = relay.events()
        claims = relay.claims_between(events, broken_at, read_at)
        after_stop = claims[claims.index("released") + 1:] if "released" in claims else []
        assert sum(c.startswith("requested output") for c in after_stop) >= 2 \
            and let_go_held_off(after_stop, "pull-down"), \
            f"ExecStopPost did not drive GPIO{RELAY_PIN} after the refused starts: {claims}"
        assert relay.value() == "0"
        journal = guest.journal(since)
        assert re.search(r"stat_dir", journal), journal[-3000:]
        assert RELAY_OFF in journal, "ExecStopPost must run after a refused start:\n" + journal
    finally:
        guest.run("cp /root/config.good /etc/twinlock/config.yaml")
        guest.run("systemctl restart twinlockd", timeout=600, check=False)
    assert guest.run("systemctl is-active twinlockd", check=False).stdout.strip() == "active"


#: what a process in the unit's cgroup gets: a connection's outcome per address
CONNECT_PROBE = """
import socket, sys
for spec in sys.argv[1:]:
    host, port = spec.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=15).close()
        print(spec, "ok")
    except OSError as exc:
        print(spec, "refused", exc.errno)
"""


def test_the_mqtt_drop_in_reaches_the_broker_and_nothing_else(door: Door, tmp_path: Path,
                                                             times: Times) -> None:
    """deploy/mqtt.conf with IPAddressAllow= the broker (a mosquitto on the host: 10.0.2.2 in
    qemu's user network): the daemon connects and publishes; a process in the unit's cgroup
    can reach the broker's address and no other (the guest's own sshd, which answers outside
    the cgroup). paho-mqtt's wake-up socket pair needs 127.0.0.1 (the drop-in allows it)."""
    guest = door.guest
    port = free_port()
    conf = tmp_path / "mosquitto.conf"
    log = tmp_path / "mosquitto.log"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\nuser root\n"
                    f"persistence false\nlog_type all\nlog_dest file {log}\n")
    broker = subprocess.Popen(["mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        dropin = (REPO / "deploy" / "mqtt.conf").read_text()
        assert "IPAddressAllow=192.168.1.10" in dropin and "IPAddressAllow=127.0.0.1" in dropin
        guest.run("install -d /etc/systemd/system/twinlockd.service.d && cat > "
                  "/etc/systemd/system/twinlockd.service.d/mqtt.conf <<'EOF'\n"
                  + dropin.replace("IPAddressAllow=192.168.1.10", "IPAddressAllow=10.0.2.2")
                  + "EOF")
        config = door_config(mqtt={"enabled": True, "host": "10.0.2.2", "port": port,
                                   "client_id": "twinlock-vm"})
        guest.run(f"cat > /etc/twinlock/config.yaml <<'EOF'\n{config}EOF")
        started = time.monotonic()
        since = _cursor(guest)
        # a start slower than TimeoutStartSec (a busy host under emulation) is retried by
        # systemd itself (Restart=on-failure): wait for the unit to be up rather than the job
        restart = guest.run("systemctl daemon-reload && systemctl restart twinlockd",
                            timeout=600, check=False)
        if restart.returncode != 0:
            print("restart:", restart.stderr, guest.journal(since)[-3000:])
        guest.wait_until("systemctl is-active --quiet twinlockd", 900, "twinlockd up with MQTT",
                         every_s=5)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and "Received PUBLISH from twinlock-vm" not in \
                log.read_text(errors="replace"):
            time.sleep(3)
        times.seconds["mqtt-restart-to-publish"] = round(time.monotonic() - started, 1)
        broker_log = log.read_text(errors="replace")
        assert "Received PUBLISH from twinlock-vm" in broker_log, \
            broker_log[-2000:] + guest.journal(since)[-3000:]
        # the unit's IP filter, tried from inside its cgroup (PrivateNetwork=no with the drop-in)
        address = guest.run("ip -4 -o addr show scope global | awk '{print $4}' | cut -d/ -f1 "
                            "| head -n 1").stdout.strip()
        targets = f"10.0.2.2:{port} {address}:22"
        outside = guest.run(f"python3 -c '{CONNECT_PROBE}' {targets}").stdout
        inside = guest.run(
            "sh -c 'echo $$ > /sys/fs/cgroup/system.slice/twinlockd.service/cgroup.procs "
            f"&& exec python3 -c \"$0\" {targets}' '{CONNECT_PROBE}'").stdout
        print("outside the unit:", outside, "inside the unit's cgroup:", inside, sep="\n")
        assert outside.split("\n")[:2] == [f"{t} ok" for t in targets.split()], outside
        got = dict(line.split(" ", 1) for line in inside.splitlines() if line.strip())
        assert got[f"10.0.2.2:{port}"] == "ok", inside
        assert got[f"{address}:22"].startswith("refused"), inside
    finally:
        broker.terminate()
        try:
            broker.wait(timeout=10)
        except subprocess.TimeoutExpired:
            broker.kill()
            broker.wait()


#: install.sh's apt packages that only Raspberry Pi OS has (Debian: neither on amd64)
PI_OS_PACKAGES = ("python3-picamera2", "python3-lgpio")


def test_install_sh_with_apt_skips_what_debian_lacks(door: Door, times: Times) -> None:
    """install.sh run again as a user runs it, with its apt step (the fixture passed --no-apt):
    python3-venv is there, the Raspberry Pi OS packages are not in Debian's archive, so it
    warns about each, skips it and finishes; the same wheel is not reinstalled and nothing
    changes, so the running daemon is left alone."""
    guest = door.guest
    pid = door.main_pid()
    wheel = Path(ENV["WHEEL"]).name
    started = time.monotonic()
    result = guest.run(
        "cd /root/twinlock && PIP_NO_INDEX=1 PIP_FIND_LINKS=/root/twinlock/wheelhouse "
        f"deploy/install.sh --from /root/twinlock/{wheel} --key /root/twinlock/signing.pub "
        f"--deploy-user {door.deploy_user}", timeout=1800, check=False)
    times.seconds["install.sh-again-with-apt"] = round(time.monotonic() - started, 1)
    out = result.stdout
    print(out[-3000:], result.stderr[-2000:])
    assert result.returncode == 0, out[-3000:] + result.stderr[-3000:]
    assert "apt: skipped" not in out, out
    for pkg in PI_OS_PACKAGES:
        installed = guest.run(f"dpkg-query -W -f='${{Status}}' {pkg}", check=False).stdout
        assert f"apt: warning: {pkg} is not available here" in out or \
            "ok installed" in installed, out
    assert not re.search(r"apt: installing .*python3-venv", out), out  # in the image already
    assert "pip: twinlock[device] up to date" in out, out
    assert "service: enabled and running" in out, out
    assert door.main_pid() == pid


#: the shipped model, for the memory figures (emulated, about 0.2 frames a second: enough)
SHIPPED_MODEL = REPO / "models" / "default"
#: the daemon's memory, from /proc/PID/status: VmHWM and RssFile count file pages (libraries,
#: the model) mapped from the page cache; RssAnon is its own private memory
STATUS_FIELDS = ("VmHWM", "VmRSS", "RssAnon", "RssFile")


#: memory.stat's parts of the cgroup's charge: private (anon), page cache (file, of which
#: file_mapped is mapped by the daemon), kernel memory (kernel)
CGROUP_STAT = ("anon", "file", "file_mapped", "kernel")


def _memory(guest: Guest, pid: int) -> dict[str, float]:
    """The unit's cgroup (memory.peak: its high-water mark since the unit started, page cache
    of the files it read included; memory.stat's parts now) and the daemon's own figures, in
    MiB."""
    cgroup = "/sys/fs/cgroup/system.slice/twinlockd.service"
    peak, current = guest.run(f"cat {cgroup}/memory.peak {cgroup}/memory.current").stdout.split()
    figures = {"cgroup_memory_peak_mb": round(int(peak) / 2**20, 1),
               "cgroup_memory_current_mb": round(int(current) / 2**20, 1)}
    stat = dict(line.split() for line in guest.run(f"cat {cgroup}/memory.stat").stdout.splitlines())
    for name in CGROUP_STAT:
        figures[f"cgroup_{name}_mb"] = round(int(stat[name]) / 2**20, 1)
    for name in STATUS_FIELDS:
        figures[f"{name}_mb"] = round(_status_kb(guest, pid, name) / 1024, 1)
    return figures


def _decided_after(door: Door, last_id: int, limit_s: float, what: str) -> int:
    """Wait for a decision (an unlock or a refusal) recorded after ``last_id``: the daemon has
    handled frames with a face. Returns the newest record's id."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        records = door.audit(None)
        if any(r["event"] in ("unlock", "deny") and int(str(r["id"])) > last_id
               for r in records):
            return max(int(str(r["id"])) for r in records)
        time.sleep(15)
    raise AssertionError(f"{what}: no decision within {limit_s:.0f} s")


def test_the_shipped_model_stays_under_the_units_memory_high(door: Door, times: Times) -> None:
    """Memory under the unit with the shipped default model (issue 24): a fresh start (a new
    cgroup), the clip's first faces, then a reload to a second bundle of the same model (old
    and new matcher both alive for a moment) and more faces. memory.peak is what systemd's
    MemoryHigh=/MemoryMax= act on; it must stay under MemoryHigh= (above it the kernel
    throttles the daemon). The page cache is dropped before the start, as after a boot, when
    the daemon is the first to read its libraries and the cgroup is charged for them. The
    figures go to times-SUITE.json (docs/how-it-works/figures.md)."""
    guest = door.guest
    db = door.workdir / "enrolment-default.db"
    for user, photo in (("lin", "lin-manuel-miranda.png"), ("alex", "alex-lacamoire.png")):
        twinlock("enroll", user, "--images", str(examples() / photo), "--model",
                 str(SHIPPED_MODEL), "--db", str(db))
    bundles = []
    for name, users in (("shipped-1", ["lin"]), ("shipped-2", ["lin", "alex"])):
        out = door.workdir / f"{name}.twinlock"
        twinlock("bundle", "--model", str(SHIPPED_MODEL), "--users", *users, "--key",
                 str(door.signing_key), "--out", str(out), "--db", str(db))
        bundles.append(out)
    unit = guest.show("MemoryHigh", "MemoryMax")
    guest.run(f"cat > /etc/twinlock/config.yaml <<'EOF'\n{door_config()}EOF")
    # measured without the unit's limits (at MemoryHigh= the kernel would reclaim page cache and
    # the peak would read as the limit), put back at the end
    guest.run("systemctl set-property --runtime twinlockd MemoryHigh=infinity MemoryMax=infinity")
    try:
        _measure_the_shipped_model(door, bundles, unit, times)
    finally:
        guest.run("rm -f /run/systemd/system.control/twinlockd.service.d/50-Memory*.conf "
                  "&& systemctl daemon-reload", timeout=300)
    assert guest.show("MemoryHigh", "MemoryMax") == unit
    figures = times.figures["memory_shipped_model"]
    assert isinstance(figures, dict)
    high_mb = int(unit["MemoryHigh"]) / 2**20
    assert figures["after_reload_and_faces"]["cgroup_memory_peak_mb"] < high_mb, (figures, unit)


def _measure_the_shipped_model(door: Door, bundles: list[Path], unit: dict[str, str],
                               times: Times) -> None:
    guest = door.guest
    deployed = door.deploy(bundles[0], reload=False)
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    last_id = max((int(str(r["id"])) for r in door.audit(None)), default=0)
    since = _cursor(guest)
    started = time.monotonic()
    # a restart: a new cgroup, so memory.peak counts from this start (the bundle installed
    # then); the page cache dropped first, as at boot, so the cgroup is charged for every page
    # of the libraries and the model that the daemon reads (charged to whoever read it first)
    guest.run("systemctl stop twinlockd && sync && echo 3 > /proc/sys/vm/drop_caches "
              "&& systemctl start twinlockd", timeout=600, check=False)
    guest.wait_until("systemctl is-active --quiet twinlockd", 900, "twinlockd up with the "
                     "shipped model", every_s=5)
    guest.wait_until(f"journalctl -u twinlockd --since '{since}' -o cat --no-pager "
                     "| grep -F 'loaded model' | grep -F '(dlib-resnet'", 600,
                     "the shipped model loaded")
    pid = door.main_pid()
    last_id = _decided_after(door, last_id, 900, "the shipped model's first faces")
    times.seconds["shipped-model-start-to-decision"] = round(time.monotonic() - started, 1)
    after_start = _memory(guest, pid)
    since = _cursor(guest)
    deployed = door.deploy(bundles[1])
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    guest.wait_until(f"journalctl -u twinlockd --since '{since}' -o cat --no-pager "
                     "| grep -E 'reloaded: .*2 user'", 900, "the reload to the second bundle")
    _decided_after(door, last_id, 900, "faces after the reload")
    assert door.main_pid() == pid, "the daemon restarted during the measurement"
    after_reload = _memory(guest, pid)
    times.figures["memory_shipped_model"] = {"after_start_and_faces": after_start,
                                             "after_reload_and_faces": after_reload,
                                             "unit": unit}
    print("memory with the shipped model:", times.figures["memory_shipped_model"])


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
    for path in ("/var/lib/twinlock", GUEST_REVIEW_DIR, "/etc/twinlock", "/var/spool/twinlock",
                 "/etc/systemd/system/twinlockd.service.d"):
        assert f"kept {path} " in kept, kept
    assert guest.run("systemctl is-active twinlockd", check=False).stdout.strip() != "active"
    result = guest.run("/root/twinlock/deploy/uninstall.sh --purge")
    print(result.stdout)
    # systemd knows the name alone: no unit file, no drop-in anywhere (set-property's and
    # --runtime's too), nothing running. (The image's gpio-sim unit orders itself Before= it, so
    # systemd keeps a "not-found" entry for the name: that is the image's, not left by uninstall.)
    unit = guest.show("LoadState", "ActiveState", "FragmentPath", "DropInPaths", "MainPID")
    assert unit == {"LoadState": "not-found", "ActiveState": "inactive", "FragmentPath": "",
                    "DropInPaths": "", "MainPID": "0"}, unit
    gone = guest.run(
        "systemctl list-unit-files 'twinlockd*' --no-legend; getent passwd twinlock; "
        "getent group twinlock "
        "twinlock-deploy; ls -d /etc/systemd/system/twinlockd.service* /etc/systemd/system/"
        "*.wants/twinlockd* /opt/twinlock /etc/twinlock /var/lib/twinlock /var/spool/twinlock "
        f"{GUEST_REVIEW_DIR} /etc/systemd/system.control/twinlockd.service.d "
        "/run/systemd/system.control/twinlockd.service.d /run/systemd/system/twinlockd.service.d "
        "/run/twinlock /etc/sudoers.d/twinlock-deploy 2>/dev/null; "
        f"find / -xdev \\( -uid {uid} -o -gid {gid} -o -gid {deploy_gid} \\) -print 2>/dev/null "
        "| head; "
        f"pgrep -u {uid} -l", check=False).stdout
    assert gone.strip() == "", gone
    again = guest.run("/root/twinlock/deploy/uninstall.sh --purge").stdout
    assert "nothing to remove" in again

