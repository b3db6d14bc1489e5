// HTTP request/response heads decoded from the first payload bytes.
//
// Secrets never leave this decoder: IMDS carries tokens and credentials, so
// only the request line, the presence of a few header names and the status
// line are kept.  Header values and bodies are not stored anywhere.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>

namespace imdstrace {

struct HttpRequest {
    std::string method;  // "PUT", "GET", ...
    std::string path;    // "/latest/api/token"
    // The authority of an absolute-URI request target (RFC 9112 3.2.2), what
    // a client sends to an HTTP proxy: "169.254.169.254" for
    // "GET http://169.254.169.254/latest/...", "[fd00:ec2::254]:80"; empty
    // for the origin form ("GET /latest/...") a client sends to IMDS itself.
    // `path` holds the path part either way.
    std::string absolute_authority;
    bool token = false;            // X-aws-ec2-metadata-token present (value dropped)
    bool token_ttl = false;        // X-aws-ec2-metadata-token-ttl-seconds present
    bool forwarded_for = false;    // X-Forwarded-For present
    bool headers_complete = false; // the blank line ending the head was in the copied bytes
    // The copy ended before the blank line (a head longer than the BPF copy,
    // or split across segments): a header not seen may still have been sent.
    bool head_cut = false;

    // Whether the token header was sent is unknown: not seen, head cut off.
    bool token_unknown() const { return !token && head_cut; }

    bool is_token_request() const;  // PUT .../api/token
};

struct HttpResponse {
    int status = 0;  // 200, 401, ...
};

// Parse a request head; nullopt when the bytes do not start with a method.
std::optional<HttpRequest> parse_http_request(std::span<const std::uint8_t> bytes);
// Parse a status line ("HTTP/1.1 200 OK"); nullopt otherwise.
std::optional<HttpResponse> parse_http_response(std::span<const std::uint8_t> bytes);

// The head of an HTTP message fit to be written to evidence files: the
// request or status line, then each header NAME with its value kept only
// for a short allow-list of harmless headers (Host, Content-Length, the
// token TTL, ...) and "REDACTED" otherwise; the body is dropped.  Empty when
// the bytes are not an HTTP head (a body segment: nothing of it is kept).
std::string redact_http_head(std::span<const std::uint8_t> bytes);

}  // namespace imdstrace
