"""twinlock web against a real uvicorn server on 127.0.0.1 (started here on a free port, as the
CLI starts it), with httpx as the browser: the locks first (login, session, CSRF, rate limit,
TLS rule, upload bounds), then enrolment and labelling through the page on real LFW faces."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest

from twinlock.daemon.faces import quality as q
from twinlock.daemon.faces.images import load_image
from twinlock.daemon.recognition.model import FaceEmbedder
from twinlock.daemon.review.format import ReviewRecord, new_record_id
from twinlock.daemon.review.store import ReviewWriter, encode_crop
from twinlock.trainer.cli import main
from twinlock.trainer.household.anchors import enrolment_analyser, enrolment_face
from twinlock.trainer.household.enroll import describe
from twinlock.trainer.household.enroll_store import EnrolmentStore
from twinlock.trainer.web.app import COOKIE

pytestmark = pytest.mark.data

PASSWORD = "correct horse battery"
T0 = datetime(2026, 12, 6, 7, 0, tzinfo=UTC)
START_TIMEOUT_S = 60.0
CLI = "import sys; from twinlock.trainer.cli import main; sys.exit(main(sys.argv[1:]))"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, "no CSRF token on the page"
    return found.group(1)


def set_password(enrol_db: Path) -> None:
    done = subprocess.run([sys.executable, "-c", CLI, "web", "set-password", "--db",
                           str(enrol_db)], input=PASSWORD + "\n", text=True,
                          capture_output=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr


class Server:
    """``twinlock web`` in a subprocess, stopped on exit."""

    def __init__(self, home: dict[str, Path], model: Path, *extra: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CLI, "web", "--port", str(self.port), "--db",
             str(home["enrol_db"]), "--activity-db", str(home["db"]), "--model", str(model),
             *extra],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                if httpx.get(self.url + "/login", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"twinlock web did not start: {self.proc.stdout.read()}")  # type: ignore[union-attr]
            time.sleep(0.2)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory, lfw_dir: Path, door_model: Path
         ) -> dict[str, object]:
    """A household folder with a password and one door's refused attempts (two LFW people)."""
    tmp = tmp_path_factory.mktemp("web")
    enrol_db, db = tmp / "home" / "enrolment.db", tmp / "home" / "activity.db"
    embedder = FaceEmbedder(door_model)
    meta = embedder.meta
    analyser = enrolment_analyser(meta.face_pipeline(meta.detector.build()), embedder,
                                  q.DEFAULT_THRESHOLDS)
    clock = [T0]
    writer = ReviewWriter(tmp / "front", "front", 30, 10**8, clock=lambda: clock[0].timestamp())
    ids: dict[str, list[str]] = {}
    for person in ("Andre_Agassi", "Al_Gore"):
        for path in sorted((lfw_dir / person).glob("*.jpg"))[:2]:
            found = enrolment_face(load_image(path), analyser)
            assert not isinstance(found, str), path
            clock[0] += timedelta(minutes=5)
            record = ReviewRecord(id=new_record_id("front", clock[0]), door="front",
                                  time=clock[0], decision="deny", bundle_id="b1",
                                  model_id=meta.model_id, resident=None, score=0.1,
                                  embedding=found.embedding)
            assert writer.append(record, encode_crop(found.crop))
            ids.setdefault(person, []).append(record.id)
    assert main(["doors", "add", "front", "--to", str(tmp / "front"), "--activity-db",
                 str(db)]) == 0
    assert main(["doors", "sync", "--activity-db", str(db)]) == 0
    set_password(enrol_db)
    return {"enrol_db": enrol_db, "db": db, "ids": ids, "tmp": tmp, "analyser": analyser,
            "model_id": meta.model_id}


