#include "verdict/diagnosis.hpp"

#include "verdict/drop_fix.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>

namespace imdstrace {

std::string TransactionRecord::subject() const {
    if (pod) return pod->ref();
    if (!cgroup.empty()) return "cgroup:" + cgroup;
    return "client:" + client.addr.str();
}

bool Diagnosis::failing() const {
    return std::any_of(findings.begin(), findings.end(), [](const Finding& f) { return is_failure(f.verdict); });
}

std::string hop_limit_fix(int required) {
    return fmt::format(
        "Raise the instance metadata hop limit (httpPutResponseHopLimit) to {0}:\n"
        "  Karpenter EC2NodeClass:  spec.metadataOptions.httpPutResponseHopLimit: {0}\n"
        "  Launch template:         MetadataOptions.HttpPutResponseHopLimit = {0}\n"
        "  Running instance:        aws ec2 modify-instance-metadata-options --instance-id <id> "
        "--http-put-response-hop-limit {0} --http-tokens required --http-endpoint enabled",
        required);
}

namespace {

// A node-local agent (the EKS Pod Identity agent on 169.254.170.23 /
// [fd00:ec2::23]) answers on this node: no IMDS setting applies.
std::string node_agent_fix(Verdict v, const TransactionRecord& example) {
    const std::string agent = example.server.str();
    switch (v) {
    case Verdict::refused:
        return fmt::format("Nothing listens on {} on this node: the agent on this node is not running (for the EKS Pod "
                           "Identity agent: kubectl -n kube-system get pods -l app.kubernetes.io/name=eks-pod-identity-agent "
                           "-o wide, and its logs).",
                           agent);
    case Verdict::no_response:
        return fmt::format("The agent on this node at {} accepted the connection and never answered: it is hung or "
                           "overloaded (check its logs and restart it; for the EKS Pod Identity agent: kubectl -n "
                           "kube-system logs -l app.kubernetes.io/name=eks-pod-identity-agent).",
                           agent);
    case Verdict::blocked:
        return fmt::format("A policy on this node drops traffic to the agent at {}: check iptables/nftables INPUT and "
                           "OUTPUT rules and NetworkPolicies that match it.",
                           agent);
    case Verdict::no_route:
    case Verdict::dropped:
        return fmt::format("The agent's address {} is not on this node: the agent on this node is not running or not "
                           "installed (for the EKS Pod Identity agent: the eks-pod-identity-agent add-on's DaemonSet "
                           "puts the address on the node when it starts).",
                           agent);
    default:
        return fmt::format("The agent on this node at {} answered with an error: check its logs.", agent);
    }
}

// The drop that decided a record's verdict: the first of the kind the
// verdict is about (a route drop for NO_ROUTE, a policy drop for BLOCKED),
// never TCP's own bookkeeping.
const DropRecord* deciding_drop(Verdict v, const TransactionRecord& r) {
    for (const auto& d : r.drops) {
        if (d.endpoint_bookkeeping()) continue;
        const bool route = d.reason.ends_with("NOROUTES");
        const bool policy = !netfilter_chain(d, false).empty() || d.reason.starts_with("BPF_CGROUP") ||
                            d.reason.starts_with("TC_");
        if (v == Verdict::no_route ? route : v == Verdict::blocked ? policy : true) return &d;
    }
    return nullptr;
}

// connect(2) failed before a packet: the fix is in the pod's own network
// setup or policy, not on the path.
std::string connect_error_fix(const TransactionRecord& r) {
    const bool v4 = r.server.addr.is_v4();
    switch (*r.connect_errno) {
    case 101:  // ENETUNREACH
    case 113:  // EHOSTUNREACH
    case 100:  // ENETDOWN
        return v4 ? fmt::format("The pod has no IPv4 route to {0}: on an IPv6-only pod use the IPv6 endpoint "
                                "(AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE=IPv6, or "
                                "AWS_EC2_METADATA_SERVICE_ENDPOINT=http://[fd00:ec2::254]; httpProtocolIpv6 enabled on "
                                "the instance), or give the pod an IPv4 route to {0} (check `ip route get {0}` in the "
                                "pod's network namespace).",
                                r.server.addr.str())
                  : fmt::format("The pod has no IPv6 route to {0}: enable httpProtocolIpv6 on the instance and give "
                                "the pod an IPv6 route to it, or use the IPv4 endpoint "
                                "(AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE=IPv4).",
                                r.server.addr.str());
    case 22:  // EINVAL
        return fmt::format("The pod routes {0} into a blackhole (or the client passes a bad address): check `ip route "
                           "get {0}` in the pod's network namespace and remove the blackhole route.",
                           r.server.addr.str());
    case 13:  // EACCES: a prohibit route, or a policy
        return fmt::format("connect() to {0} was refused inside the pod before any packet: first check `ip route get "
                           "{1}` in the pod's network namespace (a \"prohibit\" route gives EACCES); otherwise a cgroup "
                           "BPF connect program (bpftool cgroup tree) or an LSM profile of the container denies it: "
                           "allow the metadata address there.",
                           r.server.str(), r.server.addr.str());
    case 1:  // EPERM
        return fmt::format("connect() to {} was refused inside the kernel before any packet: a cgroup BPF connect "
                           "program (a CNI or network policy agent's socket-level policy; bpftool cgroup tree) or an "
                           "LSM (AppArmor/SELinux profile of the container) denies it: allow the metadata address "
                           "there.",
                           r.server.str());
    case 99:  // EADDRNOTAVAIL
        return fmt::format("The pod has no usable source address to reach {}: check the pod's addresses (`ip addr` "
                           "in its network namespace) and, for IPv6, that its address is not tentative/deprecated.",
                           r.server.addr.str());
    case 97:  // EAFNOSUPPORT
        return v4 ? "The client's socket cannot use IPv4 here: use the IPv6 endpoint "
                    "(AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE=IPv6) or enable IPv4 for the pod."
                  : "IPv6 is switched off for the client (net.ipv6.conf.all.disable_ipv6=1 or ipv6.disable=1): use "
                    "the IPv4 endpoint (AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE=IPv4) or enable IPv6 for the pod.";
    default:
        return fmt::format("connect() to {} failed with errno {} before any packet: check the client's socket "
                           "options and the pod's network setup.",
                           r.server.str(), *r.connect_errno);
    }
}

// Metadata requests sent to an HTTP proxy: the proxy's own identity and
// headers (X-Forwarded-For: IMDS refuses token PUTs that carry it).
std::string proxy_fix(const TransactionRecord& r) {
    return fmt::format("The client sends its metadata requests through the HTTP proxy {} (HTTP_PROXY/http_proxy is "
                       "set and the metadata address is not in NO_PROXY): set NO_PROXY (and no_proxy) to include "
                       "169.254.169.254,fd00:ec2::254 as plain addresses: Go matches CIDRs there, but Python's urllib "
                       "(botocore, the AWS CLI) matches only names and addresses, so 169.254.0.0/16 is not enough "
                       "for every client.",
                       r.via_proxy->str());
}

// A socket of this node answered for the metadata address: the request was
// intercepted (DNAT/REDIRECT to a metadata proxy such as kube2iam or kiam).
std::string interception_fix(Verdict v, const TransactionRecord& r) {
    const auto& a = *r.answered_by;
    const std::string at = a.socket.addr.is_unspecified() && r.redirected_to ? r.redirected_to->str() : a.socket.str();
    std::string who = a.process ? fmt::format("{} (pid {})", a.process->comm, a.process->pid)
                                : fmt::format("the process listening on {}", at);
    if (a.in_client_pod)
        return fmt::format("{} inside the pod answers for {} (a REDIRECT in the pod's own network namespace to {}, "
                           "as a service-mesh sidecar does): IMDS never saw the request. Exclude the metadata address "
                           "from the sidecar's interception (Istio: the annotation "
                           "traffic.sidecar.istio.io/excludeOutboundIPRanges: 169.254.169.254/32) or fix that proxy.",
                           who, r.server.str(), at);
    std::string what = fmt::format("{} on this node answers for {} (DNAT to {})", who, r.server.str(), at);
    switch (v) {
    case Verdict::forbidden:
    case Verdict::bad_request:
    case Verdict::token_required:
    case Verdict::token_invalid:
        return what + " and refuses the request: this is that proxy's answer, not IMDS's (no instance metadata "
                      "option applies). Upgrade it to a version that passes IMDSv2 token requests (PUT "
                      "/latest/api/token) through, or remove the interception (the DNAT rule and the agent).";
    case Verdict::no_response:
        return what + " and does not answer: the proxy is hung or overloaded; check its logs and restart it.";
    default:
        return what + ": check that proxy's logs and configuration; IMDS never saw the request.";
    }
}

// DNAT on this node sent the request elsewhere and it went no further.
std::string redirect_fix(Verdict v, const TransactionRecord& r) {
    const std::string to = r.redirected_to->str();
    switch (v) {
    case Verdict::blocked:
        if (const auto* d = deciding_drop(v, r); d && d->response)
            return fmt::format("A policy on this node drops the replies of the agent at {0}, that DNAT sends {1} to "
                               "(OUTPUT chain, source port {2}): allow that agent's replies to the pods.",
                               to, r.server.str(), r.redirected_to->port);
        return fmt::format("A policy on this node drops the metadata traffic after DNAT rewrote it to {0}: a rule "
                           "that allows {1} no longer matches the rewritten destination. Allow {0} in the node's "
                           "INPUT rules (or match the original destination: -m conntrack --ctorigdst {2}).",
                           to, r.server.str(), r.server.addr.str());
    case Verdict::refused:
        return fmt::format("{1} is DNATed to {0} on this node and nothing listens there: the metadata proxy "
                           "(kube2iam/kiam-style agent) is not running, or listens on another address. Start it, or "
                           "remove the DNAT rule ({3} -t nat -S PREROUTING | grep {2}).",
                           to, r.server.str(), r.server.addr.str(), r.server.addr.is_v4() ? "iptables" : "ip6tables");
    case Verdict::no_response:
        return fmt::format("{1} is DNATed to {0} on this node, and {0} does not answer: check the agent that "
                           "should listen there.",
                           to, r.server.str());
    default:
        return fmt::format("{1} is DNATed to {0} on this node: the failure is on the redirected path, not at IMDS; "
                           "check what the DNAT rule points at.",
                           to, r.server.str());
    }
}

// The request never left through an uplink and no drop explains it:
// something on this node answered (or swallowed) it, not IMDS.
std::string never_left_fix(Verdict v, const TransactionRecord& r) {
    const char* ipt = r.server.addr.is_v4() ? "iptables" : "ip6tables";
    return fmt::format(
        "The request never left this node through an uplink, so {0} never saw it{1}: a DNAT or REDIRECT rule sends "
        "it elsewhere (a metadata agent such as kube2iam/kiam, or another pod). Find it with `{2} -t nat -S | grep "
        "{3}` (and `nft list ruleset`) on the node and in the pod, then fix the agent it points at or remove the rule; "
        "no instance metadata option applies.",
        r.server.str(),
        v == Verdict::refused ? std::string(" (the reset came from this node)")
                              : fmt::format(" (the HTTP {} came from this node)", r.status.value_or(0)),
        ipt, r.server.addr.str());
}

std::string generic_fix(Verdict v, const TransactionRecord& example, const NodeFacts& node) {
    if (example.connect_errno) return connect_error_fix(example);
    if (example.via_proxy) return proxy_fix(example);
    if (example.target_on_node && v != Verdict::not_found) return node_agent_fix(v, example);
    if (example.answered_by && example.answered_by->socket != example.server) return interception_fix(v, example);
    if (example.redirected_to && !example.answered_by) return redirect_fix(v, example);
    const bool drop_verdict = v == Verdict::blocked || v == Verdict::no_route || v == Verdict::dropped;
    // Only with an answer (or reset) that came from this node: silence alone
    // could also be a datapath that bypasses the uplink's tc hook.
    if (example.reached_uplink == false && !drop_verdict && !example.answered_by && v != Verdict::no_response)
        return never_left_fix(v, example);
    if (v == Verdict::forbidden && example.request && example.request->forwarded_for)
        return "IMDS refuses a token PUT that carries X-Forwarded-For (IMDSv2's guard against proxied requests): this "
               "client forwards other clients' requests (an HTTP proxy). The clients behind it must bypass it for the "
               "metadata address: NO_PROXY=169.254.169.254,fd00:ec2::254.";
    if (v == Verdict::blocked || v == Verdict::no_route || v == Verdict::dropped)
        if (const auto* d = deciding_drop(v, example))
            return drop_fix(*d, example.family() == Family::ipv6, example.hops == 0, node);
    std::string where;
    if (!example.drops.empty())
        where = fmt::format("{}{}{}", example.drops.front().location,
                            example.drops.front().reason.empty() ? "" : ", reason ", example.drops.front().reason);
    switch (v) {
    case Verdict::token_required:
        return "The client speaks IMDSv1 but the instance requires tokens (httpTokens=required): upgrade the "
               "client/SDK to IMDSv2 (PUT /latest/api/token first); only as a stopgap set --http-tokens optional.";
    case Verdict::token_invalid:
        return "The token sent is expired or not valid for this instance: fetch a new token with PUT "
               "/latest/api/token and check the client's token cache and TTL.";
    case Verdict::forbidden:
        return "IMDS refused the request: the endpoint is disabled (aws ec2 modify-instance-metadata-options "
               "--http-endpoint enabled), a proxy adds X-Forwarded-For to the token PUT (exclude 169.254.169.254 "
               "via NO_PROXY), or the token path is versioned (use /latest/api/token).";
    case Verdict::bad_request:
        return "The token PUT lacks X-aws-ec2-metadata-token-ttl-seconds (or the request is malformed): fix the "
               "client.";
    case Verdict::not_found:
        return "The path does not exist on this instance (for example no IAM role attached for "
               "iam/security-credentials): check the path and the instance profile.";
    case Verdict::blocked:
        return fmt::format("A policy on the node drops IMDS traffic (at {}): check iptables/nftables FORWARD "
                           "and OUTPUT rules, NetworkPolicies and BPF programs that match 169.254.169.254.",
                           where.empty() ? "an unknown place" : where);
    case Verdict::no_route:
        return "There is no route to the metadata endpoint or back to the client: check `ip route get "
               "169.254.169.254` on the node and in the pod, and the node's route back to the pod address.";
    case Verdict::refused:
        return "The connection was reset: something on the path answers for the metadata address (an IMDS "
               "proxy such as kube2iam/kiam, or a local interceptor); check what listens there.";
    case Verdict::no_response:
        return "Nothing came back: IMDS throttles silently beyond the link-local allowance (~1024 packets/s per "
               "interface); cache credentials and tokens, reduce polling, and check the endpoint is enabled.";
    case Verdict::dropped:
        return fmt::format("The kernel dropped the traffic at {}: look up that drop reason for this kernel.",
                           where.empty() ? "an unknown place" : where);
    default:
        return {};
    }
}

// Only a 200 answer to a token PUT tells the instance's hop limit: IMDS
// sets that answer's IP TTL to httpPutResponseHopLimit, every other answer
// (a 403, a GET's) leaves with the default TTL.  A node-local agent's
// answers say nothing about IMDS.
std::optional<int> observed_hop_limit(const std::vector<TransactionRecord>& records) {
    std::optional<int> limit;
    for (const auto& r : records)
        if (r.token_request() && r.status == 200 && r.ttl_at_node && !r.target_on_node)
            limit = std::min(limit.value_or(255), *r.ttl_at_node);
    return limit;
}

// One summary per subject (pod, cgroup or client address), worst first.
std::vector<PodSummary> summarize_pods(const std::vector<TransactionRecord>& records,
                                       const std::vector<std::uint64_t>& weights) {
    std::map<std::string, PodSummary> pods;
    std::set<std::string> exact_hops;  // subjects whose hops were measured, not inferred
    std::map<std::string, int> ran_out;  // subject -> hop limit its failed connections' own evidence asks for
    for (std::size_t i = 0; i < records.size(); ++i) {
        const auto& r = records[i];
        const int w = static_cast<int>(weights[i]);
        auto subject = r.subject();
        auto& p = pods[subject];
        p.subject = subject;
        if (r.pod) p.pod = r.pod;
        if (!r.cgroup.empty()) p.cgroup = r.cgroup;
        p.ips.insert(r.client.addr.str());
        // Exact figures beat inferred ones; among equals the largest distance counts.
        if (r.hops) {
            const bool exact = exact_hops.contains(subject);
            if (!r.hops_inferred && !exact) {
                p.hops = *r.hops;  // the first measured figure replaces any inferred one
                exact_hops.insert(subject);
            } else if (r.hops_inferred != exact) {
                p.hops = std::max(p.hops.value_or(0), *r.hops);
            }
        }
        // A connection whose own evidence asks for more (it ran out of hops
        // with a TTL above its measured distance) raises the pod's figure.
        if (r.verdict == Verdict::hop_limit_exceeded && r.required_hop_limit)
            ran_out[subject] = std::max(ran_out[subject], *r.required_hop_limit);
        p.transactions += w;
        if (r.incomplete && r.events_lost) p.incomplete += w;
        p.verdicts[r.verdict] += w;
        if (severity(r.verdict) > severity(p.verdict)) p.verdict = r.verdict;
    }
    // Worst first, by name within a verdict: one bucket per severity keeps
    // this linear (sorting 100k summaries moved them around log n times).
    std::vector<std::vector<PodSummary*>> by_severity;
    for (auto& [k, p] : pods) {
        if (p.hops) p.required_hop_limit = *p.hops + 1;
        if (auto it = ran_out.find(k); it != ran_out.end())
            p.required_hop_limit = std::max(p.required_hop_limit.value_or(0), it->second);
        auto s = static_cast<std::size_t>(severity(p.verdict));
        if (s >= by_severity.size()) by_severity.resize(s + 1);
        by_severity[s].push_back(&p);
    }
    std::vector<PodSummary> out;
    out.reserve(pods.size());
    for (auto bucket = by_severity.rbegin(); bucket != by_severity.rend(); ++bucket)
        for (auto* p : *bucket) out.push_back(std::move(*p));
    return out;
}

// The records of one verdict, folded: what a finding is built from.
struct VerdictGroup {
    std::vector<const TransactionRecord*> records;  // kept records, first-seen order
    std::uint64_t transactions = 0;                 // the transactions they stand for
    std::vector<std::string> subjects;  // first-seen order
    std::set<std::string> subject_set;
    std::map<std::string, std::uint64_t> drop_totals;  // "reason X at Y (TTL n)" -> drops
    std::uint64_t icmp = 0;

