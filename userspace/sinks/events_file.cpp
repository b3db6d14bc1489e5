#include "sinks/events_file.hpp"

#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <map>
#include <filesystem>
#include <fstream>
#include <utility>

#include "common/errors.hpp"
#include "common/json_input.hpp"
#include "sinks/escape.hpp"
#include "sinks/json.hpp"

namespace imdstrace {

EventsFile::EventsFile(std::string path, EventsRotation rotation)
    : path_(std::move(path)), rotation_(rotation), file_(std::fopen(path_.c_str(), "ae"), &std::fclose) {
    if (!file_) throw UsageError("--events: cannot write " + path_ + ": " + std::strerror(errno));
    if (rotation_.max_files < 1) rotation_.max_files = 1;
    std::error_code ec;
    auto size = std::filesystem::file_size(path_, ec);
    size_ = ec ? 0 : size;  // appending: what is there counts toward the cap
    if (rotation_.max_bytes) {
        // Told apart from other runs, not secret: the clock, the pid and a splitmix64 finish (no
        // entropy source that can block early in a boot, as in the kernel matrix's guests).
        std::uint64_t x = static_cast<std::uint64_t>(std::chrono::system_clock::now().time_since_epoch().count()) ^
                          (static_cast<std::uint64_t>(::getpid()) << 40) ^
                          static_cast<std::uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
        x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
        x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
        writer_ = fmt::format("{:016x}", x ^ (x >> 31));
    }
}

std::string EventsFile::sequence_record() const {
    const auto now = std::chrono::duration_cast<std::chrono::milliseconds>(
                         std::chrono::system_clock::now().time_since_epoch())
                         .count();
    nlohmann::json j{{"schema", kRotationSchema}, {"writer", writer_}, {"seq", seq_}, {"ts", iso8601_ms(now)}};
    j["continues"] = seq_ == 0 || rotation_.max_files == 1 ? nlohmann::json(nullptr) : nlohmann::json(path_ + ".1");
    return dump_json(j);
}

void EventsFile::rotate() {
    flush();
    file_.reset();
    std::error_code ec;
    auto numbered = [this](unsigned i) { return path_ + "." + std::to_string(i); };
    if (rotation_.max_files == 1) {
        std::filesystem::remove(path_, ec);
    } else {
        std::filesystem::remove(numbered(rotation_.max_files - 1), ec);
        for (unsigned i = rotation_.max_files - 1; i > 1; --i)
            if (std::filesystem::exists(numbered(i - 1), ec)) std::filesystem::rename(numbered(i - 1), numbered(i), ec);
        std::filesystem::rename(path_, numbered(1), ec);
        if (ec) throw std::runtime_error("--events " + path_ + ": cannot rotate: " + ec.message());
    }
    file_.reset(std::fopen(path_.c_str(), "ae"));
    if (!file_) throw std::runtime_error("--events " + path_ + ": cannot start a new file: " + std::strerror(errno));
    size_ = 0;
    ++seq_;
    marked_ = false;
}

// A rotating run says where it stands before its first line in each file it writes to (mid-file
// when it appends to an earlier run's file, which readers allow); a run that writes nothing
// leaves nothing, so it never reads as a run whose end is missing.
void EventsFile::write_line(const std::string& line) {
    std::string mark = writer_.empty() || marked_ ? std::string() : sequence_record();
    const auto extra = mark.empty() ? 0 : mark.size() + 1;
    if (rotation_.max_bytes && size_ > 0 && size_ + extra + line.size() + 1 > rotation_.max_bytes) {
        rotate();
        mark = sequence_record();
    }
    if (!mark.empty()) {
        marked_ = true;
        put(mark);
    }
    put(line);
}

void EventsFile::put(const std::string& line) {
    size_ += line.size() + 1;
    if (std::fwrite(line.data(), 1, line.size(), file_.get()) != line.size() || std::fputc('\n', file_.get()) == EOF)
        throw std::runtime_error("--events " + path_ + ": write failed: " + std::strerror(errno));
}

void EventsFile::flush() {
    if (std::fflush(file_.get()) != 0)
        throw std::runtime_error("--events " + path_ + ": write failed: " + std::strerror(errno));
}

void EventsFile::write(const TransactionRecord& r) {
    write_line(dump_json(to_json(r)));
}

void EventsFile::write_trailer(std::int64_t start_unix_ms, double window_s, const std::vector<std::string>& targets,
                               const nlohmann::json& set_aside, const nlohmann::json& node) {
    nlohmann::json j{{"schema", kSessionSchema},
                     {"ts", iso8601_ms(start_unix_ms)},
                     {"window_s", window_s},
                     {"targets", targets},
                     {"set_aside", set_aside},
                     {"node", node}};
    // A rotating run's end, by its id: a reader that saw its files but not this has not read its last one.
    if (!writer_.empty()) j["writer"] = writer_;
    write_line(dump_json(j));
    flush();
}

namespace {

// One line, at most `cap` bytes kept (the rest is read and counted in
// `too_long`, not stored): a 100 MB line costs no 100 MB.
bool read_line(std::istream& in, std::string& line, std::size_t cap, bool& too_long) {
    line.clear();
    too_long = false;
    auto* buf = in.rdbuf();
    bool any = false;
    for (int c; (c = buf->sbumpc()) != std::char_traits<char>::eof();) {
        any = true;
        if (c == '\n') return true;
        if (line.size() < cap) line.push_back(static_cast<char>(c));
        else too_long = true;
    }
    return any;
}



}  // namespace

Recording read_recording(std::istream& in, const std::string& name,
                         const std::function<void(TransactionRecord&&)>& add) {
    Recording rec;
    std::string line;
    bool too_long = false;
    std::uint64_t lineno = 0;
    std::set<std::string> targets_seen;
    bool first_line = true;
    auto skip = [&](std::string_view why) {
        if (!rec.skipped++) rec.first_skipped = fmt::format("{}:{}: {}", name, lineno, capped(why));
    };
    while (read_line(in, line, kRecordingMaxLine, too_long)) {
        ++lineno;
        if (too_long) {
            skip(fmt::format("line longer than {} bytes", kRecordingMaxLine));
            continue;
        }
        if (line.empty()) continue;
        const bool first = std::exchange(first_line, false);
        try {
            auto j = parse_untrusted_json(line);
            if (j.is_object() && j.contains("schema") && j["schema"] == kRotationSchema) {
                Recording::FileMark m;
                if (j.contains("writer") && j["writer"].is_string()) m.writer = capped(j["writer"].get<std::string>(), 64);
                if (j.contains("seq") && j["seq"].is_number_unsigned()) m.seq = j["seq"].get<std::uint64_t>();
                if (j.contains("ts") && j["ts"].is_string()) m.ts = capped(j["ts"].get<std::string>(), 64);
                // only the first line of a file says where the file stands; anywhere else
                // (another run appending, files concatenated) the lines before it are earlier
                if (first) rec.marked_from_first_line = true;
                rec.marks.push_back(std::move(m));
                continue;
            }
            if (j.is_object() && j.contains("schema") && j["schema"] == kSessionSchema) {
                const auto& w = j.contains("window_s") ? j["window_s"] : nlohmann::json();
                if (!w.is_number() || !(w.get<double>() >= 0 && w.get<double>() <= 10.0 * 365 * 86400))
                    throw std::runtime_error("session trailer without a valid \"window_s\"");
                if (j.contains("targets") && !j["targets"].is_array())
                    throw std::runtime_error("session trailer: \"targets\" must be an array");
                for (const auto& t : j.value("targets", nlohmann::json::array()))
                    if (t.is_string() && Endpoint::parse(t.get<std::string>(), 80) &&
                        targets_seen.insert(t.get<std::string>()).second)
                        rec.recorded_targets.push_back(t.get<std::string>());
                rec.recorded_window += w.get<double>();
                if (j.contains("node")) rec.node = node_facts_from_json(j["node"]);
                if (j.contains("writer") && j["writer"].is_string())
                    rec.ended_writers.push_back(capped(j["writer"].get<std::string>(), 64));
                if (j.contains("set_aside") && j["set_aside"].is_object()) {
                    const auto& sa = j["set_aside"];
                    auto count = [&sa](const char* key) -> std::uint64_t {
                        return sa.contains(key) && sa[key].is_number_unsigned() ? sa[key].get<std::uint64_t>() : 0;
                    };
                    rec.other_namespace_events += count("other_namespace_events");
                    rec.socket_bookkeeping_frees += count("socket_bookkeeping_frees");
                    rec.events_lost += count("events_lost");
                    rec.late_drops += count("late_drops");
                }
                continue;
            }
            auto r = record_from_json(j);
            if (!rec.first_ms || r.wall_ms < rec.first_ms) rec.first_ms = r.wall_ms;
            rec.last_ms = std::max(rec.last_ms, r.wall_ms + r.duration_ms);
            rec.servers.insert(r.server.str());
            ++rec.transactions;
            add(std::move(r));
        } catch (const std::exception& e) {
            skip(e.what());
        }
    }
    if (in.bad()) throw std::runtime_error(name + ": read failed: " + std::strerror(errno ? errno : EIO));
    return rec;
}

}  // namespace imdstrace

