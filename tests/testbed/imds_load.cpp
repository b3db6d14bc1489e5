// imds-load: a bounded IMDSv2 token load for the imdstrace testbed's benchmarks.
//
//   imds-load [--target ADDR:PORT] [--clients N] [--duration S] [--count N] [--per-second]
//
// N client threads, each doing token transactions back to back: a new TCP connection,
// PUT /latest/api/token with the TTL header and "Connection: close", the whole answer read, the
// connection closed.  The server closes first, so TIME_WAIT lands on the emulator's side: a
// client that closes first from one address keeps every port it used in TIME_WAIT for 60 s, and
// past ~470 connections/s (28,232 ephemeral ports / 60 s) connect() first slows down (the kernel
// searches a range full of TIME_WAIT) and then fails - that, not the emulator, was most of the
// "slowdown over a minute of load". Prints transactions per second and a RESULT line.
// Bounded: at most 120 s and 10 M transactions. Refuses to run outside a testbed network
// namespace (/run/netns/imdst-*) and toward anything but the metadata addresses or the 198.18.0.0/15 test range.
//
// Never prints token values.

#include <arpa/inet.h>
#include <dirent.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;

std::atomic<long> g_done{0}, g_errors{0};
std::atomic<bool> g_stop{false};

// Only inside a testbed: this process's network namespace must be one of /run/netns/imdst-*
// (PID 1's may be hidden by a pid namespace, so it is not what is compared).
bool in_a_testbed_netns() {
    struct stat self{};
    if (stat("/proc/self/ns/net", &self) != 0) return false;
    DIR* d = opendir("/run/netns");
    if (!d) return false;
    bool found = false;
    while (dirent* e = readdir(d)) {
        if (std::strncmp(e->d_name, "imdst-", 6) != 0) continue;
        struct stat st{};
        std::string path = std::string("/run/netns/") + e->d_name;
        if (stat(path.c_str(), &st) == 0 && st.st_ino == self.st_ino && st.st_dev == self.st_dev) found = true;
    }
    closedir(d);
    return found;
}

bool allowed_target(const sockaddr_storage& ss) {
    if (ss.ss_family == AF_INET) {
        auto a = ntohl(reinterpret_cast<const sockaddr_in*>(&ss)->sin_addr.s_addr);
        return a == 0xA9FEA9FE /* 169.254.169.254 */ || (a & 0xFFFE0000) == 0xC6120000 /* 198.18.0.0/15 */;
    }
    const auto& a6 = reinterpret_cast<const sockaddr_in6*>(&ss)->sin6_addr;
    in6_addr imds{};
    inet_pton(AF_INET6, "fd00:ec2::254", &imds);
    return std::memcmp(&a6, &imds, 16) == 0;
}

bool parse_target(const std::string& t, sockaddr_storage& ss, socklen_t& len, std::string& host) {
    std::string addr = t, port = "80";
    if (!t.empty() && t[0] == '[') {
        auto e = t.find(']');
        if (e == std::string::npos) return false;
        addr = t.substr(1, e - 1);
        if (e + 1 < t.size() && t[e + 1] == ':') port = t.substr(e + 2);
    } else if (auto c = t.rfind(':'); c != std::string::npos) {
        addr = t.substr(0, c);
        port = t.substr(c + 1);
    }
    const int p = std::atoi(port.c_str());
    if (p <= 0 || p > 65535) return false;
    std::memset(&ss, 0, sizeof ss);
    if (auto* s4 = reinterpret_cast<sockaddr_in*>(&ss); inet_pton(AF_INET, addr.c_str(), &s4->sin_addr) == 1) {
        s4->sin_family = AF_INET;
        s4->sin_port = htons(static_cast<uint16_t>(p));
        len = sizeof(sockaddr_in);
        host = addr;
        return true;
    }
    auto* s6 = reinterpret_cast<sockaddr_in6*>(&ss);
    if (inet_pton(AF_INET6, addr.c_str(), &s6->sin6_addr) != 1) return false;
    s6->sin6_family = AF_INET6;
    s6->sin6_port = htons(static_cast<uint16_t>(p));
    len = sizeof(sockaddr_in6);
    host = "[" + addr + "]";
    return true;
}

