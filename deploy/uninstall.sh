#!/usr/bin/env bash
# Remove the TwinLock door daemon installed by deploy/install.sh.
#
#   sudo deploy/uninstall.sh [--purge]
#   sudo deploy/uninstall.sh --root DIR [--purge]     # from an image or a throw-away root
#
# Stops and disables twinlockd, removes its unit, /opt/twinlock (the venv), the system user
# `twinlock` (and its own group; the shared video and gpio groups stay), the deploy rule
# /etc/sudoers.d/twinlock-deploy and the group twinlock-deploy (its members stay as users).
# Keeps /var/lib/twinlock (audit log, model, gallery, bundles), the review records in
# /var/lib/twinlock-review (pictures of people: --purge deletes them), /etc/twinlock (your config, the
# trusted key), the drop folder /var/spool/twinlock (it may hold a bundle not yet installed) and
# your drop-ins in /etc/systemd/system/twinlockd.service.d (`systemctl edit twinlockd`, the MQTT
# drop-in) and /etc/systemd/system.control/twinlockd.service.d (`systemctl set-property`) unless
# --purge is given: a later install.sh picks them up again. Runtime settings (under /run) go.
# With --root DIR nothing outside DIR is touched and systemctl is never called.
# Running it again when nothing is left reports "nothing to remove".
set -euo pipefail

ROOT=/
PURGE=0
say() { printf 'twinlock uninstall: %s\n' "$*"; }
die() { printf 'twinlock uninstall: error: %s\n' "$*" >&2; exit 1; }
usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; }

while [ $# -gt 0 ]; do
  case "$1" in
    --root) ROOT=${2:?--root needs a folder}; shift 2 ;;
    --root=*) ROOT=${1#*=}; shift ;;
    --purge) PURGE=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done

[ "$(id -u)" -eq 0 ] || die "run as root (sudo)"
[ -d "$ROOT" ] || die "--root $ROOT is not a folder"
ROOT=$(cd "$ROOT" && pwd -P)
if [ "$ROOT" = / ]; then R=""; REAL_ROOT=1; ROOT_OPT=(); else R=$ROOT; REAL_ROOT=0; ROOT_OPT=(--root "$ROOT"); fi

SERVICE_USER=twinlock
DEPLOY_GROUP=twinlock-deploy
SUDOERS=$R/etc/sudoers.d/$DEPLOY_GROUP
UNIT=$R/etc/systemd/system/twinlockd.service
WANTS=$R/etc/systemd/system/multi-user.target.wants/twinlockd.service
did=0

# Stopped before anything is removed: userdel refuses a user whose daemon still runs. (Asked of
# systemctl directly: a unit that does not exist is neither active nor enabled.)
if [ "$REAL_ROOT" -eq 1 ] && [ -d /run/systemd/system ]; then
  if systemctl is-active --quiet twinlockd 2>/dev/null \
     || systemctl is-enabled --quiet twinlockd 2>/dev/null; then
    systemctl disable --now twinlockd   # the daemon switches the relay off as it stops
    say "service: stopped and disabled"
    did=1
  fi
fi

if [ -e "$UNIT" ] || [ -L "$WANTS" ]; then
  rm -f "$UNIT" "$WANTS"
  say "unit: removed /etc/systemd/system/twinlockd.service"
  did=1
  if [ "$REAL_ROOT" -eq 1 ] && [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    systemctl reset-failed twinlockd 2>/dev/null || true
  fi
fi

# Runtime settings (`systemctl set-property --runtime`, `systemctl edit --runtime`) go with the
# unit: they would vanish at the next boot, and until then systemd lists a unit made of them.
reload=0
for dir in /run/systemd/system.control/twinlockd.service.d /run/systemd/system/twinlockd.service.d; do
  if [ -e "$R$dir" ]; then
    rm -rf -- "$R$dir"
    say "removed $dir (runtime settings)"
    did=1
    reload=1
  fi
done

if [ -e "$R/opt/twinlock" ]; then
  rm -rf "$R/opt/twinlock"
  say "removed /opt/twinlock (the venv)"
  did=1
fi

if [ -f "$R/etc/passwd" ] && grep -q "^$SERVICE_USER:" "$R/etc/passwd"; then
  userdel "${ROOT_OPT[@]}" "$SERVICE_USER"
  say "user $SERVICE_USER: removed"
  did=1
fi
# userdel drops the user's own group only when login.defs says USERGROUPS_ENAB (Debian's default).
if [ -f "$R/etc/group" ] && grep -q "^$SERVICE_USER:" "$R/etc/group"; then
  groupdel "${ROOT_OPT[@]}" "$SERVICE_USER"
  say "group $SERVICE_USER: removed"
  did=1
fi

# The sudoers rule first: it names the group, and goes with it.
if [ -e "$SUDOERS" ] || [ -L "$SUDOERS" ]; then
  rm -f "$SUDOERS"
  say "sudoers: removed /etc/sudoers.d/$DEPLOY_GROUP"
  did=1
fi
if [ -f "$R/etc/group" ] && grep -q "^$DEPLOY_GROUP:" "$R/etc/group"; then
  groupdel "${ROOT_OPT[@]}" "$DEPLOY_GROUP"
  say "group $DEPLOY_GROUP: removed"
  did=1
fi

DROPINS=/etc/systemd/system/twinlockd.service.d
# `systemctl set-property twinlockd ...` (without --runtime) writes here: the household's settings
PROPERTIES=/etc/systemd/system.control/twinlockd.service.d
KEPT=(/var/lib/twinlock /var/lib/twinlock-review /etc/twinlock /var/spool/twinlock "$DROPINS"
      "$PROPERTIES")
if [ "$PURGE" -eq 1 ]; then
  for dir in "${KEPT[@]}"; do
    if [ -e "$R$dir" ]; then
      rm -rf -- "$R$dir"
      say "purged $dir"
      did=1
      case "$dir" in "$DROPINS"|"$PROPERTIES") reload=1 ;; esac
    fi
  done
else
  for dir in "${KEPT[@]}"; do
    [ ! -e "$R$dir" ] || say "kept $dir (remove it with --purge)"
  done
fi
if [ "$reload" -eq 1 ] && [ "$REAL_ROOT" -eq 1 ] && [ -d /run/systemd/system ]; then
  systemctl daemon-reload   # else systemd still lists a unit made of drop-ins alone
  systemctl reset-failed twinlockd 2>/dev/null || true
fi

[ "$did" -eq 1 ] || say "nothing to remove"
