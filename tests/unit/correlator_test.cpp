// The correlator fed with event sequences as the kernel emits them for the
// scenarios imdstrace exists for.
#include <gtest/gtest.h>

#include <map>
#include <string>
#include <vector>

#include "correlate/correlator.hpp"
#include "verdict/verdict.hpp"

using namespace imdstrace;

namespace {

constexpr std::uint64_t kMs = 1'000'000;
constexpr std::uint32_t kReasonIpInhdr = 5;
constexpr std::uint32_t kReasonNetfilter = 6;
constexpr std::uint64_t kIpForward = 0xffffffff81a00000ull;

Endpoint ep(const char* text) { return *Endpoint::parse(text, 0); }
FlowKey flow(const char* client, const char* server = "169.254.169.254:80") { return {ep(client), ep(server)}; }

std::string http_req(const std::string& method, const std::string& path, const std::string& headers = "") {
    return method + " " + path + " HTTP/1.1\r\nHost: 169.254.169.254\r\n" + headers + "\r\n";
}

// One observation, built the way decode_event would produce it.
struct Ob {
    Observation o;
    Ob(double ts_ms, Hook h, Direction d, const FlowKey& f) {
        o.ts_ns = static_cast<std::uint64_t>(ts_ms * kMs);
        o.hook = h;
        o.direction = d;
        o.flow = f;
        o.tcp_flags = tcp::ack;
    }
    Ob& ttl(std::uint8_t v) { o.ttl = v; return *this; }
    Ob& flags(std::uint8_t v) { o.tcp_flags = v; return *this; }
    Ob& seq(std::uint32_t v) { o.seq = v; return *this; }
    Ob& ack(std::uint32_t v) { o.ack = v; return *this; }
    Ob& len(std::uint32_t v) { o.payload_len = v; return *this; }
    Ob& cgroup(std::uint64_t id) { o.cgroup_id = id; o.has_socket = true; o.sk_cookie = id * 7; return *this; }
    Ob& socket() { o.has_socket = true; return *this; }
    Ob& request(const std::string& head) {
        std::span<const std::uint8_t> b(reinterpret_cast<const std::uint8_t*>(head.data()), head.size());
        o.request = parse_http_request(b);
        o.payload_len = static_cast<std::uint32_t>(head.size());
        o.tcp_flags = tcp::psh | tcp::ack;
        return *this;
    }
    Ob& response(int status, std::uint32_t len = 400) {
        o.response = HttpResponse{status};
        o.payload_len = len;
        o.tcp_flags = tcp::psh | tcp::ack;
        return *this;
    }
    Ob& reason(std::uint32_t r) { o.drop_reason = r; return *this; }
    Ob& location(std::uint64_t l) { o.location = l; return *this; }
    Ob& icmp(std::uint8_t type, std::uint8_t code = 0) { o.icmp_type = type; o.icmp_code = code; return *this; }
    operator const Observation&() const { return o; }
};

class CorrelatorTest : public ::testing::Test {
protected:
    void SetUp() override { make({}); }

    void make(CorrelatorOptions opts) {
        out.clear();
        corr = std::make_unique<Correlator>(
            [this](Transaction&& t) { out.push_back(std::move(t)); },
            [](std::uint32_t r) -> std::string {
                static const std::map<std::uint32_t, std::string> names = {{kReasonIpInhdr, "IP_INHDR"},
                                                                           {kReasonNetfilter, "NETFILTER_DROP"}};
                auto it = names.find(r);
                return it == names.end() ? "REASON_" + std::to_string(r) : it->second;
            },
            [](std::uint64_t a) -> std::string {
                if (a >= kIpForward && a < kIpForward + 0x400) return "ip_forward";
                return "0x" + std::to_string(a);
            },
            opts);
    }

    void feed(std::initializer_list<Ob> obs) {
        for (const auto& o : obs) corr->observe(o);
    }

