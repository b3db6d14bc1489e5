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
#include <optional>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "verdict/drop_fix.hpp"
#include "verdict/record.hpp"

namespace imdstrace {

// Size-capped rotation, like tcpdump's -C/-W and logrotate's numbering:
// before a line would take FILE past `max_bytes`, FILE becomes FILE.1,
// FILE.1 becomes FILE.2, ..., FILE.<max_files-1> is removed, and a new FILE
// is started.  So at most `max_files` files and about `max_bytes` each
// (a single line longer than that still gets written, alone in its file).
// Every file a rotating run writes opens with an imdstrace.rotation/v1 line
// (the run's id and the file's sequence number in it), so `report` knows
// when the oldest file it reads is not the first, or one is missing between.
struct EventsRotation {
    std::uint64_t max_bytes = 0;  // 0 = never rotate
    unsigned max_files = 10;      // FILE and FILE.1 .. FILE.<max_files-1>
};

class EventsFile {
public:
    // Opens for appending.  Throws UsageError naming the file when it cannot.
    explicit EventsFile(std::string path, EventsRotation rotation = {});
    // Buffered: the line reaches the file at the next flush().  Throws
    // std::runtime_error naming the file and errno when the write fails.
    void write(const TransactionRecord& r);
    // Hands what write() buffered to the kernel.  The session calls it after
    // each batch of records (every poll, at most 100 ms apart), so the file
    // is never more than one batch behind; a write per record cost more than
    // the record's JSON.  Throws std::runtime_error naming the file and errno
    // when it fails (a full disk must not lose evidence silently).
    void flush();
    // `set_aside`: what the session left out (other namespaces, socket
    // bookkeeping, events lost), so `report` says the same.
    void write_trailer(std::int64_t start_unix_ms, double window_s, const std::vector<std::string>& targets,
                       const nlohmann::json& set_aside, const nlohmann::json& node);

private:
    void write_line(const std::string& line);
    void put(const std::string& line);  // one line, buffered, counted toward the cap
    std::string sequence_record() const;
    void rotate();
    std::string path_;
    EventsRotation rotation_;
    std::string writer_;      // this run's id in its rotation records (16 hex digits)
    std::uint64_t seq_ = 0;   // the current file's place in this run: 0, then +1 per rotation
    bool marked_ = false;     // the current file has this run's rotation record
    std::uint64_t size_ = 0;
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
    // The first file read opens with a rotation record of a file after the
    // first: the one it continues (and its transactions) was not read;
    // `continued_at` is when that file was closed (the record's "ts").
    bool continues_earlier = false;
    std::string continued_at;
    // A later file that does not follow the one read before it (its run's
    // previous file is missing, a file was given twice or out of order):
    // what, in one sentence.  Empty when they follow.
    std::string sequence_break;
    // A file's rotation records in order, and whether the first of them is
    // its first line (then it says where the file stands in its run).
    struct FileMark {
        std::string writer;
        std::uint64_t seq = 0;
        std::string ts;
    };
    std::vector<FileMark> marks;
    bool marked_from_first_line = false;
    std::vector<std::string> ended_writers;  // rotating runs whose session record is in the file
};

// A rotated set, oldest first: FILE.N, ..., FILE.1, FILE (the numbers that
// exist from 1 up without a gap).  Just {FILE} when nothing was rotated.
std::vector<std::string> rotated_set(const std::string& file);
// The first FILE.N missing below an existing higher-numbered one (a gap:
// the files above it are not part of rotated_set()), or nullopt.
std::optional<unsigned> rotated_gap(const std::string& file, std::size_t set_size);

// --events-max-bytes: a number of bytes, optionally with a K, M or G suffix
// (powers of 1024).  nullopt when the text is not that or is 0.
std::optional<std::uint64_t> parse_byte_size(const std::string& text);

inline constexpr std::size_t kRecordingMaxLine = 1 << 20;  // a transaction line is ~1 kB

// Reads JSONL from `in` (`name` for messages) and hands every transaction
// to `add`.  Throws std::runtime_error only when the stream itself fails.
Recording read_recording(std::istream& in, const std::string& name,
                         const std::function<void(TransactionRecord&&)>& add);
// Several files read in the order given, as one recording.  Throws
// UsageError for a file that cannot be opened.
Recording read_recordings(const std::vector<std::string>& files, const std::function<void(TransactionRecord&&)>& add);

}  // namespace imdstrace
