// imds-client: performs the IMDSv2 flow the way aws-sdk-go-v2 (ec2imds) does, for the
// imdstrace testbed. No third-party dependencies, so it can be copied into an initramfs.
//
//   PUT /latest/api/token  (X-aws-ec2-metadata-token-ttl-seconds: 21600), a new connection and a
//                          per-attempt timeout for every attempt
//   GET /latest/meta-data/mac
//   GET /latest/meta-data/network/interfaces/macs/<mac>/vpc-id
//
// Prints one line per step. Never prints token values or response bodies, except the short,
// pattern-checked mac and vpc-id values. Exit 0 when every GET succeeded, 1 otherwise, 2 usage.

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/ip.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;

struct Options {
    std::string target = "169.254.169.254:80";
    int attempts = 3;
    int timeout_ms = 1000;
    int backoff_ms = 0;
    bool fallback_v1 = false;
    bool no_token = false;
    bool bad_token = false;  // send a token IMDS never issued (TOKEN_INVALID)
    bool ttl_header = true;
    int token_ttl = 21600;
    bool xff = false;
    std::vector<std::string> paths;
};

struct Target {
    sockaddr_storage sa{};
    socklen_t len = 0;
    std::string host_header;
};

struct HttpResult {
    enum Kind { kOk, kTimeout, kError } kind = kError;
    std::string error;  // kError: description
    int status = 0;
    std::string body;
    bool server_closes = false;
};

std::optional<long> parse_long(std::string_view s) {
    if (s.empty() || s.size() > 12) return std::nullopt;
    long v = 0;
    for (char c : s) {
        if (c < '0' || c > '9') return std::nullopt;
        v = v * 10 + (c - '0');
    }
    return v;
}

bool parse_target(const std::string& spec, Target& t) {
    std::string host = spec;
    long port = 80;
    bool v6_brackets = false;
    if (!spec.empty() && spec[0] == '[') {
        size_t rb = spec.find(']');
        if (rb == std::string::npos) return false;
        host = spec.substr(1, rb - 1);
        v6_brackets = true;
        if (rb + 1 < spec.size()) {
            if (spec[rb + 1] != ':') return false;
            auto p = parse_long(spec.substr(rb + 2));
            if (!p) return false;
            port = *p;
        }
    } else if (std::count(spec.begin(), spec.end(), ':') == 1) {
        size_t c = spec.find(':');
        host = spec.substr(0, c);
        auto p = parse_long(spec.substr(c + 1));
        if (!p) return false;
        port = *p;
    }
    if (port < 1 || port > 65535) return false;
    auto* s4 = reinterpret_cast<sockaddr_in*>(&t.sa);
    auto* s6 = reinterpret_cast<sockaddr_in6*>(&t.sa);
    if (!v6_brackets && inet_pton(AF_INET, host.c_str(), &s4->sin_addr) == 1) {
        s4->sin_family = AF_INET;
        s4->sin_port = htons(static_cast<uint16_t>(port));
        t.len = sizeof *s4;
        t.host_header = host;
    } else if (inet_pton(AF_INET6, host.c_str(), &s6->sin6_addr) == 1) {
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons(static_cast<uint16_t>(port));
        t.len = sizeof *s6;
        // built piecewise: GCC 12 -O2 warns (-Wrestrict, false positive) on "[" + host + "]"
        t.host_header.reserve(host.size() + 2);
        t.host_header.push_back('[');
        t.host_header.append(host);
        t.host_header.push_back(']');
    } else {
        return false;
    }
    if (port != 80) {
        t.host_header.push_back(':');
        t.host_header.append(std::to_string(port));
    }
    return true;
}

int ms_left(Clock::time_point deadline) {
    auto d = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    return d < 0 ? 0 : static_cast<int>(d);
}

