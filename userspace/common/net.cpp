#include "common/net.hpp"

#include <arpa/inet.h>

#include <algorithm>
#include <charconv>
#include <cstring>

namespace imdstrace {

std::string_view to_string(Family f) { return f == Family::ipv4 ? "ipv4" : "ipv6"; }

std::optional<IpAddr> IpAddr::parse(std::string_view text) {
    std::string s(text);
    IpAddr a;
    if (inet_pton(AF_INET, s.c_str(), a.bytes.data()) == 1) {
        a.family = Family::ipv4;
        return a;
    }
    if (inet_pton(AF_INET6, s.c_str(), a.bytes.data()) == 1) {
        a.family = Family::ipv6;
        return a;
    }
    return std::nullopt;
}

IpAddr IpAddr::from_raw(Family f, const std::uint8_t* raw16) {
    IpAddr a;
    a.family = f;
    std::memcpy(a.bytes.data(), raw16, f == Family::ipv4 ? 4 : 16);
    return a;
}

std::string IpAddr::str() const {
    char buf[INET6_ADDRSTRLEN] = {};
    inet_ntop(is_v4() ? AF_INET : AF_INET6, bytes.data(), buf, sizeof(buf));
    return buf;
}

std::optional<Endpoint> Endpoint::parse(std::string_view text, std::uint16_t default_port) {
    std::string_view host = text;
    std::string_view port;
    bool has_port = false;  // "ADDR:" with nothing after the colon is an error, not the default
    if (!text.empty() && text.front() == '[') {
        auto close = text.find(']');
        if (close == std::string_view::npos) return std::nullopt;
        host = text.substr(1, close - 1);
        auto rest = text.substr(close + 1);
        if (!rest.empty()) {
            if (rest.front() != ':') return std::nullopt;
            port = rest.substr(1);
            has_port = true;
        }
    } else if (std::count(text.begin(), text.end(), ':') == 1) {
        auto colon = text.find(':');
        host = text.substr(0, colon);
        port = text.substr(colon + 1);
        has_port = true;
    }
    auto addr = IpAddr::parse(host);
    if (!addr) return std::nullopt;
    Endpoint ep{*addr, default_port};
    if (has_port) {
        unsigned value = 0;
        auto [ptr, ec] = std::from_chars(port.data(), port.data() + port.size(), value);
        if (ec != std::errc{} || ptr != port.data() + port.size() || value == 0 || value > 65535)
            return std::nullopt;
        ep.port = static_cast<std::uint16_t>(value);
    }
    return ep;
}

std::string Endpoint::str() const {
    if (addr.is_v4()) return addr.str() + ":" + std::to_string(port);
    return "[" + addr.str() + "]:" + std::to_string(port);
}

std::size_t FlowKeyHash::operator()(const FlowKey& k) const {
    // Word at a time (the correlator hashes a key for nearly every event):
    // the four address halves and both ports, each folded in with a
    // multiply and a shift (a 64-bit mix in the style of splitmix64).
    std::uint64_t w[4];
    std::memcpy(&w[0], k.client.addr.bytes.data(), 8);
    std::memcpy(&w[1], k.client.addr.bytes.data() + 8, 8);
    std::memcpy(&w[2], k.server.addr.bytes.data(), 8);
    std::memcpy(&w[3], k.server.addr.bytes.data() + 8, 8);
    std::uint64_t h = (static_cast<std::uint64_t>(k.client.port) << 16 | k.server.port) ^ 0x9e3779b97f4a7c15ULL;
    for (auto x : w) {
        h ^= x;
        h *= 0xbf58476d1ce4e5b9ULL;
        h ^= h >> 31;
    }
    return static_cast<std::size_t>(h);
}

}  // namespace imdstrace
