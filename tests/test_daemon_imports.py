"""The daemon runs on a Pi without TensorFlow: importing any of its modules must not pull it in.

Each check imports every module under ``daemon/`` in a fresh interpreter (this test process may
already hold TensorFlow from other tests) and looks at ``sys.modules`` afterwards. The one-way
rule ``trainer -> daemon`` is checked the same way, and statically, since an import inside a
function only shows up in ``sys.modules`` when that function runs.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

DAEMON_DIR = Path(__file__).resolve().parents[1] / "daemon"
FORBIDDEN = ("tensorflow", "keras", "tf_keras", "twinlock.trainer")

#: runs in the child: import every module, recording after which import a forbidden one appeared
CHILD = """
import importlib, json, pkgutil, sys
FORBIDDEN = {forbidden!r}

def loaded():
    return sorted(m for m in sys.modules if any(m == f or m.startswith(f + ".") for f in FORBIDDEN))

import twinlock.daemon as package
imported, culprits, errors = [], {{}}, {{}}
before = set(loaded())
def walk_error(name):
    errors[name] = "walk_packages could not import it"

walked = pkgutil.walk_packages(package.__path__, package.__name__ + ".", onerror=walk_error)
names = [package.__name__] + [info.name for info in walked]
for name in names:
    try:
        importlib.import_module(name)
    except Exception as exc:
        errors[name] = f"{{type(exc).__name__}}: {{exc}}"
        continue
    imported.append(name)
    new = set(loaded()) - before
    if new:
        culprits[name] = sorted(new)
        before |= new
print(json.dumps({{"imported": imported, "errors": errors, "culprits": culprits,
                  "forbidden": loaded()}}))
"""


@pytest.fixture(scope="module")
def child_report() -> dict[str, object]:
    """Import the whole daemon package once in a fresh interpreter and report what it loaded."""
    code = CHILD.format(forbidden=FORBIDDEN)
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def _module_files() -> list[Path]:
    return sorted(p for p in DAEMON_DIR.rglob("*.py") if "__pycache__" not in p.parts)


def _expected_modules() -> set[str]:
    """Module names for every .py file under daemon/, as installed under twinlock.daemon."""
    names = set()
    for path in _module_files():
        parts = path.relative_to(DAEMON_DIR).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names.add(".".join(("twinlock", "daemon", *parts)))
    return names


def test_every_daemon_module_imports(child_report: dict[str, object]) -> None:
    assert child_report["errors"] == {}, child_report["errors"]
    imported = set(child_report["imported"])  # type: ignore[arg-type]
    # the walk really reached the modules on disk (a package missing an __init__.py would not be)
    missing = _expected_modules() - imported
    assert not missing, f"modules on disk that the package walk did not import: {sorted(missing)}"
    assert {"twinlock.daemon.runtime", "twinlock.daemon.faces.blazeface"} <= imported


def test_importing_the_daemon_loads_no_tensorflow_or_keras(
    child_report: dict[str, object],
) -> None:
    culprits = child_report["culprits"]
    forbidden = child_report["forbidden"]
    heavy = [m for m in forbidden if not m.startswith("twinlock.trainer")]  # type: ignore[union-attr]
    assert not heavy, f"daemon import pulled in {heavy[:5]}...; first seen after: {culprits}"


def test_importing_the_daemon_loads_no_trainer(child_report: dict[str, object]) -> None:
    forbidden = child_report["forbidden"]
    trainer = [m for m in forbidden if m.startswith("twinlock.trainer")]  # type: ignore[union-attr]
    assert not trainer, f"daemon imports the trainer: {trainer}; after: {child_report['culprits']}"


def _imports_of(source: str, relative: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import statement, lazy ones included.

    ``relative`` is the file's path under daemon/, needed to resolve ``from ..x import y``.
    """
    tree = ast.parse(source, filename=str(relative))
    package = ("twinlock", "daemon", *relative.parent.parts)
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: max(1, len(package) - (node.level - 1))] if node.level else ()
            module = ".".join((*base, *([node.module] if node.module else [])))
            found.append((node.lineno, module))
            found += [(node.lineno, f"{module}.{alias.name}") for alias in node.names]
    return found


def _is_forbidden(module: str) -> bool:
    return module.split(".")[0] in ("tensorflow", "keras", "tf_keras", "trainer") or (
        module == "twinlock.trainer" or module.startswith("twinlock.trainer.")
    )


def test_no_import_statement_reaches_trainer_or_tensorflow() -> None:
    """Static check: catches imports inside functions, which the runtime check cannot see.

    The LiteRT fallback to ``tensorflow.lite`` goes through ``importlib`` with a string on
    purpose, so it is not an import statement and is allowed.
    """
    offences = []
    for path in _module_files():
        relative = path.relative_to(DAEMON_DIR)
        for line, module in _imports_of(path.read_text(), relative):
            if _is_forbidden(module):
                offences.append(f"daemon/{relative}:{line}: {module}")
    assert not offences, "daemon must not import these:\n" + "\n".join(offences)


def test_static_check_sees_relative_and_lazy_imports() -> None:
    """The static check itself must catch these, or the test above could never fail."""
    source = (
        "from . import types\n"
        "def f():\n"
        "    from ...trainer import datasets\n"
        "    import tensorflow as tf\n"
        "    from keras import layers\n"
    )
    modules = [m for _, m in _imports_of(source, Path("faces") / "probe.py")]
    assert "twinlock.daemon.faces.types" in modules
    assert "twinlock.trainer.datasets" in modules
    assert [m for m in modules if _is_forbidden(m)] == [
        "twinlock.trainer", "twinlock.trainer.datasets", "tensorflow", "keras", "keras.layers"
    ]
    top_level = [m for _, m in _imports_of("from ..trainer import cli\n", Path("x.py"))]
    assert "twinlock.trainer.cli" in top_level


TRAINER_DIR = DAEMON_DIR.parent / "trainer"


def _private_daemon_imports(source: str, where: str) -> list[str]:
    """``where:line: name`` for each import of a private (``_``) daemon module or name."""
    offences = []
    for node in ast.walk(ast.parse(source, filename=where)):
        if not isinstance(node, ast.ImportFrom) or node.level or not node.module:
            continue
        if not node.module.startswith("twinlock.daemon"):
            continue
        names = [*node.module.split(".")[2:], *(alias.name for alias in node.names)]
        if any(name.startswith("_") for name in names):
            offences.append(f"{where}:{node.lineno}: from {node.module} import "
                            f"{', '.join(alias.name for alias in node.names)}")
    return offences


def test_the_trainer_uses_only_the_daemons_public_names() -> None:
    """The arrow trainer -> daemon goes through public modules and names: a private helper of
    the door can change without breaking the host side."""
    offences = []
    for path in sorted(TRAINER_DIR.rglob("*.py")):
        offences += _private_daemon_imports(path.read_text(), str(path.relative_to(TRAINER_DIR)))
    assert not offences, "the trainer imports private daemon code:\n" + "\n".join(offences)


def test_the_public_name_check_sees_private_imports() -> None:
    source = ("from twinlock.daemon.door.service import _pick_up\n"
              "def f():\n    from twinlock.daemon._secret import x\n"
              "from twinlock.daemon.recognition.model import FaceEmbedder\n")
    found = _private_daemon_imports(source, "probe.py")
    assert [line.split(":")[1] for line in found] == ["1", "3"]
