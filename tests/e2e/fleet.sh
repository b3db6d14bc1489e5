#!/usr/bin/env bash
# End to end: the fleet on a real Prometheus (Debian's prometheus package).
#
#   fleet.sh prometheus   two testbed nodes, one at hop limit 1 and one at 2, an
#                         `imdstrace watch --metrics` in each (the node name from NODE_NAME as
#                         the DaemonSet sets it, and from --node-name); a Prometheus in a
#                         monitoring namespace of the test (127.0.0.1 there, veths to both
#                         nodes) scraping both with deploy/prometheus-rules.yaml loaded, and a
#                         kube-state-metrics stand-in (a static file) naming the node groups.
#                         The hop-limit alert fires for the failing node's pod and not the
#                         healthy node's; every panel of deploy/grafana-dashboard.json returns
#                         data; `imdstrace fleet` names the node, its pods, verdicts and the fix.
source "$(dirname "$0")/lib.sh"
require_root
command -v prometheus >/dev/null || { fail "prometheus is not installed (scripts/setup.sh)"; finish; exit 1; }

MON=""
prom() {  # prom PROMQL -> the JSON answer of an instant query
    nsenter --net="/run/netns/$MON" curl -sfG --max-time 5 "http://127.0.0.1:9090/api/v1/query" --data-urlencode "query=$1"
}

# A veth from the monitoring namespace into a node namespace: MON_IF, MON_ADDR/30 in the
# monitoring namespace, NODE_ADDR/30 as mon0 in the node.
link_node() {  # link_node NODE_NETNS_NAME MON_IF MON_ADDR NODE_ADDR
    ip -n "$MON" link add "$2" type veth peer name mon0 netns "$1"
    ip -n "$MON" addr add "$3/30" dev "$2"
    ip -n "$1" addr add "$4/30" dev mon0
    ip -n "$MON" link set "$2" up
    ip -n "$1" link set mon0 up
}

