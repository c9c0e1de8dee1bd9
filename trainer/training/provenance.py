"""What made a model: the command, code version, library versions and a data fingerprint."""

from __future__ import annotations

import hashlib
import platform
import shlex
import subprocess
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


def data_fingerprint(paths: Sequence[Path], root: Path | None = None) -> dict[str, Any]:
    """sha256 over (relative path, size) of every file used: changes when the data changes,
    cheap enough to compute on every run (no file contents are read)."""
    digest = hashlib.sha256()
    total = 0
    for path in sorted(Path(p) for p in paths):
        size = path.stat().st_size if path.exists() else -1
        total += max(size, 0)
        name = str(path.relative_to(root)) if root and path.is_relative_to(root) else path.name
        digest.update(f"{name}\t{size}\n".encode())
    return {"files": len(paths), "bytes": total, "sha256": digest.hexdigest()}


def git_commit(repo: Path | None = None) -> str | None:
    repo = repo or Path(__file__).resolve().parents[1]
    try:
        out = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5, check=False).stdout.strip()
        return out + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def environment() -> dict[str, Any]:
    versions: dict[str, Any] = {"python": platform.python_version(), "machine": platform.machine()}
    for name in ("tensorflow", "keras", "numpy", "cv2", "ai_edge_litert"):
        module = sys.modules.get(name)
        versions[name] = getattr(module, "__version__", None) if module else None
    return versions


def provenance(argv: Sequence[str] | None) -> dict[str, Any]:
    return {
        "command": "twinlock " + shlex.join(list(argv)) if argv is not None else None,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "environment": environment(),
    }
