"""The daemon runs on a Pi without TensorFlow: importing any of its modules must not pull it in.

Each check imports every module under ``daemon/`` in a fresh interpreter (this test process may
already hold TensorFlow from other tests) and looks at ``sys.modules`` afterwards. The one-way
rule ``trainer -> daemon`` is checked the same way, and statically, since an import inside a
function only shows up in ``sys.modules`` when that function runs.

The floors of docs/ARCHITECTURE.md are checked statically too: each package imports only the
floors below it, no two modules and no two packages of daemon/ and trainer/ import each other
(directly or round a longer circle), and no private name is taken from another package. Every
check has a probe that plants a lazy import and shows the check catches it.
"""

from __future__ import annotations

import ast
import functools
import json
import subprocess
import sys
from collections.abc import Callable
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


# -- floors: the layer contracts of docs/ARCHITECTURE.md, and no import cycles ---------------------
#
# Static, over every import statement of daemon/ and trainer/ (lazy imports inside functions and
# TYPE_CHECKING blocks included): an import a test run never executes is still a dependency a
# reader has to follow. A package's "unit" is its first part under twinlock.daemon or
# twinlock.trainer: ``daemon.faces``, ``daemon.errors`` (a module at the top counts as its own
# unit), ``trainer.stats``.

REPO = DAEMON_DIR.parent
TOPS = ("daemon", "trainer")

#: what a unit may import from its own program (daemon units: from daemon/; trainer units: from
#: trainer/; the trainer may use any public daemon module). ARCHITECTURE.md's "Packages as floors".
DAEMON_LAYERS: dict[str, set[str]] = {
    "daemon.errors": set(),  # the exception tree: the ground
    "daemon.runtime": {"daemon.errors"},  # LiteRT, below faces and recognition
    "daemon.storage": {"daemon.errors"},
    "daemon.processes": {"daemon.errors"},
    "daemon.config": {"daemon.errors"},
    "daemon.faces": {"daemon.errors", "daemon.runtime", "daemon.storage"},
    # door -> recognition -> faces: recognition never reaches back up to the door
    "daemon.recognition": {"daemon.errors", "daemon.runtime", "daemon.storage", "daemon.faces"},
    # the review record format and the door's writer: read by the household, fed by the door
    "daemon.review": {"daemon.errors", "daemon.storage", "daemon.faces"},
}
#: every trainer unit says its floor (a new package must be placed here and in ARCHITECTURE.md)
TRAINER_LAYERS: dict[str, set[str]] = {
    "trainer.errors": set(),
    "trainer.stats": set(),  # metrics and plots: the ground floor
    "trainer.data": set(),
    "trainer.training": {"trainer.data", "trainer.stats"},
    "trainer.household": {"trainer.errors", "trainer.data", "trainer.stats", "trainer.training"},
    "trainer.evaluation": {"trainer.errors", "trainer.data", "trainer.stats", "trainer.training",
                           "trainer.household"},
    # the household page: a thin layer over the household's own functions (no TensorFlow)
    "trainer.web": {"trainer.errors", "trainer.household"},
    "trainer.cli": {"trainer.errors", "trainer.data", "trainer.stats", "trainer.training",
                    "trainer.household", "trainer.evaluation", "trainer.web"},
}
#: door/machine.py is the pure decision machine: it decides, it does nothing, so it imports none
#: of the parts that act or read files
MACHINE = "twinlock.daemon.door.machine"
MACHINE_MUST_NOT_IMPORT = ("daemon.config", "daemon.camera", "daemon.storage", "daemon.bundle",
                           "daemon.processes", "daemon.runtime", "daemon.cli",
                           "twinlock.daemon.door.service", "twinlock.daemon.door.actions",
                           "twinlock.daemon.door.mqtt", "twinlock.daemon.door.notify")
#: known violations, each an exact (importer, imported) module pair, excused until the named work
#: lands; any other import that breaks a contract fails, and an entry that no longer occurs fails
#: too (delete it then)
PENDING: dict[tuple[str, str], str] = {}

