// --events FILE: every transaction as one JSON line (schema
// imdstrace.transaction/v1), appended and flushed as it completes, and a
// session trailer (imdstrace.session/v1) with the window and targets so
// `report` rebuilds exactly what the live run printed.
#pragma once

#include <cstdint>
#include <cstdio>
#include <functional>
#include <istream>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "verdict/drop_fix.hpp"
#include "verdict/record.hpp"

namespace imdstrace {

class EventsFile {
public:
    // Opens for appending.  Throws UsageError naming the file when it cannot.
    explicit EventsFile(std::string path);
    // Throws std::runtime_error naming the file and errno when the write or
    // its flush fails (a full disk must not lose evidence silently).
    void write(const TransactionRecord& r);
    // `set_aside`: what the session left out (other namespaces, socket
    // bookkeeping, events lost), so `report` says the same.
    void write_trailer(std::int64_t start_unix_ms, double window_s, const std::vector<std::string>& targets,
                       const nlohmann::json& set_aside, const nlohmann::json& node);

private:
    void write_line(const std::string& line);
    std::string path_;
    std::unique_ptr<std::FILE, int (*)(std::FILE*)> file_;
};

// What `report` reads back from an --events file.  A killed run leaves a
// truncated last line, and a file may have been edited or damaged: a line
// that is not a valid transaction or session trailer is skipped and
// counted, never fatal, and the rest is reported.
struct Recording {
    double recorded_window = 0;                 // sum of the session trailers' windows
    std::vector<std::string> recorded_targets;  // from the trailers, first-seen order
    std::int64_t first_ms = 0, last_ms = 0;     // span of the transactions
    std::set<std::string> servers;              // servers the transactions went to
    std::uint64_t transactions = 0;
    std::uint64_t skipped = 0;                  // bad lines
    std::string first_skipped;                  // "NAME:LINE: why" of the first bad line (capped)
    // What the recorded sessions set aside, and the node's facts (the last trailer's).
    std::uint64_t other_namespace_events = 0, socket_bookkeeping_frees = 0, events_lost = 0, late_drops = 0;
    NodeFacts node;
};

inline constexpr std::size_t kRecordingMaxLine = 1 << 20;  // a transaction line is ~1 kB

// Reads JSONL from `in` (`name` for messages) and hands every transaction
// to `add`.  Throws std::runtime_error only when the stream itself fails.
Recording read_recording(std::istream& in, const std::string& name,
                         const std::function<void(TransactionRecord&&)>& add);

}  // namespace imdstrace
