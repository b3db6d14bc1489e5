#!/usr/bin/env bash
# Boot Debian cloud kernels under qemu (TCG) with an initramfs holding imdstrace, the testbed
# binaries, the unit and BPF test binaries, iproute2/iptables/nft/nsenter, and run
# tests/kernel/scenario.sh inside each: the CO-RE proof. See tests/kernel/README.md.
#
#   kernel-matrix.sh --build-dir DIR [--arch x86_64|arm64] [--cross-build] [--kernels "6.1 6.12"]
#                    [--unit-tests once|each|none] [--cache DIR] [--timeout SECONDS] [--smp N]
#                    [--allow-missing] [--keep]
#
# Prints one line per kernel ("kernel <version>: PASS (37 s)") and a final "N passed, M failed".
# Exit: 0 all passed, 1 a kernel failed or gave no result marker, 2 usage or setup error.
#
# --arch arm64 (Graviton): DIR holds an arm64 build (scripts/cross-build.sh; --cross-build runs
# it first), the guest's tools and libraries come from Debian's arm64 packages
# (scripts/arm64-tree.sh) instead of the host, the kernels are linux-image-*-cloud-arm64 and
# qemu-system-aarch64 runs them (-M virt, TCG). Default cache: DIR/kernels, or BUILD/kernels
# when DIR is BUILD/arm64. Default timeout per kernel: 600 s (x86_64), 900 s (arm64); ctest passes 900 s and
# 1200 s: its two rows run side by side and share the cores.
#
# Every guest runs imdstrace_bpf_tests (BPF_PROG_TEST_RUN: kernel dependent). The unit tests
# (imdstrace_unit_tests: userspace logic, the same on every kernel; ~3 minutes under arm64 TCG)
# run in the first guest of the run (--unit-tests once, default for arm64), in every guest
# (each), or not at all (none, default for x86_64, whose unit tests ctest runs on the host).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

usage() {
  sed -n '2,23p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
  exit 2
}
die() { echo "kernel-matrix: $*" >&2; exit 2; }
log() { echo "kernel-matrix: $*" >&2; }

BUILD_DIR=
ARCH=x86_64
CROSS_BUILD=0
KERNELS="6.1 6.12"
UNIT_TESTS=
CACHE=
TIMEOUT=
SMP=1
MEM=1024
MAX_LINES=${KERNEL_MATRIX_MAX_LINES:-80}
ALLOW_MISSING=0
KEEP=0
while [ $# -gt 0 ]; do
  case "$1" in
    --build-dir) BUILD_DIR=${2:?}; shift 2 ;;
    --arch) ARCH=${2:?}; shift 2 ;;
    --cross-build) CROSS_BUILD=1; shift ;;
    --unit-tests) UNIT_TESTS=${2:?}; shift 2 ;;
    --kernels) KERNELS=${2:?}; shift 2 ;;
    --cache) CACHE=${2:?}; shift 2 ;;
    --timeout) TIMEOUT=${2:?}; shift 2 ;;
    --smp) SMP=${2:?}; shift 2 ;;
    --allow-missing) ALLOW_MISSING=1; shift ;;
    --keep) KEEP=1; shift ;;
    -h|--help) usage ;;
    *) echo "kernel-matrix: unknown argument: $1" >&2; usage ;;
  esac
done
[ -n "$BUILD_DIR" ] || usage
# Everything that differs between the architectures, decided here once.
case "$ARCH" in
  x86_64|amd64)
    ARCH=x86_64 KARCH=amd64 ELF_MACHINE=003e MULTIARCH=x86_64-linux-gnu
    QEMU=qemu-system-x86_64 QEMU_MACHINE=() CONSOLE=ttyS0
    BPF_TARGET=x86 BPF_ARCH_INCLUDE=/usr/include/x86_64-linux-gnu
    STRIP=strip SRC_ROOT= DEFAULT_TIMEOUT=600 DEFAULT_UNIT_TESTS=none ;;
  arm64|aarch64)
    # -cpu max emulates pointer authentication slowly (QARMA); the implementation-defined
    # algorithm is as fast as no pauth and keeps the CPU feature set of a Graviton-class core.
    ARCH=arm64 KARCH=arm64 ELF_MACHINE=00b7 MULTIARCH=aarch64-linux-gnu
    QEMU=qemu-system-aarch64 QEMU_MACHINE=(-M virt -cpu max,pauth-impdef=on) CONSOLE=ttyAMA0
    BPF_TARGET=arm64 BPF_ARCH_INCLUDE=/usr/aarch64-linux-gnu/include
    STRIP=aarch64-linux-gnu-strip SRC_ROOT= DEFAULT_TIMEOUT=900 DEFAULT_UNIT_TESTS=once ;;
  *) die "--arch wants x86_64 or arm64" ;;