Sources = dict[str, tuple[Path, str]]  # module name -> (path under the repository, source text)
Edges = dict[str, dict[str, int]]  # module -> {module it imports: line of the first import}


def _real_sources() -> Sources:
    sources: Sources = {}
    for top in TOPS:
        for path in sorted((REPO / top).rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            relative = path.relative_to(REPO)
            sources[_module_name(relative)] = (relative, path.read_text())
    return sources


def _module_name(relative: Path) -> str:
    """``daemon/faces/pipeline.py`` -> ``twinlock.daemon.faces.pipeline`` (a package's
    ``__init__.py`` is the package)."""
    parts = relative.with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(("twinlock", *parts))


def _unit(module: str) -> str:
    """``twinlock.daemon.faces.pipeline`` -> ``daemon.faces``; ``twinlock.daemon`` -> ``daemon``."""
    return ".".join(module.split(".")[1:3])


@functools.lru_cache(maxsize=1024)  # the probes below re-read one changed module each
def _imported_names(source: str, relative: Path) -> list[tuple[int, str]]:
    """(line, most specific absolute name) per imported alias, lazy imports included:
    ``from . import types`` in faces/ names ``twinlock.daemon.faces.types``."""
    package = ("twinlock", *relative.parent.parts)
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source, filename=str(relative))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: max(1, len(package) - (node.level - 1))] if node.level else ()
            module = ".".join((*base, *([node.module] if node.module else [])))
            found += [(node.lineno, module if alias.name == "*" else f"{module}.{alias.name}")
                      for alias in node.names]
    return found


def _edges(sources: Sources) -> Edges:
    """Module -> modules of daemon/ and trainer/ it imports (each name resolved to the longest
    module that exists: ``...faces.Face`` is the faces package, ``...faces.types`` its module)."""
    edges: Edges = {}
    for name, (relative, source) in sources.items():
        out = edges.setdefault(name, {})
        for line, imported in _imported_names(source, relative):
            parts = imported.split(".")
            target = next((".".join(parts[:i]) for i in range(len(parts), 1, -1)
                           if ".".join(parts[:i]) in sources), None)
            if target is not None and target != name:
                out.setdefault(target, line)
    return edges


def _where(sources: Sources, module: str, line: int) -> str:
    return f"{sources[module][0]}:{line}"