scenario_prometheus() {
    local healthy="${PREFIX}b"
    testbed_up 1
    second_testbed_up "$healthy" 2
    local h_node h_cg h_pods
    h_node=$(testbed_var "$healthy" NODE_NETNS_PATH)
    h_cg=$(testbed_var "$healthy" CGROUP_DIR)
    h_pods=$(testbed_var "$healthy" PODS_JSON)
    MON="${PREFIX}-mon"
    EXTRA_NETNS+=("$MON")
    ip netns add "$MON"
    ip -n "$MON" link set lo up
    link_node "$(basename "$NODE_NETNS_PATH")" mon-a 198.18.250.1 198.18.250.2
    link_node "$(basename "$h_node")" mon-b 198.18.250.5 198.18.250.6
    local failing_name=ip-198-18-0-2.failing.ec2.internal healthy_name=ip-198-18-0-2.healthy.ec2.internal

    # The failing node's imdstrace takes its name from NODE_NAME (the DaemonSet's downward API).
    NODE_NAME=$failing_name tracer_start "$WORK/failing.jsonl" watch -o json --cgroup "$CGROUP_DIR" \
        --pods "static:$PODS_JSON" --metrics 198.18.250.2:9655
    local failing_progs=$TRACER_PROGS
    rm -f "$WORK/ready2"
    nsenter --net="$h_node" "$IMDSTRACE" watch -o json --cgroup "$h_cg" --pods "static:$h_pods" \
        --metrics 198.18.250.6:9655 --node-name "$healthy_name" --ready-file "$WORK/ready2" \
        >"$WORK/healthy.jsonl" 2>"$WORK/healthy.err" &
    local h_tracer=$!
    EXTRA_PIDS+=("$h_tracer")
    for _ in $(seq 100); do [[ -f "$WORK/ready2" ]] && break; sleep 0.1; done
    [[ -f "$WORK/ready2" ]] || { cat "$WORK/healthy.err" >&2; fail "the healthy node's tracer did not attach"; return; }
    local healthy_progs
    healthy_progs=$(grep -h '^prog_id:' /proc/"$h_tracer"/fdinfo/* 2>/dev/null | awk '{print $2}' | sort -un | tr '\n' ' ')

    # kube-state-metrics stand-in: the node groups as kube_node_labels.
    mkdir -p "$WORK/ksm"
    printf '%s\n' '# TYPE kube_node_labels gauge' \
        "kube_node_labels{node=\"$failing_name\",label_karpenter_sh_nodepool=\"general\"} 1" \
        "kube_node_labels{node=\"$healthy_name\",label_karpenter_sh_nodepool=\"ci-runners\"} 1" >"$WORK/ksm/metrics"
    nsenter --net="/run/netns/$MON" python3 -m http.server --bind 127.0.0.1 --directory "$WORK/ksm" 9091 \
        >"$WORK/ksm.log" 2>&1 &
    EXTRA_PIDS+=($!)

    cat >"$WORK/prometheus.yml" <<YAML
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - $REPO/deploy/prometheus-rules.yaml
scrape_configs:
  - job_name: imdstrace
    honor_labels: true
    static_configs:
      - targets: ['198.18.250.2:9655', '198.18.250.6:9655']
  - job_name: kube-state-metrics
    honor_labels: true
    metrics_path: /metrics
    static_configs:
      - targets: ['127.0.0.1:9091']
YAML
    promtool check config "$WORK/prometheus.yml" >"$WORK/promtool.txt" 2>&1 && pass "promtool check config" ||
        { cat "$WORK/promtool.txt"; fail "promtool check config"; }
    nsenter --net="/run/netns/$MON" prometheus --config.file="$WORK/prometheus.yml" \
        --storage.tsdb.path="$WORK/tsdb" --web.listen-address=127.0.0.1:9090 >"$WORK/prometheus.log" 2>&1 &
    EXTRA_PIDS+=($!)

    # The incident: the same pod and host client on both nodes.
    pod_client 1
    host_client
    "$TESTBED" exec --prefix "$healthy" --pod 1 -- "$IMDS_CLIENT" >>"$WORK/clients2.log" 2>&1 || true
    "$TESTBED" exec --prefix "$healthy" --host -- "$IMDS_CLIENT" >>"$WORK/clients2.log" 2>&1 || true

    # Both nodes scraped, the alert evaluated (1 s intervals).
    local firing="" up=""
    for _ in $(seq 60); do
        up=$(prom 'sum(up{job="imdstrace"})' | jq -r '.data.result[0].value[1] // "0"' 2>/dev/null || echo 0)
        firing=$(prom 'ALERTS{alertname="ImdsHopLimitTooLow",alertstate="firing"}' 2>/dev/null |
            jq -r '[.data.result[].metric | "\(.node) \(.namespace)/\(.pod)"] | sort | join(",")' 2>/dev/null || true)
        [[ "$up" == 2 && -n "$firing" ]] && break
        sleep 1
    done
    expect_eq "Prometheus scrapes both nodes' imdstrace" "$up" "2"
    expect_eq "ImdsHopLimitTooLow fires for the failing node's pod only" "$firing" "$failing_name testbed/pod1"
    local failing_alerts
    failing_alerts=$(prom 'ALERTS{alertname="ImdsRequestsFailing",alertstate="firing"}' |
        jq -r '[.data.result[].metric | "\(.node) \(.namespace)/\(.pod) \(.verdict)"] | sort | join(",")')
    expect_eq "ImdsRequestsFailing fires for the failing node's pod, HOP_LIMIT_EXCEEDED, nothing on the healthy node" \
        "$failing_alerts" "$failing_name testbed/pod1 HOP_LIMIT_EXCEEDED"
    expect_eq "no alert at all names the healthy node" \
        "$(prom "ALERTS{node=\"$healthy_name\"}" | jq '.data.result | length')" "0"
    expect_eq "each node's observed hop limit, by node label" \
        "$(prom 'imdstrace_node_hop_limit_observed' | jq -r '[.data.result[] | "\(.metric.node)=\(.value[1])"] | sort | join(",")')" \
        "$failing_name=1,$healthy_name=2"

    # Every panel of the Grafana dashboard, its query as Grafana would send it (all nodes).
    # rate() needs two samples of a series, so a panel may be empty for a scrape or two
    # after the series appeared: asked again for up to 10 s (scrapes every second).
    local n empty tries
    for tries in $(seq 10); do
        n=0 empty=""
        while IFS=$'\t' read -r title expr; do
            n=$((n + 1))
            expr=${expr//\$node/.+}
            local count
            count=$(prom "$expr" | jq '.data.result | length' 2>/dev/null || echo error)
            [[ "$count" =~ ^[1-9][0-9]*$ ]] || empty="$empty [$title: $count]"
        done < <(jq -r '.panels[] | .title as $t | .targets[] | [$t, (.expr | gsub("\n"; " "))] | @tsv' "$REPO/deploy/grafana-dashboard.json")
        [[ -z "$empty" ]] && break
        sleep 1
    done
    [[ $n -ge 8 && -z "$empty" ]] && pass "all $n dashboard queries return data from the live Prometheus (try $tries)" ||
        fail "dashboard queries without data after 10 s ($n queries):$empty"
    # Its failing-pod panel counts pod1's failures although their series appeared already
    # at 3 (increase() alone shows 0 for it).
    local failing_panel
    failing_panel=$(jq -r '.panels[] | select(.title | startswith("Failing IMDS")) | .targets[0].expr' \
        "$REPO/deploy/grafana-dashboard.json")
    expect_eq "the dashboard's failing-pod panel: pod1's 3 HOP_LIMIT_EXCEEDED, nothing on the healthy node" \
        "$(prom "${failing_panel//\$node/.+}" |
            jq -r '[.data.result[] | "\(.metric.node) \(.metric.namespace)/\(.metric.pod) \(.metric.verdict) \(.value[1])"] | sort | join(",")')" \
        "$failing_name testbed/pod1 HOP_LIMIT_EXCEEDED 3"

    # imdstrace fleet against the live Prometheus.
    local rc=0
    nsenter --net="/run/netns/$MON" "$IMDSTRACE" fleet --prometheus http://127.0.0.1:9090 -o json \
        >"$WORK/fleet.json" 2>"$WORK/fleet.err" || rc=$?
    expect_eq "fleet exits 3: a node fails" "$rc" "3"
    local f="$WORK/fleet.json"
    expect_jq "fleet: schema imdstrace.fleet/v1, two nodes" "$f" '.schema == "imdstrace.fleet/v1" and (.nodes | length) == 2'
    expect_jq "fleet: the failing node, hop limit 1, pods need 2, in node group general" "$f" \
        ".nodes[] | select(.node == \"$failing_name\") | .status == \"FAILING\" and .hop_limit_observed == 1 and .required_hop_limit == 2 and .node_group == \"general\""
    expect_jq "fleet: its failing pod testbed/pod1, HOP_LIMIT_EXCEEDED, 3 transactions" "$f" \
        ".nodes[] | select(.node == \"$failing_name\") | .failing_pods == [{\"namespace\":\"testbed\",\"name\":\"pod1\",\"required_hop_limit\":2,\"verdicts\":{\"HOP_LIMIT_EXCEEDED\":3},\"verdict\":\"HOP_LIMIT_EXCEEDED\"}]"
    expect_jq "fleet: the healthy node OK, hop limit 2, no failing pod" "$f" \
        ".nodes[] | select(.node == \"$healthy_name\") | .status == \"OK\" and .hop_limit_observed == 2 and .failing_pods == []"
    expect_jq "fleet: node group general needs 2 and gets the fix; ci-runners none" "$f" \
        '([.node_groups[] | select(.node_group == "general")][0] | .required_hop_limit == 2 and (.fix | test("httpPutResponseHopLimit: 2"))) and ([.node_groups[] | select(.node_group == "ci-runners")][0].fix == null)'
    rc=0
    nsenter --net="/run/netns/$MON" "$IMDSTRACE" fleet --prometheus http://127.0.0.1:9090 >"$WORK/fleet.txt" 2>&1 || rc=$?
    expect_eq "fleet (text) exits 3 too" "$rc" "3"
    expect_grep "fleet text: the failing node's row" "$WORK/fleet.txt" \
        "^FAILING +$failing_name +general +1 +2 +testbed/pod1 HOP_LIMIT_EXCEEDED \\(3 HOP_LIMIT_EXCEEDED\\)"
    expect_grep "fleet text: the healthy node's row" "$WORK/fleet.txt" "^OK +$healthy_name +ci-runners +2 +2 +-$"
    expect_grep "fleet text: the fix for node group general" "$WORK/fleet.txt" \
        "spec.metadataOptions.httpPutResponseHopLimit: 2"
    sed 's/^/    | /' "$WORK/fleet.txt"
    # No Prometheus there: a runtime error, said plainly.
    rc=0
    nsenter --net="/run/netns/$MON" "$IMDSTRACE" fleet --prometheus http://127.0.0.1:1 >"$WORK/fleet-down.txt" 2>&1 || rc=$?
    expect_eq "fleet against no Prometheus exits 1" "$rc" "1"
    expect_grep "fleet says it cannot reach Prometheus" "$WORK/fleet-down.txt" "cannot reach Prometheus at http://127.0.0.1:1"

    # Nothing stays attached: the failing node's tracer by lib.sh's expect_clean, the healthy one by its ids.
    kill -TERM "$h_tracer" 2>/dev/null || true
    wait "$h_tracer" 2>/dev/null || true
    kill -TERM "$TRACER_PID" 2>/dev/null || true
    tracer_wait
    local left
    # shellcheck disable=SC2086
    left=$(programs_left $healthy_progs)
    expect_eq "the healthy node's tracer left no program" "${left:-none}" "none"
    TRACER_PROGS=$failing_progs
    expect_clean "after both tracers exited"
}

SCENARIO=${1:-}
case "${1:-}" in
prometheus) scenario_prometheus ;;
*) echo "usage: $0 prometheus" >&2; exit 2 ;;
esac
finish
