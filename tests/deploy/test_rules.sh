#!/usr/bin/env bash
# The alerting rules shipped in deploy/: the plain rules file passes `promtool check rules`
# and the unit tests in rules_test.yaml (`promtool test rules`), and the Prometheus Operator
# PrometheusRule carries exactly the same groups.  Needs promtool (Debian: prometheus) and
# python3-yaml, both from scripts/setup.sh.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
deploy=$(cd "$here/../../deploy" && pwd)
passed=0 failed=0
ok() { passed=$((passed + 1)); echo "ok    $*"; }
bad() { failed=$((failed + 1)); echo "FAIL  $*"; }

command -v promtool >/dev/null || { echo "FAIL  promtool (apt-get install prometheus, or scripts/setup.sh)"; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

if promtool check rules "$deploy/prometheus-rules.yaml" >"$tmp/check.txt" 2>&1; then
    ok "promtool check rules deploy/prometheus-rules.yaml ($(grep -o '[0-9]* rules found' "$tmp/check.txt"))"
else
    bad "promtool check rules deploy/prometheus-rules.yaml"; cat "$tmp/check.txt"
fi
# The PrometheusRule's spec is a rules file: extract it and check it the same way.
if python3 - "$deploy/prometheusrule.yaml" "$deploy/prometheus-rules.yaml" "$tmp/from-crd.yaml" <<'PY'
import sys, yaml
crd = yaml.safe_load(open(sys.argv[1]))
plain = yaml.safe_load(open(sys.argv[2]))
assert crd["apiVersion"] == "monitoring.coreos.com/v1" and crd["kind"] == "PrometheusRule", "not a PrometheusRule"
assert crd["metadata"]["namespace"] == "imdstrace", "not in the imdstrace namespace"
assert crd["spec"]["groups"] == plain["groups"], "groups differ from prometheus-rules.yaml"
yaml.safe_dump({"groups": crd["spec"]["groups"]}, open(sys.argv[3], "w"))
PY
then
    ok "deploy/prometheusrule.yaml: a PrometheusRule with exactly the groups of prometheus-rules.yaml"
    promtool check rules "$tmp/from-crd.yaml" >/dev/null 2>&1 && ok "promtool check rules on the PrometheusRule's spec" ||
        bad "promtool check rules on the PrometheusRule's spec"
else
    bad "deploy/prometheusrule.yaml matches prometheus-rules.yaml"
fi
alerts=$(python3 -c 'import sys,yaml; print(" ".join(r["alert"] for g in yaml.safe_load(open(sys.argv[1]))["groups"] for r in g["rules"] if "alert" in r))' "$deploy/prometheus-rules.yaml")
[[ "$alerts" == "ImdsHopLimitTooLow ImdsRequestsFailing ImdstraceEventsLost" ]] && ok "alerts: $alerts" || bad "alerts: got '$alerts'"
if (cd "$here" && promtool test rules rules_test.yaml) >"$tmp/test.txt" 2>&1; then
    ok "promtool test rules tests/deploy/rules_test.yaml"
else
    bad "promtool test rules tests/deploy/rules_test.yaml"; cat "$tmp/test.txt"
fi
# The dashboard's per-pod counter panels, on the same series (a promtool test generated
# from deploy/grafana-dashboard.json's queries, $node as Grafana's "All").  A pod's first
# failures, which make its series appear already above zero, count; a node's old
# failures, new only to a Prometheus that restarted (node-d), do not.
if python3 - "$deploy/grafana-dashboard.json" "$here/rules_test.yaml" "$tmp/dashboard_test.yaml" <<'PY'
import json, sys, yaml
dash = json.load(open(sys.argv[1]))
groups = yaml.safe_load(open(sys.argv[2]))["tests"]
series, new_nodes = groups[0]["input_series"], groups[1]["input_series"]
expr = {p["title"]: t["expr"].replace("$node", ".+") for p in dash["panels"] for t in p.get("targets", [])}
failing = expr["Failing IMDS transactions by pod and verdict"]
drops = expr["Kernel drops of IMDS traffic by reason"]
def tx(node, ns, pod, verdict, v):
    return {"labels": '{node="%s",namespace="%s",pod="%s",verdict="%s"}' % (node, ns, pod, verdict), "value": v}
alb = ("node-a", "kube-system", "aws-load-balancer-controller-1")
tests = [
    # 9m: node-a 3 a minute; web-1 appeared at 5m at 3; node-d's growing one appeared at 8m
    # and counts 2; node-d's old failure (9) is not in the panel.
    {"expr": failing, "eval_time": "9m", "exp_samples": [
        tx(*alb, "HOP_LIMIT_EXCEEDED", 15), tx("node-b", "default", "web-1", "TOKEN_REQUIRED", 3),
        tx("node-d", "default", "growing", "REFUSED", 2)]},
    # 16m: web-1's is older than the window; node-d's new one (14m) counts 2.
    {"expr": failing, "eval_time": "16m", "exp_samples": [
        tx(*alb, "HOP_LIMIT_EXCEEDED", 15), tx("node-d", "default", "new", "FORBIDDEN", 2),
        tx("node-d", "default", "growing", "REFUSED", 5)]},
    {"expr": drops, "eval_time": "9m", "exp_samples": [
        {"labels": '{node="node-a",reason="IP_INHDR"}', "value": 15}]},
]
# The second group's nodes, whose history in Prometheus is shorter than the window: at 6m
# node-e's failures (3m, Prometheus first scraped it at 2m) and node-f's (2m, Prometheus
# started at 0 beside an hour-old imdstrace) are in the panel; at 7m node-f's are older
# than the panel's 5 minutes.
new_tests = [
    {"expr": failing, "eval_time": "6m", "exp_samples": [
        tx("node-e", "kube-system", "aws-load-balancer-controller-2", "HOP_LIMIT_EXCEEDED", 3),
        tx("node-f", "default", "first", "FORBIDDEN", 2)]},
    {"expr": failing, "eval_time": "7m", "exp_samples": [
        tx("node-e", "kube-system", "aws-load-balancer-controller-2", "HOP_LIMIT_EXCEEDED", 3)]},
]
yaml.safe_dump({"rule_files": [], "evaluation_interval": "1m",
                "tests": [{"interval": "1m", "input_series": series, "promql_expr_test": tests},
                          {"interval": "1m", "input_series": new_nodes, "promql_expr_test": new_tests}]},
               open(sys.argv[3], "w"))
PY
then
    if promtool test rules "$tmp/dashboard_test.yaml" >"$tmp/dash.txt" 2>&1; then
        ok "the dashboard's failing-pod and drop panels on the rules test's series (promtool)"
    else
        bad "the dashboard's failing-pod and drop panels on the rules test's series"; cat "$tmp/dash.txt"
    fi
else
    bad "a promtool test from deploy/grafana-dashboard.json's panels"
fi
echo "$passed passed, $failed failed"
[[ $failed -eq 0 ]]
