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

std::string generic_fix(Verdict v, const TransactionRecord& example, const NodeFacts& node) {
    if (example.target_on_node && v != Verdict::not_found) return node_agent_fix(v, example);
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
std::vector<PodSummary> summarize_pods(const std::vector<TransactionRecord>& records) {
    std::map<std::string, PodSummary> pods;
    std::set<std::string> exact_hops;  // subjects whose hops were measured, not inferred
    std::map<std::string, int> ran_out;  // subject -> hop limit its failed connections' own evidence asks for
    for (const auto& r : records) {
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
        ++p.transactions;
        ++p.verdicts[r.verdict];
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
    std::vector<const TransactionRecord*> records;
    std::vector<std::string> subjects;  // first-seen order
    std::set<std::string> subject_set;
    std::map<std::string, std::uint64_t> drop_totals;  // "reason X at Y (TTL n)" -> drops
    std::uint64_t icmp = 0;

    void add(const TransactionRecord& r) {
        records.push_back(&r);
        if (subject_set.insert(r.subject()).second) subjects.push_back(r.subject());
        for (const auto& dr : r.drops)
            if (!endpoint_bookkeeping(dr))
                drop_totals[fmt::format("{}{} at {} (TTL {})", dr.reason.empty() ? "" : "reason ", dr.reason,
                                        dr.location, dr.ttl)] += dr.count;
        icmp += r.icmp_time_exceeded;
    }
    std::string drops() const {
        std::string out;
        for (const auto& [what, n] : drop_totals) out += fmt::format("{}{} drops {}", out.empty() ? "" : ", ", n, what);
        return out;
    }
    std::string count_text() const {
        return fmt::format("{} transaction{}", records.size(), records.size() == 1 ? "" : "s");
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
std::vector<Finding> build_findings(const std::vector<TransactionRecord>& records, std::optional<int> hop_limit_observed,
                                    const NodeFacts& node) {
    std::map<Verdict, VerdictGroup> groups;
    for (const auto& r : records)
        if (r.verdict != Verdict::ok) groups[r.verdict].add(r);
    std::vector<std::pair<Verdict, const VerdictGroup*>> order;
    for (const auto& [v, g] : groups) order.emplace_back(v, &g);
    std::sort(order.begin(), order.end(), [](const auto& a, const auto& b) { return severity(a.first) > severity(b.first); });
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

}  // namespace

std::string set_aside_reason(const TransactionRecord& r) {
    if (r.opened_before_tracing) return "opened before tracing";
    if (r.incomplete && r.verdict == Verdict::no_response)
        return r.events_lost ? "events lost" : "in flight when the window ended";
    return {};
}

void DiagnosisBuilder::add(const TransactionRecord& r) {
    if (r.opened_before_tracing) {
        ++set_aside_.opened_before_tracing;
        for (const auto& dr : r.drops)
            if (!endpoint_bookkeeping(dr))
                set_aside_.opened_before_tracing_drops[fmt::format(
                    "{} {}at {}{}{} (TTL {})", dr.response ? "responses" : "requests", "", dr.location,
                    dr.reason.empty() ? "" : ", reason ", dr.reason, dr.ttl)] += dr.count;
        return;
    }
    if (r.incomplete && r.events_lost) ++set_aside_.incomplete_pods[r.subject()];
    if (!set_aside_reason(r).empty()) {
        ++set_aside_.incomplete;
        return;
    }
    records_.push_back(r);
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
    d.transactions = static_cast<int>(records_.size());
    d.hop_limit_observed = observed_hop_limit(records_);
    d.pods = summarize_pods(records_);
    for (auto& p : d.pods)
        if (auto it = set_aside_.incomplete_pods.find(p.subject); it != set_aside_.incomplete_pods.end())
            p.incomplete = static_cast<int>(it->second);
    d.node = node_;
    d.findings = build_findings(records_, d.hop_limit_observed, node_);
    d.warnings = hop_budget_warnings(d.pods, d.hop_limit_observed);
    return d;
}

}  // namespace imdstrace
