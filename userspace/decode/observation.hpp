// One packet at one hook, decoded from the BPF event into C++ types.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string_view>

#include "common/net.hpp"
#include "decode/http.hpp"

struct imds_event;

namespace imdstrace {

enum class Hook : std::uint8_t {
    cgroup_egress = 1,   // a local socket sends
    cgroup_ingress = 2,  // delivered to a local socket
    uplink_egress = 3,   // tc egress on an uplink
    uplink_ingress = 4,  // tc ingress on an uplink
    drop = 5,            // skb/kfree_skb
    icmp_send = 6,       // icmp/icmp_send
    connect = 7,         // sock/inet_sock_set_state -> SYN_SENT (who connects)
    connect_failed = 8,  // connect(2) to a target failed before any packet (errno)
};
std::string_view to_string(Hook h);

enum class Direction : std::uint8_t { to_target = 1, from_target = 2, icmp_about = 3 };

namespace tcp {
inline constexpr std::uint8_t fin = 0x01, syn = 0x02, rst = 0x04, psh = 0x08, ack = 0x10;
}

struct Observation {
    std::uint64_t ts_ns = 0;
    Hook hook = Hook::cgroup_egress;
    Direction direction = Direction::to_target;
    // Oriented: client is the non-target side, server the metadata endpoint.
    FlowKey flow;
    std::uint8_t ttl = 0;
    std::uint8_t tcp_flags = 0;
    std::uint32_t seq = 0;
    std::uint32_t ack = 0;
    std::uint32_t payload_len = 0;
    std::uint16_t ip_id = 0;
    std::uint64_t cgroup_id = 0;
    std::uint64_t sk_cookie = 0;
    std::uint32_t ifindex = 0;
    // Network namespace inode (drop, icmp_send, connect); 0 when the hook
    // does not say (tc: the tracer's own; cgroup: a socket of the traced tree).
    std::uint32_t netns = 0;
    // drop and icmp_send: the device's name in its own namespace.
    std::string ifname;
    bool has_socket = false;
    // connect: the task is below the traced cgroup (its namespace is this node's).
    bool in_traced_cgroup = false;
    // drop events
    std::uint64_t location = 0;
    std::optional<std::uint32_t> drop_reason;
    // ICMP errors (carried or generated)
    std::uint8_t icmp_type = 0;
    std::uint8_t icmp_code = 0;
    std::uint8_t target_index = 0;
    // connect and connect_failed events: the task
    std::uint32_t pid = 0;
    std::string comm;
    // connect_failed: the errno connect(2) returned (ENETUNREACH, EPERM, ...)
    int connect_errno = 0;
    // Matched by its client endpoint, not by a target address: DNAT or
    // REDIRECT rewrote the destination.  flow.server is then the target
    // the client asked for (set by the correlator from target_index) and
    // `rewritten_server` the endpoint the packet really went to.
    bool followed = false;
    std::optional<Endpoint> rewritten_server;
    // A metadata request in absolute-URI form to an HTTP proxy, or a packet
    // of that connection: flow.server is the proxy.
    bool via_proxy = false;
    // cgroup egress FROM a target: a socket of this machine answers for the
    // endpoint; its own bound address (the DNAT target, or the target
    // address itself for an agent bound to it).
    std::optional<Endpoint> answering_socket;
    // Parsed heads (redacted), present on the packet carrying them.
    std::optional<HttpRequest> request;
    std::optional<HttpResponse> response;
    // The HTTP head with secrets replaced (redact_http_head), for evidence
    // files; empty when the payload is not an HTTP head.
    std::string redacted_head;

    bool is_syn() const { return (tcp_flags & tcp::syn) && !(tcp_flags & tcp::ack); }
    bool is_synack() const { return (tcp_flags & tcp::syn) && (tcp_flags & tcp::ack); }
    bool is_rst() const { return tcp_flags & tcp::rst; }
    bool is_fin() const { return tcp_flags & tcp::fin; }
    // ICMP time exceeded (v4 type 11 / v6 type 3).
    bool is_time_exceeded() const;
};

// Decode one ring-buffer record; nullopt for a malformed/short record.
// `redacted_head`: also build Observation::redacted_head (only the pcap
// writer reads it; skipped otherwise, it is per-event string work).
std::optional<Observation> decode_event(std::span<const std::uint8_t> record, bool redacted_head = true);

}  // namespace imdstrace
