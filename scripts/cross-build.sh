#!/usr/bin/env bash
# Cross-build imdstrace and everything the arm64 kernel-matrix guest runs, on an x86_64 host:
# imdstrace, the testbed binaries (imds-emulator, imds-client, k8s-api-standin, ttl-datapath),
# imdstrace_unit_tests and imdstrace_bpf_tests.
#
#   cross-build.sh --arch arm64 --build-dir DIR [--cache DIR] [-j N]
#
# --cache: where scripts/arm64-tree.sh keeps the arm64 packages (default DIR/../kernels when
# DIR is BUILD/arm64, else DIR/kernels). Host packages: scripts/setup-kernel-matrix.sh --arch arm64.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
die() { echo "cross-build: $*" >&2; exit 2; }

ARCH=
BUILD_DIR=
CACHE=
JOBS=2
while [ $# -gt 0 ]; do
  case "$1" in
    --arch) ARCH=${2:?}; shift 2 ;;
    --build-dir) BUILD_DIR=${2:?}; shift 2 ;;
    --cache) CACHE=${2:?}; shift 2 ;;
    -j) JOBS=${2:?}; shift 2 ;;
    *) die "unknown argument $1 (usage: cross-build.sh --arch arm64 --build-dir DIR [--cache DIR] [-j N])" ;;
  esac
done
[ "$ARCH" = arm64 ] || die "only --arch arm64 is supported"
[ -n "$BUILD_DIR" ] || die "--build-dir is required"
mkdir -p "$BUILD_DIR"
BUILD_DIR=$(cd "$BUILD_DIR" && pwd)
if [ -z "$CACHE" ]; then
  if [ "$(basename "$BUILD_DIR")" = arm64 ]; then CACHE=$(dirname "$BUILD_DIR")/kernels; else CACHE=$BUILD_DIR/kernels; fi
fi
for tool in aarch64-linux-gnu-g++ cmake clang bpftool; do
  command -v "$tool" >/dev/null || [ -x "/usr/sbin/$tool" ] ||
    die "$tool not found; run scripts/setup-kernel-matrix.sh --arch arm64"
done

start=$(date +%s)
TREE=$("$REPO/scripts/arm64-tree.sh" --cache "$CACHE")
cmake -S "$REPO" -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_TOOLCHAIN_FILE="$REPO/cmake/aarch64-linux-gnu.cmake" -DIMDSTRACE_ARM64_TREE="$TREE" >/dev/null
cmake --build "$BUILD_DIR" -j"$JOBS" --target imdstrace imds-emulator imds-client k8s-api-standin \
  ttl-datapath imdstrace_unit_tests imdstrace_bpf_tests >/dev/null
file=$(command -v file >/dev/null && file -b "$BUILD_DIR/imdstrace" | cut -d, -f1-2 || echo built)
echo "cross-build: $BUILD_DIR/imdstrace ($file) and the guest's test binaries in $(( $(date +%s) - start )) s" >&2
