// The reports of `imdstrace check` and `imdstrace probe`, in text and JSON:
// built here like every other output (schemas beside the others in json.hpp).
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "probe/imds_client.hpp"
#include "verdict/diagnosis.hpp"
#include "verdict/record.hpp"

namespace imdstrace {

// check: one line per precondition.
struct CheckLine {
    std::string name;
    bool ok = true;
    bool required = true;  // a failing required line means imdstrace cannot run
    std::string detail;
    std::string hint;  // what to do when not ok
};
struct CheckReport {
    std::vector<CheckLine> lines;
    bool ok() const;
};
std::string format_check(const CheckReport& r);
nlohmann::json to_json(const CheckReport& r);

// probe: what each step of the SDK-like flow got, what the kernel saw of
// the probe's own connections, and the diagnosis of those.
struct ProbeReport {
    std::string from;    // "pod kube-system/x (pid 12)", "network namespace /run/netns/a", ...
    std::string target;  // "169.254.169.254:80"
    std::vector<ProbeStep> steps;
    std::vector<TransactionRecord> transactions;
    Diagnosis diagnosis;
    bool healthy() const;
};
std::string format_probe(const ProbeReport& r);
nlohmann::json to_json(const ProbeReport& r);

// A probe step as the child reports it to the parent (one JSON line) and back.
nlohmann::json step_to_json(const ProbeStep& s);
ProbeStep step_from_json(const nlohmann::json& j);

}  // namespace imdstrace
