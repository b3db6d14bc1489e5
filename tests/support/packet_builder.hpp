// Packets for BPF_PROG_TEST_RUN, built from fields instead of hex blobs.
//
//   auto frame = pkt::Packet::v4("198.18.1.5", "169.254.169.254")
//                    .ttl(64).tcp(40000, 80).seq(1000).flags(pkt::SYN).frame();
//
// Lengths (IPv4 total length, IPv6 payload length) and the IPv4 header
// checksum are computed from what was built, unless a test overrides them
// to craft a lying packet.  Everything is in network byte order on the wire.
#pragma once

#include <arpa/inet.h>

#include <cstdint>
#include <cstring>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace pkt {

using Bytes = std::vector<std::uint8_t>;

inline constexpr std::uint8_t FIN = 0x01, SYN = 0x02, RST = 0x04, PSH = 0x08, ACK = 0x10;
inline constexpr std::uint8_t PROTO_ICMP = 1, PROTO_TCP = 6, PROTO_UDP = 17, PROTO_ICMPV6 = 58;
inline constexpr std::uint16_t ETH_IPV4 = 0x0800, ETH_IPV6 = 0x86dd;

inline void put16(Bytes& b, std::uint16_t v) {
    b.push_back(static_cast<std::uint8_t>(v >> 8));
    b.push_back(static_cast<std::uint8_t>(v));
}
inline void put32(Bytes& b, std::uint32_t v) {
    put16(b, static_cast<std::uint16_t>(v >> 16));
    put16(b, static_cast<std::uint16_t>(v));
}
inline void set16(Bytes& b, std::size_t off, std::uint16_t v) {
    b[off] = static_cast<std::uint8_t>(v >> 8);
    b[off + 1] = static_cast<std::uint8_t>(v);
}

inline std::uint16_t inet_checksum(const std::uint8_t* p, std::size_t n) {
    std::uint32_t sum = 0;
    for (std::size_t i = 0; i + 1 < n; i += 2) sum += (p[i] << 8) | p[i + 1];
    if (n & 1) sum += p[n - 1] << 8;
    while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
    return static_cast<std::uint16_t>(~sum);
}

// Raw address bytes (4 or 16) of a textual address.
inline Bytes addr_bytes(std::string_view text) {
    std::string s(text);
    Bytes out(16);
    if (inet_pton(AF_INET, s.c_str(), out.data()) == 1) {
        out.resize(4);
        return out;
    }
    if (inet_pton(AF_INET6, s.c_str(), out.data()) == 1) return out;
    throw std::invalid_argument("not an address: " + s);
}

inline Bytes as_bytes(std::string_view s) { return Bytes(s.begin(), s.end()); }

// An Ethernet frame around an L3 packet.
inline Bytes ethernet(std::uint16_t ethertype, const Bytes& l3) {
    Bytes b = {0x02, 0x00, 0x00, 0x00, 0x00, 0x02,   // dst
               0x02, 0x00, 0x00, 0x00, 0x00, 0x01};  // src
    put16(b, ethertype);
    b.insert(b.end(), l3.begin(), l3.end());
    return b;
}

class Packet {
public:
    static Packet v4(std::string_view src, std::string_view dst) { return Packet(false, src, dst); }
    static Packet v6(std::string_view src, std::string_view dst) { return Packet(true, src, dst); }

    // --- network layer
    Packet& ttl(std::uint8_t v) { ttl_ = v; return *this; }
    Packet& ip_id(std::uint16_t v) { ip_id_ = v; return *this; }
    // Override the IPv4 total length / IPv6 payload length (lying packets).
    Packet& ip_length(std::uint16_t v) { ip_length_ = v; return *this; }

    // --- TCP
    Packet& tcp(std::uint16_t sport, std::uint16_t dport) {
        proto_ = PROTO_TCP;
        sport_ = sport;
        dport_ = dport;
        return *this;
    }
    Packet& seq(std::uint32_t v) { seq_ = v; return *this; }
    Packet& ack(std::uint32_t v) { ack_ = v; return *this; }
    Packet& flags(std::uint8_t v) { flags_ = v; return *this; }
    // TCP options (padded to 4 bytes with NOPs): data offset grows.
    Packet& tcp_options(Bytes opts) {
        while (opts.size() % 4) opts.push_back(1);
        tcp_opts_ = std::move(opts);
        return *this;
    }
    Packet& payload(std::string_view s) { payload_ = as_bytes(s); return *this; }
    Packet& payload(Bytes b) { payload_ = std::move(b); return *this; }

    // --- UDP (8-byte header + payload)
    Packet& udp(std::uint16_t sport, std::uint16_t dport) {
        proto_ = PROTO_UDP;
        sport_ = sport;
        dport_ = dport;
        return *this;
    }

