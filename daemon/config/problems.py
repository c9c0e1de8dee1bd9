"""Config problems: pydantic's errors and our own checks as ``file:line: key: message`` lines.

A lock's config is edited by hand on a small machine, often over SSH; an error must say where
to look and what was found, in the words of the file (the dotted key path the user wrote, not
pydantic's internal location with union tags and member types), one line per problem.
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel

from ..errors import ConfigError

#: a key path in the parsed document: mapping keys and list indexes
KeyPath = tuple[Any, ...]


class _Missing:
    def __repr__(self) -> str:
        return "<missing>"


#: ``ConfigProblem.value`` when there is no value to show (a missing key, a YAML syntax error)
NO_VALUE: Any = _Missing()


@dataclass(frozen=True)
class ConfigProblem:
    """One thing wrong with a config file, as data (for tools) and as a line (for people)."""

    line: int | None  # 1-based; None when unknown
    path: str  # dotted key path ("camera.fps", "model.runtimes.1"); "" for the whole file
    message: str
    value: Any = NO_VALUE
    source: str = "<string>"
    column: int | None = None  # 1-based; YAML syntax errors only

    def __str__(self) -> str:
        where = self.source
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        text = f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"
        if self.value is not NO_VALUE:
            text += f" (got {_short_repr(self.value)})"
        return text


def _short_repr(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def raise_problems(problems: list[ConfigProblem]) -> typing.NoReturn:
    """ConfigError with every problem, in file order: one line each, and the records."""
    ordered = sorted(problems, key=lambda p: (p.line is None, p.line or 0, p.path))
    records: list[object] = list(ordered)
    raise ConfigError("\n".join(str(p) for p in ordered), records)



@dataclass
class Located:
    """A parsed YAML document and where each key and list item sits in the file."""

    data: Any
    key_lines: dict[KeyPath, int]  # path of a mapping key -> line of that key
    value_lines: dict[KeyPath, int]  # path -> line where its value starts (items included)
    root_line: int
    duplicates: list[ConfigProblem]



def value_at(data: Any, path: KeyPath) -> Any:
    for key in path:
        data = data[key]
    return data


def dotted(path: KeyPath) -> str:
    return ".".join(str(part) for part in path)



# --------------------------------------------------------------------------------------------
# pydantic errors -> problems


def _model_union(annotation: Any) -> dict[str, type[BaseModel]] | None:
    """For a ``type:``-switched field, its tag -> model class; None for any other field."""
    if typing.get_origin(annotation) not in (typing.Union, types.UnionType):
        return None
    members = typing.get_args(annotation)
    if not all(isinstance(m, type) and issubclass(m, BaseModel) for m in members):
        return None
    tags: dict[str, type[BaseModel]] = {}
    for member in members:
        field = member.model_fields.get("type")
        if field is None or not isinstance(field.default, str):
            return None
        tags[field.default] = member
    return tags


def _walk_loc(loc: tuple[Any, ...], root: type[BaseModel]
              ) -> tuple[KeyPath, type[BaseModel] | None, str | None]:
    """Turn pydantic's error location into the key path the user wrote.

    Pydantic puts the union tag into the location (``camera.picamera2.fps``) and, for plain
    unions, the member type (``...device.constrained-int``); neither is a key in the file.
    Also returns the model that holds the last key and, for union sections, the active tag.
    """
    path: list[Any] = []
    model: type[BaseModel] | None = root
    holder: type[BaseModel] | None = root
    tag: str | None = None
    index = 0
    while index < len(loc):
        part = loc[index]
        index += 1
        if model is None:  # below a leaf: list indices stay, union member names go
            if isinstance(part, int):
                path.append(part)
            continue
        path.append(part)
        holder = model
        field = model.model_fields.get(part) if isinstance(part, str) else None
        if field is None:
            model = None
            continue
        annotation = field.annotation
        tags = _model_union(annotation)
        if tags is not None:
            if index < len(loc) and loc[index] in tags:
                tag = loc[index]
                model = tags[tag]
                index += 1
            else:
                model = None
        elif isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model, tag = annotation, None
        else:
            model = None
    return tuple(path), holder, tag


def line_for(path: KeyPath, located: Located) -> int:
    """The key's own line, else its nearest enclosing key that is in the file."""
    for end in range(len(path), 0, -1):
        prefix = path[:end]
        if prefix in located.key_lines:
            return located.key_lines[prefix]
        if prefix in located.value_lines:
            return located.value_lines[prefix]
    return located.root_line


