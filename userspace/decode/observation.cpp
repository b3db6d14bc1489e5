#include "decode/observation.hpp"

#include <arpa/inet.h>

#include <cctype>
#include <cstring>

#include "imdstrace.h"

namespace imdstrace {

std::string_view to_string(Hook h) {
    switch (h) {
    case Hook::cgroup_egress: return "cgroup_egress";
    case Hook::cgroup_ingress: return "cgroup_ingress";
    case Hook::uplink_egress: return "uplink_egress";
    case Hook::uplink_ingress: return "uplink_ingress";
    case Hook::drop: return "drop";
    case Hook::icmp_send: return "icmp_send";
    case Hook::connect: return "connect";
    case Hook::connect_failed: return "connect_failed";
    }
    return "unknown";
}

bool Observation::is_time_exceeded() const {
    if (hook == Hook::icmp_send) return flow.server.addr.is_v4() ? icmp_type == 11 : icmp_type == 3;
    if (direction != Direction::icmp_about) return false;
    return flow.server.addr.is_v4() ? icmp_type == 11 : icmp_type == 3;
}

std::optional<Observation> decode_event(std::span<const std::uint8_t> record, bool redacted_head) {
    if (record.size() < sizeof(imds_event)) return std::nullopt;
    imds_event e;
    std::memcpy(&e, record.data(), sizeof(e));
    if (e.hook < IMDS_HOOK_CGROUP_EGRESS || e.hook >= IMDS_HOOK_MAX) return std::nullopt;
    if (e.family != IMDS_AF_INET && e.family != IMDS_AF_INET6) return std::nullopt;
    if (e.direction < IMDS_DIR_TO_TARGET || e.direction > IMDS_DIR_ICMP_ABOUT) return std::nullopt;

    Observation o;
    o.ts_ns = e.ts_ns;
    o.hook = static_cast<Hook>(e.hook);
    o.direction = static_cast<Direction>(e.direction);
    auto family = e.family == IMDS_AF_INET ? Family::ipv4 : Family::ipv6;
    Endpoint src{IpAddr::from_raw(family, e.saddr), ntohs(e.sport)};
    Endpoint dst{IpAddr::from_raw(family, e.daddr), ntohs(e.dport)};
    // ICMP quotes and responses travel from the target: the client is the destination.
    if (o.direction == Direction::to_target) o.flow = {src, dst};
    else o.flow = {dst, src};
    o.ttl = e.ttl;
    o.tcp_flags = e.tcp_flags;
    o.seq = e.seq;
    o.ack = e.ack_seq;
    o.payload_len = e.payload_len;
    o.ip_id = e.ip_id;
    o.cgroup_id = e.cgroup_id;
    o.sk_cookie = e.sk_cookie;
    o.ifindex = e.ifindex;
    o.netns = e.netns;
    o.has_socket = e.flags & IMDS_F_SK_PRESENT;
    o.location = e.location;
    if (o.hook == Hook::drop && (e.flags & IMDS_F_HAS_REASON)) o.drop_reason = e.drop_reason;
    o.icmp_type = e.icmp_type;
    o.icmp_code = e.icmp_code;
    o.target_index = e.target_index;
    auto name16 = [&e] {
        std::string s(reinterpret_cast<const char*>(e.comm), strnlen(reinterpret_cast<const char*>(e.comm), sizeof(e.comm)));
        for (auto& c : s)
            if (!std::isprint(static_cast<unsigned char>(c))) c = '?';
        return s;
    };
    if (o.hook == Hook::connect || o.hook == Hook::connect_failed) {
        o.pid = e.pid;
        o.comm = name16();
        o.in_traced_cgroup = e.flags & IMDS_F_IN_CGROUP;
        if (o.hook == Hook::connect_failed) o.connect_errno = static_cast<int>(e.drop_reason);
    } else if (o.hook == Hook::drop || o.hook == Hook::icmp_send) {
        o.ifname = name16();
    }

    o.followed = e.flags & IMDS_F_FOLLOWED;
    if (o.followed) o.rewritten_server = o.flow.server;
    o.via_proxy = e.flags & IMDS_F_VIA_PROXY;
    if (o.hook == Hook::cgroup_egress && o.direction == Direction::from_target && e.sock_port != 0)
        o.answering_socket = Endpoint{IpAddr::from_raw(family, e.sock_addr), ntohs(e.sock_port)};

    // The payload tail: exactly `copied` bytes after the header.  A record
    // that claims more than it holds is not ours to guess at.
    std::size_t copied = e.copied;
    if (copied > IMDS_PAYLOAD_MAX || copied > record.size() - sizeof(imds_event)) return std::nullopt;
    if (copied > 0 && o.direction != Direction::icmp_about) {
        std::span<const std::uint8_t> payload(record.data() + sizeof(imds_event), copied);
        if (o.direction == Direction::to_target) o.request = parse_http_request(payload);
        else o.response = parse_http_response(payload);
        if (redacted_head && (o.request || o.response)) o.redacted_head = redact_http_head(payload);
    }
    return o;
}

}  // namespace imdstrace