// Non-blocking connect bounded by the deadline. Returns fd or -1 (result filled in).
int connect_deadline(const Target& t, Clock::time_point deadline, HttpResult& r) {
    int fd = socket(t.sa.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        r.kind = HttpResult::kError;
        r.error = std::string("socket: ") + strerror(errno);
        return -1;
    }
    if (connect(fd, reinterpret_cast<const sockaddr*>(&t.sa), t.len) != 0 && errno != EINPROGRESS) {
        r.kind = HttpResult::kError;
        r.error = std::string("connect: ") + strerror(errno);
        close(fd);
        return -1;
    }
    pollfd p{fd, POLLOUT, 0};
    int n;
    do n = poll(&p, 1, ms_left(deadline));
    while (n < 0 && errno == EINTR);
    if (n == 0) {
        r.kind = HttpResult::kTimeout;
        close(fd);
        return -1;
    }
    int err = 0;
    socklen_t el = sizeof err;
    getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el);
    if (n < 0 || err != 0) {
        r.kind = HttpResult::kError;
        r.error = std::string("connect: ") + strerror(n < 0 ? errno : err);
        close(fd);
        return -1;
    }
    return fd;
}

// Sends one request on fd and reads the response, everything bounded by the deadline.
HttpResult exchange(int fd, const std::string& request, Clock::time_point deadline) {
    HttpResult r;
    std::string_view out(request);
    while (!out.empty()) {
        pollfd p{fd, POLLOUT, 0};
        int n = poll(&p, 1, ms_left(deadline));
        if (n == 0) {
            r.kind = HttpResult::kTimeout;
            return r;
        }
        if (n < 0 && errno == EINTR) continue;
        ssize_t w = send(fd, out.data(), out.size(), MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EAGAIN || errno == EINTR) continue;
            r.error = std::string("send: ") + strerror(errno);
            return r;
        }
        out.remove_prefix(static_cast<size_t>(w));
    }
    std::string buf;
    size_t head_end = std::string::npos;
    std::optional<size_t> content_length;
    bool eof = false;
    char chunk[4096];
    for (;;) {
        if (head_end == std::string::npos) {
            head_end = buf.find("\r\n\r\n");
            if (head_end != std::string::npos) {
                // parse status line and the headers we need
                std::string_view head(buf.data(), head_end);
                size_t eol = head.find("\r\n");
                std::string_view sl = head.substr(0, eol);
                if (sl.rfind("HTTP/1.", 0) != 0 || sl.size() < 12) {
                    r.error = "malformed status line";
                    return r;
                }
                auto st = parse_long(sl.substr(9, 3));
                if (!st) {
                    r.error = "malformed status line";
                    return r;
                }
                r.status = static_cast<int>(*st);
                while (eol != std::string_view::npos) {
                    size_t s = eol + 2;
                    eol = head.find("\r\n", s);
                    std::string_view h = head.substr(s, eol == std::string_view::npos ? head.npos : eol - s);
                    size_t c = h.find(':');
                    if (c == std::string_view::npos) continue;
                    std::string name(h.substr(0, c));
                    for (auto& ch : name) ch = static_cast<char>(tolower(static_cast<unsigned char>(ch)));
                    std::string_view v = h.substr(c + 1);
                    while (!v.empty() && v.front() == ' ') v.remove_prefix(1);
                    while (!v.empty() && (v.back() == ' ' || v.back() == '\r')) v.remove_suffix(1);
                    if (name == "content-length") {
                        if (auto cl = parse_long(v)) content_length = static_cast<size_t>(*cl);
                    } else if (name == "connection") {
                        std::string lv(v);
                        for (auto& ch : lv) ch = static_cast<char>(tolower(static_cast<unsigned char>(ch)));
                        if (lv.find("close") != std::string::npos) r.server_closes = true;
                    } else if (name == "transfer-encoding") {
                        r.error = "chunked responses not supported";
                        return r;
                    }
                }
            }
        }
        if (head_end != std::string::npos) {
            size_t have = buf.size() - (head_end + 4);
            if (content_length && have >= *content_length) {
                r.body = buf.substr(head_end + 4, *content_length);
                r.kind = HttpResult::kOk;
                return r;
            }
            if (eof) {
                if (content_length) {
                    r.error = "connection closed mid-body";
                    return r;
                }
                r.body = buf.substr(head_end + 4);
                r.server_closes = true;
                r.kind = HttpResult::kOk;
                return r;
            }
        } else if (eof) {
            r.error = buf.empty() ? "connection closed without response" : "connection closed mid-header";
            return r;
        }
        pollfd p{fd, POLLIN, 0};
        int n = poll(&p, 1, ms_left(deadline));
        if (n == 0) {
            r.kind = HttpResult::kTimeout;
            return r;
        }
        if (n < 0) {
            if (errno == EINTR) continue;
            r.error = std::string("poll: ") + strerror(errno);
            return r;
        }
        ssize_t got = recv(fd, chunk, sizeof chunk, 0);
        if (got < 0) {
            if (errno == EAGAIN || errno == EINTR) continue;
            r.error = std::string("recv: ") + strerror(errno);
            return r;
        }
        if (got == 0) eof = true;
        else buf.append(chunk, static_cast<size_t>(got));
        if (buf.size() > (1u << 20)) {
            r.error = "response too large";
            return r;
        }
    }
}