def _in_file(path: KeyPath, located: Located) -> bool:
    return path in located.key_lines or path in located.value_lines


def problem_from_error(error: Mapping[str, Any], located: Located, source: str,
                       root: type[BaseModel]) -> ConfigProblem:
    """One pydantic error of validating ``root`` as a problem at its line in the file."""
    kind = error["type"]
    path, holder, tag = _walk_loc(tuple(error["loc"]), root)
    message = str(error["msg"])
    value: Any = error.get("input", NO_VALUE)
    if kind == "missing":
        value = NO_VALUE
    elif kind == "value_error" and message.startswith("Value error, "):
        message = message[len("Value error, "):]
    elif kind == "extra_forbidden" and holder is not None:
        allowed = sorted(holder.model_fields)
        key = str(path[-1]) if path else ""
        what = f"unknown key for type {tag!r}" if tag else "unknown key"
        message = f"{what}; expected one of: {', '.join(allowed)}"
        close = difflib.get_close_matches(key, allowed, n=1)
        if close:
            message += f" (did you mean {close[0]!r}?)"
    elif kind in ("union_tag_invalid", "union_tag_not_found"):
        ctx = error.get("ctx") or {}
        path = path + ("type",)
        value = ctx.get("tag", NO_VALUE)
        message = f"unknown type; expected one of: {ctx.get('expected_tags', '?')}"
    if isinstance(value, Mapping) or not _in_file(path, located):
        value = NO_VALUE  # a whole section (too long to help), or a default the user never wrote
    return ConfigProblem(line_for(path, located), dotted(path), message, value, source)



# --------------------------------------------------------------------------------------------
# strict scalars


def _scalar_kinds(annotation: Any) -> set[str]:
    """{"bool"}, {"int"} or {"int", "float"} for a plain (optional) scalar field, else empty:
    strings, paths, literals of words, unions with str are left to their own validation."""
    args = typing.get_args(annotation) if typing.get_origin(annotation) in (
        typing.Union, types.UnionType) else (annotation,)
    args = tuple(a for a in args if a is not type(None))
    if typing.get_origin(annotation) is Literal or (len(args) == 1 and
                                                   typing.get_origin(args[0]) is Literal):
        values = typing.get_args(args[0] if args else annotation)
        return {"int"} if values and all(type(v) is int for v in values) else set()
    if args == (bool,):
        return {"bool"}
    if args == (int,):
        return {"int"}
    if args == (float,):
        return {"int", "float"}
    return set()


def _kind_of(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return "text (write a number without quotes)"
    return f"a {type(value).__name__}"


def _scalar_problem(kinds: set[str], value: Any) -> str | None:
    if value is None:
        return None
    if "bool" in kinds:
        return None if isinstance(value, bool) else "expected true or false"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"expected {'a whole number' if kinds == {'int'} else 'a number'}, not " \
            f"{_kind_of(value)}"
    if kinds == {"int"} and isinstance(value, float):
        return "expected a whole number, not a decimal"
    return None


def strict_problems(data: Any, model: type[BaseModel], path: KeyPath) -> list[tuple[KeyPath, str]]:
    """Numbers must be numbers and switches true/false, as written in the file.

    Pydantic's lax mode would take ``pin: true`` as GPIO 1, ``enabled: 1`` or ``"yes"`` as a
    switch and ``"30"`` as a number; in a lock's config each is more likely a mistake than a
    wish. Walks the raw data beside the schema (sections, ``type:``-switched sections)."""
    if not isinstance(data, Mapping):
        return []
    found: list[tuple[KeyPath, str]] = []
    for key, value in data.items():
        field = model.model_fields.get(key) if isinstance(key, str) else None
        if field is None:
            continue
        annotation = field.annotation
        tags = _model_union(annotation)
        if tags is not None:
            default = field.get_default(call_default_factory=True)
            tag = value.get("type", getattr(default, "type", None)) \
                if isinstance(value, Mapping) else None
            if isinstance(tag, str) and tag in tags:
                found += strict_problems(value, tags[tag], path + (key,))
        elif isinstance(annotation, type) and issubclass(annotation, BaseModel):
            found += strict_problems(value, annotation, path + (key,))
        else:
            kinds = _scalar_kinds(annotation)
            problem = _scalar_problem(kinds, value) if kinds else None
            if problem is not None:
                found.append((path + (key,), problem))
    return found


