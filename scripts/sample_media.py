"""Find the sample media the demo needs: $TWINLOCK_DATA (or ../shared/data) first, otherwise a
pinned download of the public examples of the face_recognition project (MIT), checked against
its sha256, cached in ~/.cache/twinlock/samples. Prints the folder holding the files."""

from __future__ import annotations

import hashlib
import os
import sys
import urllib.request
from pathlib import Path

COMMIT = "2e2dccea9dd0ce730c8d464d0f67c6eebb40c9d1"
BASE = f"https://raw.githubusercontent.com/ageitgey/face_recognition/{COMMIT}/examples/"
FILES = {
    "lin-manuel-miranda.png": "1f29c132951d7741431b32aaaf569d79a11bc690b04b843f12b7e306f080599a",
    "short_hamilton_clip.mp4": "0b5ff4c55a4cd69f79956f312681730881fe1e2a9e6146e75c31636dffcc7e28",
}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main() -> int:
    repo = Path(__file__).resolve().parents[1]
    data = Path(os.environ.get("TWINLOCK_DATA", repo.parent / "shared" / "data"))
    local = data / "face_recognition_examples"
    if all((local / name).is_file() for name in FILES):
        print(local)
        return 0
    cache = Path.home() / ".cache" / "twinlock" / "samples"
    cache.mkdir(parents=True, exist_ok=True)
    for name, digest in FILES.items():
        target = cache / name
        if target.is_file() and sha256(target) == digest:
            continue
        print(f"downloading {name} ...", file=sys.stderr)
        tmp = target.with_suffix(".part")
        try:
            urllib.request.urlretrieve(BASE + name, tmp)  # a pinned https URL, checked by sha256
        except OSError as exc:
            print(f"cannot download {BASE + name}: {exc}; set TWINLOCK_DATA to a folder with "
                  "face_recognition_examples/", file=sys.stderr)
            return 2
        if sha256(tmp) != digest:
            tmp.unlink()
            print(f"{name}: checksum mismatch, refusing the download", file=sys.stderr)
            return 2
        tmp.replace(target)
    print(cache)
    return 0


if __name__ == "__main__":
    sys.exit(main())
