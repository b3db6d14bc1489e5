// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * Baselines for bench/: programs of the same types as imdstrace's that do
 * nothing, so a benchmark can report imdstrace's cost as a ratio.
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

SEC("tc")
int empty_tc(struct __sk_buff *skb)
{
	return TC_ACT_UNSPEC;
}

SEC("cgroup_skb/egress")
int empty_cgroup_skb(struct __sk_buff *skb)
{
	return 1;
}
