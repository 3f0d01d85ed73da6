#!/bin/bash
# image-check: install edgehub into a fresh Debian bookworm root and prove what a build machine
# can prove without a Raspberry Pi (slow: about 2-4 minutes; not part of the normal test suite).
#
#   sudo image/check.sh            (what `make image-check` runs)
#
# 1. debootstrap --variant=minbase bookworm (amd64; cached pristine under $WORK/base)
# 2. build the edgehub wheel from this repo (pip wheel --no-deps)
# 3. image/install-into-root.sh into a copy of that root (the step pi-gen's stage runs)
# 4. systemd-analyze verify --root on our units: stderr must be empty
# 5. systemd-analyze security --offline: edgehub.service exposure <= $EDGEHUB_EXPOSURE_MAX
# 6. udevadm test inside the root: bookworm's udev parses 99-edgehub.rules without complaint
# 7. boot the root with systemd-nspawn: provisioning runs from a boot-partition file, Mosquitto
#    starts on the generated config (anonymous refused, the hub's password accepted), a second
#    provisioning changes nothing, and edgehub.service starts under its real sandbox.
#
# Environment: EDGEHUB_CHECK_DIR (work dir, default /var/tmp/edgehub-image-check),
# EDGEHUB_CHECK_FRESH=1 (debootstrap again), EDGEHUB_EXPOSURE_MAX (default 2.5),
# PYTHON (builds the wheel, default python3), EDGEHUB_CHECK_SITE_PACKAGES (a site-packages folder
# holding edgehub's dependencies, copied into the root's venv so the daemon itself can start:
# only Debian's mirror is reachable here, so the venv cannot get them from PyPI; default: the
# site-packages of $PYTHON when it can import aiohttp and paho).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
WORK=${EDGEHUB_CHECK_DIR:-/var/tmp/edgehub-image-check}
MIRROR=${EDGEHUB_MIRROR:-http://deb.debian.org/debian}
EXPOSURE_MAX=${EDGEHUB_EXPOSURE_MAX:-2.5}
PYTHON=${PYTHON:-python3}
ROOT=$WORK/root
UNITS=(edgehub.service edgehub-provision.service mosquitto.service)
FAILED=0
T0=$(date +%s)

say() { printf '\n== %s (%ss)\n' "$*" "$(($(date +%s) - T0))"; }
ok() { printf '  ok    %s\n' "$*"; }
bad() { printf '  FAIL  %s\n' "$*"; FAILED=1; }

[ "$(id -u)" = 0 ] || { echo "image/check.sh: run as root (debootstrap, chroot, nspawn)" >&2; exit 1; }

say "tools"
need=()
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v systemd-nspawn >/dev/null || need+=(systemd-container)
command -v systemd-analyze >/dev/null || need+=(systemd)
if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
ok "debootstrap, systemd-nspawn, systemd-analyze $(systemd-analyze --version | head -n1 | cut -d' ' -f2)"

mkdir -p "$WORK"
say "bookworm root"
if [ "${EDGEHUB_CHECK_FRESH:-0}" = 1 ] || [ ! -f "$WORK/base/.edgehub-complete" ]; then
    rm -rf "$WORK/base"
    debootstrap --variant=minbase bookworm "$WORK/base" "$MIRROR" > "$WORK/debootstrap.log" 2>&1 \
        || { tail -n 20 "$WORK/debootstrap.log"; exit 1; }
    touch "$WORK/base/.edgehub-complete"
    ok "debootstrap --variant=minbase bookworm ($(du -sh "$WORK/base" | cut -f1))"
else
    ok "reusing pristine root $WORK/base (EDGEHUB_CHECK_FRESH=1 to rebuild)"
fi
rm -rf "$ROOT"
cp -a "$WORK/base" "$ROOT"
rm -f "$ROOT/.edgehub-complete"

say "wheel"
rm -rf "$WORK/wheels" && mkdir -p "$WORK/wheels"
"$PYTHON" -m pip wheel --quiet --no-deps -w "$WORK/wheels" "$REPO" > "$WORK/wheel.log" 2>&1 \
    || { tail -n 20 "$WORK/wheel.log"; exit 1; }
ok "$(cd "$WORK/wheels" && ls edgehub-*.whl)"

say "install-into-root.sh"
EDGEHUB_PIP_DEPS=none "$HERE/install-into-root.sh" "$ROOT" "$WORK/wheels" > "$WORK/install.log" 2>&1 \
    || { tail -n 30 "$WORK/install.log"; exit 1; }
ok "installed ($(du -sh "$ROOT" | cut -f1) root)"

SITE=${EDGEHUB_CHECK_SITE_PACKAGES:-}
if [ -z "$SITE" ] && "$PYTHON" -c 'import aiohttp, paho.mqtt' 2>/dev/null; then
    SITE=$("$PYTHON" -c 'import aiohttp, pathlib; print(pathlib.Path(aiohttp.__file__).parent.parent)')
fi
VENV_SITE=$ROOT/opt/edgehub/venv/lib/python3.11/site-packages
DEPS_COPIED=0
if [ -n "$SITE" ] && [ -d "$SITE" ]; then
    # Check-only stand-in for PyPI: the same wheels, already unpacked on this machine. Never
    # overwrite what the venv has (pip, edgehub itself); never bring test tools along.
    for entry in "$SITE"/*; do
        name=$(basename "$entry")
        case "$name" in
            edgehub* | pip | pip-* | setuptools* | _distutils_hack | distutils-precedence.pth | \
                pytest* | _pytest | pluggy* | hypothesis* | mypy* | ruff* | __pycache__ | *.egg-link | \
                __editable__* | *edgehub*.pth) continue ;;
        esac
        [ -e "$VENV_SITE/$name" ] || cp -a "$entry" "$VENV_SITE/"
    done
    DEPS_COPIED=1
    ok "dependencies copied from $SITE (stand-in for PyPI)"
else
    echo "  note  no site-packages with edgehub's dependencies: the daemon cannot start in the boot test"
fi
if chroot "$ROOT" /opt/edgehub/venv/bin/edgehub --version >/dev/null 2>&1; then
    ok "$(chroot "$ROOT" /opt/edgehub/venv/bin/edgehub --version) runs inside the root"
else
    echo "  note  edgehub --version fails inside the root (dependencies missing?)"
fi

link=$(readlink "$ROOT/usr/local/bin/edgehub" 2>/dev/null || echo missing)
if [ "$link" = /opt/edgehub/venv/bin/edgehub ]; then ok "/usr/local/bin/edgehub -> $link"
else bad "/usr/local/bin/edgehub is '$link', want a link to /opt/edgehub/venv/bin/edgehub"; fi
# What a login shell and sudo's secure_path find (without running it: the venv may lack deps).
found=$(chroot "$ROOT" /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    /bin/sh -c 'command -v edgehub' 2>/dev/null || echo none)
if [ "$found" = /usr/local/bin/edgehub ] && [ -x "$ROOT/opt/edgehub/venv/bin/edgehub" ]; then
    ok "edgehub on PATH inside the root (sudo edgehub provision, edgehub doctor, edgehub bundle)"
else
    bad "edgehub on PATH inside the root is '$found', want /usr/local/bin/edgehub"
fi

say "users, groups, directories"
if chroot "$ROOT" id edgehub >/dev/null 2>&1; then
    groups=$(chroot "$ROOT" id -nG edgehub)
    ok "user edgehub ($(chroot "$ROOT" id edgehub | cut -d' ' -f1)), groups: $groups"
    for g in dialout lp plugdev; do
        [[ " $groups " == *" $g "* ]] || bad "edgehub is not in group $g"
    done
else
    bad "no user edgehub in the root"
fi
for spec in "/etc/edgehub 755 root root" "/etc/edgehub/secrets 750 root edgehub" \
    "/etc/edgehub/mosquitto 750 root mosquitto" "/var/lib/edgehub 750 edgehub edgehub"; do
    read -r path mode user group <<<"$spec"
    got=$(chroot "$ROOT" stat -c '%a %U %G' "$path" 2>/dev/null || echo missing)
    [ "$got" = "$mode $user $group" ] && ok "$path $got" || bad "$path is '$got', want '$mode $user $group'"
done
for unit in "${UNITS[@]}"; do
    if chroot "$ROOT" systemctl is-enabled "$unit" >/dev/null 2>&1; then ok "$unit enabled"; else bad "$unit not enabled"; fi
done

# The store's time server (docs/box.md): chrony enabled, Debian's own pool left out.
if chroot "$ROOT" systemctl is-enabled chrony.service >/dev/null 2>&1; then ok "chrony.service enabled"
else bad "chrony.service not enabled"; fi
if grep -q '^pool 2\.debian\.pool\.ntp\.org' "$ROOT/etc/chrony/chrony.conf" 2>/dev/null; then
    bad "/etc/chrony/chrony.conf still uses Debian's pool (install-into-root.sh comments it out)"
else
    ok "chrony takes its servers from conf.d/edgehub.conf"
fi

say "systemd-analyze verify --root"
verify_err=$(systemd-analyze verify --root="$ROOT" "${UNITS[@]}" 2>&1 >/dev/null) || true
if [ -z "$verify_err" ]; then ok "verify: no output on stderr for ${UNITS[*]}"; else bad "verify:"; printf '%s\n' "$verify_err" | sed 's/^/        /'; fi

say "systemd-analyze security --offline"
for unit in edgehub.service edgehub-provision.service; do
    line=$(systemd-analyze security --offline=yes --root="$ROOT" "$unit" 2>/dev/null | grep 'Overall exposure' || true)
    echo "  $line"
done
# --threshold counts in tenths on systemd 252 (an exposure of 1.7 is 17).
threshold=$(awk -v x="$EXPOSURE_MAX" 'BEGIN { printf "%d", x * 10 + 0.5 }')
if systemd-analyze security --offline=yes --root="$ROOT" --threshold="$threshold" edgehub.service >/dev/null 2>&1; then
    ok "edgehub.service exposure within $EXPOSURE_MAX"
else
    bad "edgehub.service exposure above $EXPOSURE_MAX"
fi

say "udev rules (bookworm's udevadm parses every rules file)"
mount --bind /sys "$ROOT/sys"
udev_out=$(chroot "$ROOT" udevadm test /sys/class/tty/tty0 2>&1 || true)
umount "$ROOT/sys"
if ! grep -q '99-edgehub.rules' <<<"$udev_out"; then
    bad "udevadm test did not read 99-edgehub.rules"
elif grep -i '99-edgehub.rules' <<<"$udev_out" | grep -qiE 'invalid|error|unknown|fail|ignor'; then
    bad "udev complains:"; grep -i '99-edgehub.rules' <<<"$udev_out" | sed 's/^/        /'
else
    ok "99-edgehub.rules read without complaint"
fi

say "boot with systemd-nspawn"
install -d "$ROOT/boot/firmware"
cat > "$ROOT/boot/firmware/edgehub-provision.toml" <<'EOF'
# written by image/check.sh: what an installer puts on the boot partition
[store]
id = "store-check"
name = "Image check"

[cloud]
url = "mqtts://cloud.invalid:8883"
enrollment_token = "one-time-check-token"

[[terminal]]
id = "pos-1"
kind = "pos"

[[terminal]]
id = "kds-grill"
kind = "kds"
EOF
cat > "$ROOT/usr/local/sbin/edgehub-check-report" <<'EOF'
#!/bin/bash
# Runs inside the booted check root, writes /var/tmp/edgehub-check.report, powers off.
exec > /var/tmp/edgehub-check.report 2>&1
for _ in $(seq 1 60); do
    state=$(systemctl show -P ActiveState edgehub.service)
    [ "$state" = active ] && sleep 3 && break
    # Skipped (not provisioned) or given up: nothing more to wait for.
    [ "$(systemctl show -P ConditionResult edgehub.service)" = no ] && break
    [ "$state" = failed ] && break
    sleep 1
done
for u in edgehub-provision.service mosquitto.service edgehub.service; do
    echo "unit $u $(systemctl show -P ActiveState "$u") $(systemctl show -P SubState "$u") result=$(systemctl show -P Result "$u") restarts=$(systemctl show -P NRestarts "$u")"
done
echo "failed-units $(systemctl list-units --failed --no-legend --plain | awk '{print $1}' | tr '\n' ' ')"
grep -q 'enrollment_token *=' /boot/firmware/edgehub-provision.toml && echo "token-in-bootfile yes" || echo "token-in-bootfile no"
echo "secrets $(stat -c '%n:%a:%U' /etc/edgehub/secrets/* | tr '\n' ' ')"
before=$(sha256sum /etc/edgehub/edgehub.toml /etc/edgehub/secrets/* | sha256sum)
systemctl restart edgehub-provision.service
after=$(sha256sum /etc/edgehub/edgehub.toml /etc/edgehub/secrets/* | sha256sum)
[ "$before" = "$after" ] && echo "reprovision same" || echo "reprovision changed"
mosquitto_pub -h 127.0.0.1 -p 1884 -t edgehub/v1/store-check/x -m x -q 1 && echo "anonymous accepted" || echo "anonymous refused"
mosquitto_pub -h 127.0.0.1 -p 1884 -u edgehub-hub -P "$(cat /etc/edgehub/secrets/broker-hub)" \
    -t edgehub/v1/store-check/check -m x -q 1 && echo "hub-login accepted" || echo "hub-login refused"
mosquitto_pub -h 127.0.0.1 -p 1883 -t edgehub/v1/store-check/x -m x -q 1 && echo "lan-anonymous accepted" || echo "lan-anonymous refused"
mosquitto_pub -h 127.0.0.1 -p 1883 -u pos-1 -P "$(cat /etc/edgehub/secrets/terminal-pos-1)" \
    -t edgehub/v1/store-check/pos/pos-1/order -m '{}' -q 1 && echo "terminal-login accepted" || echo "terminal-login refused"
/opt/edgehub/venv/bin/python - <<'PY' && echo "healthz ok" || echo "healthz failed"
import urllib.request
print(urllib.request.urlopen("http://127.0.0.1:8080/healthz", timeout=5).read()[:200])
PY
echo "--- journal"
journalctl -b --no-pager -o short-monotonic -u edgehub-provision.service -u mosquitto.service -u edgehub.service | tail -n 60
systemctl poweroff
EOF
chmod 755 "$ROOT/usr/local/sbin/edgehub-check-report"
cat > "$ROOT/etc/systemd/system/edgehub-check-report.service" <<'EOF'
[Unit]
Description=image/check.sh report
# Not After=edgehub.service: a hub that never gets READY would hold the report back.
After=multi-user.target mosquitto.service edgehub-provision.service
[Service]
Type=oneshot
ExecStart=/usr/local/sbin/edgehub-check-report
[Install]
WantedBy=multi-user.target
EOF
chroot "$ROOT" systemctl enable edgehub-check-report.service >/dev/null 2>&1
# Private network: the box's LAN listeners (0.0.0.0:1883, :8080) stay inside the container.
boot_start=$(date +%s)
timeout 180 systemd-nspawn --boot --register=no --keep-unit --private-network --quiet -D "$ROOT" \
    > "$WORK/boot.log" 2>&1 </dev/null || true
boot_secs=$(($(date +%s) - boot_start))
report=$ROOT/var/tmp/edgehub-check.report
if [ ! -f "$report" ]; then
    bad "no report from the booted root after ${boot_secs}s (see $WORK/boot.log)"
else
    ok "booted, reported and powered off in ${boot_secs}s"
    grep -q '^unit edgehub-provision.service active exited result=success' "$report" \
        && ok "edgehub-provision ran (active/exited, success)" || bad "$(grep '^unit edgehub-provision' "$report")"
    grep -q '^unit mosquitto.service active running' "$report" \
        && ok "mosquitto running on /etc/edgehub/mosquitto/mosquitto.conf" || bad "$(grep '^unit mosquitto' "$report")"
    grep -q '^token-in-bootfile no' "$report" && ok "enrollment token taken out of the boot file" || bad "token still in the boot file"
    grep -q '^reprovision same' "$report" && ok "second provisioning: same config, same secrets" || bad "second provisioning changed config or secrets"
    grep -q '^anonymous refused' "$report" && ok "anonymous MQTT refused" || bad "anonymous MQTT accepted"
    grep -q '^hub-login accepted' "$report" && ok "hub password accepted by the broker" || bad "hub password refused"
    grep -q '^lan-anonymous refused' "$report" && ok "anonymous refused on the LAN listener" || bad "anonymous accepted on the LAN listener"
    grep -q '^terminal-login accepted' "$report" && ok "terminal pos-1 publishes its order topic with its password" || bad "terminal pos-1 refused"
    if ! grep '^secrets' "$report" | tr ' ' '\n' | grep -q ':' ; then bad "no secrets listed"
    elif grep '^secrets' "$report" | tr ' ' '\n' | grep ':' | grep -qv ':600:edgehub$'; then bad "secret modes: $(grep '^secrets' "$report")"
    else ok "secrets are 0600 edgehub"; fi
    if grep -q '^unit edgehub.service active running' "$report"; then
        ok "edgehub.service active (READY=1 sent) under its sandbox: $(grep '^unit edgehub.service' "$report")"
        grep -q '^healthz ok' "$report" && ok "/healthz answers" || bad "/healthz did not answer"
    elif [ "$DEPS_COPIED" = 1 ]; then
        bad "$(grep '^unit edgehub.service' "$report")"
    else
        echo "  note  edgehub.service not running (no dependencies in the venv): $(grep '^unit edgehub.service' "$report")"
    fi
    echo "  report: $report"
fi

say "done"
if [ "$FAILED" = 0 ]; then echo "image-check: PASS ($(($(date +%s) - T0))s)"; else
    echo "image-check: FAIL ($(($(date +%s) - T0))s)"; [ -f "${report:-}" ] && sed -n '/^--- journal/,$p' "$report" | tail -n 40; fi
exit "$FAILED"