esac
TIMEOUT=${TIMEOUT:-$DEFAULT_TIMEOUT}
UNIT_TESTS=${UNIT_TESTS:-$DEFAULT_UNIT_TESTS}
case "$UNIT_TESTS" in once|each|none) ;; *) die "--unit-tests wants once, each or none" ;; esac
case "$TIMEOUT" in ''|*[!0-9]*) die "--timeout wants seconds" ;; esac
if [ "$CROSS_BUILD" = 1 ]; then
  [ "$ARCH" = arm64 ] || die "--cross-build is for --arch arm64"
  mkdir -p "$BUILD_DIR"
fi
[ -d "$BUILD_DIR" ] || die "build dir $BUILD_DIR does not exist"
BUILD_DIR=$(cd "$BUILD_DIR" && pwd)
if [ -z "$CACHE" ]; then
  CACHE=$BUILD_DIR/kernels
  [ "$ARCH" = arm64 ] && [ "$(basename "$BUILD_DIR")" = arm64 ] && CACHE=$(dirname "$BUILD_DIR")/kernels
fi
mkdir -p "$CACHE"
CACHE=$(cd "$CACHE" && pwd)
if [ "$CROSS_BUILD" = 1 ]; then
  "$REPO/scripts/cross-build.sh" --arch arm64 --build-dir "$BUILD_DIR" --cache "$CACHE" ||
    die "cross build failed"
fi
if [ "$ARCH" = arm64 ]; then
  # The guest's userland: Debian's arm64 packages, extracted (cached; quick when unchanged).
  SRC_ROOT=$("$REPO/scripts/arm64-tree.sh" --cache "$CACHE") || die "arm64 dependency tree failed"
fi
# The guest gives up a little before qemu is killed, so a hung scenario still prints its marker.
GUEST_TIMEOUT=$(( TIMEOUT > 60 ? TIMEOUT - 30 : TIMEOUT * 3 / 4 ))

# Project files, checked before any work. Strict by default: the matrix exists to run them.
PROJECT_FILES=(
  "$BUILD_DIR/imdstrace:/usr/bin/imdstrace"
  "$BUILD_DIR/tests/testbed/imds-emulator:/usr/bin/imds-emulator"
  "$BUILD_DIR/tests/testbed/imds-client:/usr/bin/imds-client"
  "$REPO/scripts/testbed.sh:/repo/scripts/testbed.sh"
  "$REPO/tests/e2e/lib.sh:/repo/tests/e2e/lib.sh"
  "$REPO/tests/e2e/hop_limit.sh:/repo/tests/e2e/hop_limit.sh"
  "$REPO/tests/e2e/lifecycle.sh:/repo/tests/e2e/lifecycle.sh"
  "$REPO/tests/e2e/attribution.sh:/repo/tests/e2e/attribution.sh"
  "$REPO/tests/e2e/failure_modes.sh:/repo/tests/e2e/failure_modes.sh"
  "$REPO/tests/e2e/probe.sh:/repo/tests/e2e/probe.sh"
  "$REPO/tests/e2e/scope.sh:/repo/tests/e2e/scope.sh"
  "$REPO/tests/e2e/path.sh:/repo/tests/e2e/path.sh"
  "$BUILD_DIR/tests/testbed/k8s-api-standin:/usr/bin/k8s-api-standin"
  "$BUILD_DIR/tests/testbed/ttl-datapath:/usr/bin/ttl-datapath"
  "$BUILD_DIR/tests/imdstrace_unit_tests:/usr/bin/imdstrace_unit_tests"
  "$BUILD_DIR/tests/imdstrace_bpf_tests:/usr/bin/imdstrace_bpf_tests"
)
missing=0
for pf in "${PROJECT_FILES[@]}"; do
  src=${pf%%:*}
  [ -e "$src" ] && continue
  if [ "$ALLOW_MISSING" = 1 ]; then
    log "warning: $src missing, the guest runs without it (--allow-missing)"
  else
    log "error: $src missing (build it, or pass --allow-missing)"
    missing=1
  fi
done
[ "$missing" = 0 ] || die "missing project files"
# The binaries must be built for the guest's architecture (ELF e_machine).
for pf in "${PROJECT_FILES[@]}"; do
  src=${pf%%:*}
  [ -f "$src" ] && head -c4 "$src" | grep -q 'ELF' || continue
  m=$(od -An -tx2 -j18 -N2 "$src" | tr -d ' ')
  [ "$m" = "$ELF_MACHINE" ] || die "$src is not a $ARCH binary (e_machine $m; arm64: scripts/cross-build.sh, or --cross-build)"
