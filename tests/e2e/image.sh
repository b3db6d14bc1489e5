#!/usr/bin/env bash
# End to end: the DaemonSet's image, built from deploy/Dockerfile with no registry
# (scripts/image.sh: mmdebstrap base, podman build --isolation=chroot), run the way the
# kubelet runs deploy/daemonset.yaml's container (kubelet_run.py reads the capabilities,
# mounts, args and env from the manifest): the image's root filesystem read-only, uid 0 with
# only the capabilities the securityContext adds, no_new_privs, the volume mounts read-only
# at the manifest's paths over the testbed's host root and cgroup tree, hostNetwork = the
# testbed node, new mount, PID and cgroup namespaces.
#
#   image.sh kubelet   the container diagnoses the hop-limit failure, names the pod with
#                      --pods k8s-node from the host mounts, labels its metrics with the
#                      node; killed with SIGKILL, it leaves nothing attached
#
# Environment: IMAGE_CACHE (podman storage and the mmdebstrap base; kept between runs).
source "$(dirname "$0")/lib.sh"
require_root
IMAGE_CACHE=${IMAGE_CACHE:-$REPO/build/image-cache}
IMAGE=localhost/imdstrace:ci
image() { "$REPO/scripts/image.sh" podman --cache "$IMAGE_CACHE" -- "$@"; }

