// A finished, judged and attributed transaction: what sinks print and what
// `report` reads back from JSONL.  Everything here round-trips through the
// transaction JSON (schema imdstrace.transaction/v1).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "common/net.hpp"
#include "correlate/transaction.hpp"
#include "decode/http.hpp"
#include "pods/resolver.hpp"
#include "verdict/verdict.hpp"

namespace imdstrace {

struct TransactionRecord {
    std::int64_t wall_ms = 0;  // unix time of the transaction start
    std::optional<PodInfo> pod;
    std::string cgroup;  // client socket's cgroup, relative to the cgroup2 mount
    std::optional<ProcessInfo> process;
    Endpoint client;
    Endpoint server;
    std::optional<HttpRequest> request;
    std::optional<int> status;
    std::optional<int> ttl_at_node;
    std::optional<int> hops;
    bool hops_inferred = false;
    std::optional<int> required_hop_limit;
    Verdict verdict = Verdict::ok;
    std::string evidence;
    std::vector<DropRecord> drops;
    std::uint32_t icmp_time_exceeded = 0;
    std::uint32_t retransmits = 0;
    std::int64_t duration_ms = 0;
    // Set aside from every verdict, hop figure and fix (DESIGN.md "this window").
    bool opened_before_tracing = false;  // the tracer did not see the connection open
    bool opening_unseen = false;         // ... and events were lost just before: new or old, unknown
    bool incomplete = false;             // events were lost while it was open
    std::uint64_t events_lost = 0;       // how many (all hooks): an upper bound of what it misses
    // The target address is one of this node's own (a node-local agent such
    // as the EKS Pod Identity agent): no uplink, no IMDS, no hop limit.
    bool target_on_node = false;
    // The path (DESIGN.md "The path"; JSON "path" and "answered_by"):
    std::optional<LocalAnswer> answered_by;  // a socket of this machine answered, not IMDS
    std::optional<Endpoint> redirected_to;   // DNAT/REDIRECT on this node sent it here
    std::optional<Endpoint> via_proxy;       // sent to this HTTP proxy as an absolute-URI request
    std::optional<int> connect_errno;        // connect(2) failed before any packet
    std::optional<bool> reached_uplink;      // false: it never left through an uplink (not IMDS's doing)

    Family family() const { return client.addr.family; }
    bool token_request() const { return request && request->is_token_request(); }
    // "ns/name", else "cgroup:/path", else "client:1.2.3.4".
    std::string subject() const;
};

}  // namespace imdstrace
