#!/usr/bin/env bash
# End to end: one incident, three kinds of evidence that agree with each
# other and carry no secrets.
#   evidence.sh incident   diagnose with --events, --pcap, --metrics at hop limit 1:
#                          report == live diagnosis, tcpdump reads the pcap (IMDS
#                          packets, the TTL-1 response, the drop comment), the scrape
#                          has the pod's HOP_LIMIT_EXCEEDED series, no token or
#                          credential from the emulator appears anywhere.
#   evidence.sh rotation   --events-max-bytes/--events-max-files under a live tracer: the set
#                          stays capped; `report FILE` reads it oldest first and, when the pod's
#                          failure was rotated away, says so and never calls the node healthy;
#                          a gap in the set, a file left out or given twice, files out of
#                          order, the run's last file not given are said aloud
source "$(dirname "$0")/lib.sh"
require_root

scenario_incident() {
    testbed_up 1
    local port=19655
    tracer_start "$WORK/diag.txt" diagnose --duration 9 --cgroup "$CGROUP_DIR" --pods "static:$PODS_JSON" --node-name "$NODE_NAME" \
        --events "$WORK/events.jsonl" --pcap "$WORK/trace.pcapng" --metrics "127.0.0.1:$port"
    # The pod fails on the token; the host fetches a token and credentials
    # (secrets cross every hook, and must cross none of the outputs).
    pod_client 1 --attempts 2
    host_client --path /latest/meta-data/iam/security-credentials/ \
        --path /latest/meta-data/iam/security-credentials/imdstrace-testbed-role
    sleep 4  # let the pod's failed attempts finish (client timeout + linger)
    in_node curl -sf "http://127.0.0.1:$port/metrics" >"$WORK/metrics.txt" || fail "scraping /metrics"
    tracer_wait
    expect_eq "diagnose exits 3" "$TRACER_RC" "3"

    # JSONL -> report reproduces the live diagnosis, to the byte.
    local rc=0
    "$IMDSTRACE" report "$WORK/events.jsonl" >"$WORK/report.txt" 2>>"$WORK/report.err" || rc=$?
    expect_eq "report exits 3 like the live run" "$rc" "3"
    expect_same "report prints exactly what diagnose printed live (text)" "$(cat "$WORK/report.txt")" "$(cat "$WORK/diag.txt")"
    expect_grep "the text names the pod and the fix" "$WORK/report.txt" "httpPutResponseHopLimit: 2"
    "$IMDSTRACE" report -o json "$WORK/events.jsonl" >"$WORK/report.json" 2>>"$WORK/report.err" || true
    expect_jq "report -o json: the pod's HOP_LIMIT_EXCEEDED finding" "$WORK/report.json" \
        '.findings[0].verdict == "HOP_LIMIT_EXCEEDED" and .findings[0].pods == ["testbed/pod1"]'

    # pcap: standard tools open it and find the story.
    tcpdump -nn -r "$WORK/trace.pcapng" >"$WORK/tcpdump.txt" 2>"$WORK/tcpdump.err" || fail "tcpdump cannot read the pcap: $(cat "$WORK/tcpdump.err")"
    expect_grep "tcpdump shows the pod's token PUT" "$WORK/tcpdump.txt" "198\\.18\\.1\\.11\\.[0-9]+ > 169\\.254\\.169\\.254\\.80: .*PUT /latest/api/token"
    local ttl1
    ttl1=$(tcpdump -nn -r "$WORK/trace.pcapng" 'src host 169.254.169.254 and dst host 198.18.1.11 and ip[8] = 1 and tcp[13] & 8 != 0' 2>/dev/null | wc -l)
    [[ $ttl1 -gt 0 ]] && pass "tcpdump finds the token response arriving with TTL 1 ($ttl1 packets)" || fail "no TTL-1 response to the pod in the pcap"
    expect_grep "tcpdump shows ICMP time exceeded toward IMDS" "$WORK/tcpdump.txt" "ICMP time exceeded in-transit"
    local drops
    drops=$(strings "$WORK/trace.pcapng" | grep -c "hook=drop dir=from_target ttl=1 .*drop reason=IP_INHDR location=ip_forward" || true)
    [[ $drops -gt 0 ]] && pass "pcap comments carry the drop reason and location ($drops drops)" || fail "no drop comment in the pcap"
    expect_grep "pcap names its observation points" <(strings "$WORK/trace.pcapng") "uplink0 tc ingress"

    # metrics agree with the diagnosis.
    expect_grep "metrics: the pod's HOP_LIMIT_EXCEEDED series" "$WORK/metrics.txt" \
        '^imdstrace_transactions_total\{node="'"$NODE_NAME"'",namespace="testbed",pod="pod1",verdict="HOP_LIMIT_EXCEEDED"\} [1-9]'
    expect_grep "metrics: IP_INHDR drops for the pod" "$WORK/metrics.txt" \
        '^imdstrace_drops_total\{node="'"$NODE_NAME"'",namespace="testbed",pod="pod1",reason="IP_INHDR"\} [1-9]'
    expect_grep "metrics: node hop limit observed 1" "$WORK/metrics.txt" '^imdstrace_node_hop_limit_observed\{node="'"$NODE_NAME"'"\} 1$'
    expect_grep "metrics: the pod needs hop limit 2" "$WORK/metrics.txt" \
        '^imdstrace_pod_required_hop_limit\{node="'"$NODE_NAME"'",namespace="testbed",pod="pod1"\} 2$'
    expect_grep "metrics: build info" "$WORK/metrics.txt" '^imdstrace_build_info\{node="'"$NODE_NAME"'",version="[0-9.]+"\} 1$'
    local n_tx
    n_tx=$(jq -s '[.[] | select(.pod.name == "pod1")] | length' "$WORK/events.jsonl")
    expect_grep "metrics count the same pod transactions as the JSONL ($n_tx)" "$WORK/metrics.txt" \
        "^imdstrace_transactions_total\\{node=\"$NODE_NAME\",namespace=\"testbed\",pod=\"pod1\",verdict=\"HOP_LIMIT_EXCEEDED\"\\} $n_tx\$"

    # Secrets: the credentials really flowed, and nothing of them was kept.
    expect_grep "the host really fetched the credentials" "$WORK/clients.log" "security-credentials/imdstrace-testbed-role -> 200"
    local leaks
    leaks=$(grep -alE "IMDSFAKESECRET|AQAEA" "$WORK"/diag.txt "$WORK"/diag.txt.err "$WORK"/events.jsonl \
        "$WORK"/trace.pcapng "$WORK"/metrics.txt "$WORK"/report.json "$WORK"/report.txt "$WORK"/tcpdump.txt || true)
    expect_eq "no token or credential value in stdout, logs, JSONL, pcap, metrics or reports" "${leaks:-none}" "none"
    expect_grep "the pcap keeps the token header's name, not its value" <(strings "$WORK/trace.pcapng") \
        "X-Aws-Ec2-Metadata-Token: REDACTED"
}

