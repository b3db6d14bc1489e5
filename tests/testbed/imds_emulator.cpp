// imds-emulator: a small EC2 instance metadata service (IMDS) emulator for the imdstrace testbed.
//
// Behaves like IMDS where imdstrace cares: the IMDSv2 token PUT is answered with IP TTL /
// IPv6 hop limit = --hop-limit (set on the accepted socket just before the response, so the
// handshake uses the default TTL), httpTokens optional|required, endpoint enabled|disabled,
// 400/403/405 rules of the token endpoint, the metadata paths SDKs and the AWS load balancer
// controller use, and an optional silent rate limiter (the link-local allowance).
//
// Never logs token values or response bodies (credentials). Only run it inside test network
// namespaces: 169.254.169.254 / fd00:ec2::254 are real infrastructure in the root namespace.

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/ip.h>
#include <poll.h>
#include <signal.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdarg>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <map>
#include <mutex>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <vector>

#ifndef IPV6_FREEBIND
#define IPV6_FREEBIND 78
#endif

namespace {

using Clock = std::chrono::steady_clock;

constexpr int kMaxTokenTtl = 21600;
constexpr size_t kMaxHeaderBytes = 16 * 1024;
constexpr size_t kMaxBodyBytes = 64 * 1024;
constexpr int kMaxConnections = 512;

struct Config {
    std::vector<std::string> listen;
    int hop_limit = 1;
    bool tokens_required = false;
    bool endpoint_enabled = true;
    double rate_limit = 0;  // requests per second, 0 = off
    std::string pidfile;
    std::string ready_file;
    bool quiet = false;
    int idle_timeout_s = 60;
    std::string mac = "02:42:c6:12:00:02";
    std::string vpc_id = "vpc-0abc1234def567890";
    std::string instance_id = "i-0123456789abcdef0";
    std::string region = "us-east-1";
    std::string az = "us-east-1a";
    std::string role = "imdstrace-testbed-role";
};

Config g_cfg;
std::atomic<int> g_connections{0};

// ---------------------------------------------------------------------------------------------
// logging

std::mutex g_log_mu;

std::string now_iso8601() {
    timespec ts{};
    clock_gettime(CLOCK_REALTIME, &ts);
    tm t{};
    gmtime_r(&ts.tv_sec, &t);
    char buf[64];
    size_t n = strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S", &t);
    snprintf(buf + n, sizeof buf - n, ".%03ldZ", ts.tv_nsec / 1000000);
    return buf;
}

void logf(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
void logf(const char* fmt, ...) {
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    std::lock_guard<std::mutex> lk(g_log_mu);
    fprintf(stderr, "imds-emulator: %s %s\n", now_iso8601().c_str(), msg);
    fflush(stderr);
}

// Printable, bounded copy of client-controlled text for the log.
std::string sanitize(std::string_view s, size_t max = 200) {
    std::string out;
    for (char c : s.substr(0, max)) {
        unsigned char u = static_cast<unsigned char>(c);
        out.push_back(u >= 0x21 && u < 0x7f ? c : '?');
    }
    if (s.size() > max) out += "...";
    return out;
}

// ---------------------------------------------------------------------------------------------
// helpers

std::string lower(std::string_view s) {
    std::string r(s);
    for (auto& c : r) c = static_cast<char>(tolower(static_cast<unsigned char>(c)));
    return r;
}

std::string_view trim(std::string_view s) {
    while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
    while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r'))
        s.remove_suffix(1);
    return s;
}

std::optional<long> parse_long(std::string_view s) {
    if (s.empty() || s.size() > 12) return std::nullopt;
    long v = 0;
    for (char c : s) {
        if (c < '0' || c > '9') return std::nullopt;
        v = v * 10 + (c - '0');
    }
    return v;
}

std::string http_date() {
    time_t now = time(nullptr);
    tm t{};
    gmtime_r(&now, &t);
    char buf[64];
    strftime(buf, sizeof buf, "%a, %d %b %Y %H:%M:%S GMT", &t);
    return buf;
}

std::string iso_time(time_t when) {
    tm t{};
    gmtime_r(&when, &t);
    char buf[64];
    strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &t);
    return buf;
}

std::string peer_string(const sockaddr_storage& ss) {
    char host[INET6_ADDRSTRLEN] = "?";
    int port = 0;
    if (ss.ss_family == AF_INET) {
        auto* s = reinterpret_cast<const sockaddr_in*>(&ss);
        inet_ntop(AF_INET, &s->sin_addr, host, sizeof host);
        port = ntohs(s->sin_port);
        return std::string(host) + ":" + std::to_string(port);
    }
    auto* s6 = reinterpret_cast<const sockaddr_in6*>(&ss);
    inet_ntop(AF_INET6, &s6->sin6_addr, host, sizeof host);
    port = ntohs(s6->sin6_port);
    return "[" + std::string(host) + "]:" + std::to_string(port);
}

bool send_all(int fd, std::string_view data) {
    while (!data.empty()) {
        ssize_t n = send(fd, data.data(), data.size(), MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR) continue;
            return false;
        }
        data.remove_prefix(static_cast<size_t>(n));
    }
    return true;
}

