#!/usr/bin/env python3
"""Run deploy/daemonset.yaml's container from an image root filesystem the way the kubelet
(containerd + runc) would, with what the manifest itself says:

  - hostNetwork: the node's network namespace (--netns, a testbed node);
  - new mount, PID and cgroup namespaces (the container's cgroup: --cgroup-dir);
  - the image's root filesystem read-only (readOnlyRootFilesystem), its own /proc, a read-only
    /sys of the node's network namespace, a minimal /dev;
  - every volumeMount at its mountPath, bound from its hostPath (mapped with --host
    HOSTPATH=DIR to where this test keeps that part of the "host"), read-only where the
    manifest says readOnly;
  - uid 0 with exactly the capabilities the securityContext adds (drop: [ALL]): every other
    one leaves the bounding set (capsh --drop), no inheritable or ambient ones, and
    no_new_privs for allowPrivilegeEscalation: false;
  - the image's ENTRYPOINT with the container's args (--set-arg/--add-arg apply a test's
    patch, like a kustomize patch), env from the manifest (fieldRef spec.nodeName: --node-name).

  kubelet_run.py --manifest deploy/daemonset.yaml --rootfs DIR --netns /run/netns/X \\
      --cgroup-dir DIR --host /sys/fs/cgroup=DIR ... [--node-name N] [--set-arg=--pods=k8s-node]
      [--add-arg=--cgroup=/host/...] [--entrypoint /usr/local/bin/imdstrace] [--print]

seccompProfile RuntimeDefault is not applied (no runtime here to supply the profile)."""
import argparse
import os
import shlex
import subprocess
import sys

import yaml


def die(msg):
    print(f"kubelet_run: {msg}", file=sys.stderr)
    sys.exit(2)


def container_spec(manifest):
    with open(manifest) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    ds = [d for d in docs if d.get("kind") == "DaemonSet"]
    if len(ds) != 1:
        die(f"{manifest}: expected one DaemonSet, found {len(ds)}")
    pod = ds[0]["spec"]["template"]["spec"]
    if len(pod.get("containers", [])) != 1:
        die("expected one container")
    return pod, pod["containers"][0]


