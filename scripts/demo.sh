#!/usr/bin/env bash
# The main job, end to end on this machine: install, build, reproduce the
# Karpenter v1 failure (IMDS hop limit 1, a VPC-CNI pod one hop behind the
# node) in a namespace testbed, and let imdstrace diagnose it.  Everything
# lives in network namespaces and a cgroup this script creates and removes;
# nothing touches the root network namespace.
#   sudo scripts/demo.sh [--hop-limit N] [--json]
set -euo pipefail
cd "$(dirname "$0")/.."

HOP=1
OUTPUT=text
while [ $# -gt 0 ]; do
  case "$1" in
    --hop-limit) HOP=$2; shift 2 ;;
    --json) OUTPUT=json; shift ;;
    *) echo "usage: $0 [--hop-limit N] [--json]" >&2; exit 2 ;;
  esac
done

[ "$(id -u)" -eq 0 ] || { echo "demo: run as root (namespaces, BPF)" >&2; exit 1; }
scripts/setup.sh >/dev/null
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$(nproc)" --target imdstrace imds-emulator imds-client >/dev/null

PREFIX="imdst-demo$$"
trap 'scripts/testbed.sh down --prefix "$PREFIX" >/dev/null 2>&1 || true; rm -f "/tmp/$PREFIX.ready"' EXIT
export TESTBED_QUIET=1
scripts/testbed.sh up --prefix "$PREFIX" --hop-limit "$HOP" --pods 2 --emulator build/tests/testbed/imds-emulator
. "/run/imdstrace-testbed/$PREFIX/env"

echo "== testbed: IMDS emulator with httpPutResponseHopLimit=$HOP; pods testbed/pod1, testbed/pod2 (VPC-CNI style, 1 hop); a host-network process"
echo "== imdstrace diagnose, in the node's network namespace:"
echo "   imdstrace diagnose --duration 10 --cgroup $CGROUP_DIR --pods static:$PODS_JSON"
nsenter --net="$NODE_NETNS_PATH" build/imdstrace diagnose --duration 10 -o "$OUTPUT" \
  --cgroup "$CGROUP_DIR" --pods "static:$PODS_JSON" --ready-file "/tmp/$PREFIX.ready" &
TRACER=$!
for _ in $(seq 100); do [ -f "/tmp/$PREFIX.ready" ] && break; sleep 0.1; done

# What aws-load-balancer-controller does at start-up: IMDSv2 token, then mac and vpc-id.
for who in "--pod 1" "--pod 2" "--host"; do
  # shellcheck disable=SC2086
  scripts/testbed.sh exec --prefix "$PREFIX" $who -- build/tests/testbed/imds-client >/dev/null 2>&1 &
done
wait_rc=0
wait "$TRACER" || wait_rc=$?
wait
echo "== imdstrace exit code: $wait_rc (0 healthy, 3 failures found)"