    std::unique_ptr<Correlator> corr;
    std::vector<Transaction> out;
    CorrelatorOptions defaults;
};

// (a) The production failure: a pod one hop behind the uplink, hop limit 1.
TEST_F(CorrelatorTest, HopLimitFailure) {
    const auto pod = flow("198.18.1.5:43122");
    using H = Hook;
    using D = Direction;
    const std::string put = http_req("PUT", "/latest/api/token", "X-aws-ec2-metadata-token-ttl-seconds: 21600\r\n");
    feed({
        Ob(1000, H::cgroup_egress, D::to_target, pod).ttl(64).flags(tcp::syn).seq(1000).cgroup(42),
        Ob(1000.1, H::uplink_egress, D::to_target, pod).ttl(63).flags(tcp::syn).seq(1000),
        // The handshake uses the default TTL: it is delivered.
        Ob(1001, H::uplink_ingress, D::from_target, pod).ttl(64).flags(tcp::syn | tcp::ack).seq(5000).ack(1001),
        Ob(1001.1, H::cgroup_ingress, D::from_target, pod).ttl(63).flags(tcp::syn | tcp::ack).seq(5000).ack(1001).cgroup(42),
        Ob(1002, H::cgroup_egress, D::to_target, pod).ttl(64).seq(1001).ack(5001).cgroup(42),
        Ob(1002.1, H::uplink_egress, D::to_target, pod).ttl(63).seq(1001).ack(5001),
        Ob(1002.5, H::cgroup_egress, D::to_target, pod).ttl(64).seq(1001).ack(5001).cgroup(42).request(put),
        Ob(1002.6, H::uplink_egress, D::to_target, pod).ttl(63).seq(1001).ack(5001).request(put),
    });
    // The token response, with TTL = hop limit = 1, and the server's retransmissions.
    for (double t : {1003.0, 1205.0, 1620.0}) {
        feed({
            Ob(t, H::uplink_ingress, D::from_target, pod).ttl(1).seq(5001).ack(1001 + put.size()).response(200),
            Ob(t + 0.01, H::drop, D::from_target, pod).ttl(1).seq(5001).reason(kReasonIpInhdr).location(kIpForward + 0x1c4),
            Ob(t + 0.02, H::icmp_send, D::from_target, pod).ttl(1).seq(5001).icmp(11),
            Ob(t + 0.03, H::uplink_egress, D::icmp_about, pod).ttl(1).seq(5001).icmp(11),
        });
    }
    EXPECT_TRUE(out.empty()) << "nothing is final before the client gives up";
    // The client's context deadline: it closes.
    feed({
        Ob(6000, H::cgroup_egress, D::to_target, pod).ttl(64).flags(tcp::fin | tcp::ack).seq(1001 + put.size()).cgroup(42),
        Ob(6000.1, H::uplink_egress, D::to_target, pod).ttl(63).flags(tcp::fin | tcp::ack).seq(1001 + put.size()),
    });
    EXPECT_EQ(corr->open_connections(), 1u);
    corr->expire(6000 * kMs + defaults.linger_ns - 1);
    EXPECT_TRUE(out.empty()) << "late drops and ICMP may still come during the linger";
    corr->expire(6000 * kMs + defaults.linger_ns + 100 * kMs);
    ASSERT_EQ(out.size(), 1u);
    EXPECT_EQ(corr->open_connections(), 0u);
    EXPECT_EQ(corr->unmatched_events(), 0u);

    const auto& t = out[0];
    EXPECT_EQ(t.client_flow, pod);
    ASSERT_TRUE(t.uplink_flow);
    EXPECT_EQ(*t.uplink_flow, pod);
    EXPECT_EQ(t.cgroup_id, 42u);
    EXPECT_TRUE(t.seen_at_socket);
    EXPECT_FALSE(t.local_socket_at_uplink);
    ASSERT_TRUE(t.request);
    EXPECT_TRUE(t.request->is_token_request());
    ASSERT_TRUE(t.response);
    EXPECT_EQ(t.response->status, 200);
    EXPECT_EQ(t.ttl_sent, 64);
    EXPECT_EQ(t.ttl_at_uplink, 63);
    EXPECT_EQ(t.response_ttl_at_node, 1);
    EXPECT_TRUE(t.response_at_uplink);
    EXPECT_FALSE(t.delivered);
    EXPECT_TRUE(t.handshake_answered);
    EXPECT_FALSE(t.server_reset);
    EXPECT_TRUE(t.client_closed);
    ASSERT_EQ(t.drops.size(), 1u);
    EXPECT_EQ(t.drops[0].reason, "IP_INHDR");
    EXPECT_EQ(t.drops[0].location, "ip_forward");
    EXPECT_EQ(t.drops[0].ttl, 1);
    EXPECT_TRUE(t.drops[0].response);
    EXPECT_EQ(t.drops[0].count, 3u);
    EXPECT_EQ(t.drop_count(), 3u);
    EXPECT_EQ(t.icmp_time_exceeded, 3u) << "icmp_send and the uplink copy are the same errors";
    EXPECT_EQ(t.retransmits, 2u) << "the response was sent three times";
    EXPECT_GE(t.end_ns, t.start_ns);
    EXPECT_EQ(t.start_ns, 1000 * kMs);

    auto c = classify(t, "169.254.169.254:80");
    EXPECT_EQ(c.verdict, Verdict::hop_limit_exceeded);
    EXPECT_EQ(c.hops.hops, 1);
    EXPECT_EQ(c.hops.required_hop_limit, 2);
    EXPECT_FALSE(c.hops.inferred);
    EXPECT_NE(c.evidence.find("TTL 1"), std::string::npos) << c.evidence;
    EXPECT_NE(c.evidence.find("IP_INHDR"), std::string::npos) << c.evidence;
    EXPECT_NE(c.evidence.find("3 ICMP time exceeded"), std::string::npos) << c.evidence;

    // Tombstone: a straggler is absorbed by the finished connection.
    corr->observe(Ob(6500, H::drop, D::from_target, pod).ttl(1).seq(5001).reason(kReasonIpInhdr).location(kIpForward));
    corr->flush();
    EXPECT_EQ(out.size(), 1u);
    EXPECT_EQ(corr->unmatched_events(), 0u);
}

// (b) A host process: the response is delivered and emitted at once.
TEST_F(CorrelatorTest, HealthyHostProcessIsEmittedImmediately) {
    const auto host = flow("198.18.0.2:50000");
    using H = Hook;
    using D = Direction;
    const std::string put = http_req("PUT", "/latest/api/token", "X-aws-ec2-metadata-token-ttl-seconds: 60\r\n");
    feed({
        Ob(10, H::cgroup_egress, D::to_target, host).ttl(64).flags(tcp::syn).seq(7).cgroup(9),
        Ob(10.1, H::uplink_egress, D::to_target, host).ttl(64).flags(tcp::syn).seq(7).socket(),
        Ob(11, H::uplink_ingress, D::from_target, host).ttl(1).flags(tcp::syn | tcp::ack).seq(70).ack(8),
        Ob(11.1, H::cgroup_ingress, D::from_target, host).ttl(1).flags(tcp::syn | tcp::ack).seq(70).ack(8).cgroup(9),
        Ob(12, H::cgroup_egress, D::to_target, host).ttl(64).seq(8).ack(71).cgroup(9).request(put),
        Ob(12.1, H::uplink_egress, D::to_target, host).ttl(64).seq(8).ack(71).socket().request(put),
        Ob(13, H::uplink_ingress, D::from_target, host).ttl(1).seq(71).response(200),
    });
    EXPECT_TRUE(out.empty());
    corr->observe(Ob(13.1, H::cgroup_ingress, D::from_target, host).ttl(1).seq(71).cgroup(9).response(200));
    ASSERT_EQ(out.size(), 1u) << "a delivered response is final: no linger";
    const auto& t = out[0];
    EXPECT_TRUE(t.delivered);
    EXPECT_TRUE(t.local_socket_at_uplink);
    EXPECT_EQ(t.response_ttl_at_node, 1);
    EXPECT_TRUE(t.drops.empty());
    auto c = classify(t, "169.254.169.254:80");
    EXPECT_EQ(c.verdict, Verdict::ok);
    EXPECT_EQ(c.hops.hops, 0);
    EXPECT_EQ(c.hops.required_hop_limit, 1);

    // The close does not emit the exchange a second time.
    feed({Ob(20, H::cgroup_egress, D::to_target, host).flags(tcp::fin | tcp::ack).seq(8 + put.size()).cgroup(9),
          Ob(20.1, H::uplink_egress, D::to_target, host).flags(tcp::fin | tcp::ack).seq(8 + put.size()).socket(),
          Ob(21, H::uplink_ingress, D::from_target, host).flags(tcp::fin | tcp::ack).seq(471),
          Ob(21.1, H::cgroup_ingress, D::from_target, host).flags(tcp::fin | tcp::ack).seq(471).cgroup(9)});
    corr->expire(30 * 1000 * kMs);
    corr->flush();
    EXPECT_EQ(out.size(), 1u);
}

// (c) Masquerading CNI: the uplink sees the node's address and another port.
TEST_F(CorrelatorTest, NatLinksBothViewsByIsn) {
    using H = Hook;
    using D = Direction;
    const auto pod_a = flow("198.18.1.5:40000"), nat_a = flow("198.18.0.2:61000");
    const auto pod_b = flow("198.18.1.6:40000"), nat_b = flow("198.18.0.2:61001");
    const std::string get = http_req("GET", "/latest/meta-data/mac", "X-aws-ec2-metadata-token: secret\r\n");
    // Two pods' connections interleaved; B's uplink SYN was not seen
    // (linked by the SYN-ACK's ack - 1 instead).
    feed({
        Ob(1, H::cgroup_egress, D::to_target, pod_a).ttl(64).flags(tcp::syn).seq(777000).cgroup(100),
        Ob(1.05, H::cgroup_egress, D::to_target, pod_b).ttl(64).flags(tcp::syn).seq(999000).cgroup(200),
        Ob(1.1, H::uplink_egress, D::to_target, nat_a).ttl(63).flags(tcp::syn).seq(777000),
        Ob(2, H::uplink_ingress, D::from_target, nat_b).ttl(64).flags(tcp::syn | tcp::ack).seq(1).ack(999001),
        Ob(2.05, H::uplink_ingress, D::from_target, nat_a).ttl(64).flags(tcp::syn | tcp::ack).seq(2).ack(777001),
        Ob(2.1, H::cgroup_ingress, D::from_target, pod_a).ttl(63).flags(tcp::syn | tcp::ack).seq(2).ack(777001).cgroup(100),
        Ob(2.15, H::cgroup_ingress, D::from_target, pod_b).ttl(63).flags(tcp::syn | tcp::ack).seq(1).ack(999001).cgroup(200),
        Ob(3, H::cgroup_egress, D::to_target, pod_a).ttl(64).seq(777001).ack(3).cgroup(100).request(get),
        Ob(3.1, H::uplink_egress, D::to_target, nat_a).ttl(63).seq(777001).ack(3).request(get),
        Ob(3.2, H::cgroup_egress, D::to_target, pod_b).ttl(64).seq(999001).ack(2).cgroup(200).request(get),
        Ob(3.3, H::uplink_egress, D::to_target, nat_b).ttl(63).seq(999001).ack(2).request(get),
    });
    EXPECT_EQ(corr->open_connections(), 2u) << "one connection per pod, not one per view";
    feed({
        Ob(4, H::uplink_ingress, D::from_target, nat_a).ttl(64).seq(3).response(200),
        Ob(4.1, H::cgroup_ingress, D::from_target, pod_a).ttl(63).seq(3).cgroup(100).response(200),
        Ob(4.2, H::uplink_ingress, D::from_target, nat_b).ttl(64).seq(2).response(404),
        Ob(4.3, H::cgroup_ingress, D::from_target, pod_b).ttl(63).seq(2).cgroup(200).response(404),
    });
    ASSERT_EQ(out.size(), 2u);
    EXPECT_EQ(out[0].client_flow, pod_a);
    ASSERT_TRUE(out[0].uplink_flow);
    EXPECT_EQ(*out[0].uplink_flow, nat_a);
    EXPECT_EQ(out[0].cgroup_id, 100u);
    EXPECT_EQ(out[0].response->status, 200);
    EXPECT_EQ(out[0].ttl_sent, 64);
    EXPECT_EQ(out[0].ttl_at_uplink, 63);
    EXPECT_EQ(out[1].client_flow, pod_b);
    ASSERT_TRUE(out[1].uplink_flow);
    EXPECT_EQ(*out[1].uplink_flow, nat_b);
    EXPECT_EQ(out[1].cgroup_id, 200u);
    EXPECT_EQ(out[1].response->status, 404);
    EXPECT_EQ(hop_figures(out[0]).hops, 1);
    EXPECT_EQ(hop_figures(out[1]).hops, 1);
    EXPECT_EQ(corr->unmatched_events(), 0u);

    // A drop carrying the post-NAT tuple finds the connection too.
    corr->observe(Ob(5, H::drop, D::to_target, nat_a).ttl(63).seq(777001).reason(kReasonNetfilter).location(1));
    EXPECT_EQ(corr->unmatched_events(), 0u);
}

// (d) HTTP keep-alive: one connection, two exchanges.
TEST_F(CorrelatorTest, KeepAliveTwoRequestsTwoTransactions) {
    using H = Hook;
    using D = Direction;
    const auto pod = flow("198.18.1.5:43000");
    const std::string r1 = http_req("GET", "/latest/meta-data/mac", "X-aws-ec2-metadata-token: t\r\n");
    const std::string r2 = http_req("GET", "/latest/meta-data/instance-id", "X-aws-ec2-metadata-token: t\r\n");
    const std::uint32_t s1 = 101, s2 = s1 + r1.size();
    feed({
        Ob(1, H::cgroup_egress, D::to_target, pod).ttl(64).flags(tcp::syn).seq(100).cgroup(5),
        Ob(1.1, H::uplink_egress, D::to_target, pod).ttl(63).flags(tcp::syn).seq(100),
        Ob(2, H::uplink_ingress, D::from_target, pod).ttl(64).flags(tcp::syn | tcp::ack).seq(500).ack(101),
        Ob(2.1, H::cgroup_ingress, D::from_target, pod).ttl(63).flags(tcp::syn | tcp::ack).seq(500).ack(101).cgroup(5),
        Ob(3, H::cgroup_egress, D::to_target, pod).ttl(64).seq(s1).cgroup(5).request(r1),
        Ob(3.1, H::uplink_egress, D::to_target, pod).ttl(63).seq(s1).request(r1),
        Ob(4, H::uplink_ingress, D::from_target, pod).ttl(64).seq(501).response(200, 17),
        Ob(4.1, H::cgroup_ingress, D::from_target, pod).ttl(63).seq(501).cgroup(5).response(200, 17),
        Ob(5, H::cgroup_egress, D::to_target, pod).ttl(64).seq(s2).cgroup(5).request(r2),
        Ob(5.1, H::uplink_egress, D::to_target, pod).ttl(63).seq(s2).request(r2),
    });
    ASSERT_EQ(out.size(), 1u);
    EXPECT_EQ(out[0].request->path, "/latest/meta-data/mac");
    // The second response is dropped on the way in (policy), twice.
    feed({
        Ob(6, H::uplink_ingress, D::from_target, pod).ttl(64).seq(518).response(200, 19),
        Ob(6.1, H::drop, D::from_target, pod).ttl(63).seq(518).reason(kReasonNetfilter).location(42),
        Ob(7, H::uplink_ingress, D::from_target, pod).ttl(64).seq(518).response(200, 19),
        Ob(7.1, H::drop, D::from_target, pod).ttl(63).seq(518).reason(kReasonNetfilter).location(42),
    });
    corr->flush();
    ASSERT_EQ(out.size(), 2u);
    const auto& a = out[0];
    const auto& b = out[1];
    EXPECT_EQ(a.id, b.id) << "the transaction id names the connection";
    EXPECT_TRUE(a.delivered);
    EXPECT_TRUE(a.drops.empty());
    EXPECT_EQ(b.request->path, "/latest/meta-data/instance-id");
    EXPECT_FALSE(b.delivered);
    EXPECT_TRUE(b.response_at_uplink);
    ASSERT_EQ(b.drops.size(), 1u);
    EXPECT_EQ(b.drops[0].reason, "NETFILTER_DROP");
    EXPECT_EQ(b.drops[0].count, 2u);
    EXPECT_EQ(b.retransmits, 1u);
    EXPECT_GE(b.start_ns, a.start_ns);
    EXPECT_EQ(classify(a, "x").verdict, Verdict::ok);
    EXPECT_EQ(classify(b, "x").verdict, Verdict::blocked);
}

// (e) The tracer started while the connection was open: no SYN anywhere.
TEST_F(CorrelatorTest, MidConnectionWithoutSyn) {
    using H = Hook;
    using D = Direction;
    const auto pod = flow("198.18.1.7:39000");
    const std::string get = http_req("GET", "/latest/meta-data/placement/region", "X-aws-ec2-metadata-token: t\r\n");
    feed({
        Ob(1, H::cgroup_egress, D::to_target, pod).ttl(64).seq(123456).ack(900).cgroup(8).request(get),
        Ob(1.1, H::uplink_egress, D::to_target, pod).ttl(63).seq(123456).ack(900).request(get),
        Ob(2, H::uplink_ingress, D::from_target, pod).ttl(64).seq(900).response(200, 9),
        Ob(2.1, H::cgroup_ingress, D::from_target, pod).ttl(63).seq(900).cgroup(8).response(200, 9),
    });
    ASSERT_EQ(out.size(), 1u);
    EXPECT_EQ(corr->open_connections(), 1u) << "both views are one connection";
    EXPECT_EQ(out[0].client_flow, pod);
    EXPECT_TRUE(out[0].delivered);
    EXPECT_FALSE(out[0].handshake_answered);
    EXPECT_EQ(out[0].ttl_sent, 64);
    EXPECT_EQ(out[0].ttl_at_uplink, 63);
    EXPECT_EQ(classify(out[0], "x").verdict, Verdict::ok);
}

// (f) No answer at all: idle expiry, then the tombstone is forgotten.
TEST_F(CorrelatorTest, IdleExpiryAndTombstone) {
    using H = Hook;
    using D = Direction;
    const auto pod = flow("198.18.1.8:41000");
    for (double t : {0.0, 1000.0, 3000.0}) {
        feed({Ob(t, H::cgroup_egress, D::to_target, pod).ttl(64).flags(tcp::syn).seq(55).cgroup(3),
              Ob(t + 0.1, H::uplink_egress, D::to_target, pod).ttl(63).flags(tcp::syn).seq(55)});
    }
    const std::uint64_t last = 3000 * kMs + kMs / 10;
    corr->expire(last + defaults.idle_ns - 1);
    EXPECT_TRUE(out.empty());
    corr->expire(last + defaults.idle_ns);
    ASSERT_EQ(out.size(), 1u);
    const auto& t = out[0];
    EXPECT_EQ(t.retransmits, 2u) << "SYN retransmissions counted once across hooks";
    EXPECT_FALSE(t.handshake_answered);
    EXPECT_FALSE(t.request);
    auto c = classify(t, "169.254.169.254:80");
    EXPECT_EQ(c.verdict, Verdict::no_response);
    EXPECT_NE(c.evidence.find("no SYN-ACK"), std::string::npos) << c.evidence;
    EXPECT_NE(c.evidence.find("2 retransmissions"), std::string::npos) << c.evidence;
    EXPECT_EQ(corr->open_connections(), 0u);

    // Still remembered: a late event is matched, not counted as unmatched.
    corr->observe(Ob(3000.5, H::drop, D::to_target, pod).ttl(63).seq(55).location(9));
    EXPECT_EQ(corr->unmatched_events(), 0u);
    // After the tombstone period the connection is forgotten.
    corr->expire(3000 * kMs + defaults.tombstone_ns + kMs);
    corr->observe(Ob(40000, H::drop, D::to_target, pod).ttl(63).seq(55).location(9));
    EXPECT_EQ(corr->unmatched_events(), 1u);
    corr->flush();
    EXPECT_EQ(out.size(), 2u) << "an unmatched drop still becomes a transaction";
    EXPECT_EQ(out[1].drop_count(), 1u);
}

// A new SYN on a finished tuple (port reuse) is a new connection.
TEST_F(CorrelatorTest, PortReuseAfterFinish) {
    using H = Hook;
    using D = Direction;
    const auto pod = flow("198.18.1.9:42000");
    feed({Ob(0, H::cgroup_egress, D::to_target, pod).flags(tcp::syn).seq(1).cgroup(1),
          Ob(1, H::cgroup_ingress, D::from_target, pod).flags(tcp::rst | tcp::ack).ack(2).cgroup(1)});
    corr->expire(1 * kMs + defaults.linger_ns);
    ASSERT_EQ(out.size(), 1u);
    EXPECT_TRUE(out[0].server_reset);
    EXPECT_EQ(classify(out[0], "169.254.169.254:80").verdict, Verdict::refused);
    feed({Ob(5000, H::cgroup_egress, D::to_target, pod).flags(tcp::syn).seq(77).cgroup(1)});
    EXPECT_EQ(corr->open_connections(), 1u);
    corr->flush();
    ASSERT_EQ(out.size(), 2u);
    EXPECT_NE(out[1].id, out[0].id);
    EXPECT_FALSE(out[1].server_reset);
}

// The same port again while the closed connection still lingers (the server
// closed first, so the client holds no TIME_WAIT): a new connection, not a
// second exchange of the old one.
TEST_F(CorrelatorTest, PortReuseWhileTheClosedConnectionLingers) {
    using H = Hook;
    using D = Direction;
    const auto pod = flow("198.18.1.9:42001");
    feed({Ob(0, H::cgroup_egress, D::to_target, pod).flags(tcp::syn).seq(1).cgroup(1),
          Ob(1, H::cgroup_egress, D::to_target, pod).seq(2).cgroup(1).request(http_req("PUT", "/latest/api/token")),
          Ob(2, H::cgroup_ingress, D::from_target, pod).seq(500).cgroup(1).response(200),
          Ob(3, H::cgroup_egress, D::to_target, pod).flags(tcp::fin | tcp::ack).seq(90).cgroup(1),
          Ob(100, H::cgroup_egress, D::to_target, pod).flags(tcp::syn).seq(7000).cgroup(1)});
    EXPECT_EQ(corr->open_connections(), 2u);
    corr->flush();
    ASSERT_EQ(out.size(), 2u);
    EXPECT_NE(out[1].id, out[0].id);
}

// (g) Memory bound: the oldest connection is finished and forgotten.
TEST_F(CorrelatorTest, MaxConnectionsBound) {
    CorrelatorOptions opts;
    opts.max_connections = 3;
    make(opts);
    for (int i = 0; i < 5; ++i) {
        auto f = flow(("198.18.1.5:" + std::to_string(30000 + i)).c_str());
        corr->observe(Ob(i, Hook::cgroup_egress, Direction::to_target, f).flags(tcp::syn).seq(i * 1000).cgroup(1));
    }
    EXPECT_EQ(corr->open_connections(), 3u);
    ASSERT_EQ(out.size(), 2u);
    EXPECT_EQ(out[0].client_flow.client.port, 30000);
    EXPECT_EQ(out[1].client_flow.client.port, 30001);
    corr->flush();
    EXPECT_EQ(out.size(), 5u);
}

TEST_F(CorrelatorTest, UnmatchedDropCreatesATransaction) {
    const auto pod = flow("198.18.1.10:1234");
    corr->observe(Ob(0, Hook::drop, Direction::from_target, pod).ttl(1).seq(9).reason(kReasonIpInhdr).location(kIpForward));
    EXPECT_EQ(corr->unmatched_events(), 1u);
    corr->flush();
    ASSERT_EQ(out.size(), 1u);
    EXPECT_EQ(out[0].client_flow, pod);
    EXPECT_EQ(classify(out[0], "x").verdict, Verdict::hop_limit_exceeded);
}

// Non-time-exceeded ICMP (unreachable) is not counted as hop evidence.
TEST_F(CorrelatorTest, OnlyTimeExceededCounts) {
    const auto pod = flow("198.18.1.11:1234");
    feed({Ob(0, Hook::cgroup_egress, Direction::to_target, pod).ttl(64).flags(tcp::syn).seq(1).cgroup(1),
          Ob(1, Hook::uplink_egress, Direction::icmp_about, pod).icmp(3, 1)});
    corr->flush();
    ASSERT_EQ(out.size(), 1u);
    EXPECT_EQ(out[0].icmp_time_exceeded, 0u);
}

// A request retransmitted by the client counts once per retransmission.
TEST_F(CorrelatorTest, RequestRetransmissions) {
    const auto pod = flow("198.18.1.12:1234");
    const std::string put = http_req("PUT", "/latest/api/token", "X-aws-ec2-metadata-token-ttl-seconds: 1\r\n");
    for (double t : {0.0, 200.0, 600.0}) {
        feed({Ob(t, Hook::cgroup_egress, Direction::to_target, pod).ttl(64).seq(10).cgroup(1).request(put),
              Ob(t + 0.1, Hook::uplink_egress, Direction::to_target, pod).ttl(63).seq(10).request(put)});
    }
    corr->flush();
    ASSERT_EQ(out.size(), 1u);
    EXPECT_EQ(out[0].retransmits, 2u);
    EXPECT_EQ(classify(out[0], "x").verdict, Verdict::no_response);
}

}  // namespace

