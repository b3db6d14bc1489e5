#!/usr/bin/env bash
# The deployment files carry what running imdstrace across a fleet needs
# (deploy/README.md says why each piece is there).  No cluster runs here, so this
# reads them: YAML that parses, the DaemonSet's network/capabilities/mounts/args,
# RBAC limited to reading pods, a ServiceMonitor that reaches the metrics port,
# and a multi-stage Dockerfile that builds the imdstrace target.
#
#   tests/deploy/test_manifests.sh [IMDSTRACE_BINARY]
#
# With a binary, every option the DaemonSet passes is also checked against
# `imdstrace watch --help`.  Needs python3 with PyYAML (Debian: python3-yaml,
# installed by scripts/setup.sh).  Prints one line per check, then "N passed, M failed".
set -uo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
binary=${1:-}

python=""
for candidate in /usr/bin/python3 python3; do
  if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c 'import yaml' 2>/dev/null; then
    python=$candidate
    break
  fi
done
if [ -z "$python" ]; then
  echo "FAIL  python3 with PyYAML available (apt-get install python3-yaml, or scripts/setup.sh)"
  echo "0 passed, 1 failed"
  exit 1
fi

exec "$python" - "$repo" "$binary" <<'PYTHON'
import os
import re
import subprocess
import sys

import yaml

repo, binary = sys.argv[1], sys.argv[2]
deploy = os.path.join(repo, "deploy")
passed = failed = 0


def check(name, ok, detail=""):
    global passed, failed
    if ok:
        passed += 1
        print(f"ok    {name}")
    else:
        failed += 1
        print(f"FAIL  {name}" + (f": {detail}" if detail else ""))
    return ok


def load(name):
    path = os.path.join(deploy, name)
    try:
        with open(path) as f:
            docs = [d for d in yaml.safe_load_all(f) if d is not None]
        check(f"{name} parses as YAML ({len(docs)} documents)", len(docs) > 0)
        return docs
    except (OSError, yaml.YAMLError) as e:
        check(f"{name} parses as YAML", False, str(e).splitlines()[0])
        return []


def one(docs, kind, name=None):
    found = [d for d in docs if d.get("kind") == kind and (name is None or d["metadata"].get("name") == name)]
    check(f"exactly one {kind}", len(found) == 1, f"found {len(found)}")
    return found[0] if found else {}


def dig(obj, *keys, default=None):
    for k in keys:
        if isinstance(obj, dict):
            obj = obj.get(k)
        elif isinstance(obj, list) and isinstance(k, int) and k < len(obj):
            obj = obj[k]
        else:
            return default
        if obj is None:
            return default
    return obj