# The processes below PID whose command is imdstrace (the container's entrypoint).
container_pid() {  # container_pid LAUNCHER_PID
    local queue=("$1") pid child
    while [[ ${#queue[@]} -gt 0 ]]; do
        pid=${queue[0]}; queue=("${queue[@]:1}")
        [[ "$(cat /proc/"$pid"/comm 2>/dev/null)" == imdstrace ]] && { echo "$pid"; return 0; }
        for child in $(cat /proc/"$pid"/task/*/children 2>/dev/null); do queue+=("$child"); done
    done
    return 1
}

scenario_kubelet() {
    local start=$SECONDS size
    size=$("$REPO/scripts/image.sh" build --cache "$IMAGE_CACHE" --tag "$IMAGE" 2>"$WORK/image-build.log") ||
        { tail -30 "$WORK/image-build.log"; fail "image build failed"; return; }
    pass "image $IMAGE built from deploy/Dockerfile in $((SECONDS - start)) s: $((size / 1000000)) MB"

    # Its root filesystem, copied out (the kubelet's snapshot), the image mount released at once.
    local mnt
    mnt=$(image image mount "$IMAGE") || { fail "podman image mount"; return; }
    mkdir -p "$WORK/rootfs"
    cp -a "$mnt"/. "$WORK/rootfs"/ || fail "copy the image's root filesystem"
    image image unmount "$IMAGE" >/dev/null || fail "podman image unmount"
    expect_eq "the image's entrypoint" "$(image image inspect --format '{{json .Config.Entrypoint}}' "$IMAGE")" \
        '["/usr/local/bin/imdstrace"]'

    testbed_up 1 --pod vpc --kubepods systemd
    mkdir -p "$WORK/evidence"
    local run=("$REPO/tests/e2e/kubelet_run.py" --manifest "$REPO/deploy/daemonset.yaml" --rootfs "$WORK/rootfs"
        --netns "$NODE_NETNS_PATH" --cgroup-dir "$CGROUP_DIR/daemonset" --node-name "$NODE_NAME"
        --host "/sys/fs/cgroup=$CGROUP_ROOT" --host /proc=/proc --host "/var/log/pods=$HOST_ROOT/var/log/pods"
        --host "/var/log/containers=$HOST_ROOT/var/log/containers" --host /sys/kernel/btf=/sys/kernel/btf
        --host "/var/log/imdstrace=$WORK/evidence"
        # The test's patch to the manifest's args: names from the node (no API here), the
        # socket hooks on the testbed's cgroup only (never the machine's cgroup root).
        --set-arg=--pods=k8s-node "--add-arg=--cgroup=/host/sys/fs/cgroup$CGROUP_REL"
        --add-arg=--ready-file=/var/log/imdstrace/ready)
    python3 "${run[@]}" --print >"$WORK/plan.txt"
    expect_grep "capabilities from the manifest" "$WORK/plan.txt" \
        '^capabilities: cap_bpf cap_dac_read_search cap_net_admin cap_perfmon$'
    python3 "${run[@]}" >"$WORK/container.jsonl" 2>"$WORK/container.err" &
    local launcher=$! pid=""
    EXTRA_PIDS+=("$launcher")
    for _ in $(seq 150); do
        [[ -n "$pid" ]] || pid=$(container_pid "$launcher" || true)
        [[ -f "$WORK/evidence/ready" && -n "$pid" ]] && break
        kill -0 "$launcher" 2>/dev/null || break
        sleep 0.1
    done
    if [[ ! -f "$WORK/evidence/ready" || -z "$pid" ]]; then
        cat "$WORK/container.err" >&2
        fail "the container did not start tracing"
        return
    fi
    pass "the container attached (pid $pid)"
    record_programs "$pid"

    # Exactly the DaemonSet's securityContext, as the kernel sees the process.
    local st="/proc/$pid/status"
    expect_eq "uid 0" "$(awk '/^Uid:/ {print $2}' "$st")" "0"
    expect_eq "effective capabilities: exactly BPF, PERFMON, NET_ADMIN, DAC_READ_SEARCH" \
        "$(capsh --decode="$(awk '/^CapEff:/ {print $2}' "$st")")" \
        "0x000000c000001004=cap_dac_read_search,cap_net_admin,cap_perfmon,cap_bpf"
    expect_eq "bounding set the same" "$(awk '/^CapBnd:/ {print $2}' "$st")" "000000c000001004"
    expect_eq "no inheritable or ambient capabilities" \
        "$(awk '/^CapInh:|^CapAmb:/ {print $2}' "$st" | tr '\n' ' ')" "0000000000000000 0000000000000000 "
    expect_eq "no_new_privs (allowPrivilegeEscalation: false)" "$(awk '/^NoNewPrivs:/ {print $2}' "$st")" "1"
    expect_eq "hostNetwork: the node's network namespace" "$(readlink /proc/"$pid"/ns/net)" \
        "$(nsenter --net="$NODE_NETNS_PATH" readlink /proc/self/ns/net)"
    local ns
    for ns in mnt pid cgroup; do
        [[ "$(readlink /proc/"$pid"/ns/$ns)" != "$(readlink /proc/self/ns/$ns)" ]] && pass "a $ns namespace of its own" ||
            fail "shares the $ns namespace"
    done
    expect_eq "pid 1 in its pid namespace" "$(awk '/^NSpid:/ {print $NF}' "$st")" "1"
    expect_eq "its root is the image, read-only" \
        "$(nsenter --target "$pid" --mount findmnt -no OPTIONS "$WORK/rootfs" | cut -d, -f1)" "ro"
    expect_eq "the host's cgroup tree is mounted read-only at /host/sys/fs/cgroup" \
        "$(nsenter --target "$pid" --mount findmnt -no OPTIONS "$WORK/rootfs/host/sys/fs/cgroup" | cut -d, -f1)" "ro"

    # The incident.
    pod_client 1
    host_client
    local lines=0
    for _ in $(seq 100); do
        lines=$(jq -c "select(.pod.name == \"$POD1_NAME\" and .verdict == \"HOP_LIMIT_EXCEEDED\")" "$WORK/container.jsonl" 2>/dev/null | wc -l)
        [[ $lines -ge 3 ]] && break
        sleep 0.1
    done
    expect_eq "the container streams pod $POD1_NAMESPACE/$POD1_NAME's 3 token requests as HOP_LIMIT_EXCEEDED" "$lines" "3"
    expect_each "named from the host mounts (k8s-node): namespace, name, uid" "$WORK/container.jsonl" \
        ".pod.name == \"$POD1_NAME\"" ".pod.namespace == \"$POD1_NAMESPACE\" and .pod.uid == \"$POD1_UID\" and .required_hop_limit == 2 and .response.ttl_at_node == 1"
    in_node curl -sf --max-time 5 http://127.0.0.1:9655/metrics >"$WORK/metrics.txt" || fail "scrape the container's metrics"
    expect_grep "metrics carry the node name from the downward API (NODE_NAME)" "$WORK/metrics.txt" \
        "^imdstrace_node_hop_limit_observed\\{node=\"$NODE_NAME\"\\} 1\$"
    expect_grep "metrics: the pod needs 2" "$WORK/metrics.txt" \
        "^imdstrace_pod_required_hop_limit\\{node=\"$NODE_NAME\",namespace=\"$POD1_NAMESPACE\",pod=\"$POD1_NAME\"\\} 2\$"

    # Killed as an OOM kill or the end of the grace period would: nothing stays attached.
    kill -KILL "$pid"
    wait "$launcher" 2>/dev/null || true
    expect_clean "after the container was killed (SIGKILL)"
    local links
    links=$(bpftool -j link show 2>/dev/null |
        jq --argjson ids "[$(echo $TRACER_PROGS | tr ' ' ',')]" '[.[] | select(.prog_id as $p | $ids | index($p))] | length')
    expect_eq "no BPF link of its programs left" "$links" "0"

    # The evidence it left on the node: the diagnosis.
    local rc=0
    "$IMDSTRACE" report -o json "$WORK/evidence/events.jsonl" >"$WORK/report.json" 2>"$WORK/report.err" || rc=$?
    expect_eq "report on the container's events file exits 3" "$rc" "3"
    expect_jq "the finding names the pod and the fix (hop limit 2)" "$WORK/report.json" \
        "[.findings[] | select(.verdict == \"HOP_LIMIT_EXCEEDED\")] | length == 1 and .[0].pods == [\"$POD1_NAMESPACE/$POD1_NAME\"] and (.[0].fix | test(\"httpPutResponseHopLimit: 2\"))"
    local mounts
    mounts=$(findmnt -rn -o TARGET | grep -cE "^($WORK|$IMAGE_CACHE)" || true)
    expect_eq "no mount left under the test's directory or the image cache" "$mounts" "0"
    expect_eq "no podman container left" "$(image ps -aq | wc -l)" "0"
}

SCENARIO=${1:-}
case "${1:-}" in
kubelet) scenario_kubelet ;;
*) echo "usage: $0 kubelet" >&2; exit 2 ;;
esac
finish