namespace imdstrace {

std::vector<std::string> rotated_set(const std::string& file) {
    std::vector<std::string> set{file};
    std::error_code ec;
    for (unsigned i = 1; i < 100000 && std::filesystem::is_regular_file(file + "." + std::to_string(i), ec); ++i)
        set.insert(set.begin(), file + "." + std::to_string(i));
    return set;
}

std::optional<unsigned> rotated_gap(const std::string& file, std::size_t set_size) {
    std::error_code ec;
    const auto missing = static_cast<unsigned>(set_size);  // FILE.(size) is the first absent number
    for (unsigned i = missing + 1; i < missing + 100; ++i)
        if (std::filesystem::is_regular_file(file + "." + std::to_string(i), ec)) return missing;
    return std::nullopt;
}

std::optional<std::uint64_t> parse_byte_size(const std::string& text) {
    if (text.empty() || !std::isdigit(static_cast<unsigned char>(text[0]))) return std::nullopt;
    std::size_t used = 0;
    unsigned long long v = 0;
    try {
        v = std::stoull(text, &used);
    } catch (const std::exception&) {
        return std::nullopt;
    }
    std::string unit = text.substr(used);
    int shift = unit.empty() ? 0 : unit == "K" || unit == "k" ? 10 : unit == "M" ? 20 : unit == "G" ? 30 : -1;
    if (shift < 0 || v == 0 || v > (std::uint64_t{1} << 50) >> shift) return std::nullopt;
    return static_cast<std::uint64_t>(v) << shift;
}

Recording read_recordings(const std::vector<std::string>& files, const std::function<void(TransactionRecord&&)>& add) {
    Recording all;
    std::set<std::string> targets(all.recorded_targets.begin(), all.recorded_targets.end());
    std::map<std::string, std::uint64_t> last_seq;  // run (writer) -> the last of its files read
    std::set<std::string> ended;                    // runs whose session record (their end) was read
    for (const auto& file : files) {
        std::error_code ec;
        if (std::filesystem::is_directory(file, ec))
            throw UsageError("report: " + file + " is a directory: give the JSONL file written with --events");
        std::ifstream in(file);
        if (!in) throw UsageError("report: cannot read " + file + ": " + std::strerror(errno));
        auto r = read_recording(in, file, add);
        // Where this file stands in its run, against what was read of that run before it.
        if (r.marked_from_first_line) {
            const auto& m = r.marks.front();
            const auto seen = last_seq.find(m.writer);
            if (seen == last_seq.end()) {
                if (m.seq > 0 && all.sequence_break.empty()) {
                    if (&file == &files.front()) {
                        all.continues_earlier = true;
                        all.continued_at = m.ts;
                    } else {
                        all.sequence_break = fmt::format(
                            "{} is file {} of its run, and no earlier file of that run was read: its first {} {} not "
                            "read (files are read in the order given; the base name alone reads a rotated set "
                            "oldest first)",
                            file, m.seq + 1, m.seq, m.seq == 1 ? "file is" : "files are");
                    }
                }
            } else if (seen->second + 1 != m.seq && all.sequence_break.empty()) {
                all.sequence_break = fmt::format(
                    "{} is file {} of its run, but the last file of that run read before it is file {}: {} (files "
                    "are read in the order given; the base name alone reads a rotated set oldest first)",
                    file, m.seq + 1, seen->second + 1,
                    m.seq <= seen->second ? "given twice or out of order" : "a file between them is not read");
            }
        }
        for (const auto& m : r.marks) last_seq[m.writer] = m.seq;
        for (const auto& w : r.ended_writers) ended.insert(w);
        all.recorded_window += r.recorded_window;
        for (const auto& t : r.recorded_targets)
            if (targets.insert(t).second) all.recorded_targets.push_back(t);
        if (r.first_ms && (!all.first_ms || r.first_ms < all.first_ms)) all.first_ms = r.first_ms;
        all.last_ms = std::max(all.last_ms, r.last_ms);
        all.servers.insert(r.servers.begin(), r.servers.end());
        all.transactions += r.transactions;
        if (r.skipped && !all.skipped) all.first_skipped = r.first_skipped;
        all.skipped += r.skipped;
        all.other_namespace_events += r.other_namespace_events;
        all.socket_bookkeeping_frees += r.socket_bookkeeping_frees;
        all.events_lost += r.events_lost;
        all.late_drops += r.late_drops;
        if (r.node.ipv4_forwarding || r.node.ipv6_forwarding) all.node = r.node;  // the latest recorded facts
    }
    // A rotating run writes its session record into its last file when it ends: without it, its
    // last file was not read (or the run was killed, or still runs), and what came after is not here.
    for (const auto& [writer, seq] : last_seq)
        if (!ended.contains(writer) && all.sequence_break.empty()) {
            all.sequence_break = fmt::format(
                "the last file read of a run is its file {}, and that run's end (the session record it writes "
                "into its last file) was not read: its newer files were not given (the base name alone reads "
                "the whole rotated set), or it was killed or still runs",
                seq + 1);
            break;
        }
    return all;
}

}  // namespace imdstrace