done
for f in tests/kernel/scenario.sh tests/kernel/init.sh; do
  [ -f "$REPO/$f" ] || die "$f missing"
done

OUT=$BUILD_DIR/kernel-matrix
mkdir -p "$OUT"

tools=("$QEMU" cpio gzip dpkg-deb apt-get apt-cache depmod modinfo xz busybox "$STRIP")
if [ "$ARCH" = arm64 ]; then tools+=(aarch64-linux-gnu-readelf); else tools+=(ldd); fi
for tool in "${tools[@]}"; do
  command -v "$tool" >/dev/null || die "$tool not found; run scripts/setup-kernel-matrix.sh --arch $ARCH"
done

# ---------------------------------------------------------------------------------------------
# Common root file system (kernel independent): merged-/usr layout like Debian, so /bin/imdstrace
# and /usr/bin/imdstrace are the same file and ld.so finds libraries at their usual paths.
# ---------------------------------------------------------------------------------------------

ROOTFS=$OUT/rootfs
rm -rf "$ROOTFS"
mkdir -p "$ROOTFS"/{usr/bin,usr/sbin,usr/lib/$MULTIARCH,usr/lib64,etc,proc,sys,dev,run,tmp,root,var,build/tests/testbed,repo/scripts}
ln -s usr/bin "$ROOTFS/bin"
ln -s usr/sbin "$ROOTFS/sbin"
ln -s usr/lib "$ROOTFS/lib"
ln -s usr/lib64 "$ROOTFS/lib64"
ln -s ../run "$ROOTFS/var/run"
ln -s ../build "$ROOTFS/repo/build"

