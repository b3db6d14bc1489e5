#include "decode/http.hpp"

#include <algorithm>
#include <array>
#include <cctype>
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
    req.path = sanitize_path(rest.substr(0, sp2));
    auto eol = text.find("\r\n");
    while (eol != std::string_view::npos) {
        auto start = eol + 2;
        auto next = text.find("\r\n", start);
        auto line = text.substr(start, next == std::string_view::npos ? std::string_view::npos : next - start);
        if (next != std::string_view::npos && line.empty()) {
            req.headers_complete = true;
            break;
        }
        auto colon = line.find(':');
        if (colon != std::string_view::npos) {
            auto name = line.substr(0, colon);
            if (iequals(name, "X-aws-ec2-metadata-token")) req.token = true;
            else if (iequals(name, "X-aws-ec2-metadata-token-ttl-seconds")) req.token_ttl = true;
            else if (iequals(name, "X-Forwarded-For")) req.forwarded_for = true;
        }
        eol = next;
    }
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
    if (!parse_http_request(bytes) && !parse_http_response(bytes)) return {};
    std::string out;
    std::size_t pos = 0;
    bool first = true;
    while (pos < text.size()) {
        auto eol = text.find("\r\n", pos);
        if (eol == std::string_view::npos) {
            // A head cut by the copy limit: keep only a complete-looking name.
            auto line = text.substr(pos);
            if (first) out += sanitize_path(line);
            else if (auto c = line.find(':'); c != std::string_view::npos)
                out += sanitize_path(line.substr(0, c)) + ": REDACTED\r\n";
            break;
        }
        auto line = text.substr(pos, eol - pos);
        pos = eol + 2;
        if (line.empty()) {
            out += "\r\n";  // end of head; the body is never kept
            break;
        }
        if (first) {
            out += sanitize_path(line) + "\r\n";
            first = false;
            continue;
        }
        auto colon = line.find(':');
        if (colon == std::string_view::npos) continue;
        auto name = line.substr(0, colon);
        bool keep = std::any_of(kKeep.begin(), kKeep.end(), [&](std::string_view k) { return iequals(k, name); });
        out += sanitize_path(name) + ":" + (keep ? sanitize_path(line.substr(colon + 1)) : std::string(" REDACTED")) +
               "\r\n";
    }
    return out;
}

}  // namespace imdstrace
