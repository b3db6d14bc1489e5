// The attribution step: a finished transaction, judged, tied to who made it.
//
//   Transaction (correlate/) x classify() (verdict/) x pod lookup (pods/)
//     -> TransactionRecord (what every sink prints and `report` reads back)
//
// Who: the client socket's cgroup (cgroup v2 id from the socket hooks, or
// from the connect tracepoint for a node process outside the traced
// cgroup) names the pod; only when that says nothing, the client address
// as the client's own socket saw it (before any SNAT on the node).
#pragma once

#include <cstdint>
#include <functional>
#include <string>

#include "correlate/transaction.hpp"
#include "pods/resolver.hpp"
#include "verdict/record.hpp"

namespace imdstrace {

// cgroup v2 id -> path relative to the cgroup2 mount; "" when unknown.
using CgroupNamer = std::function<std::string(std::uint64_t cgroup_id)>;

// `wall_ms`: unix time (ms) of the transaction's start.  `target_on_node`:
// the server address is one of this node's own (a node-local agent).
// Takes the transaction by value: the path facts are derived on it before
// it is judged (pass it moved; the caller is done with it).
TransactionRecord attribute(Transaction t, std::int64_t wall_ms, const CgroupNamer& cgroup_of,
                            PodResolver& pods, bool target_on_node = false);

}  // namespace imdstrace
