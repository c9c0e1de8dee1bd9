#!/usr/bin/env bash
# Runs the door's unit under a real systemd: boots Debian in a VM (qemu, software emulation) and
# runs tests/vm/ against it. Nothing here needs a Pi, KVM or network beyond Debian's and PyPI's.
#
#   sudo scripts/vm-tests.sh                   # bookworm: build/cache the image, run tests/vm/
#   sudo scripts/vm-tests.sh --image-only      # only build (or find) the cached image
#   sudo scripts/vm-tests.sh -k reload         # other arguments go to pytest (also after --)
#   TWINLOCK_VM_UNIT_DROPIN=tests/vm/mutants/unguarded.conf sudo scripts/vm-tests.sh
#                                              # a broken drop-in, to watch the tests fail
#                                              # (several: FILE:FILE; see tests/vm/mutants/)
#
# Stages (each one's time is printed and written to .cache/vm/run/stages-SUITE.json; the steps in
# the guest go to .cache/vm/run/times-SUITE.json with the memory figures):
#   host-apt   qemu-system-x86, qemu-utils, debootstrap, e2fsprogs, openssh-client (apt-get update
#              first; only when something is missing)
#   image      debootstrap minbase + Debian's kernel and initrd + ext4 image, cached under
#              .cache/vm/<suite>-<hash of the recipe below>/ (ignored by git): any change to the
#              recipe builds a new one. About 3-4 min on 2 cores; a cached image takes 0 s.
#   wheel      `pip wheel --no-deps .` on the host: the package a user installs.
#   wheelhouse the wheel's [device] dependencies for the guest's Python (cp311 manylinux x86_64),
#              `pip download` on the host, cached by requirements: the guest reaches Debian's apt
#              through qemu's user network but not PyPI, so install.sh installs from this folder
#              (PIP_NO_INDEX=1, PIP_FIND_LINKS=...; install.sh honours pip's environment).
#   tests      pytest tests/vm/ with TWINLOCK_VM_IMAGE etc.: the fixtures in tests/vm/vm_guest.py
#              boots ONE VM on a throw-away qcow2 overlay, ssh forwarded to 127.0.0.1 only, and
#              always kills its qemu by pid (the console's tail is shown when a wait times out).
#
# Environment: TWINLOCK_VM_SUITE (bookworm, or trixie), TWINLOCK_VM_CACHE (.cache/vm), TWINLOCK_DEBIAN_MIRROR,
# TWINLOCK_VM_ACCEL (tcg; "kvm" only on a host with real VMX/SVM: a nested /dev/kvm hangs Debian's
# kernel), TWINLOCK_VM_CPU (qemu's -cpu model: max under TCG, Nehalem for trixie, host under KVM),
# TWINLOCK_VM_MEM (2048), TWINLOCK_VM_CPUS (2), TWINLOCK_VM_NICE (15).
# Exit status: pytest's (or 1 when a stage before it failed).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd -P)

SUITE=${TWINLOCK_VM_SUITE:-bookworm}
CACHE=${TWINLOCK_VM_CACHE:-$REPO/.cache/vm}
MIRROR=${TWINLOCK_DEBIAN_MIRROR:-http://deb.debian.org/debian}
NICE=${TWINLOCK_VM_NICE:-15}
PY=${PYTHON:-$REPO/.venv/bin/python}
IMAGE_ONLY=0
PYTEST_ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --image-only) IMAGE_ONLY=1; shift ;;
    --) shift; PYTEST_ARGS=("$@"); break ;;
    -h|--help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
    *) PYTEST_ARGS+=("$1"); shift ;;
  esac
done

HOST_APT_PACKAGES=(qemu-system-x86 qemu-utils debootstrap e2fsprogs openssh-client)
# ---- the image's recipe: any change here (or in build_image) builds a new image ----------------
GUEST_PACKAGES=systemd,systemd-sysv,udev,dbus,linux-image-amd64,initramfs-tools,openssh-server,python3,python3-venv,ca-certificates,iproute2,zstd,sudo,procps,kmod
IMAGE_SIZE=4G
DEPLOY_USER=pi          # the account `twinlock deploy` logs in as (as on a Pi)
RECIPE_VERSION=1        # bump when build_image changes in a way the hash below cannot see
case "$SUITE" in
  bookworm) GUEST_PY=3.11 ;;
  trixie) GUEST_PY=3.13
    # qemu 7.2's TCG gets AVX2's gathers wrong: numpy 2.5's FLOAT_maximum_X86_V3 (vpgatherdd)
    # segfaulted the daemon under -cpu max. Nehalem (x86-64-v2, no AVX) keeps numpy on its
    # baseline code; measured: the segfault gone, start and sandbox tests passed.
    if [ "${TWINLOCK_VM_ACCEL:-tcg}" = tcg ]; then export TWINLOCK_VM_CPU=${TWINLOCK_VM_CPU:-Nehalem}; fi ;;
  *) echo "vm-tests: unknown suite $SUITE (bookworm or trixie)" >&2; exit 1 ;;
