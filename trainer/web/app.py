"""The household page's routes: Activity, Residents, Visitors, Doors and ``/api/activity``.

Thin on purpose: every change calls the same household function as the CLI (``label_as``,
``label_not``, ``enroll_from_images``, ``EnrolmentStore.remove_*``, ``unknown_visitors``). No
route takes a path: crops and thumbnails are read from the stores by id; the page's CSS is read
once from the package; nothing else is served (the signing key never is).
"""

from __future__ import annotations

import functools
import hmac
import logging
import os
import secrets
import tempfile
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from twinlock.daemon.errors import DataError, TwinLockError, UsageError
from twinlock.daemon.faces.images import MAX_IMAGE_PIXELS, decode_image
from twinlock.daemon.recognition.fusion import STRICT_FAR_MAX, STRICT_FAR_MIN
from twinlock.daemon.review.format import DECISIONS
from twinlock.daemon.storage.private_db import PRIVATE_FILE_MODE, make_private_dirs

from ..errors import EnrolmentError
from ..household.activity import ActivityStore
from ..household.enroll import describe, enroll_from_images
from ..household.enroll_store import EnrolmentStore
from .auth import AuditLog, LoginLimiter, Session, Sessions, api_token_ok, check_password, csrf_ok
from .jobs import SyncSchedule, UpdateJobs

logger = logging.getLogger(__name__)

COOKIE = "twinlock_session"
#: one photo's bytes (a phone's full-size JPEG is 3-12 MB) and the photos in one upload
MAX_PHOTO_BYTES = 20 * 1024 * 1024
MAX_PHOTOS = 10
MAX_FORM_BYTES = 64 * 1024  # any form without files
PAGE_SIZE = 50  # attempts on one Activity page (each shows a face); "Older" shows the next
API_MAX = 1000  # attempts in one /api/activity answer; ``older`` pages through the rest
WHO = "household"  # one household password: every change is the household's, from a client


@dataclass
class WebConfig:
    enrolment_db: Path
    activity_db: Path
    model_dir: Path | None
    folder: Path  # the household folder: password, audit log, upload staging, TLS
    idle_timeout_s: float = 1800.0
    secure_cookie: bool = False
    login_per_client: int = 5
    login_overall: int = 30
    login_window_s: float = 60.0
    signing_key: Path | None = None  # the Doors page's Update signs with it (never served)
    sync_every_s: float = 0.0  # sync every door this often while the page runs (0: never)


def when(value: Any) -> str:
    """A time as people read it on the page: ``2026-12-06 11:16 UTC`` from an ISO string or
    a datetime (the stores keep full ISO times; seconds and offsets only clutter a table)."""
    if not value:
        return ""
    try:
        moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    except ValueError:
        return str(value)
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def _client(request: Request) -> str:
    return request.client.host if request.client else "?"


class Page:
    """The app's state: configuration, sessions, limiter, audit log, templates."""

    def __init__(self, cfg: WebConfig) -> None:
        self.cfg = cfg
        self.sessions = Sessions(cfg.idle_timeout_s)
        self.limiter = LoginLimiter(cfg.login_per_client, cfg.login_overall, cfg.login_window_s)
        self.audit = AuditLog(cfg.folder)
        self.env = Environment(loader=PackageLoader("twinlock.trainer.web", "templates"),
                               autoescape=select_autoescape(default=True))
        self.env.filters["when"] = when
        self.css = resources.files("twinlock.trainer.web").joinpath("style.css").read_bytes()
        self.store_lock = threading.Lock()  # one household change at a time
        self.updates = UpdateJobs()  # the Doors page's Update, one per door at a time
        self.syncs = UpdateJobs("syncing", "being synced")  # Sync now and the schedule's
        self.schedule = (SyncSchedule(cfg.activity_db, cfg.sync_every_s, self.syncs)
                         if cfg.sync_every_s > 0 else None)

    def render(self, name: str, session: Session | None, status: int = 200, **ctx: Any
               ) -> Response:
        html = self.env.get_template(name).render(csrf=session.csrf if session else "", **ctx)
        return Response(html, status_code=status, media_type="text/html; charset=utf-8")

    def session_of(self, request: Request) -> Session | None:
        return self.sessions.get(request.cookies.get(COOKIE))

    def need_model(self) -> Path:
        if self.cfg.model_dir is None:
            raise UsageError("twinlock web was started without --model MODEL_DIR: enrolment, "
                             "labels and visitor groups need the model the doors decide with")
        return self.cfg.model_dir


