#!/bin/sh
# PROVISIONAL kernel-matrix scenario (runs as /scenario.sh inside the qemu guest, see
# tests/kernel/README.md). It proves the guest plumbing the real hop-limit scenario needs:
# netns + veth, clsact, an iptables FORWARD rule and MASQUERADE, nft, and `imdstrace check`.
# (BPF program loading is probed by /init before this runs.) The lead replaces the body with
# the end-to-end hop-limit test.
#
# Contract with the runner: print progress as lines starting with "scenario:" (the host shows
# them), exit 0 on success, non-zero on failure. Runs under dash; ip/tc/nsenter are iproute2's
# and util-linux's. No NIC exists in the guest: everything lives in namespaces made here.
set -eu

say() { echo "scenario: $*"; }
fail() { say "FAIL: $*"; exit 1; }

P=km$$
NODE=${P}node
POD=${P}pod
cleanup() {
	ip netns del "$POD" 2>/dev/null || true
	ip netns del "$NODE" 2>/dev/null || true
}
trap cleanup EXIT

say "tools: $(ip -V 2>&1 | head -n1); $(tc -V 2>&1 | head -n1); $(nsenter -V 2>&1 | head -n1)"

# Two namespaces joined by a veth: a "node" and a "pod", 198.18.0.0/15 per the testbed rules.
ip netns add "$NODE"
ip netns add "$POD"
ip link add "${P}n" netns "$NODE" type veth peer name "${P}p" netns "$POD"
ip -n "$NODE" addr add 198.18.0.1/24 dev "${P}n"
ip -n "$POD" addr add 198.18.0.2/24 dev "${P}p"
for ns in "$NODE" "$POD"; do ip -n "$ns" link set lo up; done
ip -n "$NODE" link set "${P}n" up
ip -n "$POD" link set "${P}p" up
say "veth ${P}n <-> ${P}p up"

tc -n "$NODE" qdisc add dev "${P}n" clsact || fail "clsact"
tc -n "$NODE" filter add dev "${P}n" ingress matchall action gact pass || fail "tc gact filter"
say "clsact + gact filter: $(tc -n "$NODE" qdisc show dev "${P}n" | grep -c clsact) clsact qdisc"

nsenter --net=/run/netns/"$POD" ping -c 1 -W 5 198.18.0.1 >/dev/null || fail "ping across veth"
say "ping pod -> node across veth: ok"

# Netfilter as the later topologies use it (FORWARD drop = network policy, MASQUERADE = CNI).
if command -v iptables >/dev/null 2>&1; then
	nsenter --net=/run/netns/"$NODE" iptables -A FORWARD -d 169.254.169.254 -j DROP ||
		fail "iptables FORWARD DROP"
	nsenter --net=/run/netns/"$NODE" iptables -t nat -A POSTROUTING -s 198.18.0.0/24 \
		! -d 198.18.0.0/24 -j MASQUERADE || fail "iptables MASQUERADE"
	say "iptables ($(iptables -V 2>&1)): FORWARD DROP + MASQUERADE: ok"
fi
if command -v nft >/dev/null 2>&1; then
	nsenter --net=/run/netns/"$NODE" nft add table inet km || fail "nft add table"
	nsenter --net=/run/netns/"$NODE" nft add chain inet km kmforward \
		'{ type filter hook forward priority 0; }' || fail "nft add chain"
	say "nft table + forward chain: ok"
fi

[ -r /sys/kernel/btf/vmlinux ] || fail "no /sys/kernel/btf/vmlinux"
say "BTF: /sys/kernel/btf/vmlinux $(wc -c </sys/kernel/btf/vmlinux) bytes"

if [ -x /bin/imdstrace ]; then
	# The node reaches the IMDS addresses over its veth, so check finds an uplink there.
	ip -n "$NODE" route add 169.254.169.254/32 dev "${P}n"
	ip -n "$NODE" -6 route add fd00:ec2::254/128 dev "${P}n"
	set +e
	out=$(nsenter --net=/run/netns/"$NODE" /bin/imdstrace check 2>&1)
	rc=$?
	set -e
	echo "$out" | sed 's/^/scenario: check: /'
	[ "$rc" -eq 0 ] || fail "imdstrace check rc=$rc"
else
	say "no /bin/imdstrace in the guest (built with --allow-missing): check skipped"
fi

say "ok"
