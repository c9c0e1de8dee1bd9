"""Write the documentation site's reference pages from the code, so they cannot drift from it.

Each generated part of a page sits between ``<!-- BEGIN GENERATED: name -->`` and
``<!-- END GENERATED: name -->``; everything outside the markers is written by hand and kept.
The parts come from:

- the config schema (``daemon/config/schema.py``): every key, its type, default, bounds and
  description, and the shipped ``config.yaml`` as it is;
- the two command lines' parsers (``twinlock``: ``trainer/cli.py``; ``twinlockd``:
  ``daemon/cli.py``): every command, argument and option;
- the MQTT link (``daemon/door/mqtt.py``): the topics, the payloads it queues and the Home
  Assistant discovery entities, taken from a link that is built but never connected;
- the audit log (``daemon/storage/audit.py``): the record's fields and columns, and every
  (event, decision) pair the daemon writes, found in its source;
- the benchmark JSON files under ``docs/models/``: the figure tables.

``python scripts/gen_reference.py`` rewrites the pages; ``--check`` exits 1 naming the pages
that are out of date (``tests/test_docs.py`` does the same in memory).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import os
import re
import sqlite3
import sys
import types
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"

BEGIN = "<!-- BEGIN GENERATED: {name} -->"
END = "<!-- END GENERATED: {name} -->"
_BLOCK = re.compile(r"<!-- BEGIN GENERATED: (?P<name>[\w./-]+) -->\n.*?<!-- END GENERATED: "
                    r"(?P=name) -->", re.DOTALL)

#: usage lines are wrapped at this width whatever the terminal's
USAGE_COLUMNS = 96


# ------------------------------------------------------------------------------------------
# small formatting helpers


def _cell(text: object) -> str:
    """One Markdown table cell (or line): no line breaks, pipes and angle brackets escaped
    (``<root>/<person>`` in a help text is not an HTML tag)."""
    text = " ".join(str(text).split()).replace("|", "\\|")
    return text.replace("<", "&lt;").replace(">", "&gt;")


def _code(text: object) -> str:
    text = str(text)
    return f"`` {text} ``" if "`" in text else f"`{text}`"


def _yaml_value(value: Any) -> str:
    """A default as it would be written in config.yaml."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(_yaml_value(v) for v in value) + "]"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _sentence(text: str | None) -> str:
    """A help string as a sentence: capital first letter, full stop."""
    text = _cell(text or "")
    if not text:
        return ""
    return text[0].upper() + text[1:] + ("" if text.endswith(".") else ".")


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------
# the config schema


def _type_name(annotation: Any) -> str:
    """A reader's name for a field's type: ``int``, ``path``, ``one of: a, b``, ``list of ...``."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return _type_name(args[0])
    if origin is typing.Literal:
        return "one of: " + ", ".join(_yaml_value(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        names = [_type_name(a) for a in args if a is not type(None)]
        text = " or ".join(names)
        return f"{text}, or null" if type(None) in args else text
    if origin is dict:
        return "JSON object"
    if origin in (tuple, list):
        inner = [a for a in args if a is not Ellipsis]
        return "list of " + (_type_name(inner[0]) if inner else "values")
    if annotation is Path:
        return "path"
    if isinstance(annotation, type):
        return {"str": "text", "bool": "true/false", "int": "whole number",
                "float": "number"}.get(annotation.__name__, annotation.__name__)
    return str(annotation)


def _bounds(field: FieldInfo) -> str:
    """The field's numeric bounds, lengths and pattern, e.g. ``1 ≤ x ≤ 8``."""
    low = high = ""
    parts: list[str] = []
    for meta in _metadata(field):
        if isinstance(meta, annotated_types.Ge):
            low = f"{_yaml_value(meta.ge)} ≤ x"
        elif isinstance(meta, annotated_types.Gt):
            low = f"{_yaml_value(meta.gt)} < x"
        elif isinstance(meta, annotated_types.Le):
            high = f"x ≤ {_yaml_value(meta.le)}"
        elif isinstance(meta, annotated_types.Lt):
            high = f"x < {_yaml_value(meta.lt)}"
        elif isinstance(meta, annotated_types.MinLen) and meta.min_length > 0:
            parts.append(f"length ≥ {meta.min_length}")
        elif isinstance(meta, annotated_types.MaxLen):
            parts.append(f"length ≤ {meta.max_length}")
        elif getattr(meta, "pattern", None):
            parts.append(f"matches {_code(meta.pattern)}")
    if low and high:
        parts.insert(0, low + high[1:])
    elif low or high:
        parts.insert(0, low or high)
    return "; ".join(parts)


def _metadata(field: FieldInfo) -> Iterator[Any]:
    for meta in field.metadata:
        # pydantic groups pattern/length constraints in one object with attributes
        if type(meta).__name__ == "_PydanticGeneralMetadata":
            for name, value in vars(meta).items():
                if name == "pattern":
                    yield types.SimpleNamespace(pattern=value)
                elif name == "min_length":
                    yield annotated_types.MinLen(value)
                elif name == "max_length":
                    yield annotated_types.MaxLen(value)
        else:
            yield meta


def _default(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    if field.default_factory is not None:
        value = field.default_factory()  # type: ignore[call-arg]
        if isinstance(value, BaseModel):
            return "(section)"
    else:
        value = field.default
    if value is PydanticUndefined:
        return "required"
    return _code(_yaml_value(value))


def _union_members(annotation: Any) -> list[type[BaseModel]] | None:
    """The models of a ``type:``-switched section, or None for a plain section."""
    if typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(annotation) if isinstance(a, type)
                   and issubclass(a, BaseModel)]
        return members or None
    return None


