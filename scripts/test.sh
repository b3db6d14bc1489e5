#!/usr/bin/env bash
# The whole test suite, as CI runs it (.ci/run calls this): installs the
# dependencies, builds, runs unit, BPF, end-to-end and kernel-matrix tests
# (root: real BPF, real namespaces), then the fuzzers, then prints the
# benchmark figures.
#   scripts/test.sh [--no-kernels]     (as root; --no-kernels: skip the 6.1/6.12 qemu matrix,
#                                       x86_64 and arm64)
set -euo pipefail
cd "$(dirname "$0")/.."

KERNELS=1
[ "${1:-}" = "--no-kernels" ] && KERNELS=0
[ "$(id -u)" -eq 0 ] || { echo "test: run as root (BPF, network namespaces)" >&2; exit 1; }

if [ "$KERNELS" = 1 ]; then scripts/setup.sh --matrix; else scripts/setup.sh; fi
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo
cmake --build build -j"$(nproc)"

# Leftovers of an interrupted earlier run (only imdst-* testbeds are touched).
scripts/testbed.sh sweep >/dev/null 2>&1 || true

failed=0
# -j3: e2e tests mostly wait on their testbeds; ctest runs the RUN_SERIAL ones
# (BPF_PROG_TEST_RUN, lifecycle, probe, attribution) alone.
ctest --test-dir build --output-on-failure -j3 -L '^(unit|cli|bpf|e2e)$' || failed=1
# Then the kernel matrix, its two rows (x86_64, arm64) side by side: each guest is one TCG vCPU.
if [ "$KERNELS" = 1 ]; then
  ctest --test-dir build --output-on-failure -j2 -L '^kernels$' || failed=1
fi

# Fuzzing (label fuzz): the libFuzzer harnesses built with clang, ASan and
# UBSan in a build directory of their own, each run for 30 s from its corpus.
cmake -S . -B build-fuzz -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ -DIMDSTRACE_FUZZ=ON \
      -DIMDSTRACE_TESTS=OFF -DCMAKE_BUILD_TYPE=RelWithDebInfo
cmake --build build-fuzz -j"$(nproc)" --target fuzz
ctest --test-dir build-fuzz --output-on-failure -L '^fuzz$'

# Figures, not a pass/fail test: the short bounded set of bench/run.sh (~2 minutes).
if [ -x build/bench/imdstrace-bench ]; then
  echo "== benchmarks (bench/run.sh --quick; figures only)"
  timeout 600 bench/run.sh --quick || echo "benchmarks did not finish (not a test)"
fi
[ "$failed" = 0 ] || { echo "test: some tests failed (see above)" >&2; exit 1; }
