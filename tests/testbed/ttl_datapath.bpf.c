// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * ttl_datapath: a minimal stand-in for a CNI BPF datapath (Cilium's bpf_host on the native
 * device) for the imdstrace testbed. Attached as a tc clsact ingress filter on the node's uplink.
 *
 * For packets destined to one pod (its IPv4 and/or IPv6 address):
 *   TTL / hop limit <= 1  -> TC_ACT_SHOT  (the datapath drops it; no ICMP, like Cilium's
 *                                          DROP_TTL_EXCEEDED; the kernel frees the skb with
 *                                          drop reason TC_INGRESS)
 *   otherwise             -> decrement TTL / hop limit (fix the IPv4 header checksum), rewrite
 *                            the Ethernet header (pod MAC, node-side veth MAC) and bpf_redirect()
 *                            to the egress of the pod's node-side veth: ip_forward() is bypassed,
 *                            so the datapath is the only place the hop is accounted for.
 * Everything else: TC_ACT_UNSPEC, i.e. continue with the next filter (a tracer behind us still
 * sees it).
 *
 * Test-only code: no CO-RE (only packet data is read), uapi headers only.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/pkt_cls.h>
#include <stddef.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Set by the loader before load. Addresses in network byte order. */
const volatile __u32 pod_ip4 = 0;
const volatile __u8 has_ip4 = 0;
const volatile __u8 pod_ip6[16] = {};
const volatile __u8 has_ip6 = 0;
const volatile __u32 redirect_ifindex = 0;
const volatile __u8 dst_mac[ETH_ALEN] = {};
const volatile __u8 src_mac[ETH_ALEN] = {};

/* Counters read by the loader (printed when it exits). */
__u64 redirected = 0;
__u64 dropped_ttl = 0;

static __always_inline void rewrite_eth(struct ethhdr *eth)
{
	for (int i = 0; i < ETH_ALEN; i++) {
		eth->h_dest[i] = dst_mac[i];
		eth->h_source[i] = src_mac[i];
	}
}

static __always_inline int ip6_is_pod(const struct ipv6hdr *ip6)
{
	for (int i = 0; i < 16; i++)
		if (ip6->daddr.in6_u.u6_addr8[i] != pod_ip6[i])
			return 0;
	return 1;
}

SEC("tc")
int ttl_datapath(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) > data_end)
		return TC_ACT_UNSPEC;

	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);

		if (!has_ip4 || (void *)(ip + 1) > data_end || ip->daddr != pod_ip4)
			return TC_ACT_UNSPEC;
		if (ip->ttl <= 1) {
			__sync_fetch_and_add(&dropped_ttl, 1);
			return TC_ACT_SHOT;
		}
		/* TTL and protocol share one 16-bit checksum word */
		__u16 old_word = *(__u16 *)&ip->ttl;
		ip->ttl--;
		__u16 new_word = *(__u16 *)&ip->ttl;
		rewrite_eth(eth);
		/* invalidates packet pointers: nothing is read after it */
		if (bpf_l3_csum_replace(skb, ETH_HLEN + offsetof(struct iphdr, check), old_word, new_word,
					sizeof(__u16)))
			return TC_ACT_SHOT;
		__sync_fetch_and_add(&redirected, 1);
		return bpf_redirect(redirect_ifindex, 0);
	}

	if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);

		if (!has_ip6 || (void *)(ip6 + 1) > data_end || !ip6_is_pod(ip6))
			return TC_ACT_UNSPEC;
		if (ip6->hop_limit <= 1) {
			__sync_fetch_and_add(&dropped_ttl, 1);
			return TC_ACT_SHOT;
		}
		ip6->hop_limit--;
		rewrite_eth(eth);
		__sync_fetch_and_add(&redirected, 1);
		return bpf_redirect(redirect_ifindex, 0);
	}

	return TC_ACT_UNSPEC;
}
