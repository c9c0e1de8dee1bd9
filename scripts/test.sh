#!/usr/bin/env bash
# The test command: sets up the machine (idempotent), then runs the whole pytest suite.
# Extra arguments go to pytest (e.g. scripts/test.sh -k faces).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export TF_CPP_MIN_LOG_LEVEL=2
exec .venv/bin/pytest -p no:cacheprovider "$@"
