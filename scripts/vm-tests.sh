#!/usr/bin/env bash
# Runs the door's unit under a real systemd: boots Debian in a VM (qemu, software emulation) and
# runs tests/vm/ against it. Nothing here needs a Pi, KVM or network beyond Debian's and PyPI's.
#
#   sudo scripts/vm-tests.sh                   # bookworm: build/cache the image, run tests/vm/
#   sudo scripts/vm-tests.sh --image-only      # only build (or find) the cached image
#   sudo scripts/vm-tests.sh -k reload         # other arguments go to pytest (also after --)
#   sudo scripts/vm-tests.sh --all             # bookworm, then trixie, every test of each
#                                              # (scripts/test.sh runs bookworm without Ansible)
#   TWINLOCK_VM_UNIT_DROPIN=tests/vm/mutants/unguarded.conf sudo scripts/vm-tests.sh
#                                              # a broken drop-in, to watch the tests fail
#                                              # (several: FILE:FILE; see tests/vm/mutants/)
#   TWINLOCK_VM_ACTION='{"pin": 18}' sudo scripts/vm-tests.sh -k clip
#                                              # the door's action keys changed (JSON), e.g. the
#                                              # wrong pin, to watch the relay line's checks fail
#
# Stages (each one's time is printed and written to .cache/vm/run/stages-SUITE.json; the steps in
# the guest go to .cache/vm/run/times-SUITE.json with the memory figures):
#   host-apt   qemu-system-x86, qemu-utils, debootstrap, e2fsprogs, openssh-client (apt-get update
#              first; only when something is missing)
#   image      debootstrap minbase + Debian's kernel and initrd, the gpio-sim and v4l2loopback
#              modules built for that kernel, lgpio, a gpio-sim chip at boot + ext4 image, cached under
#              .cache/vm/<suite>-<hash of the recipe below>/ (ignored by git): any change to the
#              recipe builds a new one. About 5 min on 2 cores; a cached image takes 0 s.
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
ALL=0
PYTEST_ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --image-only) IMAGE_ONLY=1; shift ;;
    --all) ALL=1; shift ;;
    --) shift; PYTEST_ARGS=("$@"); break ;;
    -h|--help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
    *) PYTEST_ARGS+=("$1"); shift ;;
  esac
done
if [ "$ALL" -eq 1 ]; then  # each distribution in turn, one VM at a time; fails if either does
  all_status=0
  again=(); [ "$IMAGE_ONLY" -eq 0 ] || again=(--image-only)
  for suite in bookworm trixie; do
    TWINLOCK_VM_SUITE=$suite bash "$0" "${again[@]}" -- "${PYTEST_ARGS[@]}" || all_status=$?
  done
  exit "$all_status"
fi

