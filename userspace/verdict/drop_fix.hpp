// What to change for a drop: one place that knows every drop reason and
// location imdstrace meets on the metadata path, and the thing to change for
// each, named by where the drop happened (the pod's own namespace, a nested
// pod's, the node).  "Look it up" is never a fix.
#pragma once

#include <optional>
#include <string>

#include "correlate/transaction.hpp"

namespace imdstrace {

// Facts about the node the fix depends on (read by the session, recorded in
// the --events trailer so `report` says the same).
struct NodeFacts {
    std::optional<bool> ipv4_forwarding;  // net.ipv4.ip_forward of the tracer's namespace
    std::optional<bool> ipv6_forwarding;  // net.ipv6.conf.all.forwarding
};

// "in the pod's own network namespace", "on the node", ...
std::string drop_place_words(const DropRecord& d);
// The netfilter chain a drop can only have happened in, from its direction,
// place and whether the packet was forwarded: "OUTPUT", "FORWARD", "INPUT",
// "PREROUTING or INPUT"; "" when the drop is not netfilter's.
std::string netfilter_chain(const DropRecord& d, bool client_on_node);
// The fix for the drop that decided a transaction's verdict.  `ipv6`: the
// transaction's family; `client_on_node`: the client is a process of the
// node itself (0 hops).
std::string drop_fix(const DropRecord& d, bool ipv6, bool client_on_node, const NodeFacts& node);

}  // namespace imdstrace