std::string trim_ws(std::string s) {
    while (!s.empty() && isspace(static_cast<unsigned char>(s.back()))) s.pop_back();
    size_t i = 0;
    while (i < s.size() && isspace(static_cast<unsigned char>(s[i]))) ++i;
    return s.substr(i);
}

bool looks_like_mac(const std::string& s) {
    if (s.size() != 17) return false;
    for (size_t i = 0; i < s.size(); ++i) {
        if (i % 3 == 2) {
            if (s[i] != ':') return false;
        } else if (!isxdigit(static_cast<unsigned char>(s[i]))) {
            return false;
        }
    }
    return true;
}

bool looks_like_vpc_id(const std::string& s) {
    if (s.size() < 5 || s.size() > 32 || s.rfind("vpc-", 0) != 0) return false;
    return std::all_of(s.begin() + 4, s.end(), [](char c) { return isxdigit(static_cast<unsigned char>(c)); });
}

std::string describe_failure(const HttpResult& r, int timeout_ms) {
    if (r.kind == HttpResult::kTimeout) return "timeout after " + std::to_string(timeout_ms) + "ms";
    return "error: " + r.error;
}

class Client {
public:
    Client(const Options& o, const Target& t) : o_(o), t_(t) {}
    ~Client() { drop(); }

    // Token fetch: every attempt on a fresh connection with its own timeout.
    std::optional<std::string> fetch_token() {
        const std::string path = "/latest/api/token";
        for (int a = 1; a <= o_.attempts; ++a) {
            token_attempts_ = a;
            std::string req = "PUT " + path + " HTTP/1.1\r\nHost: " + t_.host_header +
                              "\r\nUser-Agent: " + kUserAgent + "\r\nContent-Length: 0\r\n";
            if (o_.ttl_header)
                req += "X-Aws-Ec2-Metadata-Token-Ttl-Seconds: " + std::to_string(o_.token_ttl) + "\r\n";
            if (o_.xff) req += "X-Forwarded-For: 198.18.0.1\r\n";
            req += "\r\n";
            auto deadline = Clock::now() + std::chrono::milliseconds(o_.timeout_ms);
            HttpResult r;
            int fd = connect_deadline(t_, deadline, r);
            if (fd >= 0) {
                r = exchange(fd, req, deadline);
                close(fd);
            }
            std::string att = " (attempt " + std::to_string(a) + "/" + std::to_string(o_.attempts) + ")";
            if (r.kind == HttpResult::kOk && r.status == 200 && !trim_ws(r.body).empty()) {
                printf("PUT %s -> 200 (token received)%s\n", path.c_str(), att.c_str());
                fflush(stdout);
                return trim_ws(r.body);
            }
            if (r.kind == HttpResult::kOk) {
                printf("PUT %s -> %d%s\n", path.c_str(), r.status, att.c_str());
                fflush(stdout);
                if (r.status < 500 && r.status != 429) return std::nullopt;  // not retryable
            } else {
                printf("PUT %s -> %s%s\n", path.c_str(), describe_failure(r, o_.timeout_ms).c_str(), att.c_str());
                fflush(stdout);
            }
            if (a < o_.attempts && o_.backoff_ms > 0)
                std::this_thread::sleep_for(std::chrono::milliseconds(o_.backoff_ms));
        }
        return std::nullopt;
    }

