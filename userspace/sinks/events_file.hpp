// --events FILE: every transaction as one JSON line (schema
// imdstrace.transaction/v1), appended and flushed as it completes, and a
// session trailer (imdstrace.session/v1) with the window and targets so
// `report` rebuilds exactly what the live run printed.
#pragma once

#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

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

}  // namespace imdstrace