// ---------------------------------------------------------------------------------------------
// tokens

// Issued tokens, with an index by expiry so that issuing costs O(log n) whatever the history.
// (It used to sweep every token on every issue once 4096 were held: with 6-hour tokens nothing
// expires, so under a minute of load each PUT walked ~100k entries and the emulator fell from
// ~4.9k to ~0.6k transactions/s.)  At most kMaxTokens are held: beyond that the one expiring
// first is forgotten (a client that kept it gets 401 TOKEN_INVALID, as after a real expiry).
class TokenStore {
public:
    static constexpr size_t kMaxTokens = 65536;

    std::string issue(int ttl_s) {
        std::string tok = random_token();
        std::lock_guard<std::mutex> lk(mu_);
        auto now = Clock::now();
        while (!by_expiry_.empty() && (by_expiry_.begin()->first <= now || by_expiry_.size() >= kMaxTokens)) {
            tokens_.erase(by_expiry_.begin()->second);
            by_expiry_.erase(by_expiry_.begin());
        }
        auto expiry = now + std::chrono::seconds(ttl_s);
        auto [it, fresh] = tokens_.emplace(tok, by_expiry_.end());
        if (!fresh) by_expiry_.erase(it->second);
        it->second = by_expiry_.emplace(expiry, tok);
        return tok;
    }
    // Remaining seconds of a valid token, nullopt when unknown or expired.
    std::optional<long> remaining(const std::string& tok) {
        std::lock_guard<std::mutex> lk(mu_);
        auto it = tokens_.find(tok);
        if (it == tokens_.end()) return std::nullopt;
        auto now = Clock::now();
        auto expiry = it->second->first;
        if (expiry <= now) {
            by_expiry_.erase(it->second);
            tokens_.erase(it);
            return std::nullopt;
        }
        return std::chrono::duration_cast<std::chrono::seconds>(expiry - now).count();
    }

private:
    std::string random_token() {
        static const char alphabet[] =
            "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        // Real tokens look like base64 of 40 bytes: 56 characters ending in "==".
        std::lock_guard<std::mutex> lk(rng_mu_);
        std::string out = "AQAEA";
        while (out.size() < 54) out.push_back(alphabet[rng_() % 64]);
        out += "==";
        return out;
    }
    using ByExpiry = std::multimap<Clock::time_point, std::string>;
    std::mutex mu_;
    ByExpiry by_expiry_;
    std::unordered_map<std::string, ByExpiry::iterator> tokens_;
    std::mutex rng_mu_;
    std::mt19937_64 rng_{std::random_device{}()};
};

TokenStore g_tokens;

// ---------------------------------------------------------------------------------------------
// rate limiter (global token bucket, one token per request)

class RateLimiter {
public:
    explicit RateLimiter(double rate) : rate_(rate), burst_(std::max(1.0, rate)), level_(burst_) {}
    bool allow() {
        if (rate_ <= 0) return true;
        std::lock_guard<std::mutex> lk(mu_);
        auto now = Clock::now();
        double dt = std::chrono::duration<double>(now - last_).count();
        last_ = now;
        level_ = std::min(burst_, level_ + dt * rate_);
        if (level_ >= 1.0) {
            level_ -= 1.0;
            return true;
        }
        return false;
    }

private:
    std::mutex mu_;
    double rate_;
    double burst_;
    double level_;
    Clock::time_point last_ = Clock::now();
};

RateLimiter* g_limiter = nullptr;

// ---------------------------------------------------------------------------------------------
// metadata tree

std::map<std::string, std::string> g_leaves;  // path under /latest/ (no leading slash) -> value