Handler = Callable[[Request, Page, Session], Awaitable[Response]]


def _headers(response: Response) -> Response:
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["Content-Security-Policy"] = (
        "default-src 'none'; img-src 'self'; style-src 'self'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'")
    return response


async def _form(request: Request, max_bytes: int, max_files: int = 0) -> Any:
    """The request's form, refused before parsing when its declared size is over the bound (a
    body without a length is refused too, so the bound always holds)."""
    length = request.headers.get("content-length")
    if length is None or not length.isdigit():
        raise UsageError("the form came without a length")
    if int(length) > max_bytes:
        raise UsageError(f"too large: {int(length) // 1024} KiB sent, at most "
                         f"{max_bytes // 1024} KiB in one go")
    return await request.form(max_files=max_files, max_fields=50, max_part_size=64 * 1024)


def guarded(page: Page, handler: Handler, change: bool) -> Callable[[Request], Awaitable[Response]]:
    """Login for every route; a CSRF token for every change (POST)."""

    async def endpoint(request: Request) -> Response:
        session = page.session_of(request)
        api = request.url.path.startswith(("/api/", "/crop/", "/thumb/"))
        if session is None:
            if change or api:
                return _headers(JSONResponse({"error": "log in first"}, status_code=401))
            return _headers(RedirectResponse("/login", status_code=303))
        try:
            return _headers(await handler(request, page, session))
        except CsrfError as exc:
            return _headers(page.render("message.html", session, status=403, message=str(exc)))
        except (UsageError, DataError) as exc:
            return _headers(page.render("message.html", session, status=400, message=str(exc)))
        except TwinLockError as exc:
            logger.warning("web: %s", exc)
            return _headers(page.render("message.html", session, status=500, message=str(exc)))

    return endpoint


async def checked_form(request: Request, session: Session, max_bytes: int = MAX_FORM_BYTES,
                       max_files: int = 0) -> Any:
    form = await _form(request, max_bytes, max_files)
    if not csrf_ok(session, form.get("csrf")):
        raise CsrfError()
    return form


class CsrfError(UsageError):
    def __init__(self) -> None:
        super().__init__("this form is stale or was not sent by the page (CSRF token missing or "
                         "wrong): reload the page and try again")


# --- login ---------------------------------------------------------------------------------

LOGIN_COOKIE = "twinlock_login"


def _login_form(page: Page, status: int = 200, error: str = "") -> Response:
    """The login form with a fresh login token, also set as a SameSite=Strict cookie: a login
    POST must carry both (no other site can log this browser in to its own session)."""
    token = secrets.token_urlsafe(32)
    response = page.render("login.html", None, status=status, error=error, login_token=token)
    response.set_cookie(LOGIN_COOKIE, token, httponly=True, samesite="strict",
                        secure=page.cfg.secure_cookie, path="/login", max_age=3600)
    return _headers(response)


async def login_page(request: Request) -> Response:
    return _login_form(request.app.state.page)


async def login(request: Request) -> Response:
    page: Page = request.app.state.page
    client = _client(request)
    if not page.limiter.allow(client):
        logger.warning("web: login rate limit hit by %s", client)
        return _login_form(page, 429, "Too many tries: wait a minute.")
    try:
        form = await _form(request, MAX_FORM_BYTES)
    except UsageError as exc:
        return _login_form(page, 400, str(exc))
    cookie = request.cookies.get(LOGIN_COOKIE, "")
    sent = form.get("login_token")
    if not cookie or not isinstance(sent, str) or not hmac.compare_digest(cookie.encode(),
                                                                          sent.encode()):
        return _login_form(page, 403, "This login form is stale: try again.")
    password = form.get("password")
    ok = isinstance(password, str) and await run_in_threadpool(
        check_password, page.cfg.folder, password)
    if not ok:
        page.audit.record(WHO, client, "login_failed")
        return _login_form(page, 401, "Wrong password.")
    page.sessions.drop(request.cookies.get(COOKIE))
    sid = page.sessions.create()
    page.audit.record(WHO, client, "login")
    response = RedirectResponse("/", status_code=303)
    response.delete_cookie(LOGIN_COOKIE, path="/login")
    response.set_cookie(COOKIE, sid, httponly=True, samesite="strict",
                        secure=page.cfg.secure_cookie, path="/")
    return _headers(response)


async def logout(request: Request, page: Page, session: Session) -> Response:
    await checked_form(request, session)
    page.sessions.drop(request.cookies.get(COOKIE))
    page.audit.record(WHO, _client(request), "logout")
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(COOKIE, path="/")
    return response


async def css(request: Request) -> Response:
    page: Page = request.app.state.page
    return _headers(Response(page.css, media_type="text/css"))


# --- activity ------------------------------------------------------------------------------

def _filters(request: Request) -> tuple[str | None, str | None, datetime | None, datetime | None]:
    door = request.query_params.get("door") or None
    decision = request.query_params.get("decision") or None
    if decision is not None and decision not in DECISIONS:
        raise UsageError(f"decision: one of {', '.join(DECISIONS)}")
    day_text = request.query_params.get("day") or None
    day = end = None
    if day_text:
        try:
            day = datetime.strptime(day_text, "%Y-%m-%d").replace(tzinfo=UTC)
        except ValueError:
            raise UsageError("day: YYYY-MM-DD") from None
        end = day + timedelta(days=1)
    return door, decision, day, end


def _attempts(page: Page, request: Request, limit: int
              ) -> tuple[list[Any], list[str], dict[str, str]]:
    """One page of attempts (the filters and ``older``, an attempt id: the page after it),
    the doors, and the known visitors (not residents) among the attempts."""
    from ..household.visitors import known_visitor_names

    door, decision, day, end = _filters(request)
    older = request.query_params.get("older") or None
    model = page.cfg.model_dir
    with ActivityStore(page.cfg.activity_db) as store:
        rows = store.attempts(door=door, since=day, until=end, decision=decision, limit=limit,
                              older_than=older)
        doors = [d.name for d in store.doors()]
        known = known_visitor_names(store, _model_meta(model) if model else None, rows)
    return rows, doors, known


def _model_meta(model_dir: Path) -> Any:
    """The model's metadata, read again only when its model.json changes (reading it took 9 ms
    of every Activity page and /api/activity call: benchmarks/web_activity.py)."""
    from twinlock.daemon.recognition.model import METADATA_FILE

    try:
        stamp = (model_dir / METADATA_FILE).stat().st_mtime_ns
    except OSError:
        stamp = -1  # read_metadata says what is wrong
    return _read_meta(model_dir, stamp)


@functools.lru_cache(maxsize=4)
def _read_meta(model_dir: Path, stamp: int) -> Any:
    from twinlock.daemon.recognition.model import read_metadata

    return read_metadata(model_dir)


async def activity(request: Request, page: Page, session: Session) -> Response:
    rows, doors, known = await run_in_threadpool(_attempts, page, request, PAGE_SIZE + 1)
    older = None
    if len(rows) > PAGE_SIZE:
        rows = rows[:PAGE_SIZE]
        query = {k: v for k, v in request.query_params.items() if k in ("door", "decision", "day")}
        older = "/?" + urlencode(query | {"older": rows[-1].id})
    with EnrolmentStore(page.cfg.enrolment_db) as store:
        residents = [u.name for u in store.users()]
    return page.render("activity.html", session, rows=rows, doors=doors, residents=residents,
                       decisions=DECISIONS, q=request.query_params, active="activity",
                       known=known, older=older)


