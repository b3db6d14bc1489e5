#!/usr/bin/env bash
# The arm64 dependency tree: Debian's arm64 packages imdstrace's cross build and the arm64
# kernel-matrix guest need, downloaded with `apt-get download` and extracted with
# `dpkg-deb -x` into ONE directory. Nothing is installed on the host: installing the arm64
# -dev packages with apt would replace host packages (libyaml-cpp-dev, busybox-static,
# iproute2 are not co-installable across architectures) or force host upgrades.
#
#   arm64-tree.sh --cache DIR        prints the tree's path (DIR/arm64/tree) on stdout
#
# The tree serves the cross build (headers, libraries, pkg-config and CMake files; see
# cmake/aarch64-linux-gnu.cmake) and the guest (busybox, iproute2, util-linux, mount, bash, dash, jq,
# bpftool, nftables, iptables and every library they load). Layout is merged-/usr like Debian
# (bin, sbin, lib are links into usr/), and no symlink in it is absolute: an absolute link
# (sbin/ip -> /bin/ip) would resolve to the HOST's x86 file when the guest root is assembled.
#
# Cached: DIR/arm64/debs keeps the .deb files, DIR/arm64/tree the extraction, rebuilt only
# when the resolved package versions change. Needs `dpkg --add-architecture arm64` and
# arm64 package lists (scripts/setup-kernel-matrix.sh --arch arm64 does both).
set -euo pipefail

die() { echo "arm64-tree: $*" >&2; exit 2; }
log() { echo "arm64-tree: $*" >&2; }

CACHE=
while [ $# -gt 0 ]; do
  case "$1" in
    --cache) CACHE=${2:?}; shift 2 ;;
    *) die "unknown argument $1 (usage: arm64-tree.sh --cache DIR)" ;;
  esac
done
[ -n "$CACHE" ] || die "usage: arm64-tree.sh --cache DIR"
mkdir -p "$CACHE/arm64/debs"
BASE=$(cd "$CACHE/arm64" && pwd)
DEBS=$BASE/debs
TREE=$BASE/tree

# What is asked for; the libraries they depend on follow.
BUILD_PKGS="libbpf-dev libelf-dev zlib1g-dev libspdlog-dev libfmt-dev libcli11-dev nlohmann-json3-dev
  libgtest-dev libyaml-cpp-dev libcpp-httplib-dev libcurl4-openssl-dev libstdc++6 libgcc-s1 libc6"
GUEST_PKGS="busybox-static iproute2 util-linux mount bash dash jq bpftool nftables iptables"
# The cross toolchain (libc6-dev-arm64-cross, linux-libc-dev-arm64-cross) has these; a second
# copy in the tree could only shadow them.
SKIP='^(libc6-dev|libc-dev-bin|libcrypt-dev|libnsl-dev|libtirpc-dev|linux-libc-dev|libgcc-12-dev|libstdc\+\+-12-dev)$'

for tool in apt-cache apt-get dpkg-deb; do command -v "$tool" >/dev/null || die "$tool not found"; done

# Fast path: the tree was made by this script (its package lists and rules) and no package
# list changed since.
request=$(sha256sum <"${BASH_SOURCE[0]}")
if [ -f "$TREE/.stamp" ] && [ "$(cat "$TREE/.request" 2>/dev/null)" = "$request" ] &&
   [ -z "$(find /var/lib/apt/lists -maxdepth 1 -name '*_Packages*' -newer "$TREE/.stamp" -print -quit)" ]; then
  echo "$TREE"
  exit 0
fi

apt-cache show libc6:arm64 >/dev/null 2>&1 ||
  die "no arm64 package lists: run scripts/setup-kernel-matrix.sh --arch arm64"

# Dependency closure: Depends and Pre-Depends, first alternative of each group, a virtual
# package's first provider. Only libraries (names with "lib": libfoo, zlib1g) are followed:
# maintainer-script tools (debconf, dpkg, base-files, ...) are not needed in either use.
# Prints "name" for arch:all packages and "name:arm64" for the rest.
deps_of() {
  apt-cache depends --no-recommends --no-suggests --no-conflicts --no-breaks --no-replaces \
    --no-enhances "$@" 2>/dev/null | awk '
      /^[^ ]/ { alt = 0; want = 0; next }
      /^ [ |](Pre)?Depends: / {
        grp = (substr($0, 2, 1) == "|")
        name = $2
        if (!alt) {
          if (name ~ /^</) want = 1; else { print name; want = 0 }
        } else want = 0
        alt = grp
        next
      }
      /^    / { if (want) { print $1; want = 0 } }'
}

