// JSON forms of transactions and diagnoses (contracts in ../shared/DESIGN.md).
#pragma once

#include <nlohmann/json.hpp>

#include "verdict/diagnosis.hpp"
#include "verdict/record.hpp"

namespace imdstrace {

inline constexpr const char* kTransactionSchema = "imdstrace.transaction/v1";
inline constexpr const char* kDiagnosisSchema = "imdstrace.diagnosis/v1";
// The last line of an --events file: the run's window and targets.
inline constexpr const char* kSessionSchema = "imdstrace.session/v1";
// With --events-max-bytes, the first line of every file a run writes: the
// run (a random "writer" id) and the file's place in it ("seq": 0 for the
// first, n after n rotations), so `report` knows whether the files it reads
// follow each other or miss one.
inline constexpr const char* kRotationSchema = "imdstrace.rotation/v1";
// `imdstrace check -o json` and `imdstrace probe -o json` (sinks/reports.hpp).
inline constexpr const char* kCheckSchema = "imdstrace.check/v1";
inline constexpr const char* kProbeSchema = "imdstrace.probe/v1";

nlohmann::json to_json(const TransactionRecord& r);
// Throws std::runtime_error naming the missing/invalid field.
TransactionRecord record_from_json(const nlohmann::json& j);
nlohmann::json to_json(const Diagnosis& d);
// {"ipv4_forwarding": bool|null, "ipv6_forwarding": bool|null}, and back.
nlohmann::json node_facts_json(const NodeFacts& n);
NodeFacts node_facts_from_json(const nlohmann::json& j);

// "2026-11-26T22:00:00.123Z"
std::string iso8601_ms(std::int64_t unix_ms);
std::optional<std::int64_t> parse_iso8601_ms(const std::string& s);

}  // namespace imdstrace