void build_tree() {
    const auto& c = g_cfg;
    const std::string mac_dir = "meta-data/network/interfaces/macs/" + c.mac + "/";
    g_leaves = {
        {"meta-data/ami-id", "ami-0123456789abcdef0"},
        {"meta-data/ami-launch-index", "0"},
        {"meta-data/hostname", "ip-198-18-0-2.ec2.internal"},
        {"meta-data/instance-id", c.instance_id},
        {"meta-data/instance-life-cycle", "on-demand"},
        {"meta-data/instance-type", "m5.large"},
        {"meta-data/local-hostname", "ip-198-18-0-2.ec2.internal"},
        {"meta-data/local-ipv4", "198.18.0.2"},
        {"meta-data/mac", c.mac},
        {mac_dir + "device-number", "0"},
        {mac_dir + "interface-id", "eni-0123456789abcdef0"},
        {mac_dir + "local-hostname", "ip-198-18-0-2.ec2.internal"},
        {mac_dir + "local-ipv4s", "198.18.0.2"},
        {mac_dir + "mac", c.mac},
        {mac_dir + "owner-id", "123456789012"},
        {mac_dir + "security-group-ids", "sg-0123456789abcdef0"},
        {mac_dir + "subnet-id", "subnet-0123456789abcdef0"},
        {mac_dir + "subnet-ipv4-cidr-block", "198.18.0.0/24"},
        {mac_dir + "vpc-id", c.vpc_id},
        {mac_dir + "vpc-ipv4-cidr-block", "198.18.0.0/15"},
        {mac_dir + "vpc-ipv4-cidr-blocks", "198.18.0.0/15"},
        {"meta-data/placement/availability-zone", c.az},
        {"meta-data/placement/availability-zone-id", "use1-az1"},
        {"meta-data/placement/region", c.region},
        {"meta-data/services/domain", "amazonaws.com"},
        {"meta-data/services/partition", "aws"},
        {"meta-data/iam/info",
         "{\n  \"Code\" : \"Success\",\n  \"LastUpdated\" : \"" + iso_time(time(nullptr)) +
             "\",\n  \"InstanceProfileArn\" : \"arn:aws:iam::123456789012:instance-profile/" +
             c.role + "\",\n  \"InstanceProfileId\" : \"AIPAIMDSTRACETESTBED0\"\n}"},
        // Placeholder: the credentials document is generated per request (see lookup()).
        {"meta-data/iam/security-credentials/" + c.role, ""},
        {"dynamic/instance-identity/document",
         "{\n  \"accountId\" : \"123456789012\",\n  \"architecture\" : \"x86_64\",\n"
         "  \"availabilityZone\" : \"" + c.az + "\",\n  \"imageId\" : \"ami-0123456789abcdef0\",\n"
         "  \"instanceId\" : \"" + c.instance_id + "\",\n  \"instanceType\" : \"m5.large\",\n"
         "  \"pendingTime\" : \"2026-01-01T00:00:00Z\",\n  \"privateIp\" : \"198.18.0.2\",\n"
         "  \"region\" : \"" + c.region + "\",\n  \"version\" : \"2017-09-30\"\n}"},
    };
}

std::string credentials_document() {
    // Obviously fake; every secret value carries the marker IMDSFAKESECRET so tests can assert
    // that none of them ever shows up in imdstrace output.
    time_t now = time(nullptr);
    return "{\n  \"Code\" : \"Success\",\n  \"LastUpdated\" : \"" + iso_time(now) +
           "\",\n  \"Type\" : \"AWS-HMAC\",\n"
           "  \"AccessKeyId\" : \"ASIAIMDSFAKESECRET00\",\n"
           "  \"SecretAccessKey\" : \"IMDSFAKESECRETwJalrXUtnFEMI/K7MDENG/bPxRfiCY\",\n"
           "  \"Token\" : \"IMDSFAKESECRETIQoJb3JpZ2luX2VjEXAMPLEsessiontokenIMDSFAKESECRET\",\n"
           "  \"Expiration\" : \"" + iso_time(now + 6 * 3600) + "\"\n}";
}

// Looks up a path relative to /latest/ ("" is the root). Returns nullopt when absent.
std::optional<std::string> lookup(std::string rel) {
    bool want_dir = rel.empty() || rel.back() == '/';
    while (!rel.empty() && rel.back() == '/') rel.pop_back();
    if (!want_dir) {
        auto it = g_leaves.find(rel);
        if (it != g_leaves.end()) {
            if (rel.rfind("meta-data/iam/security-credentials/", 0) == 0)
                return credentials_document();
            return it->second;
        }
    }
    // directory listing: immediate children, sub-directories with a trailing slash
    std::string prefix = rel.empty() ? "" : rel + "/";
    std::set<std::string> children;
    for (const auto& [k, v] : g_leaves) {
        if (k.compare(0, prefix.size(), prefix) != 0 || k.size() == prefix.size()) continue;
        std::string rest = k.substr(prefix.size());
        auto slash = rest.find('/');
        children.insert(slash == std::string::npos ? rest : rest.substr(0, slash + 1));
    }
    if (children.empty()) return std::nullopt;
    std::string out;
    for (const auto& ch : children) {
        if (!out.empty()) out += '\n';
        out += ch;
    }
    return out;
}

bool is_version_segment(std::string_view seg) {
    if (seg == "latest" || seg == "1.0") return true;
    // YYYY-MM-DD
    if (seg.size() != 10 || seg[4] != '-' || seg[7] != '-') return false;
    for (size_t i : {0, 1, 2, 3, 5, 6, 8, 9})
        if (seg[i] < '0' || seg[i] > '9') return false;
    return true;
}

// ---------------------------------------------------------------------------------------------
// HTTP

