// decode_event on records laid out exactly as the BPF programs write them.
#include <arpa/inet.h>
#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

#include "decode/observation.hpp"
#include "imdstrace.h"

using namespace imdstrace;

namespace {

constexpr std::string_view kToken = "AQAEAFakeT0kenValue_zz9XyWq1bM3r7QeKd2ZkLhJ5cQ==";

struct EventBuilder {
    imds_event e{};
    std::string tail;  // the payload tail that follows the header on the ring

    EventBuilder(imds_hook hook, imds_direction dir) {
        e.hook = hook;
        e.direction = dir;
        e.family = IMDS_AF_INET;
        e.ip_proto = 6;
    }
    EventBuilder& src(const char* addr, std::uint16_t port) { return set(e.saddr, &e.sport, addr, port); }
    EventBuilder& dst(const char* addr, std::uint16_t port) { return set(e.daddr, &e.dport, addr, port); }
    EventBuilder& payload(std::string_view p, std::uint32_t len = 0) {
        std::size_t n = std::min<std::size_t>(p.size(), IMDS_PAYLOAD_MAX);
        tail.assign(p.substr(0, n));
        e.copied = static_cast<std::uint16_t>(n);
        e.payload_len = len ? len : static_cast<std::uint32_t>(p.size());
        return *this;
    }
    std::vector<std::uint8_t> bytes() const {
        // Header, then exactly the copied bytes: the record as the ring holds it.
        std::vector<std::uint8_t> b(sizeof(e) + tail.size());
        std::memcpy(b.data(), &e, sizeof(e));
        std::memcpy(b.data() + sizeof(e), tail.data(), tail.size());
        return b;
    }

private:
    EventBuilder& set(std::uint8_t* a, std::uint16_t* p, const char* text, std::uint16_t port) {
        std::memset(a, 0, 16);
        if (inet_pton(AF_INET, text, a) == 1) {
            e.family = IMDS_AF_INET;
        } else {
            EXPECT_EQ(inet_pton(AF_INET6, text, a), 1) << text;
            e.family = IMDS_AF_INET6;
        }
        *p = htons(port);
        return *this;
    }
};

Endpoint ep(const char* text) { return *Endpoint::parse(text, 0); }

TEST(DecodeEvent, V4RequestAtCgroupEgress) {
    EventBuilder b(IMDS_HOOK_CGROUP_EGRESS, IMDS_DIR_TO_TARGET);
    b.src("198.18.1.5", 43122).dst("169.254.169.254", 80);
    b.e.ts_ns = 123456789;
    b.e.ttl = 64;
    b.e.tcp_flags = 0x18;
    b.e.seq = 1001;
    b.e.ack_seq = 5001;
    b.e.ip_id = 0x1234;
    b.e.cgroup_id = 4242;
    b.e.sk_cookie = 77;
    b.e.ifindex = 3;
    b.e.netns = 4026531840u;
    b.e.flags = IMDS_F_SK_PRESENT;
    b.e.target_index = 0;
    b.payload("PUT /latest/api/token HTTP/1.1\r\nX-aws-ec2-metadata-token-ttl-seconds: 21600\r\n\r\n");

    auto o = decode_event(b.bytes());
    ASSERT_TRUE(o);
    EXPECT_EQ(o->ts_ns, 123456789u);
    EXPECT_EQ(o->hook, Hook::cgroup_egress);
    EXPECT_EQ(o->direction, Direction::to_target);
    EXPECT_EQ(o->flow.client, ep("198.18.1.5:43122"));
    EXPECT_EQ(o->flow.server, ep("169.254.169.254:80"));
    EXPECT_EQ(o->ttl, 64);
    EXPECT_EQ(o->tcp_flags, 0x18);
    EXPECT_EQ(o->seq, 1001u);
    EXPECT_EQ(o->ack, 5001u);
    EXPECT_EQ(o->ip_id, 0x1234);
    EXPECT_EQ(o->cgroup_id, 4242u);
    EXPECT_EQ(o->sk_cookie, 77u);
    EXPECT_EQ(o->ifindex, 3u);
    EXPECT_EQ(o->netns, 4026531840u);
    EXPECT_TRUE(o->has_socket);
    EXPECT_FALSE(o->drop_reason);
    ASSERT_TRUE(o->request);
    EXPECT_EQ(o->request->method, "PUT");
    EXPECT_TRUE(o->request->is_token_request());
    EXPECT_TRUE(o->request->token_ttl);
    EXPECT_FALSE(o->response);
    EXPECT_FALSE(o->is_syn());
    EXPECT_FALSE(o->is_time_exceeded());
}

TEST(DecodeEvent, V4ResponseFromTargetIsOrientedToTheClient) {
    EventBuilder b(IMDS_HOOK_UPLINK_INGRESS, IMDS_DIR_FROM_TARGET);
    b.src("169.254.169.254", 80).dst("198.18.0.2", 61000);
    b.e.ttl = 1;
    b.e.tcp_flags = 0x18;
    b.payload("HTTP/1.1 200 OK\r\nContent-Length: 56\r\n\r\n" + std::string(kToken));

    auto o = decode_event(b.bytes());
    ASSERT_TRUE(o);
    EXPECT_EQ(o->hook, Hook::uplink_ingress);
    EXPECT_EQ(o->direction, Direction::from_target);
    EXPECT_EQ(o->flow.client, ep("198.18.0.2:61000"));
    EXPECT_EQ(o->flow.server, ep("169.254.169.254:80"));
    EXPECT_EQ(o->ttl, 1);
    EXPECT_FALSE(o->has_socket);
    ASSERT_TRUE(o->response);
    EXPECT_EQ(o->response->status, 200);
    EXPECT_FALSE(o->request);
}

TEST(DecodeEvent, V6BothDirections) {
    EventBuilder out(IMDS_HOOK_UPLINK_EGRESS, IMDS_DIR_TO_TARGET);
    out.src("fd00:198:18::5", 50000).dst("fd00:ec2::254", 80);
    out.e.tcp_flags = 0x02;
    out.e.seq = 99;
    out.e.ttl = 63;
    out.e.target_index = 1;
    auto o = decode_event(out.bytes());
    ASSERT_TRUE(o);
    EXPECT_EQ(o->flow.client, ep("[fd00:198:18::5]:50000"));
    EXPECT_EQ(o->flow.server, ep("[fd00:ec2::254]:80"));
    EXPECT_FALSE(o->flow.client.addr.is_v4());
    EXPECT_TRUE(o->is_syn());
    EXPECT_EQ(o->target_index, 1);

    EventBuilder in(IMDS_HOOK_CGROUP_INGRESS, IMDS_DIR_FROM_TARGET);
    in.src("fd00:ec2::254", 80).dst("fd00:198:18::5", 50000);
    in.e.tcp_flags = 0x12;
    in.e.ack_seq = 100;
    auto i = decode_event(in.bytes());
    ASSERT_TRUE(i);
    EXPECT_EQ(i->flow, o->flow);
    EXPECT_TRUE(i->is_synack());
    EXPECT_FALSE(i->is_syn());
}

TEST(DecodeEvent, IcmpQuoteIsOrientedAndNotParsedAsHttp) {
    // Time exceeded leaving the uplink, quoting the response from IMDS.
    EventBuilder b(IMDS_HOOK_UPLINK_EGRESS, IMDS_DIR_ICMP_ABOUT);
    b.src("169.254.169.254", 80).dst("198.18.1.5", 43122);
    b.e.ip_proto = 1;
    b.e.icmp_type = 11;
    b.e.flags = IMDS_F_ICMP_QUOTE;
    b.e.seq = 5001;
    b.payload("HTTP/1.1 200 OK\r\n");  // bytes the program never copies for quotes; ignored anyway
    auto o = decode_event(b.bytes());
    ASSERT_TRUE(o);
    EXPECT_EQ(o->direction, Direction::icmp_about);
    EXPECT_EQ(o->flow.client, ep("198.18.1.5:43122"));
    EXPECT_EQ(o->flow.server, ep("169.254.169.254:80"));
    EXPECT_TRUE(o->is_time_exceeded());
    EXPECT_FALSE(o->response);
    EXPECT_FALSE(o->request);

    b.e.icmp_type = 3;  // destination unreachable (v4): not time exceeded
    EXPECT_FALSE(decode_event(b.bytes())->is_time_exceeded());

    EventBuilder v6(IMDS_HOOK_UPLINK_EGRESS, IMDS_DIR_ICMP_ABOUT);
    v6.src("fd00:ec2::254", 80).dst("fd00:198:18::5", 50000);
    v6.e.icmp_type = 3;  // ICMPv6 time exceeded
    EXPECT_TRUE(decode_event(v6.bytes())->is_time_exceeded());
    v6.e.icmp_type = 1;  // ICMPv6 unreachable
    EXPECT_FALSE(decode_event(v6.bytes())->is_time_exceeded());
}

TEST(DecodeEvent, DropWithAndWithoutReason) {
    EventBuilder b(IMDS_HOOK_DROP, IMDS_DIR_FROM_TARGET);
    b.src("169.254.169.254", 80).dst("198.18.1.5", 43122);
    b.e.drop_reason = 5;
    b.e.location = 0xffffffff81a2b3c0ull;
    b.e.ttl = 1;
    b.e.flags = IMDS_F_HAS_REASON;
    auto o = decode_event(b.bytes());
    ASSERT_TRUE(o);
    EXPECT_EQ(o->hook, Hook::drop);
    ASSERT_TRUE(o->drop_reason);
    EXPECT_EQ(*o->drop_reason, 5u);
    EXPECT_EQ(o->location, 0xffffffff81a2b3c0ull);
    EXPECT_EQ(o->flow.client, ep("198.18.1.5:43122"));

    b.e.flags = 0;  // kernel < 5.17: no reason argument
    EXPECT_FALSE(decode_event(b.bytes())->drop_reason);

    // A reason is only meaningful on drop events.
    EventBuilder c(IMDS_HOOK_CGROUP_EGRESS, IMDS_DIR_TO_TARGET);
    c.src("198.18.1.5", 1).dst("169.254.169.254", 80);
    c.e.flags = IMDS_F_HAS_REASON;
    c.e.drop_reason = 5;
    EXPECT_FALSE(decode_event(c.bytes())->drop_reason);
}

TEST(DecodeEvent, IcmpSendHook) {
    EventBuilder b(IMDS_HOOK_ICMP_SEND, IMDS_DIR_FROM_TARGET);
    b.src("169.254.169.254", 80).dst("198.18.1.5", 43122);
    b.e.icmp_type = 11;
    auto o = decode_event(b.bytes());
    ASSERT_TRUE(o);
    EXPECT_EQ(o->hook, Hook::icmp_send);
    EXPECT_TRUE(o->is_time_exceeded());
}

TEST(DecodeEvent, TokenValueNeverInTheObservation) {
    EventBuilder b(IMDS_HOOK_CGROUP_EGRESS, IMDS_DIR_TO_TARGET);
    b.src("198.18.1.5", 43122).dst("169.254.169.254", 80);
    b.payload("GET /latest/meta-data/mac HTTP/1.1\r\nX-aws-ec2-metadata-token: " + std::string(kToken) + "\r\n\r\n");
    auto o = decode_event(b.bytes());
    ASSERT_TRUE(o && o->request);
    EXPECT_TRUE(o->request->token);
    EXPECT_EQ(o->request->path.find(kToken.substr(0, 8)), std::string::npos);
    EXPECT_EQ(o->request->method.find(kToken.substr(0, 8)), std::string::npos);
}

TEST(DecodeEvent, CopiedBeyondTheRecordIsMalformed) {
    EventBuilder b(IMDS_HOOK_CGROUP_EGRESS, IMDS_DIR_TO_TARGET);
    b.src("198.18.1.5", 43122).dst("169.254.169.254", 80);
    b.payload("GET /x HTTP/1.1\r\n\r\n");
    auto good = decode_event(b.bytes());
    ASSERT_TRUE(good && good->request);
    EXPECT_EQ(good->request->path, "/x");
    b.e.copied = 60000;  // corrupt: larger than the payload array and the record
    EXPECT_FALSE(decode_event(b.bytes()));
    b.e.copied = static_cast<std::uint16_t>(b.tail.size() + 1);  // one byte past the record's end
    EXPECT_FALSE(decode_event(b.bytes()));
}

// Records are sized to what they carry: a packet without payload is the header alone.
TEST(DecodeEvent, HeaderOnlyRecord) {
    EventBuilder b(IMDS_HOOK_UPLINK_EGRESS, IMDS_DIR_TO_TARGET);
    b.src("198.18.0.2", 43122).dst("169.254.169.254", 80);
    b.e.tcp_flags = 0x02;
    auto rec = b.bytes();
    EXPECT_EQ(rec.size(), sizeof(imds_event));
    auto o = decode_event(rec);
    ASSERT_TRUE(o);
    EXPECT_TRUE(o->is_syn());
    EXPECT_FALSE(o->request);
}

TEST(DecodeEvent, PayloadNotCopiedMeansNoHead) {
    EventBuilder b(IMDS_HOOK_UPLINK_INGRESS, IMDS_DIR_FROM_TARGET);
    b.src("169.254.169.254", 80).dst("198.18.1.5", 43122);
    b.e.payload_len = 300;
    b.e.copied = 0;
    auto o = decode_event(b.bytes());
    ASSERT_TRUE(o);
    EXPECT_EQ(o->payload_len, 300u);
    EXPECT_FALSE(o->response);
}

TEST(DecodeEvent, RejectsShortRecords) {
    EventBuilder b(IMDS_HOOK_CGROUP_EGRESS, IMDS_DIR_TO_TARGET);
    b.src("198.18.1.5", 43122).dst("169.254.169.254", 80);
    auto full = b.bytes();
    EXPECT_TRUE(decode_event(full));
    EXPECT_FALSE(decode_event(std::span(full.data(), full.size() - 1)));
    EXPECT_FALSE(decode_event(std::span(full.data(), offsetof(imds_event, comm))));
    EXPECT_FALSE(decode_event(std::span<const std::uint8_t>{}));
    // Longer records (ring buffer rounding, a newer producer) are fine.
    full.resize(full.size() + 8, 0);
    EXPECT_TRUE(decode_event(full));
}

TEST(DecodeEvent, RejectsBadEnums) {
    EventBuilder b(IMDS_HOOK_CGROUP_EGRESS, IMDS_DIR_TO_TARGET);
    b.src("198.18.1.5", 43122).dst("169.254.169.254", 80);
    for (int hook : {0, int(IMDS_HOOK_MAX), 255}) {
        auto x = b;
        x.e.hook = hook;
        EXPECT_FALSE(decode_event(x.bytes())) << "hook " << int(hook);
    }
    for (std::uint8_t dir : {0, 4}) {
        auto x = b;
        x.e.direction = dir;
        EXPECT_FALSE(decode_event(x.bytes())) << "direction " << int(dir);
    }
    for (std::uint8_t fam : {0, 2, 10}) {
        auto x = b;
        x.e.family = fam;
        EXPECT_FALSE(decode_event(x.bytes())) << "family " << int(fam);
    }
}

TEST(DecodeEvent, HookNames) {
    EXPECT_EQ(to_string(Hook::cgroup_egress), "cgroup_egress");
    EXPECT_EQ(to_string(Hook::cgroup_ingress), "cgroup_ingress");
    EXPECT_EQ(to_string(Hook::uplink_egress), "uplink_egress");
    EXPECT_EQ(to_string(Hook::uplink_ingress), "uplink_ingress");
    EXPECT_EQ(to_string(Hook::drop), "drop");
    EXPECT_EQ(to_string(Hook::icmp_send), "icmp_send");
}

}  // namespace
