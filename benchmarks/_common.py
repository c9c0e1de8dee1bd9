"""What the benchmark scripts share: where data and models are, timing summaries, the report's
header and environment block, warm-up, and printing the JSON.

Why one module: the scripts' reports are compared with each other and across runs, so a field
such as ``median_ms`` or ``environment.load_average`` must mean the same thing in each; written
once here, a fix reaches all of them.

The scripts run as ``python benchmarks/X.py``; each puts this folder on ``sys.path`` before
importing this module, so that works from any working directory, and imports it whole
(``import _common as common``; ``common.timing(...)``), so a script's header does not repeat a
list of names that every other script repeats too.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, TypeVar

import cv2
import numpy as np

T = TypeVar("T")

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = REPO / "models" / "default"
VIDEO_SUBPATH = ("face_recognition_examples", "short_hamilton_clip.mp4")
FRAME_SIZE = (640, 480)  # width, height: a door camera's resolution, the budget's frame size


def data_root(arg: str | None) -> Path:
    """--data, else $TWINLOCK_DATA, else ../shared/data beside the repository (as the tests)."""
    if arg:
        return Path(arg)
    env = os.environ.get("TWINLOCK_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data"


def make_parser(doc: str) -> argparse.ArgumentParser:
    """A parser described by the script docstring's first paragraph, with ``--data`` first
    (every script reads the data folder) and the help text of :func:`data_root`'s fallbacks."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--data", help="data folder (default: $TWINLOCK_DATA or ../shared/data)")
    return parser


def add_model_option(parser: argparse.ArgumentParser, what: str = "exported model folder") -> None:
    """``--model DIR``, defaulting to the model the door ships (:data:`DEFAULT_MODEL`)."""
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL,
                        help=f"{what} (default: models/default)")


def add_json_option(parser: argparse.ArgumentParser) -> None:
    """``--json OUT``, read by :func:`main` to write the report beside printing it."""
    parser.add_argument("--json", type=Path, help="also write the JSON report to this file")


def timing(seconds: Iterable[float], *,
           extreme: Literal["min", "max"] = "min") -> dict[str, float | int]:
    """Summary of per-call times in milliseconds: n, median, p90, mean and one extreme.

    ``min`` (the default) is the best case a call can reach; ``max`` suits a long-running
    process where the worst frame matters (daemon.py), and is reported as ``max_ms``.
    """
    ms = np.asarray(list(seconds), dtype=np.float64) * 1000.0
    if ms.size == 0:
        return {"n": 0}
    return {
        "n": int(ms.size),
        "median_ms": round(float(np.median(ms)), 3),
        "p90_ms": round(float(np.percentile(ms, 90)), 3),
        "mean_ms": round(float(ms.mean()), 3),
        f"{extreme}_ms": round(float(ms.min() if extreme == "min" else ms.max()), 3),
    }


def progress(items: Iterable[T], desc: str, total: int | None = None) -> Iterable[T]:
    """tqdm on stderr when installed (long runs show progress), plain iteration otherwise.

    stderr, so the JSON on stdout stays clean; ``total`` for generators tqdm cannot size.
    """
    try:
        from tqdm import tqdm
    except ImportError:
        return items
    return tqdm(items, desc=desc, total=total, file=sys.stderr, leave=False, mininterval=1.0)


def warm_up(calls: Iterable[Callable[[], object]], times: int) -> None:
    """Run each call ``times`` times in turn, untimed: first calls pay one-off costs (delegate
    creation, allocations, caches) that a running door pays once, not per frame."""
    for call in calls:
        for _ in range(times):
            call()


def report_header(benchmark: str, data: Path | None = None) -> dict[str, Any]:
    """The keys every report starts with: which benchmark, when, how it was called, and (when
    given) the data folder, so a saved JSON file says how to reproduce it."""
    header: dict[str, Any] = {
        "benchmark": benchmark,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
    }
    if data is not None:
        header["data"] = str(data)
    return header


def environment(*, load_average: bool = True, packages: Mapping[str, str] | None = None,
                variables: Sequence[str] = ()) -> dict[str, Any]:
    """Where the numbers came from; the load average says how busy the shared machine was.

    ``packages`` maps a report key to a distribution whose version is reported (None when it
    is not installed); ``variables`` are environment variables reported when set (thread
    counts, BLAS core type). ``load_average=False`` keeps detector.py's block as it always was.
    """
    env: dict[str, Any] = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "numpy": np.__version__,
        "opencv": cv2.__version__,
    }
    if load_average:
        env["load_average"] = [round(x, 2) for x in os.getloadavg()]
    if packages:
        from importlib.metadata import PackageNotFoundError, version

        for key, dist in packages.items():
            try:
                env[key] = version(dist)
            except PackageNotFoundError:
                env[key] = None
    for name in variables:
        if name in os.environ:
            env[name] = os.environ[name]
    return env


def emit(report: dict[str, Any], path: Path | None) -> None:
    """Print the report as indented JSON and, when ``path`` is given, write the same text."""
    text = json.dumps(report, indent=2)
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
    print(text)


def main(parse_args: Callable[[Sequence[str] | None], argparse.Namespace],
         run: Callable[[argparse.Namespace], dict[str, Any]],
         argv: Sequence[str] | None = None) -> int:
    """A script's whole command line: warnings to stderr, parse, run, emit (``args.json``)."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    emit(run(args), args.json)
    return 0
