/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * Target matching and header decoding shared by every imdstrace hook.
 *
 * The cost that matters is the one every non-IMDS packet of the node pays:
 * the tc and cgroup_skb entry points read one address with direct packet
 * access, compare it with the configured targets (rodata, so the verifier
 * knows the count) and return.  Everything else here runs only for target
 * traffic.
 */
#ifndef IMDSTRACE_PACKET_BPF_H
#define IMDSTRACE_PACKET_BPF_H

#include <stdbool.h>
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "imdstrace.h"

/* ICMP error types (linux/icmp.h drags in libc headers, so not included). */
#define ICMP_DEST_UNREACH 3
#define ICMP_TIME_EXCEEDED 11
#define ICMPV6_DEST_UNREACH 1
#define ICMPV6_TIME_EXCEED 3

/* Configuration, written by the loader between open and load. */
const volatile __u32 n_targets_v4 = 0;
const volatile __u32 n_targets_v6 = 0;
const volatile __be32 target_v4_addr[IMDS_MAX_TARGETS] = {};
const volatile __be16 target_v4_port[IMDS_MAX_TARGETS] = {};
const volatile __u32 target_v6_addr[IMDS_MAX_TARGETS][4] = {};
const volatile __be16 target_v6_port[IMDS_MAX_TARGETS] = {};
/* Index offset of the IPv6 targets in the userspace target table. */
const volatile __u32 target_v6_base = 0;

#define IMDS_NO_TARGET 0xff

static __always_inline __u32 match_v4_addr(__be32 addr)
{
	for (__u32 i = 0; i < IMDS_MAX_TARGETS; i++) {
		if (i >= n_targets_v4)
			break;
		if (target_v4_addr[i] == addr)
			return i;
	}
	return IMDS_NO_TARGET;
}

static __always_inline __u32 match_v6_addr(const __u32 *addr)
{
	for (__u32 i = 0; i < IMDS_MAX_TARGETS; i++) {
		if (i >= n_targets_v6)
			break;
		if (target_v6_addr[i][3] == addr[3] && target_v6_addr[i][2] == addr[2] &&
		    target_v6_addr[i][1] == addr[1] && target_v6_addr[i][0] == addr[0])
			return i;
	}
	return IMDS_NO_TARGET;
}

/* The address matched; does the port (0 = any) match that same target? */
static __always_inline bool port_matches(__u8 family, __u32 idx, __be16 port)
{
	__be16 want;

	if (idx >= IMDS_MAX_TARGETS)
		return false;
	want = family == IMDS_AF_INET ? target_v4_port[idx] : target_v6_port[idx];
	return want == 0 || want == port;
}

static __always_inline __u8 target_table_index(__u8 family, __u32 idx)
{
	return family == IMDS_AF_INET ? idx : target_v6_base + idx;
}

/* TCP flags byte (byte 13 of the header) in the order of struct imds_event. */
static __always_inline __u8 tcp_flag_byte(const struct tcphdr *th)
{
	return ((const __u8 *)th)[13] & 0x3f;
}

static __always_inline void fill_tcp(struct imds_event *e, const struct tcphdr *th)
{
	e->sport = th->source;
	e->dport = th->dest;
	e->seq = bpf_ntohl(th->seq);
	e->ack_seq = bpf_ntohl(th->ack_seq);
	e->tcp_flags = tcp_flag_byte(th);
}

/* Zero the header of a freshly reserved or staged event (neither is zeroed). */
static __always_inline void event_init(struct imds_event *e, __u8 hook)
{
	__builtin_memset(e, 0, sizeof(*e));
	e->ts_ns = bpf_ktime_get_ns();
	e->hook = hook;
}

#endif /* IMDSTRACE_PACKET_BPF_H */