@pytest.fixture(scope="module")
def server(home: dict[str, object], door_model: Path) -> Iterator[Server]:
    srv = Server(home, door_model)  # type: ignore[arg-type]
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server: Server) -> Iterator[httpx.Client]:
    """Logged in once for the module (the login limit counts every try)."""
    with httpx.Client(base_url=server.url, timeout=120) as c:
        r = login(c, PASSWORD)
        assert r.status_code == 303, r.text
        cookie = r.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie, cookie
        yield c


def login(c: httpx.Client, password: str, **headers: str) -> httpx.Response:
    form = c.get("/login").text
    found = re.search(r'name="login_token" value="([^"]+)"', form)
    assert found
    return c.post("/login", data={"password": password, "login_token": found.group(1)},
                  headers=headers)


def token(client: httpx.Client, path: str = "/residents") -> str:
    return csrf_of(client.get(path).text)


def audit(home: dict[str, object]) -> list[dict[str, object]]:
    path = Path(str(home["enrol_db"])).parent / "web-audit.log"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


PAGES = ["/", "/residents", "/visitors", "/doors", "/api/activity", "/crop/anything",
         "/thumb/1", "/?door=front"]
CHANGES = ["/label", "/residents/upload", "/residents/remove", "/visitors/name", "/logout"]


def test_every_page_and_api_call_without_a_session_is_refused(server: Server,
                                                                home: dict[str, object]) -> None:
    crop_id = home["ids"]["Al_Gore"][0]  # type: ignore[index]
    for cookies in ({}, {"twinlock_session": "forged-" + "x" * 40}):
        with httpx.Client(base_url=server.url, cookies=cookies) as anon:
            for path in [*PAGES, f"/crop/{crop_id}"]:
                r = anon.get(path)
                assert r.status_code in (303, 401), (path, r.status_code)
                if r.status_code == 303:
                    assert r.headers["location"] == "/login"
                assert b"\xff\xd8" not in r.content and "front" not in r.text, path
            for path in CHANGES:
                r = anon.post(path, data={"csrf": "x", "name": "Mallory", "what": "resident"})
                assert r.status_code == 401, (path, r.status_code)


def test_every_route_the_app_has_is_guarded_without_a_session(server: Server,
                                                              tmp_path: Path) -> None:
    """The list above is written by hand; this walks the app's own routes, so a page or change
    added later is refused without a session too (only the login form and its style are open)."""
    from starlette.routing import Route

    from twinlock.trainer.web.app import WebConfig, build_app

    app = build_app(WebConfig(enrolment_db=tmp_path / "e.db", activity_db=tmp_path / "a.db",
                              model_dir=None, folder=tmp_path))
    open_paths = {"/login", "/style.css"}
    seen = 0
    with httpx.Client(base_url=server.url) as anon:
        for route in app.routes:
            assert isinstance(route, Route)
            if route.path in open_paths:
                continue
            path = re.sub(r"\{[^}:]+:int\}", "1", re.sub(r"\{[^}:]+:str\}", "front", route.path))
            for method in sorted(route.methods or ()):
                if method == "HEAD":
                    continue
                r = anon.request(method, path, data={"csrf": "x", "name": "Mallory"})
                assert r.status_code in (303, 401), (method, path, r.status_code)
                if r.status_code == 303:
                    assert method == "GET" and r.headers["location"] == "/login", (method, path)
                seen += 1
    assert seen >= 15, seen  # every page, API and change, not an empty walk


def test_a_change_without_or_with_a_wrong_csrf_token_is_refused(
        client: httpx.Client, home: dict[str, object], lfw_dir: Path) -> None:
    photo = min((lfw_dir / "Aaron_Peirsol").glob("*.jpg"))
    for form in ({}, {"csrf": "wrong"}, {"csrf": ""}):
        r = client.post("/residents/upload", data={"name": "Aaron", **form},
                        files=[("photos", (photo.name, photo.read_bytes(), "image/jpeg"))])
        assert r.status_code == 403, r.text
        assert "CSRF" in r.text
        attempt = home["ids"]["Al_Gore"][0]  # type: ignore[index]
        r = client.post("/label", data={"attempt": attempt, "kind": "as", "name": "Al",
                                        **form})
        assert r.status_code == 403
    with EnrolmentStore(home["enrol_db"]) as store:  # type: ignore[arg-type]
        assert not store.has_user("Aaron") and not store.has_user("Al")
    assert not [e for e in audit(home) if e["action"] in ("enrol_upload", "label_as")
                and e.get("name") in ("Aaron", "Al")]


