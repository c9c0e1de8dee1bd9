#!/usr/bin/env bash
# Static types of daemon/ and trainer/ (mypy, settings in pyproject.toml's [tool.mypy]).
# mypy cannot follow setuptools' editable-install hook, so it is shown the installed layout
# (twinlock.daemon -> daemon/, twinlock.trainer -> trainer/) through links in a temporary folder;
# that way the trainer's `twinlock.daemon...` imports are checked against the real code.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir "$root/twinlock"
ln -s "$PWD/daemon" "$root/twinlock/daemon"
ln -s "$PWD/trainer" "$root/twinlock/trainer"
MYPYPATH="$root" .venv/bin/mypy --cache-dir "${TWINLOCK_MYPY_CACHE:-.mypy_cache}" \
  -p twinlock.daemon -p twinlock.trainer "$@" | sed "s|$root/twinlock/||"
