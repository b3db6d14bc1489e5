// A transaction: one HTTP exchange with a metadata endpoint (or one failed
// connection attempt), with everything the kernel showed about it.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "common/net.hpp"
#include "decode/http.hpp"

namespace imdstrace {

// Drops of one kind folded together: same reason, place, TTL and direction.
// Where a drop happened, from namespaces: "node" (the tracer's own: the
// node's forwarding path, its uplinks), "pod" (a pod's own namespace, the
// client's when known: before the request left the pod or after the
// response reached it), "between" (a namespace of this node that is neither
// the client's nor the node's: a nested pod's own, between its inner
// containers and the node), "" when the kernel named no namespace.
std::string drop_place(std::uint32_t drop_netns, std::uint32_t client_netns, std::uint32_t node_netns);

struct DropRecord {
    std::string reason;    // "IP_INHDR", "NETFILTER_DROP", "" when the kernel gives none
    std::string location;  // "ip_forward"
    std::uint8_t ttl = 0;  // TTL of the dropped packet
    bool response = false; // the dropped packet came from the target
    std::uint32_t count = 0;
    // Where on the path: the network namespace it happened in, placed
    // relative to the client (DropPlace).  netns 0 / place unknown when
    // the kernel did not say.
    std::uint32_t netns = 0;
    std::string place;  // drop_place(): "node", "pod", "between", "" unknown
    // The packet's real destination (or source, for a reply) when DNAT or
    // REDIRECT had rewritten it: the drop happened after the rewrite.
    std::optional<Endpoint> rewritten;
    bool rewritten_to_node = false;  // ... to an address of this node: the packet went to INPUT, not FORWARD
    std::string device;  // the device it was on, named in its own namespace ("" when none)

    // A TCP endpoint's own bookkeeping (duplicate or stale segments,
    // segments for a socket that is gone, a closing socket's queues freed),
    // not a failure of the path: kept as seen, never the basis of a verdict,
    // and never a transaction on its own.
    bool endpoint_bookkeeping() const;
};

// The task that called connect() for the client socket.
struct ProcessInfo {
    std::uint32_t pid = 0;
    std::string comm;
};

// A socket of this machine that answered for the metadata endpoint: seen
// sending from the target address at cgroup egress (after un-NAT).
struct LocalAnswer {
    Endpoint socket;             // its own bound address: the DNAT target, or the target address itself
    std::uint64_t cgroup_id = 0; // its cgroup
    std::optional<ProcessInfo> process;  // its owner, when found (sock_diag + /proc)
    bool in_client_pod = false;  // the socket is the client's own pod's (a REDIRECT in the pod: a sidecar)
};

struct Transaction {
    std::uint64_t id = 0;
    std::uint64_t start_ns = 0;  // CLOCK_MONOTONIC
    std::uint64_t end_ns = 0;

    FlowKey client_flow;                 // as the client's socket sees it (pre-NAT)
    std::optional<FlowKey> uplink_flow;  // as it left the uplink (post-NAT), when seen
    std::uint64_t cgroup_id = 0;         // client socket's cgroup, 0 when not seen
    bool seen_at_socket = false;         // the cgroup hooks saw the client's packets
    bool local_socket_at_uplink = false; // left the uplink with a socket: a node process
    std::optional<ProcessInfo> process;  // from the connect tracepoint, matched by socket cookie

    std::optional<HttpRequest> request;
    std::optional<HttpResponse> response;
    std::optional<std::uint8_t> ttl_sent;             // TTL the client set
    std::optional<std::uint8_t> ttl_at_uplink;        // TTL leaving the uplink
    std::optional<std::uint8_t> response_ttl_at_node; // response TTL arriving on the uplink
    bool response_at_uplink = false;  // response bytes arrived on the uplink
    bool delivered = false;           // response bytes reached the client socket
    bool handshake_answered = false;  // SYN-ACK seen from the target
    bool server_reset = false;        // RST from the target
    bool client_closed = false;       // FIN or RST from the client
    // "This window": the tracer did not see this connection open (no SYN,
    // no connect()): its packets are leftovers of a connection made before
    // tracing began.  Such a transaction never enters a verdict.
    bool opened_before_window = false;
    // Its opening was not seen, but events were lost just before it was
    // first seen: it may be new (its SYN lost) or a leftover of a connection
    // made before tracing, and nothing tells which.  Its evidence is real but
    // of an unknown time: it enters no verdict either.
    bool opening_unseen = false;
    // Events were lost (ring buffer full) while it was open: what is
    // missing may be exactly what would have changed its verdict.
    bool incomplete = false;
    // Events the ring lost (all hooks, all connections) while it was open:
    // an upper bound of what it may miss.  0 unless incomplete.
    std::uint64_t events_lost = 0;

    std::vector<DropRecord> drops;
    std::uint32_t icmp_time_exceeded = 0;
    std::uint32_t retransmits = 0;

    // The path (DESIGN.md "The path"):
    // answered by a socket of this machine, not by IMDS through an uplink
    std::optional<LocalAnswer> answered_on_node;
    // DNAT/REDIRECT sent the request here (seen in a followed packet or drop)
    std::optional<Endpoint> redirected_to;
    // sent as an absolute-URI request to this HTTP proxy (client_flow.server is the proxy)
    std::optional<Endpoint> via_proxy;
    // connect(2) failed before any packet: the errno (ENETUNREACH, EPERM, ...)
    std::optional<int> connect_errno;
    // Whether the request left through an uplink (or its answer came in
    // through one): known only when the uplinks are traced, the client's
    // own packets were seen and the target is not an address of this node.
    // false: whatever answered (or did not), it was not IMDS.
    std::optional<bool> reached_uplink;
    bool uplinks_traced = false;  // the tc hooks ran on this node's uplinks
    bool target_on_node = false;  // the target is an address of this node (a node-local agent)

    std::uint32_t drop_count() const {
        std::uint32_t n = 0;
        for (const auto& d : drops) n += d.count;
        return n;
    }
};

}  // namespace imdstrace