def all_capabilities():
    last = int(open("/proc/sys/kernel/cap_last_cap").read())
    out = subprocess.run(["capsh", f"--decode={(1 << (last + 1)) - 1:#x}"], capture_output=True, text=True,
                         check=True).stdout.strip()
    return out.split("=", 1)[1].split(",")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--manifest", required=True)
    ap.add_argument("--rootfs", required=True)
    ap.add_argument("--netns", required=True)
    ap.add_argument("--cgroup-dir", required=True, help="the container's cgroup (its cgroup namespace root)")
    ap.add_argument("--host", action="append", default=[], help="HOSTPATH=DIR")
    ap.add_argument("--node-name", default="")
    ap.add_argument("--set-arg", action="append", default=[], help="--flag=value: replace that flag's value")
    ap.add_argument("--add-arg", action="append", default=[], help="--flag=value or a word: append")
    ap.add_argument("--entrypoint", default="/usr/local/bin/imdstrace", help="the image's ENTRYPOINT")
    ap.add_argument("--without-cap", action="append", default=[],
                    help="leave out one of the manifest's capabilities (to measure which are needed)")
    ap.add_argument("--print", action="store_true", help="print the plan and the command, run nothing")
    a = ap.parse_args()

    pod, c = container_spec(a.manifest)
    if not pod.get("hostNetwork"):
        die("the manifest does not ask for hostNetwork; this runner only joins a node's network namespace")
    host_map = dict(h.split("=", 1) for h in a.host)
    volumes = {v["name"]: v for v in pod.get("volumes", [])}

    # Capabilities: uid 0, drop ALL, add the listed ones.
    sc = c.get("securityContext", {})
    if sc.get("privileged"):
        die("privileged containers are not run here")
    if sc.get("runAsUser", 0) != 0:
        die("only runAsUser 0 is supported")
    caps = sc.get("capabilities", {})
    if caps.get("drop") != ["ALL"]:
        die("expected capabilities.drop: [ALL]")
    keep = {"cap_" + x.lower().removeprefix("cap_") for x in caps.get("add", [])}
    keep -= {"cap_" + x.lower().removeprefix("cap_") for x in a.without_cap}
    known = all_capabilities()
    unknown = keep - set(known)
    if unknown:
        die(f"this kernel does not know {sorted(unknown)}")
    drop = [x for x in known if x not in keep]

    # Args: the manifest's, with the test's patch.
    args = [str(x) for x in c.get("command", []) + c.get("args", [])]
    for s in a.set_arg:
        flag, value = s.split("=", 1)
        if flag not in args:
            die(f"--set-arg {flag}: the manifest does not pass {flag}")
        args[args.index(flag) + 1] = value
    for s in a.add_arg:
        args += s.split("=", 1) if s.startswith("--") and "=" in s else [s]

    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root"}
    for e in c.get("env", []):
        if "value" in e:
            env[e["name"]] = str(e["value"])
        elif e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "spec.nodeName":
            env[e["name"]] = a.node_name
        else:
            die(f"env {e['name']}: only values and fieldRef spec.nodeName are supported")

    root = a.rootfs
    sh = ["set -e", f"R={shlex.quote(root)}", 'mount --bind "$R" "$R"',
          'mount -t proc -o nosuid,nodev,noexec proc "$R/proc"',
          'mount -t sysfs -o ro,nosuid,nodev,noexec sysfs "$R/sys"',
          'mount -t tmpfs -o nosuid,mode=755,size=64k tmpfs "$R/dev"',
          'for d in null zero full random urandom; do touch "$R/dev/$d"; mount --bind "/dev/$d" "$R/dev/$d"; done']
    plan = []
    mounts = sorted(c.get("volumeMounts", []), key=lambda m: m["mountPath"].count("/"))
    for m in mounts:
        v = volumes.get(m["name"]) or die(f"volumeMount {m['name']}: no such volume")
        hp = v.get("hostPath", {}).get("path") or die(f"volume {m['name']}: only hostPath volumes are supported")
        src = host_map.get(hp) or die(f"hostPath {hp}: say where it is with --host {hp}=DIR")
        if v["hostPath"].get("type") == "DirectoryOrCreate":
            os.makedirs(src, exist_ok=True)
        ro = bool(m.get("readOnly"))
        plan.append(f"{m['mountPath']} <- {hp} ({src}){' ro' if ro else ' rw'}")
        target = '"$R"' + shlex.quote(m["mountPath"])
        sh.append(f"mkdir -p {target} 2>/dev/null || test -d {target}")
        sh.append(f"mount --bind {'-o ro ' if ro else ''}{shlex.quote(src)} {target}")
    if sc.get("readOnlyRootFilesystem"):
        sh.append('mount -o remount,bind,ro "$R"')
    capsh = ["capsh", f"--chroot={root}", "--drop=" + ",".join(drop), "--inh=", "--noamb"]
    if sc.get("allowPrivilegeEscalation") is False:
        capsh.append("--no-new-privs")
    capsh += [f"--shell={a.entrypoint}", "--"] + args
    sh.append("cd /")
    sh.append("exec env -i " + " ".join(shlex.quote(f"{k}={v}") for k, v in env.items()) + " " +
              " ".join(shlex.quote(x) for x in capsh))
    script = "\n".join(sh)
    if a.print:
        print("capabilities:", " ".join(sorted(keep)))
        print("mounts:\n  " + "\n  ".join(plan))
        print("args:", " ".join(args))
        print(script)
        return 0
    # The container's cgroup, then its namespaces; mkdir the mount points in the rootfs
    # before it turns read-only.
    os.makedirs(a.cgroup_dir, exist_ok=True)
    with open(os.path.join(a.cgroup_dir, "cgroup.procs"), "w") as f:
        f.write(str(os.getpid()))
    for m in mounts:
        os.makedirs(root + m["mountPath"], exist_ok=True)
    cmd = ["nsenter", f"--net={a.netns}", "unshare", "--mount", "--propagation", "private", "--pid", "--cgroup",
           "--fork", "--kill-child=TERM", "--", "sh", "-c", script]
    os.execvp(cmd[0], cmd)


if __name__ == "__main__":
    sys.exit(main())
