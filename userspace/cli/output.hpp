// Standard output, checked.  A full disk or a closed pipe is not something
// to ignore: a write that fails with EPIPE (the reader went away: `| head`)
// throws OutputClosed, which ends the command quietly and detaches
// everything; any other failure (ENOSPC, EIO) throws std::runtime_error
// naming standard output and the error, which exits 1.
#pragma once

#include <atomic>
#include <stdexcept>
#include <string_view>
#include <thread>

namespace imdstrace {

struct OutputClosed : std::runtime_error {
    OutputClosed() : std::runtime_error("standard output was closed") {}
};

// Writes all of `text` to fd 1.
void write_stdout(std::string_view text);

// Watches fd 1 from a thread and sets `stop` once its reader has gone away
// (a pipe whose read end is closed reports POLLERR), so a quiet `watch |
// head -1` ends too instead of holding its programs attached until the
// next transaction.  Joined by the destructor.
class OutputWatch {
public:
    OutputWatch(std::atomic<bool>& stop);
    ~OutputWatch();
    OutputWatch(const OutputWatch&) = delete;
    OutputWatch& operator=(const OutputWatch&) = delete;
    bool closed() const { return closed_.load(); }

private:
    std::atomic<bool>& stop_;
    std::atomic<bool> done_{false};
    std::atomic<bool> closed_{false};
    std::thread thread_;
};

}  // namespace imdstrace