def test_oversized_and_non_image_uploads_get_a_clear_message(
        client: httpx.Client, home: dict[str, object]) -> None:
    big = b"\xff\xd8\xff\xe0" + b"\0" * (20 * 1024 * 1024)
    bomb = cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))[1].tobytes()
    bomb = bomb[:16] + (30000).to_bytes(4, "big") + (30000).to_bytes(4, "big") + bomb[24:]
    r = client.post("/residents/upload", data={"name": "Eve", "csrf": token(client)},
                    files=[("photos", ("big.jpg", big, "image/jpeg")),
                           ("photos", ("notes.txt", b"just some text", "text/plain")),
                           ("photos", ("bomb.png", bomb, "image/png"))])
    assert r.status_code == 400
    assert "Refused big.jpg: too large: over 20 MB" in r.text
    assert re.search(r"Refused notes.txt: not used: .*not a readable image", r.text)
    assert re.search(r"Refused bomb.png: not used: .*30000x30000 pixels, over the", r.text)
    with EnrolmentStore(home["enrol_db"]) as store:  # type: ignore[arg-type]
        assert not store.has_user("Eve")


def test_a_real_photo_enrols_and_a_no_face_photo_shows_its_reason(
        client: httpx.Client, home: dict[str, object], lfw_dir: Path) -> None:
    photo = min((lfw_dir / "Angelina_Jolie").glob("*.jpg"))
    blank = cv2.imencode(".png", np.full((300, 300, 3), 128, np.uint8))[1].tobytes()
    r = client.post("/residents/upload", data={"name": "Angelina", "csrf": token(client)},
                    files=[("photos", (photo.name, photo.read_bytes(), "image/jpeg")),
                           ("photos", ("wall.png", blank, "image/png"))])
    assert r.status_code == 200, r.text
    assert f"Angelina: kept {photo.name}" in r.text
    assert f"Refused wall.png: {describe(q.NO_FACE)}" in r.text.replace("&#39;", "'")
    with EnrolmentStore(home["enrol_db"]) as store:  # type: ignore[arg-type]
        samples = store.samples("Angelina")
    assert len(samples) == 1
    thumb = client.get(f"/thumb/{samples[0].id}")
    assert thumb.status_code == 200 and thumb.content[:2] == b"\xff\xd8"
    staging = Path(str(home["enrol_db"])).parent / "web-uploads"
    assert staging.stat().st_mode & 0o777 == 0o700 and not list(staging.iterdir())
    assert [e for e in audit(home) if e["action"] == "enrol_upload"
            and e["name"] == "Angelina" and e["kept"] == 1]


def test_label_through_the_page_adds_to_the_enrolment(
        client: httpx.Client, home: dict[str, object]) -> None:
    attempt = home["ids"]["Andre_Agassi"][0]  # type: ignore[index]
    page = client.get("/?decision=deny")
    assert f'/crop/{attempt}' in page.text
    crop = client.get(f"/crop/{attempt}")
    assert crop.status_code == 200 and crop.content[:2] == b"\xff\xd8"
    api = client.get("/api/activity", params={"door": "front"}).json()
    assert attempt in {a["id"] for a in api}
    r = client.post("/label", data={"attempt": attempt, "kind": "as", "name": "Andre",
                                    "csrf": csrf_of(page.text)})
    assert r.status_code == 200, r.text
    assert "Added to Andre" in r.text.replace("&#39;", "'")
    with EnrolmentStore(home["enrol_db"]) as store:  # type: ignore[arg-type]
        assert len(store.samples("Andre")) == 1
    entries = [e for e in audit(home) if e["action"] == "label_as"]
    assert entries and entries[-1]["attempt"] == attempt and entries[-1]["who"] == "household"
    assert "labelled as Andre" in client.get("/").text


def test_the_login_rate_limit_holds(home: dict[str, object], door_model: Path) -> None:
    srv = Server(home, door_model)  # type: ignore[arg-type]
    try:
        with httpx.Client(base_url=srv.url) as c:
            # a client naming other addresses is still one client
            codes = [login(c, "wrong guess", **{"X-Forwarded-For": f"10.0.0.{i}"}).status_code
                     for i in range(5)]
            assert codes == [401] * 5
            r = login(c, PASSWORD, **{"X-Forwarded-For": "10.0.0.99"})
            assert r.status_code == 429 and "Too many tries" in r.text
            assert COOKIE not in r.headers.get("set-cookie", "")
    finally:
        srv.stop()


def test_the_server_refuses_a_network_listen_without_tls(home: dict[str, object]) -> None:
    try:  # a server that started anyway would still be serving at the timeout
        done = subprocess.run([sys.executable, "-c", CLI, "web", "--listen", "0.0.0.0",
                               "--port", str(free_port()), "--db", str(home["enrol_db"])],
                              capture_output=True, text=True, timeout=60, check=False)
    except subprocess.TimeoutExpired:
        pytest.fail("twinlock web listened on 0.0.0.0 without TLS")
    assert done.returncode != 0
    assert "refusing to listen on 0.0.0.0 without TLS" in done.stderr
    assert "--self-signed" in done.stderr and "--cert FILE --key FILE" in done.stderr


def test_set_password_stores_an_scrypt_hash_0600(home: dict[str, object]) -> None:
    path = Path(str(home["enrol_db"])).parent / "web-password.json"
    record = json.loads(path.read_text())
    assert path.stat().st_mode & 0o777 == 0o600
    assert record["kdf"] == "scrypt" and PASSWORD not in path.read_text()
    assert len(bytes.fromhex(record["salt"])) == 16


def test_a_self_signed_certificate_is_made_once_with_a_private_key(tmp_path: Path) -> None:
    from twinlock.trainer.web.server import choose_tls

    first = choose_tls("0.0.0.0", tmp_path, None, None, make_self_signed=True)
    assert first is not None
    assert first.key.stat().st_mode & 0o777 == 0o600
    assert re.fullmatch(r"([0-9A-F]{2}:){31}[0-9A-F]{2}", first.fingerprint)
    again = choose_tls("0.0.0.0", tmp_path, None, None, make_self_signed=True)
    assert again is not None and again.fingerprint == first.fingerprint


def test_the_pages_show_the_doors_attempts_and_filters(client: httpx.Client,
                                                       home: dict[str, object]) -> None:
    ids = home["ids"]  # type: ignore[index]
    doors = client.get("/doors")
    assert doors.status_code == 200 and "<td>front</td>" in doors.text
    assert "never" not in doors.text  # synced
    every = client.get("/", params={"door": "front", "day": "2026-12-06"}).text
    assert all(f"/crop/{i}" in every for i in ids["Al_Gore"])  # type: ignore[index]
    assert "/crop/" not in client.get("/", params={"day": "2026-12-05"}).text
    assert "/crop/" not in client.get("/", params={"decision": "lockout"}).text
    assert client.get("/", params={"decision": "bogus"}).status_code == 400
    api = client.get("/api/activity", params={"day": "2026-12-05"})
    assert api.status_code == 200 and api.json() == []
    for path in ("/residents", "/visitors"):
        assert client.get(path).status_code == 200
    for path in ("/enrolment.db", "/style.css/../enrolment.db", "/web-password.json",
                 "/static/../../signing.key"):
        r = client.get(path)
        assert r.status_code == 404 and "scrypt" not in r.text, path