def _model_of(annotation: Any) -> type[BaseModel] | None:
    if typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def config_keys() -> list[tuple[str, str | None, str, FieldInfo]]:
    """Every leaf key of the schema: (section, kind or None, dotted key, field).

    A ``type:``-switched section (camera, action) lists each kind's keys under that kind.
    """
    from twinlock.daemon.config.schema import Config

    out: list[tuple[str, str | None, str, FieldInfo]] = []

    def walk(model: type[BaseModel], section: str, kind: str | None, prefix: str) -> None:
        for name, field in model.model_fields.items():
            sub = _model_of(field.annotation)
            if sub is not None:
                walk(sub, section, kind, f"{prefix}{name}.")
            else:
                out.append((section, kind, f"{prefix}{name}", field))

    for name, field in Config.model_fields.items():
        members = _union_members(field.annotation)
        model = _model_of(field.annotation)
        if members:
            default_kind = getattr(field.default_factory(), "type", None)  # type: ignore[misc]
            members.sort(key=lambda m: m.model_fields["type"].default != default_kind)
            for member in members:
                kind = member.model_fields["type"].default
                out.append((name, kind, "type", member.model_fields["type"]))
                own = [n for n in member.model_fields if n != "type"
                       and n in member.__annotations__]
                rest = [n for n in member.model_fields if n != "type" and n not in own]
                for key in own + rest:
                    out.append((name, kind, key, member.model_fields[key]))
        elif model is not None:
            walk(model, name, None, "")
        else:
            out.append(("", None, name, field))
    return out


def gen_config() -> str:
    from twinlock.daemon.config.schema import Config

    parts: list[str] = []
    keys = config_keys()
    header = ["key", "default", "type and bounds", "description"]

    def type_and_bounds(f: FieldInfo) -> str:
        bounds = _bounds(f)
        return _cell(_type_name(f.annotation) + (f"; {bounds}" if bounds else ""))

    def rows(selected: list[tuple[str, str | None, str, FieldInfo]], path: str) -> str:
        return _table(header, [[_code(f"{path}{key}"), _default(f), type_and_bounds(f),
                                _cell(f.description or "")] for _, _, key, f in selected])

    top = [k for k in keys if k[0] == ""]
    parts.append("## Top level\n\n" + rows(top, ""))
    for section, field in Config.model_fields.items():
        in_section = [k for k in keys if k[0] == section]
        if not in_section:
            continue
        doc = _model_doc(field.annotation)
        text = [f"## `{section}`", "", doc or _sentence(field.description)]
        kinds = list(dict.fromkeys(k[1] for k in in_section))
        if kinds == [None]:
            text += ["", rows(in_section, f"{section}.")]
        else:
            default_kind = getattr(field.default_factory(), "type", None)  # type: ignore[misc]
            text += ["", (f"`{section}.type` picks the kind; each kind has its own keys. "
                     f"Default: `{default_kind}`.")]
            for kind in kinds:
                member = next(m for m in _union_members(field.annotation) or []
                              if m.model_fields["type"].default == kind)
                text += ["", f"### `{section}.type: {kind}`", ""]
                if member.__doc__:
                    text += [_docstring(member.__doc__), ""]
                text.append(rows([k for k in in_section if k[1] == kind], f"{section}."))
        parts.append("\n".join(text))
    count = len(keys)
    parts.insert(0, f"{count} keys, from `daemon/config/schema.py` (`Config`).")
    return "\n\n".join(parts)


def _docstring(doc: str) -> str:
    return " ".join(doc.split())


def _model_doc(annotation: Any) -> str:
    model = _model_of(annotation)
    return _docstring(model.__doc__) if model is not None and model.__doc__ else ""


def gen_config_yaml() -> str:
    text = (REPO / "config.yaml").read_text(encoding="utf-8")
    return "```yaml\n" + text.rstrip("\n") + "\n```"


# ------------------------------------------------------------------------------------------
# the command lines


def parsers() -> dict[str, argparse.ArgumentParser]:
    from twinlock.daemon.cli import build_parser as daemon_parser
    from twinlock.trainer.cli import build_parser as trainer_parser

    return {"twinlock": trainer_parser(), "twinlockd": daemon_parser()}


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _sub_help(parser: argparse.ArgumentParser) -> dict[str, str]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return {a.dest: a.help or "" for a in action._choices_actions}
    return {}


def option_strings(parser: argparse.ArgumentParser) -> set[str]:
    return {s for a in parser._actions for s in a.option_strings}


def _expand_help(action: argparse.Action, prog: str) -> str:
    if not action.help or action.help == argparse.SUPPRESS:
        return ""
    params = {k: v for k, v in vars(action).items() if v is not argparse.SUPPRESS}
    for name, value in list(params.items()):
        if hasattr(value, "__name__"):
            params[name] = value.__name__
    if params.get("choices") is not None:
        params["choices"] = ", ".join(str(c) for c in params["choices"])
    params["prog"] = prog
    return action.help % params


def _argument_rows(parser: argparse.ArgumentParser) -> list[list[str]]:
    rows = []
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        if action.option_strings:
            name = ", ".join(_code(s) for s in action.option_strings)
        else:
            name = _code(action.metavar or action.dest)
        if action.nargs == 0:
            value = ""
        elif action.choices is not None:
            value = " \\| ".join(_code(c) for c in action.choices)
        else:
            metavar = action.metavar
            if isinstance(metavar, tuple):
                metavar = " ".join(metavar)
            value = _code(metavar or action.dest.upper()) if action.option_strings else ""
            if action.nargs in ("+", "*") or isinstance(action.nargs, int) and action.nargs > 1:
                value += f" ({'one or more' if action.nargs == '+' else action.nargs})" \
                    if action.nargs != "*" else " (any number)"
        if action.required:
            default = "required"
        elif (action.default is None or action.default is False
              or action.default is argparse.SUPPRESS or action.default == []):
            default = ""
        elif isinstance(action.default, (list, tuple)):
            default = _code(" ".join(str(v) for v in action.default))
        else:
            default = _code(action.default)
        if action.nargs == "?" and not action.option_strings:
            default = default or "optional"
        if isinstance(action, argparse._AppendAction):
            value += " (repeatable)"
        rows.append([name, value, default, _cell(_expand_help(action, parser.prog))])
    return rows