def _layer_offences(sources: Sources, edges: Edges) -> list[str]:
    """Imports that break a contract above, less the PENDING ones."""
    layers = DAEMON_LAYERS | TRAINER_LAYERS
    offences = []
    for module, targets in sorted(edges.items()):
        unit = _unit(module)
        for target, line in sorted(targets.items()):
            if (module, target) in PENDING:
                continue
            other = _unit(target)
            top = unit.split(".")[0]
            # the program's own __init__ (a docstring) is no floor; the other program is not
            # these contracts' business (the daemon never imports the trainer: tests above)
            same_program = other.split(".")[0] == top and other != top
            if unit in layers and other != unit and same_program and other not in layers[unit]:
                offences.append(f"{_where(sources, module, line)}: {unit} imports {other} "
                                f"({target}); it may import only {sorted(layers[unit])}")
            if module == MACHINE and (other in MACHINE_MUST_NOT_IMPORT
                                      or target in MACHINE_MUST_NOT_IMPORT):
                offences.append(f"{_where(sources, module, line)}: the pure DoorMachine imports "
                                f"{target}")
    return offences


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one member (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def _module_cycles(sources: Sources, edges: Edges) -> list[str]:
    graph = {m: {t for t in ts if (m, t) not in PENDING} for m, ts in edges.items()}
    return [_explain(sources, edges, set(c), lambda m: m) for c in _cycles(graph)]


def _package_cycles(sources: Sources, edges: Edges) -> list[str]:
    graph: dict[str, set[str]] = {}
    for module, targets in edges.items():
        for target in targets:
            if (module, target) not in PENDING and _unit(target) != _unit(module):
                graph.setdefault(_unit(module), set()).add(_unit(target))
    return [_explain(sources, edges, set(c), _unit) for c in _cycles(graph)]


def _explain(sources: Sources, edges: Edges, cycle: set[str], key: Callable[[str], str]) -> str:
    """The imports that close a cycle, one ``file:line: a -> b`` each."""
    lines = [f"{_where(sources, m, line)}: {m} -> {t}"
             for m, targets in sorted(edges.items()) for t, line in sorted(targets.items())
             if (m, t) not in PENDING and key(m) in cycle and key(t) in cycle and key(m) != key(t)]
    return f"cycle between {sorted(cycle)}:\n  " + "\n  ".join(lines)


@pytest.fixture(scope="module")
def real_sources() -> Sources:
    return _real_sources()


def test_the_layer_contracts_hold(real_sources: Sources) -> None:
    offences = _layer_offences(real_sources, _edges(real_sources))
    assert not offences, "imports against the floors of docs/ARCHITECTURE.md:\n" + "\n".join(
        offences)


def test_no_import_cycle_between_modules(real_sources: Sources) -> None:
    cycles = _module_cycles(real_sources, _edges(real_sources))
    assert not cycles, "\n".join(cycles)


def test_no_import_cycle_between_packages(real_sources: Sources) -> None:
    cycles = _package_cycles(real_sources, _edges(real_sources))
    assert not cycles, "\n".join(cycles)


def test_every_pending_exception_still_occurs(real_sources: Sources) -> None:
    """An excused import that is gone must leave PENDING, or it would excuse its comeback."""
    edges = _edges(real_sources)
    gone = [f"{a} -> {b} ({why})" for (a, b), why in PENDING.items() if b not in edges.get(a, {})]
    assert not gone, "no longer imported; delete from PENDING:\n" + "\n".join(gone)


def test_every_trainer_package_has_a_floor(real_sources: Sources) -> None:
    units = {_unit(m) for m in real_sources if m.startswith("twinlock.trainer.")}
    assert units - set(TRAINER_LAYERS) == set(), "place these in TRAINER_LAYERS and ARCHITECTURE.md"
    assert set(DAEMON_LAYERS) <= {_unit(m) for m in real_sources}, "a contract names no package"


def _with_lazy_import(sources: Sources, module: str, target: str) -> Sources:
    """``sources`` with a function in ``module`` that imports ``target`` (twinlock.x.y...)."""
    relative, text = sources[module]
    depth = len(relative.parent.parts)  # daemon/faces/x.py: 2 -> "from .." reaches daemon/
    head, _, last = target.removeprefix("twinlock.").partition(".")[2].rpartition(".")
    statement = f"from {'.' * depth}{head} import {last}"
    return sources | {module: (relative, text + f"\n\ndef _probe():\n    {statement}\n")}


def _contract_probes() -> list[tuple[str, str]]:
    """(unit, a unit it must not import) for every contract: each must be caught."""
    units = {_unit(m) for m in _real_sources()}
    probes = []
    for unit, allowed in (DAEMON_LAYERS | TRAINER_LAYERS).items():
        top = unit.split(".")[0]
        probes += [(unit, other) for other in sorted(units - allowed - {unit, top})
                   if other.split(".")[0] == top]
    return probes


@pytest.mark.parametrize(("unit", "other"), _contract_probes())
def test_each_contract_catches_a_lazy_import_upwards(
    real_sources: Sources, unit: str, other: str
) -> None:
    module = next(m for m in sorted(real_sources) if _unit(m) == unit)
    inside = [m for m in sorted(real_sources) if _unit(m) == other and m != f"twinlock.{other}"]
    target = inside[0] if inside else f"twinlock.{other}"  # a module of that package, or itself
    probed = _with_lazy_import(real_sources, module, target)
    offences = _layer_offences(probed, _edges(probed))
    assert [o for o in offences if f"({target})" in o and o.startswith(
        str(real_sources[module][0]))], f"{module} importing {target} was not caught: {offences}"


def test_a_pending_exception_excuses_only_its_own_import(real_sources: Sources) -> None:
    """config/schema.py's excused imports do not excuse a new one from config/, nor a new
    upward import in schema.py itself."""
    loader = _with_lazy_import(real_sources, "twinlock.daemon.config.loader",
                               "twinlock.daemon.door.liveness")
    schema = _with_lazy_import(real_sources, "twinlock.daemon.config.schema",
                               "twinlock.daemon.recognition.model")
    for probed, where in ((loader, "daemon/config/loader.py"), (schema, "daemon/config/schema.py")):
        offences = _layer_offences(probed, _edges(probed))
        assert [o for o in offences if o.startswith(where)], offences
    machine = _with_lazy_import(real_sources, MACHINE, "twinlock.daemon.door.actions")
    assert [o for o in _layer_offences(machine, _edges(machine)) if "DoorMachine" in o]


@pytest.mark.parametrize("top", TOPS)
def test_the_cycle_checks_catch_a_lazy_import_back(real_sources: Sources, top: str) -> None:
    """Close a cycle with a lazy import against a real edge: between two modules of one package,
    and between two packages."""
    edges = _edges(real_sources)
    real = [(m, t) for m, ts in sorted(edges.items()) for t in sorted(ts)
            if m.startswith(f"twinlock.{top}.") and t.startswith(f"twinlock.{top}.")
            and (m, t) not in PENDING]
    a, b = next((m, t) for m, t in real if _unit(m) == _unit(t) and m.count(".") == t.count("."))
    probed = _with_lazy_import(real_sources, b, a)
    assert any(a in c and b in c for c in _module_cycles(probed, _edges(probed))), (a, b)
    a, b = next((m, t) for m, t in real if _unit(m) != _unit(t) and _unit(t) != top)
    probed = _with_lazy_import(real_sources, b, a)
    cycles = _package_cycles(probed, _edges(probed))
    assert any(f"'{_unit(a)}'" in c and f"'{_unit(b)}'" in c for c in cycles), (a, b, cycles)


def _private_imports_across_packages(sources: Sources) -> list[str]:
    """``file:line: name`` for each private (``_name``) module or name imported from another
    unit; inside one package, helpers may share private names."""
    offences = []
    for name, (relative, source) in sorted(sources.items()):
        for line, imported in _imported_names(source, relative):
            parts = imported.split(".")
            if parts[0] != "twinlock" or _unit(imported) == _unit(name):
                continue
            if any(part.startswith("_") and part != "__init__" for part in parts[2:]):
                offences.append(f"{relative}:{line}: {imported}")
    return offences


def test_no_private_name_is_taken_across_packages(real_sources: Sources) -> None:
    offences = _private_imports_across_packages(real_sources)
    assert not offences, "private names imported from another package:\n" + "\n".join(offences)


def test_the_private_name_check_sees_lazy_and_relative_imports(real_sources: Sources) -> None:
    probed = _with_lazy_import(real_sources, "twinlock.trainer.evaluation.door_eval",
                               "twinlock.trainer.household.enroll._Kept")
    probed = _with_lazy_import(probed, "twinlock.daemon.recognition.model",
                               "twinlock.daemon.faces._secret")
    probed = _with_lazy_import(probed, "twinlock.daemon.faces.pipeline",
                               "twinlock.daemon.faces.types._own_package")
    offences = _private_imports_across_packages(probed)
    assert [o.split(": ")[1] for o in offences] == [
        "twinlock.daemon.faces._secret", "twinlock.trainer.household.enroll._Kept"]


def test_every_package_on_disk_is_in_the_wheel(real_sources: Sources) -> None:
    """A package missing from pyproject.toml's list is left out of the wheel without a word."""
    import tomllib

    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"][
        "packages"])
    on_disk = {m for m, (relative, _) in real_sources.items() if relative.name == "__init__.py"}
    assert on_disk - listed == set()