struct Request {
    std::string method;
    std::string target;
    std::string path;  // target without query, origin-form
    std::string version;
    std::map<std::string, std::string> headers;  // lower-case names
    bool has(const char* name) const { return headers.count(name) != 0; }
    const std::string* get(const char* name) const {
        auto it = headers.find(name);
        return it == headers.end() ? nullptr : &it->second;
    }
};

struct Response {
    int status = 200;
    std::string body;
    std::vector<std::pair<std::string, std::string>> headers;
    bool token_issued = false;
    std::string note;  // for the log, never secret
};

const char* reason_phrase(int status) {
    switch (status) {
        case 200: return "OK";
        case 400: return "Bad Request";
        case 401: return "Unauthorized";
        case 403: return "Forbidden";
        case 404: return "Not Found";
        case 405: return "Method Not Allowed";
        case 413: return "Payload Too Large";
        case 501: return "Not Implemented";
        default: return "Error";
    }
}

Response error_response(int status, std::string note = {}) {
    Response r;
    r.status = status;
    // Real IMDS answers errors with a small XHTML page.
    std::string title = std::to_string(status) + " - " + reason_phrase(status);
    r.body =
        "<?xml version=\"1.0\" encoding=\"iso-8859-1\"?>\n"
        "<!DOCTYPE html PUBLIC \"-//W3C//DTD XHTML 1.0 Transitional//EN\"\n"
        "\t\"http://www.w3.org/TR/xhtml1/DTD/xhtml1-transitional.dtd\">\n"
        "<html xmlns=\"http://www.w3.org/1999/xhtml\" xml:lang=\"en\" lang=\"en\">\n"
        " <head>\n  <title>" + title + "</title>\n </head>\n <body>\n  <h1>" + title +
        "</h1>\n </body>\n</html>\n";
    r.headers.emplace_back("Content-Type", "text/html");
    r.note = std::move(note);
    return r;
}

Response handle(const Request& req) {
    if (!g_cfg.endpoint_enabled) return error_response(403, "endpoint disabled");

    // split path into segments
    std::vector<std::string_view> segs;
    {
        std::string_view p(req.path);
        size_t i = 0;
        while (i < p.size()) {
            while (i < p.size() && p[i] == '/') ++i;
            size_t j = p.find('/', i);
            if (j == std::string_view::npos) j = p.size();
            if (j > i) segs.push_back(p.substr(i, j - i));
            i = j;
        }
    }

    // token endpoint: /<version>/api/token
    if (segs.size() == 3 && segs[1] == "api" && segs[2] == "token") {
        if (segs[0] != "latest") return error_response(403, "versioned token path");
        if (req.method != "PUT") {
            Response r = error_response(405, "token endpoint needs PUT");
            r.headers.emplace_back("Allow", "OPTIONS, PUT");
            return r;
        }
        if (req.has("x-forwarded-for")) return error_response(403, "X-Forwarded-For on PUT");
        const std::string* ttl_h = req.get("x-aws-ec2-metadata-token-ttl-seconds");
        if (!ttl_h) return error_response(400, "missing TTL header");
        auto ttl = parse_long(trim(*ttl_h));
        if (!ttl || *ttl < 1 || *ttl > kMaxTokenTtl) return error_response(400, "invalid TTL");
        Response r;
        r.body = g_tokens.issue(static_cast<int>(*ttl));
        r.headers.emplace_back("Content-Type", "text/plain");
        r.headers.emplace_back("X-Aws-Ec2-Metadata-Token-Ttl-Seconds", std::to_string(*ttl));
        r.token_issued = true;
        r.note = "token issued, lifetime " + std::to_string(*ttl) + "s";
        return r;
    }

    if (req.method != "GET" && req.method != "HEAD") {
        Response r = error_response(405);
        r.headers.emplace_back("Allow", "OPTIONS, GET, HEAD");
        return r;
    }

    std::optional<long> token_left;
    if (const std::string* tok = req.get("x-aws-ec2-metadata-token")) {
        token_left = g_tokens.remaining(std::string(trim(*tok)));
        if (!token_left) return error_response(401, "token invalid or expired");
    } else if (g_cfg.tokens_required) {
        return error_response(401, "token required");
    }

    std::optional<std::string> value;
    if (segs.empty()) {
        value = "1.0\n2007-01-19\n2021-01-03\n2021-03-23\nlatest";
    } else if (is_version_segment(segs[0])) {
        // everything after the version segment, keeping a trailing slash
        size_t off = req.path.find(segs[0]) + segs[0].size();
        std::string rel = req.path.substr(off);
        while (!rel.empty() && rel.front() == '/') rel.erase(rel.begin());
        // collapse duplicate slashes
        std::string clean;
        for (char ch : rel)
            if (!(ch == '/' && !clean.empty() && clean.back() == '/')) clean.push_back(ch);
        value = lookup(clean);
    }
    if (!value) return error_response(404);
    Response r;
    r.body = std::move(*value);
    r.headers.emplace_back("Content-Type", "text/plain");
    if (token_left)
        r.headers.emplace_back("X-Aws-Ec2-Metadata-Token-Ttl-Seconds", std::to_string(*token_left));
    r.note = token_left ? "v2" : "v1";
    return r;
}

