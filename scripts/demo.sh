#!/usr/bin/env bash
# The main job, end to end on this machine: install, build, reproduce the
# Karpenter v1 failure (IMDS hop limit 1, a VPC-CNI pod one hop behind the
# node) in a namespace testbed, and let imdstrace diagnose it.  Everything
# lives in network namespaces and a cgroup this script creates and removes;
# nothing touches the root network namespace.
#   scripts/demo.sh [--hop-limit N] [--json]     (as root)
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
# A node laid out like a real one: kubepods cgroups (systemd driver, containerd) and
# /var/log/pods under a host root, so the pods are named from the node alone.
scripts/testbed.sh up --prefix "$PREFIX" --hop-limit "$HOP" --pod vpc --pod bridge --pod hostnet \
  --kubepods systemd --emulator build/tests/testbed/imds-emulator
. "/run/imdstrace-testbed/$PREFIX/env"

echo "== testbed: IMDS emulator with httpPutResponseHopLimit=$HOP; pods $POD1_NAMESPACE/$POD1_NAME (VPC-CNI, 1 hop),"
echo "   $POD2_NAMESPACE/$POD2_NAME (bridge + masquerade, 1 hop), $POD3_NAMESPACE/$POD3_NAME (host network); a host process"
echo "== imdstrace diagnose, in the node's network namespace:"
echo "   imdstrace diagnose --duration 10 --pods k8s-node --host-root $HOST_ROOT --cgroup $CGROUP_DIR"
nsenter --net="$NODE_NETNS_PATH" build/imdstrace diagnose --duration 10 -o "$OUTPUT" \
  --cgroup "$CGROUP_DIR" --pods k8s-node --host-root "$HOST_ROOT" --ready-file "/tmp/$PREFIX.ready" &
TRACER=$!
for _ in $(seq 100); do [ -f "/tmp/$PREFIX.ready" ] && break; sleep 0.1; done

# What aws-load-balancer-controller does at start-up: IMDSv2 token, then mac and vpc-id.
for who in "--pod 1" "--pod 2" "--pod 3" "--host"; do
  # shellcheck disable=SC2086
  scripts/testbed.sh exec --prefix "$PREFIX" $who -- build/tests/testbed/imds-client >/dev/null 2>&1 &
done
wait_rc=0
wait "$TRACER" || wait_rc=$?
wait
echo "== imdstrace exit code: $wait_rc (0 healthy, 3 failures found)"
