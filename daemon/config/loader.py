"""Reading the config: YAML with line numbers, hostile-file caps, and the validated ``Config``.

The file is composed into PyYAML's node tree first so that every key's line is known (errors
point at lines) and duplicate keys are caught (PyYAML would keep the last silently). A config is
small: larger files, deep nesting and alias bombs are refused before they cost memory.

This module only needs pydantic and PyYAML: the daemon's ``check-config`` runs it before any
camera, model or GPIO code is imported.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import ConfigError
from .problems import (
    NO_VALUE,
    ConfigProblem,
    KeyPath,
    Located,
    dotted,
    line_for,
    problem_from_error,
    raise_problems,
    strict_problems,
    value_at,
)
from .schema import ActionConfig, AuditConfig, Config, GpioActionConfig, fill_section

logger = logging.getLogger(__name__)

#: where the Pi's install script puts the shipped config.yaml
DEFAULT_CONFIG_PATH = Path("/etc/twinlock/config.yaml")

_MERGE_TAG = "tag:yaml.org,2002:merge"
#: a config file larger than this is refused before it is read (the shipped one is ~12 KB)
MAX_CONFIG_BYTES = 256 * 1024
#: nesting deeper than this is no config of ours (ours is 3 levels deep)
MAX_DEPTH = 32
#: nodes visited with aliases expanded: a few hundred bytes of nested aliases ("billion laughs")
#: would otherwise expand to gigabytes
MAX_NODES = 20_000


def _yaml_problem(exc: yaml.YAMLError, source: str, text: str = "") -> ConfigProblem:
    if isinstance(exc, yaml.reader.ReaderError):  # a control character (NUL, BEL, ...)
        position = int(exc.position)
        at_line = text.count("\n", 0, position) + 1
        at_column = position - (text.rfind("\n", 0, position) + 1) + 1
        char = exc.character if isinstance(exc.character, int) else ord(str(exc.character)[:1] or "?")
        return ConfigProblem(at_line, "", f"YAML error: character #x{char:04x} is not allowed "
                             "in a config file (a control character)", NO_VALUE, source, at_column)
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    if isinstance(exc, yaml.MarkedYAMLError):
        parts = [exc.context, exc.problem] if exc.context and exc.problem else [exc.problem]
        detail = ", ".join(str(p) for p in parts if p) or str(exc)
    else:
        detail = str(exc)
    line = mark.line + 1 if mark is not None else None
    column = mark.column + 1 if mark is not None else None
    # a ConstructorError is well-formed YAML that SafeLoader will not build (e.g. !!python tags)
    unbuildable = isinstance(exc, yaml.constructor.ConstructorError)
    kind = "YAML error" if unbuildable else "YAML syntax error"
    return ConfigProblem(line, "", f"{kind}: {detail}", NO_VALUE, source, column)


def _read_yaml(text: str, source: str) -> Located:
    """Compose the node tree, record lines (and duplicate keys) by walking it, then construct.

    PyYAML keeps the last of two equal keys without a word; in a lock's config a duplicated key
    is almost always a mistake that would hide the setting the user meant, so it is an error.
    """
    key_lines: dict[KeyPath, int] = {}
    value_lines: dict[KeyPath, int] = {}
    duplicates: list[ConfigProblem] = []
    visited = 0
    loader: yaml.SafeLoader | None = None
    try:
        loader = yaml.SafeLoader(text)
        root = loader.get_single_node()
        if root is None:  # empty, or only comments
            return Located({}, key_lines, value_lines, 1, duplicates)

        def key_of(node: yaml.Node) -> Any:
            key = loader.construct_object(node, deep=True)
            try:
                hash(key)
            except TypeError:
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping", None, "found an unhashable key", node.start_mark
                ) from None
            return key

        def walk(node: yaml.Node, path: KeyPath, active: set[int]) -> None:
            nonlocal visited
            if id(node) in active:  # a recursive alias: nothing sane to record below it
                return
            visited += 1
            if visited > MAX_NODES:
                raise_problems([ConfigProblem(node.start_mark.line + 1, dotted(path), "more than "
                                      f"{MAX_NODES} values once aliases are expanded (an alias "
                                      "bomb?); not a TwinLock config", NO_VALUE, source)])
            if len(path) > MAX_DEPTH:
                raise_problems([ConfigProblem(node.start_mark.line + 1, "", f"nested more than "
                                      f"{MAX_DEPTH} levels deep; not a TwinLock config",
                                      NO_VALUE, source)])
            active = active | {id(node)}
            value_lines[path] = node.start_mark.line + 1
            if isinstance(node, yaml.MappingNode):
                seen: dict[Any, int] = {}
                merges: list[yaml.Node] = []
                for key_node, value_node in node.value:
                    if key_node.tag == _MERGE_TAG:
                        merges.append(value_node)
                        continue
                    key = key_of(key_node)
                    line = key_node.start_mark.line + 1
                    if key in seen:  # reported; its lines still recorded: it is the one kept
                        duplicates.append(ConfigProblem(
                            line, dotted(path + (key,)),
                            f"duplicate key (first set on line {seen[key]}; YAML would keep "
                            "only the last)", NO_VALUE, source,
                        ))
                    seen.setdefault(key, line)
                    key_lines[path + (key,)] = line
                    walk(value_node, path + (key,), active)
                for merged in merges:  # "<<: *defaults": explicit keys win, as in PyYAML
                    sources = merged.value if isinstance(merged, yaml.SequenceNode) else [merged]
                    for source_node in sources:
                        if isinstance(source_node, yaml.MappingNode):
                            for key_node, value_node in source_node.value:
                                key = key_of(key_node)
                                if key not in seen:
                                    seen[key] = key_node.start_mark.line + 1
                                    key_lines[path + (key,)] = seen[key]
                                    walk(value_node, path + (key,), active)
            elif isinstance(node, yaml.SequenceNode):
                for index, item in enumerate(node.value):
                    walk(item, path + (index,), active)

        walk(root, (), set())
        data = loader.construct_document(root)
    except yaml.YAMLError as exc:
        raise_problems([_yaml_problem(exc, source, text)])
    except RecursionError:  # PyYAML composes nested collections recursively
        raise_problems([ConfigProblem(None, "", f"nested too deeply (more than {MAX_DEPTH} levels); not "
                              "a TwinLock config", NO_VALUE, source)])
    finally:
        if loader is not None:
            loader.dispose()
    return Located(data, key_lines, value_lines, root.start_mark.line + 1, duplicates)




# --------------------------------------------------------------------------------------------
# public API


def parse_config(text: str, source: str = "<string>", base_dir: Path | None = None) -> Config:
    """Validate config text. ``source`` names it in messages; relative paths are resolved
    against ``base_dir`` (default: the current directory)."""
    located = _read_yaml(text, source)
    data = located.data
    if data is None:  # a document that is only "~" or "null"
        data = {}
    if not isinstance(data, Mapping):
        raise_problems([ConfigProblem(
            located.root_line, "", "the top level must be a mapping of sections such as "
            "'camera:' and 'action:'", data, source,
        )])
    problems = list(located.duplicates)
    base = (base_dir if base_dir is not None else Path.cwd()).absolute()
    try:
        config = Config.model_validate(data, context={"base_dir": base})
    except ValidationError as exc:
        problems += [problem_from_error(error, located, source, Config) for error in exc.errors()]
        config = None
    reported = {p.path for p in problems}
    for path, message in strict_problems(data, Config, ()):
        if dotted(path) not in reported:  # pydantic already said what is wrong there
            value = value_at(data, path)
            problems.append(ConfigProblem(line_for(path, located), dotted(path), message,
                                          value, source))
    if problems:
        raise_problems(problems)
    assert config is not None
    return config


def load_config(path: Path | str | None = None) -> Config:
    """Read and validate a config file; relative paths in it are relative to its folder.

    ``None`` means ``DEFAULT_CONFIG_PATH``, and only there does a missing file mean the
    defaults: a path the user names must exist.
    """
    path = _named_or_default(path)
    if path is None:
        return Config()
    source = str(path)
    config = parse_config(_read_text(path, source), source, base_dir=path.absolute().parent)
    logger.debug("loaded config from %s", source)
    return config


def _named_or_default(path: Path | str | None) -> Path | None:
    """The file to read; None (use the defaults) only when none is named and the default
    path does not exist."""
    if path is not None:
        return Path(path)
    if DEFAULT_CONFIG_PATH.exists():
        return DEFAULT_CONFIG_PATH
    logger.warning("no %s: using the built-in defaults", DEFAULT_CONFIG_PATH)
    return None


def _read_text(path: Path, source: str) -> str:
    """The file as UTF-8 text, at most MAX_CONFIG_BYTES (checked before reading); ConfigError
    (one line) when it cannot be read as such."""
    try:
        with path.open("rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            data = handle.read(MAX_CONFIG_BYTES + 1)
        if max(size, len(data)) > MAX_CONFIG_BYTES:
            raise_problems([ConfigProblem(None, "", f"{max(size, len(data))} bytes, over the "
                                  f"{MAX_CONFIG_BYTES} byte cap for a config file", NO_VALUE,
                                  source)])
        return data.decode("utf-8")
    except FileNotFoundError:
        raise_problems([ConfigProblem(None, "", "config file not found", NO_VALUE, source)])
    except IsADirectoryError:
        raise_problems([ConfigProblem(None, "", "is a directory, not a config file", NO_VALUE, source)])
    except UnicodeDecodeError as exc:
        raise_problems([ConfigProblem(
            None, "", f"not UTF-8 text (byte {exc.start}: {exc.reason})", NO_VALUE, source
        )])
    except OSError as exc:
        raise_problems([ConfigProblem(
            None, "", f"cannot read: {exc.strerror or exc}", NO_VALUE, source
        )])


class _ActionOnly(BaseModel):
    """The ``action`` section alone; every other section is ignored, however broken."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    action: Annotated[ActionConfig, fill_section("gpio")] = Field(default_factory=GpioActionConfig)