HOST_APT_PACKAGES=(qemu-system-x86 qemu-utils debootstrap e2fsprogs openssh-client)
# ---- the image's recipe: any change here (or in build_image) builds a new image ----------------
GUEST_PACKAGES=systemd,systemd-sysv,udev,dbus,linux-image-amd64,initramfs-tools,openssh-server,python3,python3-venv,ca-certificates,iproute2,zstd,sudo,procps,kmod
IMAGE_SIZE=4G
DEPLOY_USER=pi          # the account `twinlock deploy` logs in as (as on a Pi)
RECIPE_VERSION=2        # bump when build_image changes in a way the hash below cannot see
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
# Kernel modules Debian's amd64 kernels lack, built in the chroot for the guest's own kernel (not
# the host's), then the compilers and sources purged: gpio-sim (a real /dev/gpiochipN for the
# relay; drivers/gpio/gpio-sim.c of Debian's linux-source of exactly the image kernel's version)
# and v4l2loopback (a /dev/videoN to feed the clip to; Debian's v4l2loopback-dkms source, built by
# hand: dkms would build for the running, i.e. the host's, kernel). Both go to
# /lib/modules/KVER/updates (depmod -a KVER). Unsigned: they taint the kernel, as any
# out-of-tree module does, and load because Debian does not force signatures without Secure Boot.
build_guest_modules() {  # build_guest_modules ROOTFS
  local rootfs=$1 kver kpkgver series work=/tmp/twinlock-modules
  # shellcheck disable=SC2012  # Debian's own folder names
  kver=$(ls "$rootfs/lib/modules" | sort -V | tail -n 1)
  # shellcheck disable=SC2016  # dpkg-query's field
  kpkgver=$(chroot "$rootfs" dpkg-query -W -f='${Version}' "linux-image-$kver")
  series=$(echo "$kver" | cut -d. -f1-2)
  local apt=(chroot "$rootfs" env DEBIAN_FRONTEND=noninteractive LC_ALL=C apt-get -y -qq
             -o APT::Sandbox::User=root)
  "${apt[@]}" update
  "${apt[@]}" install --no-install-recommends "linux-headers-$kver" gcc make > /dev/null
  rm -rf "${rootfs:?}$work"; mkdir -p "$rootfs$work/gpio-sim" "$rootfs$work/debs"
  # the exact source version of the image's kernel: the same Debian upload as linux-image-KVER
  chroot "$rootfs" sh -c "cd $work/debs && apt-get -qq -o APT::Sandbox::User=root \
    download linux-source-$series=$kpkgver v4l2loopback-dkms"
  dpkg-deb --fsys-tarfile "$rootfs$work"/debs/linux-source-*.deb \
    | tar -xOf - "./usr/src/linux-source-$series.tar.xz" \
    | tar -xJf - -C "$rootfs$work/gpio-sim" --strip-components=3 \
        "linux-source-$series/drivers/gpio/gpio-sim.c" "linux-source-$series/drivers/gpio/gpiolib.h" \
        "linux-source-$series/kernel/irq/irq_sim.c"
  # gpio-sim's interrupts come from kernel/irq/irq_sim.c, which Debian does not build either
  # (CONFIG_IRQ_SIM is selected only by the simulators): linked into the same module.
  # Its one call the kernel does not export to modules, handle_simple_irq(irq_to_desc(irq)), is
  # what generic_handle_irq_safe(irq) does (the domain's handler is handle_simple_irq). The tests
  # use no GPIO interrupt; a line requested for edges would go through here.
  sed -i 's/handle_simple_irq(irq_to_desc(\([a-z_]*\)))/generic_handle_irq_safe(\1)/' \
    "$rootfs$work/gpio-sim/irq_sim.c"
  mv "$rootfs$work/gpio-sim/gpio-sim.c" "$rootfs$work/gpio-sim/gpio-sim-main.c"
  printf 'obj-m := gpio-sim.o\ngpio-sim-y := gpio-sim-main.o irq_sim.o\n' > "$rootfs$work/gpio-sim/Makefile"
  dpkg-deb -x "$rootfs$work"/debs/v4l2loopback-dkms_*.deb "$rootfs$work/v4l2"
  local v4l2; v4l2=$(cd "$rootfs$work/v4l2/usr/src" && ls -d v4l2loopback-*)
  chroot "$rootfs" make -s -C "/usr/src/linux-headers-$kver" M="$work/gpio-sim" modules
  chroot "$rootfs" make -s -C "/usr/src/linux-headers-$kver" M="$work/v4l2/usr/src/$v4l2" modules
  install -D -m 0644 "$rootfs$work/gpio-sim/gpio-sim.ko" "$rootfs/lib/modules/$kver/updates/gpio-sim.ko"
  install -D -m 0644 "$rootfs$work/v4l2/usr/src/$v4l2/v4l2loopback.ko" \
    "$rootfs/lib/modules/$kver/updates/v4l2loopback.ko"
  chroot "$rootfs" depmod -a "$kver"
  printf 'kernel %s (linux-image %s): gpio-sim from linux-source-%s %s, %s\n' "$kver" "$kpkgver" \
    "$series" "$kpkgver" "$v4l2" > "$rootfs/etc/twinlock-vm-modules"
  rm -rf "${rootfs:?}$work"
  "${apt[@]}" purge --auto-remove "linux-headers-$kver" gcc make > /dev/null
  "${apt[@]}" clean
}

