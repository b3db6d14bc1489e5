#include "cli/output.hpp"

#include <poll.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>
#include <thread>

namespace imdstrace {

void write_stdout(std::string_view text) {
    while (!text.empty()) {
        ssize_t n = ::write(STDOUT_FILENO, text.data(), text.size());
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && errno == EPIPE) throw OutputClosed();
        if (n <= 0) throw std::runtime_error(std::string("standard output: write failed: ") + std::strerror(n < 0 ? errno : EIO));
        text.remove_prefix(static_cast<std::size_t>(n));
    }
}

OutputWatch::OutputWatch(std::atomic<bool>& stop) : stop_(stop) {
    thread_ = std::thread([this] {
        while (!done_.load()) {
            pollfd p{STDOUT_FILENO, 0, 0};  // no events asked: only POLLERR/POLLHUP/POLLNVAL come back
            if (::poll(&p, 1, 200) > 0 && (p.revents & (POLLERR | POLLHUP))) {
                closed_.store(true);
                stop_.store(true);
                return;
            }
        }
    });
}

OutputWatch::~OutputWatch() {
    done_.store(true);
    thread_.join();
}

}  // namespace imdstrace
