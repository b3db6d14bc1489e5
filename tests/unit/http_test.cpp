// HTTP heads as the BPF programs copy them (the first payload bytes), and the
// promise that token values never leave the decoder.
#include <gtest/gtest.h>

#include <string>
#include <string_view>
#include <vector>

#include "decode/http.hpp"

using namespace imdstrace;

namespace {

std::span<const std::uint8_t> bytes(std::string_view s) {
    return {reinterpret_cast<const std::uint8_t*>(s.data()), s.size()};
}

constexpr std::string_view kToken = "AQAEAFakeT0kenValue_zz9XyWq1bM3r7QeKd2ZkLhJ5cQ==";

// No string field of the parsed request contains the secret.
void expect_no_secret(const HttpRequest& r, std::string_view secret) {
    EXPECT_EQ(r.method.find(secret), std::string::npos);
    EXPECT_EQ(r.path.find(secret), std::string::npos);
    // Not even a recognisable piece of it.
    EXPECT_EQ(r.method.find(secret.substr(0, 8)), std::string::npos);
    EXPECT_EQ(r.path.find(secret.substr(0, 8)), std::string::npos);
}

TEST(HttpRequest, TokenPutWithTtlHeader) {
    auto r = parse_http_request(bytes("PUT /latest/api/token HTTP/1.1\r\n"
                                      "Host: 169.254.169.254\r\n"
                                      "User-Agent: aws-sdk-go-v2/1.30.3\r\n"
                                      "X-aws-ec2-metadata-token-ttl-seconds: 21600\r\n"
                                      "Content-Length: 0\r\n\r\n"));
    ASSERT_TRUE(r);
    EXPECT_EQ(r->method, "PUT");
    EXPECT_EQ(r->path, "/latest/api/token");
    EXPECT_TRUE(r->token_ttl);
    EXPECT_FALSE(r->token);
    EXPECT_FALSE(r->forwarded_for);
    EXPECT_TRUE(r->headers_complete);
    EXPECT_TRUE(r->is_token_request());
}

// What a client sends to an HTTP proxy (HTTP_PROXY set, no NO_PROXY for the
// metadata address): the absolute form, RFC 9112 3.2.2.
TEST(HttpRequest, AbsoluteUriToAProxy) {
    auto r = parse_http_request(bytes("PUT http://169.254.169.254/latest/api/token HTTP/1.1\r\n"
                                      "Host: 169.254.169.254\r\n"
                                      "X-aws-ec2-metadata-token-ttl-seconds: 21600\r\n\r\n"));
    ASSERT_TRUE(r);
    EXPECT_EQ(r->path, "/latest/api/token");
    EXPECT_EQ(r->absolute_authority, "169.254.169.254");
    EXPECT_TRUE(r->is_token_request());

    auto v6 = parse_http_request(bytes("GET http://[fd00:ec2::254]:80 HTTP/1.1\r\n\r\n"));
    ASSERT_TRUE(v6);
    EXPECT_EQ(v6->path, "/");
    EXPECT_EQ(v6->absolute_authority, "[fd00:ec2::254]:80");

    auto origin = parse_http_request(bytes("GET /latest/meta-data/ HTTP/1.1\r\n\r\n"));
    ASSERT_TRUE(origin);
    EXPECT_TRUE(origin->absolute_authority.empty());
}

TEST(HttpRequest, TokenPutWithoutTtlHeader) {
    auto r = parse_http_request(bytes("PUT /latest/api/token HTTP/1.1\r\nHost: 169.254.169.254\r\n\r\n"));
    ASSERT_TRUE(r);
    EXPECT_TRUE(r->is_token_request());
    EXPECT_FALSE(r->token_ttl);
    EXPECT_TRUE(r->headers_complete);
}

TEST(HttpRequest, GetWithTokenHeaderDropsTheValue) {
    std::string head = "GET /latest/meta-data/iam/security-credentials/node-role HTTP/1.1\r\n"
                       "Host: 169.254.169.254\r\n"
                       "X-aws-ec2-metadata-token: " + std::string(kToken) + "\r\n"
                       "Accept: */*\r\n\r\n";
    auto r = parse_http_request(bytes(head));
    ASSERT_TRUE(r);
    EXPECT_EQ(r->method, "GET");
    EXPECT_EQ(r->path, "/latest/meta-data/iam/security-credentials/node-role");
    EXPECT_TRUE(r->token);
    EXPECT_FALSE(r->token_ttl);
    EXPECT_FALSE(r->is_token_request());
    EXPECT_TRUE(r->headers_complete);
    expect_no_secret(*r, kToken);
}

TEST(HttpRequest, ForwardedFor) {
    auto r = parse_http_request(bytes("PUT /latest/api/token HTTP/1.1\r\n"
                                      "X-Forwarded-For: 10.0.0.7\r\n"
                                      "X-aws-ec2-metadata-token-ttl-seconds: 60\r\n\r\n"));
    ASSERT_TRUE(r);
    EXPECT_TRUE(r->forwarded_for);
    EXPECT_TRUE(r->token_ttl);
}

TEST(HttpRequest, LowercaseHeaderNames) {
    std::string head = "GET /latest/meta-data/mac HTTP/1.1\r\n"
                       "host: 169.254.169.254\r\n"
                       "x-aws-ec2-metadata-token: " + std::string(kToken) + "\r\n"
                       "x-forwarded-for: 1.2.3.4\r\n"
                       "X-AWS-EC2-METADATA-TOKEN-TTL-SECONDS: 5\r\n\r\n";
    auto r = parse_http_request(bytes(head));
    ASSERT_TRUE(r);
    EXPECT_TRUE(r->token);
    EXPECT_TRUE(r->forwarded_for);
    EXPECT_TRUE(r->token_ttl);
    expect_no_secret(*r, kToken);
}

TEST(HttpRequest, TruncatedInsideTokenValue) {
    // The BPF copy ends (256 bytes) in the middle of the token value.
    std::string head = "GET /latest/meta-data/instance-id HTTP/1.1\r\n"
                       "X-aws-ec2-metadata-token: " + std::string(kToken.substr(0, 20));
    auto r = parse_http_request(bytes(head));
    ASSERT_TRUE(r);
    EXPECT_TRUE(r->token);
    EXPECT_FALSE(r->headers_complete);
    expect_no_secret(*r, kToken.substr(0, 20));
}

TEST(HttpRequest, TruncatedInsideHeaderName) {
    auto r = parse_http_request(bytes("GET /latest/meta-data/mac HTTP/1.1\r\nHost: x\r\nX-aws-ec2-meta"));
    ASSERT_TRUE(r);
    EXPECT_FALSE(r->token);
    EXPECT_FALSE(r->headers_complete);
    EXPECT_EQ(r->path, "/latest/meta-data/mac");
}

TEST(HttpRequest, TruncatedRequestLine) {
    auto r = parse_http_request(bytes("GET /latest/meta"));
    ASSERT_TRUE(r);
    EXPECT_EQ(r->method, "GET");
    EXPECT_EQ(r->path, "/latest/meta");
    EXPECT_FALSE(r->headers_complete);

    auto bare = parse_http_request(bytes("PUT "));
    ASSERT_TRUE(bare);
    EXPECT_EQ(bare->path, "");
    EXPECT_FALSE(bare->is_token_request());
}

TEST(HttpRequest, BodyIsNotHeaders) {
    std::string text = "PUT /latest/api/token HTTP/1.1\r\nContent-Length: 60\r\n\r\n"
                       "X-aws-ec2-metadata-token: " + std::string(kToken) + "\r\n";
    auto r = parse_http_request(bytes(text));
    ASSERT_TRUE(r);
    EXPECT_TRUE(r->headers_complete);
    EXPECT_FALSE(r->token);
    expect_no_secret(*r, kToken);
}

TEST(HttpRequest, NonPrintablePathIsSanitised) {
    std::string text = std::string("GET /a\x01" "b\x7f" "c\x1b[31m HTTP/1.1\r\n\r\n");
    auto r = parse_http_request(bytes(text));
    ASSERT_TRUE(r);
    EXPECT_EQ(r->path, "/a?b?c?[31m");
    for (char c : r->path) EXPECT_TRUE(std::isprint(static_cast<unsigned char>(c)));

    std::string high = "GET /\xff\xfe HTTP/1.1\r\n\r\n";
    auto h = parse_http_request(bytes(high));
    ASSERT_TRUE(h);
    EXPECT_EQ(h->path, "/??");
}

TEST(HttpRequest, LongPathIsBounded) {
    std::string text = "GET /" + std::string(4096, 'a') + " HTTP/1.1\r\n\r\n";
    auto r = parse_http_request(bytes(text));
    ASSERT_TRUE(r);
    EXPECT_GE(r->path.size(), 256u) << "at least what the BPF copy can hold";
    EXPECT_LE(r->path.size(), 1024u) << "bounded";
    EXPECT_EQ(r->path.find_first_not_of("/a"), std::string::npos);
}

TEST(HttpRequest, Garbage) {
    EXPECT_FALSE(parse_http_request(bytes("")));
    EXPECT_FALSE(parse_http_request(bytes("GET")));
    EXPECT_FALSE(parse_http_request(bytes("get / HTTP/1.1\r\n\r\n")));  // methods are case-sensitive
    EXPECT_FALSE(parse_http_request(bytes("FOO / HTTP/1.1\r\n\r\n")));
    EXPECT_FALSE(parse_http_request(bytes(" GET / HTTP/1.1\r\n\r\n")));
    EXPECT_FALSE(parse_http_request(bytes("HTTP/1.1 200 OK\r\n\r\n")));
    const std::vector<std::uint8_t> tls = {0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03, 0x20};
    EXPECT_FALSE(parse_http_request(tls));
    const std::vector<std::uint8_t> zeros(64, 0);
    EXPECT_FALSE(parse_http_request(zeros));
}

TEST(HttpRequest, EveryKnownMethod) {
    for (std::string m : {"GET", "PUT", "POST", "HEAD", "DELETE", "OPTIONS", "PATCH"}) {
        auto r = parse_http_request(bytes(m + " /latest HTTP/1.1\r\n\r\n"));
        ASSERT_TRUE(r) << m;
        EXPECT_EQ(r->method, m);
    }
}

TEST(HttpRequest, TokenRequestNeedsPutAndPath) {
    HttpRequest r;
    r.method = "GET";
    r.path = "/latest/api/token";
    EXPECT_FALSE(r.is_token_request());
    r.method = "PUT";
    EXPECT_TRUE(r.is_token_request());
    r.path = "/2021-03-23/api/token";  // versioned token path (IMDS answers 403), still a token request
    EXPECT_TRUE(r.is_token_request());
    r.path = "/latest/meta-data/";
    EXPECT_FALSE(r.is_token_request());
}

TEST(HttpResponse, StatusLines) {
    struct Case {
        std::string_view text;
        int status;
    } cases[] = {
        {"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 56\r\n\r\nAQAEA...", 200},
        {"HTTP/1.1 401 Unauthorized\r\n\r\n", 401},
        {"HTTP/1.0 403 Forbidden\r\n", 403},
        {"HTTP/1.1 400 Bad Request", 400},
        {"HTTP/1.1 404 Not Found\r\n", 404},
        {"HTTP/1.1 503 Service Unavailable\r\n", 503},
        {"HTTP/1.1 200", 200},  // cut right after the code
    };
    for (const auto& c : cases) {
        auto r = parse_http_response(bytes(c.text));
        ASSERT_TRUE(r) << c.text;
        EXPECT_EQ(r->status, c.status) << c.text;
    }
}

TEST(HttpResponse, Garbage) {
    for (std::string_view g : {"", "HTTP/1.1", "HTTP/1.1 20", "HTTP/1.1 2x0 OK", "HTTP/1.1  200 OK", "HTTP/2 200 OK",
                               "http/1.1 200 OK", "GET / HTTP/1.1\r\n", "HTTP/1.1-200 OK"}) {
        EXPECT_FALSE(parse_http_response(bytes(g))) << g;
    }
    const std::vector<std::uint8_t> zeros(64, 0);
    EXPECT_FALSE(parse_http_response(zeros));
}

// Heads written to evidence files (pcap, debug): header names stay, values
// go unless harmless, bodies never appear.
TEST(RedactHttpHead, RequestKeepsNamesNotTokenValues) {
    std::string head = "GET /latest/meta-data/iam/security-credentials/node-role HTTP/1.1\r\n"
                       "Host: 169.254.169.254\r\n"
                       "x-aws-ec2-metadata-token: " + std::string(kToken) + "\r\n"
                       "Authorization: Bearer " + std::string(kToken) + "\r\n"
                       "Cookie: s=" + std::string(kToken) + "\r\n\r\n";
    auto out = redact_http_head(bytes(head));
    EXPECT_EQ(out.find(kToken.substr(0, 8)), std::string::npos) << out;
    EXPECT_NE(out.find("GET /latest/meta-data/iam/security-credentials/node-role HTTP/1.1"), std::string::npos) << out;
    EXPECT_NE(out.find("x-aws-ec2-metadata-token"), std::string::npos) << out;
    EXPECT_NE(out.find("169.254.169.254"), std::string::npos) << "Host is harmless: " << out;
}

TEST(RedactHttpHead, TokenPutKeepsTheTtl) {
    auto out = redact_http_head(bytes("PUT /latest/api/token HTTP/1.1\r\n"
                                      "X-aws-ec2-metadata-token-ttl-seconds: 21600\r\n\r\n"));
    EXPECT_NE(out.find("21600"), std::string::npos) << out;
}

TEST(RedactHttpHead, ResponseBodyNeverKept) {
    std::string resp = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 56\r\n"
                       "X-Aws-Ec2-Metadata-Token-Ttl-Seconds: 21600\r\n\r\n" + std::string(kToken);
    auto out = redact_http_head(bytes(resp));
    EXPECT_NE(out.find("HTTP/1.1 200 OK"), std::string::npos) << out;
    EXPECT_EQ(out.find(kToken.substr(0, 8)), std::string::npos) << out;
    // Credentials JSON in a body segment of its own: nothing is kept.
    std::string body = R"({"Code":"Success","AccessKeyId":"ASIAFAKE","SecretAccessKey":")" + std::string(kToken) + "\"}";
    EXPECT_EQ(redact_http_head(bytes(body)), "");
}

TEST(RedactHttpHead, CutInsideTheTokenValue) {
    std::string head = "GET /latest/meta-data/mac HTTP/1.1\r\nX-aws-ec2-metadata-token: " +
                       std::string(kToken.substr(0, 20));
    auto out = redact_http_head(bytes(head));
    EXPECT_EQ(out.find(kToken.substr(0, 8)), std::string::npos) << out;
    EXPECT_NE(out.find("X-aws-ec2-metadata-token"), std::string::npos) << out;
}

TEST(RedactHttpHead, NotHttpIsEmpty) {
    EXPECT_EQ(redact_http_head(bytes("")), "");
    EXPECT_EQ(redact_http_head(bytes(kToken)), "");
    const std::vector<std::uint8_t> tls = {0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03, 0x20};
    EXPECT_EQ(redact_http_head(tls), "");
}

}  // namespace
