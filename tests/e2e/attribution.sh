#!/usr/bin/env bash
# End to end: every transaction attributed to its pod, container and process
# in the four topologies (VPC-CNI veth, bridge + masquerade, a nested
# docker-in-docker container 2 hops away, a host-network pod), on a node
# laid out like a real one (kubepods cgroups, /var/log/pods), with hop limit 2.
# imdstrace runs as deploy/daemonset.yaml runs it (lib.sh in_daemonset): the
# node's network namespace, a pid and mount namespace of its own, the host's
# /proc, /sys/fs/cgroup and log directories read-only under --host-root.
#   attribution.sh k8s_node      names from the node alone (--pods k8s-node)
#   attribution.sh k8s_api       names from a Kubernetes API stand-in (--pods k8s-api)
#   attribution.sh api_down      the API refuses: one warning, k8s-node answers
#   attribution.sh crio_conmon   CRI-O with conmon in the pod's cgroup (OpenShift), systemd driver,
#                                hop limit 1: pod IPs and probe --pod from the pod's own namespace
#   attribution.sh crio_cgroupfs the same with the cgroupfs driver
#   attribution.sh dind          moby's docker-in-docker layout (<ctr>/init, <ctr>/docker/<id>),
#                                hop limit 2: probe --pod from the pod's namespace, not an inner one
#   attribution.sh dind_cgroupfs the same with the cgroupfs driver and docker scope names
#   attribution.sh pod_logs_dir  the kubelet's podLogsDir: no /var/log/pods, links into /data/pod-logs
source "$(dirname "$0")/lib.sh"
require_root
: "${K8S_API_STANDIN:?path to k8s-api-standin}"

topology() {
    testbed_up 2 --pod vpc --pod bridge --pod nested --pod hostnet --kubepods systemd
}

clients() {
    pod_client 1
    pod_client 2
    "$TESTBED" exec --prefix "$PREFIX" --pod 3 --container -- "$IMDS_CLIENT" --attempts 2 >>"$WORK/clients.log" 2>&1 || true
    pod_client 4
    host_client
}

# api_start MODE: the stand-in listens on 127.0.0.1 inside the node namespace.
api_start() {
    mkdir -p "$WORK/sa"
    echo "standin-token" >"$WORK/sa/token"
    in_node "$K8S_API_STANDIN" --pods "$K8S_PODS_JSON" --listen 127.0.0.1:0 --token standin-token \
        --mode "$1" --node "$NODE_NAME" --ready-file "$WORK/api.ready" >"$WORK/api.log" 2>&1 &
    API_PID=$!
    for _ in $(seq 50); do [[ -s "$WORK/api.ready" ]] && break; sleep 0.1; done
    API_ADDR=$(cat "$WORK/api.ready")
}

api_stop() { kill "$API_PID" 2>/dev/null || true; wait "$API_PID" 2>/dev/null || true; }