def test_a_visitor_group_is_named_on_the_visitors_page(client: httpx.Client,
                                                       home: dict[str, object]) -> None:
    gore = home["ids"]["Al_Gore"]  # type: ignore[index]
    page = client.get("/visitors")
    # the group holding Gore's first knock (two LFW photos of him may or may not group)
    card = re.search(r'<div class="card">(?:(?!<div class="card">).)*?name="group" value="'
                     + re.escape(gore[0]) + '"', page.text, re.DOTALL)
    assert card, page.text
    assert re.search(r"\d+ visits? · first 2026-12-06 07:\d\d · last 2026-12-06 07:\d\d · "
                     r"front", card.group(0))
    assert f"/crop/{gore[0]}" in card.group(0)
    r = client.post("/visitors/name", data={"group": gore[0], "name": "Albert",
                                            "csrf": csrf_of(page.text)})
    assert r.status_code == 200, r.text
    with EnrolmentStore(home["enrol_db"]) as store:  # type: ignore[arg-type]
        assert store.has_user("Albert") and len(store.samples("Albert")) >= 1
    assert f'value="{gore[0]}"' not in client.get("/visitors").text  # labelled: grouped no more
    assert [e for e in audit(home) if e["action"] == "label_group" and e["name"] == "Albert"]


def test_not_this_person_on_an_unlock_keeps_the_pair_and_changes_no_anchor(
        client: httpx.Client, home: dict[str, object], lfw_dir: Path) -> None:
    photos = sorted((lfw_dir / "Andy_Roddick").glob("*.jpg"))
    r = client.post("/residents/upload", data={"name": "Andy", "csrf": token(client)},
                    files=[("photos", (photos[0].name, photos[0].read_bytes(), "image/jpeg"))])
    assert r.status_code == 200, r.text
    found = enrolment_face(load_image(photos[1]), home["analyser"])  # type: ignore[arg-type]
    assert not isinstance(found, str)
    when = T0 + timedelta(days=1)
    writer = ReviewWriter(Path(str(home["tmp"])) / "front", "front", 30, 10**8,
                          clock=lambda: when.timestamp())
    record = ReviewRecord(id=new_record_id("front", when), door="front", time=when,
                          decision="unlock", bundle_id="b1", model_id=str(home["model_id"]),
                          resident="Andy", score=0.99, embedding=found.embedding)
    assert writer.append(record, encode_crop(found.crop))
    assert main(["doors", "sync", "--activity-db", str(home["db"])]) == 0
    page = client.get("/", params={"decision": "unlock"}).text
    assert "Not Andy" in page
    with EnrolmentStore(home["enrol_db"]) as store:  # type: ignore[arg-type]
        before = [s.id for s in store.samples("Andy")]
    r = client.post("/label", data={"attempt": record.id, "kind": "not", "name": "Andy",
                                    "csrf": csrf_of(page)})
    assert r.status_code == 200, r.text
    assert "Kept as a known impostor pair" in r.text and "Remedies" in r.text
    with EnrolmentStore(home["enrol_db"]) as store:  # type: ignore[arg-type]
        assert [s.id for s in store.samples("Andy")] == before
    assert [e for e in audit(home) if e["action"] == "label_not" and e["attempt"] == record.id]