def _usage(parser: argparse.ArgumentParser) -> str:
    formatter = argparse.HelpFormatter(parser.prog, width=USAGE_COLUMNS)
    formatter.add_usage(parser.usage, parser._actions, parser._mutually_exclusive_groups)
    return formatter.format_help().strip()


def gen_cli(prog: str) -> str:
    parser = parsers()[prog]
    subs = subcommands(parser)
    helps = _sub_help(parser)
    out = [_cell(parser.description or ""), "", "```text", _usage(parser), "```", "",
           "Options before the command: " + ", ".join(
               f"{_code(', '.join(a.option_strings))} ({a.help})" for a in parser._actions
               if a.option_strings and not isinstance(a, argparse._HelpAction)) + "."]
    out += ["", _table(["command", "what it does"],
                       [[f"[`{name}`](#{prog}-{name})", _cell(helps.get(name, ""))]
                        for name in subs])]
    for name, sub in subs.items():
        out += ["", f"## `{prog} {name}` {{ #{prog}-{name} }}", "", _sentence(helps.get(name))]
        if sub.description:
            out += ["", _cell(sub.description)]
        out += ["", "```text", _usage(sub), "```"]
        plain = [a for g in sub._action_groups if g.title in _PLAIN_GROUPS
                 for a in g._group_actions]
        rows_plain = _argument_rows(_only(sub, plain))
        if rows_plain:
            out += ["", _table(["argument", "value", "default", "meaning"], rows_plain)]
        for group in sub._action_groups:
            if group.title in _PLAIN_GROUPS:
                continue
            out += ["", f"**{group.title}**" + (f": {_cell(group.description)}"
                                                if group.description else "")]
            out += ["", _table(["argument", "value", "default", "meaning"],
                               _argument_rows(_only(sub, group._group_actions)))]
    return "\n".join(out)


#: argparse's own groups, shown together as one table
_PLAIN_GROUPS = ("positional arguments", "options", "optional arguments")


def _only(parser: argparse.ArgumentParser, actions: list[argparse.Action]) -> Any:
    """A stand-in holding some of a parser's actions, for _argument_rows."""
    return types.SimpleNamespace(_actions=actions, prog=parser.prog)


# ------------------------------------------------------------------------------------------
# MQTT

#: what each field of an event payload means (the door's own fields come from
#: daemon/door/mqtt.py's MqttLink.record; a new one without a meaning here fails the build)
EVENT_FIELDS = {
    "event_type": "the kind of event (table below)",
    "seq": "1, 2, 3, ... per run of the daemon: a gap means messages were dropped",
    "time": "when it was published, UTC, ISO 8601 with milliseconds",
    "decision": "the audit record's decision: `unlock`, `deny` or `ignore`",
    "reason": "the audit record's reason, in words",
    "user": "the resident let in (unlock only)",
    "score": "the best fused score of the attempt, 0..1",
    "closest_user": "the resident whose anchors scored highest, also when nobody was let in",
    "source": "for a remote unlock: the topic, user and broker it came through",
    "frame": "the camera frame's number in this run",
}

#: what each key of the retained state means
STATE_FIELDS = {
    "lock": "`locked`, or `unlocked` while the relay pulses",
    "last_user": "the last resident let in",
    "last_score": "the last event's score, rounded to 4 places",
    "last_event": "the last event's type",
    "last_time": "the last event's time (UTC)",
    "fps": "frames processed per second, at the last status line",
    "camera": "the camera's state, as the status line says it",
    "dropped": "messages dropped since start because the queue was full",
}


class _RecordingClient:
    """Stands in for paho's client when the link 'connects': records what it would send."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, Any, bool]] = []
        self.subscribed: list[str] = []

    def subscribe(self, topic: str, qos: int = 0) -> None:
        self.subscribed.append(topic)

    def publish(self, topic: str, payload: Any, qos: int = 0, retain: bool = False) -> None:
        self.sent.append((topic, payload, retain))


def publish_record_fields() -> list[str]:
    """The keyword fields daemon/door/service.py's _publish_record puts into each event."""
    tree = ast.parse((REPO / "daemon/door/service.py").read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name == "_publish_record":
            for call in ast.walk(node):
                if (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute)
                        and call.func.attr == "event"):
                    return [k.arg for k in call.keywords if k.arg]
    raise SystemExit("gen_reference: _publish_record's mqtt.event(...) call not found in "
                     "daemon/door/service.py")


def _link(**settings: Any) -> Any:
    from twinlock.daemon.config.schema import MqttConfig
    from twinlock.daemon.door.mqtt import MqttLink

    return MqttLink(MqttConfig(enabled=True, **settings))


def _queued(link: Any) -> list[Any]:
    out = []
    while len(link.queue):
        out.append(link.queue.get(0))
    return out


def _payload_text(payload: Any) -> str:
    data = payload() if callable(payload) else payload
    return data.decode("utf-8") if isinstance(data, bytes) else str(data)