check_pods() {  # check_pods DIAGNOSIS EVENTS
    local d=$1 ev=$2
    pod() { echo ".pods[] | select(.namespace == \"$1\" and .name == \"$2\")"; }
    expect_jq "VPC-CNI pod $POD1_NAMESPACE/$POD1_NAME: OK, 1 hop" "$d" "$(pod "$POD1_NAMESPACE" "$POD1_NAME") | .verdict == \"OK\" and .hops == 1"
    expect_jq "bridge+masquerade pod $POD2_NAMESPACE/$POD2_NAME: OK, 1 hop (through NAT)" "$d" "$(pod "$POD2_NAMESPACE" "$POD2_NAME") | .verdict == \"OK\" and .hops == 1"
    expect_jq "nested pod $POD3_NAMESPACE/$POD3_NAME alone HOP_LIMIT_EXCEEDED, 2 hops, needs 3" "$d" \
        "$(pod "$POD3_NAMESPACE" "$POD3_NAME") | .verdict == \"HOP_LIMIT_EXCEEDED\" and .hops == 2 and .required_hop_limit == 3"
    expect_jq "host-network pod $POD4_NAMESPACE/$POD4_NAME: OK, 0 hops (told apart by cgroup)" "$d" "$(pod "$POD4_NAMESPACE" "$POD4_NAME") | .verdict == \"OK\" and .hops == 0"
    expect_jq "the plain host process has no pod" "$d" '[.pods[] | select(.name == null)] | length == 1 and .[0].verdict == "OK"'
    expect_jq "exactly one finding: HOP_LIMIT_EXCEEDED for the nested pod, fix hop limit 3" "$d" \
        "(.findings | length) == 1 and .findings[0].pods == [\"$POD3_NAMESPACE/$POD3_NAME\"] and (.findings[0].fix | test(\"httpPutResponseHopLimit: 3\"))"
    expect_each "transactions from the container's cgroup carry the container name" "$ev" \
        ".pod.name == \"$POD1_NAME\" and .cgroup != \"$CGROUP_REL/host\"" ".pod.container == \"$POD1_CONTAINER_NAME\""
    expect_each "transactions carry the process" "$ev" '.pod != null' '.process.comm == "imds-client" and .process.pid > 0'
    expect_each "the nested pod's drops happened in its own namespace, at ip_forward with TTL 1" "$ev" \
        ".pod.name == \"$POD3_NAME\" and (.client | startswith(\"$POD3_INNER_IP:\"))" 'any(.drops[]; .location == "ip_forward" and .ttl == 1)'
}

# addr_client I: a client in pod I's network namespace but outside its cgroup (in the
# testbed's host cgroup): only the pod's address, read from the pod's own network namespace
# through a host pid, can name it.
addr_client() {
    # shellcheck disable=SC2016
    sh -c 'echo $$ >"$1/cgroup.procs" && exec nsenter --net="$2" "$3" --attempts 1' sh "$HOST_CGROUP" \
        "$(eval echo "\$POD${1}_NETNS_PATH")" "$IMDS_CLIENT" >>"$WORK/clients.log" 2>&1 || true
}

check_ips() {  # check_ips EVENTS I...
    local ev=$1 i name ip
    shift
    for i in "$@"; do
        name=POD${i}_NAME ip=POD${i}_IP
        expect_each "a client at ${!ip} outside the pod's cgroup is ${!name}'s: its address read from its own namespace" \
            "$ev" ".cgroup == \"$CGROUP_REL/host\" and (.client | startswith(\"${!ip}:\"))" ".pod.name == \"${!name}\""
    done
}

# probe_pod I EXPECTED_RC DESCRIPTION [JQ...]: probe --pod from pod I, run as the DaemonSet
probe_pod() {
    local i=$1 want=$2 what=$3 ns=POD${1}_NAMESPACE name=POD${1}_NAME rc=0
    shift 3
    in_daemonset "$IMDSTRACE" probe --pod "${!ns}/${!name}" --pods k8s-node --host-root "$DS_ROOT" \
        --cgroup "$DS_CGROUP_DIR" -o json >"$WORK/probe$i.json" 2>"$WORK/probe$i.err" || rc=$?
    expect_eq "probe --pod ${!ns}/${!name}: $what" "$rc" "$want"
    expect_jq "probe's transactions are the pod's" "$WORK/probe$i.json" \
        "[.transactions[].pod.name] | length > 0 and all(. == \"${!name}\")"
    local f
    for f in "$@"; do expect_jq "probe: $f" "$WORK/probe$i.json" "$f"; done
}

scenario_k8s_node() {
    topology
    tracer_start_daemonset "$WORK/d.json" diagnose -o json --duration 10 --cgroup "$DS_CGROUP_DIR" --pods k8s-node \
        --host-root "$DS_ROOT" --events "$WORK/ev.jsonl"
    clients
    addr_client 1
    addr_client 3
    tracer_wait
    expect_eq "diagnose exits 3 (the nested pod)" "$TRACER_RC" "3"
    check_pods "$WORK/d.json" "$WORK/ev.jsonl"
    check_ips "$WORK/ev.jsonl" 1 3
    expect_each "found by address only: no container" "$WORK/ev.jsonl" ".cgroup == \"$CGROUP_REL/host\" and .pod != null" \
        '.pod.container == null or .pod.container == ""'
    # probe --pod finds the pod through the same resolver (k8s-node, no mapping file).
    probe_pod 1 0 "healthy at hop limit 2 (--pods k8s-node, the DaemonSet's pid namespace)" \
        '[.transactions[] | .hops] | all(. == 1)'
}

