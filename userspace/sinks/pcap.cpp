#include "sinks/pcap.hpp"

#include "common/errors.hpp"

#include <arpa/inet.h>
#include <fmt/format.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>

namespace imdstrace {
namespace {

constexpr std::uint32_t kSectionHeader = 0x0A0D0D0A;
constexpr std::uint32_t kInterfaceDescription = 0x00000001;
constexpr std::uint32_t kEnhancedPacket = 0x00000006;
// Ethernet with zero MAC addresses around the rebuilt IP packet: libpcap
// 1.10 rejects a pcapng whose interfaces use LINKTYPE_RAW (it compares the
// raw type of later interfaces with the mapped type of the first).
constexpr std::uint16_t kLinktypeEthernet = 1;
constexpr std::uint16_t kOptEnd = 0, kOptComment = 1, kIfName = 2, kIfDescription = 3, kIfTsresol = 9, kEpbFlags = 2;

void put16(std::string& s, std::uint16_t v) { s.append(reinterpret_cast<const char*>(&v), 2); }
void put32(std::string& s, std::uint32_t v) { s.append(reinterpret_cast<const char*>(&v), 4); }
void put_be16(std::string& s, std::uint16_t v) { put16(s, htons(v)); }
void put_be32(std::string& s, std::uint32_t v) { put32(s, htonl(v)); }
void pad4(std::string& s) { s.append((4 - s.size() % 4) % 4, '\0'); }

void option(std::string& s, std::uint16_t code, const std::string& value) {
    put16(s, code);
    put16(s, static_cast<std::uint16_t>(value.size()));
    s += value;
    pad4(s);
}

std::uint16_t checksum(const std::string& data, std::uint32_t sum = 0) {
    for (std::size_t i = 0; i + 1 < data.size(); i += 2)
        sum += (static_cast<std::uint8_t>(data[i]) << 8) | static_cast<std::uint8_t>(data[i + 1]);
    if (data.size() % 2) sum += static_cast<std::uint8_t>(data.back()) << 8;
    while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
    return static_cast<std::uint16_t>(~sum);
}

std::string tcp_header(const Observation& o, const Endpoint& src, const Endpoint& dst, bool quoted) {
    std::string t;
    put_be16(t, src.port);
    put_be16(t, dst.port);
    put_be32(t, o.seq);
    if (quoted) return t;  // an ICMP quote carries the first 8 bytes
    put_be32(t, o.ack);
    t.push_back(static_cast<char>(5 << 4));  // data offset 5 words
    t.push_back(static_cast<char>(o.tcp_flags));
    put_be16(t, 0xffff);  // window: not recorded
    put_be16(t, 0);       // checksum: not recomputed (bytes are a reconstruction)
    put_be16(t, 0);
    return t;
}

std::string ip_header(const IpAddr& src, const IpAddr& dst, std::uint8_t ttl, std::uint8_t proto, std::uint16_t id,
                      std::size_t l4_len) {
    std::string h;
    if (src.is_v4()) {
        h.push_back(0x45);
        h.push_back(0);
        put_be16(h, static_cast<std::uint16_t>(20 + l4_len));
        put_be16(h, id);
        put_be16(h, 0x4000);  // DF
        h.push_back(static_cast<char>(ttl));
        h.push_back(static_cast<char>(proto));
        put_be16(h, 0);
        h.append(reinterpret_cast<const char*>(src.bytes.data()), 4);
        h.append(reinterpret_cast<const char*>(dst.bytes.data()), 4);
        std::uint16_t c = checksum(h);
        h[10] = static_cast<char>(c >> 8);
        h[11] = static_cast<char>(c & 0xff);
    } else {
        put_be32(h, 0x60000000);
        put_be16(h, static_cast<std::uint16_t>(l4_len));
        h.push_back(static_cast<char>(proto));
        h.push_back(static_cast<char>(ttl));
        h.append(reinterpret_cast<const char*>(src.bytes.data()), 16);
        h.append(reinterpret_cast<const char*>(dst.bytes.data()), 16);
    }
    return h;
}

}  // namespace

std::string synthesize_packet(const Observation& o) {
    const bool to_target = o.direction == Direction::to_target;
    const Endpoint& client = o.flow.client;
    const Endpoint& server = o.flow.server;
    const bool v4 = client.addr.is_v4();
    const bool icmp_quote = o.direction == Direction::icmp_about && o.hook != Hook::icmp_send;
    if (icmp_quote) {
        // An ICMP error toward the target quoting the response it is about.
        // The outer source was not recorded: the client's address stands in.
        std::string quoted = ip_header(server.addr, client.addr, o.ttl, IPPROTO_TCP, o.ip_id, 8) +
                             tcp_header(o, server, client, true);
        std::string icmp;
        icmp.push_back(static_cast<char>(o.icmp_type));
        icmp.push_back(static_cast<char>(o.icmp_code));
        put_be16(icmp, 0);
        put_be32(icmp, 0);
        icmp += quoted;
        if (v4) {
            std::uint16_t c = checksum(icmp);
            icmp[2] = static_cast<char>(c >> 8);
            icmp[3] = static_cast<char>(c & 0xff);
        }
        return ip_header(client.addr, server.addr, 64, static_cast<std::uint8_t>(v4 ? int{IPPROTO_ICMP} : int{IPPROTO_ICMPV6}), 0, icmp.size()) + icmp;
    }
    const Endpoint& src = to_target ? client : server;
    const Endpoint& dst = to_target ? server : client;
    std::string tcp = tcp_header(o, src, dst, false) + o.redacted_head;
    return ip_header(src.addr, dst.addr, o.ttl, IPPROTO_TCP, o.ip_id, tcp.size()) + tcp;
}

PcapWriter::PcapWriter(const std::string& path, Namer drop_text, IfName ifname, std::int64_t unix_ns_offset)
    : path_(path),
      out_(path, std::ios::binary | std::ios::trunc),
      drop_text_(std::move(drop_text)),
      ifname_(std::move(ifname)),
      unix_ns_offset_(unix_ns_offset) {
    if (!out_) throw UsageError("--pcap: cannot write " + path + ": " + std::strerror(errno));
    std::string shb;
    put32(shb, 0x1A2B3C4D);  // byte-order magic
    put16(shb, 1);
    put16(shb, 0);
    put32(shb, 0xffffffff);  // section length unknown
    put32(shb, 0xffffffff);
    option(shb, kOptComment, "IMDS packets at each imdstrace observation point (rebuilt from the hooks' records; "
                             "token values and bodies redacted)");
    option(shb, 3, "Linux");      // shb_os
    option(shb, 4, "imdstrace");  // shb_userappl
    put16(shb, kOptEnd);
    put16(shb, 0);
    block(kSectionHeader, shb);
    flush();
}

void PcapWriter::flush() {
    out_.flush();
    // A full disk must not lose the evidence silently.
    if (!out_) throw std::runtime_error("--pcap " + path_ + ": write failed: " + std::strerror(errno ? errno : EIO));
}

void PcapWriter::block(std::uint32_t type, const std::string& body) {
    std::string b;
    std::uint32_t total = static_cast<std::uint32_t>(12 + body.size());
    put32(b, type);
    put32(b, total);
    b += body;
    put32(b, total);
    out_.write(b.data(), static_cast<std::streamsize>(b.size()));
}

std::uint32_t PcapWriter::interface_for(const Observation& o) {
    std::string name;
    std::string dev = device_name(o);
    switch (o.hook) {
    case Hook::uplink_ingress: name = dev + " tc ingress"; break;
    case Hook::uplink_egress: name = dev + " tc egress"; break;
    case Hook::cgroup_egress: name = "cgroup_skb egress"; break;
    case Hook::cgroup_ingress: name = "cgroup_skb ingress"; break;
    case Hook::drop: name = "kfree_skb (drops)"; break;
    case Hook::icmp_send: name = "icmp_send"; break;
    case Hook::connect:
    case Hook::connect_failed: break;  // not a packet: never written
    }
    if (auto it = interfaces_.find(name); it != interfaces_.end()) return it->second;
    std::string idb;
    put16(idb, kLinktypeEthernet);
    put16(idb, 0);
    put32(idb, 0);  // snaplen: no limit
    option(idb, kIfName, name);
    option(idb, kIfDescription, "imdstrace observation point: " + std::string(to_string(o.hook)));
    option(idb, kIfTsresol, std::string(1, '\x09'));  // nanoseconds
    put16(idb, kOptEnd);
    put16(idb, 0);
    block(kInterfaceDescription, idb);
    auto id = static_cast<std::uint32_t>(interfaces_.size());
    interfaces_.emplace(name, id);
    return id;
}

// Kernel events name their device as its own namespace does; the hooks of
// this namespace have their ifindex resolved here.
std::string PcapWriter::device_name(const Observation& o) const {
    if (!o.ifname.empty()) return o.ifname;
    // A socket's device lives in the socket's namespace (a pod's eth0):
    // its index means nothing here, so it is not named.
    if (o.hook == Hook::cgroup_egress || o.hook == Hook::cgroup_ingress) return {};
    return o.ifindex ? ifname_(o.ifindex) : std::string();
}

void PcapWriter::write(const Observation& o) {
    if (o.hook == Hook::connect || o.hook == Hook::connect_failed) return;  // no packet to keep
    std::uint32_t ifid = interface_for(o);
    std::string pkt(12, '\0');  // destination and source MAC: not recorded
    put_be16(pkt, o.flow.client.addr.is_v4() ? 0x0800 : 0x86dd);
    pkt += synthesize_packet(o);
    std::uint64_t ts = static_cast<std::uint64_t>(static_cast<std::int64_t>(o.ts_ns) + unix_ns_offset_);
    std::string comment = fmt::format("hook={} dir={} ttl={}", to_string(o.hook),
                                      o.direction == Direction::to_target     ? "to_target"
                                      : o.direction == Direction::from_target ? "from_target"
                                                                              : "icmp_about",
                                      o.ttl);
    if (auto dev = device_name(o); !dev.empty()) comment += " iface=" + dev;
    if (o.netns) comment += fmt::format(" netns={}", o.netns);
    if (o.hook == Hook::drop) comment += " " + drop_text_(o);
    if (o.icmp_type) comment += fmt::format(" icmp_type={} icmp_code={}", o.icmp_type, o.icmp_code);
    if (o.payload_len > o.redacted_head.size())
        comment += fmt::format(" payload={}B (kept: redacted HTTP head only)", o.payload_len);
    std::string epb;
    put32(epb, ifid);
    put32(epb, static_cast<std::uint32_t>(ts >> 32));
    put32(epb, static_cast<std::uint32_t>(ts & 0xffffffff));
    put32(epb, static_cast<std::uint32_t>(pkt.size()));
    put32(epb, static_cast<std::uint32_t>(pkt.size()));
    epb += pkt;
    pad4(epb);
    option(epb, kOptComment, comment);
    // epb_flags: direction inbound (1) for ingress/delivery, outbound (2) for egress.
    std::string flags;
    std::uint32_t dir = (o.hook == Hook::uplink_ingress || o.hook == Hook::cgroup_ingress) ? 1
                        : (o.hook == Hook::uplink_egress || o.hook == Hook::cgroup_egress)  ? 2
                                                                                            : 0;
    put32(flags, dir);
    option(epb, kEpbFlags, flags);
    put16(epb, kOptEnd);
    put16(epb, 0);
    block(kEnhancedPacket, epb);
    flush();  // evidence survives a kill
    ++packets_;
}

}  // namespace imdstrace
