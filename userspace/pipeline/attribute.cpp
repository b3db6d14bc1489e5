#include "pipeline/attribute.hpp"

#include "verdict/verdict.hpp"

namespace imdstrace {

TransactionRecord attribute(const Transaction& t, std::int64_t wall_ms, const CgroupNamer& cgroup_of,
                            PodResolver& pods, bool target_on_node) {
    TransactionRecord r;
    const auto c = classify(t, t.client_flow.server.str());
    r.wall_ms = wall_ms;
    r.client = t.client_flow.client;
    r.server = t.client_flow.server;
    if (t.cgroup_id && cgroup_of) r.cgroup = cgroup_of(t.cgroup_id);
    if (!r.cgroup.empty()) r.pod = pods.by_cgroup(r.cgroup);
    if (!r.pod) r.pod = pods.by_ip(r.client.addr);
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
    r.incomplete = t.incomplete;
    r.events_lost = t.events_lost;
    r.target_on_node = target_on_node;
    return r;
}

}  // namespace imdstrace
