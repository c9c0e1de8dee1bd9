#!/usr/bin/env bash
# Install (or update) the TwinLock door daemon on a Raspberry Pi (Raspberry Pi OS bookworm/trixie).
#
#   sudo deploy/install.sh [--from PATH] [--key FILE] [--deploy-user USER]...
#   sudo deploy/install.sh --root DIR --no-apt --skip-pip     # into a throw-away root (tests)
#
# Options:
#   --from PATH   twinlock wheel (*.whl) or source tree to install (default: the repository this
#                 script sits in). The config shipped is PATH/config.yaml for a tree, else the one
#                 beside this script's repository.
#   --key FILE    Ed25519 public key that signs deployment bundles -> /etc/twinlock/trusted_key.pub
#   --deploy-user USER
#                 add this existing user (e.g. pi: the one `twinlock deploy` logs in as over SSH)
#                 to the group twinlock-deploy, which may upload into /var/spool/twinlock and run
#                 `sudo systemctl reload twinlockd` without a password. Repeatable. Never removes
#                 anyone: take a user out with `gpasswd -d USER twinlock-deploy`.
#   --root DIR    install everything under DIR (an image or a throw-away folder): users are added
#                 to DIR/etc/passwd and DIR/etc/group, systemctl is never called, the unit is
#                 enabled by its multi-user.target.wants symlink.
#   --no-apt      do not install apt packages
#   --skip-pip    create the venv but install nothing into it (tests)
#   --python EXE  interpreter for the venv (default /usr/bin/python3: picamera2 is built for it)
#
# What it manages: the system user `twinlock` (groups video, gpio, twinlock-deploy), the system
# group `twinlock-deploy`, /etc/twinlock (root, 0755), /var/lib/twinlock (twinlock, 0700), the
# review folder /var/lib/twinlock-review and its crops/ (twinlock:twinlock-deploy, 2750: the
# daemon writes the review records there, the deploy account only reads them for `twinlock doors
# sync`; the setgid bit gives every record and crop that group), the bundle drop folder
# /var/spool/twinlock and its rejected/ (twinlock:twinlock-deploy, 2770: the setgid bit gives
# uploads the group, so the daemon can read, install and delete them),
# /etc/sudoers.d/twinlock-deploy (root, 0440: members of twinlock-deploy may run exactly
# `systemctl reload twinlockd` as root without a password; checked with `visudo -cf` first),
# /opt/twinlock with the venv /opt/twinlock/venv (made with --system-site-packages, so apt's
# picamera2 and lgpio are visible), /etc/twinlock/config.yaml (copied only when absent: a changed
# shipped config goes to config.yaml.new; the last shipped one is kept as config.yaml.dist for
# diffing), the unit /etc/systemd/system/twinlockd.service.
#
# Idempotent: it fingerprints everything it manages (sha256, mode and owner of each file it writes
# and of the user database; mode, owner, size and mtime of each file in /opt/twinlock) before and
# after, lists what differs, and ends with "nothing changed" when nothing did. pip runs only when
# the source, the Python or the requirements changed (a stamp in the venv records them).
set -euo pipefail
umask 022

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
REPO_DIR=$(dirname "$SCRIPT_DIR")

ROOT=/
FROM=$REPO_DIR
KEY=""
NO_APT=0
SKIP_PIP=0
PYTHON=/usr/bin/python3

DEPLOY_USERS=()

SERVICE_USER=twinlock
DEVICE_GROUPS=(video gpio)
# Uploaders of bundles. The service user is a member too: an upload is owned by the uploader,
# and the daemon reads it through the group (the folder's setgid bit gives it that group).
DEPLOY_GROUP=twinlock-deploy
SUDOERS_RULE="%$DEPLOY_GROUP ALL=(root) NOPASSWD: /usr/bin/systemctl reload twinlockd, /bin/systemctl reload twinlockd"
# apt: venv support, the Pi camera stack (libcamera + picamera2; from the Pi's own apt repository)
# and lgpio, gpiozero's pin factory on bookworm. --no-install-recommends keeps the GUI preview
# dependencies of python3-picamera2 (Qt, OpenGL) off a headless lock.
APT_PACKAGES=(python3-venv python3-picamera2 python3-lgpio)
# The detector and face mesh travel in each signed bundle (and ship inside twinlock): no
# separate detector wheel, no --no-deps step.

