#include "sinks/events_file.hpp"

#include <cerrno>
#include <cstring>
#include <stdexcept>

#include "common/errors.hpp"
#include "sinks/json.hpp"

namespace imdstrace {

EventsFile::EventsFile(std::string path) : path_(std::move(path)), file_(std::fopen(path_.c_str(), "ae"), &std::fclose) {
    if (!file_) throw UsageError("--events: cannot write " + path_ + ": " + std::strerror(errno));
}

void EventsFile::write_line(const std::string& line) {
    if (std::fwrite(line.data(), 1, line.size(), file_.get()) != line.size() || std::fputc('\n', file_.get()) == EOF ||
        std::fflush(file_.get()) != 0)
        throw std::runtime_error("--events " + path_ + ": write failed: " + std::strerror(errno));
}

void EventsFile::write(const TransactionRecord& r) {
    write_line(to_json(r).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
}

void EventsFile::write_trailer(std::int64_t start_unix_ms, double window_s, const std::vector<std::string>& targets,
                               const nlohmann::json& set_aside, const nlohmann::json& node) {
    write_line(nlohmann::json{{"schema", kSessionSchema},
                              {"ts", iso8601_ms(start_unix_ms)},
                              {"window_s", window_s},
                              {"targets", targets},
                              {"set_aside", set_aside},
                              {"node", node}}
                   .dump());
}

}  // namespace imdstrace
