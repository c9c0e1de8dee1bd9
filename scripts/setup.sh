#!/usr/bin/env bash
# Idempotent set-up of a fresh machine for TwinLock development: apt packages, a virtual
# environment in .venv with the trainer, device and dev extras (the BlazeFace detector, face mesh
# and iris model ship inside twinlock: daemon/faces/data).
# Every other script sources this first, so a new user never runs a set-up step by hand.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${TWINLOCK_VENV:-.venv}
# Debian packages the tests and tools need (each checked by the command it provides).
# mosquitto: the MQTT tests start their own broker on 127.0.0.1 (tests/test_mqtt.py).
# chromium, chromium-driver: the household page's tests drive a real headless browser through
# Selenium (tests/test_web_browser.py) and scripts/web_screenshots.py takes the docs' pictures;
# both name /usr/bin/chromium and /usr/bin/chromedriver, so nothing is downloaded at run time.
APT_PACKAGES=(openssh-server openssh-client systemd sudo shellcheck mosquitto chromium
              chromium-driver ${TWINLOCK_APT_PACKAGES:-})

need_apt=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing apt packages: ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

stamp="$VENV/.twinlock-setup"
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
echo "setup: creating $VENV and installing twinlock[dev] (first run takes a minute or two)"
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip 2>&1 | grep -v "is ignored" || true
"$VENV/bin/pip" install -q -e ".[dev]" 2>&1 | grep -v "is ignored" || true
"$VENV/bin/python" -c "import twinlock.daemon, twinlock.trainer, ai_edge_litert, cv2, tensorflow, material" \
  || { echo "setup: the environment in $VENV is incomplete" >&2; exit 1; }
echo "$want" > "$stamp"
