"""The lockout's frame budget against real faces: what a resident spends, what a visitor trips.

Why: ``lockout.max_failed_frames`` (face-frames that verified nobody, within
``lockout.window_seconds``) bounds how many faces an attacker can try per hour, but every
unrecognised face in view spends it, so a visitor who waits at the door (a courier ringing the
bell) can lock the residents out for ``lockout.lockout_seconds``. This measures both sides with
the door's own analyser and state machine, the shipped config.yaml's settings, at its
``service.max_fps`` (15) on a fake clock, for several settings (``max_failed_frames`` or
``max_failures`` within ``window_seconds``):

1. resident: the clip's performer enrolled (``tests/daemon_helpers.enrol_miranda``), the real
   clip: failed face-frames spent before the door opens (liveness as shipped, and off);
2. visitor: the same clip with five LFW people enrolled instead, the performer's 8.6 s in view
   played back and forth so that he stands at the door for ``--stand`` seconds: how many of his
   frames count as failed, and after how many seconds in view the lockout starts;
3. guests: unenrolled visitors one after another, 3 s in view each, one every 10-60 s: how many
   come before the door locks;
4. visitor, then resident: the visitor stands S seconds and leaves, and the resident comes home
   5 s (or 60 s) later: the longest visit after which the resident still gets in;
5. attacker: one different LFW stranger per frame for an hour of fake time, the performer
   enrolled, without gaps and as a thin stream just under the budget's rate: faces the door
   evaluates while not locked out (the attacker's tries), and how many of them verified as the
   resident (the per-frame false match rate at the threshold).

Usage::

    .venv/bin/python benchmarks/lockout.py [--data DIR] [--model DIR] [--strangers N]
                                           [--budgets 150/60/5,450/180/15] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import _common as common
from daemon_helpers import CLIP, MIRANDA_FRAMES, enrol_miranda

from twinlock.daemon.config.loader import parse_config
from twinlock.daemon.config.schema import Config
from twinlock.daemon.door.assemble import build_matcher, door_settings
from twinlock.daemon.door.machine import DoorMachine, Record, Unlock
from twinlock.daemon.recognition.analyser import Observation
from twinlock.daemon.recognition.gallery import Gallery
from twinlock.daemon.recognition.model import FaceEmbedder


def shipped_config(model: Path, gallery: Path, **overrides: Any) -> Config:
    """config.yaml as shipped, with the model folder and gallery given (and ``overrides``)."""
    raw = yaml.safe_load((common.REPO / "config.yaml").read_text())
    raw["model"] = {"source": "folder", "dir": str(model), "gallery": str(gallery)}
    for section, values in overrides.items():
        raw[section] = raw.get(section, {}) | values
    return parse_config(yaml.safe_dump(raw))


def clip_frames(examples: Path, fps: float) -> list[tuple[int, np.ndarray]]:
    """(clip frame number, RGB image) for the frames a camera limited to ``fps`` delivers."""
    video = cv2.VideoCapture(str(examples / CLIP))
    clip_fps = video.get(cv2.CAP_PROP_FPS) or 30.0
    step = max(1, round(clip_fps / fps))
    out, index = [], 0
    while True:
        ok, image = video.read()
        if not ok:
            break
        if index % step == 0:
            out.append((index, cv2.cvtColor(image, cv2.COLOR_BGR2RGB)))
        index += 1
    video.release()
    return out


def lockout_keys(budget: tuple[int, ...]) -> dict[str, int]:
    return {"max_failed_frames": budget[0], "window_seconds": budget[1],
            "max_failures": budget[2]}


def budget_label(budget: tuple[int, ...]) -> str:
    return f"{budget[0]} frames or {budget[2]} attempts in {budget[1]} s"


def analyse(cfg: Config, images: list[np.ndarray], mesh: bool) -> list[tuple[Observation, ...]]:
    analyser = build_matcher(cfg).analyser
    return [analyser.analyse(image, want_mesh=mesh).observations for image in images]


def run(cfg: Config, seen: list[tuple[Observation, ...]], fps: float, seconds: float | None = None,
        start: float = 1000.0) -> dict[str, Any]:
    """Feed ``seen`` (cycled for ``seconds`` when given) to a fresh door machine."""
    door = DoorMachine(door_settings(cfg))
    count = len(seen) if seconds is None else int(seconds * fps)
    unlocks, lockouts, failed_at_unlock = [], [], []
    evaluated_unlocked = verified = faces = failed = 0
    for i in range(count):
        now = start + i / fps
        observations = seen[i % len(seen)]
        locked = door.lockout.locked(now)
        for o in observations:
            verdict = getattr(o, "verdict", None)
            faces += 1
            if verdict is not None:
                failed += verdict.user is None
                if not locked:
                    evaluated_unlocked += 1
                    verified += verdict.user is not None
        for command in door.step(now, i, observations):
            record = command.record if isinstance(command, Unlock) else command
            if isinstance(record, Record) and record.event == "unlock":
                unlocks.append(round(i / fps, 3))
                failed_at_unlock.append(len(door.lockout._failed_frames))
            if isinstance(record, Record) and record.event == "lockout":
                lockouts.append(round(i / fps, 3))
    return {"frames": count, "faces": faces, "failed_frames": failed,
            "unlocks_s": unlocks, "failed_frames_counted_at_unlock": failed_at_unlock,
            "lockouts_s": lockouts, "evaluated_while_unlocked": evaluated_unlocked,
            "verified_while_unlocked": verified}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data")
    parser.add_argument("--model", type=Path, default=common.DEFAULT_MODEL)
    parser.add_argument("--strangers", type=int, default=1000)
    parser.add_argument("--stand", type=float, default=120.0)
    parser.add_argument("--budgets", default="150/60/5,450/60/5,900/60/5,450/180/15",
                        help="lockout settings to compare: "
                        "max_failed_frames/window_seconds/max_failures")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    data = common.data_root(args.data)
    examples, lfw = data / "face_recognition_examples", data / "lfw" / "lfw-deepfunneled"
    budgets = [tuple(int(x) for x in b.split("/")) for b in args.budgets.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="lockout-bench-"))
    resident = tmp / "resident.json"
    enrol_miranda(args.model, examples, resident)
    base = shipped_config(args.model, resident)
    fps = float(base.service.max_fps)
    frames = clip_frames(examples, fps)
    mesh = base.liveness.mode != "off"

    # residents that are not the performer: five LFW people, one photo each
    embedder = FaceEmbedder(args.model)
    people = sorted(p for p in lfw.iterdir() if p.is_dir())
    others = Gallery(embedder.meta.model_id)
    analyser = build_matcher(base).analyser
    for person in people[-200:]:
        if len(others.users) == 5:
            break
        image = cv2.cvtColor(cv2.imread(str(min(person.glob("*.jpg")))), cv2.COLOR_BGR2RGB)
        scored = analyser.analyse(image).scored
        if scored:
            others.add(person.name, scored[0].embedding[None, :])
    others_path = tmp / "others.json"
    others.save(others_path)

    report: dict[str, Any] = {"model": str(args.model), "fps": fps, "defaults": {
        k: getattr(base.lockout, k) for k in ("max_failures", "max_failed_frames",
                                              "window_seconds", "lockout_seconds",
                                              "attempt_seconds")},
        "liveness": base.liveness.mode, "frames_required": base.verification.frames_required,
        "frame_window": base.verification.frame_window}

    images = [image for _, image in frames]
    seen_resident = analyse(base, images, mesh)
    first_face = next(i for i, s in enumerate(seen_resident) if s)
    report["resident"] = {"first_face_s": round(first_face / fps, 3)}
    for label, cfg in (("shipped", base),
                       ("liveness_off", shipped_config(args.model, resident,
                                                       liveness={"mode": "off"}))):
        report["resident"][label] = run(cfg, seen_resident, fps)

    visible = [i for i, (n, _) in enumerate(frames) if n in MIRANDA_FRAMES]
    seen_visitor = analyse(shipped_config(args.model, others_path), images, mesh)
    standing = [seen_visitor[i] for i in visible] + [seen_visitor[i] for i in visible[::-1]]
    report["visitor"] = {"in_view_frames": len(standing),
                         "faces": sum(len(s) for s in standing)}
    for budget in budgets:
        cfg = shipped_config(args.model, others_path, lockout=lockout_keys(budget))
        report["visitor"][budget_label(budget)] = run(cfg, standing, fps, seconds=args.stand)

    # the visitor stands S seconds and leaves; 5 s (or 60 s) later the resident comes home:
    # the longest visit (whole seconds, up to 60) after which the resident still gets in
    report["visitor_then_resident"] = {}
    for budget in budgets:
        cfg = shipped_config(args.model, resident, lockout=lockout_keys(budget))
        row = {}
        for gap in (5, 60):
            longest = 0
            for stand in range(1, 61):
                frames_in_view = [standing[i % len(standing)] for i in range(int(stand * fps))]
                sequence = frames_in_view + [()] * int(gap * fps) + seen_resident
                if not run(cfg, sequence, fps)["unlocks_s"]:
                    break
                longest = stand
            row[f"resident_{gap}s_later_gets_in_after_a_visit_of_up_to_s"] = longest
        report["visitor_then_resident"][budget_label(budget)] = row

    # unenrolled visitors (the performer, five LFW residents enrolled) one after another, each
    # in view 3 s, one every G seconds: how many come before the door locks (none: "never")
    report["guests"] = {}
    for budget in budgets:
        cfg = shipped_config(args.model, others_path, lockout=lockout_keys(budget))
        row = {}
        for every in (10, 20, 30, 45, 60):
            visit = standing[:int(3 * fps)] + [()] * int((every - 3) * fps)
            outcome = run(cfg, visit * 40, fps)
            row[f"one_every_{every}s"] = (int(outcome["lockouts_s"][0] // every) + 1
                                          if outcome["lockouts_s"] else "never (40 came)")
        report["guests"][budget_label(budget)] = row

    strangers = []
    for person in people[:args.strangers]:
        image = cv2.imread(str(min(person.glob("*.jpg"))))
        strangers.append(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
    seen_strangers = [s for s in analyse(base, strangers, mesh) if s]
    report["attacker"] = {"strangers_with_a_face": len(seen_strangers)}
    for budget in budgets:
        cfg = shipped_config(args.model, resident, lockout=lockout_keys(budget))
        hour = run(cfg, seen_strangers, fps, seconds=3600.0)
        report["attacker"][budget_label(budget)] = {
            "evaluated_while_unlocked": hour["evaluated_while_unlocked"],
            "verified_while_unlocked": hour["verified_while_unlocked"],
            "unlocks_s": hour["unlocks_s"], "lockouts": len(hour["lockouts_s"])}
    # a thin stream: strangers' faces at 95 % of the budget's rate (frames / window per
    # second), the other camera frames empty, for an hour: the lockout's ceiling on tries
    for budget in budgets:
        cfg = shipped_config(args.model, resident, lockout=lockout_keys(budget))
        rate = 0.95 * budget[0] / budget[1]
        hour = int(3600 * fps)
        thin = [seen_strangers[i % len(seen_strangers)]
                if int((i + 1) * rate / fps) > int(i * rate / fps) else () for i in range(hour)]
        outcome = run(cfg, thin, fps)
        report["attacker"][budget_label(budget)]["thin_stream"] = {
            "faces_per_s": round(rate, 3), "evaluated_while_unlocked":
            outcome["evaluated_while_unlocked"], "lockouts": len(outcome["lockouts_s"]),
            "verified_while_unlocked": outcome["verified_while_unlocked"],
            "unlocks_s": outcome["unlocks_s"]}
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
