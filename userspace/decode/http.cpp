#include "decode/http.hpp"

#include <algorithm>
#include <array>
#include <cctype>
#include <optional>
#include <string_view>

namespace imdstrace {
namespace {

constexpr std::array<std::string_view, 7> kMethods = {"GET", "PUT", "POST", "HEAD", "DELETE", "OPTIONS", "PATCH"};
constexpr std::size_t kMaxPath = 512;

bool iequals(std::string_view a, std::string_view b) {
    return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
               return std::tolower(static_cast<unsigned char>(x)) == std::tolower(static_cast<unsigned char>(y));
           });
}

// Printable path characters only: the path is shown to people and logged.
std::string sanitize_path(std::string_view p) {
    std::string out;
    for (char c : p.substr(0, kMaxPath)) out.push_back(std::isprint(static_cast<unsigned char>(c)) ? c : '?');
    return out;
}

std::string_view trim(std::string_view s) {
    while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
    while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
    return s;
}

// The lines of a head whatever ends them: CRLF, a bare LF or a bare CR.
// Clients and proxies disagree, and a secret must not hide behind a line
// ending the redactor did not expect.
class HeadLines {
public:
    explicit HeadLines(std::string_view text) : text_(text) {}
    std::optional<std::string_view> next() {
        if (pos_ >= text_.size()) return std::nullopt;
        auto eol = text_.find_first_of("\r\n", pos_);
        terminated_ = eol != std::string_view::npos;
        auto line = text_.substr(pos_, terminated_ ? eol - pos_ : std::string_view::npos);
        if (!terminated_) pos_ = text_.size();
        else pos_ = eol + (text_.substr(eol, 2) == "\r\n" ? 2 : 1);
        return line;
    }
    bool terminated() const { return terminated_; }  // the last line ended within the bytes

private:
    std::string_view text_;
    std::size_t pos_ = 0;
    bool terminated_ = false;
};

// The request or status line with only what is known to be harmless:
// METHOD PATH HTTP/1.x, or HTTP/1.x STATUS REASON.  Anything else on it
// (a line that never ended, a smuggled header) is dropped.
std::string start_line(std::string_view line, bool request) {
    auto is_version = [](std::string_view v) { return v.size() == 8 && v.starts_with("HTTP/1.") && std::isdigit(static_cast<unsigned char>(v[7])); };
    if (request) {
        auto sp = line.find(' ');
        auto method = line.substr(0, sp);
        auto rest = sp == std::string_view::npos ? std::string_view() : line.substr(sp + 1);
        auto sp2 = rest.find(' ');
        std::string out = std::string(method) + " " + sanitize_path(rest.substr(0, sp2));
        if (sp2 != std::string_view::npos && is_version(rest.substr(sp2 + 1))) out += " " + std::string(rest.substr(sp2 + 1));
        return out + "\r\n";
    }
    return sanitize_path(line) + "\r\n";  // a status line ends at the first CR or LF: no header rides on it
}

}  // namespace

bool HttpRequest::is_token_request() const {
    return method == "PUT" && path.size() >= 10 && path.ends_with("/api/token");
}

std::optional<HttpRequest> parse_http_request(std::span<const std::uint8_t> bytes) {
    std::string_view text(reinterpret_cast<const char*>(bytes.data()), bytes.size());
    auto sp = text.find(' ');
    if (sp == std::string_view::npos) return std::nullopt;
    auto method = text.substr(0, sp);
    if (std::find(kMethods.begin(), kMethods.end(), method) == kMethods.end()) return std::nullopt;
    HttpRequest req;
    req.method = std::string(method);
    auto rest = text.substr(sp + 1);
    auto sp2 = rest.find_first_of(" \r\n");
    auto target = rest.substr(0, sp2);
    if (target.size() > 7 && (target.starts_with("http://") || target.starts_with("HTTP://"))) {
        auto authority = target.substr(7);
        auto slash = authority.find('/');
        req.absolute_authority = sanitize_path(authority.substr(0, slash));
        target = slash == std::string_view::npos ? std::string_view("/") : authority.substr(slash);
    }
    req.path = sanitize_path(target);
    HeadLines lines(text);
    lines.next();  // the request line
    while (auto line = lines.next()) {
        if (line->empty()) {
            req.headers_complete = true;
            break;
        }
        auto colon = line->find(':');
        if (colon == std::string_view::npos) continue;
        auto name = trim(line->substr(0, colon));
        if (iequals(name, "X-aws-ec2-metadata-token")) req.token = true;
        else if (iequals(name, "X-aws-ec2-metadata-token-ttl-seconds")) req.token_ttl = true;
        else if (iequals(name, "X-Forwarded-For")) req.forwarded_for = true;
    }
    req.head_cut = !req.headers_complete;
    return req;
}

std::optional<HttpResponse> parse_http_response(std::span<const std::uint8_t> bytes) {
    std::string_view text(reinterpret_cast<const char*>(bytes.data()), bytes.size());
    if (!text.starts_with("HTTP/1.") || text.size() < 12 || text[8] != ' ') return std::nullopt;
    int status = 0;
    for (int i = 9; i < 12; ++i) {
        if (!std::isdigit(static_cast<unsigned char>(text[i]))) return std::nullopt;
        status = status * 10 + (text[i] - '0');
    }
    return HttpResponse{status};
}

std::string redact_http_head(std::span<const std::uint8_t> bytes) {
    static constexpr std::array<std::string_view, 9> kKeep = {
        "Host", "User-Agent", "Content-Length", "Content-Type", "Connection", "Server", "Date",
        "X-aws-ec2-metadata-token-ttl-seconds", "Accept"};
    std::string_view text(reinterpret_cast<const char*>(bytes.data()), bytes.size());
    const bool request = parse_http_request(bytes).has_value();
    if (!request && !parse_http_response(bytes)) return {};
    HeadLines lines(text);
    std::string out = start_line(*lines.next(), request);
    while (auto line = lines.next()) {
        if (line->empty()) {
            out += "\r\n";  // end of head; the body is never kept
            break;
        }
        auto colon = line->find(':');
        // A line without a colon, or a name cut off by the copy limit: nothing of it is kept.
        if (colon == std::string_view::npos) continue;
        auto name = line->substr(0, colon);
        // A value is kept only when the line ended within the copy: a cut-off
        // line may be anything, and is judged by its name alone.
        bool keep = lines.terminated() &&
                    std::any_of(kKeep.begin(), kKeep.end(), [&](std::string_view k) { return iequals(k, trim(name)); });
        out += sanitize_path(name) + ":" + (keep ? sanitize_path(line->substr(colon + 1)) : std::string(" REDACTED")) +
               "\r\n";
    }
    return out;
}

}  // namespace imdstrace
