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

// Every way this network namespace can send traffic to `dst`.
struct TargetRoutes {
    bool local = false;              // an address of this node: traced at the sockets, no uplink
    std::vector<Interface> uplinks;  // every interface some routing rule's table sends it through
    std::string error;               // why there is none, when uplinks is empty and !local
};
// The main lookup, then every table a routing rule points at (policy
// routing: the VPC CNI sends pods on a secondary ENI through their own
// table with `ip rule from <pod IP> lookup <table>`), longest prefix per
// table.  Reads rules and routes over rtnetlink; sends no packet.
TargetRoutes target_routes(const IpAddr& dst);
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