say() { printf 'twinlock install: %s\n' "$*"; }
die() { printf 'twinlock install: error: %s\n' "$*" >&2; exit 1; }
usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; }

while [ $# -gt 0 ]; do
  case "$1" in
    --root) ROOT=${2:?--root needs a folder}; shift 2 ;;
    --root=*) ROOT=${1#*=}; shift ;;
    --from) FROM=${2:?--from needs a path}; shift 2 ;;
    --from=*) FROM=${1#*=}; shift ;;
    --key) KEY=${2:?--key needs a file}; shift 2 ;;
    --key=*) KEY=${1#*=}; shift ;;
    --python) PYTHON=${2:?--python needs an interpreter}; shift 2 ;;
    --python=*) PYTHON=${1#*=}; shift ;;
    --deploy-user) DEPLOY_USERS+=("${2:?--deploy-user needs a user name}"); shift 2 ;;
    --deploy-user=*) DEPLOY_USERS+=("${1#*=}"); shift ;;
    --no-apt) NO_APT=1; shift ;;
    --skip-pip) SKIP_PIP=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done

[ "$(id -u)" -eq 0 ] || die "run as root (sudo): it creates a system user and root-owned folders"
mkdir -p "$ROOT"
ROOT=$(cd "$ROOT" && pwd -P)
if [ "$ROOT" = / ]; then R=""; REAL_ROOT=1; else R=$ROOT; REAL_ROOT=0; fi
[ -e "$FROM" ] || die "--from $FROM does not exist"
FROM=$(cd "$(dirname "$FROM")" && pwd -P)/$(basename "$FROM")
if [ -n "$KEY" ]; then
  if [ ! -f "$KEY" ] || [ ! -s "$KEY" ]; then die "--key $KEY is not a file or is empty"; fi
  if grep -q "PRIVATE KEY" "$KEY"; then die "--key $KEY is a private key: give the public one"; fi
fi
# Deploy users must already exist in the target (refused before anything is touched).
for user in "${DEPLOY_USERS[@]}"; do
  case "$user" in
    ''|-*|*[:/,[:space:]]*) die "--deploy-user '$user' is not a user name" ;;
    "$SERVICE_USER"|root) die "--deploy-user $user: give the account that deploys over SSH (e.g. pi)" ;;
  esac
  awk -F: -v n="$user" '$1 == n { found = 1 } END { exit !found }' "$R/etc/passwd" 2>/dev/null \
    || die "--deploy-user $user: no such user in $R/etc/passwd (create it first)"
done

UNIT_SRC=$SCRIPT_DIR/twinlockd.service
if [ -d "$FROM" ]; then CONFIG_SRC=$FROM/config.yaml; else CONFIG_SRC=$REPO_DIR/config.yaml; fi
[ -f "$UNIT_SRC" ] || die "missing $UNIT_SRC"
[ -f "$CONFIG_SRC" ] || die "missing $CONFIG_SRC"

ETC=$R/etc/twinlock
STATE=$R/var/lib/twinlock
REVIEW=$R/var/lib/twinlock-review
SPOOL=$R/var/spool/twinlock
SUDOERS_DIR=$R/etc/sudoers.d
SUDOERS=$SUDOERS_DIR/$DEPLOY_GROUP
OPT=$R/opt/twinlock
VENV=$OPT/venv
UNIT=$R/etc/systemd/system/twinlockd.service
WANTS=$R/etc/systemd/system/multi-user.target.wants/twinlockd.service

