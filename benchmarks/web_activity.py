"""The household page with 10,000 attempts: how long the Activity page and ``/api/activity``
take, and how much memory the running ``twinlock web`` server holds.

Data: an activity store filled with ``--records`` attempts (default 10,000) at three doors over
30 days (unlocks by residents, denials, liveness refusals and lockouts). Each record is valid
(the door's own ``ReviewRecord``, stored through ``ActivityStore.ingest`` as a sync stores it)
and carries a real face: LFW photos through the door's enrolment path (largest face, quality
gate, tower), their crops (JPEG) and embeddings reused across records. A few groups of denials
are marked as known visitors (not residents), so the page names them as it would at home.

Measured: ``twinlock web`` started as the household starts it (a subprocess on 127.0.0.1), one
login, then ``--repeat`` GETs each (after one warm-up) of the Activity page's first page, a
filtered page (one door, denials, one day), ``/api/activity`` (100 newest) and its largest
answer (``limit=1000``); the Visitors page (it groups every refused attempt) a few times. The
server process's VmRSS and VmHWM (peak) from /proc after starting, after the Activity and API
calls, and after the Visitors page.

Usage::

    nice -n 10 .venv/bin/python benchmarks/web_activity.py [--data DIR] [--model DIR]
        [--records 10000] [--repeat 21] [--json docs/benchmarks/web_activity.json]
"""

from __future__ import annotations

import argparse
import re
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as common
import httpx
import numpy as np

PASSWORD = "benchmark household password"
CLI = "import sys; from twinlock.trainer.cli import main; sys.exit(main(sys.argv[1:]))"
DOORS = ("front", "back", "garage")
T_END = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
DAYS = 30


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = common.make_parser(__doc__ or "")
    common.add_model_option(parser)
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=21, help="GETs per page (median)")
    parser.add_argument("--people", type=int, default=40, help="LFW people whose faces are used")
    common.add_json_option(parser)
    return parser.parse_args(argv)


def real_faces(lfw: Path, model: Path, people: int) -> list[tuple[str, bytes, np.ndarray]]:
    """(person, crop JPEG, embedding) for the first usable photo of ``people`` LFW people with
    several photos, through the door's enrolment path."""
    from twinlock.daemon.faces import quality as q
    from twinlock.daemon.faces.images import load_image
    from twinlock.daemon.recognition.model import FaceEmbedder
    from twinlock.daemon.review.store import encode_crop
    from twinlock.trainer.household.anchors import enrolment_analyser, enrolment_face

    embedder = FaceEmbedder(model)
    meta = embedder.meta
    analyser = enrolment_analyser(meta.face_pipeline(meta.detector.build()), embedder,
                                  q.DEFAULT_THRESHOLDS)
    out: list[tuple[str, bytes, np.ndarray]] = []
    for folder in sorted(p for p in lfw.iterdir() if p.is_dir()):
        photos = sorted(folder.glob("*.jpg"))
        if len(photos) < 3:
            continue
        for path in photos[:2]:
            found = enrolment_face(load_image(path), analyser)
            if not isinstance(found, str):
                out.append((folder.name, encode_crop(found.crop), found.embedding))
        if len({p for p, _, _ in out}) >= people:
            break
    return out


def fill_store(db: Path, faces: list[tuple[str, bytes, np.ndarray]], model_id: str,
               records: int, seed: int = 0) -> dict[str, Any]:
    """``records`` attempts over DAYS days at DOORS, through ``ActivityStore.ingest``."""
    from twinlock.daemon.review.format import ReviewRecord, new_record_id
    from twinlock.trainer.household.activity import ActivityStore

    rng = np.random.default_rng(seed)
    people = sorted({p for p, _, _ in faces})
    residents = people[:4]  # unlocks come from these; everyone else is a visitor
    by_person = {p: [(c, e) for q, c, e in faces if q == p] for p in people}
    kinds = rng.choice(["unlock", "deny", "liveness", "lockout"], size=records,
                       p=[0.6, 0.3, 0.05, 0.05])
    offsets = np.sort(rng.uniform(0, DAYS * 86400, size=records))
    batches: dict[tuple[str, str], list[tuple[Any, bytes]]] = {}
    for i in range(records):
        when = T_END - timedelta(seconds=float(offsets[i]))
        door = DOORS[int(rng.integers(len(DOORS)))]
        decision = str(kinds[i])
        person = (residents[int(rng.integers(len(residents)))] if decision == "unlock"
                  else people[4 + int(rng.integers(len(people) - 4))])
        crop, embedding = by_person[person][int(rng.integers(len(by_person[person])))]
        record = ReviewRecord(id=new_record_id(door, when), door=door, time=when,
                              decision=decision, bundle_id="bench", model_id=model_id,
                              resident=person if decision == "unlock" else None,
                              score=float(rng.uniform(0.9, 1.0) if decision == "unlock"
                                          else rng.uniform(0.0, 0.5)),
                              embedding=embedding)
        batches.setdefault((door, f"{when:%Y-%m-%d}"), []).append((record, crop))
    with ActivityStore(db) as store:
        for door in DOORS:
            store.add_door(door, str(db.parent / door))
        for (door, day), items in sorted(batches.items()):
            store.ingest(door, day, 1, items)
        counts = store.door_counts()
    return {"records": records, "doors": {d: counts[d][0] for d in sorted(counts)},
            "days": DAYS, "faces": len(faces), "people": len(people)}