def test_a_photo_and_a_resident_are_removed_from_the_page(
        client: httpx.Client, home: dict[str, object], lfw_dir: Path) -> None:
    photos = sorted((lfw_dir / "Angelina_Jolie").glob("*.jpg"))[1:3]
    r = client.post("/residents/upload", data={"name": "Jolie", "csrf": token(client)},
                    files=[("photos", (p.name, p.read_bytes(), "image/jpeg")) for p in photos])
    assert r.status_code == 200, r.text
    with EnrolmentStore(home["enrol_db"]) as store:  # type: ignore[arg-type]
        samples = store.samples("Jolie")
    assert len(samples) == 2
    r = client.post("/residents/remove", data={"what": "sample", "sample": str(samples[0].id),
                                               "csrf": token(client)})
    assert r.status_code == 303
    with EnrolmentStore(home["enrol_db"]) as store:  # type: ignore[arg-type]
        assert [s.id for s in store.samples("Jolie")] == [samples[1].id]
    r = client.post("/residents/remove", data={"what": "resident", "name": "Jolie",
                                               "csrf": token(client)})
    assert r.status_code == 303
    with EnrolmentStore(home["enrol_db"]) as store:  # type: ignore[arg-type]
        assert not store.has_user("Jolie")
    actions = [(e["action"], e.get("name", e.get("sample"))) for e in audit(home)]
    assert ("remove_sample", samples[0].id) in actions and ("remove_resident", "Jolie") in actions


def test_a_session_ends_after_its_idle_timeout() -> None:
    from twinlock.trainer.web.auth import Sessions

    now = [0.0]
    sessions = Sessions(idle_timeout_s=60, clock=lambda: now[0])
    sid = sessions.create()
    now[0] = 59.0
    assert sessions.get(sid) is not None  # a request keeps it alive
    now[0] = 118.0
    assert sessions.get(sid) is not None
    now[0] = 178.5
    assert sessions.get(sid) is None and sessions.get(sid) is None
    assert sessions.get(None) is None and sessions.get("made-up") is None


