#include "probe/imds_client.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace imdstrace {
namespace {

using Clock = std::chrono::steady_clock;

struct Reply {
    std::optional<int> status;
    std::string body;
    std::string error;
    Endpoint local;
};

int remaining_ms(Clock::time_point deadline) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    return left > 0 ? static_cast<int>(left) : 0;
}

Reply exchange(const Endpoint& target, const std::string& request, std::chrono::milliseconds timeout) {
    Reply r;
    const auto deadline = Clock::now() + timeout;
    const bool v4 = target.addr.is_v4();
    int fd = ::socket(v4 ? AF_INET : AF_INET6, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        r.error = std::string("socket: ") + std::strerror(errno);
        return r;
    }
    sockaddr_storage ss{};
    socklen_t len;
    if (v4) {
        auto* a = reinterpret_cast<sockaddr_in*>(&ss);
        a->sin_family = AF_INET;
        a->sin_port = htons(target.port);
        std::memcpy(&a->sin_addr, target.addr.bytes.data(), 4);
        len = sizeof(sockaddr_in);
    } else {
        auto* a = reinterpret_cast<sockaddr_in6*>(&ss);
        a->sin6_family = AF_INET6;
        a->sin6_port = htons(target.port);
        std::memcpy(&a->sin6_addr, target.addr.bytes.data(), 16);
        len = sizeof(sockaddr_in6);
    }
    auto fail = [&](std::string why) {
        r.error = std::move(why);
        ::close(fd);
        return r;
    };
    if (::connect(fd, reinterpret_cast<sockaddr*>(&ss), len) != 0 && errno != EINPROGRESS)
        return fail(std::string("connect: ") + std::strerror(errno));
    // The local endpoint exists from connect() on: record it even if the
    // handshake never completes, so the trace can be matched.
    sockaddr_storage local{};
    socklen_t llen = sizeof(local);
    if (::getsockname(fd, reinterpret_cast<sockaddr*>(&local), &llen) == 0) {
        if (v4) {
            auto* a = reinterpret_cast<sockaddr_in*>(&local);
            r.local = Endpoint{IpAddr::from_raw(Family::ipv4, reinterpret_cast<const std::uint8_t*>(&a->sin_addr)),
                               ntohs(a->sin_port)};
        } else {
            auto* a = reinterpret_cast<sockaddr_in6*>(&local);
            r.local = Endpoint{IpAddr::from_raw(Family::ipv6, reinterpret_cast<const std::uint8_t*>(&a->sin6_addr)),
                               ntohs(a->sin6_port)};
        }
    }
    pollfd p{fd, POLLOUT, 0};
    if (::poll(&p, 1, remaining_ms(deadline)) <= 0)
        return fail("timeout after " + std::to_string(timeout.count()) + " ms (no connection)");
    int soerr = 0;
    socklen_t slen = sizeof(soerr);
    ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &slen);
    if (soerr) return fail(std::string("connect: ") + std::strerror(soerr));
    std::size_t sent = 0;
    while (sent < request.size()) {
        ssize_t n = ::send(fd, request.data() + sent, request.size() - sent, MSG_NOSIGNAL);
        if (n < 0 && errno != EAGAIN) return fail(std::string("send: ") + std::strerror(errno));
        if (n > 0) sent += static_cast<std::size_t>(n);
        else if (::poll(&p, 1, remaining_ms(deadline)) <= 0) return fail("timeout sending the request");
    }
    std::string in;
    p.events = POLLIN;
    for (;;) {
        int left = remaining_ms(deadline);
        if (left == 0 || ::poll(&p, 1, left) <= 0)
            return fail("timeout after " + std::to_string(timeout.count()) + " ms (no response)");
        char buf[4096];
        ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
        if (n < 0 && errno == EAGAIN) continue;
        if (n < 0) return fail(std::string("recv: ") + std::strerror(errno));
        if (n == 0) break;
        in.append(buf, static_cast<std::size_t>(n));
        auto head_end = in.find("\r\n\r\n");
        if (head_end != std::string::npos) {
            auto cl = in.find("Content-Length:");
            if (cl == std::string::npos) cl = in.find("content-length:");
            std::size_t want = cl != std::string::npos ? std::strtoul(in.c_str() + cl + 15, nullptr, 10) : 0;
            if (in.size() >= head_end + 4 + want) break;
        }
    }
    ::close(fd);
    if (in.size() >= 12 && in.starts_with("HTTP/1.")) r.status = std::atoi(in.c_str() + 9);
    else r.error = "malformed response";
    if (auto body = in.find("\r\n\r\n"); body != std::string::npos) r.body = in.substr(body + 4);
    return r;
}

std::string host_header(const Endpoint& t) { return t.addr.is_v4() ? t.addr.str() : "[" + t.addr.str() + "]"; }

}  // namespace

std::vector<ProbeStep> run_imds_flow(const ProbePlan& plan, const std::function<void(const ProbeStep&)>& on_step) {
    std::vector<ProbeStep> steps;
    auto record = [&](ProbeStep s) {
        on_step(s);
        steps.push_back(std::move(s));
    };
    std::string token;  // never leaves this function
    for (int attempt = 1; attempt <= plan.attempts && token.empty(); ++attempt) {
        auto start = Clock::now();
        auto r = exchange(plan.target,
                          "PUT /latest/api/token HTTP/1.1\r\nHost: " + host_header(plan.target) +
                              "\r\nUser-Agent: imdstrace-probe\r\nX-aws-ec2-metadata-token-ttl-seconds: 21600\r\n"
                              "Content-Length: 0\r\nConnection: close\r\n\r\n",
                          plan.timeout);
        ProbeStep s{"PUT", "/latest/api/token", r.status, r.error, r.local,
                    static_cast<int>(std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start).count())};
        if (r.status == 200) token = r.body;
        record(std::move(s));
        if (r.status && r.status != 200) break;  // an answer: retrying will not change it
    }
    if (token.empty() && !plan.fallback_v1) return steps;
    for (const auto& path : plan.paths) {
        auto start = Clock::now();
        std::string req = "GET " + path + " HTTP/1.1\r\nHost: " + host_header(plan.target) +
                          "\r\nUser-Agent: imdstrace-probe\r\n";
        if (!token.empty()) req += "X-aws-ec2-metadata-token: " + token + "\r\n";
        req += "Connection: close\r\n\r\n";
        auto r = exchange(plan.target, req, plan.timeout);
        record(ProbeStep{"GET", path, r.status, r.error, r.local,
                         static_cast<int>(
                             std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start).count())});
    }
    std::fill(token.begin(), token.end(), '\0');
    return steps;
}

}  // namespace imdstrace
