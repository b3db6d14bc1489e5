#!/bin/sh
# The kernel-matrix scenario: runs as /scenario.sh inside each qemu guest
# (tests/kernel/README.md) and executes the SAME end-to-end tests the host
# runs (tests/e2e/), against that guest's kernel:
#   hop limit 1 -> pod HOP_LIMIT_EXCEEDED (needs 2), host process OK, exit 3
#   hop limit 2 -> everything OK, exit 0
#   IPv6 (ip6_forward, ICMPv6)
#   attach/detach on signals, with tcx where the kernel has it and netlink tc
#   attribution in the four pod topologies (k8s-node resolver, NAT, nested)
#   a FORWARD policy drop (BLOCKED) and a Cilium-style tc TTL drop
#   probe from inside a pod
#   only this node, only this window: after the fix, two testbeds with the same
#   addresses, a proxy's socket bookkeeping in another namespace, a 403 token
#   answer, the node-local Pod Identity agent, a pod on a second ENI
#   the real path: DNAT to a local proxy that answers, is blocked, is not running; connect()
#   failing before any packet (no IPv4 route, prohibit and unreachable routes)
# and before them the BPF_PROG_TEST_RUN tests (imdstrace_bpf_tests) and, where the runner asks
# for them, the unit tests (imdstrace_unit_tests): on arm64 the only place they run.
#
# Contract with the runner: progress lines start with "scenario:", exit 0 on
# success.  No NIC exists in the guest: everything lives in namespaces.
set -u

say() { echo "scenario: $*"; }

export IMDSTRACE=/usr/bin/imdstrace IMDS_EMULATOR=/usr/bin/imds-emulator IMDS_CLIENT=/usr/bin/imds-client
export K8S_API_STANDIN=/usr/bin/k8s-api-standin
export REPO=/repo
# The unit tests' input files, copied by the runner (the build's source path is not in the guest).
export IMDSTRACE_CASES_DIR=/repo/tests/cases

say "kernel $(uname -r)"
# Which kernel paths this kernel gets (the guest's own namespace has no uplink).
imdstrace check >/tmp/check.out 2>&1
grep -E 'arch|kernel|drop path|icmp path|tc attach|bpf load' /tmp/check.out | sed 's/^/scenario: check: /'

rc=0
# The binary was built for this guest's architecture, and check says which that is.
if grep -Eq "^ok +arch +$(uname -m)\$" /tmp/check.out; then
	say "  ok    check names the architecture, $(uname -m)"
else
	say "FAILED: check does not report 'ok arch $(uname -m)'"
	rc=1
fi
# The unit and BPF_PROG_TEST_RUN tests, built for this guest's architecture, on this kernel,
# as the runner asks (imdstrace.gtests=unit,bpf on the kernel command line; see
# scripts/kernel-matrix.sh --unit-tests): gtest's own summary is printed; a failed or missing
# test binary fails the kernel.
gtests=
for arg in $(cat /proc/cmdline); do
	case "$arg" in imdstrace.gtests=*) gtests=${arg#*=} ;; esac
done
for t in $(echo "$gtests" | tr ',' ' '); do
	t=imdstrace_${t}_tests
	say "== $t (at $(cut -d' ' -f1 /proc/uptime) s)"
	rm -f /tmp/scenario.rc
	{ /usr/bin/$t --gtest_brief=1 --gtest_color=no; echo $? >/tmp/scenario.rc; } 2>&1 | sed 's/^/scenario: /'
	r=$(cat /tmp/scenario.rc 2>/dev/null || echo 1)
	if [ "$r" != 0 ]; then
		say "FAILED: $t (rc=$r)"
		rc=1
	fi
done
# Every scenario on x86_64.  Under arm64 TCG (several times slower) the ones whose kernel side
# differs by architecture or kernel: BPF load and attach, CO-RE reads, the syscall tracepoints'
# registers (connect_noroute), followed flows and local answers; the rest is the same userspace
# logic the x86_64 guests and the host already run.
scenarios="hop_limit.sh:limit1 hop_limit.sh:ipv6 lifecycle.sh:signals attribution.sh:k8s_node
	failure_modes.sh:blocked failure_modes.sh:cilium probe.sh:failing scope.sh:after_fix
	path.sh:dnat_answered path.sh:dnat_blocked path.sh:connect_noroute path.sh:pod_redirect"
if [ "$(uname -m)" != aarch64 ]; then
	scenarios="$scenarios hop_limit.sh:limit2 scope.sh:two_nodes scope.sh:bookkeeping scope.sh:xff
	scope.sh:node_local scope.sh:eni2 path.sh:dnat_refused path.sh:dnat_elsewhere"
fi
for s in $scenarios; do
	t=$(echo "$s" | tr ':' ' ')
	say "== $t (at $(cut -d' ' -f1 /proc/uptime) s)"
	# dash has no pipefail: the test's status travels through a file.
	rm -f /tmp/scenario.rc
	# shellcheck disable=SC2086
	{ bash /repo/tests/e2e/$t; echo $? >/tmp/scenario.rc; } 2>&1 | sed 's/^/scenario: /'
	r=$(cat /tmp/scenario.rc 2>/dev/null || echo 1)
	if [ "$r" != 0 ]; then
		say "FAILED: $t (rc=$r)"
		rc=1
	fi
done
exit $rc