// One token transaction; true when a 200 came back whole.
bool transaction(const sockaddr_storage& ss, socklen_t len, const std::string& request) {
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return false;
    timeval tv{1, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    bool ok = false;
    if (connect(fd, reinterpret_cast<const sockaddr*>(&ss), len) == 0 &&
        send(fd, request.data(), request.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(request.size())) {
        std::string got;
        char buf[2048];
        for (;;) {
            ssize_t n = recv(fd, buf, sizeof buf, 0);
            if (n <= 0) break;
            got.append(buf, static_cast<size_t>(n));
            auto head = got.find("\r\n\r\n");
            if (head == std::string::npos) continue;
            auto cl = got.find("Content-Length: ");
            long body = cl != std::string::npos && cl < head ? std::atol(got.c_str() + cl + 16) : 0;
            if (static_cast<long>(got.size() - head - 4) >= body) {
                ok = got.compare(0, 12, "HTTP/1.1 200") == 0;
                // Wait for the server's FIN, then close: TIME_WAIT stays on its side.
                while (recv(fd, buf, sizeof buf, 0) > 0) {
                }
                break;
            }
        }
    }
    close(fd);
    return ok;
}

void client(sockaddr_storage ss, socklen_t len, std::string request, long max_total) {
    while (!g_stop.load(std::memory_order_relaxed)) {
        if (g_done.load(std::memory_order_relaxed) + g_errors.load(std::memory_order_relaxed) >= max_total) break;
        if (transaction(ss, len, request)) g_done.fetch_add(1, std::memory_order_relaxed);
        else g_errors.fetch_add(1, std::memory_order_relaxed);
    }
}

int usage() {
    std::fprintf(stderr, "usage: imds-load [--target ADDR:PORT] [--clients N] [--duration S] [--count N] [--per-second]\n");
    return 2;
}

}  // namespace

int main(int argc, char** argv) {
    std::string target = "169.254.169.254:80";
    long clients = 8, count = 10'000'000;
    double duration = 10;
    bool per_second = false;
    for (int i = 1; i < argc; ++i) {
        std::string a = argv[i];
        auto next = [&]() -> const char* { return i + 1 < argc ? argv[++i] : nullptr; };
        const char* v = nullptr;
        if (a == "--per-second") per_second = true;
        else if (a == "--target" && (v = next())) target = v;
        else if (a == "--clients" && (v = next())) clients = std::atol(v);
        else if (a == "--duration" && (v = next())) duration = std::atof(v);
        else if (a == "--count" && (v = next())) count = std::atol(v);
        else return usage();
    }
    if (clients < 1 || clients > 64 || !(duration > 0 && duration <= 120) || count < 1 || count > 10'000'000)
        return usage();
    if (!in_a_testbed_netns()) {
        std::fprintf(stderr, "imds-load: refusing to run outside a testbed network namespace (/run/netns/imdst-*)\n");
        return 2;
    }
    sockaddr_storage ss{};
    socklen_t len = 0;
    std::string host;
    if (!parse_target(target, ss, len, host) || !allowed_target(ss)) {
        std::fprintf(stderr, "imds-load: --target must be the metadata address or in 198.18.0.0/15\n");
        return 2;
    }
    const std::string request = "PUT /latest/api/token HTTP/1.1\r\nHost: " + host +
                                "\r\nUser-Agent: imds-load\r\nX-aws-ec2-metadata-token-ttl-seconds: 21600\r\n"
                                "Content-Length: 0\r\nConnection: close\r\n\r\n";
    const auto start = Clock::now();
    std::vector<std::thread> threads;
    for (long i = 0; i < clients; ++i) threads.emplace_back(client, ss, len, request, count);
    long last = 0;
    for (int s = 1;; ++s) {
        const auto until = start + std::chrono::milliseconds(static_cast<long>(std::min<double>(s, duration) * 1000));
        while (Clock::now() < until) {
            std::this_thread::sleep_for(std::chrono::milliseconds(20));
            if (g_done + g_errors >= count) break;
        }
        long done = g_done.load();
        if (per_second) std::printf("second %d: %ld tx/s, %ld errors so far\n", s, done - last, g_errors.load());
        last = done;
        if (s >= duration || g_done + g_errors >= count) break;
    }
    g_stop = true;
    for (auto& t : threads) t.join();
    const double secs = std::chrono::duration<double>(Clock::now() - start).count();
    std::printf("RESULT transactions=%ld errors=%ld seconds=%.2f rate=%.0f\n", g_done.load(), g_errors.load(), secs,
                g_done.load() / secs);
    std::fflush(stdout);
    return 0;
}
