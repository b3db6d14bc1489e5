#include "pipeline/attribute.hpp"

#include "verdict/verdict.hpp"

namespace imdstrace {

TransactionRecord attribute(Transaction t, std::int64_t wall_ms, const CgroupNamer& cgroup_of, PodResolver& pods,
                            bool target_on_node) {
    TransactionRecord r;
    t.target_on_node = target_on_node;
    // Did it leave through an uplink?  Only answerable when the uplinks are
    // traced, the client's own packets were seen, and the target is not this node's.
    if (t.uplinks_traced && t.seen_at_socket && !target_on_node && !t.connect_errno && !t.via_proxy)
        t.reached_uplink = t.ttl_at_uplink.has_value() || t.response_at_uplink || t.local_socket_at_uplink;
    r.wall_ms = wall_ms;
    r.client = t.client_flow.client;
    r.server = t.client_flow.server;
    if (t.via_proxy) {
        // The endpoint the request names, not the proxy it went to.
        r.via_proxy = t.via_proxy;
        if (t.request && !t.request->absolute_authority.empty())
            if (auto named = Endpoint::parse(t.request->absolute_authority, 80)) r.server = *named;
    }
    if (t.cgroup_id && cgroup_of) r.cgroup = cgroup_of(t.cgroup_id);
    if (!r.cgroup.empty()) r.pod = pods.by_cgroup(r.cgroup);
    if (!r.pod && !t.connect_errno) r.pod = pods.by_ip(r.client.addr);  // a failed connect() has no address
    // A socket of the client's own pod answered: a REDIRECT inside the pod (a sidecar).
    if (t.answered_on_node && t.answered_on_node->cgroup_id && cgroup_of && r.pod) {
        auto answering = cgroup_of(t.answered_on_node->cgroup_id);
        if (!answering.empty())
            if (auto p = pods.by_cgroup(answering); p && p->ref() == r.pod->ref()) t.answered_on_node->in_client_pod = true;
    }
    const auto c = classify(t, r.server.str());
    r.answered_by = t.answered_on_node;
    r.reached_uplink = t.reached_uplink;
    r.redirected_to = t.redirected_to;
    r.connect_errno = t.connect_errno;
    r.request = t.request;
    r.process = t.process;
    if (t.response) r.status = t.response->status;
    if (t.response_ttl_at_node) r.ttl_at_node = *t.response_ttl_at_node;
    r.hops = c.hops.hops;
    r.hops_inferred = c.hops.inferred;
    r.required_hop_limit = c.hops.required_hop_limit;
    r.verdict = c.verdict;
    r.evidence = c.evidence;
    r.drops = t.drops;
    r.icmp_time_exceeded = t.icmp_time_exceeded;
    r.retransmits = t.retransmits;
    r.duration_ms = static_cast<std::int64_t>((t.end_ns - t.start_ns) / 1'000'000);
    r.opened_before_tracing = t.opened_before_window;
    r.opening_unseen = t.opening_unseen;
    r.incomplete = t.incomplete;
    r.events_lost = t.events_lost;
    r.target_on_node = target_on_node;
    return r;
}

}  // namespace imdstrace
