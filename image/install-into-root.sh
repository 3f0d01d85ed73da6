#!/bin/bash
# Install edgehub into a Debian bookworm root directory: the one install step of the box image.
#
#   image/install-into-root.sh ROOT WHEEL_DIR
#
# ROOT is any bookworm root (pi-gen's stage rootfs, or the debootstrap root of image/check.sh);
# WHEEL_DIR holds edgehub-*.whl (and, for an offline install, the wheels of its dependencies).
# Everything inside the root runs through chroot, so the same script serves pi-gen (arm64 root
# under qemu-user) and our amd64 check. Safe to run twice.
#
# Environment:
#   EDGEHUB_PIP_DEPS  pypi (default): dependencies from PyPI (the image build machine)
#                     wheelhouse: dependencies only from WHEEL_DIR (--no-index)
#                     none: the edgehub wheel alone (image/check.sh here, where only Debian's
#                     mirror is reachable)
#   EDGEHUB_APT       1 (default): apt-get install the Debian packages below; 0: assume present
set -euo pipefail

ROOT=${1:?usage: install-into-root.sh ROOT WHEEL_DIR}
WHEEL_DIR=${2:?usage: install-into-root.sh ROOT WHEEL_DIR}
ROOT=$(realpath "$ROOT")
WHEEL_DIR=$(realpath "$WHEEL_DIR")
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
PIP_DEPS=${EDGEHUB_PIP_DEPS:-pypi}
DO_APT=${EDGEHUB_APT:-1}

# What the box needs from Debian. libusb for pyusb; kmod for the modprobe@ units; ca-certificates
# for the uplink's TLS; chrony, the store's time server (docs/box.md); systemd-sysv so the root
# boots with systemd as init; procps for /bin/kill, which Debian's mosquitto.service uses to
# reload without depending on it; fonts-wqy-microhei
# (CJK, 5.0 MiB installed) and fonts-symbola (emoji and symbols, 3.0 MiB) for tickets drawn on
# the box for printers without a Chinese font, and for emoji no printer font has.
# keepalived for a box of a pair (docs/pair.md: the store's floating address), idle on a single box
# (it has no config).
PACKAGES=(
    systemd systemd-sysv udev kmod dbus procps
    mosquitto mosquitto-clients keepalived
    chrony
    python3 python3-venv
    libusb-1.0-0 ca-certificates
    fonts-wqy-microhei fonts-symbola
)

