#!/usr/bin/env bash
# The test command: sets up the machine (idempotent), then lint, static types (mypy) and the
# whole pytest suite.
# Extra arguments go to pytest (e.g. scripts/test.sh -k faces).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export TF_CPP_MIN_LOG_LEVEL=2
status=0
# The door's unit under a real systemd (Debian bookworm booted in a VM: scripts/vm-tests.sh),
# unless asked not to (TWINLOCK_SKIP_VM=1) or given pytest arguments outside CI. It runs beside
# the host's tests, in its own process group, so that the whole command stays under an hour on 2
# cores; its output goes to .cache/vm/ci-bookworm.log and its tail is printed at the end. A
# deadline (TWINLOCK_VM_DEADLINE, 50 min) stops it (the harness kills its qemu) and fails the run
# with a message. The Ansible VM tests and trixie run with scripts/vm-tests.sh --all.
vm_pid=
vm_log=.cache/vm/ci-bookworm.log
if [ "${TWINLOCK_SKIP_VM:-0}" != "1" ] && { [ $# -eq 0 ] || [ "${CI:-}" = "true" ]; }; then
  mkdir -p .cache/vm
  as_root=(); [ "$(id -u)" -eq 0 ] || as_root=(sudo -E)  # debootstrap and chroot need root
  TWINLOCK_VM_NICE=${TWINLOCK_VM_NICE:-5} setsid timeout --signal=TERM --kill-after=60 \
    "${TWINLOCK_VM_DEADLINE:-50m}" "${as_root[@]}" bash scripts/vm-tests.sh -k "not ansible" \
    > "$vm_log" 2>&1 &
  vm_pid=$!
  trap '[ -z "$vm_pid" ] || kill -TERM -- "-$vm_pid" 2>/dev/null || true' EXIT
  echo "test.sh: the VM tests (bookworm) run in the background: $vm_log"
fi
# Lint and static types first (seconds; a failure is reported, the tests still run).
if [ $# -eq 0 ] || [ "${CI:-}" = "true" ]; then
  .venv/bin/ruff check daemon trainer tests benchmarks scripts || status=$?
  bash scripts/typecheck.sh || status=$?
  # The documentation site: a broken link, anchor or nav entry fails (offline; into a temp dir)
  site=$(mktemp -d)
  NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict --quiet --site-dir "$site" || status=$?
  rm -rf "$site"
fi
.venv/bin/pytest -p no:cacheprovider "$@" || status=$?
# The daemon's tests again on the Pi's architecture (aarch64 under qemu), unless asked not to.
if [ "${TWINLOCK_SKIP_ARM64:-0}" != "1" ] && { [ $# -eq 0 ] || [ "${CI:-}" = "true" ]; }; then
  bash scripts/arm64-tests.sh || status=$?
fi
if [ -n "$vm_pid" ]; then
  vm_status=0
  wait "$vm_pid" || vm_status=$?
  vm_pid=
  tail -n 40 "$vm_log"
  if [ "$vm_status" -eq 124 ]; then
    echo "test.sh: the VM tests passed their deadline (${TWINLOCK_VM_DEADLINE:-50m}) and were stopped; see $vm_log" >&2
  fi
  [ "$vm_status" -eq 0 ] || status=$vm_status
fi
exit $status
