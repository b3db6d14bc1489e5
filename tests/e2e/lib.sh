# Shared helpers for imdstrace's end-to-end tests (bash).
#
# Each test builds its own testbed (network namespaces + cgroups with a
# unique imdst-* prefix), runs the real tracer in the node namespace against
# real traffic from pods and host processes, and removes everything on exit,
# also on failure.  Nothing touches the root network namespace.
set -euo pipefail

: "${IMDSTRACE:?path to the imdstrace binary}"
: "${IMDS_EMULATOR:?path to imds-emulator}"
: "${IMDS_CLIENT:?path to imds-client}"
REPO=${REPO:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
TESTBED="$REPO/scripts/testbed.sh"
export TESTBED_QUIET=1

PREFIX="imdst-e$$$(printf '%04x' $((RANDOM)))"
PREFIX=${PREFIX//[^a-z0-9-]/}
WORK=$(mktemp -d "/tmp/${PREFIX}.XXXXXX")
TRACER_PID=""
EXTRA_PIDS=()      # other processes a test started (second tracers, agents), killed on exit
EXTRA_PREFIXES=()  # other testbeds a test brought up, taken down on exit
EXTRA_NETNS=()     # network namespaces a test created by hand, deleted on exit
FAILURES=0
CHECKS=0

cleanup() {
    local rc=$?
    local pid
    for pid in "$TRACER_PID" "${EXTRA_PIDS[@]}"; do
        if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then
            kill -TERM "$pid" 2>/dev/null || true
            wait "$pid" 2>/dev/null || true
        fi
    done
    if [[ $rc -ne 0 || $FAILURES -ne 0 ]] && [[ -d "$WORK" ]]; then
        cp "/run/imdstrace-testbed/$PREFIX/emulator.log" "$WORK/" 2>/dev/null || true
        local keep="${E2E_ARTIFACTS:-/tmp/imdstrace-e2e-failures}/$(basename "$0" .sh)-${SCENARIO:-}-$PREFIX"
        mkdir -p "$keep" && cp -r "$WORK"/. "$keep"/ && echo "e2e: artifacts of the failed run kept in $keep" >&2
    fi
    "$TESTBED" down --prefix "$PREFIX" >/dev/null 2>&1 || true
    local p
    for p in "${EXTRA_PREFIXES[@]}"; do "$TESTBED" down --prefix "$p" >/dev/null 2>&1 || true; done
    for p in "${EXTRA_NETNS[@]}"; do ip netns delete "$p" 2>/dev/null || true; done
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { printf 'e2e: %s\n' "$*" >&2; }

require_root() {
    if [[ $(id -u) -ne 0 ]]; then
        echo "e2e: these tests need root (network namespaces, BPF); run them as root" >&2
        exit 1
    fi
}

testbed_up() {  # testbed_up HOP_LIMIT [extra testbed args...]
    local hop=$1; shift
    "$TESTBED" up --prefix "$PREFIX" --hop-limit "$hop" --emulator "$IMDS_EMULATOR" "$@" >"$WORK/testbed.log" 2>&1 ||
        { cat "$WORK/testbed.log" >&2; fail "testbed up failed"; exit 1; }
    # shellcheck disable=SC1090
    . "/run/imdstrace-testbed/$PREFIX/env"
    DS_CGROUP_DIR="$DS_ROOT/sys/fs/cgroup$CGROUP_REL"
}

# A second testbed (same addresses, other namespaces: another node on the same machine).
second_testbed_up() {  # second_testbed_up PREFIX2 HOP_LIMIT [extra testbed args...]
    local p=$1 hop=$2; shift 2
    EXTRA_PREFIXES+=("$p")
    "$TESTBED" up --prefix "$p" --hop-limit "$hop" --emulator "$IMDS_EMULATOR" "$@" >"$WORK/testbed-$p.log" 2>&1 ||
        { cat "$WORK/testbed-$p.log" >&2; fail "testbed $p up failed"; exit 1; }
}

# A variable of another testbed's env file.
testbed_var() {  # testbed_var PREFIX NAME
    # shellcheck disable=SC1090
    (. "/run/imdstrace-testbed/$1/env" && eval "printf '%s' \"\${$2}\"")
}

# Start the tracer in the node namespace; returns once its probes are attached.
tracer_start() {  # tracer_start OUTFILE imdstrace-args...
    local out=$1; shift
    rm -f "$WORK/ready"
    nsenter --net="$NODE_NETNS_PATH" "$IMDSTRACE" "$@" --ready-file "$WORK/ready" >"$out" 2>"$out.err" &
    TRACER_PID=$!
    for _ in $(seq 100); do
        if [[ -f "$WORK/ready" ]]; then
            record_programs "$TRACER_PID"
            return 0
        fi
        kill -0 "$TRACER_PID" 2>/dev/null || break
        sleep 0.1
    done
    cat "$out.err" >&2
    fail "tracer did not attach"
    exit 1
}

tracer_wait() {  # sets TRACER_RC
    TRACER_RC=0
    wait "$TRACER_PID" || TRACER_RC=$?
    TRACER_PID=""
}

pod_client() {  # pod_client I [imds-client args...]
    local pod=$1; shift
    "$TESTBED" exec --prefix "$PREFIX" --pod "$pod" -- "$IMDS_CLIENT" "$@" >>"$WORK/clients.log" 2>&1 || true
}

host_client() {
    "$TESTBED" exec --prefix "$PREFIX" --host -- "$IMDS_CLIENT" "$@" >>"$WORK/clients.log" 2>&1 || true
}

in_node() { nsenter --net="$NODE_NETNS_PATH" "$@"; }

# The DaemonSet's own setup (deploy/daemonset.yaml): hostNetwork (the node's network
# namespace), hostPID false (a pid namespace of its own, with its own /proc), a cgroup of its
# own in the traced tree and a cgroup namespace rooted there (containerd's default on cgroup
# v2: the container's cgroup is its namespace root), and a mount namespace whose /host holds only what the DaemonSet mounts there, read-only: the host's
# /proc, /sys/fs/cgroup, /var/log/pods and /var/log/containers (hostPath DirectoryOrCreate: an
# empty directory where the node has none).  DS_ROOT is that /host (pass it as --host-root).
# DS_LOGS=0 leaves both log directories empty (names can only come from the API).
DS_ROOT="$WORK/host"
DS_CGROUP_DIR=""  # the testbed's cgroup as the DaemonSet sees it (after testbed_up)
mkdir -p "$DS_ROOT/proc" "$DS_ROOT/sys/fs/cgroup" "$DS_ROOT/var/log/pods" "$DS_ROOT/var/log/containers"
in_daemonset() (  # a subshell: only it moves into the DaemonSet's cgroup
    local logs=${HOST_ROOT:-}
    [[ "${DS_LOGS:-1}" == 1 ]] || logs=""
    mkdir -p "$CGROUP_DIR/daemonset"
    echo "$BASHPID" >"$CGROUP_DIR/daemonset/cgroup.procs"
    # shellcheck disable=SC2016
    nsenter --net="$NODE_NETNS_PATH" unshare --mount --propagation private --pid --cgroup --fork --kill-child=TERM -- \
        bash -c 'set -e
            h=$1 cg=$2 logs=$3; shift 3
            mount --bind -o ro /proc "$h/proc"        # the host pid namespace'"'"'s procfs, before ours hides it
            mount --bind -o ro "$cg" "$h/sys/fs/cgroup"
            for d in var/log/pods var/log/containers; do
                if [[ -n "$logs" && -d "$logs/$d" ]]; then mount --bind -o ro "$logs/$d" "$h/$d"; fi
            done
            mount -t proc proc /proc
            exec "$@"' daemonset "$DS_ROOT" "$CGROUP_ROOT" "$logs" "$@"
)

# The imdstrace process below PID (a launcher such as in_daemonset's nsenter/unshare).
imdstrace_below() {  # imdstrace_below PID
    local pid=$1 child
    for _ in $(seq 20); do
        [[ "$(readlink "/proc/$pid/exe" 2>/dev/null)" == "$(readlink -f "$IMDSTRACE")" ]] && { echo "$pid"; return 0; }
        child=$(cat /proc/"$pid"/task/*/children 2>/dev/null | awk '{print $1; exit}') || true
        [[ -n "$child" ]] || return 1
        pid=$child
    done
    return 1
}

# tracer_start run as the DaemonSet runs it; --host-root and the traced cgroup are the
# DaemonSet's /host view (DS_ROOT, DS_CGROUP_DIR).
tracer_start_daemonset() {  # tracer_start_daemonset OUTFILE imdstrace-args...
    local out=$1; shift
    rm -f "$WORK/ready"
    in_daemonset "$IMDSTRACE" "$@" --ready-file "$WORK/ready" >"$out" 2>"$out.err" &
    TRACER_PID=$!
    local real=""
    for _ in $(seq 100); do
        [[ -n "$real" ]] || real=$(imdstrace_below "$TRACER_PID" || true)
        if [[ -f "$WORK/ready" && -n "$real" ]]; then
            EXTRA_PIDS+=("$real")
            record_programs "$real"
            return 0
        fi
        kill -0 "$TRACER_PID" 2>/dev/null || break
        sleep 0.1
    done
    cat "$out.err" >&2
    fail "tracer did not attach"
    exit 1
}

pass() { CHECKS=$((CHECKS + 1)); printf '  ok    %s\n' "$*"; }
fail() { CHECKS=$((CHECKS + 1)); FAILURES=$((FAILURES + 1)); printf '  FAIL  %s\n' "$*"; }

# expect_eq DESCRIPTION ACTUAL EXPECTED
expect_eq() {
    if [[ "$2" == "$3" ]]; then pass "$1 ($2)"; else fail "$1: got '$2', expected '$3'"; fi
}

# expect_same DESCRIPTION ACTUAL EXPECTED: like expect_eq, quiet on success
expect_same() {
    if [[ "$2" == "$3" ]]; then pass "$1"; else fail "$1: differs"; diff <(echo "$2") <(echo "$3") | head -40; fi
}

# expect_jq DESCRIPTION FILE JQ-FILTER (must print true)
expect_jq() {
    local got
    got=$(jq -r "$3" "$2" 2>&1 || true)
    if [[ "$got" == "true" ]]; then pass "$1"; else fail "$1: jq '$3' gave '$got'"; fi
}

# expect_each DESCRIPTION JSONL-FILE SELECT CONDITION: at least one
# transaction line matches SELECT, and every such line satisfies CONDITION.
expect_each() {
    local got
    got=$(jq -s -r "[.[] | select(.schema == \"imdstrace.transaction/v1\") | select($3)] | length > 0 and all(.[]; $4)" "$2" 2>&1 || true)
    if [[ "$got" == "true" ]]; then pass "$1"; else fail "$1: lines matching '$3' fail '$4' ($got)"; fi
}

expect_grep() {  # expect_grep DESCRIPTION FILE PATTERN
    if grep -qE -- "$3" "$2"; then pass "$1"; else fail "$1: /$3/ not in $2"; fi
}

expect_no_grep() {
    if grep -qE -- "$3" "$2"; then fail "$1: /$3/ found in $2"; else pass "$1"; fi
}

# The BPF programs a running tracer holds (prog_id in the fdinfo of its program
# and link fds): what expect_clean then checks is gone, so tests that run at the
# same time (ctest -j) never see each other's programs.
TRACER_PROGS=""
record_programs() {  # record_programs PID
    # A short run (--duration 1) can be over before its fds are read (a slow machine, a qemu
    # TCG guest), or be closing them on its way out while it still exists: its programs go
    # with it, and expect_clean checks that no imdstrace program at all is left.  Only a
    # tracer that stays alive without a program is a failure.
    for _ in $(seq 20); do
        TRACER_PROGS=$(grep -h '^prog_id:' /proc/"$1"/fdinfo/* 2>/dev/null | awk '{print $2}' | sort -un | tr '\n' ' ' || true)
        [[ -n "$TRACER_PROGS" ]] && return 0
        kill -0 "$1" 2>/dev/null || return 0
        sleep 0.1
    done
    fail "cannot read the tracer's BPF program ids from /proc/$1/fdinfo (it runs, and holds no program)"
}

# programs_left IDS...: those of the program ids still loaded, waiting up to 3 s for the kernel
# to free them (a program is freed after an RCU grace period once its last link and fd are gone,
# so right after the tracer exits it may still be listed)
programs_left() {
    local left="" id
    for _ in $(seq 30); do
        left=""
        for id in "$@"; do bpftool prog show id "$id" >/dev/null 2>&1 && left="$left $id"; done
        [[ -z "$left" ]] && break
        sleep 0.1
    done
    echo "$left"
}

# No imdstrace program may remain loaded, and nothing may remain attached to
# the uplink or the cgroup.  Program release is asynchronous: poll briefly.
# With the tracer's own program ids recorded, exactly those must be gone;
# otherwise (a tracer started by hand) no imdstrace program may be loaded at all.
expect_clean() {
    local what=$1 left=""
    if [[ -n "$TRACER_PROGS" ]]; then
        # shellcheck disable=SC2086
        left=$(programs_left $TRACER_PROGS)
    else
        for _ in $(seq 30); do
            left=$(bpftool prog show 2>/dev/null | grep -E "name (uplink_ingress|uplink_egress|socket_egress|socket_ingress|observe_drop|observe_icmp_send)" || true)
            [[ -z "$left" ]] && break
            sleep 0.1
        done
    fi
    if [[ -z "$left" ]]; then
        pass "$what: no imdstrace BPF program left loaded${TRACER_PROGS:+ (its programs $TRACER_PROGS)}"
    else
        fail "$what: programs left: $left"
    fi
    local filters
    filters=$(in_node tc filter show dev "$NODE_IFACE" ingress 2>/dev/null; in_node tc filter show dev "$NODE_IFACE" egress 2>/dev/null)
    expect_eq "$what: no tc filter on $NODE_IFACE" "${filters:-none}" "none"
    local qdisc
    qdisc=$(in_node tc qdisc show dev "$NODE_IFACE" | grep -c clsact || true)
    expect_eq "$what: no clsact qdisc left on $NODE_IFACE" "$qdisc" "0"
    local cg
    cg=$(bpftool cgroup show "$CGROUP_DIR" 2>/dev/null | grep -cE "socket_(egress|ingress)" || true)
    expect_eq "$what: no cgroup attachment on $CGROUP_DIR" "$cg" "0"
}

finish() {
    echo "e2e $(basename "$0"): $((CHECKS - FAILURES)) passed, $FAILURES failed"
    [[ $FAILURES -eq 0 ]]
}