log() { printf 'install-into-root: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

[ -f "$ROOT/etc/debian_version" ] || die "$ROOT is not a Debian root (no etc/debian_version)"
grep -q '^12\|bookworm' "$ROOT/etc/debian_version" || log "warning: $ROOT is not bookworm ($(cat "$ROOT/etc/debian_version"))"
compgen -G "$WHEEL_DIR/edgehub-*.whl" >/dev/null || die "no edgehub-*.whl in $WHEEL_DIR"
[ "$(id -u)" = 0 ] || die "run as root (chroot, chown)"

# --- chroot plumbing: mount what apt and pip need, undo exactly what we did --------------------
MOUNTED=()
cleanup() {
    local i
    for ((i = ${#MOUNTED[@]} - 1; i >= 0; i--)); do umount -l "${MOUNTED[$i]}" 2>/dev/null || true; done
    rm -rf "$ROOT/tmp/edgehub-wheels"
    if [ -f "$ROOT/usr/sbin/policy-rc.d.edgehub" ]; then
        rm -f "$ROOT/usr/sbin/policy-rc.d" "$ROOT/usr/sbin/policy-rc.d.edgehub"
    fi
}
trap cleanup EXIT
mount_once() { # TYPE/--bind SOURCE TARGET
    local target=$3
    mountpoint -q "$target" && return 0
    mkdir -p "$target"
    if [ "$1" = --bind ]; then mount --bind "$2" "$target"; else mount -t "$1" "$2" "$target"; fi
    MOUNTED+=("$target")
}
mount_once proc proc "$ROOT/proc"
mount_once sysfs sysfs "$ROOT/sys"
mount_once --bind /dev "$ROOT/dev"
mount_once devpts devpts "$ROOT/dev/pts"
in_root() { chroot "$ROOT" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 \
    DEBIAN_FRONTEND=noninteractive HOME=/root "$@"; }

# Packages must not start their services inside a chroot (pi-gen has its own policy-rc.d).
if [ ! -e "$ROOT/usr/sbin/policy-rc.d" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$ROOT/usr/sbin/policy-rc.d"
    chmod 755 "$ROOT/usr/sbin/policy-rc.d"
    touch "$ROOT/usr/sbin/policy-rc.d.edgehub"
fi

# --- Debian packages ---------------------------------------------------------------------------
if [ "$DO_APT" = 1 ]; then
    log "apt-get install ${PACKAGES[*]}"
    in_root apt-get update -qq
    in_root apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null
    in_root apt-get clean
fi

# --- the static user, before anything is chowned to it ----------------------------------------
install -D -m 644 "$REPO/systemd/edgehub.sysusers" "$ROOT/usr/lib/sysusers.d/edgehub.conf"
in_root systemd-sysusers /usr/lib/sysusers.d/edgehub.conf

# --- the venv and the wheel --------------------------------------------------------------------
log "venv /opt/edgehub/venv (pip deps: $PIP_DEPS)"
mkdir -p "$ROOT/tmp/edgehub-wheels"
cp "$WHEEL_DIR"/*.whl "$ROOT/tmp/edgehub-wheels/"
WHEEL=$(cd "$ROOT/tmp/edgehub-wheels" && ls -1 edgehub-*.whl | sort -V | tail -n 1)
[ -x "$ROOT/opt/edgehub/venv/bin/python" ] || in_root python3 -m venv /opt/edgehub/venv
PIP=(/opt/edgehub/venv/bin/pip install --quiet --disable-pip-version-check --no-cache-dir --upgrade)
case "$PIP_DEPS" in
    pypi) in_root "${PIP[@]}" --find-links /tmp/edgehub-wheels "/tmp/edgehub-wheels/$WHEEL" ;;
    wheelhouse) in_root "${PIP[@]}" --no-index --find-links /tmp/edgehub-wheels "/tmp/edgehub-wheels/$WHEEL" ;;
    none) in_root "${PIP[@]}" --no-deps --force-reinstall "/tmp/edgehub-wheels/$WHEEL" ;;
    *) die "EDGEHUB_PIP_DEPS must be pypi, wheelhouse or none, not $PIP_DEPS" ;;
esac
# Byte-compile now: the service cannot write into /opt at run time (ProtectSystem=strict), and
# compiling on every start on an SD card is slow.
in_root /opt/edgehub/venv/bin/python -m compileall -q /opt/edgehub/venv/lib >/dev/null || true
install -D -m 644 "$REPO/docs/box.md" "$ROOT/opt/edgehub/docs/box.md"
# On PATH (sudo's secure_path has /usr/local/bin): `sudo edgehub provision`, `edgehub doctor`,
# `edgehub bundle` as docs/box.md says. The units keep calling the venv's copy by its full path.
install -d -m 755 "$ROOT/usr/local/bin"
ln -sfn /opt/edgehub/venv/bin/edgehub "$ROOT/usr/local/bin/edgehub"

# --- units, rules, tmpfiles --------------------------------------------------------------------
install -D -m 644 "$REPO/systemd/edgehub.service" "$ROOT/usr/lib/systemd/system/edgehub.service"
install -D -m 644 "$REPO/systemd/edgehub-provision.service" "$ROOT/usr/lib/systemd/system/edgehub-provision.service"
install -D -m 644 "$REPO/systemd/mosquitto.service.d/edgehub.conf" \
    "$ROOT/usr/lib/systemd/system/mosquitto.service.d/edgehub.conf"
install -D -m 644 "$REPO/systemd/keepalived.service.d/edgehub.conf" \
    "$ROOT/usr/lib/systemd/system/keepalived.service.d/edgehub.conf"
install -D -m 644 "$REPO/systemd/99-edgehub.rules" "$ROOT/usr/lib/udev/rules.d/99-edgehub.rules"
install -D -m 644 "$REPO/systemd/edgehub.tmpfiles" "$ROOT/usr/lib/tmpfiles.d/edgehub.conf"
in_root systemd-tmpfiles --create --prefix=/etc/edgehub --prefix=/var/lib/edgehub /usr/lib/tmpfiles.d/edgehub.conf

# --- journald: persistent, so remote support sees what happened before a power cut, but bounded
# and synced lazily for the SD card. 90- sorts after Raspberry Pi OS's volatile-storage drop-in.
install -d -m 755 "$ROOT/etc/systemd/journald.conf.d"
cat > "$ROOT/etc/systemd/journald.conf.d/90-edgehub.conf" <<'EOF'
# edgehub box: a bounded persistent journal (installed by image/install-into-root.sh).
[Journal]
Storage=persistent
Compress=yes
# A few weeks of a busy store fit; the journal never crowds out the order journal's disk.
SystemMaxUse=64M
SystemKeepFree=512M
SystemMaxFileSize=8M
MaxRetentionSec=1month
RuntimeMaxUse=16M
# Batch writes: one sync every 5 minutes (and at once for crit/alert/emerg, journald's rule).
SyncIntervalSec=5m
# Keep one copy of each line on the SD card, not two.
ForwardToSyslog=no
EOF
install -d -m 2755 -g systemd-journal "$ROOT/var/log/journal" 2>/dev/null || install -d -m 2755 "$ROOT/var/log/journal"

# --- the root file system's mount options: image/rootfs.env, the same the power-cut tests mount
# their ext4 with (pi-gen's fstab mounts / "defaults,noatime"; docs/footprint.md, Power cuts).
MOUNT_OPTIONS=$(sed -n 's/^MOUNT_OPTIONS="\(.*\)"$/\1/p' "$HERE/rootfs.env")
[ -n "$MOUNT_OPTIONS" ] || die "image/rootfs.env has no MOUNT_OPTIONS"
if [ -f "$ROOT/etc/fstab" ] && awk '$2 == "/" && $3 == "ext4" { found = 1 } END { exit !found }' "$ROOT/etc/fstab"; then
    awk -v opts="$MOUNT_OPTIONS" 'BEGIN { OFS = "  " } $2 == "/" && $3 == "ext4" { $4 = opts } { print }' \
        "$ROOT/etc/fstab" > "$ROOT/etc/fstab.edgehub" && mv "$ROOT/etc/fstab.edgehub" "$ROOT/etc/fstab"
fi

# --- the store's time server: chrony with the chain's servers ([clock] in edgehub.toml), which
# provisioning writes to conf.d/edgehub.conf; Debian's own pool line would be one more upstream.
if [ -f "$ROOT/etc/chrony/chrony.conf" ]; then
    sed -i 's/^pool 2\.debian\.pool\.ntp\.org/# edgehub: the servers are in conf.d\/edgehub.conf\n# &/' \
        "$ROOT/etc/chrony/chrony.conf"
fi

# Swap on an SD card is wear for nothing on a box this size.
if [ -e "$ROOT/usr/lib/systemd/system/dphys-swapfile.service" ] || [ -e "$ROOT/lib/systemd/system/dphys-swapfile.service" ]; then
    in_root systemctl disable dphys-swapfile.service >/dev/null 2>&1 || true
fi

# --- enable: provisioning on boot, the broker, the time server, the hub -----------------------
in_root systemctl enable edgehub-provision.service mosquitto.service chrony.service edgehub.service >/dev/null 2>&1 \
    || in_root systemctl enable edgehub-provision.service mosquitto.service chrony.service edgehub.service

# Each box must get its own machine id on first boot (pi-gen's export regenerates SSH host keys).
if [ -s "$ROOT/etc/machine-id" ]; then : > "$ROOT/etc/machine-id"; fi
if [ -d "$ROOT/var/lib/dbus" ] && [ ! -L "$ROOT/var/lib/dbus/machine-id" ]; then
    ln -sf /etc/machine-id "$ROOT/var/lib/dbus/machine-id"
fi

log "installed $WHEEL into $ROOT"
