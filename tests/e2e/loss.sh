#!/usr/bin/env bash
# End to end: events lost to a full ring buffer are never a verdict.
#
#   loss.sh tiny_ring   a one-page ring (--ring-size 4096) under 8 concurrent token clients
#                       against a healthy IMDS (hop limit 2): events are lost, and every
#                       transaction they may touch is marked incomplete with the count, no
#                       NO_RESPONSE comes from the missing evidence, diagnose (text and JSON)
#                       and report say so, and the exit code is not "failures found".
source "$(dirname "$0")/lib.sh"
require_root
: "${IMDS_LOAD:?path to imds-load}"

scenario_tiny_ring() {
    testbed_up 2
    local d="$WORK/diag.json" ev="$WORK/events.jsonl"
    tracer_start "$d" diagnose -o json --duration 6 --ring-size 4096 --cgroup "$CGROUP_DIR" \
        --pods "static:$PODS_JSON" --events "$ev"
    "$TESTBED" exec --prefix "$PREFIX" --pod 1 -- "$IMDS_LOAD" --clients 8 --duration 3 >"$WORK/load.log" 2>&1 || true
    tracer_wait
    cat "$WORK/load.log" >&2
    local made
    made=$(sed -n 's/^RESULT transactions=\([0-9]*\).*/\1/p' "$WORK/load.log")
    expect_jq "the clients made token transactions (${made:-0})" <(echo "${made:-0}") '. > 100'
    expect_jq "a one-page ring lost events (set_aside.events_lost > 0)" "$d" '.set_aside.events_lost > 0'
    expect_eq "diagnose exits 4: no failure seen, but events were lost (not 3, not the healthy 0)" "$TRACER_RC" "4"
    local nores
    nores=$(jq -s '[.[] | select(.verdict == "NO_RESPONSE")] | length' "$ev")
    expect_eq "no transaction judged NO_RESPONSE from missing evidence" "$nores" "0"
    expect_each "incomplete transactions carry the count lost while they were open" "$ev" \
        '.incomplete == true' '.events_lost > 0'
    expect_each "a transaction without a verdict is set aside for lost events, never guessed" "$ev" \
        '.verdict == null' '.incomplete == true and (.set_aside == "events lost" or .set_aside == "in flight when the window ended" or (.opening_unseen and (.set_aside | startswith("opening not seen"))))'
    expect_jq "no row counts more incomplete transactions than it has" "$d" '[.pods[] | .incomplete <= .transactions] | all'
    expect_jq "the pod is marked incomplete in the diagnosis (pods[] or set_aside.incomplete_pods)" "$d" \
        '([.pods[] | select(.name == "pod1") | .incomplete] | add // 0) > 0 or ((.set_aside.incomplete_pods["testbed/pod1"] // 0) > 0)'
    expect_jq "no pod and no finding says NO_RESPONSE" "$d" \
        '([.pods[] | select(.verdict == "NO_RESPONSE")] | length == 0) and ([.findings[] | select(.verdict == "NO_RESPONSE")] | length == 0)'
    # The text diagnosis (rebuilt from the recording) says it aloud.
    local rc=0
    "$IMDSTRACE" report "$ev" >"$WORK/report.txt" 2>"$WORK/report.err" || rc=$?
    expect_eq "report exits 4 like diagnose" "$rc" "4"
    expect_grep "text: INCOMPLETE line with the count of lost events" "$WORK/report.txt" '^INCOMPLETE: [0-9]+ events were lost'
    expect_grep "text: the pod named among the incomplete" "$WORK/report.txt" 'testbed/pod1 \([0-9]+\)'
    expect_no_grep "text: never called healthy" "$WORK/report.txt" '^Healthy'
    expect_clean "after diagnose exited"
}

SCENARIO=${1:-}
case "${1:-}" in
tiny_ring) scenario_tiny_ring ;;
*) echo "usage: $0 tiny_ring" >&2; exit 2 ;;
esac
finish
