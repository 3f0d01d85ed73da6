#!/bin/bash
# Build the flashable edgehub box image: Raspberry Pi OS Lite bookworm arm64 (official pi-gen,
# bookworm-arm64 line, pinned) plus one stage that runs image/install-into-root.sh.
#
#   sudo image/build.sh            -> image/out/deploy/<date>-edgehub-lite.img.xz
#
# Needs a Debian/Ubuntu build machine with internet (GitHub for pi-gen, the Raspberry Pi and
# Debian archives, PyPI for edgehub's dependencies) and pi-gen's own dependencies
# (pi-gen/depends: quilt qemu-user-static debootstrap zerofree zip dosfstools libarchive-tools
# libcap2-bin grep rsync xz-utils file git curl bc gpg pigz arch-test ...). On an amd64 host the
# arm64 root runs through qemu-user-static + binfmt_misc.
#
# Environment: PI_GEN_REF (tag or commit to pin; default below), PI_GEN_URL, EDGEHUB_OUT.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
OUT=${EDGEHUB_OUT:-$HERE/out}
PI_GEN_URL=${PI_GEN_URL:-https://github.com/RPi-Distro/pi-gen.git}
# The pi-gen release that built Raspberry Pi OS 2024-11-19 (bookworm, arm64). Move this pin on
# purpose, with a note, when a newer Raspberry Pi OS release is wanted.
PI_GEN_REF=${PI_GEN_REF:-2024-11-19-raspios-bookworm-arm64}
PYTHON=${PYTHON:-python3}

[ "$(id -u)" = 0 ] || { echo "image/build.sh: run as root (pi-gen needs it)" >&2; exit 1; }
mkdir -p "$OUT"

# 1. pi-gen at the pinned ref, and we record the exact commit that built the image.
if [ ! -d "$OUT/pi-gen/.git" ]; then
    git clone --quiet "$PI_GEN_URL" "$OUT/pi-gen"
fi
git -C "$OUT/pi-gen" fetch --quiet --tags origin
git -C "$OUT/pi-gen" checkout --quiet --force "$PI_GEN_REF"
git -C "$OUT/pi-gen" clean -fdxq -e work -e deploy
PI_GEN_COMMIT=$(git -C "$OUT/pi-gen" rev-parse HEAD)
grep -q 'arm64' "$OUT/pi-gen/build.sh" "$OUT/pi-gen/scripts/common" 2>/dev/null \
    || echo "warning: $PI_GEN_REF does not look like the bookworm-arm64 line" >&2
# stage2 is Lite; only our stage is exported.
touch "$OUT/pi-gen/stage2/SKIP_IMAGES"
rm -f "$OUT/pi-gen/stage2/EXPORT_NOOBS"

# 2. The edgehub wheel from this checkout.
rm -rf "$OUT/wheels" && mkdir -p "$OUT/wheels"
"$PYTHON" -m pip wheel --quiet --no-deps -w "$OUT/wheels" "$REPO"

# 3. Same inputs, same image: the date and file times come from the edgehub commit.
EDGEHUB_COMMIT=$(git -C "$REPO" rev-parse HEAD 2>/dev/null || echo unknown)
SOURCE_DATE_EPOCH=$(git -C "$REPO" log -1 --format=%ct 2>/dev/null || date +%s)
export SOURCE_DATE_EPOCH
export IMG_DATE=${IMG_DATE:-$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%d)}
export EDGEHUB_REPO=$REPO EDGEHUB_WHEEL_DIR=$OUT/wheels EDGEHUB_PIP_DEPS=${EDGEHUB_PIP_DEPS:-pypi}
export EDGEHUB_STAGE_DIR=$HERE/pi-gen/stage-edgehub
cp "$HERE/pi-gen/config" "$OUT/pi-gen/config"

(cd "$OUT/pi-gen" && ./build.sh -c config)

cat > "$OUT/pi-gen/deploy/BUILDINFO" <<INFO
edgehub_commit=$EDGEHUB_COMMIT
pi_gen_ref=$PI_GEN_REF
pi_gen_commit=$PI_GEN_COMMIT
source_date_epoch=$SOURCE_DATE_EPOCH
wheel=$(cd "$OUT/wheels" && ls edgehub-*.whl)
INFO
ls -l "$OUT/pi-gen/deploy/"