// The connect tracepoint names the process; its socket cookie finds the
// connection, and a node process outside the traced cgroup gets its cgroup.
TEST_F(CorrelatorTest, ConnectEventAttributesProcessByCookie) {
    const auto host = flow("198.18.0.2:50001");
    Observation connect;
    connect.ts_ns = 9 * kMs;
    connect.hook = Hook::connect;
    connect.direction = Direction::to_target;
    connect.flow = flow("0.0.0.0:0");
    connect.sk_cookie = 4242;
    connect.cgroup_id = 77;
    connect.pid = 4711;
    connect.comm = "controller";
    corr->observe(connect);
    EXPECT_EQ(corr->open_connections(), 0u) << "a connect event alone is not a connection";

    Ob syn(10, Hook::uplink_egress, Direction::to_target, host);
    syn.ttl(64).flags(tcp::syn).seq(7).socket();
    syn.o.sk_cookie = 4242;
    corr->observe(syn);
    corr->flush();
    ASSERT_EQ(out.size(), 1u);
    ASSERT_TRUE(out[0].process.has_value());
    EXPECT_EQ(out[0].process->pid, 4711u);
    EXPECT_EQ(out[0].process->comm, "controller");
    EXPECT_EQ(out[0].cgroup_id, 77u);
}

namespace {

// "This window": leftovers of a connection opened before tracing (IMDS
// retransmitting a token response with the old, lower hop limit) are
// marked, not mixed with the connections opened while tracing.
TEST_F(CorrelatorTest, ConnectionNotSeenOpenIsOpenedBeforeTheWindow) {
    using H = Hook;
    using D = Direction;
    const auto stale = flow("198.18.1.11:40000");
    for (double t : {1000.0, 1400.0, 2200.0})
        feed({
            Ob(t, H::uplink_ingress, D::from_target, stale).ttl(1).seq(9001).response(200),
            Ob(t + 0.01, H::drop, D::from_target, stale).ttl(1).seq(9001).reason(kReasonIpInhdr).location(kIpForward),
        });
    const auto fresh = flow("198.18.1.11:40002");
    const std::string put = http_req("PUT", "/latest/api/token", "X-aws-ec2-metadata-token-ttl-seconds: 60\r\n");
    feed({
        Ob(1500, H::cgroup_egress, D::to_target, fresh).ttl(64).flags(tcp::syn).seq(100).cgroup(42),
        Ob(1500.1, H::uplink_egress, D::to_target, fresh).ttl(63).flags(tcp::syn).seq(100),
        Ob(1501, H::cgroup_egress, D::to_target, fresh).ttl(64).seq(101).cgroup(42).request(put),
        Ob(1502, H::uplink_ingress, D::from_target, fresh).ttl(2).seq(700).response(200),
        Ob(1502.1, H::cgroup_ingress, D::from_target, fresh).ttl(1).seq(700).response(200).cgroup(42),
    });
    corr->flush();
    ASSERT_EQ(out.size(), 2u);
    const auto& delivered = out[0];
    EXPECT_EQ(delivered.client_flow, fresh);
    EXPECT_FALSE(delivered.opened_before_window);
    const auto& leftover = out[1];
    EXPECT_EQ(leftover.client_flow, stale);
    EXPECT_TRUE(leftover.opened_before_window);
    ASSERT_EQ(leftover.drops.size(), 1u);
    EXPECT_EQ(leftover.drops[0].count, 3u);
}

TEST_F(CorrelatorTest, ConnectEventOrDroppedSynOpensInTheWindow) {
    using H = Hook;
    using D = Direction;
    // A SYN dropped before any hook saw it (the pod's own OUTPUT chain).
    const auto dropped = flow("198.18.1.12:40000");
    feed({Ob(1000, H::drop, D::to_target, dropped).ttl(64).flags(tcp::syn).seq(5).reason(kReasonNetfilter)});
    // connect() seen, then a packet that is not the SYN (the SYN's event was lost).
    Observation connect;
    connect.hook = H::connect;
    connect.sk_cookie = 77;
    connect.pid = 10;
    connect.comm = "sdk";
    corr->observe(connect);
    const auto lost_syn = flow("198.18.1.12:40002");
    auto data = Ob(1001, H::cgroup_egress, D::to_target, lost_syn).ttl(64).seq(9);
    data.o.sk_cookie = 77;
    corr->observe(data);
    corr->flush();
    ASSERT_EQ(out.size(), 2u);
    for (const auto& t : out) EXPECT_FALSE(t.opened_before_window) << t.client_flow.client.str();
}

// A process freeing its sockets' queues (a proxy closing the connections
// it made on a pod's behalf) is no transaction.
TEST_F(CorrelatorTest, SocketBookkeepingAloneIsNoTransaction) {
    make({});
    corr = std::make_unique<Correlator>([this](Transaction&& t) { out.push_back(std::move(t)); },
                                        [](std::uint32_t) -> std::string { return "QUEUE_PURGE"; },
                                        [](std::uint64_t) -> std::string { return "sk_stream_kill_queues"; });
    for (int i = 0; i < 5; ++i) {
        auto key = flow(("198.18.0.9:" + std::to_string(41000 + i)).c_str());
        corr->observe(Ob(1000 + i, Hook::drop, Direction::from_target, key).ttl(64).reason(1).location(1));
    }
    corr->flush();
    EXPECT_TRUE(out.empty());
    EXPECT_EQ(corr->bookkeeping_frees(), 5u);
    EXPECT_EQ(corr->unmatched_events(), 0u);
}

TEST_F(CorrelatorTest, LossMarksOpenConnectionsIncomplete) {
    using H = Hook;
    using D = Direction;
    const auto before = flow("198.18.1.5:40000");
    const auto after = flow("198.18.1.5:40001");
    feed({Ob(1000, H::cgroup_egress, D::to_target, before).ttl(64).flags(tcp::syn).seq(1).cgroup(42)});
    corr->note_loss(37, 1000 * kMs + kMs / 2);
    feed({Ob(1001, H::cgroup_egress, D::to_target, after).ttl(64).flags(tcp::syn).seq(1).cgroup(42),
          Ob(1002, H::cgroup_egress, D::to_target, after).ttl(64).flags(tcp::fin | tcp::ack).seq(2).cgroup(42)});
    corr->flush();
    ASSERT_EQ(out.size(), 2u);
    EXPECT_TRUE(out[0].incomplete);
    EXPECT_EQ(out[0].events_lost, 37u) << "the count lost while it was open";
    EXPECT_FALSE(out[1].incomplete);
    EXPECT_EQ(out[1].events_lost, 0u);
    // Nothing came back on the incomplete one: that absence is no verdict.
    auto r = classify(out[0], "169.254.169.254:80");
    EXPECT_EQ(r.verdict, Verdict::no_response);
}

}  // namespace

