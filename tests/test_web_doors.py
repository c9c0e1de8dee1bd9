"""The Doors page's Update and scheduled sync (issue 23) against a real ``twinlock web`` on
127.0.0.1 (httpx as the browser): a folder door and a door over the real sshd on 127.0.0.1
(the deploy tests' throw-away server). The update builds a real signed bundle from a resident
enrolled from real photos; the door's own reader verifies what arrived."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_deploy_ssh import Door, door  # noqa: F401  (the sshd fixture)
from test_web import PASSWORD, Server, audit, login, set_password

from twinlock.daemon.bundle.store import verify_bundle
from twinlock.daemon.errors import UsageError
from twinlock.daemon.review.format import ReviewRecord, new_record_id
from twinlock.daemon.review.store import ReviewWriter
from twinlock.trainer.cli import main
from twinlock.trainer.household.activity import ActivityStore
from twinlock.trainer.web.jobs import UpdateJobs

pytestmark = pytest.mark.data

#: an update builds a bundle (the tower re-read, anchors checked) and copies ~25 MB: generous
UPDATE_LIMIT_S = 300.0


def status_of(html: str, name: str, kind: str = "update") -> str:
    found = re.search(rf'id="{kind}-status-{name}"[^>]*>(.*?)</span>', html, re.DOTALL)
    assert found, f"no {kind}-status-{name} on the page"
    return found.group(1).strip()


def row_of(html: str, name: str) -> str:
    found = re.search(rf'<tr id="door-{name}">(.*?)</tr>', html, re.DOTALL)
    assert found, f"no row for door {name}"
    return found.group(1)


def csrf(c: httpx.Client) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', c.get("/doors").text)
    assert found
    return found.group(1)


def a_record(review: Path, name: str) -> None:
    """One attempt in a door's review folder (no face: enough for a sync to reach it)."""
    when = datetime.now(UTC).replace(microsecond=0)
    writer = ReviewWriter(review, name, 30, 10**8, clock=lambda: when.timestamp())
    assert writer.append(ReviewRecord(id=new_record_id(name, when), door=name, time=when,
                                      decision="deny", bundle_id="b-older", model_id="m",
                                      resident=None, score=0.1), None)


@pytest.fixture(scope="module")
def house(tmp_path_factory: pytest.TempPathFactory, door_model: Path, examples_dir: Path,
          door: Door) -> Iterator[dict[str, Any]]:  # noqa: F811
    """A resident enrolled from real photos, a signing key, three doors: ``front`` (folders),
    ``porch`` (over the real sshd, its reload a marker file) and ``shed`` (its card is not
    mounted: every update and sync fails); the page syncs every 3 s."""
    tmp = tmp_path_factory.mktemp("webdoors")
    home: dict[str, Any] = {"enrol_db": tmp / "home" / "enrolment.db", "db": tmp / "home" / "activity.db",
            "key": tmp / "home.key", "tmp": tmp}
    assert main(["enroll", "barack", "--images", str(examples_dir / "obama.jpg"),
                 str(examples_dir / "obama2.jpg"), "--model", str(door_model), "--db",
                 str(home["enrol_db"])]) == 0
    assert main(["keygen", "--out", str(tmp / "home")]) == 0
    act = ["--activity-db", str(home["db"])]
    for name in ("front", "porch"):
        (tmp / name / "spool").mkdir(parents=True)
        a_record(tmp / name / "review", name)
    assert main(["doors", "add", "front", "--to", str(tmp / "front" / "review"), "--deploy-to",
                 str(tmp / "front" / "spool"), *act]) == 0
    assert main(["doors", "add", "porch", "--to", door.url(tmp / "porch" / "review"), "-i",
                 str(door.key), f"--ssh-option={' '.join(door.options)}", "--deploy-to",
                 door.url(f"{tmp / 'porch' / 'spool'}/"), "--reload-command",
                 f"touch {tmp / 'porch' / 'reloaded'}", *act]) == 0
    assert main(["doors", "add", "shed", "--to", str(tmp / "shed-card"), "--deploy-to",
                 str(tmp / "shed-card"), *act]) == 0
    set_password(home["enrol_db"])
    web = Server(home, door_model, "--signing-key", str(home["key"]), "--sync-every", "0.05")
    home["url"] = web.url
    try:
        yield home
    finally:
        web.stop()


