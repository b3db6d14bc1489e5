/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * The one contract between the BPF programs and the C++ aggregator.
 *
 * Read by both sides: fixed-width __uN types only, explicit padding, no
 * bitfields, no pointers.  tests/unit/event_layout_test.cpp pins every size
 * and offset; change both sides and that test together.
 */
#ifndef IMDSTRACE_H
#define IMDSTRACE_H

#include <linux/types.h>

/* Targets are configuration (rodata), bounded so the verifier unrolls. */
#define IMDS_MAX_TARGETS 8
/*
 * First TCP payload bytes copied: request line + headers, status line.
 * The whole request head must fit, or a token header is missed:
 * aws-sdk-go-v2's feature/ec2/imds GET head is ~300 bytes with
 * X-Aws-Ec2-Metadata-Token at bytes 238-262.  A head longer than this is
 * judged "token unknown", never "no token".  A power of two: the BPF copy
 * masks its length with IMDS_PAYLOAD_MAX - 1.
 */
#define IMDS_PAYLOAD_MAX 512

/* Where a packet was seen. */
enum imds_hook {
	IMDS_HOOK_CGROUP_EGRESS = 1,  /* a local socket sends (pod or host)     */
	IMDS_HOOK_CGROUP_INGRESS = 2, /* delivered to a local socket            */
	IMDS_HOOK_UPLINK_EGRESS = 3,  /* tc egress on an uplink: node -> target */
	IMDS_HOOK_UPLINK_INGRESS = 4, /* tc ingress on an uplink: target -> node*/
	IMDS_HOOK_DROP = 5,           /* tracepoint skb/kfree_skb               */
	IMDS_HOOK_ICMP_SEND = 6,      /* tracepoint icmp/icmp_send (6.9+)       */
	IMDS_HOOK_CONNECT = 7,        /* tp sock/inet_sock_set_state -> SYN_SENT:
				       * who connects (pid, comm, cgroup)    */
	IMDS_HOOK_CONNECT_FAILED = 8, /* raw tp sys_exit of connect(2) to a
				       * target that failed before any packet:
				       * drop_reason holds the errno        */
	IMDS_HOOK_MAX = 9,
};

/* Which way the packet travels relative to the target. */
enum imds_direction {
	IMDS_DIR_TO_TARGET = 1,   /* client -> metadata endpoint  */
	IMDS_DIR_FROM_TARGET = 2, /* metadata endpoint -> client  */
	/*
	 * ICMP error about a packet from the target (time exceeded sent back
	 * toward IMDS); the tuple fields hold the quoted packet.
	 */
	IMDS_DIR_ICMP_ABOUT = 3,
};

enum imds_family {
	IMDS_AF_INET = 4,
	IMDS_AF_INET6 = 6,
};

/* Flags in imds_event.flags. */
#define IMDS_F_SK_PRESENT 0x01  /* skb had a socket                       */
#define IMDS_F_TRUNCATED 0x02   /* payload_len > copied bytes            */
#define IMDS_F_HAS_REASON 0x04  /* drop_reason is a real reason value    */
#define IMDS_F_ICMP_QUOTE 0x08  /* tuple parsed from an ICMP quote       */
#define IMDS_F_IN_CGROUP 0x10   /* connect: the task is in the traced cgroup tree */
/*
 * Matched by the client endpoint of a followed connection, not by a target
 * address: the destination was rewritten on the way (DNAT, REDIRECT), so
 * daddr/dport (or saddr/sport) hold the rewritten endpoint and
 * target_index the target the client asked for.
 */
#define IMDS_F_FOLLOWED 0x20
/*
 * An HTTP request with an absolute URI naming a metadata address
 * ("GET http://169.254.169.254/..."), sent to a proxy, and the packets of
 * that connection: the server address is the proxy's.
 */
#define IMDS_F_VIA_PROXY 0x40

/*
 * One observation of one packet at one hook: a ring record is this fixed
 * header followed by `copied` payload bytes (a variable-length tail, none for
 * a packet without payload: a SYN, an ACK, a drop, a connect).  Records are
 * sized to what they carry so the ring holds ~5x more events than fixed
 * 640-byte slots.  Addresses and ports are in
 * network byte order exactly as on the wire; IPv4 addresses occupy the
 * first four bytes of the 16-byte fields.  The tuple is always written
 * client -> server orientation independent: saddr/sport are the packet's
 * source.
 */
struct imds_event {
	__u64 ts_ns;        /* bpf_ktime_get_ns()                              */
	__u64 cgroup_id;    /* socket's cgroup v2 id (cgroup hooks), else 0    */
	__u64 sk_cookie;    /* socket cookie when a socket is attached, else 0 */
	__u64 location;     /* drop: kernel text address of the freeing site   */
	__u32 drop_reason;  /* drop: enum skb_drop_reason value of this kernel */
	__u32 ifindex;      /* device the skb is on (0 if none)                */
	__u32 netns;        /* network namespace inode number (as in
			     * /proc/PID/ns/net) of the device or socket:
			     * drop, icmp_send and connect events; 0 unknown */
	__u32 seq;          /* TCP sequence number (host order)                */
	__u32 ack_seq;      /* TCP acknowledgement number (host order)         */
	__u32 payload_len;  /* TCP payload length in this packet               */
	__u8 saddr[16];
	__u8 daddr[16];
	__u16 sport;        /* network order */
	__u16 dport;        /* network order */
	__u16 ip_id;        /* IPv4 identification (host order), 0 for IPv6    */
	__u16 copied;       /* bytes valid in payload[]                        */
	__u8 hook;          /* enum imds_hook                                  */
	__u8 direction;     /* enum imds_direction                             */
	__u8 family;        /* enum imds_family                                */
	__u8 ip_proto;      /* IPPROTO_TCP / IPPROTO_ICMP / IPPROTO_ICMPV6     */
	__u8 ttl;           /* IPv4 TTL or IPv6 hop limit as seen at the hook  */
	__u8 tcp_flags;     /* FIN=0x01 SYN=0x02 RST=0x04 PSH=0x08 ACK=0x10    */
	__u8 icmp_type;     /* ICMP error events: type and code                */
	__u8 icmp_code;
	__u8 flags;         /* IMDS_F_*                                        */
	__u8 target_index;  /* index into the configured target table          */
	__u8 pad[2];
	__u32 pid;          /* connect: thread-group id of the connecting task */
	__u8 comm[16];      /* connect: its command name; drop and icmp_send:
			     * the device's name, resolved in its own netns */
	/*
	 * cgroup egress of a packet FROM a target: a socket of this machine
	 * answers for the metadata address.  Its own local address and port
	 * (network order), before the reply was un-DNATed: 198.18.0.2:8181
	 * for a DNAT to a node-local proxy.  Zero elsewhere.
	 */
	__u8 sock_addr[16];
	__u16 sock_port;
	__u8 pad2[6];
	/* followed by `copied` bytes of TCP payload (struct imds_event_buf) */
};

/*
 * The largest record: header and a full payload tail.  Used as the BPF
 * programs' per-CPU staging buffer; a record on the ring is only
 * sizeof(struct imds_event) + copied bytes long.
 */
struct imds_event_buf {
	struct imds_event hdr;
	__u8 payload[IMDS_PAYLOAD_MAX];
};

/* Per-CPU counters, index = enum imds_counter. */
enum imds_counter {
	IMDS_CNT_SEEN = 0,       /* target packets seen, all hooks       */
	IMDS_CNT_EMITTED = 1,    /* events submitted to the ring buffer  */
	IMDS_CNT_LOST = 2,       /* ring buffer full: event dropped      */
	IMDS_CNT_DROPS_SEEN = 3, /* kfree_skb of target traffic          */
	IMDS_CNT_MAX = 4,
};

#endif /* IMDSTRACE_H */