def test_the_page_and_the_household_functions_it_calls_import_no_tensorflow() -> None:
    code = ("import sys; import twinlock.trainer.web.app, twinlock.trainer.web.command, "
            "twinlock.trainer.household.labels, twinlock.trainer.household.visitors, "
            "twinlock.trainer.cli; "
            "sys.exit(1 if 'tensorflow' in sys.modules or 'keras' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code], timeout=120, check=False).returncode == 0


def test_a_login_without_the_forms_token_is_refused(server: Server) -> None:
    with httpx.Client(base_url=server.url) as c:
        r = c.post("/login", data={"password": PASSWORD})
        assert r.status_code == 403 and COOKIE not in r.headers.get("set-cookie", "")
        c.get("/login")  # the cookie alone is not enough either
        r = c.post("/login", data={"password": PASSWORD, "login_token": "guess"})
        assert r.status_code == 403 and COOKIE not in r.headers.get("set-cookie", "")


# --- known visitors (not residents), strict residents, the API token (issue 23) -------------

def deny_record(home: dict[str, object], face: object, when: datetime) -> str:
    """A refused attempt with ``face`` (an enrolment_face result) at the front door, synced."""
    writer = ReviewWriter(Path(str(home["tmp"])) / "front", "front", 30, 10**8,
                          clock=lambda: when.timestamp())
    record = ReviewRecord(id=new_record_id("front", when), door="front", time=when,
                          decision="deny", bundle_id="b1", model_id=str(home["model_id"]),
                          resident=None, score=0.05, embedding=face.embedding)  # type: ignore[attr-defined]
    assert writer.append(record, encode_crop(face.crop))  # type: ignore[attr-defined]
    assert main(["doors", "sync", "--activity-db", str(home["db"])]) == 0
    return record.id


def linked_faces(home: dict[str, object], lfw_dir: Path, door_model: Path, person: str
                 ) -> tuple[object, object]:
    """Two real photos of ``person`` that the model's head links at the grouping threshold
    (the visitors' own rule): the later one must group with the first."""
    from twinlock.daemon.recognition.model import read_metadata
    from twinlock.trainer.household.visitors import cross_logits, logit, threshold_of

    meta = read_metadata(door_model)
    faces = [f for f in (enrolment_face(load_image(p), home["analyser"])  # type: ignore[arg-type]
                         for p in sorted((lfw_dir / person).glob("*.jpg"))[:8])
             if not isinstance(f, str)]
    emb = np.stack([f.embedding for f in faces])
    logits = cross_logits(emb, emb, meta.head_weights, meta.head_bias)
    np.fill_diagonal(logits, -np.inf)
    i, j = np.unravel_index(int(np.argmax(logits)), logits.shape)
    assert logits[i, j] >= logit(threshold_of(meta)[1]), f"no two photos of {person} link"
    return faces[i], faces[j]


def visitor_cards(html: str) -> tuple[str, str]:
    """(the unknown visitors' part of the Visitors page, its known visitors' part)."""
    unknown, _, known = html.partition('<details class="known"')
    return unknown, known


def test_a_group_marked_not_a_resident_is_a_known_visitor_and_names_his_later_attempts(
        client: httpx.Client, home: dict[str, object], lfw_dir: Path, door_model: Path) -> None:
    first, later = linked_faces(home, lfw_dir, door_model, "George_W_Bush")
    postman = deny_record(home, first, T0 + timedelta(days=2))
    with EnrolmentStore(home["enrol_db"]) as store:  # type: ignore[arg-type]
        residents_before = [(u.name, u.samples) for u in store.users()]
    page = client.get("/visitors").text
    assert f'name="group" value="{postman}"' in visitor_cards(page)[0]
    # no CSRF token: refused, nothing marked
    r = client.post("/visitors/mark", data={"group": postman, "action": "mark",
                                            "name": "postman"})
    assert r.status_code == 403
    assert f'value="{postman}"' in visitor_cards(client.get("/visitors").text)[0]
    r = client.post("/visitors/mark", data={"group": postman, "action": "mark",
                                            "name": "postman", "csrf": csrf_of(page)})
    assert r.status_code == 303, r.text
    unknown, known = visitor_cards(client.get("/visitors").text)
    assert postman not in unknown  # he left the unknown visitors' list
    assert "<h2>postman</h2>" in known and f"/crop/{postman}" in known
    # his next knock groups with the marked one: shown as the postman, not as a new unknown
    again = deny_record(home, later, T0 + timedelta(days=3))
    unknown, known = visitor_cards(client.get("/visitors").text)
    assert again not in unknown and f"/crop/{again}" in known
    assert re.search(r"<h2>postman</h2>.*?2 visits", known, re.DOTALL)
    day = client.get("/", params={"day": "2026-12-09"}).text
    assert f"/crop/{again}" in day and "known visitor: postman" in day
    api = {a["id"]: a for a in client.get("/api/activity", params={"limit": 1000}).json()}
    assert api[again]["known_visitor"] == "postman" and api[postman]["known_visitor"] == "postman"
    assert api[home["ids"]["Andre_Agassi"][1]]["known_visitor"] is None  # type: ignore[index]
    # nobody enrolled, no resident changed: no door changes
    with EnrolmentStore(home["enrol_db"]) as store:  # type: ignore[arg-type]
        assert [(u.name, u.samples) for u in store.users()] == residents_before
    assert [e for e in audit(home) if e["action"] == "visitor_mark" and e["name"] == "postman"]
    # reversible: unknown again, both knocks back in the unknown list
    r = client.post("/visitors/mark", data={"group": again, "action": "unmark",
                                            "csrf": token(client)})
    assert r.status_code == 303, r.text
    unknown, known = visitor_cards(client.get("/visitors").text)
    assert f"/crop/{postman}" in unknown and f"/crop/{again}" in unknown and "postman" not in known
    api = {a["id"]: a for a in client.get("/api/activity", params={"limit": 1000}).json()}
    assert api[again]["known_visitor"] is None
    assert [e for e in audit(home) if e["action"] == "visitor_unmark" and e["name"] == "postman"]


def test_a_residents_strict_setting_is_shown_set_and_cleared_with_csrf(
        client: httpx.Client, home: dict[str, object], lfw_dir: Path) -> None:
    photo = min((lfw_dir / "Ariel_Sharon").glob("*.jpg"))
    r = client.post("/residents/upload", data={"name": "Ariel", "csrf": token(client)},
                    files=[("photos", (photo.name, photo.read_bytes(), "image/jpeg"))])
    assert r.status_code == 200, r.text

    def strict_far() -> float | None:
        with EnrolmentStore(home["enrol_db"]) as store:  # type: ignore[arg-type]
            return {u.name: u.strict_far for u in store.users()}["Ariel"]

    assert "The door's threshold (not strict)" in client.get("/residents").text
    r = client.post("/residents/strict", data={"name": "Ariel", "far": "1e-05"})
    assert r.status_code == 403 and strict_far() is None
    r = client.post("/residents/strict", data={"name": "Ariel", "far": "1e-05",
                                               "csrf": token(client)})
    assert r.status_code == 303 and strict_far() == 1e-05
    assert "Strict: own false-accept target 1e-05 per knock" in client.get("/residents").text
    r = client.post("/residents/strict", data={"name": "Ariel", "far": "0.5",
                                               "csrf": token(client)})
    assert r.status_code == 400 and "must be within" in r.text and strict_far() == 1e-05
    r = client.post("/residents/strict", data={"name": "Ariel", "far": "1e-05", "clear": "1",
                                               "csrf": token(client)})
    assert r.status_code == 303 and strict_far() is None
    changes = [(e["name"], e["strict_far"]) for e in audit(home) if e["action"] == "set_strict"]
    assert changes[-2:] == [("Ariel", 1e-05), ("Ariel", None)]


def make_token(home: dict[str, object], *extra: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-c", CLI, "web", "token", *extra, "--db",
                           str(home["enrol_db"])], capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 0, done.stderr
    return done


def test_the_api_token_reads_activity_only_and_is_stored_hashed(
        server: Server, home: dict[str, object]) -> None:
    def bearer(value: str) -> httpx.Client:
        return httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {value}"})

    with bearer("twl_" + "x" * 43) as c:
        assert c.get("/api/activity").status_code == 401  # no token made yet
    first = make_token(home).stdout.strip()
    path = Path(str(home["enrol_db"])).parent / "web-api-token.json"
    assert path.stat().st_mode & 0o777 == 0o600 and first not in path.read_text()
    with bearer(first) as c:
        r = c.get("/api/activity", params={"door": "front"})
        assert r.status_code == 200 and {a["door"] for a in r.json()} == {"front"}
        for page in [p for p in PAGES if p != "/api/activity"]:  # it opens nothing else ...
            r = c.get(page)
            assert r.status_code in (303, 401) and "/crop/" not in r.text, page
        for change in CHANGES:  # ... and changes nothing
            assert c.post(change, data={"csrf": "x", "name": "Mallory"}).status_code == 401
    with bearer(first[:-1] + ("A" if first[-1] != "A" else "B")) as c:
        assert c.get("/api/activity").status_code == 401
    second = make_token(home).stdout.strip()
    with bearer(first) as c:
        assert c.get("/api/activity").status_code == 401  # replaced
    with bearer(second) as c:
        assert c.get("/api/activity").status_code == 200
        make_token(home, "--revoke")
        assert c.get("/api/activity").status_code == 401


def test_the_api_pages_through_every_attempt_newest_first(client: httpx.Client) -> None:
    every = client.get("/api/activity", params={"limit": 1000}).json()
    assert len(every) >= 5
    seen: list[str] = []
    older: str | None = None
    for _ in range(len(every)):  # bounded: a page that ignored ``older`` would repeat forever
        params = {"limit": "2"} | ({"older": older} if older else {})
        page = client.get("/api/activity", params=params).json()
        if not page:
            break
        assert len(page) <= 2
        seen += [a["id"] for a in page]
        older = page[-1]["id"]
    assert seen == [a["id"] for a in every]
