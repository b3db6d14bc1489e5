#!/usr/bin/env bash
# The container image from deploy/Dockerfile, built with no registry and no Docker engine:
# the Debian base made by mmdebstrap from Debian's packages, imported into podman under the
# names the Dockerfile uses (debian:bookworm, debian:bookworm-slim), then
# `podman build --isolation=chroot`.  Podman keeps its storage in the cache directory (not
# the machine's), so the base and the build layers are reused by the next run.
#
#   scripts/image.sh build  [--cache DIR] [--tag TAG]    build (TAG default localhost/imdstrace:ci)
#   scripts/image.sh podman [--cache DIR] -- ARGS...     podman on that storage
#
# Root.  Needs mmdebstrap and podman (scripts/setup.sh).  Cache default: build/image-cache.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cmd=${1:-}; shift || true
cache="$repo/build/image-cache" tag=localhost/imdstrace:ci
while [[ $# -gt 0 ]]; do
    case $1 in
    --cache) cache=$2; shift 2 ;;
    --tag) tag=$2; shift 2 ;;
    --) shift; break ;;
    *) echo "image: unknown argument $1" >&2; exit 2 ;;
    esac
done
mkdir -p "$cache"
cache=$(cd "$cache" && pwd)
pm() {
    podman --root "$cache/storage" --runroot "$cache/run" --storage-driver overlay --events-backend file \
        --cgroup-manager cgroupfs "$@"
}

case $cmd in
build)
    base="$cache/bookworm-minbase.tar"
    if [[ ! -f "$base" || ! -s "$base" ]]; then
        echo "image: debian bookworm minbase with mmdebstrap -> $base" >&2
        start=$SECONDS
        rm -rf "$base" "$base.tmp"
        # --format: the ".tmp" name would otherwise make mmdebstrap write a directory.
        mmdebstrap --variant=minbase --format=tar --quiet bookworm "$base.tmp"
        mv "$base.tmp" "$base"
        echo "image: base made in $((SECONDS - start)) s" >&2
    fi
    if ! pm image exists docker.io/library/debian:bookworm; then
        pm import --quiet "$base" docker.io/library/debian:bookworm >/dev/null
    fi
    # bookworm-slim is minbase without documentation; the minbase image stands in for it.
    pm image exists docker.io/library/debian:bookworm-slim ||
        pm tag docker.io/library/debian:bookworm docker.io/library/debian:bookworm-slim
    start=$SECONDS
    pm build --isolation=chroot --pull=never --ignorefile "$repo/deploy/Dockerfile.dockerignore" \
        -f "$repo/deploy/Dockerfile" -t "$tag" "$repo" >&2
    echo "image: $tag built in $((SECONDS - start)) s" >&2
    pm image inspect --format '{{.Size}}' "$tag"
    ;;
podman) pm "$@" ;;
*) echo "usage: $0 build|podman [--cache DIR] [--tag TAG] [-- ARGS]" >&2; exit 2 ;;
esac