esac

log() { printf 'vm-tests: %s\n' "$*" >&2; }
TIMES=()
stage_start() { STAGE=$1; STAGE_T0=$(date +%s); log "stage $STAGE ..."; }
stage_end() {
  local dt=$(( $(date +%s) - STAGE_T0 ))
  TIMES+=("\"$STAGE\": $dt"); log "stage $STAGE: ${dt} s${1:+ ($1)}"
}

# ---- host packages ------------------------------------------------------------------------------
stage_start host-apt
missing=()
for pkg in "${HOST_APT_PACKAGES[@]}"; do
  # shellcheck disable=SC2016  # dpkg-query's field
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  [ "$(id -u)" -eq 0 ] || { log "needs root to apt-get install ${missing[*]}"; exit 1; }
  log "apt: installing ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
stage_end "${missing[*]:-nothing to install}"

# ---- the image --------------------------------------------------------------------------------------
build_image() {  # build_image DIR: rootfs -> DIR/{disk.img,vmlinuz,initrd.img,id_ed25519}
  local dir=$1 rootfs=$1/rootfs
  rm -rf "$rootfs"; mkdir -p "$rootfs"
  nice -n "$NICE" debootstrap --variant=minbase --arch=amd64 --include="$GUEST_PACKAGES" \
    "$SUITE" "$rootfs" "$MIRROR" > "$dir/debootstrap.log" 2>&1 \
    || { tail -n 30 "$dir/debootstrap.log" >&2; return 1; }
  ssh-keygen -q -t ed25519 -N '' -C "twinlock-vm-tests" -f "$dir/id_ed25519"
  echo "twinlock-vm" > "$rootfs/etc/hostname"
  printf '127.0.0.1 localhost\n127.0.1.1 twinlock-vm\n' > "$rootfs/etc/hosts"
  echo "/dev/vda / ext4 rw,relatime 0 1" > "$rootfs/etc/fstab"
  install -d -m 0700 "$rootfs/root/.ssh"
  install -m 0600 "$dir/id_ed25519.pub" "$rootfs/root/.ssh/authorized_keys"
  # The deploy account, as a Pi's `pi`: a plain user whose key `twinlock deploy` uses.
  chroot "$rootfs" useradd --create-home --shell /bin/bash "$DEPLOY_USER"
  local ids; ids=$(chroot "$rootfs" id -u "$DEPLOY_USER"):$(chroot "$rootfs" id -g "$DEPLOY_USER")
  install -d -m 0700 -o "${ids%:*}" -g "${ids#*:}" "$rootfs/home/$DEPLOY_USER/.ssh"
  install -m 0600 -o "${ids%:*}" -g "${ids#*:}" "$dir/id_ed25519.pub" "$rootfs/home/$DEPLOY_USER/.ssh/authorized_keys"
  cat > "$rootfs/etc/systemd/network/10-dhcp.network" <<'EOF'
[Match]
Name=en* eth*

[Network]
DHCP=yes
EOF
  chroot "$rootfs" systemctl enable systemd-networkd >/dev/null 2>&1
  chroot "$rootfs" systemctl mask apt-daily.timer apt-daily-upgrade.timer >/dev/null 2>&1 || true
  # sshd: no DNS lookups of the client (qemu's user net has no reverse DNS: each login would wait)
  echo "UseDNS no" > "$rootfs/etc/ssh/sshd_config.d/twinlock-vm.conf"
  # shellcheck disable=SC2012  # Debian's own file names
  cp "$(ls "$rootfs"/boot/vmlinuz-* | sort -V | tail -n 1)" "$dir/vmlinuz"
  # shellcheck disable=SC2012
  cp "$(ls "$rootfs"/boot/initrd.img-* | sort -V | tail -n 1)" "$dir/initrd.img"
  chmod 0644 "$dir/vmlinuz" "$dir/initrd.img"
  mkfs.ext4 -q -F -L twinlock-vm -d "$rootfs" "$dir/disk.img" "$IMAGE_SIZE"
  # shellcheck disable=SC2016  # dpkg-query's fields
  chroot "$rootfs" dpkg-query -W -f='${Package} ${Version}\n' systemd python3 linux-image-amd64 > "$dir/versions.txt"
  rm -rf "$rootfs"
}
RECIPE_HASH=$( { printf '%s\n' "$SUITE" "$GUEST_PACKAGES" "$IMAGE_SIZE" "$DEPLOY_USER" \
  "$RECIPE_VERSION" "$MIRROR"; declare -f build_image; } | sha256sum | cut -c1-12)
IMAGE_DIR=$CACHE/$SUITE-$RECIPE_HASH

stage_start image
if [ -f "$IMAGE_DIR/ok" ]; then
  stage_end "cached: $IMAGE_DIR"