def load_action_config(path: Path | str | None = None) -> ActionConfig:
    """Only the ``action`` section of a config file, for ``twinlockd relay-off``.

    Switching the relay off after a crash must not depend on the model, camera or any other
    section being valid: a config that breaks anywhere else still yields its relay pin. The file
    must still be YAML with a valid ``action`` section (else ConfigError, one line per problem).
    """
    path = _named_or_default(path)
    if path is None:
        return GpioActionConfig()
    source = str(path)
    located = _read_yaml(_read_text(path, source), source)
    data = located.data if isinstance(located.data, Mapping) else {}
    section = data.get("action")
    try:
        only = _ActionOnly.model_validate(
            {"action": section}, context={"base_dir": path.absolute().parent})
    except ValidationError as exc:
        raise_problems([problem_from_error(error, located, source, Config) for error in exc.errors()])
    return only.action


class _AuditOnly(BaseModel):
    """The ``audit`` section alone; every other section is ignored, however broken."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    audit: Annotated[AuditConfig, fill_section()] = Field(default_factory=AuditConfig)


def load_audit_config(path: Path | str | None = None) -> tuple[AuditConfig, ConfigError | None]:
    """Only the ``audit`` section of a config file, for ``twinlockd log``, and what is wrong with
    the rest of the file (None when nothing is).

    A household debugging a broken door must still read its audit log: a camera, model or MQTT
    section that does not validate is returned as a problem to show, not raised. The file must
    still be YAML with a valid ``audit`` section (else ConfigError, one line per problem).
    """
    path = _named_or_default(path)
    if path is None:
        return AuditConfig(), None
    source = str(path)
    text = _read_text(path, source)
    located = _read_yaml(text, source)
    data = located.data if isinstance(located.data, Mapping) else {}
    try:
        only = _AuditOnly.model_validate(
            {"audit": data.get("audit")}, context={"base_dir": path.absolute().parent})
    except ValidationError as exc:
        raise_problems([problem_from_error(error, located, source, Config) for error in exc.errors()])
    try:
        parse_config(text, source, base_dir=path.absolute().parent)
    except ConfigError as exc:
        return only.audit, exc
    return only.audit, None


def dump_defaults() -> str:
    """The defaults as YAML (every key, no comments); ``parse_config`` of it gives ``Config()``."""
    return yaml.safe_dump(_type_first(Config().model_dump(mode="json")), sort_keys=False)


def _type_first(data: Any) -> Any:
    """Put ``type`` first in each section, where a reader looks for it."""
    if not isinstance(data, dict):
        return data
    ordered = {"type": data["type"]} if "type" in data else {}
    ordered.update((key, _type_first(value)) for key, value in data.items() if key != "type")
    return ordered
