#include "verdict/verdict.hpp"

#include "verdict/drop_fix.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <utility>

namespace imdstrace {
namespace {

constexpr std::array<std::pair<Verdict, std::string_view>, 12> kNames = {{
    {Verdict::ok, "OK"},
    {Verdict::hop_limit_exceeded, "HOP_LIMIT_EXCEEDED"},
    {Verdict::token_required, "TOKEN_REQUIRED"},
    {Verdict::token_invalid, "TOKEN_INVALID"},
    {Verdict::forbidden, "FORBIDDEN"},
    {Verdict::bad_request, "BAD_REQUEST"},
    {Verdict::not_found, "NOT_FOUND"},
    {Verdict::blocked, "BLOCKED"},
    {Verdict::no_route, "NO_ROUTE"},
    {Verdict::refused, "REFUSED"},
    {Verdict::no_response, "NO_RESPONSE"},
    {Verdict::dropped, "DROPPED"},
}};

bool forwarding_location(std::string_view loc) { return loc == "ip_forward" || loc == "ip6_forward"; }

// A drop that means "this response ran out of hops": the forward path's
// TTL check, or a datapath that decrements TTL itself and drops in tc
// (Cilium), both with the TTL already at 1 or 0.
bool hop_exhaustion(const DropRecord& d) {
    if (!d.response || d.ttl > 1) return false;
    return forwarding_location(d.location) || d.reason == "IP_INHDR" || d.reason.starts_with("TC_");
}

bool policy_drop(const DropRecord& d) {
    return d.reason == "NETFILTER_DROP" || d.reason.starts_with("BPF_CGROUP") || d.reason.starts_with("TC_") ||
           d.reason == "IPTABLES" || d.location.starts_with("nft_") || d.location.starts_with("ipt_") ||
           d.location == "nf_hook_slow";
}

bool route_drop(const DropRecord& d) {
    return d.reason == "IP_OUTNOROUTES" || d.reason == "IP_INNOROUTES" || d.reason == "IP6_INNOROUTES" ||
           d.reason.ends_with("NOROUTES");
}

bool path_drop(const DropRecord& d) { return !endpoint_bookkeeping(d); }

std::string describe_drops(const Transaction& t, bool (*pick)(const DropRecord&)) {
    std::string out;
    const bool client_on_node = t.local_socket_at_uplink;
    for (const auto& d : t.drops) {
        if (pick && !pick(d)) continue;
        if (!out.empty()) out += ", ";
        out += fmt::format("{}x dropped {}{}{} at {} (TTL {})", d.count, d.response ? "response " : "request ",
                           d.reason.empty() ? "" : "reason ", d.reason, d.location, d.ttl);
        if (d.place.empty()) continue;
        auto chain = netfilter_chain(d, client_on_node);
        out += " " + drop_place_words(d);
        if (!chain.empty()) out += " (" + chain + ")";
        if (d.place == "pod" && !d.response) out += ", before it left the pod";
        if (d.rewritten) out += fmt::format(", after DNAT to {}", d.rewritten->str());
    }
    return out;
}

// Words for the errors connect(2) returns before a packet exists
// (errno values of Linux, asm-generic/errno*.h).
std::string connect_error_words(int err) {
    switch (err) {
    case 1: return "operation not permitted (EPERM): a cgroup BPF connect program or an LSM policy refused it";
    case 13: return "permission denied (EACCES): a \"prohibit\" route, an LSM policy or a cgroup BPF program refused it";
    case 22: return "invalid argument (EINVAL): a \"blackhole\" route to the address, or a malformed address";
    case 97: return "address family not supported (EAFNOSUPPORT): that IP version is switched off for the socket";
    case 99: return "cannot assign the source address (EADDRNOTAVAIL): no usable address of that family";
    case 100: return "network is down (ENETDOWN)";
    case 101: return "network unreachable (ENETUNREACH): no route to the address";
    case 113: return "no route to host (EHOSTUNREACH)";
    default: return fmt::format("errno {}", err);
    }
}

// An answering socket's address in words: a wildcard bind names only its port.
std::string socket_words(const LocalAnswer& a, const Transaction& t) {
    if (!a.socket.addr.is_unspecified()) return a.socket.str();
    if (t.redirected_to && t.redirected_to->port == a.socket.port) return t.redirected_to->str();
    return fmt::format("port {} (bound to every address)", a.socket.port);
}

// Where the request went, when not simply to the endpoint through an uplink.
std::string path_evidence(const Transaction& t, std::string_view server_text) {
    std::string out;
    if (t.via_proxy)
        out += fmt::format("; sent through the HTTP proxy {} as an absolute-URI request (not to {} itself)",
                           t.via_proxy->str(), server_text);
    if (t.answered_on_node) {
        const auto& a = *t.answered_on_node;
        std::string who = a.process ? fmt::format("{} (pid {})", a.process->comm, a.process->pid)
                                    : std::string("a local socket");
        const bool rewritten = a.socket != t.client_flow.server;
        out += fmt::format("; {} {} by {} at {}{}", t.response ? "answered" : "accepted",
                           a.in_client_pod ? "inside the pod" : "on this node", who, socket_words(a, t),
                           !rewritten           ? ""
                           : a.in_client_pod    ? " after a REDIRECT in the pod's own namespace"
                                                : " after DNAT");
        if (rewritten && !t.ttl_at_uplink && !t.response_at_uplink) out += "; the request never reached the uplink";
    } else if (t.reached_uplink == false && (t.delivered || t.server_reset || t.handshake_answered)) {
        out += fmt::format("; {} on this node: the request never left through an uplink, so {} never saw it (a DNAT "
                           "or REDIRECT rule sends it elsewhere)",
                           t.delivered ? "answered" : t.server_reset ? "reset" : "accepted", server_text);
    } else if (t.reached_uplink == false && t.drops.empty()) {
        // Nothing came back either: a datapath that hands packets to the
        // uplink past its tc hook would look the same, so no claim about IMDS.
        out += "; no packet of the request was seen leaving through an uplink, and no drop was seen";
    } else if (t.redirected_to && std::none_of(t.drops.begin(), t.drops.end(), [](const DropRecord& d) {
                   return d.rewritten.has_value();
               })) {
        out += fmt::format("; DNAT on this node sent it to {}, not to {}", t.redirected_to->str(), server_text);
    }
    return out;
}

// The node's own reset of a redirected connection: nothing listened at the
// DNAT target (NO_SOCKET there), and the reset went back un-NATed, as if
// from the endpoint.
const DropRecord* reset_at_redirect(const Transaction& t) {
    if (!t.redirected_to) return nullptr;
    for (const auto& d : t.drops)
        if (d.rewritten && !d.response && d.reason == "NO_SOCKET") return &d;
    return nullptr;
}

Verdict status_verdict(const Transaction& t) {
    int s = t.response ? t.response->status : 0;
    if (s >= 200 && s < 400) return Verdict::ok;
    if (s == 401) return t.request && t.request->token ? Verdict::token_invalid : Verdict::token_required;
    if (s == 403) return Verdict::forbidden;
    if (s == 404) return Verdict::not_found;
    if (s == 429 || s == 503) return Verdict::no_response;  // throttled
    if (s >= 400 && s < 500) return Verdict::bad_request;
    return Verdict::dropped;
}

std::string status_evidence(const Transaction& t, bool delivered_seen) {
    std::string s = fmt::format("HTTP {}", t.response ? t.response->status : 0);
    if (t.request) {
        std::string headers;
        if (t.request->token) headers += " with token header";
        else if (t.request->token_unknown()) headers += ", token header unknown (request head cut off)";
        else headers += " without token header";
        if (t.request->method == "PUT" && !t.request->token_ttl) headers += ", without TTL header";
        if (t.request->forwarded_for) headers += ", with X-Forwarded-For";
        s += fmt::format(" to {} {}{}", t.request->method, t.request->path, headers);
    }
    s += delivered_seen ? ", delivered to the client socket" : ", seen at the uplink";
    return s;
}

}  // namespace

std::string_view to_string(Verdict v) {
    for (auto& [k, n] : kNames)
        if (k == v) return n;
    return "UNKNOWN";
}

std::optional<Verdict> verdict_from_string(std::string_view s) {
    for (auto& [k, n] : kNames)
        if (n == s) return k;
    return std::nullopt;
}

int severity(Verdict v) {
    switch (v) {
    case Verdict::ok: return 0;
    case Verdict::not_found: return 1;
    case Verdict::dropped: return 2;
    case Verdict::no_response: return 3;
    case Verdict::bad_request: return 4;
    case Verdict::forbidden: return 5;
    case Verdict::token_invalid: return 6;
    case Verdict::token_required: return 7;
    case Verdict::refused: return 8;
    case Verdict::no_route: return 9;
    case Verdict::blocked: return 10;
    case Verdict::hop_limit_exceeded: return 11;
    }
    return 0;
}

bool is_failure(Verdict v) { return v != Verdict::ok && v != Verdict::not_found; }

HopFigures hop_figures(const Transaction& t) {
    HopFigures h;
    if (t.ttl_sent && t.ttl_at_uplink && *t.ttl_sent >= *t.ttl_at_uplink) {
        h.hops = *t.ttl_sent - *t.ttl_at_uplink;
    } else if (t.local_socket_at_uplink) {
        h.hops = 0;  // a socket of the node itself: no forwarding hop
    } else if (t.ttl_at_uplink) {
        // Client not seen by the cgroup hooks: assume the common initial TTLs.
        int ttl = *t.ttl_at_uplink;
        int initial = ttl <= 64 ? 64 : ttl <= 128 ? 128 : 255;
        h.hops = initial - ttl;
        h.inferred = true;
    }
    if (h.hops) h.required_hop_limit = *h.hops + 1;
    return h;
}

// The verdict from the packets (or the failed connect()), before the path.
static Classification classify_packets(const Transaction& t, std::string_view server_text);

Classification classify(const Transaction& t, std::string_view server_text) {
    Classification c = classify_packets(t, server_text);
    if (!t.connect_errno) c.evidence += path_evidence(t, server_text);
    return c;
}

static Classification classify_packets(const Transaction& t, std::string_view server_text) {
    Classification c;
    if (t.connect_errno) {
        // No packet: nothing about hops, drops or answers can be said.
        const int err = *t.connect_errno;
        c.verdict = err == 1 || err == 13 ? Verdict::blocked : Verdict::no_route;
        if (err == 22) c.verdict = Verdict::no_route;
        c.evidence = fmt::format("connect() to {} failed before any packet was sent: {}", server_text,
                                 connect_error_words(err));
        return c;
    }
    c.hops = hop_figures(t);
    const bool responded = t.response_at_uplink || t.delivered;

    if (t.delivered) {
        c.verdict = status_verdict(t);
        c.evidence = status_evidence(t, true);
        return c;
    }

    auto hop_drops = describe_drops(t, hop_exhaustion);
    bool predicted = t.response_ttl_at_node && c.hops.hops && *t.response_ttl_at_node <= *c.hops.hops;
    if (!hop_drops.empty() || t.icmp_time_exceeded > 0 || (predicted && t.seen_at_socket)) {
        c.verdict = Verdict::hop_limit_exceeded;
        // This connection's own evidence only: a response that arrived with
        // TTL t and still ran out of hops went through at least t hops, so
        // it needs a hop limit of t + 1 even where the TTLs the client sent
        // suggest fewer hops (a datapath that decrements TTL itself).
        if (t.response_ttl_at_node && (!hop_drops.empty() || t.icmp_time_exceeded > 0))
            c.hops.required_hop_limit = std::max(c.hops.required_hop_limit.value_or(0), *t.response_ttl_at_node + 1);
        std::string e;
        if (t.response_ttl_at_node)
            e = fmt::format("response reached the node with TTL {}", *t.response_ttl_at_node);
        if (c.hops.hops)
            e += fmt::format("{}client is {} hop{} behind the uplink{}", e.empty() ? "" : ", ", *c.hops.hops,
                             *c.hops.hops == 1 ? "" : "s", c.hops.inferred ? " (inferred)" : "");
        if (!hop_drops.empty()) e += "; " + hop_drops;
        if (t.icmp_time_exceeded)
            e += fmt::format("; {} ICMP time exceeded sent to {}", t.icmp_time_exceeded, server_text);
        if (hop_drops.empty() && !t.icmp_time_exceeded) e += "; response never delivered";
        c.evidence = e;
        return c;
    }

    if (std::any_of(t.drops.begin(), t.drops.end(), path_drop)) {
        bool policy = std::any_of(t.drops.begin(), t.drops.end(), policy_drop);
        bool route = std::any_of(t.drops.begin(), t.drops.end(), route_drop);
        c.verdict = policy ? Verdict::blocked : route ? Verdict::no_route : Verdict::dropped;
        c.evidence = describe_drops(t, path_drop);
        return c;
    }

    if (t.server_reset) {
        c.verdict = Verdict::refused;
        if (const auto* d = reset_at_redirect(t))
            c.evidence = fmt::format("{} reset the connection, not {}: nothing listens at {}, where DNAT sent it "
                                     "({}x NO_SOCKET at {})",
                                     d->place == "node" || d->place.empty() ? "the node itself"
                                                                            : "the network namespace at the DNAT target",
                                     server_text, d->rewritten->str(), d->count, d->location);
        else
            c.evidence = fmt::format("connection reset by {}", server_text);
        return c;
    }

    if (responded) {
        // Seen arriving, no drop seen: the client is outside the traced cgroup
        // (or delivery raced the end of the window).  Judge by the status.
        c.verdict = status_verdict(t);
        c.evidence = status_evidence(t, false);
        return c;
    }

    c.verdict = Verdict::no_response;
    if (!t.handshake_answered)
        c.evidence = fmt::format("no SYN-ACK from {}{}", server_text,
                                 t.retransmits ? fmt::format(", {} retransmissions", t.retransmits) : "");
    else
        c.evidence = fmt::format("connected, but no response to {}{}",
                                 t.request ? t.request->method + " " + t.request->path : std::string("the request"),
                                 t.retransmits ? fmt::format(", {} retransmissions", t.retransmits) : "");
    return c;
}

}  // namespace imdstrace
