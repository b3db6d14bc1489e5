#!/usr/bin/env bash
# Install the host packages scripts/kernel-matrix.sh needs (Debian/Ubuntu, apt).
# Idempotent and quiet: does nothing when everything is already present.
#   setup-kernel-matrix.sh [--arch x86_64|arm64|all]     (default x86_64)
# arm64 adds the cross compiler and qemu-system-aarch64, and registers arm64 as a foreign
# dpkg architecture so `apt-get download <pkg>:arm64` works. No arm64 package is installed on
# the host: scripts/arm64-tree.sh downloads and extracts them into the build's cache instead.
set -euo pipefail

ARCHES=x86_64
case "${1:-}" in
  --arch) ARCHES=${2:?--arch wants x86_64, arm64 or all} ;;
  "") ;;
  *) echo "setup-kernel-matrix: unknown argument $1" >&2; exit 2 ;;
esac
[ "$ARCHES" = all ] && ARCHES="x86_64 arm64"

pkgs=(
  busybox-static    # guest userland (/bin/sh, mount, modprobe, ...)
  cpio              # initramfs (newc)
  gzip
  xz-utils          # 6.12 modules are .ko.xz
  zstd              # in case a kernel ships .ko.zst
  kmod              # depmod -b for the guest module tree
  iproute2          # ip, tc copied into the guest
  util-linux        # nsenter (real one, --net=FILE)
  jq
  iptables          # iptables(-nft/-legacy) + xtables plugins for the guest
  nftables
  bpftool           # optional: feature probe inside the guest
  dpkg-dev          # dpkg-deb (normally present already)
)
for arch in $ARCHES; do
  case "$arch" in
    x86_64) pkgs+=(qemu-system-x86) ;;   # qemu-system-x86_64 (TCG; KVM is not required)
    arm64)  pkgs+=(qemu-system-arm       # qemu-system-aarch64 (TCG)
                   g++-aarch64-linux-gnu # cross compiler, binutils (readelf), arm64 libc/asm headers
                   cmake pkg-config clang llvm bpftool) ;;
    *) echo "setup-kernel-matrix: unknown architecture $arch" >&2; exit 2 ;;
  esac
done

SUDO=
if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; fi
export DEBIAN_FRONTEND=noninteractive

need_update=0
for arch in $ARCHES; do
  [ "$arch" = arm64 ] || continue
  if [ "$(dpkg --print-architecture)" != arm64 ] && ! dpkg --print-foreign-architectures | grep -qx arm64; then
    echo "setup-kernel-matrix: adding arm64 as a foreign dpkg architecture (package lists only)" >&2
    $SUDO dpkg --add-architecture arm64
    need_update=1
  fi
  # Lists for arm64 exist only after an update with the architecture registered.
  apt-cache show libc6:arm64 >/dev/null 2>&1 || need_update=1
done

missing=()
for p in "${pkgs[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done

# Only refresh the package lists when a candidate is unknown (or arm64 lists are missing).
for p in "${missing[@]}"; do
  cand=$(apt-cache policy "$p" 2>/dev/null | awk '/Candidate:/ {print $2}')
  if [ -z "$cand" ] || [ "$cand" = "(none)" ]; then need_update=1; fi
done
if [ "$need_update" -eq 1 ]; then
  $SUDO apt-get update -qq >/dev/null
fi
[ "${#missing[@]}" -eq 0 ] && exit 0
echo "setup-kernel-matrix: installing ${missing[*]}" >&2
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