// Parses the head (request line + headers, without the final CRLFCRLF).
bool parse_head(std::string_view head, Request& req) {
    size_t eol = head.find("\r\n");
    std::string_view line = head.substr(0, eol);
    size_t a = line.find(' ');
    if (a == std::string_view::npos) return false;
    size_t b = line.find(' ', a + 1);
    if (b == std::string_view::npos) return false;
    req.method = std::string(line.substr(0, a));
    req.target = std::string(line.substr(a + 1, b - a - 1));
    req.version = std::string(line.substr(b + 1));
    if (req.method.empty() || req.target.empty() || req.version.rfind("HTTP/1.", 0) != 0)
        return false;
    std::string t = req.target;
    if (t.rfind("http://", 0) == 0) {  // absolute-form
        size_t s = t.find('/', 7);
        t = s == std::string::npos ? "/" : t.substr(s);
    }
    if (t.empty() || t[0] != '/') return false;
    size_t q = t.find_first_of("?#");
    req.path = q == std::string::npos ? t : t.substr(0, q);
    while (eol != std::string_view::npos) {
        size_t start = eol + 2;
        eol = head.find("\r\n", start);
        std::string_view h = head.substr(start, eol == std::string_view::npos ? head.npos : eol - start);
        if (h.empty()) continue;
        size_t colon = h.find(':');
        if (colon == std::string_view::npos || colon == 0) return false;
        std::string name = lower(h.substr(0, colon));
        std::string value(trim(h.substr(colon + 1)));
        auto [it, inserted] = req.headers.emplace(name, value);
        if (!inserted) it->second += ", " + value;
    }
    return true;
}

void set_hop_limit(int fd, int family, int hop_limit) {
    if (family == AF_INET6) {
        if (setsockopt(fd, IPPROTO_IPV6, IPV6_UNICAST_HOPS, &hop_limit, sizeof hop_limit) != 0)
            logf("warning: IPV6_UNICAST_HOPS: %s", strerror(errno));
        // v4-mapped peers on a dual-stack socket (not used by default, V6ONLY is set)
        setsockopt(fd, IPPROTO_IP, IP_TTL, &hop_limit, sizeof hop_limit);
    } else if (setsockopt(fd, IPPROTO_IP, IP_TTL, &hop_limit, sizeof hop_limit) != 0) {
        logf("warning: IP_TTL: %s", strerror(errno));
    }
}

std::string serialize(const Response& r, bool head_only, bool close) {
    std::string out = "HTTP/1.1 " + std::to_string(r.status) + " " + reason_phrase(r.status) + "\r\n";
    for (const auto& [k, v] : r.headers) out += k + ": " + v + "\r\n";
    out += "Accept-Ranges: none\r\n";
    out += "Last-Modified: " + http_date() + "\r\n";
    out += "Content-Length: " + std::to_string(r.body.size()) + "\r\n";
    out += "Date: " + http_date() + "\r\n";
    out += "Server: EC2ws\r\n";
    out += close ? "Connection: close\r\n" : "Connection: keep-alive\r\n";
    out += "\r\n";
    if (!head_only) out += r.body;
    return out;
}

