// Uplinks: the interfaces through which this network namespace reaches the
// metadata endpoints, found by asking the kernel's routing table.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "common/net.hpp"

namespace imdstrace {

struct Interface {
    int ifindex = 0;
    std::string name;
    auto operator<=>(const Interface&) const = default;
};

// RTM_GETROUTE for one destination (no packet is sent).  nullopt when there
// is no route; `error` says why.
std::optional<Interface> route_interface(const IpAddr& dst, std::string* error = nullptr);
// The interface by name, nullopt when absent in this network namespace.
std::optional<Interface> interface_by_name(const std::string& name);

}  // namespace imdstrace

namespace imdstrace {

struct TcFilter {
    std::uint32_t handle = 0;
    std::uint16_t priority = 0;
    std::string kind;  // "bpf", "u32", ...
};

// The tc filters under the clsact ingress or egress hook of an interface
// (RTM_GETTFILTER dump); nullopt when the kernel cannot be asked.
std::optional<std::vector<TcFilter>> tc_filters(int ifindex, bool ingress);
// Whether the interface has a clsact qdisc.
bool has_clsact(int ifindex);
// Number of filter entries there; -1 when the kernel cannot be asked.
int tc_filter_count(int ifindex, bool ingress);

}  // namespace imdstrace
