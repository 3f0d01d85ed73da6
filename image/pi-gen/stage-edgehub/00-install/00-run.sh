#!/bin/bash -e
# pi-gen sub-stage: install edgehub into the stage's root with the same script image/check.sh
# runs against a debootstrap root. EDGEHUB_REPO and EDGEHUB_WHEEL_DIR come from image/build.sh
# (exported through pi-gen's config).
: "${EDGEHUB_REPO:?set by image/build.sh}"
: "${EDGEHUB_WHEEL_DIR:?set by image/build.sh}"
# Packages come from 00-packages (pi-gen's apt with its mirror and proxy settings).
EDGEHUB_APT=0 EDGEHUB_PIP_DEPS="${EDGEHUB_PIP_DEPS:-pypi}" \
	"${EDGEHUB_REPO}/image/install-into-root.sh" "${ROOTFS_DIR}" "${EDGEHUB_WHEEL_DIR}"
# A template next to where the real file goes: copying it to edgehub-provision.toml on the FAT
# partition is all an installer does (the unit waits for that exact name).
install -m 644 files/edgehub-provision.toml.example "${ROOTFS_DIR}/boot/firmware/edgehub-provision.toml.example"
