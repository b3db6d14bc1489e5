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
echo "$passed passed, $failed failed"
[[ $failed -eq 0 ]]