def _event_examples(link: Any) -> list[tuple[str, dict[str, Any]]]:
    """(what it shows, payload) of events as the link builds them from audit records."""
    unlock = {"user": "alice", "best_score": 0.99871, "frame": 94,
              "details": {"closest_user": "alice"}}
    deny = {"best_score": 0.61203, "frame": 131, "details": {"closest_user": "bob"}}
    if hasattr(link, "record"):  # the link turns an audit record into its event itself
        from twinlock.daemon.door.events import Record

        def record(event: str, decision: str, reason: str, fields: dict[str, Any]) -> Any:
            return Record(event, decision, reason, **fields)

        link.record(record("unlock", "unlock", "verified in 2 of 2 frames", unlock))
        link.record(record("deny", "deny", "not verified", deny))
        link.record(record("remote", "deny", "remote unlock refused: mqtt.remote_unlock is false",
                           {"details": {"source": "mqtt twinlock/door/lock/set via "
                                        "frontdoor@192.168.1.10:8883 (TLS)"}}))
        shown = ["an unlock", "a refused attempt", "a refused remote unlock"]
    else:  # older code: the daemon's _publish_record passes the fields
        fields = publish_record_fields()
        example = {"decision": "unlock", "reason": "verified in 2 of 2 frames", "user": "alice",
                   "score": 0.99871, "closest_user": "alice", "source": None, "frame": 94}
        link.event("unlock", **{f: example.get(f) for f in fields})
        shown = ["an unlock"]
    events = [json.loads(_payload_text(m.payload)) for m in _queued(link)
              if m.topic.endswith("/event")]
    for number, event in enumerate(events):
        event["time"] = f"2026-12-06T08:00:0{number}.000+00:00"
    return list(zip(shown, events, strict=True))


def _review_message() -> tuple[Any, bytes]:
    """The door's review message for one refused attempt, as daemon/door/review_sink.py builds
    it (a 4-value embedding and stand-in crop bytes, to keep the example short), queued by the
    MQTT link, and the record's line."""
    import hashlib
    from datetime import UTC, datetime

    import numpy as np

    from twinlock.daemon.review.format import ReviewRecord, encode_mqtt, encode_record

    crop = b"\xff\xd8\xff\xe0 an example crop \xff\xd9"  # fixed bytes: the same hash anywhere
    record = ReviewRecord(
        id="front.019aef3c5a10c0ffee00", door="front",
        time=datetime(2026, 12, 6, 8, 15, 30, 123000, tzinfo=UTC), decision="deny",
        bundle_id="b-20261205-1", model_id="4a2d4b3a1b1b09d7", audit_id=1234, score=0.21,
        reason="face left without a match", embedding=np.array([0.5, -0.25, 0.125, 1.0],
                                                                 np.float32),
        crop_sha256=hashlib.sha256(crop).hexdigest())
    line = encode_record(record)
    link = _link()
    link.review(record.door, encode_mqtt(line, crop))
    return _queued(link)[0], line


def _review_row(rel: Any) -> list[str]:
    message, _ = _review_message()
    return [_code(rel(message.topic).replace("/front", "/<review.door>")), "door → broker",
            "yes" if message.retain else "no",
            ("one review record per ended attempt, face crop included, only with "
             "`review.mqtt: true` (below)")]


def _review_section(rel: Any) -> list[str]:
    from twinlock.daemon.review.format import DECISIONS, MAX_MQTT_BYTES

    message, line = _review_message()
    topic = rel(message.topic).replace("/front", "/<review.door>")
    return ["", "### Review records", "", (
        f"`{topic}`, only with `review.mqtt: true` (which needs `review.enabled` and "
        "`mqtt.enabled`): one message per attempt that ended (decision "
        + ", ".join(_code(d) for d in DECISIONS) + "; `remote`, a remote unlock, has no face). "
        "QoS 1, never retained. The payload is the record's line exactly as the door's review "
        "folder keeps it (one JSON object and a newline), then the face crop, a JPEG, in "
        f"base64 (nothing when the record has none); at most {MAX_MQTT_BYTES} bytes. For "
        "example (the embedding shortened to 4 values):"), "", "```json",
        line.decode().strip(), "```", "", (
        "`twinlock doors add NAME --mqtt HOST[:PORT]` opens the household's persistent session "
        "(client id `twinlock-household-NAME`, MQTT 5, clean start off, QoS 1) and `twinlock "
        "doors sync NAME` drains it through the same strict reader as the SSH and folder path; "
        "a record is acknowledged once stored, a retained message is ignored, a record of "
        "another door refused."), "", (
        "**Privacy.** These messages are pictures of people: the broker holds each one until "
        "the household takes it. Use TLS (`mqtt.ca_file`) and a broker ACL that lets only the "
        "door write and only the household read the topic; nobody else needs it.")]


