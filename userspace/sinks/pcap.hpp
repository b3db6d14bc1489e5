// Evidence for Wireshark/tcpdump: every IMDS packet imdstrace observed, as
// seen at each hook, in a pcapng file.
//
// pcapng rather than classic pcap (the only format libpcap writes): one
// interface block per observation point ("uplink0 tc ingress", "cgroup
// egress", "kfree_skb", ...) and a comment on every packet saying where it
// was seen, its direction and, for drops, the kernel's reason and location.
// Packets are rebuilt from what the hooks recorded (addresses, ports, TTL,
// IP ID, TCP seq/ack/flags) plus the redacted HTTP head: tokens, credential
// bodies and any response body never reach the file.
#pragma once

#include <cstdint>
#include <fstream>
#include <functional>
#include <map>
#include <string>

#include "decode/observation.hpp"

namespace imdstrace {

class PcapWriter {
public:
    using Namer = std::function<std::string(const Observation&)>;  // drop reason/location text
    using IfName = std::function<std::string(std::uint32_t ifindex)>;

    // Throws UsageError when the file cannot be opened, std::runtime_error
    // naming the file and the error when a write fails, here or in write()
    // (every packet is flushed).
    PcapWriter(const std::string& path, Namer drop_text, IfName ifname, std::int64_t unix_ns_at_mono_zero);
    void write(const Observation& o);
    std::uint64_t packets() const { return packets_; }

private:
    std::uint32_t interface_for(const Observation& o);
    std::string device_name(const Observation& o) const;
    void block(std::uint32_t type, const std::string& body);
    void flush();

    std::string path_;
    std::ofstream out_;
    Namer drop_text_;
    IfName ifname_;
    std::int64_t unix_ns_offset_;
    std::map<std::string, std::uint32_t> interfaces_;
    std::uint64_t packets_ = 0;
};

// The IP packet (IPv4 or IPv6, no link layer) an observation describes.
std::string synthesize_packet(const Observation& o);

}  // namespace imdstrace
