#!/usr/bin/env bash
# Bad command lines and hostile files, table-driven: each row is the exit
# code imdstrace must give, a regex its stderr (or, with "out:", its
# stdout) must match, and the arguments.  None of them may crash it, hang
# it, print a secret or claim what it did not see.
#
# Commands that would trace run inside a fresh, empty network namespace
# (unshare --net): whatever slips past validation finds no uplink there and
# ends before anything is loaded; the root namespace is never touched.
set -euo pipefail

: "${IMDSTRACE:?path to the imdstrace binary}"
CASES=${CASES:-$(cd "$(dirname "$0")/../cases" && pwd)}
WORK=$(mktemp -d /tmp/imdstrace-cli.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
[[ $(id -u) -eq 0 ]] || { echo "cli: needs root (unshare --net)" >&2; exit 1; }

# Inputs made here.
python3 - "$WORK" <<'PY'
import sys, os
w = sys.argv[1]
open(f"{w}/deep-pods.json", "w").write('[{"namespace":"a","name":"b","ips":' + "[" * 200000 + "]" * 200000 + "}]")
open(f"{w}/garbage.jsonl", "wb").write(bytes(range(256)) * 64)
open(f"{w}/empty.jsonl", "w").close()
# A 20 MB unterminated string: the message about it must stay short.
with open(f"{w}/huge-string.jsonl", "w") as f:
    f.write('{"schema":"imdstrace.transaction/v1","pod":"' + "A" * (20 << 20) + "\n")
PY
mkdir "$WORK/dir"

PASSED=0 FAILED=0
# row RC PATTERN ARGS... : PATTERN is matched against stderr, or stdout when it starts with "out:".
row() {
    local want=$1 pattern=$2; shift 2
    local rc=0
    timeout 20 unshare --net "$IMDSTRACE" "$@" >"$WORK/out" 2>"$WORK/err" </dev/null || rc=$?
    local stream="$WORK/err"
    if [[ $pattern == out:* ]]; then stream="$WORK/out"; pattern=${pattern#out:}; fi
    local why=""
    [[ $rc == "$want" ]] || why="exit $rc, expected $want"
    grep -qE -- "$pattern" "$stream" || why="${why:+$why; }/$pattern/ not in $(basename "$stream")"
    # A usage error reads the same whoever found it (CLI11 or imdstrace's own checks).
    [[ $want != 2 ]] || head -1 "$WORK/err" | grep -q '^imdstrace: error: ' ||
        why="${why:+$why; }stderr does not open with 'imdstrace: error: '"
    # Messages stay short whatever the input: no dumped values.
    (( $(wc -c <"$WORK/err") < 4000 )) || why="${why:+$why; }stderr is $(wc -c <"$WORK/err") bytes"
    if [[ -z $why ]]; then
        PASSED=$((PASSED + 1)); printf '  ok    imdstrace %s\n' "$(printf '%q ' "$@" | cut -c1-100)"
    else
        FAILED=$((FAILED + 1)); printf '  FAIL  imdstrace %s: %s\n' "$(printf '%q ' "$@" | cut -c1-100)" "$why"
        head -c 600 "$WORK/err" | sed 's/^/        /'
    fi
}
# full ARGS...: stdout is /dev/full; exit 1 naming standard output and the error.
full() {
    local rc=0
    timeout 20 "$IMDSTRACE" "$@" >/dev/full 2>"$WORK/err" </dev/null || rc=$?
    if [[ $rc == 1 ]] && grep -q "standard output: write failed: No space left on device" "$WORK/err"; then
        PASSED=$((PASSED + 1)); printf '  ok    imdstrace %s >/dev/full\n' "$*"
    else
        FAILED=$((FAILED + 1)); printf '  FAIL  imdstrace %s >/dev/full: exit %s\n' "$*" "$rc"; head -c 300 "$WORK/err"
    fi
}

DUR="--duration must be a positive, finite number of seconds"
echo "== --duration"
for d in -1 0 nan NaN inf -inf 1e308 31536001 abc 1s ""; do
    row 2 "$DUR" watch --duration "$d"
    row 2 "$DUR" diagnose --duration "$d"
done
row 2 "$DUR" --duration inf

RING="expected a power of two of bytes between one page"
echo "== --ring-size"
for r in 0 1000 4095 6000 3M 2G 4294967296 99999999999999999999 -4096 abc 4X ""; do
    row 2 "--ring-size .*$RING" watch --ring-size "$r"
done
row 2 "$RING" diagnose --ring-size 12K

echo "== --metrics, --target, --pods, options"
row 2 "--metrics 127.0.0.1: expected ADDR:PORT" watch --metrics 127.0.0.1
row 2 "--metrics \[::1\]: expected ADDR:PORT" watch --metrics '[::1]'
row 2 "--metrics 127.0.0.1:99999: expected ADDR:PORT" diagnose --metrics 127.0.0.1:99999
row 2 "--metrics localhost:9655: expected ADDR:PORT" diagnose --metrics localhost:9655
row 2 "--metrics ::1:0: expected ADDR:PORT" watch --metrics ::1:0
# Port 0 is accepted (a free port, logged): past validation, the empty namespace has no uplink.
row 1 "no route to any target" watch --metrics 127.0.0.1:0
row 1 "no route to any target" watch --metrics '[::1]:0'
row 2 "--target 169.254.169.254:99999: expected ADDR" diagnose --target 169.254.169.254:99999
row 2 "--target x: expected ADDR" watch --target x
row 2 "--pods must be auto, k8s-node" diagnose --pods magic
row 2 "pod mapping /dev/zero is not a regular file" diagnose --pods static:/dev/zero
row 2 "is not a regular file" diagnose --pods "static:$WORK/dir"
row 2 "cannot read pod mapping /nonexistent" diagnose --pods static:/nonexistent
row 2 "deep-pods.json: not valid JSON \(nested deeper than" diagnose --pods "static:$WORK/deep-pods.json"
row 2 "frobnicate" diagnose --frobnicate
row 2 "output" diagnose -o yaml
row 2 "log-level" watch --log-level loud
row 2 "file is required|required" report

row 2 "--events-max-bytes 10: at least 4096 bytes" watch --events "$WORK/ev.jsonl" --events-max-bytes 10
row 2 "--events-max-bytes 1Q: expected a whole number of bytes" watch --events "$WORK/ev.jsonl" --events-max-bytes 1Q
row 2 "--events-max-bytes needs --events FILE" watch --events-max-bytes 1M
row 2 "--events-max-files needs --events-max-bytes" watch --events "$WORK/ev.jsonl" --events-max-files 3
row 2 "events-max-files" watch --events "$WORK/ev.jsonl" --events-max-bytes 1M --events-max-files 0
row 2 "k8s-events-interval" watch --k8s-events-interval -1

echo "== fleet"
row 2 "prometheus is required" fleet
row 2 "--prometheus ftp://x: expected an http:// or https:// URL" fleet --prometheus ftp://x
row 2 "window" fleet --prometheus http://127.0.0.1:9090 --window 5
row 1 "cannot reach Prometheus at http://127.0.0.1:1" fleet --prometheus http://127.0.0.1:1

echo "== report"
# A set rotated by --events-max-bytes: the base name reads FILE.1 (older) first, then FILE.
cp "$CASES/report/truncated_last.jsonl" "$WORK/rot.jsonl.1"
cp "$CASES/report/truncated_last.jsonl" "$WORK/rot.jsonl"
row 3 "out:20 transactions" report "$WORK/rot.jsonl"
row 3 "reading the rotated set, oldest first: $WORK/rot.jsonl.1, $WORK/rot.jsonl" report "$WORK/rot.jsonl"
row 3 "out:10 transactions" report "$WORK/rot.jsonl.1"
# A gap in the set (FILE.1 gone, FILE.2 there): said, not silently skipped.
cp "$CASES/report/truncated_last.jsonl" "$WORK/gap.jsonl"
cp "$CASES/report/truncated_last.jsonl" "$WORK/gap.jsonl.2"
row 3 "gap.jsonl.1 is missing: .*gap.jsonl.2 and older files are not read" report "$WORK/gap.jsonl"
# A rotated set whose oldest file continues one rotated away (its first line says so): the report
# says PARTIAL, with what the files read cover of the sessions' window.
{ head -n 10 "$CASES/report/truncated_last.jsonl"
  echo '{"schema":"imdstrace.session/v1","ts":"2026-11-30T00:00:00.000Z","window_s":600,"targets":["169.254.169.254:80"],"writer":"0123456789abcdef"}'
} >"$WORK/cut.jsonl"
{ echo '{"schema":"imdstrace.rotation/v1","writer":"0123456789abcdef","seq":2,"ts":"2026-11-30T00:09:00.000Z","continues":"cut.jsonl.2"}'
  cat "$WORK/cut.jsonl"; } >"$WORK/cut.jsonl.1"
row 3 "cut.jsonl.1 continues a file that was rotated away at 2026-11-30T00:09:00.000Z .*of the 1200 s the sessions ran" \
    report "$WORK/cut.jsonl"
row 3 "out:^PARTIAL: .*cut.jsonl.1 continues a file that was rotated away" report "$WORK/cut.jsonl"
# the same files without the rotation line: nothing says the set is not whole
cp "$WORK/cut.jsonl" "$WORK/whole.jsonl.1"; cp "$WORK/cut.jsonl" "$WORK/whole.jsonl"
row 3 "out:^HOP_LIMIT" report "$WORK/whole.jsonl"
# Files given by hand: one of a run left out between two, out of order, the same one twice.
for n in 0 1 2; do
    { echo "{\"schema\":\"imdstrace.rotation/v1\",\"writer\":\"00000000000000aa\",\"seq\":$n,\"ts\":\"2026-11-30T00:0$n:00.000Z\"}"
      head -n 3 "$CASES/report/truncated_last.jsonl"; } >"$WORK/run.$n"
done
echo '{"schema":"imdstrace.session/v1","ts":"2026-11-30T00:00:00.000Z","window_s":180,"targets":["169.254.169.254:80"],"writer":"00000000000000aa"}' >>"$WORK/run.2"
row 4 "out:^PARTIAL: .*run.2 is file 3 of its run, but the last file of that run read before it is file 1: a file between them is not read" \
    report "$WORK/run.0" "$WORK/run.2"
row 4 "out:^PARTIAL: .*run.0 is file 1 of its run, but the last file of that run read before it is file 2: given twice or out of order" \
    report "$WORK/run.1" "$WORK/run.0"
row 4 "out:^PARTIAL: .*run.1 continues a file that was rotated away" report "$WORK/run.1" "$WORK/run.2"
row 2 "report: .*run.1 is given twice" report "$WORK/run.1" "$WORK/run.1"
row 4 "out:^PARTIAL: the last file read of a run is its file 2, and that run's end .* was not read" report "$WORK/run.0" "$WORK/run.1"
row 0 "out:^9 transactions|^imdstrace diagnosis: 9 transactions" report "$WORK/run.0" "$WORK/run.1" "$WORK/run.2"
row 3 "out:20 transactions" report "$WORK/rot.jsonl.1" "$WORK/rot.jsonl"
row 2 "report: $WORK/dir is a directory" report "$WORK/dir"
row 2 "report: cannot read /nonexistent.jsonl" report /nonexistent.jsonl
row 3 "out:10 transactions" report "$CASES/report/truncated_last.jsonl"
row 3 "skipped 1 line that is not a transaction .*truncated_last.jsonl:11:" report "$CASES/report/truncated_last.jsonl"
row 1 "no line of .*hops_intmax.jsonl is a transaction.*\"hops\" is outside 0..255" report "$CASES/report/hops_intmax.jsonl"
row 1 "\"duration_ms\" must be an integer|\"duration_ms\" is outside" report "$CASES/report/duration_huge.jsonl"
row 3 "out:12884901885 drops reason IP_INHDR" report "$CASES/report/count_overflow.jsonl"
row 3 'out:x\\x1b\[2J\\x1b\[31mFAKE' report "$CASES/report/ansi_pod.jsonl"
row 3 'out:"name": "x\\u001b\[2J' report -o json "$CASES/report/ansi_pod.jsonl"
row 1 "no line of .*garbage.jsonl is a transaction" report "$WORK/garbage.jsonl"
row 1 "huge-string.jsonl:1: " report "$WORK/huge-string.jsonl"
row 0 "out:No metadata traffic seen" report "$WORK/empty.jsonl"
if grep -q $'\x1b' "$WORK/out"; then FAILED=$((FAILED + 1)); echo "  FAIL  an escape byte reached stdout"; fi
timeout 20 "$IMDSTRACE" report "$CASES/report/ansi_pod.jsonl" >"$WORK/ansi.out" 2>&1 || true
if grep -q $'\x1b' "$WORK/ansi.out"; then
    FAILED=$((FAILED + 1)); echo "  FAIL  report ansi_pod.jsonl: an ESC byte reached the terminal"
else
    PASSED=$((PASSED + 1)); echo "  ok    report ansi_pod.jsonl: no ESC byte in the output"
fi

echo "== standard output on a full disk"
full report "$CASES/report/count_overflow.jsonl"
full report -o json "$CASES/report/count_overflow.jsonl"
full report "$WORK/empty.jsonl"

echo "cli bad_input: $PASSED passed, $FAILED failed"
[[ $FAILED -eq 0 ]]
