"""``twinlock web [serve]`` and ``twinlock web set-password``: argument handling kept out of
the main CLI module."""

from __future__ import annotations

import argparse
import getpass
import sys
from pathlib import Path

from twinlock.daemon.errors import UsageError

from .server import DEFAULT_PORT


def add_parser(sub: argparse._SubParsersAction, db_help: str, activity_help: str) -> None:
    p = sub.add_parser("web", help="the household page in a browser (login, activity, "
                       "residents, visitors, doors)",
                       description="twinlock web [serve]: serve the household page, on "
                       "127.0.0.1 unless --listen says otherwise (a network listen needs TLS: "
                       "--self-signed or --cert/--key). twinlock web set-password: set the "
                       "household password (read from standard input when it is not a "
                       "terminal). twinlock web token: make the read-only API token for "
                       "/api/activity (Home Assistant, scripts), shown once, only its hash "
                       "kept; --revoke removes it.")
    p.add_argument("action", nargs="?", choices=("serve", "set-password", "token"),
                   default="serve")
    p.add_argument("--revoke", action="store_true", help="token: remove the API token")
    p.add_argument("--listen", default="127.0.0.1", metavar="HOST",
                   help="address to listen on (default 127.0.0.1, this machine only; any other, "
                   "e.g. 0.0.0.0 for a phone on the home network, needs TLS)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, metavar="N",
                   help=f"port (default {DEFAULT_PORT})")
    p.add_argument("--cert", type=Path, metavar="FILE", help="the household's TLS certificate")
    p.add_argument("--key", type=Path, metavar="FILE", help="its private key")
    p.add_argument("--self-signed", action="store_true", help="make (once) and use a "
                   "self-signed certificate in the household folder; prints its fingerprint")
    p.add_argument("--model", type=Path, metavar="MODEL_DIR", help="the model the doors decide "
                   "with (needed to enrol, label and group visitors)")
    p.add_argument("--signing-key", type=Path, metavar="KEY", help="the bundle signing key "
                   "(twinlock keygen): the Doors page's Update signs with it; it is never "
                   "shown or served")
    p.add_argument("--sync-every", type=float, default=0.0, metavar="MINUTES",
                   help="sync every door this often while the page runs, one at a time, in "
                   "the background (default 0: only twinlock doors sync)")
    p.add_argument("--idle-timeout", type=float, default=1800.0, metavar="SECONDS",
                   help="log a session out after this long without a request (default 1800)")
    p.add_argument("--db", type=Path, help=db_help)
    p.add_argument("--activity-db", type=Path, metavar="PATH", help=activity_help)


def run(args: argparse.Namespace) -> int:
    from ..household.activity import default_path as activity_default
    from ..household.enroll_store import default_path as enrol_default
    from .auth import has_password, set_password

    enrol_db = Path(args.db or enrol_default()).expanduser()
    folder = enrol_db.parent
    if args.action == "set-password":
        if sys.stdin.isatty():
            password = getpass.getpass("household password: ")
            if getpass.getpass("again: ") != password:
                raise UsageError("the two passwords differ")
        else:
            password = sys.stdin.readline().rstrip("\r\n")
        path = set_password(folder, password)
        print(f"password set ({path}, scrypt)")
        return 0
    if args.revoke and args.action != "token":
        raise UsageError("--revoke goes with twinlock web token")
    if args.action == "token":
        return _token(folder, args.revoke)
    if not 1 <= args.port <= 65535:
        raise UsageError(f"--port {args.port}: 1..65535")
    if not has_password(folder):
        raise UsageError("no household password yet: run twinlock web set-password first")
    from .app import WebConfig, build_app
    from .server import choose_tls, serve

    if args.sync_every < 0:
        raise UsageError(f"--sync-every {args.sync_every:g}: minutes, 0 or more")
    if args.signing_key is not None and not args.signing_key.is_file():
        raise UsageError(f"--signing-key {args.signing_key}: no such file (twinlock keygen)")
    tls = choose_tls(args.listen, folder, args.cert, args.key, args.self_signed)
    cfg = WebConfig(enrol_db, Path(args.activity_db or activity_default(enrol_db)),
                    args.model, folder, idle_timeout_s=args.idle_timeout,
                    secure_cookie=tls is not None, signing_key=args.signing_key,
                    sync_every_s=args.sync_every * 60)
    serve(build_app(cfg), args.listen, args.port, tls)
    return 0


def _token(folder: Path, revoke: bool) -> int:
    """twinlock web token [--revoke]: from the host's terminal only (the page cannot make one)."""
    from .auth import API_TOKEN_FILE, new_api_token, revoke_api_token

    if revoke:
        print("API token removed" if revoke_api_token(folder) else "there was no API token")
        return 0
    token = new_api_token(folder)
    print(token)
    print(f"the read-only API token for /api/activity (Authorization: Bearer ...); it is not "
          f"shown again: only its SHA-256 is kept ({folder / API_TOKEN_FILE}). An earlier token "
          "no longer works; twinlock web token --revoke removes this one.", file=sys.stderr)
    return 0