# The guest's stand-in for a Pi's GPIO header: at boot, twinlock-vm-gpio.service loads gpio-sim
# and makes one chip of 28 lines (BCM 0-27) through configfs: /dev/gpiochip0, group gpio (a
# udev rule as Raspberry Pi OS has), each line's value readable from outside the daemon in
# /run/twinlock-vm/gpiochip/sim_gpioN/value. gpiozero's factories take the board from the
# Revision line of /proc/cpuinfo (PinUnknownPi without one) and the unit mounts a fresh
# /proc (ProtectProc=invisible): the drop-in 10-vm-pi.conf binds a copy of the guest's cpuinfo
# with a Pi 4's Revision over it, for the unit only. lgpio, the pin factory, as on a Pi: a
# system package the venv sees (--system-site-packages): Debian's python3-lgpio where the suite
# has it, else PyPI's wheel installed system-wide (bookworm: Debian has no python3-lgpio).
install_guest_gpio() {  # install_guest_gpio ROOTFS DIR
  local rootfs=$1 dir=$2
  chroot "$rootfs" groupadd -f --system gpio
  echo 'SUBSYSTEM=="gpio", KERNEL=="gpiochip*", GROUP="gpio", MODE="0660"' \
    > "$rootfs/etc/udev/rules.d/60-twinlock-vm-gpio.rules"
  cat > "$rootfs/usr/local/sbin/twinlock-vm-gpio" <<'EOF'
#!/bin/sh
# gpio-sim chip "header" (28 lines, pulled down) for the tests; see scripts/vm-tests.sh.
set -eu
modprobe gpio-sim
mountpoint -q /sys/kernel/config || mount -t configfs configfs /sys/kernel/config
sim=/sys/kernel/config/gpio-sim/header
mkdir -p "$sim/bank0"
echo 28 > "$sim/bank0/num_lines"
echo pinctrl-sim > "$sim/bank0/label"
echo 1 > "$sim/live"
udevadm settle
mkdir -p /run/twinlock-vm
ln -sfn "/sys/devices/platform/$(cat "$sim/dev_name")/$(cat "$sim/bank0/chip_name")" \
  /run/twinlock-vm/gpiochip
{ cat /proc/cpuinfo
  printf 'Hardware\t: BCM2835\nRevision\t: c03114\nModel\t\t: Raspberry Pi 4 Model B Rev 1.4\n'
} > /run/twinlock-vm/cpuinfo
EOF
  chmod 0755 "$rootfs/usr/local/sbin/twinlock-vm-gpio"
  cat > "$rootfs/etc/systemd/system/twinlock-vm-gpio.service" <<'EOF'
[Unit]
Description=gpio-sim chip standing in for a Pi's GPIO header (TwinLock's VM tests)
Before=twinlockd.service
After=systemd-udevd.service

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/local/sbin/twinlock-vm-gpio

[Install]
WantedBy=multi-user.target
EOF
  chroot "$rootfs" systemctl enable twinlock-vm-gpio.service >/dev/null 2>&1
  install -d "$rootfs/etc/systemd/system/twinlockd.service.d"
  cat > "$rootfs/etc/systemd/system/twinlockd.service.d/10-vm-pi.conf" <<'EOF'
