"""``twinlockd``: the device command line (run, relay-off, check-config, verify, log, ...)."""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import time
from collections.abc import Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from .config.loader import DEFAULT_CONFIG_PATH, load_config
from .console import command_parser, run_command, setup_logging
from .errors import TwinLockError, UsageError

if TYPE_CHECKING:
    from .storage.audit import AuditRecord

logger = logging.getLogger("twinlockd")


def _config_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", type=Path, default=None, metavar="FILE",
                   help=f"config file (default {DEFAULT_CONFIG_PATH})")


def _cmd_run(args: argparse.Namespace) -> int:
    import signal

    # Signals that arrive while the daemon starts (imports and model loading take seconds on a
    # Pi) are remembered and honoured once it runs, instead of killing it (SIGHUP's default).
    early: set[int] = set()
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, lambda number, _frame: early.add(number))
    from .door.service import Daemon

    daemon = Daemon(args.config)
    logging.getLogger().setLevel(daemon.cfg.logging.level)
    daemon.install_signal_handlers()
    if early & {signal.SIGTERM, signal.SIGINT}:
        daemon.stop()
    if signal.SIGHUP in early:
        daemon.reload_requested.set()
    return daemon.run()


def _cmd_relay_off(args: argparse.Namespace) -> int:
    """Drive the relay inactive and let go of the pin: the unit's ExecStopPost=.

    It runs after every stop, including a crash or ``kill -9`` in the middle of a pulse, and
    needs only the config's action section: a broken model, camera or audit setting must not
    leave the door open. Imports nothing but the config schema and gpiozero.
    """
    from .config.loader import load_action_config
    from .config.schema import GpioActionConfig
    from .door.actions import GpioAction

    action = load_action_config(args.config)
    if not isinstance(action, GpioActionConfig):
        print(f"relay-off: action is {action.type!r}, not gpio: no relay to switch off")
        return 0
    relay = GpioAction(action.pin, action.active_high, action.pulse_seconds)
    relay.close()
    print(f"relay-off: GPIO{action.pin} driven inactive "
          f"({'low' if action.active_high else 'high'})")
    return 0


def _cmd_check_config(args: argparse.Namespace) -> int:
    path = args.file or args.config
    cfg = load_config(path)
    where = path or DEFAULT_CONFIG_PATH
    if cfg.model.source == "bundle":
        from .bundle.store import bundles_dir

        model = f"signed bundles in {bundles_dir(cfg.state_dir)}"
        needed_files: tuple[tuple[str, Path], ...] = (("trusted public key",
                                                        cfg.model.public_key),)
    else:
        model = f"UNSIGNED model folder {cfg.model.dir}"
        needed_files = (("model folder", cfg.model.dir), ("gallery", cfg.model.gallery))
    print(f"{where}: ok (camera {cfg.camera.type}, action {cfg.action.type}, {model})")
    for warning in cfg.camera.warnings():
        print(f"warning: {warning}", file=sys.stderr)
    for label, needed in needed_files:
        if not Path(needed).exists():
            print(f"warning: {label} {needed} does not exist yet: the door stays locked until "
                  "it does", file=sys.stderr)
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    """Answer once for each image: who is it, with which score, and would the door open."""
    from .door.assemble import build_matcher
    from .faces import quality as q
    from .faces.images import load_image
    from .recognition.analyser import Rejected, Scored

    cfg = load_config(args.config)
    if args.model or args.gallery:
        if not (args.model and args.gallery):
            raise UsageError("verify: give both --model and --gallery (or neither, to use the "
                             "configured bundle)")
        cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={
            "source": "folder", "dir": args.model, "gallery": args.gallery})})
    matcher = build_matcher(cfg)
    results = []
    for path in args.images:
        entry: dict[str, object] = {"image": str(path)}
        try:
            image = load_image(path)
        except TwinLockError as exc:
            entry["error"] = str(exc)
            results.append(entry)
            continue
        # the largest face, as the door's default; the score is shown even when the door
        # would reject the face for its quality
        analysis = matcher.analyser.analyse(image)
        entry["faces"] = analysis.faces_found
        observation = analysis.observations[0] if analysis.observations else None
        if observation is None:
            entry["decision"] = "no face"
        elif isinstance(observation, Rejected) and observation.face is None:
            entry["decision"] = f"quality: {q.describe(observation.reason)}"  # several faces
        else:
            problem = None
            if isinstance(observation, Scored):
                scored = observation
            else:  # a face the door would reject for its quality: still show its score
                assert observation.face is not None
                problem = observation.reason
                scored = matcher.analyser.score(image, observation.face, observation.measures)
            entry["quality"] = scored.measures.to_dict()
            verdict = scored.verdict
            assert verdict is not None
            entry.update(user=verdict.user, closest_user=verdict.best_user,
                         best_score=round(verdict.best_score, 6),
                         anchor_share=round(verdict.share, 3),
                         threshold=round(matcher.verifier.threshold, 6))
            entry["decision"] = (f"quality: {q.describe(problem)}" if problem else
                                 f"match {verdict.user}" if verdict.user else "no match")
        # one still image cannot show a blink or a head turn: recognition only
        entry["liveness"] = f"not checked (one image cannot show it; the door's mode is " \
            f"{cfg.liveness.mode})"
        results.append(entry)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for r in results:
            score = f"score {r['best_score']:.4f} (closest {r['closest_user']})" \
                if "best_score" in r else ""
            print(f"{r['image']}: {r.get('error') or r['decision']} {score}".rstrip())
        print(f"liveness not checked: a still image cannot show it; at the door an unlock also "
              f"needs liveness (mode {cfg.liveness.mode})")
    return 0