namespace {

TEST_F(CorrelatorTest, DropsAfterTheTransactionWasReportedAreCountedNotLost) {
    using H = Hook;
    using D = Direction;
    const auto pod = flow("198.18.1.5:43122");
    const std::string put = http_req("PUT", "/latest/api/token", "X-aws-ec2-metadata-token-ttl-seconds: 60\r\n");
    feed({
        Ob(1000, H::cgroup_egress, D::to_target, pod).ttl(64).flags(tcp::syn).seq(1000).cgroup(42),
        Ob(1002, H::cgroup_egress, D::to_target, pod).ttl(64).seq(1001).cgroup(42).request(put),
        Ob(1003, H::uplink_ingress, D::from_target, pod).ttl(1).seq(5001).response(200),
        Ob(1003.1, H::drop, D::from_target, pod).ttl(1).seq(5001).reason(kReasonIpInhdr).location(kIpForward),
        Ob(2000, H::cgroup_egress, D::to_target, pod).ttl(64).flags(tcp::fin | tcp::ack).seq(1001 + put.size()).cgroup(42),
    });
    corr->expire(2000 * kMs + defaults.linger_ns + kMs);
    ASSERT_EQ(out.size(), 1u);
    // IMDS retransmits its answer; the node drops it again.
    feed({Ob(9000, H::drop, D::from_target, pod).ttl(1).seq(5001).reason(kReasonIpInhdr).location(kIpForward)});
    EXPECT_EQ(corr->late_drops(), 1u);
    EXPECT_EQ(out[0].drop_count(), 1u);
}

// A connection first seen without its SYN just after a loss may have lost
// its opening: incomplete, not "opened before tracing".
TEST_F(CorrelatorTest, ConnectionWhoseOpeningMayBeLostIsIncompleteNotOld) {
    using H = Hook;
    using D = Direction;
    const auto pod = flow("198.18.1.5:40002");
    corr->note_loss(12, 1000 * kMs);
    feed({Ob(1001, H::cgroup_egress, D::to_target, pod).ttl(64).seq(2).cgroup(42).request(http_req("GET", "/latest/meta-data/mac")),
          Ob(1002, H::cgroup_egress, D::to_target, pod).ttl(64).flags(tcp::fin | tcp::ack).seq(100).cgroup(42)});
    corr->flush();
    ASSERT_EQ(out.size(), 1u);
    EXPECT_TRUE(out[0].incomplete);
    EXPECT_EQ(out[0].events_lost, 12u);
    EXPECT_FALSE(out[0].opened_before_window);
    EXPECT_TRUE(out[0].opening_unseen) << "new or old: nothing tells which";
    // Long after the loss, a connection without SYN is a leftover again.
    out.clear();
    const auto old = flow("198.18.1.5:40003");
    feed({Ob(60000, H::cgroup_egress, D::to_target, old).ttl(64).seq(2).cgroup(42),
          Ob(60001, H::cgroup_egress, D::to_target, old).ttl(64).flags(tcp::fin | tcp::ack).seq(3).cgroup(42)});
    corr->flush();
    ASSERT_EQ(out.size(), 1u);
    EXPECT_FALSE(out[0].incomplete);
    EXPECT_TRUE(out[0].opened_before_window);
    EXPECT_FALSE(out[0].opening_unseen);
}

// Memory follows live connections: finished ones are forgotten after the
// tombstone time, and expiry visits only what is due.
TEST_F(CorrelatorTest, ExpiryForgetsTombstonesAndKeepsActiveConnections) {
    using H = Hook;
    using D = Direction;
    for (int i = 0; i < 1000; ++i) {
        auto key = flow(("198.18.1.5:" + std::to_string(20000 + i)).c_str());
        feed({Ob(1000 + i, H::cgroup_egress, D::to_target, key).ttl(64).flags(tcp::syn).seq(1).cgroup(42),
              Ob(1000.5 + i, H::cgroup_egress, D::to_target, key).ttl(64).flags(tcp::fin | tcp::ack).seq(2).cgroup(42)});
    }
    const auto busy = flow("198.18.1.6:30000");
    feed({Ob(1000, H::cgroup_egress, D::to_target, busy).ttl(64).flags(tcp::syn).seq(1).cgroup(43)});
    EXPECT_EQ(corr->remembered_connections(), 1001u);
    // The busy one keeps sending: never idle, while everything else closes and is forgotten.
    for (double t = 1000; t < 50000; t += 1000) {
        feed({Ob(t, H::cgroup_egress, D::to_target, busy).ttl(64).seq(2).cgroup(43)});
        corr->expire(static_cast<std::uint64_t>(t * kMs));
    }
    EXPECT_EQ(out.size(), 1000u) << "each closed connection reported once, after its linger";
    EXPECT_EQ(corr->open_connections(), 1u);
    EXPECT_EQ(corr->remembered_connections(), 1u) << "tombstones forgotten after " << defaults.tombstone_ns / kMs << " ms";
    corr->expire(200000 * kMs);
    EXPECT_EQ(out.size(), 1001u);
    corr->expire(300000 * kMs);
    EXPECT_EQ(corr->remembered_connections(), 0u);
}

TEST_F(CorrelatorTest, StillInFlightAtTheEndOfTheWindowIsIncomplete) {
    using H = Hook;
    using D = Direction;
    const auto closed = flow("198.18.1.5:40000");
    const auto waiting = flow("198.18.1.5:40001");
    feed({
        Ob(1000, H::cgroup_egress, D::to_target, closed).ttl(64).flags(tcp::syn).seq(1).cgroup(42),
        Ob(2000, H::cgroup_egress, D::to_target, closed).ttl(64).flags(tcp::fin | tcp::ack).seq(2).cgroup(42),
        Ob(2500, H::cgroup_egress, D::to_target, waiting).ttl(64).flags(tcp::syn).seq(1).cgroup(42),
    });
    corr->flush();
    ASSERT_EQ(out.size(), 2u);
    for (const auto& t : out) {
        if (t.client_flow == closed) EXPECT_FALSE(t.incomplete);
        else EXPECT_TRUE(t.incomplete) << "its answer may just not have come yet";
    }
}

TEST_F(CorrelatorTest, LeftoversOfOldConnectionsWaitLongerBeforeTheyAreReported) {
    using H = Hook;
    using D = Direction;
    const auto stale = flow("198.18.1.11:40000");
    feed({Ob(1000, H::uplink_ingress, D::from_target, stale).ttl(1).seq(9).response(200)});
    corr->expire(1000 * kMs + defaults.idle_ns + kMs);
    EXPECT_TRUE(out.empty()) << "IMDS retransmits for minutes: counted whole, not cut at the window's idle time";
    corr->expire(1000 * kMs + defaults.stale_idle_ns + kMs);
    ASSERT_EQ(out.size(), 1u);
    EXPECT_TRUE(out[0].opened_before_window);
}

}  // namespace
