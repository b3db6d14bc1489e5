// Per-pod verdicts, node facts, findings and fixes from a set of
// transactions: what `diagnose` prints after its window and `report`
// rebuilds from a recording.
#pragma once

#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

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

struct Diagnosis {
    double window_s = 0;
    std::optional<int> hop_limit_observed;
    std::vector<std::string> targets;
    std::vector<PodSummary> pods;
    std::vector<Finding> findings;
    std::vector<Warning> warnings;
    int transactions = 0;

    bool failing() const;
};

class DiagnosisBuilder {
public:
    void add(const TransactionRecord& r) { records_.push_back(r); }
    Diagnosis build(double window_s, std::vector<std::string> targets) const;
    const std::vector<TransactionRecord>& records() const { return records_; }

private:
    std::vector<TransactionRecord> records_;
};

// The fix for the hop limit, spelled out for each place it is set.
std::string hop_limit_fix(int required);

}  // namespace imdstrace