    // --- ICMP error (time exceeded / unreachable) quoting an L3 packet.  The
    // quote is cut to quote_len bytes (RFC 792: IP header + 8 bytes).
    Packet& icmp_error(std::uint8_t type, std::uint8_t code, const Bytes& quoted_l3, std::size_t quote_len = 0) {
        proto_ = v6_ ? PROTO_ICMPV6 : PROTO_ICMP;
        icmp_type_ = type;
        icmp_code_ = code;
        quote_ = quoted_l3;
        if (quote_len && quote_len < quote_.size()) quote_.resize(quote_len);
        return *this;
    }

    // L4 bytes as built.
    Bytes l4() const {
        Bytes b;
        if (proto_ == PROTO_TCP) {
            put16(b, sport_);
            put16(b, dport_);
            put32(b, seq_);
            put32(b, ack_);
            const std::size_t hlen = 20 + tcp_opts_.size();
            b.push_back(static_cast<std::uint8_t>((hlen / 4) << 4));
            b.push_back(flags_);
            put16(b, 64240);  // window
            put16(b, 0);      // checksum (not checked on these paths)
            put16(b, 0);      // urgent
            b.insert(b.end(), tcp_opts_.begin(), tcp_opts_.end());
            b.insert(b.end(), payload_.begin(), payload_.end());
        } else if (proto_ == PROTO_UDP) {
            put16(b, sport_);
            put16(b, dport_);
            put16(b, static_cast<std::uint16_t>(8 + payload_.size()));
            put16(b, 0);
            b.insert(b.end(), payload_.begin(), payload_.end());
        } else if (proto_ == PROTO_ICMP || proto_ == PROTO_ICMPV6) {
            b.push_back(icmp_type_);
            b.push_back(icmp_code_);
            put16(b, 0);  // checksum
            put32(b, 0);  // unused
            b.insert(b.end(), quote_.begin(), quote_.end());
            if (proto_ == PROTO_ICMP) set16(b, 2, inet_checksum(b.data(), b.size()));
        }
        return b;
    }

    // The IP packet (what cgroup_skb programs see).
    Bytes l3() const {
        Bytes l4b = l4();
        Bytes b;
        if (!v6_) {
            b.push_back(0x45);
            b.push_back(0);
            put16(b, ip_length_ ? *ip_length_ : static_cast<std::uint16_t>(20 + l4b.size()));
            put16(b, ip_id_);
            put16(b, 0x4000);  // DF
            b.push_back(ttl_);
            b.push_back(proto_);
            put16(b, 0);
            b.insert(b.end(), src_.begin(), src_.end());
            b.insert(b.end(), dst_.begin(), dst_.end());
            set16(b, 10, inet_checksum(b.data(), 20));
        } else {
            put32(b, 0x60000000);
            put16(b, ip_length_ ? *ip_length_ : static_cast<std::uint16_t>(l4b.size()));
            b.push_back(proto_);
            b.push_back(ttl_);
            b.insert(b.end(), src_.begin(), src_.end());
            b.insert(b.end(), dst_.begin(), dst_.end());
        }
        b.insert(b.end(), l4b.begin(), l4b.end());
        return b;
    }

    // The Ethernet frame (what tc programs see; BPF_PROG_TEST_RUN takes
    // frames for every skb program type and strips the MAC header for L3
    // program types itself).
    Bytes frame() const { return ethernet(v6_ ? ETH_IPV6 : ETH_IPV4, l3()); }

    bool is_v6() const { return v6_; }

private:
    Packet(bool v6, std::string_view src, std::string_view dst)
        : v6_(v6), src_(addr_bytes(src)), dst_(addr_bytes(dst)) {
        if (src_.size() != (v6 ? 16u : 4u) || dst_.size() != src_.size())
            throw std::invalid_argument("address family does not match the packet's");
    }

    bool v6_;
    Bytes src_, dst_;
    std::uint8_t ttl_ = 64;
    std::uint16_t ip_id_ = 0;
    std::optional<std::uint16_t> ip_length_;
    std::uint8_t proto_ = PROTO_TCP;
    std::uint16_t sport_ = 0, dport_ = 0;
    std::uint32_t seq_ = 0, ack_ = 0;
    std::uint8_t flags_ = ACK;
    Bytes tcp_opts_;
    Bytes payload_;
    std::uint8_t icmp_type_ = 0, icmp_code_ = 0;
    Bytes quote_;
};

// The first n bytes of a buffer (a truncated capture).
inline Bytes cut(Bytes b, std::size_t n) {
    if (n < b.size()) b.resize(n);
    return b;
}

}  // namespace pkt