@pytest.fixture(scope="module")
def client(house: dict[str, Any]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=house["url"], timeout=120) as c:
        assert login(c, PASSWORD).status_code == 303
        yield c


def wait_done(client: httpx.Client, name: str, kind: str = "update") -> tuple[str, set[str]]:
    """Poll the Doors page as a browser would (it says Refresh while an update or a sync runs)
    until ``name``'s update (``kind="sync"``: its sync) ends; its last status and every status
    seen on the way."""
    seen: set[str] = set()
    deadline = time.monotonic() + UPDATE_LIMIT_S
    while time.monotonic() < deadline:
        page = client.get("/doors")
        text = status_of(page.text, name, kind)
        seen.add(text)
        if text.startswith(("done", "failed")):
            return text, seen
        assert page.headers.get("refresh") == "2", f"a running {kind} must reload the page"
        time.sleep(0.3)
    raise AssertionError(f"door {name}: the {kind} did not end within {UPDATE_LIMIT_S} s: {seen}")


def test_update_without_a_session_or_without_csrf_is_refused(house: dict[str, Any],
                                                             client: httpx.Client) -> None:
    with httpx.Client(base_url=house["url"]) as anon:
        assert anon.post("/doors/front/update", data={"csrf": "x"}).status_code == 401
        assert anon.get("/doors").status_code == 303
    for form in ({}, {"csrf": "wrong"}):
        r = client.post("/doors/front/update", data=form)
        assert r.status_code == 403 and "CSRF" in r.text
    assert status_of(client.get("/doors").text, "front") == ""  # nothing started
    assert not list((house["tmp"] / "front" / "spool").iterdir())
    assert not [e for e in audit(house) if str(e["action"]).startswith("door_update")]


def test_update_builds_signs_and_deploys_to_a_folder_door_with_visible_progress(
        house: dict[str, Any], client: httpx.Client) -> None:
    page = client.get("/doors").text
    assert 'id="update-front"' in page and 'id="update-status-front"' in page
    r = client.post("/doors/front/update", data={"csrf": csrf(client)})
    assert r.status_code == 303 and r.headers["location"] == "/doors"
    text, seen = wait_done(client, "front")
    steps = "build bundle &gt; sign &gt; copy"  # a folder door: no reload
    assert text.startswith(f"done ({steps}): door front runs bundle "), (text, seen)
    [arrived] = (house["tmp"] / "front" / "spool").iterdir()
    verified = verify_bundle(arrived, house["tmp"] / "home.pub")
    assert verified.users == ["barack"] and verified.bundle_id in text
    row = row_of(client.get("/doors").text, "front")
    assert "up to date" in row and verified.bundle_id in row and "barack" in row
    actions = [e for e in audit(house) if e.get("door") == "front"]
    assert [e["action"] for e in actions] == ["door_update", "door_update_done"]


def test_update_over_ssh_copies_and_reloads_the_door(house: dict[str, Any],
                                                     client: httpx.Client) -> None:
    assert client.post("/doors/porch/update", data={"csrf": csrf(client)}).status_code == 303
    text, _ = wait_done(client, "porch")
    assert text.startswith("done (build bundle &gt; sign &gt; copy &gt; reload): door porch "
                           "runs bundle "), text
    assert "reloaded" in text and (house["tmp"] / "porch" / "reloaded").exists()
    [arrived] = (house["tmp"] / "porch" / "spool").iterdir()
    assert verify_bundle(arrived, house["tmp"] / "home.pub").users == ["barack"]
    assert "up to date" in row_of(client.get("/doors").text, "porch")


