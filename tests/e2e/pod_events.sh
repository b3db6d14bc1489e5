#!/usr/bin/env bash
# End to end: Kubernetes Events on the failing pod, posted by the real tracer to the API
# stand-in (tests/testbed/k8s_api_standin.hpp: core/v1 Event creation, validated as the API
# server validates it), the way the DaemonSet runs it (--pods k8s-api, the in-cluster
# service account).
#
#   pod_events.sh posted      hop limit 1: one Warning ImdsHopLimitExceeded Event on the pod for
#                             its 3 failed token requests (once per pod and verdict per interval)
#   pod_events.sh forbidden   RBAC without `create events`: no Event, one line saying so, the
#                             diagnosis unchanged
source "$(dirname "$0")/lib.sh"
require_root
: "${K8S_API_STANDIN:?path to k8s-api-standin}"

run() {  # run EVENTS_MODE
    testbed_up 1 --pod vpc --kubepods systemd
    mkdir -p "$WORK/sa"
    echo "standin-token" >"$WORK/sa/token"
    in_node "$K8S_API_STANDIN" --pods "$K8S_PODS_JSON" --listen 127.0.0.1:0 --token standin-token --node "$NODE_NAME" \
        --events-mode "$1" --events-log "$WORK/api-events.jsonl" --ready-file "$WORK/api.ready" >"$WORK/api.log" 2>&1 &
    EXTRA_PIDS+=($!)
    for _ in $(seq 50); do [[ -s "$WORK/api.ready" ]] && break; sleep 0.1; done
    local api
    api=$(cat "$WORK/api.ready")
    KUBERNETES_SERVICE_HOST="http://$api" KUBERNETES_SERVICE_PORT="" IMDSTRACE_SA_DIR="$WORK/sa" NODE_NAME="$NODE_NAME" \
        tracer_start "$WORK/d.json" diagnose -o json --duration 8 --cgroup "$CGROUP_DIR" --pods k8s-api
    pod_client 1
    host_client
    tracer_wait
    expect_eq "diagnose exits 3" "$TRACER_RC" "3"
    expect_jq "the pod HOP_LIMIT_EXCEEDED, named by the API" "$WORK/d.json" \
        ".pods[] | select(.name == \"$POD1_NAME\") | .verdict == \"HOP_LIMIT_EXCEEDED\" and .namespace == \"$POD1_NAMESPACE\""
    expect_clean "after diagnose exited"
}

scenario_posted() {
    run ok
    local ev="$WORK/api-events.jsonl"
    expect_eq "exactly one Event for the pod's 3 failed token requests" "$(wc -l <"$ev" 2>/dev/null || echo 0)" "1"
    expect_jq "a core/v1 Warning Event on the pod (involvedObject by namespace, name, uid)" "$ev" \
        ".apiVersion == \"v1\" and .kind == \"Event\" and .type == \"Warning\" and .involvedObject == {\"apiVersion\":\"v1\",\"kind\":\"Pod\",\"namespace\":\"$POD1_NAMESPACE\",\"name\":\"$POD1_NAME\",\"uid\":\"$POD1_UID\"} and .metadata.namespace == \"$POD1_NAMESPACE\""
    expect_jq "reason ImdsHopLimitExceeded, the message kubectl describe shows" "$ev" \
        '.reason == "ImdsHopLimitExceeded" and .message == "IMDS token responses dropped at the node: hop limit 1, this pod needs 2 (raise httpPutResponseHopLimit to 2)"'
    expect_jq "source imdstrace on the node" "$ev" ".source == {\"component\":\"imdstrace\",\"host\":\"$NODE_NAME\"} and .reportingComponent == \"imdstrace\" and .count == 1"
    expect_no_grep "no complaint about Events" "$WORK/d.json.err" "k8s events"
}

scenario_forbidden() {
    run forbidden
    expect_eq "no Event stored" "$(cat "$WORK/api-events.jsonl" 2>/dev/null | wc -l)" "0"
    expect_eq "one line says it cannot post, and why" \
        "$(grep -c 'k8s events: cannot post an Event on .* (HTTP 403: events is forbidden.*no more Events (the ClusterRole needs create on events)' "$WORK/d.json.err" || true)" "1"
}

SCENARIO=${1:-}
case "${1:-}" in
posted) scenario_posted ;;
forbidden) scenario_forbidden ;;
*) echo "usage: $0 posted|forbidden" >&2; exit 2 ;;
esac
finish