def gen_mqtt() -> str:
    from twinlock.daemon.config.schema import MqttConfig
    from twinlock.daemon.door import mqtt
    from twinlock.daemon.door.events import EventKind
    from twinlock.daemon.storage.audit import EVENTS

    link = _link()
    prefix = link.prefix
    # on connect: discovery, lock state, availability (a recording client stands in for paho)
    fake = _RecordingClient()
    link._on_connect(fake, None, None, types.SimpleNamespace(is_failure=False), None)
    will = link.client._will_topic.decode() if isinstance(link.client._will_topic, bytes) \
        else str(link.client._will_topic)
    will_payload = _payload_text(link.client._will_payload)
    examples = _event_examples(link)
    fields = list(dict.fromkeys(k for _, e in examples for k in e))
    missing = [f for f in fields if f not in EVENT_FIELDS]
    if missing:
        raise SystemExit(f"gen_reference: say what MQTT event field(s) {missing} mean in "
                         "EVENT_FIELDS (scripts/gen_reference.py)")
    link.lock_state(unlocked=True)
    messages = _queued(link)
    state = [m for m in messages if m.topic == link.topic("state")][-1]
    lock = next(m for m in messages if m.topic == link.topic("lock/state"))
    state_json = json.loads(_payload_text(state.payload))
    state_json["last_time"] = examples[-1][1]["time"]
    unknown_state = [k for k in state_json if k not in STATE_FIELDS]
    if unknown_state:
        raise SystemExit(f"gen_reference: say what MQTT state key(s) {unknown_state} mean in "
                         "STATE_FIELDS (scripts/gen_reference.py)")
    snap_link = _link(snapshots=True)
    snap_link.snapshot(__import__("numpy").zeros((8, 8, 3), dtype="uint8"))
    snapshot_topic = _queued(snap_link)[0].topic
    remote = MqttConfig(enabled=True, snapshots=True, remote_unlock=True,
                        ca_file=Path("/etc/twinlock/mqtt-ca.pem"), username="frontdoor",
                        password_file=Path("/etc/twinlock/mqtt-password"))
    lock_entity = next(c for t, c in mqtt.discovery_messages(remote).items()
                       if t.split("/")[1] == "lock")
    command_topic = lock_entity["command_topic"]
    template = lock_entity.get("command_template")

    def rel(topic: str) -> str:
        return "…/" + topic[len(prefix) + 1:] if topic.startswith(prefix + "/") else topic

    retained = {t for t, _, r in fake.sent if r} | {m.topic for m in messages if m.retain}
    event_topic = link.topic("event")
    commands = " / ".join(_code(c) for c in mqtt.UNLOCK_COMMANDS)
    if template:
        command_text = (f"a fresh JSON command ({commands}, a time and a new nonce: below); "
                        "subscribed only with `mqtt.remote_unlock: true`")
    else:
        command_text = (f"{commands}: remote unlock (refused unless `mqtt.remote_unlock: "
                        "true`); other payloads are ignored")
    rows = [
        [_code(rel(will)), "door → broker", "yes", (f"{_code('online')} on connect; "
         f"{_code(will_payload)} as the last will (a dead door reads offline) and on a clean stop")],
        [_code(rel(event_topic)), "door → broker", "yes" if event_topic in retained else "no",
         "one JSON object per audit record (below)"],
        [_code(rel(state.topic)), "door → broker", "yes" if state.topic in retained else "no",
         "JSON: " + ", ".join(_code(k) for k in state_json)],
        [_code(rel(lock.topic)), "door → broker", "yes" if lock.topic in retained else "no",
         f"{_code(mqtt.LOCKED)} / {_code(mqtt.UNLOCKED)}, following the relay"],
        [_code(rel(command_topic)), "broker → door", "never", command_text],
        [_code(rel(snapshot_topic)), "door → broker", "no",
         "a JPEG of each denied attempt, only with `mqtt.snapshots: true`"],
        _review_row(rel),
    ]
    out = [(f"Topics under `mqtt.topic_prefix` (default `{prefix}`, shown as `…`). QoS 1 "
           "throughout; messages are sent in order, each acknowledged before the next."), "",
           _table(["topic", "direction", "retained", "payload"], rows)]
    out += ["", "### Event payload", "", (f"`{rel(event_topic)}`: one JSON object per audit "
            "record (fields without a value are left out). As the door's code builds them:")]
    for what, event in examples:
        out += ["", f"{what.capitalize()}:", "", "```json", json.dumps(event, indent=2), "```"]
    out += ["", _table(["field", "meaning"], [[_code(k), EVENT_FIELDS[k]] for k in fields])]
    plain = getattr(mqtt, "PLAIN_REASONS", None)
    if plain and "denial_details" in MqttConfig.model_fields:
        out += ["", "Unless `mqtt.denial_details` is on, a refused attempt is published without "
                "its user, score and closest resident, and with a plain reason ("
                + ", ".join(f"{_code(k)}: {_code(v)}" for k, v in plain.items())
                + "): they would tell whoever may subscribe how near an attack came. The audit "
                "log keeps them all."]
    kinds = []
    for audit_event in sorted(EVENTS):
        published = {str(EventKind.of(audit_event))}
        if audit_event == "deny":  # the door machine says which refusals were liveness's
            published.add(str(EventKind.LIVENESS_FAILURE))
        kinds.append([_code(audit_event), ", ".join(_code(p) for p in sorted(published))])
    named = {p.strip("`") for _, ps in kinds for p in ps.split(", ")}
    extra = [e for e in mqtt.EVENT_TYPES if e not in named]
    out += ["", "### Event types", "", ("Every audit record is published; its audit event "
            "becomes the `event_type`:"), "", _table(["audit event", "event_type"], kinds)]
    if extra:
        out += ["", "Published outside the audit log: " + ", ".join(_code(e) for e in extra)
                + "."]
    out += ["", "Home Assistant's event entity is told these types: "
            + ", ".join(_code(e) for e in mqtt.EVENT_TYPES) + "."]
    out += ["", "### State payload", "", (f"`{rel(state.topic)}` (retained), after the unlock "
            "above:"), "", "```json", json.dumps(state_json, indent=2), "```", "",
            _table(["key", "meaning"], [[_code(k), STATE_FIELDS[k]] for k in state_json])]
    if template:
        out += ["", "### Commands", "", (f"`{rel(command_topic)}`, only with "
                "`mqtt.remote_unlock: true`. Home Assistant's lock entity sends this (its "
                "discovery config's `command_template`):"), "", "```text", template, "```"]
    out += _review_section(rel)
    discovery = mqtt.discovery_messages(snap_link.cfg)
    entity_rows = []
    for topic, config in discovery.items():
        component = topic.split("/")[1]
        topics = ", ".join(dict.fromkeys(_code(rel(v)) for k, v in config.items()
                                         if k.endswith("_topic") and k != "availability_topic"))
        entity_rows.append([_code(component), _cell(config["name"]), _code(config["unique_id"]),
                            topics])
    out += ["", "### Home Assistant discovery", "",
            (f"With `mqtt.discovery: true`, on every connect the door publishes (retained) one "
            f"config per entity to `<discovery_prefix>/<component>/<client_id>/<object>/config` "
            f"(default prefix `{snap_link.cfg.discovery_prefix}`), all on one device named "
            "`mqtt.device_name` and available while `…/availability` is `online`:"), "",
            _table(["component", "name", "unique_id", "topics"], entity_rows), "",
            "The image entity is announced only with `mqtt.snapshots: true`."]
    return "\n".join(out)


# ------------------------------------------------------------------------------------------
# the audit log