    // GET with retries; keeps one keep-alive connection, reconnects after failures.
    // Failed attempts are printed here; `printed` tells whether the returned result was.
    HttpResult get(const std::string& path, const std::optional<std::string>& token, bool& printed) {
        HttpResult r;
        printed = false;
        for (int a = 1; a <= o_.attempts; ++a) {
            std::string req = "GET " + path + " HTTP/1.1\r\nHost: " + t_.host_header +
                              "\r\nUser-Agent: " + kUserAgent + "\r\n";
            if (token) req += "X-Aws-Ec2-Metadata-Token: " + *token + "\r\n";
            req += "\r\n";
            auto deadline = Clock::now() + std::chrono::milliseconds(o_.timeout_ms);
            r = HttpResult{};
            bool reused = fd_ >= 0;
            if (fd_ < 0) fd_ = connect_deadline(t_, deadline, r);
            if (fd_ >= 0) {
                r = exchange(fd_, req, deadline);
                // a kept-alive connection the server closed in the meantime: retry at once
                if (reused && r.kind == HttpResult::kError) {
                    drop();
                    fd_ = connect_deadline(t_, deadline, r);
                    if (fd_ >= 0) r = exchange(fd_, req, deadline);
                }
                if (r.kind != HttpResult::kOk || r.server_closes) drop();
            }
            std::string att = " (attempt " + std::to_string(a) + "/" + std::to_string(o_.attempts) + ")";
            printed = true;
            if (r.kind == HttpResult::kOk) {
                if (r.status < 500 && r.status != 429) {
                    printed = false;
                    return r;
                }
                printf("GET %s -> %d%s\n", path.c_str(), r.status, att.c_str());
            } else {
                printf("GET %s -> %s%s\n", path.c_str(), describe_failure(r, o_.timeout_ms).c_str(), att.c_str());
            }
            fflush(stdout);
            if (a < o_.attempts && o_.backoff_ms > 0)
                std::this_thread::sleep_for(std::chrono::milliseconds(o_.backoff_ms));
        }
        return r;
    }

private:
    void drop() {
        if (fd_ >= 0) close(fd_);
        fd_ = -1;
    }
    int token_attempts_ = 0;

public:
    int token_attempts() const { return token_attempts_; }

private:
    static constexpr const char* kUserAgent = "imds-client/1 (imdstrace testbed; aws-sdk-go-v2 ec2imds flow)";
    const Options& o_;
    const Target& t_;
    int fd_ = -1;
};

void usage(FILE* out) {
    fprintf(out,
            "usage: imds-client [--target ADDR[:PORT]] [--attempts N] [--timeout-ms MS]\n"
            "                   [--fallback-v1] [--no-token] [--ttl-header|--no-ttl-header]\n"
            "                   [--token-ttl S] [--xff] [--backoff-ms MS] [--path P ...] [--bad-token]\n"
            "  default target 169.254.169.254:80; IPv6 as [fd00:ec2::254]:80\n"
            "  default flow: PUT /latest/api/token, GET /latest/meta-data/mac,\n"
            "  GET /latest/meta-data/network/interfaces/macs/<mac>/vpc-id\n"
            "  --path P (repeatable) replaces the two default GETs\n"
            "exit: 0 all GETs succeeded, 1 otherwise, 2 usage error\n");
}

}  // namespace