async def _activity_json(request: Request, page: Page) -> Response:
    """``/api/activity``: attempts newest first (the page's filters, ``limit``, ``older``), each
    with ``known_visitor`` (a known visitor who is not a resident, or null)."""
    try:
        limit = max(1, min(int(request.query_params.get("limit", "100")), API_MAX))
    except ValueError:
        raise UsageError("limit: a number") from None
    rows, _, known = await run_in_threadpool(_attempts, page, request, limit)
    return JSONResponse([a.as_json() | {"known_visitor": known.get(a.id)} for a in rows])


def api_read(page: Page, handler: Callable[[Request, Page], Awaitable[Response]]
             ) -> Callable[[Request], Awaitable[Response]]:
    """A read-only API route: the page's session, or the household's API token
    (``Authorization: Bearer``, made by ``twinlock web token``; for Home Assistant or a script,
    which cannot do the login form). The token opens this route only: every other route,
    and every change, still needs a session and its CSRF token."""
    async def with_session(request: Request, page: Page, session: Session) -> Response:
        return await handler(request, page)

    by_session = guarded(page, with_session, False)

    async def endpoint(request: Request) -> Response:
        auth = request.headers.get("authorization")
        if auth is None:
            return await by_session(request)
        scheme, _, presented = auth.partition(" ")
        if scheme.lower() != "bearer" or not await run_in_threadpool(
                api_token_ok, page.cfg.folder, presented.strip()):
            logger.warning("web: a refused API token from %s", _client(request))
            return _headers(JSONResponse({"error": "unknown or revoked API token"},
                                         status_code=401))
        try:
            return _headers(await handler(request, page))
        except (UsageError, DataError) as exc:
            return _headers(JSONResponse({"error": str(exc)}, status_code=400))

    return endpoint


async def crop(request: Request, page: Page, session: Session) -> Response:
    with ActivityStore(page.cfg.activity_db) as store:
        try:
            data = store.crop(request.path_params["attempt"])
        except TwinLockError:
            data = None
    if data is None:
        return Response("no such face", status_code=404)
    return Response(data, media_type="image/jpeg")


async def thumb(request: Request, page: Page, session: Session) -> Response:
    with EnrolmentStore(page.cfg.enrolment_db) as store:
        try:
            data = store.thumbnail(request.path_params["sample"])
        except TwinLockError:
            return Response("no such photo", status_code=404)
    return Response(data, media_type="image/jpeg")


def _label(page: Page, attempt_id: str, kind: str, name: str) -> dict[str, Any]:
    from ..household.labels import label_as, label_not

    model = page.need_model()
    with page.store_lock, ActivityStore(page.cfg.activity_db) as act, \
            EnrolmentStore(page.cfg.enrolment_db) as enrol:
        attempt = act.attempt(attempt_id)
        if kind == "as":
            report = label_as(act, enrol, [attempt], name, model)
            return {"kind": "as", "user": report.user, "accepted": report.accepted,
                    "refused": [describe(r) for _, r in report.rejected],
                    "anchors": report.anchors}
        impostor = label_not(act, enrol, attempt, name, model)
        return {"kind": "not", "report": impostor}


async def label(request: Request, page: Page, session: Session) -> Response:
    form = await checked_form(request, session)
    attempt_id = str(form.get("attempt", ""))
    kind = str(form.get("kind", ""))
    name = str(form.get("name", "")).strip()
    if kind not in ("as", "not") or not attempt_id or not name:
        raise UsageError("say which attempt and who it was (or was not)")
    result = await run_in_threadpool(_label, page, attempt_id, kind, name)
    page.audit.record(WHO, _client(request), f"label_{kind}", attempt=attempt_id, name=name,
                      outcome="enrolled" if result.get("accepted") else
                      ("refused" if kind == "as" else "impostor_kept"))
    return page.render("labelled.html", session, result=result, attempt=attempt_id,
                       active="activity")