#: records ``twinlockd log`` shows when neither --limit nor --all says otherwise
LOG_DEFAULT_LIMIT = 50
#: records formatted (and a table aligned) at a time while the log streams out
LOG_PAGE = 1000


# -- twinlockd log: --since and the records as text ---------------------------------------

_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd])\s*$", re.IGNORECASE)
_UNIT_SECONDS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_since(text: str, now: float | None = None) -> float:
    """A point in time from the command line, as unix seconds.

    ISO dates and date-times ("2026-11-28", "2026-11-28T10:00", with or without an offset;
    without one they mean the door's local time, as a person reading its clock would) or an age
    before ``now`` ("30s", "15m", "2h", "7d").
    """
    raw = text if isinstance(text, str) else str(text)
    match = _RELATIVE.match(raw)
    if match:
        amount = float(match.group(1)) * _UNIT_SECONDS[match.group(2).lower()]
        return (time.time() if now is None else now) - amount
    try:
        moment = datetime.fromisoformat(raw.strip())
    except ValueError:
        raise UsageError(
            f"cannot read the time {raw!r}: use an ISO date or date-time such as 2026-11-28 or "
            "2026-11-28T10:00, or an age such as 30s, 15m, 2h or 7d"
        ) from None
    return moment.timestamp()


def _cell(value: str) -> str:
    """Table cells stay on one line even if a reason or user name holds control characters."""
    if value.isprintable():
        return value
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in value)


TABLE_HEADER = ("TIME", "EVENT", "USER", "SCORE", "DECISION", "REASON")


def format_records(records: Iterable[AuditRecord], as_json: bool) -> str:
    """JSON lines (one object per record) or an aligned table in local time; no final newline."""
    records = list(records)
    if as_json:
        return "\n".join(json.dumps(r.to_dict(), ensure_ascii=False) for r in records)
    if not records:
        return "no matching records"
    rows = [TABLE_HEADER]
    for r in records:
        local = datetime.fromtimestamp(r.ts).astimezone()
        rows.append((
            local.strftime("%Y-%m-%d %H:%M:%S"),
            _cell(r.event),
            _cell(r.user) if r.user else "-",
            "-" if r.best_score is None else f"{r.best_score:.3f}",
            _cell(r.decision),
            _cell(r.reason),
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(TABLE_HEADER) - 1)]
    lines = []
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=True)]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    return "\n".join(lines)


def _cmd_log(args: argparse.Namespace) -> int:
    """Print the audit log as it streams from SQLite, a page at a time: a log of millions of
    rows must not be read into memory whole. Needs only the config's audit section: a door
    whose camera or model section is broken is exactly when its log must be readable."""
    from itertools import islice

    from .storage.audit import AuditLog

    db = args.db
    if db is None:
        from .config.loader import load_audit_config

        audit_cfg, problems = load_audit_config(args.config)
        db = audit_cfg.db
        if problems is not None:
            print(f"twinlockd log: warning: the config has other problems (the door will not "
                  f"start with it; 'twinlockd check-config' says the same); the audit log is "
                  f"shown anyway:\n{problems}", file=sys.stderr)
    if not Path(db).exists():
        print(f"twinlockd log: no audit log at {db} yet", file=sys.stderr)
        return 1
    if args.limit is not None and args.limit < 0:
        raise UsageError(f"--limit must be 0 (everything) or more, not {args.limit}")
    limit = None if args.all or args.limit == 0 else args.limit or LOG_DEFAULT_LIMIT
    since = parse_since(args.since) if args.since else None
    shown = 0
    with AuditLog(db) as audit:
        records = audit.stream(since=since, event=args.event, user=args.user, limit=limit)
        while page := list(islice(records, LOG_PAGE)):  # itertools.batched is Python >= 3.12
            text = format_records(page, as_json=args.json)
            if shown and not args.json:
                text = text.partition("\n")[2]  # the table's header once, at the top
            shown += len(page)
            print(text, flush=True)
    if not shown:
        print(format_records([], as_json=args.json))
    elif args.limit is None and not args.all and shown == limit:
        print(f"twinlockd log: the newest {limit} records; --limit N or --all for more",
              file=sys.stderr)
    return 0


