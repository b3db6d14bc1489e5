// Verdicts (a contract: ../shared/DESIGN.md) and the hop arithmetic.
#pragma once

#include <optional>
#include <string>
#include <string_view>

#include "correlate/transaction.hpp"

namespace imdstrace {

enum class Verdict {
    ok,
    hop_limit_exceeded,
    token_required,
    token_invalid,
    forbidden,
    bad_request,
    not_found,
    blocked,
    no_route,
    refused,
    no_response,
    dropped,
};

std::string_view to_string(Verdict v);
std::optional<Verdict> verdict_from_string(std::string_view s);
// Higher is worse; a pod's verdict is its worst transaction's.
int severity(Verdict v);
// Does this verdict make diagnose/probe/report exit 3?  NOT_FOUND is a
// client asking for a path that does not exist, not a node fault.
bool is_failure(Verdict v);

// Hops between the client socket and the uplink, from TTLs:
//   hops = TTL the client set - TTL leaving the uplink
// A response arriving with TTL t reaches the client only if t > hops, so
// the hop limit the instance needs is hops + 1.
struct HopFigures {
    std::optional<int> hops;
    bool inferred = false;  // client TTL not seen: assumed a common initial TTL
    std::optional<int> required_hop_limit;
};
HopFigures hop_figures(const Transaction& t);

// DropRecord::endpoint_bookkeeping() as a predicate.
inline bool endpoint_bookkeeping(const DropRecord& d) { return d.endpoint_bookkeeping(); }

struct Classification {
    Verdict verdict = Verdict::ok;
    std::string evidence;  // the kernel facts behind the verdict, one line
    HopFigures hops;
};
Classification classify(const Transaction& t, std::string_view server_text);

}  // namespace imdstrace