def mark_visitors(db: Path, model: Path, groups: int) -> int:
    """Mark the ``groups`` largest visitor groups as known visitors, through the household
    function the CLI and the page call."""
    from twinlock.daemon.recognition.model import read_metadata
    from twinlock.trainer.household.activity import ActivityStore
    from twinlock.trainer.household.visitors import mark_not_resident, unknown_visitors

    with ActivityStore(db) as store:
        found = unknown_visitors(store, read_metadata(model))[:groups]
        for i, group in enumerate(found):
            # the first two of each group: later ones are named by grouping with them
            mark_not_resident(store, group.attempts[:2], f"visitor {i}")
    return len(found)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def memory(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM (peak) of ``pid`` in MiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = round(int(value.split()[0]) / 1024, 1)
    return fields


def timed_gets(client: httpx.Client, path: str, repeat: int) -> dict[str, Any]:
    first = client.get(path)  # warm-up (and the check that it answers)
    if first.status_code != 200:
        raise SystemExit(f"GET {path}: {first.status_code} {first.text[:300]}")
    seconds = []
    for _ in range(repeat):
        start = time.perf_counter()
        r = client.get(path)
        seconds.append(time.perf_counter() - start)
        r.raise_for_status()
    return common.timing(seconds, extreme="max") | {"bytes": len(first.content)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    from twinlock.daemon.recognition.model import read_metadata
    from twinlock.trainer.web.auth import set_password

    data = common.data_root(args.data)
    report = common.report_header("web_activity", data)
    faces = real_faces(data / "lfw" / "lfw-deepfunneled", args.model, args.people)
    with tempfile.TemporaryDirectory(prefix="twinlock-web-bench-") as tmp:
        home = Path(tmp) / "home"
        enrol_db, db = home / "enrolment.db", home / "activity.db"
        start = time.perf_counter()
        report["store"] = fill_store(db, faces, read_metadata(args.model).model_id,
                                     args.records)
        report["store"]["known_visitor_groups"] = mark_visitors(db, args.model, 3)
        report["store"]["fill_s"] = round(time.perf_counter() - start, 1)
        report["store"]["file_mib"] = round(db.stat().st_size / 2**20, 1)
        set_password(home, PASSWORD)
        port = free_port()
        server = subprocess.Popen(
            [sys.executable, "-c", CLI, "web", "--port", str(port), "--db", str(enrol_db),
             "--activity-db", str(db), "--model", str(args.model)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 120
            while True:
                try:
                    if httpx.get(url + "/login", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if server.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("twinlock web did not start")
                time.sleep(0.2)
            report["server_after_start_mib"] = memory(server.pid)
            with httpx.Client(base_url=url, timeout=300) as client:
                form = client.get("/login").text
                found = re.search(r'name="login_token" value="([^"]+)"', form)
                assert found, "no login token"
                r = client.post("/login", data={"password": PASSWORD,
                                                "login_token": found.group(1)})
                if r.status_code != 303:
                    raise SystemExit(f"login failed: {r.status_code}")
                day = f"{T_END - timedelta(days=10):%Y-%m-%d}"
                pages = {
                    "activity_first_page": "/",
                    "activity_filtered": f"/?door=front&decision=deny&day={day}",
                    "activity_oldest_day": f"/?day={T_END - timedelta(days=DAYS - 1):%Y-%m-%d}",
                    "api_activity_100": "/api/activity",
                    "api_activity_1000": "/api/activity?limit=1000",
                }
                report["pages"] = {name: {"path": path} | timed_gets(client, path, args.repeat)
                                   for name, path in pages.items()}
                report["server_after_activity_mib"] = memory(server.pid)
                report["pages"]["visitors"] = {"path": "/visitors"} | timed_gets(
                    client, "/visitors", max(1, args.repeat // 7))
            report["server_after_visitors_mib"] = memory(server.pid)
        finally:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
    report["environment"] = common.environment(packages={"starlette": "starlette",
                                                         "uvicorn": "uvicorn"})
    return report


if __name__ == "__main__":
    sys.exit(common.main(parse_args, run))