scenario_rotation() {
    testbed_up 1
    tracer_start "$WORK/diag.txt" diagnose --duration 10 --cgroup "$CGROUP_DIR" --pods "static:$PODS_JSON" \
        --node-name "$NODE_NAME" --events "$WORK/ev.jsonl" --events-max-bytes 4K --events-max-files 3
    # first the pod's failure, then enough healthy host traffic to rotate it out of the set
    pod_client 1 --attempts 1
    sleep 3
    local i
    for i in $(seq 12); do host_client --path /latest/meta-data/mac --path /latest/meta-data/instance-id; done
    tracer_wait
    expect_eq "the live diagnosis saw the pod fail: exit 3" "$TRACER_RC" "3"
    local n=0 f big=0
    for f in "$WORK"/ev.jsonl*; do
        n=$((n + 1))
        (($(stat -c %s "$f") <= 4096)) || big=$((big + 1))
    done
    expect_eq "at most 3 files (FILE, FILE.1, FILE.2)" "$n" "3"
    expect_eq "none above 4 KiB" "$big" "0"
    local rc=0
    "$IMDSTRACE" report "$WORK/ev.jsonl" >"$WORK/report.txt" 2>"$WORK/report.err" || rc=$?
    expect_grep "report reads the rotated set, oldest first" "$WORK/report.err" "ev.jsonl.2, .*ev.jsonl.1, .*ev.jsonl"
    expect_grep "report says older transactions were rotated away" "$WORK/report.err" "rotated away"
    if ! grep -q "testbed/pod1" "$WORK/report.txt"; then
        # the failure is gone from the files: the report must not call that healthy
        expect_no_grep "without the rotated-away part, the node is not called healthy" "$WORK/report.txt" "^Healthy"
        expect_grep "the text itself says what it could not see" "$WORK/report.txt" "^PARTIAL: .*rotated away"
        expect_eq "no failure in what was read, but not the whole window: exit 4, not the healthy 0" "$rc" "4"
    else
        fail "the pod's transactions should have been rotated away by 24 host transactions (increase the host load)"
    fi
    # files given by hand, one left out between them: said, whatever the names
    rc=0
    "$IMDSTRACE" report "$WORK/ev.jsonl.2" "$WORK/ev.jsonl" >"$WORK/report-skip.txt" 2>"$WORK/report-skip.err" || rc=$?
    expect_grep "a file left out between two given ones is said" "$WORK/report-skip.txt" \
        "^PARTIAL: .*ev.jsonl is file [0-9]+ of its run, but the last file of that run read before it is file [0-9]+: a file between them is not read"
    expect_eq "... and the report exits 4" "$rc" "4"
    rc=0
    "$IMDSTRACE" report "$WORK/ev.jsonl" "$WORK/ev.jsonl.1" >"$WORK/report-order.txt" 2>&1 || rc=$?
    expect_grep "files out of order are said" "$WORK/report-order.txt" "given twice or out of order"
    rc=0
    "$IMDSTRACE" report "$WORK/ev.jsonl.1" "$WORK/ev.jsonl.1" >"$WORK/report-twice.txt" 2>&1 || rc=$?
    expect_eq "the same file twice is refused (usage): exit 2" "$rc" "2"
    expect_grep "... naming it" "$WORK/report-twice.txt" "ev.jsonl.1 is given twice"
    # the newest file left out (the run's end, where its session record is): said, not "Healthy"
    rc=0
    "$IMDSTRACE" report "$WORK/ev.jsonl.2" "$WORK/ev.jsonl.1" >"$WORK/report-nolast.txt" 2>&1 || rc=$?
    expect_grep "the run's last file left out is said" "$WORK/report-nolast.txt" "PARTIAL: .*that run's end .* was not read"
    expect_no_grep "... and never called healthy" "$WORK/report-nolast.txt" "^Healthy"
    # a gap: FILE.1 missing, FILE.2 is not read, and that is said
    rm -f "$WORK/ev.jsonl.1"
    rc=0
    "$IMDSTRACE" report "$WORK/ev.jsonl" >"$WORK/report-gap.txt" 2>"$WORK/report-gap.err" || rc=$?
    expect_grep "a gap in the set is said aloud" "$WORK/report-gap.err" "ev.jsonl.1 is missing"
    expect_grep "the gap is in the diagnosis too" "$WORK/report-gap.txt" "^PARTIAL: .*ev.jsonl.1 is missing"
    expect_no_grep "a report with a gap never says healthy" "$WORK/report-gap.txt" "^Healthy"
    expect_eq "... and exits 4" "$rc" "4"
    "$IMDSTRACE" report -o json "$WORK/ev.jsonl" >"$WORK/report-gap.json" 2>/dev/null || true
    expect_jq "JSON: partial says why" "$WORK/report-gap.json" '.partial | test("is missing")'
    expect_clean "after diagnose exited"
}

SCENARIO=${1:-}
case "${1:-}" in
incident) scenario_incident ;;
rotation) scenario_rotation ;;
*) echo "usage: $0 incident|rotation" >&2; exit 2 ;;
esac
finish