# CRI-O with conmon_cgroup = "pod": a conmon scope per container beside it, in the node's
# network namespace, listing first (testbed.sh picks such IDs).
crio_conmon() {  # crio_conmon systemd|cgroupfs
    testbed_up 1 --pod vpc --pod bridge --kubepods "$1" --runtime crio
    tracer_start_daemonset "$WORK/d.json" diagnose -o json --duration 6 --cgroup "$DS_CGROUP_DIR" --pods k8s-node \
        --host-root "$DS_ROOT" --events "$WORK/ev.jsonl"
    pod_client 1 --attempts 1
    pod_client 2 --attempts 1
    addr_client 1
    addr_client 2
    tracer_wait
    local pod
    for pod in "$POD1_NAME" "$POD2_NAME"; do
        expect_jq "$pod: HOP_LIMIT_EXCEEDED, 1 hop" "$WORK/d.json" \
            ".pods[] | select(.name == \"$pod\") | .verdict == \"HOP_LIMIT_EXCEEDED\" and .hops == 1"
    done
    check_ips "$WORK/ev.jsonl" 1 2
    probe_pod 1 3 "fails at hop limit 1, as diagnose says (from the pod's namespace, not conmon's)" \
        '[.transactions[] | select(.request.method == "PUT")] | length > 0 and all(.verdict == "HOP_LIMIT_EXCEEDED" and .hops == 1)'
    probe_pod 2 3 "the bridge + masquerade pod fails too" \
        '[.transactions[] | select(.request.method == "PUT")] | length > 0 and all(.verdict == "HOP_LIMIT_EXCEEDED")'
}

# moby's docker-in-docker: the container's processes in <ctr>/init (pod netns), an inner
# container in <ctr>/docker/<id> (its own netns), the container scope listing before the sandbox.
dind() {  # dind systemd|cgroupfs RUNTIME
    testbed_up 2 --pod nested --kubepods "$1" --runtime "$2"
    tracer_start_daemonset "$WORK/d.json" diagnose -o json --duration 6 --cgroup "$DS_CGROUP_DIR" --pods k8s-node \
        --host-root "$DS_ROOT" --events "$WORK/ev.jsonl"
    pod_client 1 --attempts 1
    addr_client 1
    tracer_wait
    check_ips "$WORK/ev.jsonl" 1
    probe_pod 1 0 "healthy at hop limit 2: 1 hop, from the pod's own namespace (not the inner container's)" \
        '[.transactions[] | .hops] | length > 0 and all(. == 1)'
}