# ---- fingerprint of everything this script manages -------------------------------------------
snapshot() {
  local f
  for f in "$R/etc/passwd" "$R/etc/group" "$R/etc/shadow" "$R/etc/gshadow" "$UNIT" "$SUDOERS" \
           "$ETC"/* "$ETC"/.[!.]*; do
    [ -f "$f" ] || continue
    printf '%s %s\n' "$(stat -c '%n %F %a %u:%g' "$f")" "$(sha256sum < "$f" | cut -c1-64)"
  done
  for f in "$ETC" "$STATE" "$REVIEW" "$REVIEW/crops" "$SPOOL" "$SPOOL/rejected" "$SUDOERS_DIR" "$R/etc/systemd/system"; do
    [ -e "$f" ] && stat -c '%n %F %a %u:%g' "$f"
  done
  [ -L "$WANTS" ] && printf '%s -> %s\n' "$WANTS" "$(readlink "$WANTS")"
  [ -e "$OPT" ] && find "$OPT" -printf '%p %y %m %U:%G %s %T@ %l\n' | LC_ALL=C sort
  return 0
}
BEFORE=$(snapshot)
TMP_DIR=$(mktemp -d); trap 'rm -rf "$TMP_DIR"' EXIT

# ---- apt ------------------------------------------------------------------------------------------
apt_install() {  # runs apt in the target (directly, or chrooted into an image that has apt)
  local run=()
  if [ "$REAL_ROOT" -eq 0 ]; then
    [ -x "$R/usr/bin/apt-get" ] || { say "apt: skipped ($ROOT has no apt; give --no-apt to silence)"; return; }
    run=(chroot "$ROOT")
  fi
  local missing=() available=() pkg
  for pkg in "${APT_PACKAGES[@]}"; do
    # shellcheck disable=SC2016  # ${Status} is dpkg-query's field, not a shell variable
    "${run[@]}" dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" \
      || missing+=("$pkg")
  done
  if [ ${#missing[@]} -eq 0 ]; then say "apt: ${APT_PACKAGES[*]} already installed"; return; fi
  say "apt: installing ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive "${run[@]}" apt-get update -qq
  for pkg in "${missing[@]}"; do
    if "${run[@]}" apt-cache policy "$pkg" 2>/dev/null | grep -q 'Candidate: [^(]'; then
      available+=("$pkg")
    else
      say "apt: warning: $pkg is not available here (not a Raspberry Pi OS image?): skipped"
    fi
  done
  [ ${#available[@]} -eq 0 ] || DEBIAN_FRONTEND=noninteractive "${run[@]}" \
    apt-get install -y -qq --no-install-recommends "${available[@]}"
}
if [ "$NO_APT" -eq 1 ]; then say "apt: skipped (--no-apt)"; else apt_install; fi

# ---- user and groups ------------------------------------------------------------------------------
ROOT_OPT=()
[ "$REAL_ROOT" -eq 1 ] || ROOT_OPT=(--root "$ROOT")
if [ "$REAL_ROOT" -eq 0 ]; then
  # A bare throw-away root gets a minimal user database (root only) so useradd has files to edit.
  mkdir -p "$R/etc"
  [ -f "$R/etc/passwd" ] || printf 'root:x:0:0:root:/root:/bin/bash\n' > "$R/etc/passwd"
  [ -f "$R/etc/group" ] || printf 'root:x:0:\n' > "$R/etc/group"
  [ -f "$R/etc/shadow" ] || { printf 'root:*:0:0:99999:7:::\n' > "$R/etc/shadow"; chmod 0640 "$R/etc/shadow"; }
  [ -f "$R/etc/gshadow" ] || { printf 'root:*::\n' > "$R/etc/gshadow"; chmod 0640 "$R/etc/gshadow"; }
fi
field() { awk -F: -v n="$2" -v c="$3" '$1 == n { print $c; exit }' "$R/etc/$1"; }
quiet_shadow() {  # useradd warns about a login shell missing from a bare root: expected there
  "$@" 2> >(grep -v "missing or non-executable shell" >&2)
}

SERVICE_GROUPS=("${DEVICE_GROUPS[@]}" "$DEPLOY_GROUP")
for group in "${SERVICE_GROUPS[@]}"; do
  if [ -z "$(field group "$group" 1)" ]; then
    groupadd "${ROOT_OPT[@]}" --system "$group"
    say "group $group: created (system group)"
  fi
done
is_member() { field group "$2" 4 | tr , '\n' | grep -qxF "$1"; }   # is_member USER GROUP
if [ -z "$(field passwd "$SERVICE_USER" 1)" ]; then
  quiet_shadow useradd "${ROOT_OPT[@]}" --system --user-group --no-create-home \
    --home-dir /var/lib/twinlock --shell /usr/sbin/nologin --comment "TwinLock door lock" \
    --groups "$(IFS=,; echo "${SERVICE_GROUPS[*]}")" "$SERVICE_USER"
  say "user $SERVICE_USER: created (system user, no login, groups ${SERVICE_GROUPS[*]})"
else
  for group in "${SERVICE_GROUPS[@]}"; do
    if ! is_member "$SERVICE_USER" "$group"; then
      usermod "${ROOT_OPT[@]}" --append --groups "$group" "$SERVICE_USER"
      say "user $SERVICE_USER: added to group $group"
    fi
  done
  say "user $SERVICE_USER: present (groups ${SERVICE_GROUPS[*]})"
fi
for user in "${DEPLOY_USERS[@]}"; do
  if is_member "$user" "$DEPLOY_GROUP"; then
    say "user $user: in group $DEPLOY_GROUP"
  else
    usermod "${ROOT_OPT[@]}" --append --groups "$DEPLOY_GROUP" "$user"
    say "user $user: added to group $DEPLOY_GROUP (takes effect at its next login)"
  fi
done
# Numeric ids from the target's own database (the host's NSS knows nothing of an image's users).
SVC_UID=$(field passwd "$SERVICE_USER" 3)
SVC_GID=$(field passwd "$SERVICE_USER" 4)
DEPLOY_GID=$(field group "$DEPLOY_GROUP" 3)
if [ -z "$SVC_UID" ] || [ -z "$SVC_GID" ]; then die "user $SERVICE_USER missing after useradd"; fi
[ -n "$DEPLOY_GID" ] || die "group $DEPLOY_GROUP missing after groupadd"

# ---- folders --------------------------------------------------------------------------------------
install -d -m 0755 -o 0 -g 0 "$ETC" "$OPT" "$R/etc/systemd/system"
if [ -d "$STATE" ] && [ "$(stat -c %u "$STATE")" != "$SVC_UID" ]; then
  # A re-install after uninstall.sh (which keeps the data) may give the user a new uid.
  chown -R "$SVC_UID:$SVC_GID" "$STATE"
  say "/var/lib/twinlock: ownership given to $SERVICE_USER (uid $SVC_UID)"
fi
install -d -m 0700 -o "$SVC_UID" -g "$SVC_GID" "$STATE"

# The review folder (config key review.dir): outside the 0700 state folder, so the deploy account
# can read the review records (`twinlock doors sync` over SSH) and nothing else of the state. The
# daemon writes, the group reads: 2750, files 0640 (daemon/review/store.py). Its crops/ is made
# here too: under the unit (RestrictSUIDSGID=) the daemon cannot chmod a folder it makes with the
# setgid bit, and its umask (0077) would leave it 2700, shut to the group. uninstall.sh keeps
# the folder like the state folder: after a re-install, give the records back to the new ids.
if [ -d "$REVIEW" ] && [ "$(stat -c %u:%g "$REVIEW")" != "$SVC_UID:$DEPLOY_GID" ]; then
  chown -hR "$SVC_UID:$DEPLOY_GID" "$REVIEW"   # -h: a planted symlink changes, not its target
  say "/var/lib/twinlock-review: ownership given to $SERVICE_USER:$DEPLOY_GROUP"
fi
install -d -m 2750 -o "$SVC_UID" -g "$DEPLOY_GID" "$REVIEW" "$REVIEW/crops"

# The drop folder for bundles. uninstall.sh keeps it (it may hold an undelivered bundle), so after
# a re-install its owner and group may be stale numbers: give both back, and the group to what
# is inside (uploads keep their uploader as owner).
if [ -d "$SPOOL" ] && [ "$(stat -c %u:%g "$SPOOL")" != "$SVC_UID:$DEPLOY_GID" ]; then
  chgrp -hR "$DEPLOY_GID" "$SPOOL"   # -h: a planted symlink changes, never what it points to
  say "/var/spool/twinlock: ownership given to $SERVICE_USER:$DEPLOY_GROUP"
fi
install -d -m 2770 -o "$SVC_UID" -g "$DEPLOY_GID" "$SPOOL" "$SPOOL/rejected"

# ---- venv and Python packages ---------------------------------------------------------------------
[ -x "$PYTHON" ] || die "no Python at $PYTHON (apt install python3-venv, or give --python)"
PY_VERSION=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
venv_ok() {
  [ -x "$VENV/bin/python" ] && [ -f "$VENV/pyvenv.cfg" ] \
    && grep -Eq "^version(_info)? *= *$PY_VERSION\." "$VENV/pyvenv.cfg" \
    && grep -Eq '^include-system-site-packages *= *true' "$VENV/pyvenv.cfg"
}
if ! venv_ok; then
  [ ! -e "$VENV" ] || { say "venv: Python changed or venv incomplete: re-creating"; rm -rf "$VENV"; }
  venv_args=(--system-site-packages)
  [ "$SKIP_PIP" -eq 0 ] || venv_args+=(--without-pip)
  "$PYTHON" -m venv "${venv_args[@]}" "$VENV" || die "python3 -m venv failed (apt install python3-venv)"
  say "venv: created $VENV/ (Python $PY_VERSION, --system-site-packages)"
  VENV_CREATED=1
fi

relocate_venv() {  # venv and pip write DIR/opt/... into bin/ scripts: make them /opt/... for DIR
  [ "$REAL_ROOT" -eq 0 ] || return 0
  grep -rlI --null -F "$VENV" "$VENV/bin" "$VENV/pyvenv.cfg" 2>/dev/null \
    | xargs -0 -r sed -i "s|$VENV|/opt/twinlock/venv|g"
}
[ "${VENV_CREATED:-0}" -eq 0 ] || relocate_venv

if [ "$SKIP_PIP" -eq 1 ]; then
  say "pip: skipped (--skip-pip)"
else
  # Build from a clean copy: pip builds a source tree in place (build/, *.egg-info) otherwise.
  WORK=$TMP_DIR/source; mkdir "$WORK"
  if [ -d "$FROM" ]; then
    # Only what the package is built from: top-level clutter (checkouts, venvs, data, tests) and
    # build leftovers stay out, so the fingerprint changes only when the package can.
    tar -C "$FROM" --exclude=__pycache__ --exclude='*.egg-info' --anchored \
        --exclude=./.git --exclude=./.venv --exclude=./venv --exclude=./build --exclude=./dist \
        --exclude=./.pytest_cache --exclude=./.ruff_cache --exclude=./.ci --exclude=./out \
        --exclude=./runs --exclude=./models --exclude=./tests --exclude=./benchmarks \
        --exclude=./deploy --exclude=./scripts --exclude=./config.yaml \
        -cf - . | tar -C "$WORK" -xf -
    SOURCE=$WORK
    SOURCE_SUM=$(cd "$WORK" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -c1-64)
  else
    case "$FROM" in *.whl) ;; *) die "--from must be a folder or a .whl file" ;; esac
    SOURCE=$FROM
    SOURCE_SUM=$(sha256sum < "$FROM" | cut -c1-64)
  fi
  STAMP=$VENV/.twinlock-install
  WANT="source=$SOURCE_SUM python=$PY_VERSION extra=device"
  if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ]; then
    say "pip: twinlock[device] up to date"
  else
    say "pip: installing twinlock[device] from $FROM (a few minutes on a Pi)"
    pip=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
    # A venv made earlier with --skip-pip has no pip yet.
    "${pip[@]}" --version >/dev/null 2>&1 || "$VENV/bin/python" -m ensurepip -q --default-pip \
      || die "the venv has no pip and ensurepip failed (apt install python3-venv)"
    "${pip[@]}" install "${SOURCE}[device]"
    # apt's picamera2 imports simplejpeg, built on bookworm against numpy 1.x; ai-edge-litert
    # needs numpy 2 in the venv. A simplejpeg wheel built for numpy 2 in the venv fixes that.
    if "$VENV/bin/python" -c 'import importlib.util as u, sys; sys.exit(u.find_spec("picamera2") is None)' 2>/dev/null \
       && ! "$VENV/bin/python" -c 'import picamera2' >/dev/null 2>&1; then
      say "pip: apt's picamera2 does not import with numpy 2; installing simplejpeg into the venv"
      "${pip[@]}" install simplejpeg
      "$VENV/bin/python" -c 'import picamera2' \
        || say "warning: picamera2 still does not import: only camera types opencv/replay will work"
    fi
    "$VENV/bin/python" -c 'import twinlock.daemon.cli, ai_edge_litert, cv2' \
      || die "the venv in $VENV is incomplete"
    relocate_venv
    printf '%s\n' "$WANT" > "$STAMP"
    say "pip: installed"
  fi
fi

# ---- config, key, unit ----------------------------------------------------------------------------
same() { [ -f "$1" ] && [ -f "$2" ] && cmp -s "$1" "$2"; }
put() {  # put SRC DST MODE: install a root-owned copy when bytes, mode or owner differ
  if same "$1" "$2" && [ "$(stat -c '%a %u:%g' "$2")" = "${3#0} 0:0" ]; then return 1; fi
  install -m "$3" -o 0 -g 0 "$1" "$2"
}

CONFIG=$ETC/config.yaml
shipped_changed=1
same "$CONFIG_SRC" "$ETC/config.yaml.dist" && shipped_changed=0
if [ ! -e "$CONFIG" ]; then
  install -m 0644 -o 0 -g 0 "$CONFIG_SRC" "$CONFIG"
  say "config: installed /etc/twinlock/config.yaml"
elif same "$CONFIG_SRC" "$CONFIG"; then
  say "config: /etc/twinlock/config.yaml is the shipped one"
elif [ "$shipped_changed" -eq 1 ]; then
  install -m 0644 -o 0 -g 0 "$CONFIG_SRC" "$CONFIG.new"
  say "config: kept your /etc/twinlock/config.yaml; the shipped config changed:" \
      "review /etc/twinlock/config.yaml.new, merge it, then delete it"
else
  say "config: kept your edited /etc/twinlock/config.yaml"
fi
put "$CONFIG_SRC" "$ETC/config.yaml.dist" 0644 || true   # the shipped config, for diffing

if [ -n "$KEY" ]; then
  if put "$KEY" "$ETC/trusted_key.pub" 0644; then
    say "key: installed /etc/twinlock/trusted_key.pub"
  else
    say "key: /etc/twinlock/trusted_key.pub up to date"
  fi
fi

unit_changed=0
if put "$UNIT_SRC" "$UNIT" 0644; then
  unit_changed=1; say "unit: installed /etc/systemd/system/twinlockd.service"
else
  say "unit: up to date"
fi

# ---- sudoers: the reload that `twinlock deploy` runs over SSH -------------------------------------
# Exactly `systemctl reload twinlockd` (both paths: /bin is /usr/bin on merged-/usr systems, but
# sudo matches the path as typed). Checked by visudo before it goes anywhere near sudoers.d: a
# broken file there would break sudo for everybody.
printf '%s\n' "$SUDOERS_RULE" > "$TMP_DIR/sudoers"
VISUDO=$(PATH=$PATH:/usr/sbin:/sbin command -v visudo || true)
if [ -n "$VISUDO" ]; then
  "$VISUDO" -cf "$TMP_DIR/sudoers" >/dev/null \
    || die "visudo refused the sudoers rule for $DEPLOY_GROUP: not installed"
fi
[ -d "$SUDOERS_DIR" ] || install -d -m 0750 -o 0 -g 0 "$SUDOERS_DIR"
if put "$TMP_DIR/sudoers" "$SUDOERS" 0440; then
  say "sudoers: installed /etc/sudoers.d/$DEPLOY_GROUP (group $DEPLOY_GROUP may run" \
      "'systemctl reload twinlockd' as root without a password)"
else
  say "sudoers: /etc/sudoers.d/$DEPLOY_GROUP up to date"
fi
[ -n "$VISUDO" ] || say "sudoers: note: visudo not found here, so the rule was not checked"
if [ -f "$R/etc/sudoers" ] && ! grep -Eq '^[#@]includedir[[:space:]]+/etc/sudoers\.d/?[[:space:]]*$' "$R/etc/sudoers"; then
  say "sudoers: warning: /etc/sudoers does not include /etc/sudoers.d: the reload rule is inactive"
fi
if [ "$REAL_ROOT" -eq 1 ] && ! PATH=$PATH:/usr/sbin:/sbin command -v sudo >/dev/null; then
  say "sudoers: warning: sudo is not installed, so deploys cannot reload the daemon (apt install sudo)"
fi

# ---- systemd --------------------------------------------------------------------------------------
AFTER=$(snapshot)
CHANGES=$(diff <(printf '%s\n' "$BEFORE") <(printf '%s\n' "$AFTER") | sed -n 's/^[<>] \([^ ]*\) .*/\1/p' | LC_ALL=C sort -u || true)

if [ "$REAL_ROOT" -eq 0 ]; then
  if [ ! -L "$WANTS" ]; then
    mkdir -p "$(dirname "$WANTS")"
    ln -sfn /etc/systemd/system/twinlockd.service "$WANTS"
    say "unit: enabled in $ROOT (multi-user.target.wants link; no systemctl under --root)"
    AFTER=$(snapshot)
    CHANGES=$(diff <(printf '%s\n' "$BEFORE") <(printf '%s\n' "$AFTER") | sed -n 's/^[<>] \([^ ]*\) .*/\1/p' | LC_ALL=C sort -u || true)
  fi
elif [ -d /run/systemd/system ]; then
  [ "$unit_changed" -eq 0 ] || systemctl daemon-reload
  if ! systemctl is-enabled --quiet twinlockd 2>/dev/null || ! systemctl is-active --quiet twinlockd; then
    if systemctl enable --now twinlockd; then
      say "service: enabled and started (systemctl status twinlockd; journalctl -u twinlockd)"
    else
      say "service: enabled, but it did not start: see journalctl -u twinlockd -b"; START_FAILED=1
    fi
  elif [ -n "$CHANGES" ]; then
    if systemctl restart twinlockd; then
      say "service: restarted on the new files"
    else
      say "service: did not restart: see journalctl -u twinlockd -b"; START_FAILED=1
    fi
  else
    say "service: enabled and running"
  fi
  AFTER=$(snapshot)
  CHANGES=$(diff <(printf '%s\n' "$BEFORE") <(printf '%s\n' "$AFTER") | sed -n 's/^[<>] \([^ ]*\) .*/\1/p' | LC_ALL=C sort -u || true)
else
  say "service: systemd is not running here; enable it later: systemctl enable --now twinlockd"
fi

# ---- how to deploy ---------------------------------------------------------------------------------
deployers=$(awk -F: -v g="$DEPLOY_GROUP" -v s="$SERVICE_USER" '$1 == g {
  n = split($4, m, ","); for (i = 1; i <= n; i++) if (m[i] != "" && m[i] != s) out = out (out ? " " : "") m[i]
  print out; exit }' "$R/etc/group")
if [ -n "$deployers" ]; then
  say "deploy: may upload bundles and reload: $deployers (group $DEPLOY_GROUP)"
else
  say "deploy: nobody may deploy yet: give the SSH user with --deploy-user USER (e.g. pi)"
fi
say "deploy: from the machine with the signing key:" \
    "twinlock deploy BUNDLE --to ssh://USER@HOST/var/spool/twinlock/"

# ---- what changed ---------------------------------------------------------------------------------
if [ -z "$CHANGES" ]; then
  say "nothing changed"
else
  venv_count=$(printf '%s\n' "$CHANGES" | grep -c "^$VENV\(/\|\$\)" || true)
  say "changed:"
  printf '%s\n' "$CHANGES" | grep -v "^$VENV\(/\|\$\)" | sed "s|^$R||; s|^|  |" || true
  [ "$venv_count" -eq 0 ] || printf '  /opt/twinlock/venv/ (%s files)\n' "$venv_count"
fi
[ "${START_FAILED:-0}" -eq 0 ] || exit 1