# Host path -> path inside the guest's merged-/usr tree.
guest_path() {
  case "$1" in
    /bin/*|/sbin/*|/lib/*|/lib64/*) echo "/usr$1" ;;
    *) echo "$1" ;;
  esac
}

# Copy one file (following symlinks) to the guest path, then the shared libraries it needs.
# SRC is a path on the host; guest tools are named by their path in SRC_ROOT (the host for
# x86_64, the arm64 tree for arm64): "$SRC_ROOT/usr/sbin/ip".
add_file() {
  local src=$1 dst=${2:-$(guest_path "${1#"$SRC_ROOT"}")}
  mkdir -p "$ROOTFS$(dirname "$dst")"
  cp -L --preserve=mode "$src" "$ROOTFS$dst"
  if [ "$ARCH" = arm64 ]; then add_libs_tree "$src"; else add_libs "$src"; fi
}

# arm64: ldd cannot run the binaries, so follow PT_INTERP and each DT_NEEDED list through the
# tree's library directories, recursively. A library the tree lacks is an error: the guest
# would fail later and less clearly.
add_libs_tree() {
  local src=$1 lib dir found interp
  head -c4 "$src" | grep -q 'ELF' || return 0   # scripts, data
  interp=$(aarch64-linux-gnu-readelf -lW "$src" 2>/dev/null | sed -n 's/.*Requesting program interpreter: \(.*\)]/\1/p')
  if [ -n "$interp" ] && [ ! -e "$ROOTFS$(guest_path "$interp")" ]; then
    [ -e "$SRC_ROOT$interp" ] || die "$src: interpreter $interp not in the arm64 tree"
    mkdir -p "$ROOTFS$(dirname "$(guest_path "$interp")")"
    cp -L --preserve=mode "$SRC_ROOT$interp" "$ROOTFS$(guest_path "$interp")"
  fi
  for lib in $(aarch64-linux-gnu-readelf -dW "$src" 2>/dev/null | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'); do
    found=
    for dir in /usr/lib/$MULTIARCH /usr/lib /usr/lib/$MULTIARCH/xtables; do
      [ -e "$SRC_ROOT$dir/$lib" ] && { found=$dir/$lib; break; }
    done
    [ -n "$found" ] || die "$src needs $lib, which the arm64 tree lacks (scripts/arm64-tree.sh)"
    [ -e "$ROOTFS$found" ] && continue
    mkdir -p "$ROOTFS$(dirname "$found")"
    cp -L --preserve=mode "$SRC_ROOT$found" "$ROOTFS$found"
    add_libs_tree "$SRC_ROOT$found"
  done
}

add_libs() {
  local src=$1 lib
  # ldd fails on static binaries and scripts: nothing to copy then.
  ldd "$src" >/dev/null 2>&1 || return 0
  for lib in $(ldd "$src" | awk '/=> \// {print $3} /^[[:space:]]*\/[^ ]*ld-linux/ {print $1}'); do
    local dst
    dst=$(guest_path "$lib")
    [ -e "$ROOTFS$dst" ] && continue
    mkdir -p "$ROOTFS$(dirname "$dst")"
    cp -L --preserve=mode "$lib" "$ROOTFS$dst"
    # ld.so may be asked for by its canonical name too.
    if [[ "$lib" == *ld-linux-x86-64.so.2 ]]; then
      local canon
      canon=$(guest_path "$(readlink -f "$lib")")
      [ -e "$ROOTFS$canon" ] || { mkdir -p "$ROOTFS$(dirname "$canon")"; cp -L "$lib" "$ROOTFS$canon"; }
    fi
  done
}

# The first candidate (a guest path) that exists in SRC_ROOT, printed with SRC_ROOT.
first_of() { local p; for p in "$@"; do [ -x "$SRC_ROOT$p" ] && { echo "$SRC_ROOT$p"; return 0; }; done; return 1; }

# busybox: applets as symlinks, except where a real tool is installed below (added afterwards,
# so the check happens at the end). The guest's /bin/sh is dash: busybox sh runs its own
# ip/tc/nsenter applets even when PATH names the real ones, which would silently test the wrong
# tools.
BUSYBOX=$(first_of /bin/busybox /usr/bin/busybox) || die "busybox not found"
add_file "$BUSYBOX" /usr/bin/busybox

# need DST CANDIDATE...: the first existing candidate goes to DST; none is an error.
need() {
  local dst=$1 p; shift
  p=$(first_of "$@") || die "none of $* found; run scripts/setup-kernel-matrix.sh"
  add_file "$p" "$dst"
}
# want DST CANDIDATE...: the same, optional.
want() {
  local dst=$1 p; shift
  if p=$(first_of "$@"); then add_file "$p" "$dst"; else log "note: none of $* on the host"; fi
}
need /usr/sbin/ip /usr/sbin/ip /sbin/ip /bin/ip /usr/bin/ip
need /usr/sbin/tc /usr/sbin/tc /sbin/tc
want /usr/bin/ss /usr/bin/ss /bin/ss /usr/sbin/ss
need /usr/bin/nsenter /usr/bin/nsenter /bin/nsenter
# util-linux's, not busybox's: attribution.sh runs imdstrace as the DaemonSet does (unshare
# --pid --cgroup --mount --kill-child, read-only bind mounts)
need /usr/bin/unshare /usr/bin/unshare /bin/unshare
need /usr/bin/mount /usr/bin/mount /bin/mount
need /usr/bin/dash /bin/dash /usr/bin/dash
ln -s dash "$ROOTFS/usr/bin/sh"
need /usr/bin/bash /bin/bash /usr/bin/bash
want /usr/bin/jq /usr/bin/jq
want /usr/sbin/bpftool /usr/sbin/bpftool /usr/bin/bpftool
want /usr/sbin/nft /usr/sbin/nft /sbin/nft

# iptables: both multi-call binaries, every front-end name as on the host (alternatives resolved).
for multi in xtables-nft-multi xtables-legacy-multi; do
  if p=$(first_of /usr/sbin/$multi /sbin/$multi); then add_file "$p" /usr/sbin/$multi; fi
done
# The names as the host's alternatives resolve them (iptables -> xtables-nft-multi, ...): the
# arm64 packages ship no alternatives, so the host's choice is the guest's for both.
for p in /usr/sbin/*tables* /usr/sbin/ebtables* /usr/sbin/arptables*; do
  [ -L "$p" ] || continue
  name=$(basename "$p")
  target=$(basename "$(readlink -f "$p")")
  [ -e "$ROOTFS/usr/sbin/$target" ] && [ ! -e "$ROOTFS/usr/sbin/$name" ] && ln -s "$target" "$ROOTFS/usr/sbin/$name"
done
if [ -d "$SRC_ROOT/usr/lib/$MULTIARCH/xtables" ]; then
  mkdir -p "$ROOTFS/usr/lib/$MULTIARCH/xtables"
  for so in "$SRC_ROOT/usr/lib/$MULTIARCH/xtables"/*.so; do
    add_file "$so" "/usr/lib/$MULTIARCH/xtables/$(basename "$so")"
  done
fi

# Small configuration files the tools read.
for f in /etc/protocols /etc/services /etc/ethertypes /etc/netconfig; do
  [ -f "$f" ] && cp "$f" "$ROOTFS$f"
done
[ -d "$SRC_ROOT/etc/iproute2" ] && cp -r "$SRC_ROOT/etc/iproute2" "$ROOTFS/etc/"
[ -d "$SRC_ROOT/usr/share/iproute2" ] && mkdir -p "$ROOTFS/usr/share" && cp -r "$SRC_ROOT/usr/share/iproute2" "$ROOTFS/usr/share/"
echo 'root:x:0:0:root:/root:/bin/sh' >"$ROOTFS/etc/passwd"
echo 'root:x:0:' >"$ROOTFS/etc/group"
printf '127.0.0.1 localhost\n::1 localhost\n' >"$ROOTFS/etc/hosts"
printf 'passwd: files\ngroup: files\nhosts: files\n' >"$ROOTFS/etc/nsswitch.conf"
echo imdstrace-matrix >"$ROOTFS/etc/hostname"

for pf in "${PROJECT_FILES[@]}"; do
  if [ -e "${pf%%:*}" ]; then
    add_file "${pf%%:*}" "${pf#*:}"
    # Debug info can be most of a Debug build's size; the guest only runs the binary.
    if head -c4 "${pf%%:*}" | grep -q 'ELF'; then
      "$STRIP" --strip-debug "$ROOTFS${pf#*:}"
    fi
  fi
done
# The build-dir layout, for scripts that find binaries relative to a build directory.
for b in imdstrace tests/testbed/imds-emulator tests/testbed/imds-client tests/testbed/k8s-api-standin \
         tests/testbed/ttl-datapath tests/imdstrace_unit_tests tests/imdstrace_bpf_tests; do
  [ -e "$ROOTFS/usr/bin/$(basename $b)" ] && ln -s "/usr/bin/$(basename $b)" "$ROOTFS/build/$b"
done
# The unit tests' input files (tests/cases; the scenario points IMDSTRACE_CASES_DIR here).
mkdir -p "$ROOTFS/repo/tests"
cp -r "$REPO/tests/cases" "$ROOTFS/repo/tests/cases"
# The alert rules fleet's query is checked against (unit test Fleet.FailingPodsQueryIsTheAlertsExpression).
mkdir -p "$ROOTFS/repo/deploy" && cp "$REPO/deploy/prometheus-rules.yaml" "$ROOTFS/repo/deploy/"
[ -e "$ROOTFS/repo/scripts/testbed.sh" ] && ln -s /repo/scripts/testbed.sh "$ROOTFS/usr/bin/testbed.sh"
install -m 0755 "$REPO/tests/kernel/scenario.sh" "$ROOTFS/scenario.sh"
install -m 0755 "$REPO/tests/kernel/init.sh" "$ROOTFS/init"

# Optional BPF probe object (tests/kernel/probe.bpf.c), loaded by /init with bpftool.
if command -v clang >/dev/null && [ -f /usr/include/bpf/bpf_helpers.h ] && [ -x "$ROOTFS/usr/sbin/bpftool" ]; then
  mkdir -p "$ROOTFS/usr/lib/kernel-matrix"
  clang -O2 -g -target bpf -D__TARGET_ARCH_$BPF_TARGET -I"$BPF_ARCH_INCLUDE" \
    -c "$REPO/tests/kernel/probe.bpf.c" -o "$ROOTFS/usr/lib/kernel-matrix/probe.bpf.o" ||
    die "compiling tests/kernel/probe.bpf.c failed"
else
  log "note: no clang/libbpf headers/bpftool: the guest skips the tp_btf/cgroup_skb load probe"
fi

# Applet links last, so real tools always win: nothing is linked over an existing name.
# The arm64 busybox cannot run here; the host's busybox-static is the same Debian version and
# configuration, so its applet list is the guest's (an applet it lacked would say so when run).
HOST_BUSYBOX=$(SRC_ROOT='' first_of /bin/busybox /usr/bin/busybox) || die "busybox not found on the host"
for applet in $("$HOST_BUSYBOX" --list); do
  case "$applet" in busybox|init|linuxrc|sh) continue ;; esac
  [ -e "$ROOTFS/usr/bin/$applet" ] || [ -e "$ROOTFS/usr/sbin/$applet" ] || [ -L "$ROOTFS/usr/sbin/$applet" ] && continue
  ln -s busybox "$ROOTFS/usr/bin/$applet"
done
# The kernel's module autoloader runs /sbin/modprobe.
[ -e "$ROOTFS/usr/sbin/modprobe" ] || ln -s ../bin/busybox "$ROOTFS/usr/sbin/modprobe"

# The console must exist before devtmpfs is mounted: the kernel opens it for /init's stdio.
mknod -m 600 "$ROOTFS/dev/console" c 5 1 2>/dev/null || true
mknod -m 666 "$ROOTFS/dev/null" c 1 3 2>/dev/null || true

COMMON_CPIO=$OUT/common.cpio.gz
(cd "$ROOTFS" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet | gzip -6 >"$COMMON_CPIO")

# ---------------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------------

# Modules the guest gets (with their dependencies). Missing ones are noted, not fatal: names
# move between kernels and some are built in.
MODULES_COPY="veth sch_ingress cls_bpf act_bpf act_gact act_mirred cls_u32 cls_matchall
  sch_htb sch_netem dummy bridge br_netfilter macvlan ipvlan tun vxlan ipip
  nf_conntrack nf_nat nf_defrag_ipv4 nf_defrag_ipv6 nf_reject_ipv4 nf_reject_ipv6
  nfnetlink nf_tables nft_compat nft_chain_nat nft_nat nft_masq nft_ct nft_reject nft_reject_ipv4
  nft_reject_ipv6 nft_reject_inet nft_fib nft_fib_ipv4 nft_fib_ipv6 nft_fib_inet nft_limit nft_log
  x_tables ip_tables ip6_tables iptable_filter iptable_nat iptable_mangle iptable_raw
  ip6table_filter ip6table_nat ip6table_mangle ip6table_raw
  xt_MASQUERADE xt_conntrack xt_nat xt_tcpudp xt_comment xt_mark xt_addrtype xt_multiport
  xt_state xt_limit xt_LOG xt_owner xt_CT xt_physdev xt_set ip_set ipt_REJECT ip6t_REJECT
  nf_log_syslog inet_diag tcp_diag xt_REDIRECT"
# Modules loaded at boot. Legacy iptable_*/ip6table_* stay out: registering their tables makes
# iptables-nft warn on every listing; the kernel autoloads them if iptables-legacy is used.
MODULES_LOAD_SKIP='^(iptable_|ip6table_|ip_tables$|ip6_tables$)'

# apt names a foreign architecture's package "name:arm64".
APT_ARCH=
[ "$KARCH" = "$(dpkg --print-architecture)" ] || APT_ARCH=:$KARCH

series_regex() { printf '%s' "$1" | sed 's/\./\\./g'; }

# Newest "linux-image-<abi>-cloud-$KARCH" of a series, as "<abi>".
newest_abi() {
  local series=$1 re
  re="^linux-image-$(series_regex "$series")([.-][0-9][^ ]*)?-cloud-$KARCH(-unsigned)?\$"
  apt-cache search --names-only "$re" 2>/dev/null | awk '{print $1}' |
    sed -E "s/^linux-image-//; s/-cloud-$KARCH(-unsigned)?$//" | sort -uV | tail -n1
}

# The kernels of the other architecture share the cache: every name and glob carries $KARCH.
# Downloads (or reuses) the package holding vmlinuz for a series; prints "<pkgdir> <kver>".
fetch_kernel() {
  local series=$1 abi pkg deb dir
  abi=$(newest_abi "$series")
  if [ -z "$abi" ]; then
    log "no package lists know linux-image-$series*-cloud-$KARCH; running apt-get update"
    apt-get update -qq >/dev/null 2>&1 || log "warning: apt-get update failed"
    abi=$(newest_abi "$series")
  fi
  if [ -z "$abi" ]; then
    # Offline: newest cached package of the series.
    deb=$(ls "$CACHE"/linux-image-"$series"[.-][0-9]*-cloud-$KARCH*_$KARCH.deb 2>/dev/null | sort -V | tail -n1 || true)
    [ -n "$deb" ] || { log "error: no linux-image package for series $series"; return 1; }
    abi=$(basename "$deb" | sed -E "s/^linux-image-//; s/-cloud-$KARCH(-unsigned)?_.*$//")
  fi
  # The signed package carries vmlinuz and modules on bookworm; -unsigned is the fallback.
  for pkg in "linux-image-$abi-cloud-$KARCH" "linux-image-$abi-cloud-$KARCH-unsigned"; do
    deb=$(ls "$CACHE/${pkg}"_*_$KARCH.deb 2>/dev/null | sort -V | tail -n1 || true)
    if [ -z "$deb" ]; then
      apt-cache show "$pkg$APT_ARCH" >/dev/null 2>&1 || continue
      log "downloading $pkg$APT_ARCH"
      (cd "$CACHE" && apt-get download -qq -o APT::Sandbox::User=root "$pkg$APT_ARCH" >/dev/null) || continue
      deb=$(ls "$CACHE/${pkg}"_*_$KARCH.deb 2>/dev/null | sort -V | tail -n1 || true)
      [ -n "$deb" ] || continue
    fi
    dir=$CACHE/x/$(basename "$deb" .deb)
    if [ ! -f "$dir/.extracted" ]; then
      rm -rf "$dir"; mkdir -p "$dir"
      dpkg-deb -x "$deb" "$dir"
      touch "$dir/.extracted"
    fi
    if ls "$dir"/boot/vmlinuz-* >/dev/null 2>&1; then
      # Keep the cache to one kernel per series: drop what older ABIs left behind.
      local old
      for old in "$CACHE"/linux-image-"$series"[.-][0-9]*_$KARCH.deb "$CACHE"/x/linux-image-"$series"[.-][0-9]*_$KARCH; do
        [ -e "$old" ] || continue
        case "$(basename "$old")" in "linux-image-$abi-cloud-$KARCH"*) continue ;; esac
        log "pruning $(basename "$old") from the cache"
        rm -rf "$old"
      done
      local kver
      kver=$(basename "$(ls "$dir"/boot/vmlinuz-* | head -n1)"); kver=${kver#vmlinuz-}
      echo "$dir $kver"
      return 0
    fi
    log "$pkg has no vmlinuz, trying the next candidate"
  done
  log "error: no package with a vmlinuz for $abi"
  return 1
}

# Build the per-kernel module archive: the wanted modules plus dependencies, decompressed,
# depmod'ed, placed at /usr/lib/modules/<kver>. Prints the list of modules to load to stdout
# of the archive's /etc/kernel-matrix/modules.
build_modules() {
  local pkgdir=$1 kver=$2 stage=$3 src
  src=
  for d in "$pkgdir/lib/modules/$kver" "$pkgdir/usr/lib/modules/$kver"; do
    [ -d "$d" ] && { src=$d; break; }
  done
  [ -n "$src" ] || { log "error: no modules directory for $kver"; return 1; }
  rm -rf "$stage"
  local dst=$stage/usr/lib/modules/$kver
  mkdir -p "$dst" "$stage/etc/kernel-matrix"
  for f in modules.builtin modules.builtin.modinfo modules.order; do
    [ -f "$src/$f" ] && cp "$src/$f" "$dst/"
  done
  # name (with '_') -> relative path
  local index=$stage/.index
  (cd "$src" && find kernel -name '*.ko*') | awk '{
      n = $0; sub(/.*\//, "", n); sub(/\.ko(\.(xz|zst|gz))?$/, "", n); gsub(/-/, "_", n); print n, $0
    }' >"$index"

  local -A seen=()
  local queue=() load=() missing=() name rel dep
  for name in $MODULES_COPY; do queue+=("$name"); done
  while [ ${#queue[@]} -gt 0 ]; do
    name=${queue[0]//-/_}; queue=("${queue[@]:1}")
    [ -n "${seen[$name]:-}" ] && continue
    seen[$name]=1
    rel=$(awk -v n="$name" '$1 == n {print $2; exit}' "$index")
    if [ -z "$rel" ]; then
      grep -qE "/${name//_/[-_]}\.ko" "$src/modules.builtin" 2>/dev/null || missing+=("$name")
      continue
    fi
    local out=$dst/${rel%.xz}; out=${out%.zst}; out=${out%.gz}
    mkdir -p "$(dirname "$out")"
    case "$rel" in
      *.ko.xz) xz -dc "$src/$rel" >"$out" ;;
      *.ko.zst) zstd -qdc "$src/$rel" >"$out" ;;
      *.ko.gz) gzip -dc "$src/$rel" >"$out" ;;
      *) cp "$src/$rel" "$out" ;;
    esac
    for dep in $(modinfo -F depends "$out" | tr ',' ' '); do queue+=("$dep"); done
    # Soft dependencies name modules or aliases (crc32c); take those that are module files.
    for dep in $(modinfo -F softdep "$out" | tr ' ' '\n' | grep -v ':$' | tr '-' '_' || true); do
      awk -v n="$dep" '$1 == n {f=1} END {exit !f}' "$index" && queue+=("$dep")
    done
  done
  for name in $MODULES_COPY; do
    name=${name//-/_}
    awk -v n="$name" '$1 == n {f=1} END {exit !f}' "$index" || continue
    [[ "$name" =~ $MODULES_LOAD_SKIP ]] && continue
    load+=("$name")
  done
  [ ${#missing[@]} -eq 0 ] || log "$kver: not in this kernel (skipped): ${missing[*]}"
  rm -f "$index"
  # depmod -b knows only <base>/lib/modules: point it there for the run.
  ln -s usr/lib "$stage/lib"
  depmod -b "$stage" "$kver"
  rm "$stage/lib"
  printf '%s\n' "${load[@]}" >"$stage/etc/kernel-matrix/modules"
  echo "$kver" >"$stage/etc/kernel-matrix/kernel"
}

passed=0
failed=0
summary=()
first=1
for series in $KERNELS; do
  # Which gtest binaries this guest runs (tests/kernel/scenario.sh reads it from the cmdline).
  gtests=bpf
  if [ "$UNIT_TESTS" = each ] || { [ "$UNIT_TESTS" = once ] && [ "$first" = 1 ]; }; then gtests=unit,bpf; fi
  first=0
  start_build=$(date +%s)
  if ! read -r pkgdir kver < <(fetch_kernel "$series"); then
    summary+=("kernel $series: FAIL (no kernel package)")
    failed=$((failed + 1))
    continue
  fi
  work=$OUT/$series
  mkdir -p "$work"
  build_modules "$pkgdir" "$kver" "$work/modroot"
  (cd "$work/modroot" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet | gzip -6 >"$work/modules.cpio.gz")
  # Concatenated cpio archives are one initramfs to the kernel.
  cat "$COMMON_CPIO" "$work/modules.cpio.gz" >"$work/initramfs.cpio.gz"
  size_kb=$(( $(stat -c %s "$work/initramfs.cpio.gz") / 1024 ))
  vmlinuz=$(ls "$pkgdir"/boot/vmlinuz-"$kver")
  logf=$OUT/$series.log
  log "$kver: initramfs ${size_kb} KiB, prepared in $(( $(date +%s) - start_build )) s; booting (timeout ${TIMEOUT} s)"

  start=$(date +%s)
  set +e
  timeout --kill-after=10 "$TIMEOUT" "$QEMU" "${QEMU_MACHINE[@]}" -accel tcg -smp "$SMP" -m "$MEM" \
    -nographic -nodefaults -no-reboot -serial stdio \
    -kernel "$vmlinuz" -initrd "$work/initramfs.cpio.gz" \
    -append "console=$CONSOLE panic=-1 quiet imdstrace.guest_timeout=$GUEST_TIMEOUT imdstrace.gtests=$gtests" \
    </dev/null >"$logf.raw" 2>&1
  qrc=$?
  set -e
  elapsed=$(( $(date +%s) - start ))
  # Drop CRs and SeaBIOS's terminal escapes so guest lines start at column 0.
  tr -d '\r' <"$logf.raw" | sed -E 's/\x1b\[[0-9;?]*[A-Za-z]//g; s/\x1bc//g' >"$logf"; rm -f "$logf.raw"

  marker=$(grep -aoE 'IMDSTRACE-MATRIX-RESULT: (PASS|FAIL.*)' "$logf" | tail -n1 || true)
  # The guest's own progress lines; capped, since a verifier log can run to thousands.
  shown=$(grep -acE '^(scenario|guest):' "$logf" || true)
  tag=$series; [ "$ARCH" = x86_64 ] || tag="$ARCH $series"
  grep -aE '^(scenario|guest):' "$logf" | head -n "$MAX_LINES" | sed "s/^/  [$tag] /" || true
  [ "$shown" -le "$MAX_LINES" ] || echo "  [$tag] ... $((shown - MAX_LINES)) more lines in $logf"
  if [ "$marker" = "IMDSTRACE-MATRIX-RESULT: PASS" ]; then
    line="kernel $kver: PASS ($elapsed s)"
    passed=$((passed + 1))
  else
    if [ -z "$marker" ]; then
      why="no result marker"
      [ "$qrc" = 124 ] || [ "$qrc" = 137 ] && why="$why, qemu killed after ${TIMEOUT} s"
    else
      why=${marker#IMDSTRACE-MATRIX-RESULT: FAIL }
    fi
    line="kernel $kver: FAIL ($why, $elapsed s)"
    failed=$((failed + 1))
    echo "---- last lines of $logf ----"
    tail -n 40 "$logf"
    echo "----"
  fi
  echo "$line"
  summary+=("$line")
  [ "$KEEP" = 1 ] || rm -rf "$work"
done
[ "$KEEP" = 1 ] || rm -rf "$ROOTFS" "$COMMON_CPIO"

if [ ${#summary[@]} -gt 1 ]; then printf '%s\n' "${summary[@]}"; fi
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]
