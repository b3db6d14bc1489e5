// SPDX-License-Identifier: GPL-2.0
/* Kernel-matrix probe: the program types imdstrace attaches, loaded by bpftool in the guest.
 * The tp_btf program reads skb->len through a CO-RE relocation against the guest's own BTF,
 * so a successful load proves relocation + verifier + attach-target resolution per kernel.
 * Not part of imdstrace; see tests/kernel/README.md. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

struct sk_buff {
	unsigned int len;
} __attribute__((preserve_access_index));

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} km_bytes SEC(".maps");

SEC("tp_btf/kfree_skb")
int BPF_PROG(km_kfree_skb, struct sk_buff *skb)
{
	__u32 key = 0;
	__u64 *bytes = bpf_map_lookup_elem(&km_bytes, &key);

	if (bytes)
		__sync_fetch_and_add(bytes, skb->len);
	return 0;
}

SEC("cgroup_skb/egress")
int km_cgroup_egress(struct __sk_buff *skb)
{
	return 1; /* observe only */
}

SEC("tc")
int km_tc(struct __sk_buff *skb)
{
	return 0; /* TC_ACT_OK */
}

char LICENSE[] SEC("license") = "GPL";