    void add(const TransactionRecord& r, std::uint64_t weight) {
        records.push_back(&r);
        transactions += weight;
        if (subject_set.insert(r.subject()).second) subjects.push_back(r.subject());
        for (const auto& dr : r.drops)
            if (!endpoint_bookkeeping(dr))
                drop_totals[fmt::format("{}{} at {} (TTL {})", dr.reason.empty() ? "" : "reason ", dr.reason,
                                        dr.location, dr.ttl)] += dr.count * weight;
        icmp += r.icmp_time_exceeded * weight;
    }
    std::string drops() const {
        std::string out;
        for (const auto& [what, n] : drop_totals) out += fmt::format("{}{} drops {}", out.empty() ? "" : ", ", n, what);
        return out;
    }
    std::string count_text() const {
        return fmt::format("{} transaction{}", transactions, transactions == 1 ? "" : "s");
    }
};

// Subjects with a record matching `pred`, among `among`.
template <typename Pred>
std::set<std::string> subjects_where(const std::vector<TransactionRecord>& records, const std::set<std::string>& among,
                                     Pred pred) {
    std::set<std::string> out;
    for (const auto& r : records)
        if (pred(r) && among.contains(r.subject())) out.insert(r.subject());
    return out;
}

Finding hop_limit_finding(const VerdictGroup& g, const std::vector<TransactionRecord>& records,
                          std::optional<int> hop_limit_observed) {
    Finding f;
    f.verdict = Verdict::hop_limit_exceeded;
    f.pods = g.subjects;
    int required = 0, max_hops = -1, min_hops = 256;
    for (const auto* r : g.records) {
        if (r->required_hop_limit) required = std::max(required, *r->required_hop_limit);
        if (r->hops) {
            max_hops = std::max(max_hops, *r->hops);
            min_hops = std::min(min_hops, *r->hops);
        }
    }
    const auto& example = *g.records.front();
    f.evidence = g.count_text() + ": ";
    if (hop_limit_observed)
        f.evidence += fmt::format("token responses reach the node with TTL {} (the instance's hop limit)",
                                  *hop_limit_observed);
    else if (example.ttl_at_node)
        f.evidence += fmt::format("responses reach the node with TTL {}", *example.ttl_at_node);
    const bool one = f.pods.size() == 1;
    if (max_hops >= 0 && min_hops == max_hops)
        f.evidence += fmt::format("; the client{} {} {} hop{} behind the uplink and need{} hop limit {}", one ? "" : "s",
                                  one ? "is" : "are", max_hops, max_hops == 1 ? "" : "s", one ? "s" : "", required);
    else if (max_hops >= 0)
        f.evidence += fmt::format("; the clients are {} to {} hops behind the uplink; the farthest needs hop limit {}",
                                  min_hops, max_hops, required);
    if (auto drops = g.drops(); !drops.empty()) f.evidence += "; kernel: " + drops;
    if (g.icmp) f.evidence += fmt::format("; {} ICMP time exceeded sent back to IMDS", g.icmp);
    // Pods whose token requests fail but whose tokenless metadata GETs still
    // work.  Only GETs: the token PUT never carries a token, and a head cut
    // off before its headers may have carried one.
    auto fallback = subjects_where(records, g.subject_set, [](const TransactionRecord& r) {
        return r.verdict == Verdict::ok && r.request && r.request->method == "GET" && !r.request->token &&
               !r.request->token_unknown();
    });
    if (!fallback.empty())
        f.evidence += fmt::format("; IMDSv1 requests without a token still succeed for {}: they will fail "
                                  "too once httpTokens is required",
                                  fmt::join(fallback, ", "));
    if (required >= 2) {
        f.fix = hop_limit_fix(required);
    } else {
        // No connection measured its own distance: no number is better than a wrong one.
        f.fix = "Raise the instance metadata hop limit (httpPutResponseHopLimit) above the number of hops between "
                "these clients and the uplink (imdstrace could not measure it on these connections: run `imdstrace "
                "probe --pod NS/NAME` for a measured figure); Karpenter EC2NodeClass "
                "spec.metadataOptions.httpPutResponseHopLimit, launch template MetadataOptions, or aws ec2 "
                "modify-instance-metadata-options --http-put-response-hop-limit.";
    }
    return f;
}

Finding status_finding(Verdict v, const VerdictGroup& g, const std::vector<TransactionRecord>& records,
                       const NodeFacts& node) {
    Finding f;
    f.verdict = v;
    f.pods = g.subjects;
    const auto& example = *g.records.front();
    f.evidence = fmt::format("{}; e.g. {}", g.count_text(), example.evidence);
    if (auto drops = g.drops(); !drops.empty() && example.evidence.find("dropped") == std::string::npos)
        f.evidence += "; kernel: " + drops;
    f.fix = generic_fix(v, example, node);
    if (v == Verdict::token_required) {
        // SDKs fall back to IMDSv1 when their token PUT times out: on a
        // tokens-required node the 401 is a symptom of the hop limit.
        auto after_hop = subjects_where(records, g.subject_set, [](const TransactionRecord& r) {
            return r.verdict == Verdict::hop_limit_exceeded && r.token_request();
        });
        if (!after_hop.empty()) {
            f.evidence += fmt::format("; for {} these IMDSv1 requests came after the token requests failed with "
                                      "HOP_LIMIT_EXCEEDED (the SDK's fallback): fix the hop limit first",
                                      fmt::join(after_hop, ", "));
            f.fix = "Fix the hop limit (see HOP_LIMIT_EXCEEDED): the client then gets its token and stops "
                    "falling back to IMDSv1.";
        }
    }
    return f;
}

// One finding per failing verdict, worst first, naming every pod that met it.
// Which way a record's request went: records of one verdict that took
// different paths have different causes and different fixes.
std::string path_kind(const TransactionRecord& r) {
    if (r.connect_errno) return "connect:" + std::to_string(*r.connect_errno);
    if (r.via_proxy) return "proxy:" + r.via_proxy->str();
    if (r.answered_by && r.answered_by->socket != r.server) return "answered:" + r.answered_by->socket.str();
    if (r.redirected_to) return "redirected:" + r.redirected_to->str();
    if (r.reached_uplink == false && r.verdict != Verdict::no_response) return "never-left-node";
    if (r.request && r.request->forwarded_for) return "forwarded-for";
    return r.target_on_node ? "agent" : "";
}

std::vector<Finding> build_findings(const std::vector<TransactionRecord>& records,
                                    const std::vector<std::uint64_t>& weights, std::optional<int> hop_limit_observed,
                                    const NodeFacts& node) {
    std::map<std::pair<Verdict, std::string>, VerdictGroup> groups;
    for (std::size_t i = 0; i < records.size(); ++i)
        if (records[i].verdict != Verdict::ok) groups[{records[i].verdict, path_kind(records[i])}].add(records[i], weights[i]);
    std::vector<std::pair<Verdict, const VerdictGroup*>> order;
    for (const auto& [k, g] : groups) order.emplace_back(k.first, &g);
    std::stable_sort(order.begin(), order.end(),
                     [](const auto& a, const auto& b) { return severity(a.first) > severity(b.first); });
    std::vector<Finding> out;
    for (const auto& [v, g] : order)
        out.push_back(v == Verdict::hop_limit_exceeded ? hop_limit_finding(*g, records, hop_limit_observed)
                                                       : status_finding(v, *g, records, node));
    return out;
}

// Pods the hop budget does not reach, that have not hit it yet.
std::vector<Warning> hop_budget_warnings(const std::vector<PodSummary>& pods, std::optional<int> hop_limit_observed) {
    if (!hop_limit_observed) return {};
    Warning w;
    int needed = 0;
    for (const auto& p : pods) {
        if (!p.required_hop_limit || *p.required_hop_limit <= *hop_limit_observed) continue;
        if (p.verdicts.count(Verdict::hop_limit_exceeded)) continue;  // already a finding
        w.pods.push_back(p.subject);
        needed = std::max(needed, *p.required_hop_limit);
    }
    if (w.pods.empty()) return {};
    w.message = fmt::format(
        "{}{} hop{} behind the uplink while the node's hop limit is {}: IMDSv2 token requests from "
        "{} will time out (HOP_LIMIT_EXCEEDED), although the requests seen so far worked (IMDSv1, or "
        "answers IMDS sends with the default TTL)",
        w.pods.size() == 1 ? "" : "up to ", needed - 1, needed - 1 == 1 ? "" : "s", *hop_limit_observed,
        w.pods.size() == 1 ? "this client" : "these clients");
    w.fix = hop_limit_fix(needed);
    return {std::move(w)};
}

// What a diagnosis reads of a record beyond the first of its kind, as one
// string: records with equal keys change nothing but the counts.  Left out:
// wall_ms, the client port, process, evidence (read from a group's first
// record only, which is always kept), retransmits, duration_ms and the
// events_lost figure (only whether any were lost counts).
std::string fold_key(const TransactionRecord& r) {
    // A new field must be placed: read by the diagnosis (add it here) or not.
#if defined(__GLIBCXX__) && defined(__LP64__)
    static_assert(sizeof(TransactionRecord) == 720, "TransactionRecord changed: place the new field in fold_key");
#endif
    fmt::memory_buffer k;
    auto out = std::back_inserter(k);
    auto opt = [](const auto& v) { return v ? fmt::format("{}", *v) : std::string("-"); };
    auto ep = [](const std::optional<Endpoint>& e) { return e ? e->str() : std::string("-"); };
    fmt::format_to(out, "{}|{}|{}|{}|{}|", r.subject(), r.cgroup, r.client.addr.str(), r.server.str(),
                   static_cast<int>(r.verdict));
    if (r.pod) {
        fmt::format_to(out, "pod:{}/{}/{}/{}/{}/", r.pod->namespace_, r.pod->name, r.pod->uid, r.pod->container,
                       r.pod->cgroup);
        for (const auto& ip : r.pod->ips) fmt::format_to(out, "{},", ip.str());
    }
    if (r.request)
        fmt::format_to(out, "|req:{} {} {} {}{}{}{}{}", r.request->method, r.request->path,
                       r.request->absolute_authority, r.request->token, r.request->token_ttl,
                       r.request->forwarded_for, r.request->headers_complete, r.request->head_cut);
    fmt::format_to(out, "|{}|{}|{}|{}|{}|{}|{}|{}|{}|{}|{}|{}|", opt(r.status), opt(r.ttl_at_node), opt(r.hops),
                   r.hops_inferred, opt(r.required_hop_limit), r.icmp_time_exceeded, r.incomplete,
                   r.events_lost > 0, r.target_on_node, ep(r.redirected_to), ep(r.via_proxy), opt(r.connect_errno));
    fmt::format_to(out, "{}|", r.reached_uplink ? (*r.reached_uplink ? "1" : "0") : "-");
    if (r.answered_by)
        fmt::format_to(out, "ans:{} {} {} {} {}|", r.answered_by->socket.str(), r.answered_by->cgroup_id,
                       r.answered_by->in_client_pod, r.answered_by->process ? r.answered_by->process->pid : 0,
                       r.answered_by->process ? r.answered_by->process->comm : "");
    for (const auto& d : r.drops)
        fmt::format_to(out, "drop:{} {} {} {} {} {} {} {} {} {}|", d.reason, d.location, d.ttl, d.response, d.count,
                       d.netns, d.place, ep(d.rewritten), d.rewritten_to_node, d.device);
    return fmt::to_string(k);
}

}  // namespace

std::string set_aside_reason(const TransactionRecord& r) {
    if (r.opened_before_tracing) return "opened before tracing";
    if (r.opening_unseen) return "opening not seen (events lost): maybe opened before tracing";
    if (r.incomplete && r.verdict == Verdict::no_response)
        return r.events_lost ? "events lost" : "in flight when the window ended";
    return {};
}

void DiagnosisBuilder::add(const TransactionRecord& r) {
    // `lowest_response_ttl`, when given: the lowest TTL of a dropped response
    // (only a response carries the hop limit IMDS set).
    auto count_drops = [&r](std::map<std::string, std::uint64_t>& into,
                            std::optional<int>* lowest_response_ttl = nullptr) {
        for (const auto& dr : r.drops) {
            if (endpoint_bookkeeping(dr)) continue;
            into[fmt::format("{} {}at {}{}{} (TTL {})", dr.response ? "responses" : "requests", "", dr.location,
                             dr.reason.empty() ? "" : ", reason ", dr.reason, dr.ttl)] += dr.count;
            if (lowest_response_ttl && dr.response)
                *lowest_response_ttl = std::min(lowest_response_ttl->value_or(255), static_cast<int>(dr.ttl));
        }
    };
    if (r.opened_before_tracing) {
        ++set_aside_.opened_before_tracing;
        count_drops(set_aside_.opened_before_tracing_drops, &set_aside_.opened_before_tracing_lowest_ttl);
        return;
    }
    if (r.incomplete && r.events_lost) ++set_aside_.incomplete_pods[r.subject()];
    if (r.opening_unseen) {
        ++set_aside_.opening_unseen;
        count_drops(set_aside_.opening_unseen_drops);
        return;
    }
    if (!set_aside_reason(r).empty()) {
        ++set_aside_.incomplete;
        return;
    }
    ++transactions_;
    if (fold_) {
        auto [it, fresh] = kept_.try_emplace(fold_key(r), records_.size());
        if (!fresh) {
            ++weights_[it->second];
            return;
        }
    }
    records_.push_back(r);
    weights_.push_back(1);
}

void DiagnosisBuilder::add_session_counts(std::uint64_t other_namespaces, std::uint64_t socket_bookkeeping,
                                          std::uint64_t events_lost, std::uint64_t late_drops) {
    set_aside_.late_drops += late_drops;
    set_aside_.other_namespaces += other_namespaces;
    set_aside_.socket_bookkeeping += socket_bookkeeping;
    set_aside_.events_lost += events_lost;
}

Diagnosis DiagnosisBuilder::build(double window_s, std::vector<std::string> targets) const {
    Diagnosis d;
    d.set_aside = set_aside_;
    d.window_s = window_s;
    d.targets = std::move(targets);
    d.transactions = static_cast<int>(std::min<std::uint64_t>(transactions_, INT32_MAX));
    d.hop_limit_observed = observed_hop_limit(records_);
    d.pods = summarize_pods(records_, weights_);
    // incomplete_pods counts judged and set-aside ones alike; the rows keep them apart, so a row
    // never says more transactions were incomplete than it has
    for (auto& p : d.pods)
        if (auto it = set_aside_.incomplete_pods.find(p.subject); it != set_aside_.incomplete_pods.end())
            p.incomplete_set_aside = static_cast<int>(it->second) - p.incomplete;
    d.node = node_;
    d.findings = build_findings(records_, weights_, d.hop_limit_observed, node_);
    d.warnings = hop_budget_warnings(d.pods, d.hop_limit_observed);
    return d;
}

}  // namespace imdstrace