# "name version" per argument that has a candidate; one apt-cache call for all of them.
candidates() {
  apt-cache policy "$@" 2>/dev/null | awk '
    /^[^ ].*:$/ { name = substr($0, 1, length($0) - 1); next }
    /^  Candidate: / { if ($2 != "(none)") print name, $2 }'
}
# arm64 if the architecture has the package, else arch:all (libcli11-dev, nlohmann-json3-dev).
qualify() {
  local -A has=()
  local n v p
  while read -r n v; do has[$n]=1; done < <(candidates "${@/%/:arm64}")
  for p in "$@"; do
    if [ -n "${has[$p:arm64]:-}" ]; then echo "$p:arm64"; else echo "$p"; fi
  done
}

declare -A seen=()
mapfile -t queue < <(qualify $BUILD_PKGS $GUEST_PKGS)
resolved=()
while [ ${#queue[@]} -gt 0 ]; do
  batch=()
  for q in "${queue[@]}"; do
    [ -n "${seen[$q]:-}" ] && continue
    seen[$q]=1
    [[ "${q%:arm64}" =~ $SKIP ]] && continue
    resolved+=("$q")
    batch+=("$q")
  done
  queue=()
  [ ${#batch[@]} -gt 0 ] || break
  # Unqualified names (dependencies of arch:all packages) are qualified like the top level.
  mapfile -t deps < <(deps_of "${batch[@]}" | awk '/lib/' | sort -u)
  bare=()
  for d in "${deps[@]}"; do
    if [ "$d" = "${d%:arm64}" ]; then bare+=("$d"); else queue+=("$d"); fi
  done
  [ ${#bare[@]} -eq 0 ] || mapfile -t -O ${#queue[@]} queue < <(qualify "${bare[@]}")
done

# "name[:arm64]=version" for each, sorted: the stamp of this tree.
pinned=()
declare -A ver=()
while read -r n v; do ver[$n]=$v; done < <(candidates "${resolved[@]}")
for p in "${resolved[@]}"; do
  [ -n "${ver[$p]:-}" ] || die "no candidate for $p"
  pinned+=("$p=${ver[$p]}")
done
mapfile -t pinned < <(printf '%s\n' "${pinned[@]}" | LC_ALL=C sort)
stamp=$(printf '%s\n' "${pinned[@]}")

if [ -f "$TREE/.stamp" ] && [ "$(cat "$TREE/.stamp")" = "$stamp" ]; then
  echo "$request" >"$TREE/.request"
  touch "$TREE/.stamp"
  echo "$TREE"
  exit 0
fi

# Download what the cache does not have yet (file names: name_version-with-%3a_arch.deb).
deb_file() {
  local p=${1%%=*} v=${1#*=} name arch
  name=${p%:arm64}; arch=arm64
  [ "$name" = "$p" ] && arch=all
  echo "$DEBS/${name}_${v//:/%3a}_${arch}.deb"
}
need=()
for pv in "${pinned[@]}"; do [ -f "$(deb_file "$pv")" ] || need+=("$pv"); done
if [ ${#need[@]} -gt 0 ]; then
  log "downloading ${#need[@]} arm64 packages"
  (cd "$DEBS" && apt-get download -qq -o APT::Sandbox::User=root "${need[@]}" >/dev/null) ||
    die "apt-get download failed"
fi
for pv in "${pinned[@]}"; do [ -f "$(deb_file "$pv")" ] || die "missing after download: $(deb_file "$pv")"; done
# Old versions go, so the cache holds one set.
keep=$(for pv in "${pinned[@]}"; do basename "$(deb_file "$pv")"; done)
for f in "$DEBS"/*.deb; do
  grep -qxF "$(basename "$f")" <<<"$keep" || rm -f "$f"
done

log "extracting ${#pinned[@]} packages into $TREE"
rm -rf "$TREE.new"
mkdir -p "$TREE.new"
for pv in "${pinned[@]}"; do dpkg-deb -x "$(deb_file "$pv")" "$TREE.new"; done
# Merged /usr: bookworm's packages still ship /bin, /sbin, /lib.
for d in bin sbin lib; do
  mkdir -p "$TREE.new/usr/$d"
  if [ -d "$TREE.new/$d" ] && [ ! -L "$TREE.new/$d" ]; then
    cp -a "$TREE.new/$d/." "$TREE.new/usr/$d/"
    rm -rf "${TREE:?}.new/$d"
  fi
  ln -sfn "usr/$d" "$TREE.new/$d"
done
# Absolute links become relative to the tree.
while IFS= read -r link; do
  target=$(readlink "$link")
  ln -sfn "$(realpath -m --relative-to="$(dirname "$link")" "$TREE.new$target")" "$link"
done < <(find "$TREE.new" -type l -lname '/*')
echo "$stamp" >"$TREE.new/.stamp"
echo "$request" >"$TREE.new/.request"
rm -rf "$TREE"
mv "$TREE.new" "$TREE"
echo "$TREE"