void graceful_close(int fd) {
    shutdown(fd, SHUT_WR);
    // drain briefly so unread input does not turn the close into a RST
    timeval tv{1, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    char buf[4096];
    for (int i = 0; i < 64; ++i)
        if (recv(fd, buf, sizeof buf, 0) <= 0) break;
    close(fd);
}

void serve_connection(int fd, sockaddr_storage peer) {
    struct Guard {
        ~Guard() { g_connections.fetch_sub(1); }
    } guard;
    const std::string who = peer_string(peer);
    sockaddr_storage local{};
    socklen_t llen = sizeof local;
    getsockname(fd, reinterpret_cast<sockaddr*>(&local), &llen);
    const int family = local.ss_family;

    timeval tv{g_cfg.idle_timeout_s, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    timeval stv{10, 0};
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &stv, sizeof stv);

    std::string buf;
    int hop_applied = 0;  // 0 = default TTL on this connection
    bool silent = false;  // rate limited: never answer again on this connection
    char chunk[4096];

    auto read_more = [&]() -> bool {
        ssize_t n;
        do n = recv(fd, chunk, sizeof chunk, 0);
        while (n < 0 && errno == EINTR);
        if (n <= 0) return false;
        buf.append(chunk, static_cast<size_t>(n));
        return true;
    };

    for (;;) {
        size_t head_end;
        while ((head_end = buf.find("\r\n\r\n")) == std::string::npos) {
            if (buf.size() > kMaxHeaderBytes) {
                if (!silent) {
                    send_all(fd, serialize(error_response(400), false, true));
                    logf("%s (header too large) -> 400 hop_limit=%s", who.c_str(),
                         hop_applied ? std::to_string(hop_applied).c_str() : "default");
                }
                graceful_close(fd);
                return;
            }
            if (!read_more()) {
                close(fd);
                return;
            }
        }
        Request req;
        bool ok = parse_head(std::string_view(buf).substr(0, head_end), req);
        size_t consumed = head_end + 4;
        if (!ok) {
            buf.erase(0, consumed);
            if (!silent) {
                send_all(fd, serialize(error_response(400), false, true));
                logf("%s (malformed request) -> 400 hop_limit=%s", who.c_str(),
                     hop_applied ? std::to_string(hop_applied).c_str() : "default");
            }
            graceful_close(fd);
            return;
        }
        // request body (ignored)
        size_t body_len = 0;
        if (req.has("transfer-encoding")) {
            if (!silent) {
                send_all(fd, serialize(error_response(501), false, true));
                logf("%s %s %s -> 501 (chunked body) hop_limit=default", who.c_str(),
                     sanitize(req.method, 16).c_str(), sanitize(req.path).c_str());
            }
            graceful_close(fd);
            return;
        }
        if (const std::string* cl = req.get("content-length")) {
            auto v = parse_long(trim(*cl));
            if (!v || static_cast<size_t>(*v) > kMaxBodyBytes) {
                if (!silent) send_all(fd, serialize(error_response(413), false, true));
                graceful_close(fd);
                return;
            }
            body_len = static_cast<size_t>(*v);
        }
        while (buf.size() < consumed + body_len)
            if (!read_more()) {
                close(fd);
                return;
            }
        buf.erase(0, consumed + body_len);

        if (silent) continue;

        std::string conn_hdr = lower(req.get("connection") ? *req.get("connection") : "");
        bool close_after = conn_hdr.find("close") != std::string::npos ||
                           (req.version == "HTTP/1.0" && conn_hdr.find("keep-alive") == std::string::npos);

        if (g_limiter && !g_limiter->allow()) {
            silent = true;
            logf("%s %s %s -> no response (rate limited)", who.c_str(),
                 sanitize(req.method, 16).c_str(), sanitize(req.path).c_str());
            continue;
        }

        Response resp = handle(req);
        if (resp.token_issued && hop_applied == 0) {
            // IMDS sends the token response with TTL = httpPutResponseHopLimit. Applied just
            // before the response and kept for the rest of the connection (retransmissions).
            set_hop_limit(fd, family, g_cfg.hop_limit);
            hop_applied = g_cfg.hop_limit;
        }
        bool sent = send_all(fd, serialize(resp, req.method == "HEAD", close_after));
        if (!g_cfg.quiet) {
            const char* tok = req.has("x-aws-ec2-metadata-token") ? " token=yes" : "";
            logf("%s %s %s -> %d%s%s%s hop_limit=%s%s", who.c_str(), sanitize(req.method, 16).c_str(),
                 sanitize(req.path).c_str(), resp.status, tok, resp.note.empty() ? "" : " (",
                 resp.note.empty() ? "" : (resp.note + ")").c_str(),
                 hop_applied ? std::to_string(hop_applied).c_str() : "default",
                 sent ? "" : " send-failed");
        }
        if (!sent) {
            close(fd);
            return;
        }
        if (close_after) {
            graceful_close(fd);
            return;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// listening

struct Listener {
    int fd = -1;
    std::string addr;
};

bool parse_addr(const std::string& spec, sockaddr_storage& ss, socklen_t& len) {
    std::string host = spec;
    int port = 80;
    if (!spec.empty() && spec[0] == '[') {
        size_t rb = spec.find(']');
        if (rb == std::string::npos) return false;
        host = spec.substr(1, rb - 1);
        if (rb + 1 < spec.size()) {
            if (spec[rb + 1] != ':') return false;
            auto p = parse_long(spec.substr(rb + 2));
            if (!p || *p < 1 || *p > 65535) return false;
            port = static_cast<int>(*p);
        }
    } else if (std::count(spec.begin(), spec.end(), ':') == 1) {
        size_t c = spec.find(':');
        host = spec.substr(0, c);
        auto p = parse_long(spec.substr(c + 1));
        if (!p || *p < 1 || *p > 65535) return false;
        port = static_cast<int>(*p);
    }
    memset(&ss, 0, sizeof ss);
    auto* s4 = reinterpret_cast<sockaddr_in*>(&ss);
    auto* s6 = reinterpret_cast<sockaddr_in6*>(&ss);
    if (inet_pton(AF_INET, host.c_str(), &s4->sin_addr) == 1) {
        s4->sin_family = AF_INET;
        s4->sin_port = htons(static_cast<uint16_t>(port));
        len = sizeof *s4;
        return true;
    }
    if (inet_pton(AF_INET6, host.c_str(), &s6->sin6_addr) == 1) {
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons(static_cast<uint16_t>(port));
        len = sizeof *s6;
        return true;
    }
    return false;
}

int open_listener(const std::string& spec) {
    sockaddr_storage ss{};
    socklen_t len = 0;
    if (!parse_addr(spec, ss, len)) {
        fprintf(stderr, "imds-emulator: bad --listen address '%s'\n", spec.c_str());
        return -1;
    }
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        fprintf(stderr, "imds-emulator: socket: %s\n", strerror(errno));
        return -1;
    }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (ss.ss_family == AF_INET6) {
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
        // tolerate addresses still in DAD (tentative) when we start
        setsockopt(fd, IPPROTO_IPV6, IPV6_FREEBIND, &one, sizeof one);
    } else {
        setsockopt(fd, IPPROTO_IP, IP_FREEBIND, &one, sizeof one);
    }
    if (bind(fd, reinterpret_cast<sockaddr*>(&ss), len) != 0) {
        fprintf(stderr, "imds-emulator: bind %s: %s\n", spec.c_str(), strerror(errno));
        close(fd);
        return -1;
    }
    if (listen(fd, 128) != 0) {
        fprintf(stderr, "imds-emulator: listen %s: %s\n", spec.c_str(), strerror(errno));
        close(fd);
        return -1;
    }
    return fd;
}

bool write_file_atomic(const std::string& path, const std::string& content) {
    std::string tmp = path + ".tmp";
    FILE* f = fopen(tmp.c_str(), "w");
    if (!f) return false;
    fputs(content.c_str(), f);
    if (fclose(f) != 0) return false;
    return rename(tmp.c_str(), path.c_str()) == 0;
}

void usage(FILE* out) {
    fprintf(out,
            "usage: imds-emulator [options]\n"
            "  --listen ADDR:PORT     listen address, repeatable; IPv6 as [ADDR]:PORT\n"
            "                         (default 169.254.169.254:80 and [fd00:ec2::254]:80)\n"
            "  --hop-limit N          IP TTL / hop limit of token PUT responses (default 1)\n"
            "  --tokens optional|required   httpTokens (default optional)\n"
            "  --endpoint enabled|disabled  httpEndpoint (default enabled; disabled = 403)\n"
            "  --rate-limit RPS       silently ignore requests above RPS (default 0 = off)\n"
            "  --pidfile FILE         write the PID\n"
            "  --ready-file FILE      written once all listeners are up\n"
            "  --idle-timeout S       keep-alive idle timeout (default 60)\n"
            "  --mac MAC --vpc-id ID --instance-id ID --region R --az AZ --role NAME\n"
            "  --quiet                no per-request log lines\n");
}

}  // namespace

int main(int argc, char** argv) {
    auto need = [&](int& i) -> std::string {
        if (i + 1 >= argc) {
            fprintf(stderr, "imds-emulator: %s needs a value\n", argv[i]);
            exit(2);
        }
        return argv[++i];
    };
    auto int_arg = [&](const std::string& v, const char* what, long lo, long hi) -> long {
        auto n = parse_long(v);
        if (!n || *n < lo || *n > hi) {
            fprintf(stderr, "imds-emulator: %s must be %ld..%ld\n", what, lo, hi);
            exit(2);
        }
        return *n;
    };
    for (int i = 1; i < argc; ++i) {
        std::string a = argv[i];
        if (a == "--listen") g_cfg.listen.push_back(need(i));
        else if (a == "--hop-limit") g_cfg.hop_limit = static_cast<int>(int_arg(need(i), "--hop-limit", 1, 255));
        else if (a == "--tokens") {
            std::string v = need(i);
            if (v != "optional" && v != "required") {
                fprintf(stderr, "imds-emulator: --tokens optional|required\n");
                return 2;
            }
            g_cfg.tokens_required = v == "required";
        } else if (a == "--endpoint") {
            std::string v = need(i);
            if (v != "enabled" && v != "disabled") {
                fprintf(stderr, "imds-emulator: --endpoint enabled|disabled\n");
                return 2;
            }
            g_cfg.endpoint_enabled = v == "enabled";
        } else if (a == "--rate-limit") {
            std::string v = need(i);
            char* end = nullptr;
            g_cfg.rate_limit = strtod(v.c_str(), &end);
            if (!end || *end || g_cfg.rate_limit < 0) {
                fprintf(stderr, "imds-emulator: --rate-limit must be a number >= 0\n");
                return 2;
            }
        } else if (a == "--pidfile") g_cfg.pidfile = need(i);
        else if (a == "--ready-file") g_cfg.ready_file = need(i);
        else if (a == "--idle-timeout") g_cfg.idle_timeout_s = static_cast<int>(int_arg(need(i), "--idle-timeout", 1, 86400));
        else if (a == "--mac") g_cfg.mac = need(i);
        else if (a == "--vpc-id") g_cfg.vpc_id = need(i);
        else if (a == "--instance-id") g_cfg.instance_id = need(i);
        else if (a == "--region") g_cfg.region = need(i);
        else if (a == "--az") g_cfg.az = need(i);
        else if (a == "--role") g_cfg.role = need(i);
        else if (a == "--quiet") g_cfg.quiet = true;
        else if (a == "-h" || a == "--help") {
            usage(stdout);
            return 0;
        } else {
            fprintf(stderr, "imds-emulator: unknown option '%s'\n", a.c_str());
            usage(stderr);
            return 2;
        }
    }
    if (g_cfg.listen.empty()) g_cfg.listen = {"169.254.169.254:80", "[fd00:ec2::254]:80"};
    build_tree();
    RateLimiter limiter(g_cfg.rate_limit);
    if (g_cfg.rate_limit > 0) g_limiter = &limiter;

    // Signals: handled synchronously via signalfd; worker threads inherit the blocked mask.
    signal(SIGPIPE, SIG_IGN);
    // A background job of a non-interactive shell starts with SIGINT ignored; undo that so
    // SIGINT reaches the signalfd and ends the emulator cleanly.
    signal(SIGINT, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGTERM);
    sigaddset(&mask, SIGINT);
    sigaddset(&mask, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &mask, nullptr);
    int sfd = signalfd(-1, &mask, SFD_CLOEXEC);
    if (sfd < 0) {
        fprintf(stderr, "imds-emulator: signalfd: %s\n", strerror(errno));
        return 1;
    }

    if (!g_cfg.pidfile.empty() && !write_file_atomic(g_cfg.pidfile, std::to_string(getpid()) + "\n")) {
        fprintf(stderr, "imds-emulator: cannot write pidfile %s: %s\n", g_cfg.pidfile.c_str(), strerror(errno));
        return 1;
    }

    std::vector<Listener> listeners;
    for (const auto& spec : g_cfg.listen) {
        int fd = open_listener(spec);
        if (fd < 0) {
            if (!g_cfg.pidfile.empty()) unlink(g_cfg.pidfile.c_str());
            return 1;
        }
        listeners.push_back({fd, spec});
    }
    std::string addrs;
    for (const auto& l : listeners) addrs += (addrs.empty() ? "" : " ") + l.addr;
    logf("listening on %s hop-limit=%d tokens=%s endpoint=%s rate-limit=%g", addrs.c_str(),
         g_cfg.hop_limit, g_cfg.tokens_required ? "required" : "optional",
         g_cfg.endpoint_enabled ? "enabled" : "disabled", g_cfg.rate_limit);
    if (!g_cfg.ready_file.empty() &&
        !write_file_atomic(g_cfg.ready_file, std::to_string(getpid()) + "\n" + addrs + "\n")) {
        fprintf(stderr, "imds-emulator: cannot write ready file %s: %s\n", g_cfg.ready_file.c_str(), strerror(errno));
        return 1;
    }

    std::vector<pollfd> pfds;
    pfds.push_back({sfd, POLLIN, 0});
    for (const auto& l : listeners) pfds.push_back({l.fd, POLLIN, 0});
    int exit_signal = 0;
    while (!exit_signal) {
        int n = poll(pfds.data(), pfds.size(), -1);
        if (n < 0) {
            if (errno == EINTR) continue;
            logf("poll: %s", strerror(errno));
            break;
        }
        if (pfds[0].revents & POLLIN) {
            signalfd_siginfo si{};
            if (read(sfd, &si, sizeof si) == static_cast<ssize_t>(sizeof si)) exit_signal = static_cast<int>(si.ssi_signo);
            break;
        }
        for (size_t i = 1; i < pfds.size(); ++i) {
            if (!(pfds[i].revents & POLLIN)) continue;
            sockaddr_storage peer{};
            socklen_t plen = sizeof peer;
            int cfd = accept4(pfds[i].fd, reinterpret_cast<sockaddr*>(&peer), &plen, SOCK_CLOEXEC);
            if (cfd < 0) continue;
            if (g_connections.load() >= kMaxConnections) {
                logf("%s connection refused: too many connections", peer_string(peer).c_str());
                close(cfd);
                continue;
            }
            g_connections.fetch_add(1);
            try {
                std::thread(serve_connection, cfd, peer).detach();
            } catch (const std::exception& e) {
                g_connections.fetch_sub(1);
                logf("cannot start thread: %s", e.what());
                close(cfd);
            }
        }
    }
    for (const auto& l : listeners) close(l.fd);
    if (!g_cfg.ready_file.empty()) unlink(g_cfg.ready_file.c_str());
    if (!g_cfg.pidfile.empty()) unlink(g_cfg.pidfile.c_str());
    logf("exiting (signal %d)", exit_signal);
    // Detached connection threads may still run; leave without static destructors.
    fflush(stderr);
    _exit(0);
}