# The VM is not a Pi: gpiozero finds the board's revision in this copy of /proc/cpuinfo
# (made at boot by twinlock-vm-gpio.service). Nothing else of the unit changes.
[Service]
BindReadOnlyPaths=-/run/twinlock-vm/cpuinfo:/proc/cpuinfo
EOF
  local apt=(chroot "$rootfs" env DEBIAN_FRONTEND=noninteractive LC_ALL=C apt-get -y -qq)
  local pip="set -- /usr/share/python-wheels/pip-*.whl; python3 \$1/pip install -q --no-index --no-deps \
    --break-system-packages --root-user-action=ignore"
  if chroot "$rootfs" apt-cache show python3-lgpio >/dev/null 2>&1; then
    "${apt[@]}" install --no-install-recommends python3-lgpio > /dev/null
    echo "lgpio: Debian's python3-lgpio" >> "$rootfs/etc/twinlock-vm-modules"
    return
  fi
  local py; py=$(chroot "$rootfs" python3 -c 'import sys; print("%d%d" % sys.version_info[:2])')
  mkdir -p "$dir/lgpio"
  if "$PY" -m pip download -q -d "$dir/lgpio" --no-deps --only-binary=:all: --implementation cp \
      --python-version "$py" --abi "cp$py" --platform manylinux_2_34_x86_64 lgpio==0.2.2.0 \
      > "$dir/lgpio.log" 2>&1; then
    cp "$dir"/lgpio/lgpio-*.whl "$rootfs/tmp/"
    chroot "$rootfs" sh -c "$pip /tmp/lgpio-*.whl"
    echo "lgpio: PyPI's lgpio 0.2.2.0 wheel, system-wide (Debian $SUITE has no python3-lgpio)" \
      >> "$rootfs/etc/twinlock-vm-modules"
  else  # no wheel for this Python (cp313): PyPI's source, built as its own wheels are (PYPI=1)
    "$PY" -m pip download -q -d "$dir/lgpio" --no-deps --no-binary=:all: lgpio==0.2.2.0 \
      >> "$dir/lgpio.log" 2>&1
    cp "$dir"/lgpio/lgpio-*.tar.gz "$rootfs/tmp/"
    "${apt[@]}" install --no-install-recommends gcc swig python3-dev python3-setuptools > /dev/null
    chroot "$rootfs" sh -c "export PYPI=1; $pip --no-build-isolation /tmp/lgpio-*.tar.gz"
    "${apt[@]}" purge --auto-remove gcc swig python3-dev python3-setuptools > /dev/null
    "${apt[@]}" clean
    echo "lgpio: PyPI's lgpio 0.2.2.0 source built for cp$py, system-wide (Debian $SUITE has" \
      "no python3-lgpio, PyPI no cp$py wheel)" >> "$rootfs/etc/twinlock-vm-modules"
  fi
  rm -f "$rootfs"/tmp/lgpio-*
  chroot "$rootfs" python3 -c 'import lgpio'
}

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
  build_guest_modules "$rootfs"
  install_guest_gpio "$rootfs" "$dir"
  # shellcheck disable=SC2012  # Debian's own file names
  cp "$(ls "$rootfs"/boot/vmlinuz-* | sort -V | tail -n 1)" "$dir/vmlinuz"
  # shellcheck disable=SC2012
  cp "$(ls "$rootfs"/boot/initrd.img-* | sort -V | tail -n 1)" "$dir/initrd.img"
  chmod 0644 "$dir/vmlinuz" "$dir/initrd.img"
  mkfs.ext4 -q -F -L twinlock-vm -d "$rootfs" "$dir/disk.img" "$IMAGE_SIZE"
  # shellcheck disable=SC2016  # dpkg-query's fields
  chroot "$rootfs" dpkg-query -W -f='${Package} ${Version}\n' systemd python3 linux-image-amd64 > "$dir/versions.txt"
  cat "$rootfs/etc/twinlock-vm-modules" >> "$dir/versions.txt"
  rm -rf "$rootfs"
}
RECIPE_HASH=$( { printf '%s\n' "$SUITE" "$GUEST_PACKAGES" "$IMAGE_SIZE" "$DEPLOY_USER" \
  "$RECIPE_VERSION" "$MIRROR"; declare -f build_image build_guest_modules install_guest_gpio; } | sha256sum | cut -c1-12)
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