def _key(args: argparse.Namespace) -> Path:
    return args.key or load_config(args.config).model.public_key


def _cmd_check_bundle(args: argparse.Namespace) -> int:
    from .bundle.store import verify_bundle

    verified = verify_bundle(args.file, _key(args))
    print(json.dumps({"ok": True, "file": str(args.file)} | verified.summary(), indent=2))
    return 0


def _cmd_install_bundle(args: argparse.Namespace) -> int:
    """Verify and install a bundle by hand (an SD card, a USB stick); reload to use it."""
    from .bundle.store import install_bundle

    cfg = load_config(args.config)
    path = install_bundle(args.file, _key(args), cfg.state_dir, cfg.model.runtimes)
    print(f"installed {args.file} as {path}; the previous bundle is kept for rollback. "
          "Reload the daemon to use it: systemctl reload twinlockd")
    return 0


def _cmd_rollback(args: argparse.Namespace) -> int:
    from .bundle.store import rollback

    cfg = load_config(args.config)
    path = rollback(cfg.state_dir, _key(args))
    print(f"rolled back: {path} is the previous bundle again. Reload the daemon to use it: "
          "systemctl reload twinlockd")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser, sub = command_parser(
        "twinlockd", "TwinLock at the door: watch the camera, verify faces against enrolled "
        "users, pulse the relay, log every decision.")
    p = sub.add_parser("run", help="run the door (what systemd starts)")
    _config_arg(p)
    p = sub.add_parser("relay-off", help="switch the relay off (the unit's ExecStopPost=); "
                       "reads only the config's action section")
    _config_arg(p)
    p = sub.add_parser("check-config", help="validate a config file (exit 2 when invalid)")
    p.add_argument("file", nargs="?", type=Path, metavar="FILE")
    _config_arg(p)
    p = sub.add_parser("verify", help="answer once for given images, for testing at the door")
    p.add_argument("images", nargs="+", type=Path, metavar="IMAGE")
    _config_arg(p)
    p.add_argument("--model", type=Path, help="model folder (overrides the config)")
    p.add_argument("--gallery", type=Path, help="gallery file (overrides the config)")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("log", help=f"show the audit log (the newest {LOG_DEFAULT_LIMIT} "
                       "records unless --limit or --all); reads only the config's audit "
                       "section and warns about the rest")
    _config_arg(p)
    p.add_argument("--since", help="e.g. 2h, 7d, 2026-11-28 or 2026-11-28T10:00")
    p.add_argument("--event", help="only this event (unlock, deny, lockout, fault, ...)")
    p.add_argument("--user", help="only this user")
    p.add_argument("--limit", type=int, metavar="N",
                   help=f"only the newest N matching records (default {LOG_DEFAULT_LIMIT}; "
                   "0: all of them)")
    p.add_argument("--all", action="store_true",
                   help=f"every matching record, streamed (a long table is aligned "
                   f"{LOG_PAGE} rows at a time)")
    p.add_argument("--db", type=Path, help="audit database (overrides the config)")
    p.add_argument("--json", action="store_true", help="JSON lines")
    for name, text in (("check-bundle", "verify a bundle's signature and checksums"),
                       ("install-bundle", "verify and install a bundle (keeps the previous)")):
        p = sub.add_parser(name, help=text)
        p.add_argument("file", type=Path, metavar="FILE")
        _config_arg(p)
        p.add_argument("--key", type=Path, help="trusted public key (default: model.public_key)")
    p = sub.add_parser("rollback", help="go back to the previously installed bundle")
    _config_arg(p)
    p.add_argument("--key", type=Path, help="trusted public key (default: model.public_key)")
    return parser


COMMANDS = {"run": _cmd_run, "relay-off": _cmd_relay_off, "check-config": _cmd_check_config,
            "verify": _cmd_verify, "log": _cmd_log, "check-bundle": _cmd_check_bundle,
            "install-bundle": _cmd_install_bundle, "rollback": _cmd_rollback}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    setup_logging(args.verbose)
    return run_command("twinlockd", args.command, lambda: COMMANDS[args.command](args))


if __name__ == "__main__":
    sys.exit(main())
