#!/usr/bin/env bash
# The built wheel on the Raspberry Pi's architecture: `pip install 'twinlock-*.whl[device]'`
# resolved for aarch64 (cp311 manylinux wheels) into an empty folder -- plain pip, no --no-deps,
# no source checkout -- then the arm64 Python 3.11 under qemu runs `twinlockd run` on an excerpt
# of the real clip (installing a signed bundle from the drop folder) and `twinlockd verify` on
# real photos with that bundle. The host side (wheel build, enrolment, signing) uses .venv.
#
#   scripts/arm64-wheel.sh      # scripts/arm64-tests.sh runs it after its tests
#
# Needs the guest root file system that scripts/arm64-tests.sh builds (same cache folder,
# ${TWINLOCK_ARM64_ROOT:-~/.cache/twinlock/arm64}). Exit status 0 when every check passed.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd -P)
ROOT=${TWINLOCK_ARM64_ROOT:-$HOME/.cache/twinlock/arm64}
GUEST_PYTHON=$ROOT/rootfs/usr/bin/python3-qemu
DATA=${TWINLOCK_DATA:-$(cd .. && pwd)/shared/data}
EXAMPLES=$DATA/face_recognition_examples
PY=$REPO/${TWINLOCK_VENV:-.venv}/bin/python
PIP_PLATFORM_ARGS=(
  --only-binary=:all: --python-version 3.11 --implementation cp --abi cp311
  --platform manylinux2014_aarch64 --platform manylinux_2_27_aarch64
  --platform manylinux_2_28_aarch64 --platform manylinux_2_34_aarch64
)
log() { echo "arm64-wheel: $*" >&2; }
SECONDS=0
[ -x "$GUEST_PYTHON" ] || { log "no arm64 guest in $ROOT: run scripts/arm64-tests.sh first"; exit 1; }
[ -d "$EXAMPLES" ] || { log "no test data in $EXAMPLES"; exit 1; }
WORK=$(mktemp -d "${TMPDIR:-/tmp}/twinlock-arm64-wheel.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

# 1. the wheel, built from the files git would commit (tracked and new, nothing ignored)
mkdir -p "$WORK/src" "$WORK/dist"
git ls-files -z --cached --others --exclude-standard | while IFS= read -r -d '' f; do
  [ -f "$f" ] && cp --parents -- "$f" "$WORK/src/"
done
"$PY" -m build -q --wheel --outdir "$WORK/dist" "$WORK/src" >/dev/null
WHEEL=$(ls "$WORK"/dist/twinlock-*.whl)
log "built $(basename "$WHEEL") (${SECONDS}s)"

# 2. pip resolves [device] for aarch64 into an empty folder (the guest's only site folder)
"$PY" -m pip install -q --disable-pip-version-check --target "$WORK/site" \
  "${PIP_PLATFORM_ARGS[@]}" "${WHEEL}[device]" 2>&1 | { grep -v "is ignored" || true; }
log "pip installed twinlock[device] for aarch64 (${SECONDS}s)"

# 3. the host side: enrol the clip's performer, sign a bundle, drop it; an excerpt of the clip
mkdir -p "$WORK/door/spool" "$WORK/door/frames" "$WORK/host"
"$PY" - "$REPO/models/default" "$EXAMPLES" "$WORK" <<'EOF'
import sys
from pathlib import Path

import cv2
import yaml

from twinlock.daemon.faces import quality as q
from twinlock.trainer.household.anchors import anchors_from_files
from twinlock.trainer.household.signing import generate_keypair, write_bundle
from twinlock.daemon.recognition.gallery import Gallery
from twinlock.daemon.recognition.model import FaceEmbedder

model, examples, work = (Path(a) for a in sys.argv[1:])
embedder = FaceEmbedder(model)
pipeline = embedder.meta.face_pipeline(embedder.meta.detector.build())
found = anchors_from_files([examples / "lin-manuel-miranda.png"], pipeline, embedder,
                           q.QualityThresholds())
gallery = Gallery(embedder.meta.model_id)
gallery.add("lin", found.anchors, found.sources)
gallery.save(work / "host" / "gallery.json")
generate_keypair(work / "host" / "signer.key", work / "door" / "signer.pub")
write_bundle(model, work / "host" / "gallery.json", work / "host" / "signer.key",
             work / "door" / "spool" / "door.twinlock")
video = cv2.VideoCapture(str(examples / "short_hamilton_clip.mp4"))
index = 0
while True:
    ok, frame = video.read()
    if not ok:
        break
    if 80 <= index < 96:  # frame 82 on: the enrolled performer (tests/daemon_helpers.py)
        cv2.imwrite(str(work / "door" / "frames" / f"{index:03d}.png"), frame)
    index += 1
(work / "door" / "config.yaml").write_text(yaml.safe_dump({
    "state_dir": str(work / "door" / "state"),
    "model": {"source": "bundle", "public_key": str(work / "door" / "signer.pub"),
              "incoming": str(work / "door" / "spool")},
    "camera": {"type": "replay", "source": str(work / "door" / "frames" / "*.png"),
               "realtime": False},
    "action": {"type": "log"},
    # emulation runs a frame in seconds, not tens of milliseconds: frames of one visit must
    # still count as one attempt (window_seconds is also how long a face may be away), and with
    # a few frames the model's own looser door threshold (as tests/daemon_helpers.py does)
    "verification": {"window_seconds": 60, "threshold_name": "door_far_1e-02"},
    "lockout": {"attempt_seconds": 300},
    "liveness": {"mode": "off"},  # this checks the install; liveness has its own tests
    "audit": {"db": str(work / "door" / "state" / "audit.db")},
    "service": {"watchdog": False},
}))
EOF
log "bundle signed and dropped (${SECONDS}s)"

# 4. the door: arm64 Python under qemu, nothing on its path but the pip-installed folder
guest() {
  (cd "$WORK/door" && env -i PATH=/usr/local/bin:/usr/bin:/bin LANG=C.UTF-8 HOME="$HOME" \
    TMPDIR="$WORK" PYTHONPATH="$WORK/site" PYTHONNOUSERSITE=1 PYTHONDONTWRITEBYTECODE=1 \
    "$GUEST_PYTHON" "$@")
}
config=$WORK/door/config.yaml
guest -c "import platform, twinlock.daemon as d; assert platform.machine() == 'aarch64', \
platform.machine(); assert d.__file__.startswith('$WORK/site'), d.__file__"
guest -m twinlock.daemon.cli check-config -c "$config" >/dev/null
guest -m twinlock.daemon.cli run -c "$config" 2> "$WORK/run.log" \
  || { tail -n 30 "$WORK/run.log" >&2; log "twinlockd run failed"; exit 1; }
guest -m twinlock.daemon.cli log -c "$config" --json > "$WORK/log.jsonl"
guest -m twinlock.daemon.cli verify -c "$config" --json "$EXAMPLES/lin-manuel-miranda.png" \
  "$EXAMPLES/obama.jpg" > "$WORK/verify.json" 2> "$WORK/verify.log" \
  || { tail -n 30 "$WORK/verify.log" >&2; log "twinlockd verify failed"; exit 1; }
log "twinlockd ran under emulation (${SECONDS}s)"

# 5. what the door did
"$PY" - "$WORK" <<'EOF'
import json
import sys
from pathlib import Path

work = Path(sys.argv[1])
records = [json.loads(line) for line in (work / "log.jsonl").read_text().splitlines() if line]
unlocks = [r for r in records if r["event"] == "unlock"]
# frame: the index in the excerpt, which starts at clip frame 80 (the performer from 82 on)
assert unlocks and all(r["user"] == "lin" and 80 + r["frame"] >= 82 for r in unlocks), records
assert not list((work / "door" / "spool").glob("*.twinlock")), "bundle not installed"
assert list((work / "door" / "state" / "active").glob("*/model/face_detection_short_range.tflite"))
answers = {Path(r["image"]).name: r["decision"] for r in json.loads((work / "verify.json").read_text())}
assert answers == {"lin-manuel-miranda.png": "match lin", "obama.jpg": "no match"}, answers
print(f"arm64-wheel: ok: unlock for lin at clip frame {80 + unlocks[0]['frame']}; {answers}",
      file=sys.stderr)
EOF
log "passed in ${SECONDS}s"
