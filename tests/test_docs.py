"""The documentation site stays true to the code.

- The reference pages are generated from the code (scripts/gen_reference.py): regenerated in
  memory, they must equal the committed pages, so a schema key, an option or an MQTT payload that
  changed without the page being regenerated fails here.
- Every config key of the schema is in the reference and in the commented config.yaml.
- Every `twinlock` / `twinlockd` command written in a shell block of the site or the README names
  a command and options that exist.
- Every message the troubleshooting page starts from is still a message in the code.

The site itself is built by scripts/test.sh (`mkdocs build --strict`, offline).
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import re
import shlex
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"


def _load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_reference",
                                                  REPO / "scripts" / "gen_reference.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gen_reference"] = module
    spec.loader.exec_module(module)
    return module


gen = _load_generator()


# ------------------------------------------------------------------------------------------
# generated pages


def _stale() -> list[str]:
    return [str(page.relative_to(REPO)) for page, (old, new) in gen.regenerate().items()
            if old != new]


def test_generated_pages_are_up_to_date() -> None:
    pages = [p.relative_to(DOCS).as_posix() for p in gen.pages()]
    for expected in ("reference/config.md", "reference/config-yaml.md",
                     "reference/cli-twinlock.md", "reference/cli-twinlockd.md",
                     "reference/mqtt.md", "reference/audit.md"):
        assert expected in pages, f"{expected} lost its generated block"
    assert _stale() == [], "run: python scripts/gen_reference.py (and commit the pages)"


def test_a_new_option_or_config_key_makes_the_pages_stale(monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    """What the check above guards against: the code changes, the page does not."""
    from pydantic import Field, create_model

    from twinlock.daemon import cli as daemon_cli
    from twinlock.daemon.config import schema

    original = daemon_cli.build_parser

    def with_new_option() -> argparse.ArgumentParser:
        parser = original()
        gen.subcommands(parser)["run"].add_argument("--brand-new-option", help="new")
        return parser

    monkeypatch.setattr(daemon_cli, "build_parser", with_new_option)
    assert "reference/cli-twinlockd.md" in " ".join(_stale())
    assert "--brand-new-option" in gen.gen_cli("twinlockd")
    monkeypatch.setattr(daemon_cli, "build_parser", original)

    service = create_model("ServiceConfig", __base__=schema.ServiceConfig,
                           brand_new_key=(int, Field(3, ge=1, le=9, description="new")))
    config = create_model("Config", __base__=schema.Config,
                          service=(service, Field(default_factory=service,
                                                  description="pacing and systemd")))
    monkeypatch.setattr(schema, "Config", config)
    stale = _stale()
    assert any(page.endswith("reference/config.md") for page in stale), stale
    assert "| `service.brand_new_key` | `3` | whole number; 1 ≤ x ≤ 9 | new |" in gen.gen_config()


# ------------------------------------------------------------------------------------------
# config keys: schema, reference, config.yaml


def _section_block(config_text: str, section: str) -> str:
    """The config.yaml text of one top-level section, with its commented examples."""
    match = re.search(rf"^{re.escape(section)}:.*?(?=^[a-z_]+:|\Z)", config_text, re.MULTILINE | re.DOTALL)
    return match.group(0) if match else ""


def missing_keys(keys: list[tuple[str, str | None, str]], reference: str,
                 config_text: str) -> list[str]:
    """Keys (section, kind, dotted key) absent from the reference page or config.yaml."""
    missing = []
    for section, kind, key in keys:
        full = f"{section}.{key}" if section else key
        if f"`{full}`" not in reference:
            missing.append(f"{full}: not in docs/reference/config.md")
        block = _section_block(config_text, section or key.split(".")[0])
        if kind is not None and not re.search(rf"type: {re.escape(kind)}\b", block):
            missing.append(f"{section}.type: {kind}: not shown in config.yaml")
        position = 0
        for part in key.split("."):
            found = re.compile(rf"^[#\s]*{re.escape(part)}:", re.MULTILINE).search(block, position)
            if found is None:
                missing.append(f"{full} ({kind or 'any kind'}): not in config.yaml")
                break
            position = found.end()
    return missing


def test_every_schema_key_is_in_the_reference_and_in_config_yaml() -> None:
    keys = [(section, kind, key) for section, kind, key, _ in gen.config_keys()]
    assert len(keys) > 100
    assert ("camera", "replay", "source") in keys and ("action", "command", "argv") in keys
    reference = (DOCS / "reference" / "config.md").read_text(encoding="utf-8")
    config_text = (REPO / "config.yaml").read_text(encoding="utf-8")
    assert missing_keys(keys, reference, config_text) == []


def test_the_key_check_finds_a_missing_key() -> None:
    reference = (DOCS / "reference" / "config.md").read_text(encoding="utf-8")
    config_text = (REPO / "config.yaml").read_text(encoding="utf-8")
    assert missing_keys([("service", None, "no_such_key")], reference, config_text) == [
        "service.no_such_key: not in docs/reference/config.md",
        "service.no_such_key (any kind): not in config.yaml"]
    # a key of one section is not found in another's block
    assert missing_keys([("lockout", None, "max_fps")], "`lockout.max_fps`", config_text) == [
        "lockout.max_fps (any kind): not in config.yaml"]


# ------------------------------------------------------------------------------------------
# shell commands on the pages

SHELL_LANGS = ("bash", "console", "sh", "shell")
_FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<lang>[\w-]*)[^\n]*\n(?P<body>.*?)^(?P=indent)```",
                    re.MULTILINE | re.DOTALL)


def shell_commands(text: str) -> list[str]:
    """The commands in a page's ```bash / ```console blocks (console: the lines after `$ `),
    with backslash continuations joined."""
    commands = []
    for block in _FENCE.finditer(text):
        if block.group("lang") not in SHELL_LANGS:
            continue
        indent = len(block.group("indent"))
        lines = [line[indent:] for line in block.group("body").splitlines()]
        if block.group("lang") == "console":  # typed lines and their continuations only
            typed: list[str] = []
            for line in lines:
                if line.startswith("$ "):
                    typed.append(line[2:])
                elif typed and typed[-1].endswith("\\"):
                    typed.append(line)
            lines = typed
        joined = "\n".join(lines).replace("\\\n", " ")
        commands += [line for line in joined.splitlines() if line.strip()]
    return commands


def _invocations(command: str) -> list[tuple[str, list[str]]]:
    """(program, arguments) of each twinlock / twinlockd run in one shell line."""
    try:
        tokens = shlex.split(command, comments=True)
    except ValueError:
        return []
    out = []
    segment: list[str] = []
    for token in [*tokens, "&&"]:
        if token in ("&&", "||", ";", "|"):
            while segment and (segment[0] in ("sudo", "exec", "time")
                               or re.match(r"^[A-Z_]+=", segment[0])):
                segment.pop(0)
            if segment and Path(segment[0]).name in ("twinlock", "twinlockd"):
                out.append((Path(segment[0]).name, segment[1:]))
            segment = []
        else:
            segment.append(token)
    return out


def check_invocation(program: str, args: list[str],
                     parsers: dict[str, argparse.ArgumentParser]) -> list[str]:
    """What is wrong with ``program args``: an unknown command, option or choice."""
    parser = parsers[program]
    args = [a.strip("[]") for a in args if a.strip("[]") and a not in ("...", "…")]
    global_options = gen.option_strings(parser)
    while args and args[0].startswith("-"):
        if args[0].split("=")[0] not in global_options:
            return [f"{program}: no option {args[0]}"]
        args.pop(0)
    if not args:
        return []
    subs = gen.subcommands(parser)
    if args[0] not in subs:
        return [f"{program}: no command {args[0]!r}"]
    sub = subs[args[0]]
    problems = []
    options = gen.option_strings(sub) | global_options
    for token in args[1:]:
        is_option = token.startswith("-") and not re.match(r"^-\d", token) and token != "-"
        if is_option and token.split("=")[0] not in options:
            problems.append(f"{program} {args[0]}: no option {token}")
    positional = [a for a in sub._actions if not a.option_strings]
    first = next((t for t in args[1:] if not t.startswith("-")), None)
    if positional and positional[0].choices is not None and first is not None \
            and first not in positional[0].choices:
        problems.append(f"{program} {args[0]}: {first!r} is not one of "
                        f"{', '.join(positional[0].choices)}")
    return problems


def _site_pages() -> list[Path]:
    return sorted(DOCS.rglob("*.md")) + [REPO / "README.md"]


def test_shell_commands_on_the_pages_name_commands_and_options_that_exist() -> None:
    parsers = gen.parsers()
    problems = []
    seen = 0
    for page in _site_pages():
        for command in shell_commands(page.read_text(encoding="utf-8")):
            for program, args in _invocations(command):
                seen += 1
                problems += [f"{page.relative_to(REPO)}: {command.strip()}: {p}"
                             for p in check_invocation(program, args, parsers)]
    assert seen > 30, "the pages show the commands a household runs"
    assert problems == []


@pytest.mark.parametrize(("line", "problem"), [
    ("twinlockd frobnicate", "twinlockd: no command 'frobnicate'"),
    ("sudo /opt/twinlock/venv/bin/twinlockd log --sinse 1d", "twinlockd log: no option --sinse"),
    ("twinlock bundle --model m --key k --out o --sign-twice", ("twinlock bundle: no option "
     "--sign-twice")),
    ("cd x && twinlock users purge", "twinlock users: 'purge' is not one of"),
])
def test_the_command_check_finds_what_does_not_exist(line: str, problem: str) -> None:
    text = f"```bash\n{line}   # a comment\n```\n"
    found = [p for command in shell_commands(text) for program, args in _invocations(command)
             for p in check_invocation(program, args, gen.parsers())]
    assert len(found) == 1 and found[0].startswith(problem), found


def test_console_blocks_check_only_the_typed_commands() -> None:
    text = ("```console\n$ twinlockd log --since 5m\n2026-12-06 08:00:00  unlock  alice\n"
            "$ twinlock users list \\\n    --json\n```\n")
    assert shell_commands(text) == ["twinlockd log --since 5m", "twinlock users list      --json"]


# ------------------------------------------------------------------------------------------
# troubleshooting: the messages are the code's


def _source_messages() -> list[str]:
    """Every string literal in daemon/, trainer/ and deploy/, with run-time parts as `…`."""
    texts = []
    for path in sorted([*REPO.glob("daemon/**/*.py"), *REPO.glob("trainer/**/*.py")]):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.Constant, ast.JoinedStr, ast.BinOp)):
                text = gen._literal_text(node)
                if text:
                    texts.append(re.sub(r"%[-+ #0-9.]*[sdfrxg]", "…", text))
    for path in sorted(REPO.glob("deploy/*.sh")):
        texts.append(path.read_text(encoding="utf-8"))
    return texts


def message_in_code(message: str, texts: list[str]) -> bool:
    pattern = re.compile(".*".join(re.escape(part) for part in message.split("…")), re.DOTALL)
    return any(pattern.search(text) for text in texts)


def test_troubleshooting_starts_from_messages_the_code_prints() -> None:
    page = (DOCS / "guide" / "troubleshooting.md").read_text(encoding="utf-8")
    messages = re.findall(r"^### `(.+)`$", page, re.MULTILINE)
    assert len(messages) >= 20
    texts = _source_messages()
    assert [m for m in messages if not message_in_code(m, texts)] == []
    assert not message_in_code("the door exploded: …", texts)


# ------------------------------------------------------------------------------------------
# the README: what TwinLock is, one picture, the two commands, links into the site


def readme_problems(text: str) -> list[str]:
    """What keeps the README from fitting on a screen and pointing into the site."""
    problems = []
    lines = text.splitlines()
    if len(lines) > 150:
        problems.append(f"README.md has {len(lines)} lines (at most 150)")
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"^[a-z]+:", target) or target.startswith("#"):
            continue
        if not (REPO / target.split("#")[0]).exists():
            problems.append(f"README.md links to {target}, which does not exist")
    if "bash scripts/demo.sh" not in text or "bash scripts/test.sh" not in text:
        problems.append("README.md lost the two commands")
    return problems


def test_the_readme_fits_on_a_screen_and_links_into_the_site() -> None:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert readme_problems(text) == []
    linked = set(re.findall(r"\]\((docs/[^)#\s]+\.md)", text))
    assert {"docs/getting-started/buy.md", "docs/getting-started/wiring.md",
            "docs/guide/troubleshooting.md", "docs/reference/config.md"} <= linked
    assert re.search(r"!\[[^\]]+\]\(docs/img/[^)]+\.svg\)", text), "one picture"


def test_the_readme_check_finds_a_long_readme_and_a_broken_link() -> None:
    text = "bash scripts/demo.sh\nbash scripts/test.sh\n[gone](docs/no-such-page.md)\n" + \
        "x\n" * 150
    assert readme_problems(text) == ["README.md has 153 lines (at most 150)",
                                      ("README.md links to docs/no-such-page.md, which does "
                                      "not exist")]
