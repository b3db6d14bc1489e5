#!/usr/bin/env bash
# Install the host packages scripts/kernel-matrix.sh needs (Debian/Ubuntu, apt).
# Idempotent and quiet: does nothing when everything is already present.
set -euo pipefail

pkgs=(
  qemu-system-x86   # qemu-system-x86_64 (TCG; KVM is not required)
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

missing=()
for p in "${pkgs[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done

if [ "${#missing[@]}" -eq 0 ]; then
  exit 0
fi

SUDO=
if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; fi

export DEBIAN_FRONTEND=noninteractive
# Only refresh the package lists when a candidate is unknown.
need_update=0
for p in "${missing[@]}"; do
  cand=$(apt-cache policy "$p" 2>/dev/null | awk '/Candidate:/ {print $2}')
  if [ -z "$cand" ] || [ "$cand" = "(none)" ]; then need_update=1; fi
done
if [ "$need_update" -eq 1 ]; then
  $SUDO apt-get update -qq >/dev/null
fi
echo "setup-kernel-matrix: installing ${missing[*]}" >&2
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
