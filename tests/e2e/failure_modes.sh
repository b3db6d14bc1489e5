#!/usr/bin/env bash
# End to end: every row of the verdict table produced by its real cause in
# the testbed, with the kernel evidence and the fix.
#   failure_modes.sh NAME      (see the case list at the bottom)
source "$(dirname "$0")/lib.sh"
require_root

# diag OUT CLIENT-SPEC... : diagnose while the given clients run.
# A client spec is "pod:I:args" or "host::args" (args space-separated).
diag() {
    local out=$1; shift
    local extra=()
    while [[ $# -gt 0 && $1 == --* ]]; do extra+=("$1"); shift; done
    tracer_start "$out" diagnose -o json --duration "${DIAG_SECONDS:-8}" --cgroup "$CGROUP_DIR" \
        --pods "static:$PODS_JSON" --events "$WORK/events.jsonl" "${extra[@]}"
    local spec who idx args
    for spec in "$@"; do
        IFS=: read -r who idx args <<<"$spec"
        # shellcheck disable=SC2086
        if [[ $who == pod ]]; then pod_client "$idx" $args; else host_client $args; fi
    done
    tracer_wait
}

# finding VERDICT: the finding of that verdict exists and names pod1
expect_finding() {
    local d=$1 verdict=$2
    expect_jq "finding $verdict names testbed/pod1" "$d" \
        "[.findings[] | select(.verdict == \"$verdict\")] | length == 1 and (.[0].pods | index(\"testbed/pod1\") != null)"
}

case_tokens_required() {
    testbed_up 2 --tokens required
    diag "$WORK/d.json" "pod:1:--no-token"
    expect_eq "exit 3" "$TRACER_RC" "3"
    expect_jq "pod verdict TOKEN_REQUIRED" "$WORK/d.json" '.pods[] | select(.name == "pod1") | .verdict == "TOKEN_REQUIRED"'
    expect_finding "$WORK/d.json" TOKEN_REQUIRED
    expect_jq "evidence: 401 without token header" "$WORK/d.json" '.findings[0].evidence | test("HTTP 401 .*without token header")'
    expect_jq "fix: move the client to IMDSv2" "$WORK/d.json" '.findings[0].fix | test("IMDSv2")'
}

case_hop_and_tokens_required() {
    # The seed's exact node: tokens required AND hop limit 1. The SDK's token
    # PUTs time out, its IMDSv1 fallback is refused.
    testbed_up 1 --tokens required
    diag "$WORK/d.json" "pod:1:--fallback-v1 --attempts 2"
    expect_eq "exit 3" "$TRACER_RC" "3"
    expect_jq "pod verdict HOP_LIMIT_EXCEEDED (the root cause)" "$WORK/d.json" '.pods[] | select(.name == "pod1") | .verdict == "HOP_LIMIT_EXCEEDED"'
    expect_jq "and its fallback GETs were TOKEN_REQUIRED" "$WORK/d.json" '.pods[] | select(.name == "pod1") | .verdicts.TOKEN_REQUIRED >= 1'
    expect_jq "findings: HOP_LIMIT_EXCEEDED first, then TOKEN_REQUIRED" "$WORK/d.json" '[.findings[].verdict] == ["HOP_LIMIT_EXCEEDED","TOKEN_REQUIRED"]'
    expect_jq "TOKEN_REQUIRED evidence says it follows the failed token requests" "$WORK/d.json" \
        '.findings[1].evidence | test("after the token requests failed with HOP_LIMIT_EXCEEDED")'
    expect_jq "fix: hop limit 2" "$WORK/d.json" '.findings[0].fix | test("httpPutResponseHopLimit: 2")'
}

case_token_invalid() {
    testbed_up 2 --tokens required
    diag "$WORK/d.json" "pod:1:--bad-token"
    expect_jq "pod verdict TOKEN_INVALID" "$WORK/d.json" '.pods[] | select(.name == "pod1") | .verdict == "TOKEN_INVALID"'
    expect_finding "$WORK/d.json" TOKEN_INVALID
}

case_forbidden() {
    testbed_up 2 --endpoint disabled
    diag "$WORK/d.json" "pod:1:--attempts 1"
    expect_jq "pod verdict FORBIDDEN (endpoint disabled)" "$WORK/d.json" '.pods[] | select(.name == "pod1") | .verdict == "FORBIDDEN"'
    expect_jq "fix names --http-endpoint enabled" "$WORK/d.json" '.findings[0].fix | test("--http-endpoint enabled")'
}

case_forwarded_for() {
    testbed_up 2
    diag "$WORK/d.json" "pod:1:--xff --attempts 1"
    expect_jq "pod verdict FORBIDDEN (X-Forwarded-For on the PUT)" "$WORK/d.json" '.pods[] | select(.name == "pod1") | .verdict == "FORBIDDEN"'
    expect_jq "evidence names X-Forwarded-For" "$WORK/d.json" '.findings[0].evidence | test("X-Forwarded-For")'
}

case_bad_request() {
    testbed_up 2
    diag "$WORK/d.json" "pod:1:--no-ttl-header --attempts 1"
    expect_jq "pod verdict BAD_REQUEST" "$WORK/d.json" '.pods[] | select(.name == "pod1") | .verdict == "BAD_REQUEST"'
    expect_jq "evidence: PUT without TTL header" "$WORK/d.json" '.findings[0].evidence | test("without TTL header")'
}

case_not_found() {
    testbed_up 2
    diag "$WORK/d.json" "pod:1:--path /latest/meta-data/no-such-thing"
    expect_eq "NOT_FOUND alone is not a node failure: exit 0" "$TRACER_RC" "0"
    expect_jq "pod verdict NOT_FOUND" "$WORK/d.json" '.pods[] | select(.name == "pod1") | .verdict == "NOT_FOUND"'
}

case_blocked() {
    testbed_up 2 --policy-drop 1
    diag "$WORK/d.json" "pod:1:--attempts 1" "host::"
    expect_eq "exit 3" "$TRACER_RC" "3"
    expect_jq "pod verdict BLOCKED" "$WORK/d.json" '.pods[] | select(.name == "pod1") | .verdict == "BLOCKED"'
    expect_jq "host unaffected" "$WORK/d.json" '[.pods[] | select(.name == null)] | all(.[]; .verdict == "OK")'
    expect_jq "evidence: NETFILTER_DROP" "$WORK/d.json" '.findings[0].evidence | test("NETFILTER_DROP")'
    expect_jq "fix names where it was dropped" "$WORK/d.json" '.findings[0].fix | test("at (nft_do_chain|nf_hook_slow)")'
}

case_no_route() {
    testbed_up 2 --no-route 1
    diag "$WORK/d.json" "pod:1:--attempts 1"
    expect_jq "pod verdict NO_ROUTE" "$WORK/d.json" '.pods[] | select(.name == "pod1") | .verdict == "NO_ROUTE"'
    expect_jq "evidence: IP_INNOROUTES" "$WORK/d.json" '.findings[0].evidence | test("NOROUTES")'
}

case_refused() {
    testbed_up 2
    diag "$WORK/d.json" --target=169.254.169.254:81 "pod:1:--target 169.254.169.254:81 --attempts 1"
    expect_jq "pod verdict REFUSED (RST from the target)" "$WORK/d.json" '.pods[] | select(.name == "pod1") | .verdict == "REFUSED"'
}

case_no_response() {
    testbed_up 2 --rate-limit 1
    # One request uses the allowance; the rest are silently ignored.
    diag "$WORK/d.json" "pod:1:--attempts 1" "pod:1:--attempts 1" "pod:1:--attempts 1"
    expect_jq "pod has NO_RESPONSE transactions" "$WORK/d.json" '.pods[] | select(.name == "pod1") | .verdicts.NO_RESPONSE >= 1'
    expect_jq "fix mentions throttling" "$WORK/d.json" '[.findings[] | select(.verdict == "NO_RESPONSE")][0].fix | test("throttles")'
}

case_cilium() {
    # A datapath that decrements TTL and drops in tc (Cilium's bpf_host).
    testbed_up 1 --ttl-datapath 1
    diag "$WORK/d.json" "pod:1:--attempts 1"
    expect_jq "pod verdict HOP_LIMIT_EXCEEDED" "$WORK/d.json" '.pods[] | select(.name == "pod1") | .verdict == "HOP_LIMIT_EXCEEDED" and .required_hop_limit == 2'
    expect_jq "evidence: a TC drop of the TTL-1 response" "$WORK/d.json" '.findings[0].evidence | test("TC_INGRESS at .* \\(TTL 1\\)")'
}

case_at_risk() {
    # The pod only makes IMDSv1 GETs (answered with TTL 64): it works today.
    # The host's token response shows the node's hop limit is 1: the pod's
    # first token request will fail. Warned before it happens.
    testbed_up 1
    diag "$WORK/d.json" "pod:1:--no-token" "host::"
    expect_eq "nothing failed yet: exit 0" "$TRACER_RC" "0"
    expect_jq "the pod is OK today" "$WORK/d.json" '.pods[] | select(.name == "pod1") | .verdict == "OK" and .required_hop_limit == 2'
    expect_jq "a warning names the pod" "$WORK/d.json" '.warnings | length == 1 and .[0].pods == ["testbed/pod1"]'
    expect_jq "the warning's fix says hop limit 2" "$WORK/d.json" '.warnings[0].fix | test("httpPutResponseHopLimit: 2")'
}

SCENARIO=${1:-}
case "${1:-}" in
tokens_required | hop_and_tokens_required | token_invalid | forbidden | forwarded_for | bad_request | not_found | \
    blocked | no_route | refused | no_response | cilium | at_risk) "case_$1" ;;
*) echo "usage: $0 tokens_required|hop_and_tokens_required|token_invalid|forbidden|forwarded_for|bad_request|not_found|blocked|no_route|refused|no_response|cilium" >&2; exit 2 ;;
esac
finish
