#!/usr/bin/env bash
# End to end: every transaction attributed to its pod, container and process
# in the four topologies (VPC-CNI veth, bridge + masquerade, a nested
# docker-in-docker container 2 hops away, a host-network pod), on a node
# laid out like a real one (kubepods cgroups, /var/log/pods), with hop limit 2.
#   attribution.sh k8s_node   names from the node alone (--pods k8s-node)
#   attribution.sh k8s_api    names from a Kubernetes API stand-in (--pods k8s-api)
#   attribution.sh api_down   the API refuses: one warning, k8s-node answers
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
    expect_each "transactions carry the container name" "$ev" ".pod.name == \"$POD1_NAME\"" ".pod.container == \"$POD1_CONTAINER_NAME\""
    expect_each "transactions carry the process" "$ev" '.pod != null' '.process.comm == "imds-client" and .process.pid > 0'
    expect_each "the nested pod's drops happened in its own namespace, at ip_forward with TTL 1" "$ev" \
        ".pod.name == \"$POD3_NAME\"" 'any(.drops[]; .location == "ip_forward" and .ttl == 1)'
}

scenario_k8s_node() {
    topology
    tracer_start "$WORK/d.json" diagnose -o json --duration 10 --cgroup "$CGROUP_DIR" --pods k8s-node \
        --host-root "$HOST_ROOT" --events "$WORK/ev.jsonl"
    clients
    tracer_wait
    expect_eq "diagnose exits 3 (the nested pod)" "$TRACER_RC" "3"
    check_pods "$WORK/d.json" "$WORK/ev.jsonl"
    # probe --pod finds the pod through the same resolver (k8s-node, no mapping file).
    "$TESTBED" exec --prefix "$PREFIX" --pod 1 -- sleep 30 >/dev/null 2>&1 &
    for _ in $(seq 50); do [[ -n "$(cat "$POD1_CONTAINER_CGROUP/cgroup.procs" 2>/dev/null)" ]] && break; sleep 0.1; done
    local rc=0
    in_node "$IMDSTRACE" probe --pod "$POD1_NAMESPACE/$POD1_NAME" --pods k8s-node --host-root "$HOST_ROOT" \
        --cgroup "$CGROUP_DIR" -o json >"$WORK/probe.json" 2>"$WORK/probe.err" || rc=$?
    expect_eq "probe --pod with --pods k8s-node: healthy at hop limit 2" "$rc" "0"
    expect_jq "probe's transactions are the pod's" "$WORK/probe.json" \
        "[.transactions[].pod.name] | length > 0 and all(. == \"$POD1_NAME\")"
}

scenario_k8s_api() {
    topology
    api_start ok
    # No --host-root: the names can only come from the API.
    KUBERNETES_SERVICE_HOST="http://$API_ADDR" KUBERNETES_SERVICE_PORT="" IMDSTRACE_SA_DIR="$WORK/sa" NODE_NAME="$NODE_NAME" \
        tracer_start "$WORK/d.json" diagnose -o json --duration 10 --cgroup "$CGROUP_DIR" --pods k8s-api --events "$WORK/ev.jsonl"
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
        tracer_start "$WORK/d.json" diagnose -o json --duration 10 --cgroup "$CGROUP_DIR" --pods k8s-api \
        --host-root "$HOST_ROOT" --events "$WORK/ev.jsonl"
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
*) echo "usage: $0 k8s_node|k8s_api|api_down" >&2; exit 2 ;;
esac
finish