#: what each field of an audit record means; a field without a meaning here fails the build
AUDIT_FIELDS = {
    "id": "the record's number, increasing",
    "ts": "when, seconds since the epoch (UTC)",
    "ts_iso": "the same time as UTC ISO 8601 with milliseconds and `Z`: sorts as text",
    "event": "what happened (table below)",
    "user": "the resident concerned, when there is one",
    "best_score": "the best fused score of the attempt, 0..1",
    "decision": "`unlock`, `deny` or `ignore` (start, stop, reload, an installed bundle)",
    "reason": "why, in words (the same text `twinlockd log` prints)",
    "frame": "the camera frame's number in this run",
    "details": "small facts as JSON (thresholds, counts, the closest user, timings); never "
               "embeddings or secrets",
}


def _decision_pairs() -> list[tuple[str, str, list[str]]]:
    """(event, decision, example reasons) of every ``Record(...)`` / ``.record(...)`` call in
    the daemon's source whose event and decision are literals."""
    found: dict[tuple[str, str], list[str]] = {}
    for path in sorted((REPO / "daemon").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            name = node.func.attr if isinstance(node.func, ast.Attribute) else \
                node.func.id if isinstance(node.func, ast.Name) else ""
            if name == "fault" and node.args:  # Daemon.fault(message, event="fault", ...)
                event_kw = next((k.value for k in node.keywords if k.arg == "event"), None)
                fault_event = str(event_kw.value) if isinstance(event_kw, ast.Constant) \
                    else "fault"
                # as Daemon.fault records it: decision deny for a fault, else ignore
                key = (fault_event, "deny" if fault_event == "fault" else "ignore")
                text = _literal_text(node.args[0])
                reasons = found.setdefault(key, [])
                if text and text not in reasons:
                    reasons.append(text)
                continue
            if name not in ("Record", "record") or len(node.args) < 3:
                continue
            event, decision, reason = node.args[:3]
            if not (isinstance(event, ast.Constant) and isinstance(decision, ast.Constant)):
                continue
            text = _literal_text(reason)
            reasons = found.setdefault((str(event.value), str(decision.value)), [])
            if text and text not in reasons:
                reasons.append(text)
    return [(e, d, r) for (e, d), r in sorted(found.items())]


def _literal_text(node: ast.expr) -> str:
    """A string or f-string as written, with ``…`` for each interpolated part."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value if isinstance(v, ast.Constant) else "…" for v in node.values)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return _literal_text(node.left) + _literal_text(node.right)
    return ""


def gen_audit() -> str:
    from twinlock.daemon.storage import audit

    fields = dataclasses.fields(audit.AuditRecord)
    missing = [f.name for f in fields if f.name not in AUDIT_FIELDS]
    if missing:
        raise SystemExit(f"gen_reference: say what audit field(s) {missing} mean in "
                         "AUDIT_FIELDS (scripts/gen_reference.py)")
    conn = sqlite3.connect(":memory:")
    for version in sorted(audit.MIGRATIONS):
        audit.MIGRATIONS[version](conn)
    columns = {row[1]: (row[2], "PRIMARY KEY" if row[5] else "NOT NULL" if row[3]
                        else "NULL allowed")
               for row in conn.execute("PRAGMA table_info(decisions)")}
    conn.close()
    hints = typing.get_type_hints(audit.AuditRecord)
    rows = [[_code(f.name), _cell(_type_name(hints[f.name])),
             _cell(" ".join(columns.get(f.name, ("", "")))), AUDIT_FIELDS[f.name]]
            for f in fields]
    out = [(f"Table `decisions`, schema version {audit.SCHEMA_VERSION} (`PRAGMA user_version`); "
           "each record is its own committed transaction. `twinlockd log --json` prints "
           "one record per line with these fields:"), "",
           _table(["field", "type", "SQLite column", "meaning"], rows)]
    pairs = _decision_pairs()
    known = {e for e, _, _ in pairs}
    out += ["", "### Events", "", "The log accepts these events (`EVENTS`): "
            + ", ".join(_code(e) for e in sorted(audit.EVENTS)) + ". What the daemon writes, "
            "found in its source (`…` stands for a value filled in at run time):", "",
            _table(["event", "decision", "reasons written"],
                   [[_code(e), _code(d), "<br>".join(_code(r) for r in rs)]
                    for e, d, rs in pairs])]
    other = sorted(audit.EVENTS - known)
    if other:
        out += ["", "Accepted by the log but written nowhere in today's daemon: "
                + ", ".join(_code(e) for e in other) + "."]
    return "\n".join(out)


# ------------------------------------------------------------------------------------------
# figures from the benchmarks' JSON files


def _pct(x: float, places: int = 1) -> str:
    return f"{100 * x:.{places}f} %"


def _load(rel: str) -> dict[str, Any]:
    return json.loads((REPO / rel).read_text(encoding="utf-8"))


def gen_holdout_table() -> str:
    """The shipped models' held-out pair figures from their evaluation JSON."""
    models = [("models/default", "docs/models/default/holdout.json"),
              ("models/compact", "docs/models/compact/holdout_eval.json"),
              ("student (not shipped)", "docs/models/student/holdout_eval.json")]
    rows = []
    for name, rel in models:
        if not (REPO / rel).exists():
            continue
        d = _load(rel)
        tar = d.get("tar_at_far", {})
        rows.append([
            (f"{name}<br>`{d['model_id']}`<br>[{rel.rsplit('/', 1)[1]}]"
            f"({'../' + rel[len('docs/'):]})"),
            f"{_pct(d['accuracy'], 2)} ± {_pct(d['accuracy_std'], 2)} ({d['n_pairs']:,} pairs)",
            f"{d['auc']:.4f} / {_pct(d['eer'])}",
            " / ".join(_pct(tar[k]) for k in ("1e-02", "1e-03") if k in tar),
            _pct(d["one_shot_20way"]), f"{d['embed_ms_per_face']:.1f} ms"])
    return _table(["model", "10-fold accuracy", "AUC / EER", "TAR at FAR 1 % / 0.1 %",
                   "20-way one-shot", "embed per face"], rows)


def gen_door_table(model: str) -> str:
    """The door-level table of one model: genuine and impostor accepts per fusion rule."""
    rel = f"docs/models/{model}/door/door.json"
    d = _load(rel)
    s = d["setting"]
    names = [n for n in ("door_far_1e-02", "door_far_1e-03", "door_far_1e-04")
             if any(n in by for by in d["rules"].values())]
    rows = []
    for rule, by in d["rules"].items():
        row = [_code(rule) + (" (chosen)" if rule == d.get("winner") else "")]
        for n in names:
            r = by.get(n)
            row.append("" if r is None else
                       f"{_pct(r['genuine_accept_rate'])} ({r['genuine_accepts']}/"
                       f"{r['genuine_knocks']}) · {r['impostor_accepts']:,} = "
                       f"{_pct(r['impostor_accept_rate'], 3)} (≤ "
                       f"{_pct(r['impostor_accept_upper95'], 3)})")
        zero = by.get("zero_impostors")
        row.append(f"{_pct(zero['genuine_accept_rate'])}" if zero else "")
        wrong = sum(by[n]["wrong_resident_accepts"] for n in names if n in by)
        row.append(str(wrong))
        rows.append(row)
    header = ["fusion rule", *[f"{n}: residents' knocks let in · strangers' knocks let in "
                               "(95 % bound)" for n in names],
              "threshold letting no stranger in: residents' knocks", "wrong resident"]
    winner = d["rules"].get(d.get("winner", ""), {})
    pair = winner.get("pair_far_1e-03_threshold")
    if pair:
        text_pair = (f" At the per-pair threshold `far_1e-03` instead, `{d['winner']}` lets in "
                     f"{_pct(pair['genuine_accept_rate'])} of residents' knocks and "
                     f"{pair['impostor_accepts']:,} strangers' knocks "
                     f"({_pct(pair['impostor_accept_rate'])}): a pair threshold is far looser "
                     "at a door.")
    else:
        text_pair = ""
    agree = d.get("agreement", {})
    seq = agree.get("sequence", {})
    text = [(f"`{d['model']}` (`{d['model_id']}`, {d['architecture']}): {s['doors']} seeded "
            f"doors of {s['residents']} residents × {s['anchors']} photos, held-out people "
            f"({d['held_out']['people']} people, {d['held_out']['photos']:,} photos), one frame "
            f"per knock. From [{rel.rsplit('/', 2)[1]}/door.json](../models/{model}/door/"
            "door.json), written by `twinlock evaluate --door`."), "", _table(header, rows)]
    if text_pair:
        text += ["", text_pair.strip()]
    if seq:
        c = agree["chosen"]
        text += ["", (f"Frames that must agree, chosen by the same run: {c['k']} of {c['n']} "
                 f"within {_yaml_value(c['t'])} s. On sequences of held-out photos at "
                 f"15 fps that lets in {seq['genuine_unlocks']} of {seq['genuine_attempts']} "
                 f"residents' attempts (median {seq['median_delay_s']:.2f} s) and "
                 f"{seq['false_unlocks']} of {seq['impostor_attempts']:,} strangers' attempts "
                 f"({_pct(seq['false_unlocks_per_attempt'], 2)}, ≤ "
                 f"{_pct(seq['false_unlock_upper95'], 2)}).")]
    return "\n".join(text)


def gen_door_sizes(model: str) -> str:
    """How the door's threshold follows its number of residents (the one-resident ladder)."""
    d = _load(f"docs/models/{model}/door/door.json")
    one = d["one_resident"]
    rows = []
    for r in one["by_door_size"]:
        rows.append([str(r["residents"]), f"{r['target']:g}", f"{r['one_resident_rate']:g}",
                     f"{r['threshold']:.4f}",
                     (f"{_pct(r['genuine_accept_rate'])} ({r['genuine_accepts']}/"
                     f"{r['genuine_knocks']})"),
                     (f"{_pct(r['impostor_accept_rate'], 3)} (≤ "
                     f"{_pct(r['impostor_accept_upper95'], 3)}; {r['impostor_knocks']:,} knocks)")])
    growth = ", ".join(f"R = {g['residents']}: {g['ratio_to_one_resident']:.1f}×"
                       for g in d.get("far_growth", []) if g["residents"] > 1)
    out = [_table(["residents R", "target per knock", "one-resident rate used", "threshold",
                   "residents' knocks let in", "strangers' knocks let in (95 % bound)"], rows)]
    if growth:
        out += ["", (f"Strangers let in per knock, against one resident at the same threshold: "
                f"{growth} (`far_growth` in the same file). Ladder seated from "
                f"{one['anchors']} photos per resident.")]
    return "\n".join(out)


def gen_door_sequences(model: str, name: str = "door_far_1e-03") -> str:
    """k of n frames on sequences of held-out photos: what each agreement rule lets in."""
    d = _load(f"docs/models/{model}/door/door.json")
    seq = d["sequences"][name]
    rows = []
    for g in seq["grid"]:
        if g["t"] != max(x["t"] for x in seq["grid"]):
            continue
        rows.append([f"{g['k']} of {g['n']}", f"{_yaml_value(g['t'])} s",
                     f"{_pct(g['genuine_unlock_rate'], 0)} (median {g['median_delay_s']:.2f} s)",
                     (f"{g['false_unlocks']} of {g['impostor_attempts']:,} = "
                     f"{_pct(g['false_unlocks_per_attempt'], 2)} (≤ "
                     f"{_pct(g['false_unlock_upper95'], 2)})")])
    chosen = d.get("agreement", {}).get("chosen")
    note = (f" Chosen: {chosen['k']} of {chosen['n']} within {_yaml_value(chosen['t'])} s."
            if chosen else "")
    return "\n".join([
        (f"`{d['model']}` at `{name}` (threshold {seq['threshold']:.4f}, fusion "
        f"`{seq['rule']}`), sequences of {seq['frames_per_attempt']} held-out photos at "
        f"{_yaml_value(seq['fps'])} fps.{note}"), "",
        _table(["k of n", "within", "residents' attempts let in", ("strangers' attempts let in "
                "(95 % bound)")], rows)])


#: the daemon benchmark's runs, as a reader would name them
_DAEMON_RUNS = {
    "subprocess_fast_signed_bundle": "signed bundle from the drop folder (the deployed way), "
                                     "the mp4 replayed as fast as it goes",
    "subprocess_fast": "model folder, the mp4 replayed as fast as it goes",
    "subprocess_fast_jpeg_frames": "the clip's frames as JPEG files (no video decoder, as with "
                                   "picamera2)",
}


def gen_daemon_memory() -> str:
    """The whole ``twinlockd run`` process's peak memory and speed on the real clip."""
    rel = "docs/benchmarks/daemon.json"
    d = _load(rel)
    rows = []
    runs = d["runs"]
    names = [*[n for n in _DAEMON_RUNS if n in runs],
             *[n for n in runs if n.startswith("subprocess_realtime")]]
    for name in names:
        r = runs[name]
        m = r["memory"]
        what = _DAEMON_RUNS.get(name) or (
            f"real time at max_fps {name.rsplit('_', 1)[-1]} (as the shipped config)")
        rows.append([what, f"{m['peak_rss_mb']:.1f} MB",
                     f"{m['max_sampled_rss_anon_mb']:.1f} / {m['max_sampled_rss_file_mb']:.1f} MB",
                     f"{r['frames_read_per_s']:.0f}", f"{r['model_loaded_s']:.1f} s",
                     ", ".join(str(f) for f in r["audit"]["unlock_frames"])])
    env = d["environment"]
    out = [(f"`{d['model']}`, `twinlockd run` as a child process on `{d['clip']}` "
           f"({d['action']}), its `/proc/PID/status` read every 50 ms; measured "
           f"{d['date'][:10]} on {env['cpu_count']} x86_64 cores (load average "
           f"{env['load_average'][0]:.1f}: a busy machine), Python {env['python']}. From "
           f"[daemon.json](../benchmarks/daemon.json) (`benchmarks/daemon.py`)."), "",
           _table(["run", "peak RSS (VmHWM)", "anonymous / file-backed (RssAnon / RssFile)",
                   "frames read per second", "start to model loaded", "unlocks at frames"],
                  rows)]
    inproc = runs.get("in_process_fast", {}).get("process_per_frame")
    if inproc:
        out += ["", (f"The daemon's `process()` per frame, timed in process over all "
                f"{inproc['n']} frames: median {inproc['median_ms']:.1f} ms, p90 "
                f"{inproc['p90_ms']:.1f} ms (frames without a face cost little; a scored face "
                "more).")]
    target = d.get("rss_target")
    if target:
        out += ["", (f"Target ({target['goal']}): {'met' if target['met'] else 'missed'}, "
                f"{target['peak_rss_mb']:.1f} MB. The unit allows up to `{_unit_memory_max()}`.")]
    return "\n".join(out)


def _unit_memory_max() -> str:
    """The unit's own ``MemoryMax=`` line (deploy/twinlockd.service), so the text follows it."""
    unit = (REPO / "deploy" / "twinlockd.service").read_text()
    return next(line for line in unit.splitlines() if line.startswith("MemoryMax="))


# ------------------------------------------------------------------------------------------
# pages and blocks

#: generated block name -> function that writes it
BLOCKS: dict[str, Callable[[], str]] = {
    "config": gen_config,
    "config-yaml": gen_config_yaml,
    "cli-twinlock": lambda: gen_cli("twinlock"),
    "cli-twinlockd": lambda: gen_cli("twinlockd"),
    "mqtt": gen_mqtt,
    "audit": gen_audit,
    "holdout-table": gen_holdout_table,
    "door-table-default": lambda: gen_door_table("default"),
    "door-table-compact": lambda: gen_door_table("compact"),
    "door-sizes-default": lambda: gen_door_sizes("default"),
    "daemon-memory": gen_daemon_memory,
    "door-sequences-default": lambda: gen_door_sequences("default"),
}


def render(text: str, cache: dict[str, str] | None = None) -> str:
    """``text`` with every generated block written anew."""
    cache = {} if cache is None else cache

    def block(match: re.Match[str]) -> str:
        name = match.group("name")
        if name not in BLOCKS:
            raise SystemExit(f"gen_reference: no generator for block {name!r}")
        if name not in cache:
            cache[name] = BLOCKS[name]().rstrip("\n")
        return f"{BEGIN.format(name=name)}\n{cache[name]}\n{END.format(name=name)}"

    return _BLOCK.sub(block, text)


def pages() -> list[Path]:
    """Every page under docs/ that holds a generated block."""
    return sorted(p for p in DOCS.rglob("*.md") if "<!-- BEGIN GENERATED: " in
                  p.read_text(encoding="utf-8"))


def regenerate() -> dict[Path, tuple[str, str]]:
    """page -> (text on disk, text as it should be)."""
    cache: dict[str, str] = {}
    out = {}
    for page in pages():
        old = page.read_text(encoding="utf-8")
        out[page] = (old, render(old, cache))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 if a page is out of date")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    stale = []
    for page, (old, new) in regenerate().items():
        if old != new:
            stale.append(page.relative_to(REPO))
            if not args.check:
                page.write_text(new, encoding="utf-8")
    if args.check and stale:
        print("out of date (run python scripts/gen_reference.py): "
              + ", ".join(map(str, stale)), file=sys.stderr)
        return 1
    for page in stale:
        print(f"wrote {page}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
