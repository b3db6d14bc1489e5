// Addresses and endpoints as imdstrace talks about them.
#pragma once

#include <array>
#include <compare>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>

namespace imdstrace {

enum class Family : std::uint8_t { ipv4 = 4, ipv6 = 6 };

std::string_view to_string(Family f);

// An IPv4 or IPv6 address; IPv4 lives in the first four bytes.
struct IpAddr {
    Family family = Family::ipv4;
    std::array<std::uint8_t, 16> bytes{};

    static std::optional<IpAddr> parse(std::string_view text);
    static IpAddr from_raw(Family f, const std::uint8_t* raw16);
    std::string str() const;
    bool is_v4() const { return family == Family::ipv4; }
    // 0.0.0.0 / :: (a socket bound to every address)
    bool is_unspecified() const {
        for (std::size_t i = 0; i < (is_v4() ? 4u : 16u); ++i)
            if (bytes[i] != 0) return false;
        return true;
    }

    auto operator<=>(const IpAddr&) const = default;
};

// Address and port (host byte order).  Printed as 1.2.3.4:80 or [::1]:80.
struct Endpoint {
    IpAddr addr;
    std::uint16_t port = 0;

    // Accepts ADDR, ADDR:PORT, [V6ADDR] and [V6ADDR]:PORT; default_port when absent.
    static std::optional<Endpoint> parse(std::string_view text, std::uint16_t default_port);
    std::string str() const;

    auto operator<=>(const Endpoint&) const = default;
};

// A TCP connection as seen at one point of the path: client -> server.
struct FlowKey {
    Endpoint client;
    Endpoint server;

    std::string str() const { return client.str() + " -> " + server.str(); }
    auto operator<=>(const FlowKey&) const = default;
};

struct FlowKeyHash {
    // Not noexcept on purpose: libstdc++ then caches each node's hash, so a
    // lookup compares cached hashes instead of rehashing every node it walks.
    std::size_t operator()(const FlowKey& k) const;
};

}  // namespace imdstrace
