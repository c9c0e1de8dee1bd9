#!/usr/bin/env bash
# The test command: sets up the machine (idempotent), then lint, static types (mypy) and the
# whole pytest suite.
# Extra arguments go to pytest (e.g. scripts/test.sh -k faces).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export TF_CPP_MIN_LOG_LEVEL=2
status=0
# Lint and static types first (seconds; a failure is reported, the tests still run).
if [ $# -eq 0 -o "${CI:-}" = "true" ]; then
  .venv/bin/ruff check daemon trainer tests benchmarks scripts || status=$?
  bash scripts/typecheck.sh || status=$?
  # The documentation site: a broken link, anchor or nav entry fails (offline; into a temp dir)
  site=$(mktemp -d)
  NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict --quiet --site-dir "$site" || status=$?
  rm -rf "$site"
fi
.venv/bin/pytest -p no:cacheprovider "$@" || status=$?
# The daemon's tests again on the Pi's architecture (aarch64 under qemu), unless asked not to.
if [ "${TWINLOCK_SKIP_ARM64:-0}" != "1" ] && [ $# -eq 0 -o "${CI:-}" = "true" ]; then
  bash scripts/arm64-tests.sh || status=$?
fi
exit $status
