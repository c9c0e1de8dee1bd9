"""Host side of signed bundles: make signing keys, pack a model and a gallery for the doors.

The format and every check live once in ``twinlock.daemon.bundle`` (the door runs the same code
to verify), the keys and the writing in :mod:`.signing`; this module only wraps them for the
``twinlock keygen`` and ``twinlock bundle`` commands and prints what a person wants to see.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from twinlock.daemon.bundle.format import canonical_json
from twinlock.daemon.faces.assets import file_sha256

from .signing import generate_keypair, write_bundle

logger = logging.getLogger(__name__)

PRIVATE_SUFFIX = ".key"
PUBLIC_SUFFIX = ".pub"


def keygen(out_prefix: str | Path, echo: bool = True) -> dict[str, Any]:
    """Write ``<prefix>.key`` (private, 0600) and ``<prefix>.pub`` (public, 0644).

    Never overwrites an existing key: replacing a signing key locks every door out of new
    bundles until it trusts the new public key, so that must be a deliberate act.
    """
    prefix = Path(out_prefix)
    private = prefix.with_name(prefix.name + PRIVATE_SUFFIX)
    public = prefix.with_name(prefix.name + PUBLIC_SUFFIX)
    kid = generate_keypair(private, public)
    summary = {"key_id": kid, "private_key": str(private), "public_key": str(public)}
    if echo:
        print(json.dumps(summary, indent=2))
    return summary


def make_bundle(model_dir: str | Path, gallery_path: str | Path, key_path: str | Path,
                out_path: str | Path, echo: bool = True) -> dict[str, Any]:
    """Sign ``model_dir`` + ``gallery_path`` into ``out_path``; return (and print) a summary.

    The summary names the bundle as the door will (``bundle_id``), so a person can match what
    the host made with what ``twinlockd check-bundle`` reports on the door.
    """
    out = Path(out_path)
    manifest = write_bundle(model_dir, gallery_path, key_path, out)
    digest = hashlib.sha256(canonical_json(manifest)).hexdigest()
    summary: dict[str, Any] = {
        "file": str(out),
        "bytes": out.stat().st_size,
        "sha256": file_sha256(out),
        "bundle_id": f"{manifest['model_id']}-{digest[:12]}",
        "model_id": manifest["model_id"],
        "users": manifest["users"],
        "key_id": manifest["key_id"],
        "created": manifest["created"],
        "files": manifest["files"],
    }
    if echo:
        print(json.dumps(summary, indent=2))
    return summary
