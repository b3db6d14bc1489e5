#!/usr/bin/env bash
# End to end: `imdstrace probe` makes the SDK's IMDSv2 requests from inside a
# pod (network namespace + cgroup) while tracing them.
#   probe.sh failing   hop limit 1: --pod and --netns probes fail (exit 3) with
#                      HOP_LIMIT_EXCEEDED; the IMDSv1 fallback is called out; --host is OK
#   probe.sh healthy   hop limit 2: the pod probe is healthy (exit 0)
source "$(dirname "$0")/lib.sh"
require_root

start_pod_process() {  # a long-running process in pod 1, as every real pod has
    "$TESTBED" exec --prefix "$PREFIX" --pod 1 -- sleep 60 >/dev/null 2>&1 &
    for _ in $(seq 50); do
        [[ -n "$(cat "$POD1_CGROUP/cgroup.procs")" ]] && return 0
        sleep 0.1
    done
    fail "no process in pod 1's cgroup"
}

probe() {  # probe OUT imdstrace-probe-args...; sets PROBE_RC
    local out=$1; shift
    PROBE_RC=0
    in_node "$IMDSTRACE" probe --cgroup "$CGROUP_DIR" --pods "static:$PODS_JSON" "$@" >"$out" 2>"$out.err" || PROBE_RC=$?
}

scenario_failing() {
    testbed_up 1
    start_pod_process
    probe "$WORK/pod.json" --pod testbed/pod1 -o json
    expect_eq "probe --pod exits 3 at hop limit 1" "$PROBE_RC" "3"
    expect_jq "the token PUTs timed out (3 attempts, as the SDK)" "$WORK/pod.json" \
        '[.steps[] | select(.method == "PUT")] | length == 3 and all(.[]; .status == null and (.error | test("timeout")))'
    expect_jq "the IMDSv1 fallback GETs succeeded" "$WORK/pod.json" '[.steps[] | select(.method == "GET")] | all(.[]; .status == 200)'
    expect_jq "the traced token requests are HOP_LIMIT_EXCEEDED, attributed to the pod" "$WORK/pod.json" \
        '[.transactions[] | select(.request.method == "PUT")] | length == 3 and all(.[]; .verdict == "HOP_LIMIT_EXCEEDED" and .pod.name == "pod1" and .required_hop_limit == 2)'
    expect_jq "the finding says the fix with hop limit 2" "$WORK/pod.json" \
        '.diagnosis.findings[0].fix | test("httpPutResponseHopLimit: 2")'
    expect_jq "the finding warns that only the IMDSv1 fallback works" "$WORK/pod.json" \
        '.diagnosis.findings[0].evidence | test("IMDSv1 requests without a token still succeed for testbed/pod1")'
    probe "$WORK/netns.txt" --netns "$POD1_NETNS_PATH" --attempts 1 --no-fallback
    expect_eq "probe --netns exits 3" "$PROBE_RC" "3"
    expect_grep "text output shows the timeout and the verdict" "$WORK/netns.txt" "PUT /latest/api/token .* -> timeout after 1000 ms"
    expect_grep "text output has the fix" "$WORK/netns.txt" "httpPutResponseHopLimit: 2"
    probe "$WORK/host.json" --host -o json
    expect_eq "probe --host exits 0 (0 hops: the TTL-1 response is delivered locally)" "$PROBE_RC" "0"
    [[ $PROBE_RC == 0 ]] || jq -c '.steps, [.transactions[] | {verdict, evidence}]' "$WORK/host.json" >&2 || true
    expect_jq "host probe got its token" "$WORK/host.json" '.steps[0].status == 200 and .healthy'
    probe "$WORK/none.txt"
    expect_eq "probe without a place is a usage error" "$PROBE_RC" "2"
    expect_grep "and says what to pass" "$WORK/none.txt.err" "--pod NS/NAME, --netns PATH or --pid PID"
    probe "$WORK/nopod.txt" --pod testbed/nosuch
    expect_eq "probe of an unknown pod is a usage error" "$PROBE_RC" "2"
    expect_clean "after the probes"
}

scenario_healthy() {
    testbed_up 2
    start_pod_process
    probe "$WORK/pod.json" --pod testbed/pod1 -o json
    expect_eq "probe --pod exits 0 at hop limit 2" "$PROBE_RC" "0"
    expect_jq "token then GETs, all 200" "$WORK/pod.json" '[.steps[].status] | all(. == 200) and length == 3'
    expect_jq "all traced transactions OK" "$WORK/pod.json" '[.transactions[].verdict] | length == 3 and all(. == "OK")'
    expect_clean "after the probe"
}

SCENARIO=${1:-}
case "${1:-}" in
failing) scenario_failing ;;
healthy) scenario_healthy ;;
*) echo "usage: $0 failing|healthy" >&2; exit 2 ;;
esac
finish
