// Per-pod verdicts, node facts, findings and fixes from a set of
// transactions: what `diagnose` prints after its window and `report`
// rebuilds from a recording.
#pragma once

#include <map>
#include <optional>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

#include "verdict/drop_fix.hpp"
#include "verdict/record.hpp"

namespace imdstrace {

struct PodSummary {
    std::string subject;  // "ns/name" or "cgroup:/..." or "client:..."
    std::optional<PodInfo> pod;
    std::string cgroup;
    std::set<std::string> ips;
    std::optional<int> hops;
    std::optional<int> required_hop_limit;
    int transactions = 0;
    std::map<Verdict, int> verdicts;
    Verdict verdict = Verdict::ok;
    // Of its `transactions`, those open while events were lost: judged on
    // their own evidence, but what was lost may be missing from them.
    int incomplete = 0;
    // Its transactions open while events were lost that had nothing but
    // absence as evidence: set aside, not in `transactions`.
    int incomplete_set_aside = 0;
};

struct Finding {
    Verdict verdict = Verdict::ok;
    std::vector<std::string> pods;
    std::string evidence;
    std::string fix;
};

// A pod that has not failed yet but will: it is further from the uplink
// than the node's hop limit reaches (for example it only made IMDSv1 GETs,
// which IMDS answers with the default TTL), so its first token request
// will time out.
struct Warning {
    std::vector<std::string> pods;
    std::string message;
    std::string fix;
};

// Evidence left out of every verdict, hop figure and fix, said aloud
// (DESIGN.md "What the tracer counts as this node and this window").
struct SetAside {
    // Transactions of connections the tracer did not see open, and the
    // drops they carried ("dropped response reason IP_INHDR at ip_forward
    // (TTL 1)" -> count): leftovers of connections made before tracing.
    std::uint64_t opened_before_tracing = 0;
    std::map<std::string, std::uint64_t> opened_before_tracing_drops;
    std::optional<int> opened_before_tracing_lowest_ttl;  // the lowest TTL of those dropped responses
    // Transactions whose opening was not seen while events were lost: new
    // ones whose SYN was lost, or leftovers of connections made before
    // tracing (after a fix, their retransmitted answers still carry the old
    // hop limit); nothing tells which, so they judge nothing.  And their drops.
    std::uint64_t opening_unseen = 0;
    std::map<std::string, std::uint64_t> opening_unseen_drops;
    // Transactions that lost events and have no evidence of their own
    // (nothing but absence: what was lost may be the answer).
    std::uint64_t incomplete = 0;
    // Every transaction open while events were lost, by pod (subject): the
    // pods the loss may touch, judged or not.
    std::map<std::string, std::uint64_t> incomplete_pods;
    // Kernel events of the machine that were not this node's (another
    // network namespace), socket bookkeeping frees of no followed
    // connection, and events the ring buffer could not hold.
    std::uint64_t other_namespaces = 0;
    std::uint64_t socket_bookkeeping = 0;
    std::uint64_t events_lost = 0;
    // Path drops that arrived after their transaction was reported (IMDS
    // retransmitting an answer the node already dropped): in no record.
    std::uint64_t late_drops = 0;

    bool any() const {
        return opened_before_tracing || opening_unseen || incomplete || other_namespaces || socket_bookkeeping || events_lost ||
               late_drops;
    }
};

struct Diagnosis {
    double window_s = 0;
    std::optional<int> hop_limit_observed;
    std::vector<std::string> targets;
    std::vector<PodSummary> pods;
    std::vector<Finding> findings;
    std::vector<Warning> warnings;
    SetAside set_aside;
    NodeFacts node;
    int transactions = 0;  // the ones judged (set-aside ones not counted)
    // Set by `report` when the files read do not hold the whole of the
    // sessions' window (older rotated files removed, a gap in the set): why,
    // in one sentence.  Then no failure found is not "healthy".
    std::string partial;

    bool failing() const;
};

// Memory grows with what differs, not with the window: a judged record that
// repeats an earlier one in everything a diagnosis reads (subject, request,
// answer, verdict, path, drops; not its time, client port, duration or
// evidence text) is counted on that one instead of kept.  The diagnosis is
// the same either way (the first record of a kind stays the example).
class DiagnosisBuilder {
public:
    explicit DiagnosisBuilder(bool fold_repeats = true) : fold_(fold_repeats) {}
    // Judged records are kept; those of connections opened before tracing,
    // and incomplete ones with nothing but absence as evidence, are set aside.
    void add(const TransactionRecord& r);
    // Counts the session kept (other namespaces, bookkeeping, lost events);
    // added up over several runs (report of an appended --events file).
    void add_session_counts(std::uint64_t other_namespaces, std::uint64_t socket_bookkeeping, std::uint64_t events_lost,
                            std::uint64_t late_drops = 0);
    void set_node_facts(const NodeFacts& node) { node_ = node; }
    Diagnosis build(double window_s, std::vector<std::string> targets) const;
    // The records kept: every judged one that differs, in first-seen order
    // (repeats are counted on these, not kept).
    const std::vector<TransactionRecord>& records() const { return records_; }
    // Judged transactions added (kept or counted on a kept one).
    std::uint64_t transactions() const { return transactions_; }

private:
    bool fold_ = true;
    std::vector<TransactionRecord> records_;
    std::vector<std::uint64_t> weights_;  // per kept record: how many transactions it stands for
    std::unordered_map<std::string, std::size_t> kept_;  // fold key -> index in records_
    std::uint64_t transactions_ = 0;
    SetAside set_aside_;
    NodeFacts node_;
};

// Whether a record is left out of verdicts (and why, for text output): "" = judged.
std::string set_aside_reason(const TransactionRecord& r);

// The fix for the hop limit, spelled out for each place it is set.
std::string hop_limit_fix(int required);

}  // namespace imdstrace