int main(int argc, char** argv) {
    signal(SIGPIPE, SIG_IGN);
    Options o;
    auto need = [&](int& i) -> std::string {
        if (i + 1 >= argc) {
            fprintf(stderr, "imds-client: %s needs a value\n", argv[i]);
            exit(2);
        }
        return argv[++i];
    };
    auto int_arg = [&](const std::string& v, const char* what, long lo, long hi) -> int {
        auto n = parse_long(v);
        if (!n || *n < lo || *n > hi) {
            fprintf(stderr, "imds-client: %s must be %ld..%ld\n", what, lo, hi);
            exit(2);
        }
        return static_cast<int>(*n);
    };
    for (int i = 1; i < argc; ++i) {
        std::string a = argv[i];
        if (a == "--target") o.target = need(i);
        else if (a == "--attempts") o.attempts = int_arg(need(i), "--attempts", 1, 100);
        else if (a == "--timeout-ms") o.timeout_ms = int_arg(need(i), "--timeout-ms", 1, 600000);
        else if (a == "--backoff-ms") o.backoff_ms = int_arg(need(i), "--backoff-ms", 0, 600000);
        else if (a == "--fallback-v1") o.fallback_v1 = true;
        else if (a == "--no-token") o.no_token = true;
        else if (a == "--bad-token") o.bad_token = o.no_token = true;
        else if (a == "--ttl-header") o.ttl_header = true;
        else if (a == "--no-ttl-header") o.ttl_header = false;
        else if (a == "--token-ttl") o.token_ttl = int_arg(need(i), "--token-ttl", 0, 1000000);
        else if (a == "--xff") o.xff = true;
        else if (a == "--path") {
            std::string p = need(i);
            if (p.empty() || p[0] != '/' || p.find_first_of(" \r\n") != std::string::npos) {
                fprintf(stderr, "imds-client: --path must start with / and contain no spaces\n");
                return 2;
            }
            o.paths.push_back(p);
        } else if (a == "-h" || a == "--help") {
            usage(stdout);
            return 0;
        } else {
            fprintf(stderr, "imds-client: unknown option '%s'\n", a.c_str());
            usage(stderr);
            return 2;
        }
    }
    Target t;
    if (!parse_target(o.target, t)) {
        fprintf(stderr, "imds-client: bad --target '%s' (ADDR[:PORT], IPv6 as [ADDR]:PORT)\n", o.target.c_str());
        return 2;
    }

    Client c(o, t);
    std::optional<std::string> token;
    const char* mode = "IMDSv1";
    if (o.bad_token) {
        token = std::string("invalid-token-never-issued-by-this-imds");
        mode = "invalid token";
    }
    if (!o.no_token) {
        token = c.fetch_token();
        if (token) {
            mode = "IMDSv2";
        } else if (o.fallback_v1) {
            printf("PUT /latest/api/token -> no token, falling back to IMDSv1\n");
            mode = "IMDSv1 fallback";
        } else {
            printf("PUT /latest/api/token -> no token after %d attempt(s), GETs not sent\n", c.token_attempts());
            printf("result: failed (no token)\n");
            return 1;
        }
    }

    bool all_ok = true;
    bool printed = false;
    auto show = [&](const std::string& path, const HttpResult& r, const std::string& shown) {
        if (printed) return;  // the failing attempts were printed already
        if (r.kind != HttpResult::kOk)
            printf("GET %s -> %s\n", path.c_str(), describe_failure(r, o.timeout_ms).c_str());
        else if (r.status >= 200 && r.status < 300)
            printf("GET %s -> %d (%s)\n", path.c_str(), r.status, shown.c_str());
        else
            printf("GET %s -> %d\n", path.c_str(), r.status);
        fflush(stdout);
    };
    auto ok = [](const HttpResult& r) { return r.kind == HttpResult::kOk && r.status >= 200 && r.status < 300; };

    if (!o.paths.empty()) {
        for (const auto& p : o.paths) {
            HttpResult r = c.get(p, token, printed);
            show(p, r, std::to_string(r.body.size()) + " bytes");
            all_ok = all_ok && ok(r);
        }
    } else {
        const std::string mac_path = "/latest/meta-data/mac";
        HttpResult r = c.get(mac_path, token, printed);
        std::string mac = trim_ws(r.body);
        bool mac_ok = ok(r) && looks_like_mac(mac);
        show(mac_path, r, mac_ok ? mac : std::to_string(r.body.size()) + " bytes, not a MAC");
        if (!mac_ok) {
            all_ok = false;
        } else {
            const std::string vpc_path = "/latest/meta-data/network/interfaces/macs/" + mac + "/vpc-id";
            HttpResult v = c.get(vpc_path, token, printed);
            std::string vpc = trim_ws(v.body);
            bool vpc_ok = ok(v) && looks_like_vpc_id(vpc);
            show(vpc_path, v, vpc_ok ? vpc : std::to_string(v.body.size()) + " bytes, not a VPC ID");
            all_ok = vpc_ok;
        }
    }
    printf("result: %s (%s)\n", all_ok ? "ok" : "failed", mode);
    return all_ok ? 0 : 1;
}
