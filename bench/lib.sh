# Shared helpers for the benchmark scripts (bash).  Benchmarks print figures; they never
# pass or fail on a figure.  Every topology is a testbed (scripts/testbed.sh: imdst-*
# network namespaces and a cgroup, removed on exit); nothing is attached to, configured in
# or sent from the root network namespace.  Only processes started here are stopped, by pid.
set -euo pipefail

REPO=${REPO:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
BUILD=${BUILD:-$REPO/build}
IMDSTRACE=${IMDSTRACE:-$BUILD/imdstrace}
IMDS_EMULATOR=${IMDS_EMULATOR:-$BUILD/tests/testbed/imds-emulator}
IMDS_LOAD=${IMDS_LOAD:-$BUILD/tests/testbed/imds-load}
TESTBED="$REPO/scripts/testbed.sh"
export TESTBED_QUIET=1

BENCH_PIDS=()
BENCH_PREFIXES=()
BENCH_WORK=$(mktemp -d /tmp/imdst-bench.XXXXXX)

bench_cleanup() {
    local pid p
    for pid in "${BENCH_PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${BENCH_PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    for p in "${BENCH_PREFIXES[@]}"; do "$TESTBED" down --prefix "$p" >/dev/null 2>&1 || true; done
    rm -rf "$BENCH_WORK"
}
trap bench_cleanup EXIT
trap 'exit 130' INT TERM

note() { printf 'bench: %s\n' "$*" >&2; }

# bench_testbed_up HOP_LIMIT [args...]: a fresh testbed; sources its env (PREFIX, NODE_NETNS_PATH, ...).
bench_testbed_up() {
    local hop=$1; shift
    local p="imdst-b$$$(printf '%04x' $((RANDOM)))"
    BENCH_PREFIXES+=("$p")
    "$TESTBED" up --prefix "$p" --hop-limit "$hop" --emulator "${EMULATOR_BIN:-$IMDS_EMULATOR}" "$@" \
        >"$BENCH_WORK/testbed-$p.log" 2>&1 || { cat "$BENCH_WORK/testbed-$p.log" >&2; exit 1; }
    # shellcheck disable=SC1090
    . "/run/imdstrace-testbed/$p/env"
}

bench_testbed_down() {
    "$TESTBED" down --prefix "$PREFIX" >/dev/null 2>&1 || true
}

# bench_tracer_start BINARY OUT args...: a tracer in the node namespace; waits until attached.
bench_tracer_start() {
    local bin=$1 out=$2; shift 2
    rm -f "$BENCH_WORK/ready"
    nsenter --net="$NODE_NETNS_PATH" "$bin" "$@" --ready-file "$BENCH_WORK/ready" >"$out" 2>"$out.err" &
    TRACER_PID=$!
    BENCH_PIDS+=("$TRACER_PID")
    for _ in $(seq 150); do
        [[ -f "$BENCH_WORK/ready" ]] && return 0
        kill -0 "$TRACER_PID" 2>/dev/null || break
        sleep 0.1
    done
    cat "$out.err" >&2
    echo "bench: tracer did not attach" >&2
    exit 1
}

bench_tracer_stop() {
    kill -INT "$TRACER_PID" 2>/dev/null || true
    wait "$TRACER_PID" 2>/dev/null || true
}

# The id of the BPF program named NAME that process PID holds.
prog_id_of() {  # prog_id_of PID NAME
    local id
    for id in $(grep -h '^prog_id:' /proc/"$1"/fdinfo/* 2>/dev/null | awk '{print $2}' | sort -un); do
        if bpftool prog show id "$id" -j 2>/dev/null | jq -e --arg n "$2" '.name == $n' >/dev/null; then
            echo "$id"
            return 0
        fi
    done
    return 1
}

# run_time_ns and run_cnt of a program (kernel.bpf_stats must be on: bench_stats_on).
prog_stats() {  # prog_stats ID -> "RUN_TIME_NS RUN_CNT"
    bpftool prog show id "$1" -j | jq -r '"\(.run_time_ns // 0) \(.run_cnt // 0)"'
}

# Run-time statistics on, for as long as this script runs: a BPF_ENABLE_STATS fd held by a
# helper process (released when it exits; the sysctl is left alone).
bench_stats_on() {
    python3 - <<'PY' &
import ctypes, os, signal, sys
nr = {"x86_64": 321, "aarch64": 280}[os.uname().machine]
libc = ctypes.CDLL(None, use_errno=True)
attr = (ctypes.c_uint32 * 32)()   # attr.enable_stats.type = BPF_STATS_RUN_TIME (0)
fd = libc.syscall(nr, 32, ctypes.byref(attr), ctypes.sizeof(attr))  # BPF_ENABLE_STATS
if fd < 0:
    sys.exit("bench: BPF_ENABLE_STATS failed: " + os.strerror(ctypes.get_errno()))
signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
signal.pause()
PY
    BENCH_PIDS+=("$!")
    sleep 0.3
}

median() { sort -n | awk '{a[NR]=$1} END {if (NR == 0) print "nan"; else if (NR % 2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }
