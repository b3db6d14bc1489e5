// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * imdstrace: observe every packet to and from the instance metadata
 * endpoints at the points that decide whether a response reaches its pod.
 *
 *   cgroup_skb/egress   a local socket sends        (TTL the client set)
 *   cgroup_skb/ingress  delivered to a local socket (the response arrived)
 *   tc egress  uplink   leaving the node            (TTL after the node's hops)
 *   tc ingress uplink   arriving from the endpoint  (TTL = hop limit budget)
 *   tp_btf/kfree_skb    freed with a drop reason    (where and why it died)
 *   tp_btf/icmp_send    ICMP error generated        (time exceeded, 6.9+)
 *   tp_btf/inet_sock_set_state  a socket starts connecting to a target
 *                       (process context: who it is, pid and comm)
 *
 * Observe only: tc programs return TC_ACT_UNSPEC ("continue with the next
 * program or filter") rather than TC_ACT_OK, which on tcx and in a cls_bpf
 * chain would end classification and skip programs behind ours, such as a
 * CNI's datapath.  cgroup_skb programs return 1 (allow).
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>

#include "kernel_types.bpf.h"
#include "packet.bpf.h"
#include "imdstrace.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Set by the loader from the running kernel's BTF (see core_fixes note). */
const volatile bool kfree_skb_has_reason = true;
/*
 * kfree_skb(..., rx_sk): the receiving socket, since v6.11 ("net: add
 * rx_sk to trace_kfree_skb"); the loader reads the prototype from BTF.  TCP frees segments it
 * does not want with skb->dev and skb->sk already cleared: rx_sk is then the
 * only way to the namespace they were in.
 */
const volatile bool kfree_skb_has_rx_sk = true;

/* The default size; the loader sets --ring-size (a power of two of pages). */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4 << 20);
} events SEC(".maps");

/*
 * Staging for records with a payload tail: built here, then copied to the
 * ring with exactly sizeof(header) + copied bytes (bpf_ringbuf_output).  A
 * record without payload is reserved on the ring directly, header only.
 */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct imds_event_buf);
} staging SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, IMDS_HOOK_MAX * IMDS_CNT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

/*
 * The traced cgroup (slot 0), set by the loader: a connect() from a task
 * below it makes that task's network namespace part of this node.
 */
struct {
	__uint(type, BPF_MAP_TYPE_CGROUP_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} traced_cgroup SEC(".maps");

/*
 * Connections followed by their client endpoint: DNAT and REDIRECT (on the
 * node or in the pod) rewrite the destination and keep the client's
 * address and port, so a packet, drop or reset of a followed connection is
 * recognised after its destination changed.  Entered when a client socket
 * sends its SYN to a target (cgroup egress, before any NAT) or an absolute-
 * URI metadata request to a proxy.  LRU: bounded, oldest flows give way.
 */
struct followed_key {
	__u8 addr[16]; /* client address as its socket sent (IPv4: first 4 bytes) */
	__be16 port;   /* client port, network order */
	__u8 family;   /* enum imds_family */
	__u8 pad;
};

struct followed_flow {
	__u64 ts_ns;
	__u8 target_index; /* the target the client asked for */
	__u8 via_proxy;    /* an absolute-URI request to an HTTP proxy */
	__u8 pad[6];
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, struct followed_key);
	__type(value, struct followed_flow);
} followed SEC(".maps");

/*
 * Set once a flow is followed / a proxied request was seen: until then no
 * program pays for a lookup (most nodes never DNAT metadata traffic and
 * never proxy it).
 */
volatile __u32 following = 0;
volatile __u32 proxied = 0;

#define IMDS_AF_INET_KERNEL 2
#define IMDS_AF_INET6_KERNEL 10

/*
 * Look for absolute-URI metadata requests in TCP payloads sent to these
 * destination ports (rodata, network order; the loader sets them from
 * --proxy-ports): reading a payload costs ~25 ns a segment, so only the
 * ports HTTP proxies listen on pay it.  proxy_any_port: every port.
 */
const volatile bool detect_proxy = true;
/* One bit per port (host order): one load and a bit test on the fast path. */
const volatile __u8 proxy_port_bits[65536 / 8] = {};

static __always_inline bool proxy_port(__be16 dport)
{
	__u16 port = bpf_ntohs(dport);

	return proxy_port_bits[port >> 3] & (1 << (port & 7));
}


/*
 * Events the ring could not take, all hooks together: a global in .bss,
 * which userspace reads through the skeleton's mmap after every poll with
 * no syscall (the per-hook `counters` map needs one lookup per hook).
 */
__u64 events_lost_total = 0;

static __always_inline void count(__u8 hook, __u32 what)
{
	__u32 key = (__u32)hook * IMDS_CNT_MAX + what;
	__u64 *v = bpf_map_lookup_elem(&counters, &key);

	if (v)
		*v += 1;
}

static __always_inline void count_lost(__u8 hook)
{
	__sync_fetch_and_add(&events_lost_total, 1);
	count(hook, IMDS_CNT_LOST);
}

/* Where a packet's bytes come from: an skb program's context, or kernel
 * memory (tracepoints).  Inlined with a constant source, the other branch
 * folds away, so tracing programs never reference skb-only helpers. */
struct pkt_src {
	struct __sk_buff *skb; /* skb programs */
	__u32 l3_off;          /* offset of the IP header in skb data      */
	const __u8 *l3;        /* tracepoints: kernel address of IP header */
};

static __always_inline long pkt_load(const struct pkt_src *src, __u32 off, void *to, __u32 len)
{
	if (src->skb)
		return bpf_skb_load_bytes(src->skb, src->l3_off + off, to, len);
	return bpf_probe_read_kernel(to, len, src->l3 + off);
}

/* Decoded network layer of one packet. */
struct l3_info {
	__u8 saddr[16];
	__u8 daddr[16];
	__u32 l4_off;      /* from the IP header */
	__u32 l4_len;      /* bytes after the IP header (from the IP length) */
	__u16 ip_id;
	__u8 family;
	__u8 proto;
	__u8 ttl;
};

static __always_inline int parse_ipv4(const struct pkt_src *src, struct l3_info *l3)
{
	struct iphdr iph;
	__u32 ihl;

	if (pkt_load(src, 0, &iph, sizeof(iph)))
		return -1;
	if (iph.version != 4)
		return -1;
	ihl = iph.ihl * 4;
	if (ihl < sizeof(iph))
		return -1;
	__builtin_memcpy(l3->saddr, &iph.saddr, 4);
	__builtin_memcpy(l3->daddr, &iph.daddr, 4);
	l3->family = IMDS_AF_INET;
	l3->proto = iph.protocol;
	l3->ttl = iph.ttl;
	l3->ip_id = bpf_ntohs(iph.id);
	l3->l4_off = ihl;
	l3->l4_len = bpf_ntohs(iph.tot_len) > ihl ? bpf_ntohs(iph.tot_len) - ihl : 0;
	return 0;
}

static __always_inline int parse_ipv6(const struct pkt_src *src, struct l3_info *l3)
{
	struct ipv6hdr ip6;

	if (pkt_load(src, 0, &ip6, sizeof(ip6)))
		return -1;
	if (ip6.version != 6)
		return -1;
	__builtin_memcpy(l3->saddr, &ip6.saddr, 16);
	__builtin_memcpy(l3->daddr, &ip6.daddr, 16);
	l3->family = IMDS_AF_INET6;
	/* Extension headers are not followed: IMDS traffic carries none. */
	l3->proto = ip6.nexthdr;
	l3->ttl = ip6.hop_limit;
	l3->ip_id = 0;
	l3->l4_off = sizeof(ip6);
	l3->l4_len = bpf_ntohs(ip6.payload_len);
	return 0;
}

static __always_inline __u32 match_addr(__u8 family, const __u8 *addr)
{
	if (family == IMDS_AF_INET) {
		__be32 a;

		__builtin_memcpy(&a, addr, 4);
		return match_v4_addr(a);
	}
	return match_v6_addr((const __u32 *)addr);
}

static __always_inline void copy_l3(struct imds_event *e, const struct l3_info *l3)
{
	__builtin_memcpy(e->saddr, l3->saddr, 16);
	__builtin_memcpy(e->daddr, l3->daddr, 16);
	e->family = l3->family;
	e->ip_proto = l3->proto;
	e->ttl = l3->ttl;
	e->ip_id = l3->ip_id;
}

/*
 * An ICMP error travelling toward a target quotes the packet it is about:
 * for imdstrace, a response from the target that expired on this node.
 * Returns the target index of the quoted packet's source, or NO_TARGET.
 */
static __always_inline __u32 parse_icmp_quote(const struct pkt_src *src, const struct l3_info *outer,
					      struct l3_info *inner, struct tcphdr *th,
					      __u8 *type, __u8 *code)
{
	struct pkt_src quote = *src;
	__u8 hdr[2];
	__u32 idx;

	if (pkt_load(src, outer->l4_off, hdr, sizeof(hdr)))
		return IMDS_NO_TARGET;
	*type = hdr[0];
	*code = hdr[1];
	if (outer->family == IMDS_AF_INET) {
		if (hdr[0] != ICMP_TIME_EXCEEDED && hdr[0] != ICMP_DEST_UNREACH)
			return IMDS_NO_TARGET;
	} else {
		if (hdr[0] != ICMPV6_TIME_EXCEED && hdr[0] != ICMPV6_DEST_UNREACH)
			return IMDS_NO_TARGET;
	}
	/* The quoted packet starts after the 8-byte ICMP header. */
	if (src->skb)
		quote.l3_off += outer->l4_off + 8;
	else
		quote.l3 += outer->l4_off + 8;
	if (outer->family == IMDS_AF_INET) {
		if (parse_ipv4(&quote, inner))
			return IMDS_NO_TARGET;
	} else {
		if (parse_ipv6(&quote, inner))
			return IMDS_NO_TARGET;
	}
	if (inner->proto != IPPROTO_TCP)
		return IMDS_NO_TARGET;
	idx = match_addr(inner->family, inner->saddr);
	if (idx == IMDS_NO_TARGET)
		return IMDS_NO_TARGET;
	/* RFC 792 guarantees 8 bytes of the quoted L4 header: ports and seq. */
	__builtin_memset(th, 0, sizeof(*th));
	if (pkt_load(&quote, inner->l4_off, th, 8))
		return IMDS_NO_TARGET;
	if (!port_matches(inner->family, idx, th->source))
		return IMDS_NO_TARGET;
	return idx;
}

static __always_inline struct imds_event *reserve(__u8 hook)
{
	struct imds_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);

	if (!e) {
		count_lost(hook);
		return NULL;
	}
	event_init(e, hook);
	return e;
}

/*
 * Wake the reader only when the data waiting crosses a batch (1/8 of the
 * ring, at most 64 KiB) or half the ring: it polls every 100 ms anyway and
 * drains on each return.  Under load that is one wakeup per few hundred
 * records instead of one per record whenever the reader has caught up (a
 * context switch each), and never one per record while it is behind (a
 * wakeup costs microseconds: forcing it on every record of a full ring made
 * each record ~25x dearer).  `avail` counts this record (`len` bytes).
 */
static __always_inline __u64 wakeup_flag(__u64 avail, __u64 len)
{
	__u64 size = bpf_ringbuf_query(&events, BPF_RB_RING_SIZE);
	__u64 batch = size / 8;
	__u64 rec = (len + 8 + 7) & ~7ULL; /* the ring's own 8-byte header, rounded */

	if (batch > 65536)
		batch = 65536;
	if ((avail >= batch && avail < batch + rec) || (avail >= size / 2 && avail < size / 2 + rec))
		return BPF_RB_FORCE_WAKEUP;
	return BPF_RB_NO_WAKEUP;
}

static __always_inline void submit(struct imds_event *e, __u8 hook)
{
	bpf_ringbuf_submit(e, wakeup_flag(bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA), sizeof(*e)));
	count(hook, IMDS_CNT_EMITTED);
}

/* A record with a payload tail: staged per CPU, submitted by copy. */
static __always_inline struct imds_event_buf *stage(__u8 hook)
{
	__u32 zero = 0;
	struct imds_event_buf *b = bpf_map_lookup_elem(&staging, &zero);

	if (b)
		event_init(&b->hdr, hook);
	return b;
}

static __always_inline void submit_staged(struct imds_event_buf *b, __u8 hook)
{
	__u64 size = sizeof(b->hdr) + (b->hdr.copied & (IMDS_PAYLOAD_MAX * 2 - 1));

	if (size > sizeof(*b))
		size = sizeof(*b);
	if (bpf_ringbuf_output(&events, b, size,
			       wakeup_flag(bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) + size, size))) {
		count_lost(hook);
		return;
	}
	count(hook, IMDS_CNT_EMITTED);
}

/*
 * Payload bytes a record of this TCP packet copies: what the skb holds, at
 * most IMDS_PAYLOAD_MAX.  0 means a header-only record.
 */
static __always_inline __u32 payload_copy_len(struct __sk_buff *skb, __u32 l3_off, const struct l3_info *l3,
					      const struct tcphdr *th)
{
	__u32 payload_off = l3->l4_off + th->doff * 4;
	__u32 payload_len = l3->l4_len > th->doff * 4 ? l3->l4_len - th->doff * 4 : 0;
	__u64 n, avail;

	avail = skb->len;
	avail = avail > (__u64)l3_off + payload_off ? avail - l3_off - payload_off : 0;
	n = payload_len;
	if (n > IMDS_PAYLOAD_MAX)
		n = IMDS_PAYLOAD_MAX;
	if (n > avail)
		n = avail;
	return n;
}

/* A record for `n` payload bytes: staged per CPU when there are any, else reserved on the ring. */
static __always_inline struct imds_event *start_record(__u8 hook, __u32 n, struct imds_event_buf **buf)
{
	*buf = NULL;
	if (n > 0) {
		*buf = stage(hook);
		return *buf ? &(*buf)->hdr : NULL;
	}
	return reserve(hook);
}

/* Copy the payload tail (when staged), flag a cut one, and submit. */
static __always_inline void finish_record(struct imds_event *e, struct imds_event_buf *buf, struct __sk_buff *skb,
					  __u32 l3_off, const struct l3_info *l3, const struct tcphdr *th, __u64 n,
					  __u8 hook)
{
	__u32 payload_off = l3->l4_off + th->doff * 4;
	__u32 payload_len = l3->l4_len > th->doff * 4 ? l3->l4_len - th->doff * 4 : 0;

	e->payload_len = payload_len;
	if (buf && n > 0) {
		/*
		 * For n in [1, MAX] this is n itself, but written so that every
		 * verifier sees the range [1, MAX] on the very register passed
		 * to the helper: 6.1 and 6.12 do not carry a bound from the
		 * compiler's "n - 1 < MAX" form back to n.
		 */
		n = ((n - 1) & (IMDS_PAYLOAD_MAX - 1)) + 1;
		if (bpf_skb_load_bytes(skb, l3_off + payload_off, buf->payload, n) == 0)
			e->copied = n;
	}
	/* Longer than the copy, or the skb holds less than the IP length says. */
	if (e->copied < payload_len)
		e->flags |= IMDS_F_TRUNCATED;
	if (buf)
		submit_staged(buf, hook);
	else
		submit(e, hook);
}

static __always_inline void followed_key_of(struct followed_key *k, __u8 family, const __u8 *addr, __be16 port)
{
	__builtin_memcpy(k->addr, addr, 16);
	k->port = port;
	k->family = family;
	k->pad = 0;
}

/* Follow a client endpoint from now on (see the map `followed`). */
static __always_inline void follow(const struct l3_info *l3, __be16 client_port, __u8 target_index,
				   bool via_proxy)
{
	struct followed_key k;
	struct followed_flow f = {};

	followed_key_of(&k, l3->family, l3->saddr, client_port);
	f.ts_ns = bpf_ktime_get_ns();
	f.target_index = target_index;
	f.via_proxy = via_proxy;
	bpf_map_update_elem(&followed, &k, &f, BPF_ANY);
	if (!following)
		following = 1;
	if (via_proxy && !proxied)
		proxied = 1;
}

/*
 * A socket of this machine sends FROM a target address: it answers for
 * the metadata endpoint (a node-local agent on its own address, or a proxy
 * the request was DNATed or REDIRECTed to; cgroup egress runs after
 * POSTROUTING, so the reply is already un-NATed).  Its own bound address
 * says which.
 */
static __always_inline void note_answering_socket(struct imds_event *e, struct __sk_buff *skb)
{
	struct bpf_sock *sk = skb->sk;

	if (!sk)
		return;
	sk = bpf_sk_fullsock(sk);
	if (!sk)
		return;
	if (sk->family == IMDS_AF_INET_KERNEL) {
		__u32 a = sk->src_ip4;

		__builtin_memcpy(e->sock_addr, &a, 4);
	} else {
		__u32 a[4];

		a[0] = sk->src_ip6[0];
		a[1] = sk->src_ip6[1];
		a[2] = sk->src_ip6[2];
		a[3] = sk->src_ip6[3];
		__builtin_memcpy(e->sock_addr, a, 16);
	}
	e->sock_port = bpf_htons((__u16)sk->src_port);
}

/*
 * Target traffic seen by an skb program.  `from_target` says which address
 * the fast path matched: the source (ingress hooks) or the destination.
 */
static __attribute__((noinline)) int observe_target(struct __sk_buff *skb, __u32 l3_off, __u8 hook,
						    bool from_target, bool ipv6)
{
	struct pkt_src src = { .skb = skb, .l3_off = l3_off };
	struct l3_info l3 = {}, inner = {};
	struct tcphdr th = {};
	struct imds_event_buf *buf = NULL;
	struct imds_event *e;
	__u8 icmp_type = 0, icmp_code = 0, dir;
	__u32 idx, n = 0;

	if (ipv6 ? parse_ipv6(&src, &l3) : parse_ipv4(&src, &l3))
		return 0;
	idx = match_addr(l3.family, from_target ? l3.saddr : l3.daddr);
	if (idx == IMDS_NO_TARGET)
		return 0;

	/* From here on the packet is target traffic (1), observed or not. */
	if (l3.proto == IPPROTO_TCP) {
		if (pkt_load(&src, l3.l4_off, &th, sizeof(th)))
			return 0;
		/* A data offset below the fixed header is not TCP any stack
		 * accepts; the payload offset derived from it would be bogus. */
		if (th.doff < 5)
			return 1;
		if (!port_matches(l3.family, idx, from_target ? th.source : th.dest))
			return 1;
		dir = from_target ? IMDS_DIR_FROM_TARGET : IMDS_DIR_TO_TARGET;
	} else if (!from_target && (l3.proto == IPPROTO_ICMP || l3.proto == IPPROTO_ICMPV6)) {
		idx = parse_icmp_quote(&src, &l3, &inner, &th, &icmp_type, &icmp_code);
		if (idx == IMDS_NO_TARGET)
			return 1;
		dir = IMDS_DIR_ICMP_ABOUT;
	} else {
		return 1;
	}

	count(hook, IMDS_CNT_SEEN);
	if (dir != IMDS_DIR_ICMP_ABOUT)
		n = payload_copy_len(skb, l3_off, &l3, &th);
	e = start_record(hook, n, &buf);
	if (!e)
		return 1;
	e->ifindex = skb->ifindex;
	e->direction = dir;
	e->target_index = target_table_index(l3.family, idx);
	if (hook == IMDS_HOOK_CGROUP_EGRESS || hook == IMDS_HOOK_CGROUP_INGRESS)
		e->cgroup_id = bpf_skb_cgroup_id(skb);
	e->sk_cookie = bpf_get_socket_cookie(skb);
	if (e->sk_cookie)
		e->flags |= IMDS_F_SK_PRESENT;

	if (dir == IMDS_DIR_ICMP_ABOUT) {
		copy_l3(e, &inner);
		e->ip_proto = l3.proto; /* the carrier is ICMP; the quote is TCP */
		e->flags |= IMDS_F_ICMP_QUOTE;
		e->icmp_type = icmp_type;
		e->icmp_code = icmp_code;
		fill_tcp(e, &th);
		e->tcp_flags = 0; /* only 8 quoted bytes are guaranteed */
		submit(e, hook);
		return 1;
	}

	if (hook == IMDS_HOOK_CGROUP_EGRESS) {
		if (dir == IMDS_DIR_FROM_TARGET)
			note_answering_socket(e, skb);
		else if (th.syn && !th.ack)
			follow(&l3, th.source, e->target_index, false);
	}
	copy_l3(e, &l3);
	fill_tcp(e, &th);
	finish_record(e, buf, skb, l3_off, &l3, &th, n, hook);
	return 1;
}

/*
 * "GET http://169.254.1" / "PUT http://[fd00:ec2": the first 20 bytes of an
 * absolute-URI request (RFC 9112 3.2.2, what a client sends to an HTTP
 * proxy) for 169.254.169.254 or 169.254.170.23, or fd00:ec2::254/::23.
 * Which target exactly, userspace reads from the URI.
 */
static __always_inline bool absolute_uri_to_target(const __u8 *h, __u8 *target_index)
{
	const char *m = (const char *)h;

	if (!((m[0] == 'G' && m[1] == 'E' && m[2] == 'T') || (m[0] == 'P' && m[1] == 'U' && m[2] == 'T')))
		return false;
	if (m[3] != ' ' || m[4] != 'h' || m[5] != 't' || m[6] != 't' || m[7] != 'p' || m[8] != ':' ||
	    m[9] != '/' || m[10] != '/')
		return false;
	if (m[11] == '1' && m[12] == '6' && m[13] == '9' && m[14] == '.' && m[15] == '2' && m[16] == '5' &&
	    m[17] == '4' && m[18] == '.' && m[19] == '1') {
		*target_index = 0;
		return n_targets_v4 > 0;
	}
	if (m[11] == '[' && m[12] == 'f' && m[13] == 'd' && m[14] == '0' && m[15] == '0' && m[16] == ':' &&
	    m[17] == 'e' && m[18] == 'c' && m[19] == '2') {
		*target_index = target_v6_base;
		return n_targets_v6 > 0;
	}
	return false;
}

/*
 * A pod's TCP segment that is not to or from a target: the first segment
 * of an absolute-URI metadata request to an HTTP proxy, or a packet of a
 * connection that carried one (followed by its client endpoint).
 */
static __attribute__((noinline)) int observe_proxied(struct __sk_buff *skb, __u32 l3_off, __u8 hook, bool ipv6)
{
	struct pkt_src src = { .skb = skb, .l3_off = l3_off };
	bool egress = hook == IMDS_HOOK_CGROUP_EGRESS;
	struct followed_flow *flow = NULL;
	struct l3_info l3 = {};
	struct tcphdr th = {};
	struct followed_key k;
	struct imds_event_buf *buf = NULL;
	struct imds_event *e;
	__u8 head[20], idx = 0;
	__u32 payload_off, n;

	if (ipv6 ? parse_ipv6(&src, &l3) : parse_ipv4(&src, &l3))
		return 0;
	if (l3.proto != IPPROTO_TCP || pkt_load(&src, l3.l4_off, &th, sizeof(th)) || th.doff < 5)
		return 0;
	if (proxied) {
		if (egress)
			followed_key_of(&k, l3.family, l3.saddr, th.source);
		else
			followed_key_of(&k, l3.family, l3.daddr, th.dest);
		flow = bpf_map_lookup_elem(&followed, &k);
		if (flow && !flow->via_proxy)
			return 0;
	}
	if (!flow) {
		if (!egress || !detect_proxy || !proxy_port(th.dest))
			return 0;
		payload_off = l3.l4_off + th.doff * 4;
		if (l3.l4_len < th.doff * 4 + sizeof(head) || pkt_load(&src, payload_off, head, sizeof(head)))
			return 0;
		if (!absolute_uri_to_target(head, &idx))
			return 0;
		follow(&l3, th.source, idx, true);
	} else {
		idx = flow->target_index;
	}

	count(hook, IMDS_CNT_SEEN);
	n = payload_copy_len(skb, l3_off, &l3, &th);
	e = start_record(hook, n, &buf);
	if (!e)
		return 0;
	e->ifindex = skb->ifindex;
	e->direction = egress ? IMDS_DIR_TO_TARGET : IMDS_DIR_FROM_TARGET;
	e->target_index = idx;
	e->flags |= IMDS_F_VIA_PROXY;
	e->cgroup_id = bpf_skb_cgroup_id(skb);
	e->sk_cookie = bpf_get_socket_cookie(skb);
	if (e->sk_cookie)
		e->flags |= IMDS_F_SK_PRESENT;
	copy_l3(e, &l3);
	fill_tcp(e, &th);
	finish_record(e, buf, skb, l3_off, &l3, &th, n, hook);
	return 0;
}

/*
 * The fast path every packet of the node pays: one bounds check, address
 * loads, compares against the targets.  Non-linear heads fall back to the
 * full parser, which copies the header out.  cgroup egress also catches a
 * local socket answering FROM a target address, and (TCP segments with a
 * payload, or every TCP packet once a pod was seen using a proxy) requests
 * to an HTTP proxy; cgroup ingress, once a proxy was seen, the proxy's
 * answers.
 */
static __always_inline void observe_skb(struct __sk_buff *skb, __u32 l3_off, __u8 hook, bool from_target)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	bool cgroup_egress = hook == IMDS_HOOK_CGROUP_EGRESS;
	bool cgroup_ingress = hook == IMDS_HOOK_CGROUP_INGRESS;

	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		struct iphdr *iph = data + l3_off;

		if ((void *)(iph + 1) > data_end) {
			/* Also where BPF_PROG_TEST_RUN gives cgroup_skb no data pointers (before ~6.13). */
			if (observe_target(skb, l3_off, hook, from_target, false))
				return;
			if (cgroup_egress && observe_target(skb, l3_off, hook, true, false))
				return;
			if (cgroup_egress || (cgroup_ingress && proxied))
				observe_proxied(skb, l3_off, hook, false);
			return;
		}
		if (match_v4_addr(from_target ? iph->saddr : iph->daddr) != IMDS_NO_TARGET) {
			observe_target(skb, l3_off, hook, from_target, false);
			return;
		}
		if (cgroup_egress && match_v4_addr(iph->saddr) != IMDS_NO_TARGET) {
			observe_target(skb, l3_off, hook, true, false);
			return;
		}
		if (iph->protocol != IPPROTO_TCP)
			return;
		if (cgroup_ingress) {
			if (proxied)
				observe_proxied(skb, l3_off, hook, false);
			return;
		}
		if (!cgroup_egress)
			return;
		if (proxied) {
			observe_proxied(skb, l3_off, hook, false);
			return;
		}
		/* 40: a TCP header and 20 bytes, the least an absolute-URI request head needs. */
		if (!detect_proxy || bpf_ntohs(iph->tot_len) < iph->ihl * 4 + 40)
			return;
		{
			struct tcphdr *th = (void *)iph + iph->ihl * 4;

			if ((void *)(th + 1) <= data_end && !proxy_port(th->dest))
				return;
		}
		observe_proxied(skb, l3_off, hook, false);
	} else if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = data + l3_off;

		if (n_targets_v6 == 0)
			return;
		if ((void *)(ip6 + 1) > data_end) {
			if (observe_target(skb, l3_off, hook, from_target, true))
				return;
			if (cgroup_egress && observe_target(skb, l3_off, hook, true, true))
				return;
			if (cgroup_egress || (cgroup_ingress && proxied))
				observe_proxied(skb, l3_off, hook, true);
			return;
		}
		if (match_v6_addr(from_target ? (const __u32 *)&ip6->saddr : (const __u32 *)&ip6->daddr) !=
		    IMDS_NO_TARGET) {
			observe_target(skb, l3_off, hook, from_target, true);
			return;
		}
		if (cgroup_egress && match_v6_addr((const __u32 *)&ip6->saddr) != IMDS_NO_TARGET) {
			observe_target(skb, l3_off, hook, true, true);
			return;
		}
		/* Extension headers are not walked: a proxied request behind one is missed. */
		if (ip6->nexthdr != IPPROTO_TCP)
			return;
		if (cgroup_ingress) {
			if (proxied)
				observe_proxied(skb, l3_off, hook, true);
			return;
		}
		if (!cgroup_egress)
			return;
		if (proxied) {
			observe_proxied(skb, l3_off, hook, true);
			return;
		}
		if (!detect_proxy || bpf_ntohs(ip6->payload_len) < 40)
			return;
		{
			struct tcphdr *th = (void *)(ip6 + 1);

			if ((void *)(th + 1) <= data_end && !proxy_port(th->dest))
				return;
		}
		observe_proxied(skb, l3_off, hook, true);
	}
}

/* tc on an Ethernet uplink: the IP header follows the 14-byte MAC header. */
#define UPLINK_L2_LEN 14

SEC("tc")
int uplink_ingress(struct __sk_buff *skb)
{
	observe_skb(skb, UPLINK_L2_LEN, IMDS_HOOK_UPLINK_INGRESS, true);
	return TC_ACT_UNSPEC;
}

SEC("tc")
int uplink_egress(struct __sk_buff *skb)
{
	observe_skb(skb, UPLINK_L2_LEN, IMDS_HOOK_UPLINK_EGRESS, false);
	return TC_ACT_UNSPEC;
}

/* cgroup_skb programs see the packet from the IP header on. */
SEC("cgroup_skb/egress")
int socket_egress(struct __sk_buff *skb)
{
	observe_skb(skb, 0, IMDS_HOOK_CGROUP_EGRESS, false);
	return 1;
}

SEC("cgroup_skb/ingress")
int socket_ingress(struct __sk_buff *skb)
{
	observe_skb(skb, 0, IMDS_HOOK_CGROUP_INGRESS, true);
	return 1;
}

/* A kernel skb on its way out: decode it from its network header. */
static __always_inline int kernel_skb_l3(struct sk_buff *skb, struct pkt_src *src, __u8 *version)
{
	unsigned char *head = BPF_CORE_READ(skb, head);
	__u16 nh = BPF_CORE_READ(skb, network_header);
	__u8 first;

	if (!head || nh == (__u16)~0U)
		return -1;
	src->skb = NULL;
	src->l3 = head + nh;
	if (bpf_probe_read_kernel(&first, 1, src->l3))
		return -1;
	*version = first >> 4;
	return 0;
}

/*
 * The network namespace an skb is in: the receiving socket's when the drop
 * tracepoint names one, else its device's, else (netfilter OUTPUT, before a
 * device is set) its socket's.  The device comes before skb->sk: an skb that
 * crossed a veth keeps the sending socket (v4.19, "skbuff: preserve sock
 * reference when scrubbing the skb") while it is already in the next
 * namespace.  Userspace keeps only events from this node's namespaces: the
 * tracepoints fire for every namespace of the machine.
 */
static __always_inline __u32 kernel_skb_netns(struct sk_buff *skb, struct sock *rx_sk)
{
	struct net_device *dev;
	struct sock *sk;

	if (rx_sk)
		return BPF_CORE_READ(rx_sk, __sk_common.skc_net.net, ns.inum);
	dev = BPF_CORE_READ(skb, dev);
	if (dev)
		return BPF_CORE_READ(dev, nd_net.net, ns.inum);
	sk = BPF_CORE_READ(skb, sk);
	if (sk)
		return BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);
	return 0;
}

/*
 * The kfree_skb program runs for every drop of the machine.  A non-target
 * drop is rejected here with one read of kernel memory: skb->head and
 * skb->network_header are plain loads through the tracepoint's BTF pointer
 * (no helper call), then one copy of the fixed IP header and an address
 * compare.  Only what may be target traffic pays the full parse below.
 */
static __always_inline bool kernel_skb_maybe_target(struct sk_buff *skb)
{
	unsigned char *head = skb->head;
	__u16 nh = skb->network_header;
	union {
		struct iphdr v4;
		struct ipv6hdr v6;
	} ip;

	if (!head || nh == (__u16)~0U)
		return false;
	if (bpf_probe_read_kernel(&ip.v4, sizeof(ip.v4), head + nh))
		return false;
	/* Once a connection is followed (DNAT), any TCP drop may be one of it. */
	if (ip.v4.version == 4)
		return ip.v4.protocol == IPPROTO_TCP &&
		       (following || match_v4_addr(ip.v4.saddr) != IMDS_NO_TARGET ||
			match_v4_addr(ip.v4.daddr) != IMDS_NO_TARGET);
	if (ip.v4.version != 6 || n_targets_v6 == 0)
		return false;
	if (bpf_probe_read_kernel(&ip.v6, sizeof(ip.v6), head + nh))
		return false;
	return (following && ip.v6.nexthdr == IPPROTO_TCP) ||
	       match_v6_addr((const __u32 *)&ip.v6.saddr) != IMDS_NO_TARGET ||
	       match_v6_addr((const __u32 *)&ip.v6.daddr) != IMDS_NO_TARGET;
}

/*
 * Match a kernel skb against the targets in either direction, else (once
 * a connection is followed) against the followed client endpoints: a
 * packet whose destination DNAT rewrote, or the reply of the answering
 * socket before un-NAT.  *followed_idx is the target table index of a
 * followed match, IMDS_NO_TARGET otherwise.
 */
static __always_inline int classify_kernel_skb(struct sk_buff *skb, struct l3_info *l3, struct tcphdr *th,
					       __u32 *idx, __u8 *dir, __u8 *followed_idx, __u8 *via_proxy)
{
	struct followed_flow *flow;
	struct followed_key k;
	struct pkt_src src = {};
	__u8 version;

	*followed_idx = IMDS_NO_TARGET;
	*via_proxy = 0;
	if (kernel_skb_l3(skb, &src, &version))
		return -1;
	if (version == 4) {
		if (parse_ipv4(&src, l3))
			return -1;
	} else if (version == 6) {
		if (n_targets_v6 == 0 || parse_ipv6(&src, l3))
			return -1;
	} else {
		return -1;
	}
	if (l3->proto != IPPROTO_TCP)
		return -1;
	*dir = IMDS_DIR_FROM_TARGET;
	*idx = match_addr(l3->family, l3->saddr);
	if (*idx == IMDS_NO_TARGET) {
		*dir = IMDS_DIR_TO_TARGET;
		*idx = match_addr(l3->family, l3->daddr);
	}
	if (*idx == IMDS_NO_TARGET && !following)
		return -1;
	if (pkt_load(&src, l3->l4_off, th, sizeof(*th)))
		return -1;
	if (*idx != IMDS_NO_TARGET)
		return port_matches(l3->family, *idx, *dir == IMDS_DIR_FROM_TARGET ? th->source : th->dest) ? 0 : -1;

	followed_key_of(&k, l3->family, l3->saddr, th->source);
	*dir = IMDS_DIR_TO_TARGET;
	flow = bpf_map_lookup_elem(&followed, &k);
	if (!flow) {
		followed_key_of(&k, l3->family, l3->daddr, th->dest);
		*dir = IMDS_DIR_FROM_TARGET;
		flow = bpf_map_lookup_elem(&followed, &k);
	}
	if (!flow)
		return -1;
	*followed_idx = flow->target_index;
	*via_proxy = flow->via_proxy;
	return 0;
}

static __always_inline void fill_kernel_event(struct imds_event *e, struct sk_buff *skb,
					      const struct l3_info *l3, const struct tcphdr *th, __u32 idx,
					      __u8 dir, __u8 followed_idx, __u8 via_proxy, struct sock *rx_sk)
{
	struct net_device *dev = BPF_CORE_READ(skb, dev);

	copy_l3(e, l3);
	fill_tcp(e, th);
	e->direction = dir;
	if (followed_idx != IMDS_NO_TARGET) {
		e->target_index = followed_idx;
		e->flags |= via_proxy ? IMDS_F_VIA_PROXY : IMDS_F_FOLLOWED;
	} else {
		e->target_index = target_table_index(l3->family, idx);
	}
	if (dev) {
		e->ifindex = BPF_CORE_READ(dev, ifindex);
		/* ifindexes repeat across namespaces: the name, read here, is
		 * the one in the device's own namespace. */
		BPF_CORE_READ_STR_INTO(&e->comm, dev, name);
	}
	e->netns = kernel_skb_netns(skb, rx_sk);
	if (BPF_CORE_READ(skb, sk))
		e->flags |= IMDS_F_SK_PRESENT;
	e->payload_len = l3->l4_len > th->doff * 4 ? l3->l4_len - th->doff * 4 : 0;
}

/*
 * kfree_skb(skb, location[, reason[, rx_sk]]).  The reason argument exists
 * since v5.17 (commit c504e5c2f964 "net: skb: introduce kfree_skb_reason()");
 * the loader clears kfree_skb_has_reason on older kernels so the verifier
 * never sees the ctx[2] access there.  v6.2 routes consume_skb() through
 * the same path with SKB_CONSUMED: that is not a drop.
 */
SEC("tp_btf/kfree_skb")
int BPF_PROG(observe_drop, struct sk_buff *skb, void *location)
{
	struct l3_info l3 = {};
	struct tcphdr th = {};
	struct imds_event *e;
	__u32 reason = 0, idx;
	__u8 dir, followed_idx, via_proxy;

	if (kfree_skb_has_reason) {
		reason = (__u32)ctx[2];
		if (bpf_core_enum_value_exists(enum skb_drop_reason, SKB_CONSUMED) &&
		    reason == bpf_core_enum_value(enum skb_drop_reason, SKB_CONSUMED))
			return 0;
	}
	if (!kernel_skb_maybe_target(skb))
		return 0;
	if (classify_kernel_skb(skb, &l3, &th, &idx, &dir, &followed_idx, &via_proxy))
		return 0;

	count(IMDS_HOOK_DROP, IMDS_CNT_SEEN);
	count(IMDS_HOOK_DROP, IMDS_CNT_DROPS_SEEN);
	e = reserve(IMDS_HOOK_DROP);
	if (!e)
		return 0;
	fill_kernel_event(e, skb, &l3, &th, idx, dir, followed_idx, via_proxy,
			  kfree_skb_has_rx_sk ? (struct sock *)ctx[3] : NULL);
	e->location = (__u64)location;
	e->drop_reason = reason;
	if (kfree_skb_has_reason)
		e->flags |= IMDS_F_HAS_REASON;
	submit(e, IMDS_HOOK_DROP);
	return 0;
}

/*
 * icmp_send(skb, type, code): the tracepoint exists since v6.9 (commit
 * db3efdcf70c7 "net/ipv4: add tracepoint for icmp_send").  The loader only
 * loads this program where the kernel's BTF has btf_trace_icmp_send; on
 * older kernels the ICMP error is seen leaving the uplink instead.
 */
SEC("tp_btf/icmp_send")
int BPF_PROG(observe_icmp_send, struct sk_buff *skb, int type, int code)
{
	struct l3_info l3 = {};
	struct tcphdr th = {};
	struct imds_event *e;
	__u32 idx;
	__u8 dir, followed_idx, via_proxy;

	if (classify_kernel_skb(skb, &l3, &th, &idx, &dir, &followed_idx, &via_proxy))
		return 0;
	count(IMDS_HOOK_ICMP_SEND, IMDS_CNT_SEEN);
	e = reserve(IMDS_HOOK_ICMP_SEND);
	if (!e)
		return 0;
	fill_kernel_event(e, skb, &l3, &th, idx, dir, followed_idx, via_proxy, NULL);
	e->icmp_type = type;
	e->icmp_code = code;
	submit(e, IMDS_HOOK_ICMP_SEND);
	return 0;
}

/*
 * Who connects: the transition to SYN_SENT runs in connect(), in the
 * context of the task that called it.  The socket cookie ties this event to
 * the packets the socket sends (cgroup_skb and tc see the same cookie).
 * The source port is not assigned yet at this point, hence the cookie.
 */
#define IMDS_TCP_SYN_SENT 2

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(observe_connect, struct sock *sk, int oldstate, int newstate)
{
	struct imds_event *e;
	__u8 daddr[16] = {};
	__u16 family;
	__be16 dport;
	__u32 idx;
	__u8 fam;

	if (newstate != IMDS_TCP_SYN_SENT)
		return 0;
	family = BPF_CORE_READ(sk, __sk_common.skc_family);
	dport = BPF_CORE_READ(sk, __sk_common.skc_dport);
	if (family == IMDS_AF_INET_KERNEL) {
		__be32 a = BPF_CORE_READ(sk, __sk_common.skc_daddr);

		__builtin_memcpy(daddr, &a, 4);
		fam = IMDS_AF_INET;
	} else if (family == IMDS_AF_INET6_KERNEL && n_targets_v6) {
		BPF_CORE_READ_INTO(&daddr, sk, __sk_common.skc_v6_daddr);
		fam = IMDS_AF_INET6;
	} else {
		return 0;
	}
	idx = match_addr(fam, daddr);
	if (idx == IMDS_NO_TARGET || !port_matches(fam, idx, dport))
		return 0;
	count(IMDS_HOOK_CONNECT, IMDS_CNT_SEEN);
	e = reserve(IMDS_HOOK_CONNECT);
	if (!e)
		return 0;
	e->direction = IMDS_DIR_TO_TARGET;
	e->family = fam;
	e->ip_proto = IPPROTO_TCP;
	__builtin_memcpy(e->daddr, daddr, 16);
	e->dport = dport;
	e->target_index = target_table_index(fam, idx);
	e->sk_cookie = bpf_get_socket_cookie(sk);
	e->cgroup_id = bpf_get_current_cgroup_id();
	e->pid = bpf_get_current_pid_tgid() >> 32;
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	e->netns = BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);
	e->flags |= IMDS_F_SK_PRESENT;
	if (bpf_current_task_under_cgroup(&traced_cgroup, 0) == 1)
		e->flags |= IMDS_F_IN_CGROUP;
	submit(e, IMDS_HOOK_CONNECT);
	return 0;
}

/*
 * connect(2) to a target that fails before any packet exists: no route
 * (ENETUNREACH, EHOSTUNREACH), a policy (EPERM from a cgroup connect4/6
 * program, EACCES from an LSM), no source address (EADDRNOTAVAIL), the
 * family switched off (EAFNOSUPPORT).  Raw syscall tracepoints: attached
 * by BTF like the others (classic per-syscall tracepoints need tracefs,
 * which a DaemonSet may not mount).  sys_enter filters on the syscall
 * number first; sys_exit costs one load until a connect to a target is
 * pending.
 */
#if defined(__TARGET_ARCH_x86)
#define IMDS_NR_CONNECT 42
#elif defined(__TARGET_ARCH_arm64)
#define IMDS_NR_CONNECT 203
#else
#error "connect(2) syscall number for this architecture"
#endif

struct pending_connect {
	__u8 daddr[16];
	__be16 dport;
	__u8 family;
	__u8 target_index;
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 1024);
	__type(key, __u64); /* pid_tgid of the calling thread */
	__type(value, struct pending_connect);
} pending_connects SEC(".maps");

volatile __u32 connects_pending = 0;

struct sockaddr_in_user {
	__u16 family;
	__be16 port;
	__be32 addr;
};

struct sockaddr_in6_user {
	__u16 family;
	__be16 port;
	__u32 flowinfo;
	__u32 addr[4];
	__u32 scope_id;
};

SEC("tp_btf/sys_enter")
int BPF_PROG(observe_connect_enter, struct pt_regs *regs, long id)
{
	struct sockaddr_in6_user sa6;
	struct pending_connect p = {};
	__u64 tid = bpf_get_current_pid_tgid();
	const void *uaddr;
	__u32 idx;

	if (id != IMDS_NR_CONNECT)
		return 0;
	uaddr = (const void *)IMDS_SYSCALL_ARG2(regs);
	if (bpf_probe_read_user(&sa6, sizeof(struct sockaddr_in_user), uaddr))
		return 0;
	if (sa6.family == IMDS_AF_INET_KERNEL) {
		struct sockaddr_in_user *sa = (struct sockaddr_in_user *)&sa6;

		idx = match_v4_addr(sa->addr);
		if (idx == IMDS_NO_TARGET || !port_matches(IMDS_AF_INET, idx, sa->port))
			return 0;
		__builtin_memcpy(p.daddr, &sa->addr, 4);
		p.dport = sa->port;
		p.family = IMDS_AF_INET;
	} else if (sa6.family == IMDS_AF_INET6_KERNEL) {
		if (bpf_probe_read_user(&sa6, sizeof(sa6), uaddr))
			return 0;
		/* ::ffff:169.254.169.254 on a dual-stack socket is the IPv4 target. */
		if (sa6.addr[0] == 0 && sa6.addr[1] == 0 && sa6.addr[2] == bpf_htonl(0xffff)) {
			idx = match_v4_addr(sa6.addr[3]);
			if (idx == IMDS_NO_TARGET || !port_matches(IMDS_AF_INET, idx, sa6.port))
				return 0;
			__builtin_memcpy(p.daddr, &sa6.addr[3], 4);
			p.family = IMDS_AF_INET;
		} else {
			if (n_targets_v6 == 0)
				return 0;
			idx = match_v6_addr(sa6.addr);
			if (idx == IMDS_NO_TARGET || !port_matches(IMDS_AF_INET6, idx, sa6.port))
				return 0;
			__builtin_memcpy(p.daddr, sa6.addr, 16);
			p.family = IMDS_AF_INET6;
		}
		p.dport = sa6.port;
	} else {
		return 0;
	}
	p.target_index = target_table_index(p.family, idx);
	if (bpf_map_update_elem(&pending_connects, &tid, &p, BPF_ANY) == 0)
		__sync_fetch_and_add(&connects_pending, 1);
	return 0;
}

/* Errors connect() reports after its SYN left: the packets tell those. */
static __always_inline bool after_first_packet(long err)
{
	switch (err) {
	case 115: /* EINPROGRESS: a non-blocking connect under way */
	case 114: /* EALREADY */
	case 106: /* EISCONN */
	case 4:   /* EINTR: a blocking connect interrupted, the SYN is out */
	case 110: /* ETIMEDOUT */
	case 111: /* ECONNREFUSED */
	case 104: /* ECONNRESET */
	case 11:  /* EAGAIN */
		return true;
	}
	return false;
}

SEC("tp_btf/sys_exit")
int BPF_PROG(observe_connect_exit, struct pt_regs *regs, long ret)
{
	struct pending_connect *p;
	struct imds_event *e;
	struct task_struct *task;
	__u64 tid;

	if (!connects_pending)
		return 0;
	tid = bpf_get_current_pid_tgid();
	p = bpf_map_lookup_elem(&pending_connects, &tid);
	if (!p)
		return 0;
	if (ret >= 0 || after_first_packet(-ret))
		goto done;
	count(IMDS_HOOK_CONNECT_FAILED, IMDS_CNT_SEEN);
	e = reserve(IMDS_HOOK_CONNECT_FAILED);
	if (!e)
		goto done;
	e->direction = IMDS_DIR_TO_TARGET;
	e->family = p->family;
	e->ip_proto = IPPROTO_TCP;
	__builtin_memcpy(e->daddr, p->daddr, 16);
	e->dport = p->dport;
	e->target_index = p->target_index;
	e->drop_reason = (__u32)-ret;
	e->cgroup_id = bpf_get_current_cgroup_id();
	e->pid = tid >> 32;
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	task = bpf_get_current_task_btf();
	e->netns = BPF_CORE_READ(task, nsproxy, net_ns, ns.inum);
	if (bpf_current_task_under_cgroup(&traced_cgroup, 0) == 1)
		e->flags |= IMDS_F_IN_CGROUP;
	submit(e, IMDS_HOOK_CONNECT_FAILED);
done:
	bpf_map_delete_elem(&pending_connects, &tid);
	__sync_fetch_and_add(&connects_pending, -1);
	return 0;
}