def test_a_failing_update_says_where_and_why_and_the_schedule_shows_sync_errors(
        house: dict[str, Any], client: httpx.Client) -> None:
    assert client.post("/doors/shed/update", data={"csrf": csrf(client)}).status_code == 303
    text, _ = wait_done(client, "shed")
    assert text.startswith("failed at copy (build bundle &gt; sign &gt; copy): target folder"), text
    assert "does not exist" in text
    deadline = time.monotonic() + 120
    while True:  # the schedule (every 3 s) reaches every door; shed's card is not there
        row = row_of(client.get("/doors").text, "shed")
        if "unreachable or failing" in row and "reachable" in row_of(
                client.get("/doors").text, "front"):
            break
        assert time.monotonic() < deadline, row
        time.sleep(0.5)
    assert "last deployment failed" in row and "does not exist" in row
    assert "sync-schedule" in client.get("/doors").text
    assert [e["action"] for e in audit(house) if e.get("door") == "shed"] == [
        "door_update", "door_update_failed"]
    assert client.post("/doors/garage/update", data={"csrf": csrf(client)}).status_code == 400


def test_one_update_per_door_at_a_time() -> None:
    jobs = UpdateJobs()
    release = threading.Event()
    first = jobs.start("front", lambda progress: (progress("build bundle"), release.wait(60),
                                                  "ok")[2])
    with pytest.raises(UsageError, match="being updated already"):
        jobs.start("front", lambda progress: "second")
    other = jobs.start("porch", lambda progress: "other door")  # another door may go
    release.set()
    deadline = time.monotonic() + 60
    while first.running or other.running:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert (first.state, first.message, first.steps) == ("done", "ok", ["build bundle"])
    assert jobs.start("front", lambda progress: "again").door == "front"  # after it ended


def test_update_every_door_goes_on_past_a_failing_door_and_shows_each_outcome(
        house: dict[str, Any], client: httpx.Client) -> None:
    """One bundle to front (folder), porch (ssh) and shed (its card is not there): shed
    fails with its reason, the others get the bundle; each door's status and the summary say
    so, and the change log holds the request and its end."""
    with httpx.Client(base_url=house["url"]) as anon:
        assert anon.post("/doors/update-all", data={"csrf": "x"}).status_code == 401
    r = client.post("/doors/update-all", data={})
    assert r.status_code == 403 and "CSRF" in r.text
    assert 'id="update-all"' in client.get("/doors").text
    before = {n: set((house["tmp"] / n / "spool").iterdir()) for n in ("front", "porch")}
    r = client.post("/doors/update-all", data={"csrf": csrf(client)})
    assert r.status_code == 303 and r.headers["location"] == "/doors"
    texts = {name: wait_done(client, name)[0] for name in ("front", "porch", "shed")}
    assert texts["front"].startswith("done (build bundle &gt; sign &gt; copy): door front "
                                     "runs bundle "), texts
    assert texts["porch"].startswith("done (build bundle &gt; sign &gt; copy &gt; reload): "
                                     "door porch runs bundle "), texts
    assert texts["shed"].startswith("failed at copy (build bundle &gt; sign &gt; copy): "
                                    "target folder"), texts
    deadline = time.monotonic() + UPDATE_LIMIT_S
    while "updated 2 of 3 doors" not in (page := client.get("/doors").text):
        assert time.monotonic() < deadline, page
        time.sleep(0.3)
    summary = re.search(r'id="update-all-status"[^>]*>(.*?)</span>', page, re.DOTALL)
    assert summary and "updated 2 of 3 doors; failed: shed (target folder" in summary.group(1)
    bundles = set()
    for name in ("front", "porch"):
        [new] = set((house["tmp"] / name / "spool").iterdir()) - before[name]
        verified = verify_bundle(new, house["tmp"] / "home.pub")
        assert verified.users == ["barack"] and verified.bundle_id in texts[name]
        bundles.add(verified.bundle_id)
    assert len(bundles) == 1  # built and signed once
    assert "last deployment failed" in row_of(page, "shed")
    actions = [(e["action"], e.get("doors")) for e in audit(house)
               if str(e["action"]).startswith("doors_update_all")]
    assert actions[-2:] == [("doors_update_all", ["front", "porch", "shed"]),
                            ("doors_update_all_done", ["front", "porch", "shed"])]