# --- residents -----------------------------------------------------------------------------

async def residents(request: Request, page: Page, session: Session) -> Response:
    with EnrolmentStore(page.cfg.enrolment_db) as store:
        users = store.users()
        samples = {u.name: store.samples(u.name) for u in users}
    return page.render("residents.html", session, users=users, samples=samples, report=None,
                       active="residents", max_photos=MAX_PHOTOS,
                       max_mb=MAX_PHOTO_BYTES // (1024 * 1024))


def _enrol(page: Page, name: str, photos: list[tuple[str, bytes]]) -> dict[str, Any]:
    """Stage the photos (already checked as images) 0600 in a 0700 folder beside the enrolment
    store, named by position only, and enrol them through the gate."""
    model = page.need_model()
    staging = page.cfg.enrolment_db.parent / "web-uploads"
    make_private_dirs(staging, EnrolmentError)
    with tempfile.TemporaryDirectory(dir=staging) as tmp:
        os.chmod(tmp, 0o700)
        paths = []
        for i, (_, data) in enumerate(photos):
            path = Path(tmp) / f"photo-{i + 1}"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                         PRIVATE_FILE_MODE)
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            paths.append(path)
        with page.store_lock, EnrolmentStore(page.cfg.enrolment_db) as store:
            report = enroll_from_images(store, name, paths, model)
    shown = {f"photo-{i + 1}": label for i, (label, _) in enumerate(photos)}
    return {"user": report.user, "anchors": report.anchors,
            "accepted": [shown.get(s, s) for s in report.accepted],
            "refused": [(shown.get(s, s), describe(r)) for s, r in report.rejected]}