scenario_pod_logs_dir() {
    testbed_up 2 --pod vpc --pod bridge --pod hostnet --kubepods systemd --pod-logs-dir /data/pod-logs
    [[ ! -e "$HOST_ROOT/var/log/pods" ]] || fail "the testbed host root has no /var/log/pods"
    # The DaemonSet mounts /var/log/pods (an empty directory here) and /var/log/containers,
    # whose links point into /data/pod-logs, which it does not mount: names from the links.
    tracer_start_daemonset "$WORK/d.json" diagnose -o json --duration 6 --cgroup "$DS_CGROUP_DIR" --pods k8s-node \
        --host-root "$DS_ROOT" --events "$WORK/ev.jsonl"
    pod_client 1 --attempts 1
    pod_client 2 --attempts 1
    pod_client 3 --attempts 1
    tracer_wait
    local i ns name cn
    for i in 1 2 3; do
        ns=POD${i}_NAMESPACE name=POD${i}_NAME cn=POD${i}_CONTAINER_NAME
        expect_jq "DaemonSet: ${!ns}/${!name} named from the /var/log/containers links" "$WORK/d.json" \
            "[.pods[] | select(.namespace == \"${!ns}\" and .name == \"${!name}\")] | length == 1"
        expect_each "DaemonSet: ${!name}'s transactions name container ${!cn}" "$WORK/ev.jsonl" \
            ".pod.name == \"${!name}\"" ".pod.container == \"${!cn}\""
    done
    expect_no_grep "DaemonSet: no 'is --host-root right?' warning" "$WORK/d.json.err" "host-root right"
    # On the node itself (the whole host root): the kubelet's config names the directory.
    tracer_start "$WORK/n.json" diagnose -o json --duration 5 --cgroup "$CGROUP_DIR" --pods k8s-node \
        --host-root "$HOST_ROOT" --events "$WORK/ev2.jsonl"
    pod_client 1 --attempts 1
    tracer_wait
    expect_jq "node: $POD1_NAMESPACE/$POD1_NAME named from podLogsDir" "$WORK/n.json" \
        "[.pods[] | select(.namespace == \"$POD1_NAMESPACE\" and .name == \"$POD1_NAME\")] | length == 1"
    expect_grep "node: the pods' directory is the configured one" "$WORK/n.json.err" "/data/pod-logs"
    expect_no_grep "node: no 'is --host-root right?' warning" "$WORK/n.json.err" "host-root right"
}

scenario_k8s_api() {
    topology
    api_start ok
    # No log directories under --host-root: the names can only come from the API.
    DS_LOGS=0 KUBERNETES_SERVICE_HOST="http://$API_ADDR" KUBERNETES_SERVICE_PORT="" IMDSTRACE_SA_DIR="$WORK/sa" \
        NODE_NAME="$NODE_NAME" tracer_start_daemonset "$WORK/d.json" diagnose -o json --duration 10 \
        --cgroup "$DS_CGROUP_DIR" --pods k8s-api --host-root "$DS_ROOT" --events "$WORK/ev.jsonl"
    clients
    tracer_wait
    api_stop
    expect_eq "diagnose exits 3" "$TRACER_RC" "3"
    check_pods "$WORK/d.json" "$WORK/ev.jsonl"
    expect_no_grep "no fallback warning" "$WORK/d.json.err" "falling back|fall back"
}

scenario_api_down() {
    topology
    api_start unauthorized
    KUBERNETES_SERVICE_HOST="http://$API_ADDR" KUBERNETES_SERVICE_PORT="" IMDSTRACE_SA_DIR="$WORK/sa" NODE_NAME="$NODE_NAME" \
        tracer_start_daemonset "$WORK/d.json" diagnose -o json --duration 10 --cgroup "$DS_CGROUP_DIR" --pods k8s-api \
        --host-root "$DS_ROOT" --events "$WORK/ev.jsonl"
    clients
    tracer_wait
    api_stop
    expect_eq "diagnose exits 3" "$TRACER_RC" "3"
    check_pods "$WORK/d.json" "$WORK/ev.jsonl"
    local warnings
    warnings=$(grep -c "warn" "$WORK/d.json.err" || true)
    expect_eq "exactly one warning about the API" "$warnings" "1"
    expect_grep "the warning says what happened" "$WORK/d.json.err" "401|unauthori[sz]ed|refused"
}

SCENARIO=${1:-}
case "${1:-}" in
k8s_node) scenario_k8s_node ;;
k8s_api) scenario_k8s_api ;;
api_down) scenario_api_down ;;
crio_conmon) crio_conmon systemd ;;
crio_cgroupfs) crio_conmon cgroupfs ;;
dind) dind systemd containerd ;;
dind_cgroupfs) dind cgroupfs docker ;;
pod_logs_dir) scenario_pod_logs_dir ;;
*) echo "usage: $0 k8s_node|k8s_api|api_down|crio_conmon|crio_cgroupfs|dind|dind_cgroupfs|pod_logs_dir" >&2; exit 2 ;;
esac
finish
