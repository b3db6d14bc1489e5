// The request heads aws-sdk-go-v2's IMDS client (feature/ec2/imds, what
// aws-load-balancer-controller uses) really sends, recorded byte for byte by
// tests/testbed/sdk_client/capture.sh from Debian's aws-sdk-go-v2 1.17.1
// (go 1.19): the GET head is 297 bytes, longer than the 256 bytes the BPF
// programs used to copy.  tests/e2e/hostile.sh sdk runs the same client
// through the tracer.
#include <gtest/gtest.h>

#include <string>
#include <string_view>

#include "decode/http.hpp"
#include "imdstrace.h"
#include "sinks/json.hpp"
#include "verdict/verdict.hpp"

using namespace imdstrace;

namespace {

constexpr std::string_view kRecordedToken = "AQAEAFakeSdkT0ken_recorded_by_capture.sh==";

// GET /latest/meta-data/instance-id, as sent after the token PUT.
const std::string kSdkGet =
    "GET /latest/meta-data/instance-id HTTP/1.1\r\n"
    "Host: 169.254.169.254\r\n"
    "User-Agent: aws-sdk-go-v2/1.17.1 os/linux lang/go/1.19.8 md/GOOS/linux md/GOARCH/amd64 ft/ec2-imds\r\n"
    "Amz-Sdk-Request: attempt=1; max=3\r\n"
    "X-Aws-Ec2-Metadata-Token: AQAEAFakeSdkT0ken_recorded_by_capture.sh==\r\n"
    "Accept-Encoding: gzip\r\n"
    "\r\n";

// The token PUT before it.
const std::string kSdkPut =
    "PUT /latest/api/token HTTP/1.1\r\n"
    "Host: 169.254.169.254\r\n"
    "User-Agent: aws-sdk-go-v2/1.17.1 os/linux lang/go/1.19.8 md/GOOS/linux md/GOARCH/amd64 ft/ec2-imds\r\n"
    "Content-Length: 0\r\n"
    "Amz-Sdk-Request: attempt=2; max=3\r\n"
    "X-Aws-Ec2-Metadata-Token-Ttl-Seconds: 300\r\n"
    "Accept-Encoding: gzip\r\n"
    "\r\n";

// What the BPF programs hand over: the first IMDS_PAYLOAD_MAX bytes.
std::span<const std::uint8_t> copied(const std::string& head) {
    return {reinterpret_cast<const std::uint8_t*>(head.data()), std::min<std::size_t>(head.size(), IMDS_PAYLOAD_MAX)};
}

TEST(SdkRequest, RecordedBytesAreTheSdks) {
    EXPECT_EQ(kSdkGet.size(), 297u);
    EXPECT_EQ(kSdkGet.find("X-Aws-Ec2-Metadata-Token: "), 202u);
    EXPECT_NE(kSdkGet.find("ft/ec2-imds"), std::string::npos);
}

TEST(SdkRequest, WholeGetHeadIsCopiedAndItsTokenSeen) {
    auto r = parse_http_request(copied(kSdkGet));
    ASSERT_TRUE(r);
    EXPECT_EQ(r->method, "GET");
    EXPECT_EQ(r->path, "/latest/meta-data/instance-id");
    EXPECT_TRUE(r->headers_complete) << "the 297-byte head fits the copy";
    EXPECT_TRUE(r->token);
    EXPECT_FALSE(r->token_unknown());
    auto redacted = redact_http_head(copied(kSdkGet));
    EXPECT_EQ(redacted.find(kRecordedToken.substr(0, 12)), std::string::npos) << redacted;
    EXPECT_NE(redacted.find("X-Aws-Ec2-Metadata-Token: REDACTED"), std::string::npos) << redacted;
}

TEST(SdkRequest, TokenPutIsATokenRequestWithTtl) {
    auto r = parse_http_request(copied(kSdkPut));
    ASSERT_TRUE(r);
    EXPECT_TRUE(r->is_token_request());
    EXPECT_TRUE(r->token_ttl);
    EXPECT_FALSE(r->token);
    EXPECT_TRUE(r->headers_complete);
}

// Newer SDK releases send a longer User-Agent ("... ua/2.0 ... api/ec2imds#1.16.x m/..."),
// which puts the token header at bytes 238-262: the recorded head with such a
// User-Agent must still be judged whole.
TEST(SdkRequest, NewerSdkUserAgentStillFits) {
    std::string get = kSdkGet;
    const std::string ua = "aws-sdk-go-v2/1.17.1 os/linux lang/go/1.19.8 md/GOOS/linux md/GOARCH/amd64 ft/ec2-imds";
    get.replace(get.find(ua), ua.size(), ua + std::string(238 - 202, 'x'));
    ASSERT_EQ(get.find("X-Aws-Ec2-Metadata-Token: "), 238u);
    auto r = parse_http_request(copied(get));
    ASSERT_TRUE(r);
    EXPECT_TRUE(r->token) << "a 256-byte copy ended inside the header name: token false, TOKEN_REQUIRED";
    EXPECT_TRUE(r->headers_complete);
}

// A head longer than the copy: the token header is unknown, not absent,
// and a 401 says so instead of claiming IMDSv1.
TEST(SdkRequest, HeadLongerThanTheCopyLeavesTheTokenUnknown) {
    std::string get = kSdkGet;
    get.insert(get.find("X-Aws-Ec2-Metadata-Token"), "X-Padding: " + std::string(IMDS_PAYLOAD_MAX, 'p') + "\r\n");
    auto r = parse_http_request(copied(get));
    ASSERT_TRUE(r);
    EXPECT_FALSE(r->token);
    EXPECT_TRUE(r->token_unknown());
    Transaction t;
    t.request = *r;
    t.response = HttpResponse{401};
    t.delivered = true;
    auto c = classify(t, "169.254.169.254:80");
    EXPECT_NE(c.evidence.find("token header unknown"), std::string::npos) << c.evidence;
    EXPECT_EQ(c.evidence.find("without token header"), std::string::npos) << c.evidence;
}

}  // namespace