@pytest.fixture(scope="module")
def quiet(tmp_path_factory: pytest.TempPathFactory, door_model: Path
          ) -> Iterator[dict[str, Any]]:
    """A household whose page runs no schedule: door ``side`` (a folder with one attempt) is
    fetched only when someone presses Sync now; ``gone``'s card is not mounted."""
    tmp = tmp_path_factory.mktemp("webdoors-quiet")
    home: dict[str, Any] = {"enrol_db": tmp / "home" / "enrolment.db",
                            "db": tmp / "home" / "activity.db", "tmp": tmp}
    (tmp / "side").mkdir()
    a_record(tmp / "side" / "review", "side")
    for name, target in (("side", tmp / "side" / "review"), ("gone", tmp / "gone-card")):
        assert main(["doors", "add", name, "--to", str(target), "--activity-db",
                     str(home["db"])]) == 0
    set_password(home["enrol_db"])
    web = Server(home, door_model)
    home["url"] = web.url
    try:
        yield home
    finally:
        web.stop()


def test_sync_now_without_a_session_or_without_csrf_is_refused(quiet: dict[str, Any]) -> None:
    with httpx.Client(base_url=quiet["url"]) as anon:
        assert anon.post("/doors/side/sync", data={"csrf": "x"}).status_code == 401
    with httpx.Client(base_url=quiet["url"], timeout=120) as c:
        assert login(c, PASSWORD).status_code == 303
        assert 'id="sync-side"' in c.get("/doors").text
        for form in ({}, {"csrf": "wrong"}):
            r = c.post("/doors/side/sync", data=form)
            assert r.status_code == 403 and "CSRF" in r.text
        assert status_of(c.get("/doors").text, "side", "sync") == ""  # nothing started
    with ActivityStore(quiet["db"]) as store:
        assert store.door_counts().get("side", (0, None))[0] == 0
        assert store.door("side").last_sync is None
    assert not [e for e in audit(quiet) if str(e["action"]).startswith("door_sync")]


def test_sync_now_fetches_a_folder_doors_records_in_the_background(
        quiet: dict[str, Any]) -> None:
    with httpx.Client(base_url=quiet["url"], timeout=120) as c:
        assert login(c, PASSWORD).status_code == 303
        assert "0 attempts fetched" in row_of(c.get("/doors").text, "side")
        r = c.post("/doors/side/sync", data={"csrf": csrf(c)})
        assert r.status_code == 303 and r.headers["location"] == "/doors"
        text, _ = wait_done(c, "side", "sync")
        assert text.startswith("done: 1 new attempts fetched (1 read)"), text
        assert "1 attempts fetched" in row_of(c.get("/doors").text, "side")
        assert c.post("/doors/gone/sync", data={"csrf": csrf(c)}).status_code == 303
        text, _ = wait_done(c, "gone", "sync")
        assert text.startswith("failed: review folder") and "does not exist" in text, text
        assert "unreachable or failing" in row_of(c.get("/doors").text, "gone")
        assert c.post("/doors/garage/sync", data={"csrf": csrf(c)}).status_code == 400
    with ActivityStore(quiet["db"]) as store:
        assert store.door_counts()["side"][0] == 1
    assert [(e["action"], e["door"]) for e in audit(quiet)
            if str(e["action"]).startswith("door_sync")] == [
        ("door_sync", "side"), ("door_sync_done", "side"), ("door_sync", "gone"),
        ("door_sync_failed", "gone")]


def test_one_sync_per_door_at_a_time_and_the_schedule_skips_a_door_being_synced(
        tmp_path: Path) -> None:
    from twinlock.trainer.web.jobs import SyncSchedule

    with ActivityStore(tmp_path / "activity.db") as store:
        store.add_door("side", str(tmp_path / "card"))
    schedule = SyncSchedule(tmp_path / "activity.db", 3600)
    release = threading.Event()
    busy = schedule.jobs.start("side", lambda progress: (release.wait(60), "held")[1])
    with pytest.raises(UsageError, match="being synced already"):
        schedule.jobs.start("side", lambda progress: "second")
    schedule.run_once()
    assert schedule.state.results == {"side": "skipped: a sync of this door was running"}
    release.set()
    deadline = time.monotonic() + 60
    while busy.running:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    schedule.run_once()  # now it syncs, and the card is not there
    assert schedule.state.results["side"].startswith("sync failed: review folder")
    assert (job := schedule.jobs.get("side")) is not None and job.state == "failed"