async def upload(request: Request, page: Page, session: Session) -> Response:
    form = await checked_form(request, session, MAX_PHOTOS * MAX_PHOTO_BYTES + MAX_FORM_BYTES,
                              MAX_PHOTOS)
    name = str(form.get("name", "")).strip()
    files = [f for f in form.getlist("photos") if isinstance(f, UploadFile)]
    if not name:
        raise UsageError("give the resident's name")
    if not files:
        raise UsageError("choose at least one photo")
    good: list[tuple[str, bytes]] = []
    bad: list[tuple[str, str]] = []
    for i, f in enumerate(files):
        shown = (f.filename or f"photo {i + 1}")[:80]
        data = await f.read(MAX_PHOTO_BYTES + 1)
        if len(data) > MAX_PHOTO_BYTES:
            bad.append((shown, f"too large: over {MAX_PHOTO_BYTES // (1024 * 1024)} MB"))
            continue
        try:
            decode_image(data, shown)  # the daemon's decoder: header size check, image only
        except DataError as exc:
            bad.append((shown, (f"not used: {exc} (a photo must be an image of at most "
                               f"{MAX_IMAGE_PIXELS // 1_000_000} megapixels)")))
            continue
        good.append((shown, data))
    report: dict[str, Any] = {"user": name, "accepted": [], "refused": [], "anchors": None}
    if good:
        report = await run_in_threadpool(_enrol, page, name, good)
    report["refused"] = bad + list(report["refused"])
    page.audit.record(WHO, _client(request), "enrol_upload", name=report["user"],
                      kept=len(report["accepted"]), refused=len(report["refused"]))
    with EnrolmentStore(page.cfg.enrolment_db) as store:
        users = store.users()
        samples = {u.name: store.samples(u.name) for u in users}
    status = 200 if report["accepted"] else 400
    return page.render("residents.html", session, status=status, users=users, samples=samples,
                       report=report, active="residents", max_photos=MAX_PHOTOS,
                       max_mb=MAX_PHOTO_BYTES // (1024 * 1024))


async def remove(request: Request, page: Page, session: Session) -> Response:
    form = await checked_form(request, session)
    what = str(form.get("what", ""))
    with page.store_lock, EnrolmentStore(page.cfg.enrolment_db) as store:
        if what == "sample":
            try:
                sample = int(str(form.get("sample", "")))
            except ValueError:
                raise UsageError("which photo?") from None
            store.remove_sample(sample)
            detail: dict[str, object] = {"sample": sample}
        elif what == "resident":
            name = str(form.get("name", ""))
            store.remove_user(name)
            detail = {"name": name}
        else:
            raise UsageError("remove a photo or a resident")
    page.audit.record(WHO, _client(request), f"remove_{what}", **detail)
    return RedirectResponse("/residents", status_code=303)


async def strict(request: Request, page: Page, session: Session) -> Response:
    """Residents: set or clear a resident's own false-accept target (``twinlock users
    strict``), through the same ``EnrolmentStore.set_strict``; the next bundle carries it."""
    from ..household.enroll_store import strict_far_from_text

    form = await checked_form(request, session)
    far = None if form.get("clear") else strict_far_from_text(str(form.get("far", "")))
    with page.store_lock, EnrolmentStore(page.cfg.enrolment_db) as store:
        name = store.set_strict(str(form.get("name", "")), far)
    page.audit.record(WHO, _client(request), "set_strict", name=name, strict_far=far)
    return RedirectResponse("/residents", status_code=303)


# --- visitors and doors --------------------------------------------------------------------

def _visitors(page: Page) -> list[Any]:
    from twinlock.daemon.recognition.model import read_metadata

    from ..household.visitors import unknown_visitors

    with ActivityStore(page.cfg.activity_db) as store:
        return unknown_visitors(store, read_metadata(page.need_model()))


def _visitor_groups(page: Page) -> list[Any]:
    """Every visitor group, unknown and known (``known``: marked as not a resident)."""
    from twinlock.daemon.recognition.model import read_metadata

    from ..household.visitors import visitor_groups

    with ActivityStore(page.cfg.activity_db) as store:
        return visitor_groups(store, read_metadata(page.need_model()))


async def visitors(request: Request, page: Page, session: Session) -> Response:
    groups = await run_in_threadpool(_visitor_groups, page)
    return page.render("visitors.html", session, active="visitors",
                       groups=[g for g in groups if g.known is None],
                       known=[g for g in groups if g.known is not None])


def _mark_group(page: Page, key: str, name: str | None) -> tuple[str | None, int]:
    """Mark an unknown group as a known visitor (``name``), or unmark a known one (None),
    through the household functions ``twinlock activity label --not-resident/--unmark`` call."""
    from ..household.visitors import find_group, mark_not_resident, unmark_visitor

    with page.store_lock:
        groups = [g for g in _visitor_groups(page) if (g.known is None) == (name is not None)]
        group = find_group(groups, key)
        with ActivityStore(page.cfg.activity_db) as store:
            if name is None:
                return group.known, unmark_visitor(store, group.attempts)
            return mark_not_resident(store, group.attempts, name), group.count


async def mark_group(request: Request, page: Page, session: Session) -> Response:
    """Visitors: "Not a resident" on an unknown group, or "Unknown again" on a known one."""
    from ..household.visitors import NOT_RESIDENT

    form = await checked_form(request, session)
    key, action = str(form.get("group", "")), str(form.get("action", ""))
    if not key or action not in ("mark", "unmark"):
        raise UsageError("say which group, and mark it or take its mark off")
    name = (str(form.get("name", "")).strip() or NOT_RESIDENT) if action == "mark" else None
    known, count = await run_in_threadpool(_mark_group, page, key, name)
    page.audit.record(WHO, _client(request), f"visitor_{action}", group=key, name=known,
                      attempts=count)
    return RedirectResponse("/visitors", status_code=303)


def _label_group(page: Page, key: str, name: str) -> dict[str, Any]:
    from ..household.labels import label_as
    from ..household.visitors import find_group

    group = find_group(_visitors(page), key)
    with page.store_lock, ActivityStore(page.cfg.activity_db) as act, \
            EnrolmentStore(page.cfg.enrolment_db) as enrol:
        report = label_as(act, enrol, group.attempts, name, page.need_model())
    return {"kind": "as", "user": report.user, "accepted": report.accepted,
            "refused": [describe(r) for _, r in report.rejected], "anchors": report.anchors}


async def name_group(request: Request, page: Page, session: Session) -> Response:
    form = await checked_form(request, session)
    key, name = str(form.get("group", "")), str(form.get("name", "")).strip()
    if not key or not name:
        raise UsageError("say which group and who it is")
    result = await run_in_threadpool(_label_group, page, key, name)
    page.audit.record(WHO, _client(request), "label_group", group=key, name=name,
                      kept=len(result["accepted"]))
    return page.render("labelled.html", session, result=result, attempt=key, active="visitors")


def _doors(page: Page) -> list[Any]:
    from ..household.rollout import door_statuses

    with ActivityStore(page.cfg.activity_db) as act, \
            EnrolmentStore(page.cfg.enrolment_db) as enrol:
        return door_statuses(act, enrol, page.cfg.model_dir)


async def doors(request: Request, page: Page, session: Session) -> Response:
    """Each door with its bundle, residents, last sync and unlock, health, the outdated mark
    and Update (its progress: the page reloads itself while an update runs)."""
    statuses = await run_in_threadpool(_doors, page)
    with ActivityStore(page.cfg.activity_db) as store:
        counts = store.door_counts()
    cannot = ("" if page.cfg.model_dir and page.cfg.signing_key else
              "Update needs twinlock web --model MODEL_DIR --signing-key KEY")
    response = page.render("doors.html", session, doors=statuses, counts=counts,
                           updates=page.updates.all(), cannot_update=cannot,
                           syncs=page.syncs.all(), batch=page.updates.batch,
                           schedule=page.schedule.state if page.schedule else None,
                           active="doors")
    if page.updates.any_running() or page.syncs.any_running():
        response.headers["Refresh"] = "2"  # the page's own progress; no script needed
    return response


async def door_update(request: Request, page: Page, session: Session) -> Response:
    """Update: bundle the household's residents now, sign, copy to the door, reload it
    (``rollout.update_door``, as ``twinlock doors update``), in the background."""
    from ..household.rollout import update_door

    await checked_form(request, session)
    name = request.path_params["door"]
    cfg = page.cfg
    if cfg.model_dir is None or cfg.signing_key is None:
        raise UsageError("Update needs twinlock web --model MODEL_DIR --signing-key KEY")
    with ActivityStore(cfg.activity_db) as store:
        store.door(name)  # an unknown door is refused here, not in the background
    model, key, client = cfg.model_dir, cfg.signing_key, _client(request)

    def work(progress: Callable[[str], None]) -> str:
        info, report = update_door(cfg.activity_db, cfg.enrolment_db, name, model, key,
                                   cfg.folder / "updates", progress, page.store_lock)
        # the page says what a household needs (which bundle, reloaded or what to do);
        # bytes, paths and rates stay in twinlock doors update's own output
        done = "reloaded" if report.reloaded else "not reloaded"
        line = (f"door {name} runs bundle {info['bundle_id']} ({len(info['users'])} "
                f"residents), {done}")
        return f"{line}; {report.note}" if report.note else line

    return _audited_job(page, client, "door_update", {"door": name},
                        lambda done: page.updates.start(name, work, done),
                        "an update of this door is running")


def _audited_job(page: Page, client: str, action: str, fields: dict[str, Any],
                 start: Callable[[Callable[[Any], None]], Any], busy: str) -> Response:
    """Start a Doors page job with ``start(done)``: the change log holds ``action`` when asked
    (before its end can be), ``action_done``/``_failed`` with its message when it ends, and
    ``action_refused`` when one is running already (UsageError: the page says so)."""
    def done(job: Any) -> None:
        page.audit.record(WHO, client, f"{action}_{job.state}", **fields,
                          message=job.message.splitlines()[0][:300] if job.message else "")

    page.audit.record(WHO, client, action, **fields)
    try:
        start(done)
    except UsageError:
        page.audit.record(WHO, client, f"{action}_refused", **fields, message=busy)
        raise
    return RedirectResponse("/doors", status_code=303)


async def door_sync(request: Request, page: Page, session: Session) -> Response:
    """Sync now: fetch the door's new records (``doors.sync_door``, as ``twinlock doors sync
    NAME`` and the schedule) in the background; one sync per door at a time."""
    from .jobs import sync_work

    await checked_form(request, session)
    name = request.path_params["door"]
    with ActivityStore(page.cfg.activity_db) as store:
        store.door(name)  # an unknown door is refused here, not in the background
    work = sync_work(page.cfg.activity_db, name)
    return _audited_job(page, _client(request), "door_sync", {"door": name},
                        lambda done: page.syncs.start(name, work, done),
                        "a sync of this door is running")


async def doors_update_all(request: Request, page: Page, session: Session) -> Response:
    """Update every door: one signed bundle, deployed to each door in turn
    (``rollout.update_doors``, as ``twinlock doors update``), in the background; each door's
    progress and outcome in its own status, a door that fails stops no other."""
    from ..household.rollout import DoorOutcome, update_doors

    await checked_form(request, session)
    cfg = page.cfg
    if cfg.model_dir is None or cfg.signing_key is None:
        raise UsageError("Update needs twinlock web --model MODEL_DIR --signing-key KEY")
    with ActivityStore(cfg.activity_db) as store:
        names = [entry.name for entry in store.doors()]
    if not names:
        raise UsageError("no doors to update (twinlock doors add NAME --to ...)")
    model, key, client = cfg.model_dir, cfg.signing_key, _client(request)

    def work(jobs: dict[str, Any]) -> str:
        def progress(door: str | None, step: str) -> None:
            for job in [jobs[door]] if door else jobs.values():
                job.steps.append(step)

        def finished(outcome: DoorOutcome) -> None:
            if outcome.report is not None:
                done = "reloaded" if outcome.report.reloaded else "not reloaded"
                jobs[outcome.door].end("done", f"door {outcome.door} runs bundle "
                                       f"{outcome.bundle_id}, {done}")
            else:
                jobs[outcome.door].end("failed", outcome.error or "failed")

        result = update_doors(cfg.activity_db, cfg.enrolment_db, names, model, key,
                              cfg.folder / "updates", progress, finished, page.store_lock)
        return result.summary()

    return _audited_job(page, client, "doors_update_all", {"doors": names},
                        lambda done: page.updates.start_batch(names, work, done),
                        "an update of a door is running")


def build_app(cfg: WebConfig) -> Starlette:
    """The ASGI app for ``cfg`` (uvicorn serves it; tests start it on a free port)."""
    page = Page(cfg)
    page.env.globals.update(strict_min=STRICT_FAR_MIN, strict_max=STRICT_FAR_MAX)

    def r(path: str, handler: Handler, method: str = "GET") -> Route:
        return Route(path, guarded(page, handler, method == "POST"), methods=[method])

    routes = [
        Route("/login", login_page, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
        Route("/style.css", css, methods=["GET"]),
        r("/", activity), Route("/api/activity", api_read(page, _activity_json)),
        r("/crop/{attempt:str}", crop), r("/thumb/{sample:int}", thumb),
        r("/label", label, "POST"), r("/logout", logout, "POST"),
        r("/residents", residents), r("/residents/upload", upload, "POST"),
        r("/residents/remove", remove, "POST"),
        r("/visitors", visitors), r("/visitors/name", name_group, "POST"),
        r("/visitors/mark", mark_group, "POST"), r("/residents/strict", strict, "POST"),
        r("/doors", doors), r("/doors/{door:str}/update", door_update, "POST"),
        r("/doors/{door:str}/sync", door_sync, "POST"),
        r("/doors/update-all", doors_update_all, "POST"),
    ]
    app = Starlette(routes=routes)
    app.state.page = page
    if page.schedule is not None:
        page.schedule.start()  # its own thread: a slow door never holds a request up
    return app
