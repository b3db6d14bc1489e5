/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * The few kernel-internal types imdstrace reads, declared for CO-RE.
 *
 * Why not a generated vmlinux.h: it would tie the build to the build
 * machine's /sys/kernel/btf/vmlinux (absent in many build containers), pull
 * ~150k lines into every compile, and collide with the UAPI headers we use
 * for packet parsing.  With preserve_access_index, libbpf relocates every
 * field below against the running kernel's BTF at load time, so only the
 * names matter here, not the offsets or the order of the fields.
 */
#ifndef IMDSTRACE_KERNEL_TYPES_BPF_H
#define IMDSTRACE_KERNEL_TYPES_BPF_H

#include <linux/types.h>
#include <linux/in6.h>

#pragma clang attribute push(__attribute__((preserve_access_index)), apply_to = record)

struct ns_common {
	unsigned int inum;
};

struct net {
	struct ns_common ns;
};

typedef struct {
	struct net *net;
} possible_net_t;

struct net_device {
	char name[16];
	int ifindex;
	possible_net_t nd_net;
};

struct sock_common {
	unsigned short skc_family;
	possible_net_t skc_net;
	__be32 skc_daddr;
	__be16 skc_dport;
	struct in6_addr skc_v6_daddr;
};

struct sock {
	struct sock_common __sk_common;
};

struct sk_buff {
	unsigned int len;
	__u16 transport_header;
	__u16 network_header;
	__u16 mac_header;
	__be16 protocol;
	unsigned char *head;
	unsigned char *data;
	struct net_device *dev;
	struct sock *sk;
};

struct nsproxy {
	struct net *net_ns;
};

struct task_struct {
	struct nsproxy *nsproxy;
};

/*
 * The user registers a syscall entered with, as the raw sys_enter
 * tracepoint passes them.  A flavor (___imds), not struct pt_regs: the
 * UAPI headers declare a user-ABI pt_regs with other field names.
 */
#if defined(__TARGET_ARCH_x86)
struct pt_regs___imds {
	unsigned long si; /* second syscall argument */
};
#define IMDS_SYSCALL_ARG2(regs) BPF_CORE_READ((struct pt_regs___imds *)(regs), si)
#elif defined(__TARGET_ARCH_arm64)
struct pt_regs___imds {
	unsigned long long regs[31]; /* x0..x30; x1 is the second argument */
};
#define IMDS_SYSCALL_ARG2(regs) BPF_CORE_READ((struct pt_regs___imds *)(regs), regs[1])
#endif

#pragma clang attribute pop

/*
 * Only the values whose presence we test; the numbering differs between
 * kernels, so userspace names reasons from the running kernel's BTF.
 */
enum skb_drop_reason {
	SKB_NOT_DROPPED_YET = 0,
	SKB_CONSUMED = 1, /* v6.2: consume_skb() folded into the reason enum */
};

#endif /* IMDSTRACE_KERNEL_TYPES_BPF_H */