else
  [ "$(id -u)" -eq 0 ] || { log "building the image needs root (debootstrap, chroot)"; exit 1; }
  rm -rf "$IMAGE_DIR"; mkdir -p "$IMAGE_DIR"
  build_image "$IMAGE_DIR" || { log "image build failed (see $IMAGE_DIR/debootstrap.log)"; exit 1; }
  touch "$IMAGE_DIR/ok"
  stage_end "built $IMAGE_DIR: $(du -sh "$IMAGE_DIR/disk.img" | cut -f1) on disk"
fi
# Older images of this suite (another recipe) are removed: they are large.
for old in "$CACHE/$SUITE"-*; do
  [ "$old" = "$IMAGE_DIR" ] || [ ! -d "$old" ] || { log "removing stale image $old"; rm -rf "$old"; }
done
if [ "$IMAGE_ONLY" -eq 1 ]; then echo "$IMAGE_DIR"; exit 0; fi

# ---- the wheel a user installs, and its dependencies for the guest ---------------------------------
RUN_DIR=$CACHE/run
mkdir -p "$RUN_DIR"
stage_start wheel
rm -rf "$RUN_DIR/src" "$RUN_DIR/wheel"; mkdir -p "$RUN_DIR/src" "$RUN_DIR/wheel"
# The working tree as it is (tracked and new files), built from a copy: no build/ in the checkout.
git ls-files -z --cached --others --exclude-standard -- pyproject.toml README.md daemon trainer \
  | tar -C "$REPO" --null -T - -cf - | tar -C "$RUN_DIR/src" -xf -
nice -n "$NICE" "$PY" -m pip wheel -q --no-deps -w "$RUN_DIR/wheel" "$RUN_DIR/src" \
  > "$RUN_DIR/wheel.log" 2>&1 || { cat "$RUN_DIR/wheel.log" >&2; exit 1; }
WHEEL=$(ls "$RUN_DIR"/wheel/twinlock-*.whl)
stage_end "$(basename "$WHEEL")"

stage_start wheelhouse
# [device]'s requirements, read from the wheel's own metadata, for the guest's Python.
DEVICE_REQS=$(unzip -p "$WHEEL" '*.dist-info/METADATA' 2>/dev/null \
  || "$PY" -c 'import sys, zipfile; z = zipfile.ZipFile(sys.argv[1]); print(z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode())' "$WHEEL")
DEVICE_REQS=$(printf '%s\n' "$DEVICE_REQS" | sed -n 's/^Requires-Dist: //p' \
  | grep -E "extra == .device.|^[^;]*$" | sed 's/ *;.*//' | LC_ALL=C sort)
HOUSE=$CACHE/wheelhouse-cp${GUEST_PY/./}-$(printf '%s\n' "$DEVICE_REQS" | sha256sum | cut -c1-12)
if [ -f "$HOUSE/ok" ]; then
  stage_end "cached: $HOUSE"
else
  rm -rf "$HOUSE"; mkdir -p "$HOUSE"
  mapfile -t reqs <<< "$DEVICE_REQS"
  nice -n "$NICE" "$PY" -m pip download -q -d "$HOUSE" --only-binary=:all: \
    --python-version "$GUEST_PY" --implementation cp --abi "cp${GUEST_PY/./}" \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_34_x86_64 --platform any \
    "${reqs[@]}" pip setuptools wheel > "$HOUSE.log" 2>&1 || { cat "$HOUSE.log" >&2; exit 1; }
  touch "$HOUSE/ok"
  wheels=("$HOUSE"/*.whl)
  stage_end "${#wheels[@]} wheels, $(du -sh "$HOUSE" | cut -f1)"
fi
for old in "$CACHE/wheelhouse-cp${GUEST_PY/./}"-*; do
  [ "$old" = "$HOUSE" ] || [ "$old" = "$HOUSE.log" ] || rm -rf "$old"
done

# ---- the tests ----------------------------------------------------------------------------------------
stage_start tests
set +e
TWINLOCK_VM_IMAGE=$IMAGE_DIR TWINLOCK_VM_WHEEL=$WHEEL TWINLOCK_VM_WHEELHOUSE=$HOUSE \
TWINLOCK_VM_SUITE=$SUITE TWINLOCK_VM_DEPLOY_USER=$DEPLOY_USER TWINLOCK_VM_TIMES=$RUN_DIR/times-$SUITE.json \
  "$PY" -m pytest -p no:cacheprovider -v -s tests/vm "${PYTEST_ARGS[@]}"
status=$?
set -e
stage_end "pytest exit $status"
printf '{%s}\n' "$(IFS=,; echo "${TIMES[*]}")" > "$RUN_DIR/stages-$SUITE.json"
log "stage times: $(cat "$RUN_DIR/stages-$SUITE.json"); in-guest steps: $RUN_DIR/times-$SUITE.json"
exit "$status"