def matches(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


# ---- daemonset.yaml -----------------------------------------------------------------
docs = load("daemonset.yaml")
ns = one(docs, "Namespace")
namespace = dig(ns, "metadata", "name", default="")
check("namespace is imdstrace", namespace == "imdstrace", namespace)
namespaced = [d for d in docs if d.get("kind") not in ("Namespace", "ClusterRole", "ClusterRoleBinding")]
check("every namespaced object is in the imdstrace namespace",
      all(dig(d, "metadata", "namespace") == namespace for d in namespaced))

sa = one(docs, "ServiceAccount")
role = one(docs, "ClusterRole")
rules = role.get("rules", [])
check("ClusterRole has exactly two rules (read pods, create events)", len(rules) == 2, f"{len(rules)} rules")
rule = rules[0] if rules else {}
event_rule = rules[1] if len(rules) > 1 else {}
check("ClusterRole rule 2: core API group, events, create only (Events on failing pods)",
      event_rule.get("apiGroups") == [""] and event_rule.get("resources") == ["events"]
      and event_rule.get("verbs") == ["create"] and "resourceNames" not in event_rule, str(event_rule))
check("ClusterRole rule: core API group only", rule.get("apiGroups") == [""], str(rule.get("apiGroups")))
check("ClusterRole rule: pods only", rule.get("resources") == ["pods"], str(rule.get("resources")))
check("ClusterRole rule: verbs exactly get, list, watch", sorted(rule.get("verbs", [])) == ["get", "list", "watch"],
      str(rule.get("verbs")))
check("ClusterRole rules: no resourceNames/nonResourceURLs/wildcard widening",
      all("nonResourceURLs" not in r and "*" not in str(r) for r in rules))

binding = one(docs, "ClusterRoleBinding")
check("ClusterRoleBinding refers to the ClusterRole",
      dig(binding, "roleRef", "kind") == "ClusterRole"
      and dig(binding, "roleRef", "name") == dig(role, "metadata", "name"))
check("ClusterRoleBinding binds the ServiceAccount",
      any(s.get("kind") == "ServiceAccount" and s.get("name") == dig(sa, "metadata", "name")
          and s.get("namespace") == namespace for s in binding.get("subjects", [])))

ds = one(docs, "DaemonSet")
tmpl = dig(ds, "spec", "template", default={})
pod = tmpl.get("spec", {})
pod_labels = dig(tmpl, "metadata", "labels", default={})
check("DaemonSet selector matches its pod labels", matches(dig(ds, "spec", "selector", "matchLabels"), pod_labels))
check("pod runs as the ServiceAccount", pod.get("serviceAccountName") == dig(sa, "metadata", "name"))
check("hostNetwork: true", pod.get("hostNetwork") is True)
check("hostPID not set (host /proc is mounted instead)", pod.get("hostPID") in (None, False), str(pod.get("hostPID")))
check("tolerates every taint (operator: Exists, no key)",
      any(t.get("operator") == "Exists" and "key" not in t for t in pod.get("tolerations", [])))
check("priorityClassName system-node-critical", pod.get("priorityClassName") == "system-node-critical")

annotations = dig(tmpl, "metadata", "annotations", default={})
check('annotation prometheus.io/scrape: "true" (a string)', annotations.get("prometheus.io/scrape") == "true")
check('annotation prometheus.io/port: "9655"', annotations.get("prometheus.io/port") == "9655")

containers = pod.get("containers", [])
check("one container", len(containers) == 1, f"{len(containers)}")
c = containers[0] if containers else {}
args = [str(a) for a in (c.get("command", []) + c.get("args", []))]


def arg_value(flag):
    for i, a in enumerate(args):
        if a == flag and i + 1 < len(args):
            return args[i + 1]
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
    return None


check("args start with the watch command", args[:1] == ["watch"], " ".join(args))
check("args: --pods k8s-api", arg_value("--pods") == "k8s-api", str(arg_value("--pods")))
check("args: --host-root /host", arg_value("--host-root") == "/host", str(arg_value("--host-root")))
metrics = arg_value("--metrics") or ""
check("args: --metrics 0.0.0.0:9655", metrics == "0.0.0.0:9655", metrics)
events = arg_value("--events") or ""
check("args: --events FILE", events.endswith(".jsonl"), events)
check("args: --events-max-bytes and --events-max-files bound the evidence",
      (arg_value("--events-max-bytes") or "").rstrip("KMG").isdigit() and (arg_value("--events-max-files") or "").isdigit(),
      f"{arg_value('--events-max-bytes')} {arg_value('--events-max-files')}")
check("args: -o json", arg_value("-o") == "json" or arg_value("--output") == "json")

ports = {p.get("name"): p for p in c.get("ports", [])}
metrics_port = int(metrics.rsplit(":", 1)[1]) if ":" in metrics else None
check("container port 'metrics' is the --metrics port",
      dig(ports, "metrics", "containerPort") == metrics_port, str(ports))
probe = c.get("readinessProbe", {})
check("readinessProbe: httpGet /metrics on the metrics port",
      dig(probe, "httpGet", "path") == "/metrics" and dig(probe, "httpGet", "port") in ("metrics", metrics_port),
      str(probe))

env = {e.get("name"): e for e in c.get("env", [])}
check("env NODE_NAME from fieldRef spec.nodeName",
      dig(env, "NODE_NAME", "valueFrom", "fieldRef", "fieldPath") == "spec.nodeName")

res = c.get("resources", {})
check("resources: requests and limits set",
      all(dig(res, k, r) for k in ("requests", "limits") for r in ("cpu", "memory")), str(res))

sc = c.get("securityContext", {})
text = yaml.safe_dump(ds)
check("no privileged: true anywhere", sc.get("privileged") is False and not re.search(r"privileged:\s*true", text),
      str(sc.get("privileged")))
caps = dig(sc, "capabilities", default={})
added = set(caps.get("add", []))
check("capabilities drop ALL", caps.get("drop") == ["ALL"], str(caps.get("drop")))
check("capabilities add BPF, PERFMON, NET_ADMIN", {"BPF", "PERFMON", "NET_ADMIN"} <= added, str(sorted(added)))
check("capabilities: nothing beyond BPF, PERFMON, NET_ADMIN, DAC_READ_SEARCH",
      added <= {"BPF", "PERFMON", "NET_ADMIN", "DAC_READ_SEARCH"}, str(sorted(added)))
check("no SYS_ADMIN", "SYS_ADMIN" not in added and "CAP_SYS_ADMIN" not in added)
check("allowPrivilegeEscalation: false", sc.get("allowPrivilegeEscalation") is False)

volumes = {v.get("name"): v for v in pod.get("volumes", [])}
mounts = c.get("volumeMounts", [])


def mount_of(host_path):
    for m in mounts:
        if dig(volumes, m.get("name"), "hostPath", "path") == host_path:
            return m
    return None


for host_path, inside in (("/sys/fs/cgroup", "/host/sys/fs/cgroup"), ("/proc", "/host/proc"),
                          ("/var/log/pods", "/host/var/log/pods"),
                          ("/var/log/containers", "/host/var/log/containers"),
                          ("/sys/kernel/btf", "/sys/kernel/btf")):
    m = mount_of(host_path) or {}
    check(f"host {host_path} mounted read-only at {inside}",
          m.get("mountPath") == inside and m.get("readOnly") is True, str(m))
writable = [m for m in mounts if dig(volumes, m.get("name"), "hostPath") and not m.get("readOnly")]
check("the only writable hostPath is /var/log/imdstrace",
      [dig(volumes, m["name"], "hostPath", "path") for m in writable] == ["/var/log/imdstrace"],
      str([dig(volumes, m["name"], "hostPath", "path") for m in writable]))
check("--events writes into the writable mount",
      any(events.startswith(m.get("mountPath", "//") + "/") for m in writable), events)
check("/sys/fs/bpf not mounted (nothing is pinned)", mount_of("/sys/fs/bpf") is None)

# ---- servicemonitor.yaml ------------------------------------------------------------
docs = load("servicemonitor.yaml")
svc = one(docs, "Service")
sm = one(docs, "ServiceMonitor")
check("ServiceMonitor is monitoring.coreos.com/v1", sm.get("apiVersion") == "monitoring.coreos.com/v1")
check("Service is headless (clusterIP: None)", dig(svc, "spec", "clusterIP") == "None")
check("Service is in the DaemonSet's namespace", dig(svc, "metadata", "namespace") == namespace)
check("Service selects the DaemonSet pods", matches(dig(svc, "spec", "selector"), pod_labels))
svc_ports = {p.get("name"): p for p in dig(svc, "spec", "ports", default=[])}
check("Service port 'metrics' is 9655 and targets the container's metrics port",
      dig(svc_ports, "metrics", "port") == metrics_port
      and dig(svc_ports, "metrics", "targetPort") in ("metrics", metrics_port), str(svc_ports))
check("ServiceMonitor selects the Service",
      matches(dig(sm, "spec", "selector", "matchLabels"), dig(svc, "metadata", "labels", default={})))
check("ServiceMonitor looks in the Service's namespace",
      namespace in dig(sm, "spec", "namespaceSelector", "matchNames", default=[]))
endpoints = dig(sm, "spec", "endpoints", default=[])
check("ServiceMonitor endpoint targets port 'metrics' path /metrics",
      any(e.get("port") == "metrics" and e.get("path", "/metrics") == "/metrics" for e in endpoints), str(endpoints))
check("ServiceMonitor keeps the exporter's namespace/pod labels (honorLabels)",
      all(e.get("honorLabels") is True for e in endpoints))

# ---- kustomization.yaml -------------------------------------------------------------
docs = load("kustomization.yaml")
kust = docs[0] if docs else {}
check("kustomization resources exist",
      all(os.path.exists(os.path.join(deploy, r)) for r in kust.get("resources", ["missing"])))
check("kustomization image name is the DaemonSet's image",
      any(c.get("image", "").split(":")[0] == i.get("name") for i in kust.get("images", [])))

# ---- Dockerfile ---------------------------------------------------------------------
try:
    dockerfile = open(os.path.join(deploy, "Dockerfile")).read()
except OSError as e:
    dockerfile = ""
    check("deploy/Dockerfile exists", False, str(e))
lines = [l.strip() for l in re.sub(r"\\\n", " ", dockerfile).splitlines() if l.strip() and not l.strip().startswith("#")]
froms = [l for l in lines if l.upper().startswith("FROM ")]
check("Dockerfile is multi-stage (two FROM lines)", len(froms) == 2, str(froms))
check("build stage FROM debian:bookworm", bool(froms) and re.match(r"FROM debian:bookworm\s+AS\s+\w+", froms[0], re.I))
check("runtime stage FROM debian:bookworm-slim", len(froms) > 1 and froms[-1].split()[1] == "debian:bookworm-slim")
check("build stage installs with scripts/setup.sh", "scripts/setup.sh" in dockerfile)
check("configures without tests", re.search(r"cmake -S \. -B \S+ .*-DIMDSTRACE_TESTS=OFF", dockerfile) is not None)
check("builds the imdstrace target", re.search(r"cmake --build \S+ --target imdstrace\b", dockerfile) is not None)
check("runtime copies the binary from the build stage", re.search(r"COPY --from=\w+ \S+ /usr/local/bin/imdstrace", dockerfile) is not None)
check('ENTRYPOINT ["/usr/local/bin/imdstrace"]', 'ENTRYPOINT ["/usr/local/bin/imdstrace"]' in lines)
helper = os.path.join(deploy, "runtime-packages.sh")
check("deploy/runtime-packages.sh is executable", os.access(helper, os.X_OK))
check("Dockerfile.dockerignore keeps local build trees out", os.path.exists(os.path.join(deploy, "Dockerfile.dockerignore"))
      and "build" in open(os.path.join(deploy, "Dockerfile.dockerignore")).read())

# ---- the binary accepts what the DaemonSet passes -----------------------------------
if binary and os.access(binary, os.X_OK):
    help_text = subprocess.run([binary, "watch", "--help"], capture_output=True, text=True).stdout
    flags = [a.split("=")[0] for a in args if a.startswith("-")]
    unknown = [f for f in flags if not re.search(r"(^|[\s,])" + re.escape(f) + r"\b", help_text)]
    check("imdstrace watch --help lists every option the DaemonSet passes", not unknown, f"unknown: {unknown}")
    if os.path.exists("/usr/bin/dpkg-query"):
        r = subprocess.run([helper, binary], capture_output=True, text=True)
        pkgs = r.stdout.split()
        check("runtime-packages.sh names the packages of the binary's libraries",
              r.returncode == 0 and "libbpf1" in pkgs, (r.stderr or " ".join(pkgs)).strip())
else:
    print("skip  option and runtime-package checks against the binary (no binary given)")

print(f"{passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
PYTHON
