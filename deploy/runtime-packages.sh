#!/usr/bin/env bash
# Print the Debian packages that provide the shared libraries BINARY loads, one a
# line.  The runtime image installs exactly these: on bookworm libbpf1 libelf1 zlib1g
# libspdlog1.10 libfmt9 libcurl4 libcpp-httplib0.11 (and their own dependencies)
# next to libc6/libstdc++6/libgcc-s1.  Derived from the binary, so the image cannot
# drift from what the build links.
#   deploy/runtime-packages.sh build/imdstrace
set -euo pipefail
bin=${1:?usage: runtime-packages.sh BINARY}
mapfile -t libs < <(ldd "$bin" | awk '$2 == "=>" && $3 ~ /^\// { print $3 }')
[ "${#libs[@]}" -gt 0 ] || { echo "runtime-packages: no shared libraries found in $bin" >&2; exit 1; }

# Merged /usr: dpkg registered each file under /lib or /usr/lib, whichever the package
# shipped, and ldd may report either.  Ask once for every spelling of every library.
spellings() {
  local real
  real=$(readlink -f "$1")
  printf '%s\n' "$1" "$real" "${1#/usr}" "${real#/usr}" "/usr$1" "/usr$real" | grep '^/' | sort -u
}
declare -A owner
while IFS= read -r line; do
  # "libbpf1:amd64: /usr/lib/x86_64-linux-gnu/libbpf.so.1"
  pkg=${line%%: /*}
  owner[${line#*: }]=${pkg%%:*}
done < <(for lib in "${libs[@]}"; do spellings "$lib"; done | xargs dpkg-query -S 2>/dev/null || true)

for lib in "${libs[@]}"; do
  pkg=""
  while IFS= read -r path; do
    pkg=${owner[$path]:-}
    [ -n "$pkg" ] && break
  done < <(spellings "$lib")
  if [ -z "$pkg" ]; then
    echo "runtime-packages: no package owns $lib" >&2
    exit 1
  fi
  echo "$pkg"
done | sort -u
