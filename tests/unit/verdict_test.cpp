// classify() and hop_figures(): every branch of the verdict table.
#include <gtest/gtest.h>

#include <string>

#include "verdict/verdict.hpp"

using namespace imdstrace;

namespace {

const std::string kServer = "169.254.169.254:80";

HttpRequest req(std::string method, std::string path, bool token = false, bool ttl = false) {
    HttpRequest r;
    r.method = std::move(method);
    r.path = std::move(path);
    r.token = token;
    r.token_ttl = ttl;
    r.headers_complete = true;
    return r;
}

DropRecord drop(std::string reason, std::string location, std::uint8_t ttl, bool response, std::uint32_t count = 1) {
    return DropRecord{std::move(reason), std::move(location), ttl, response, count, 0, {}};
}

// A pod one hop behind the uplink whose request left the node.
Transaction pod_tx() {
    Transaction t;
    t.client_flow = {*Endpoint::parse("198.18.1.5:43122", 0), *Endpoint::parse(kServer, 0)};
    t.seen_at_socket = true;
    t.ttl_sent = 64;
    t.ttl_at_uplink = 63;
    t.handshake_answered = true;
    t.request = req("PUT", "/latest/api/token", false, true);
    return t;
}

Transaction delivered(int status, HttpRequest r) {
    auto t = pod_tx();
    t.request = std::move(r);
    t.response = HttpResponse{status};
    t.response_ttl_at_node = 64;
    t.response_at_uplink = true;
    t.delivered = true;
    return t;
}

TEST(Classify, DeliveredStatuses) {
    struct Case {
        const char* name;
        int status;
        HttpRequest request;
        Verdict want;
    } cases[] = {
        {"token 200", 200, req("PUT", "/latest/api/token", false, true), Verdict::ok},
        {"GET 200", 200, req("GET", "/latest/meta-data/mac", true), Verdict::ok},
        {"IMDSv1 401", 401, req("GET", "/latest/meta-data/mac", false), Verdict::token_required},
        {"bad token 401", 401, req("GET", "/latest/meta-data/mac", true), Verdict::token_invalid},
        {"403", 403, req("PUT", "/latest/api/token", false, true), Verdict::forbidden},
        {"400", 400, req("PUT", "/latest/api/token", false, false), Verdict::bad_request},
        {"404", 404, req("GET", "/latest/meta-data/iam/security-credentials/", true), Verdict::not_found},
        {"405", 405, req("POST", "/latest/api/token"), Verdict::bad_request},
        {"429", 429, req("GET", "/latest/meta-data/mac", true), Verdict::no_response},
        {"503", 503, req("GET", "/latest/meta-data/mac", true), Verdict::no_response},
        {"500", 500, req("GET", "/latest/meta-data/mac", true), Verdict::dropped},
    };
    for (const auto& c : cases) {
        auto got = classify(delivered(c.status, c.request), kServer);
        EXPECT_EQ(got.verdict, c.want) << c.name << ": " << got.evidence;
        EXPECT_NE(got.evidence.find("HTTP " + std::to_string(c.status)), std::string::npos) << got.evidence;
        EXPECT_NE(got.evidence.find("delivered"), std::string::npos) << got.evidence;
    }
    auto bad = classify(delivered(400, req("PUT", "/latest/api/token")), kServer);
    EXPECT_NE(bad.evidence.find("without TTL header"), std::string::npos) << bad.evidence;
    auto v1 = classify(delivered(401, req("GET", "/latest/meta-data/mac")), kServer);
    EXPECT_NE(v1.evidence.find("without token header"), std::string::npos) << v1.evidence;
    auto xff = req("PUT", "/latest/api/token", false, true);
    xff.forwarded_for = true;
    auto f = classify(delivered(403, xff), kServer);
    EXPECT_NE(f.evidence.find("X-Forwarded-For"), std::string::npos) << f.evidence;
}

TEST(Classify, DeliveredWinsOverDrops) {
    // A delivered response is the truth, whatever was dropped on the way (retransmissions).
    auto t = delivered(200, req("PUT", "/latest/api/token", false, true));
    t.drops.push_back(drop("NETFILTER_DROP", "nf_hook_slow", 63, false));
    EXPECT_EQ(classify(t, kServer).verdict, Verdict::ok);
}

TEST(Classify, HopDrop) {
    auto t = pod_tx();
    t.response = HttpResponse{200};
    t.response_ttl_at_node = 1;
    t.response_at_uplink = true;
    t.drops.push_back(drop("IP_INHDR", "ip_forward", 1, true, 5));
    auto c = classify(t, kServer);
    EXPECT_EQ(c.verdict, Verdict::hop_limit_exceeded);
    EXPECT_EQ(c.hops.hops, 1);
    EXPECT_EQ(c.hops.required_hop_limit, 2);
    EXPECT_NE(c.evidence.find("TTL 1"), std::string::npos) << c.evidence;
    EXPECT_NE(c.evidence.find("5x dropped response reason IP_INHDR at ip_forward"), std::string::npos) << c.evidence;
    EXPECT_NE(c.evidence.find("1 hop behind"), std::string::npos) << c.evidence;
}

TEST(Classify, HopDropWithoutReasonOrOnIpv6) {
    // Kernels < 5.17: location only.
    auto t = pod_tx();
    t.drops.push_back(drop("", "ip_forward", 1, true));
    EXPECT_EQ(classify(t, kServer).verdict, Verdict::hop_limit_exceeded);
    auto t6 = pod_tx();
    t6.drops.push_back(drop("", "ip6_forward", 0, true));
    EXPECT_EQ(classify(t6, kServer).verdict, Verdict::hop_limit_exceeded);
    // Cilium: the datapath decrements and drops the low-TTL response in tc.
    auto tc = pod_tx();
    tc.drops.push_back(drop("TC_INGRESS", "tcf_classify", 1, true));
    EXPECT_EQ(classify(tc, kServer).verdict, Verdict::hop_limit_exceeded);
    // The same TC drop with TTL to spare is a policy.
    auto pol = pod_tx();
    pol.drops.push_back(drop("TC_INGRESS", "tcf_classify", 64, true));
    EXPECT_EQ(classify(pol, kServer).verdict, Verdict::blocked);
}

TEST(Classify, IcmpOnly) {
    auto t = pod_tx();
    t.icmp_time_exceeded = 2;
    auto c = classify(t, kServer);
    EXPECT_EQ(c.verdict, Verdict::hop_limit_exceeded);
    EXPECT_NE(c.evidence.find("2 ICMP time exceeded sent to 169.254.169.254:80"), std::string::npos) << c.evidence;
}

TEST(Classify, PredictedFromTtl) {
    auto t = pod_tx();
    t.response = HttpResponse{200};
    t.response_ttl_at_node = 1;
    t.response_at_uplink = true;
    auto c = classify(t, kServer);
    EXPECT_EQ(c.verdict, Verdict::hop_limit_exceeded);
    EXPECT_NE(c.evidence.find("never delivered"), std::string::npos) << c.evidence;

    // Not predicted when the client socket was never seen (outside the
    // traced cgroup): judged by the status seen at the uplink.
    t.seen_at_socket = false;
    t.ttl_sent.reset();
    auto u = classify(t, kServer);
    EXPECT_EQ(u.verdict, Verdict::ok);
    EXPECT_NE(u.evidence.find("seen at the uplink"), std::string::npos) << u.evidence;

    // TTL with room to spare: no prediction.
    auto ok = pod_tx();
    ok.response = HttpResponse{200};
    ok.response_ttl_at_node = 2;
    ok.response_at_uplink = true;
    EXPECT_EQ(classify(ok, kServer).verdict, Verdict::ok);
}

TEST(Classify, PolicyDrop) {
    auto t = pod_tx();
    t.drops.push_back(drop("NETFILTER_DROP", "nf_hook_slow", 63, false, 3));
    auto c = classify(t, kServer);
    EXPECT_EQ(c.verdict, Verdict::blocked);
    EXPECT_NE(c.evidence.find("NETFILTER_DROP"), std::string::npos) << c.evidence;
    for (auto d : {drop("BPF_CGROUP_EGRESS", "sk_filter_trim_cap", 64, false),
                   drop("", "nft_do_chain", 64, false), drop("", "nf_hook_slow", 63, false)}) {
        auto x = pod_tx();
        x.drops.push_back(d);
        EXPECT_EQ(classify(x, kServer).verdict, Verdict::blocked) << d.reason << " " << d.location;
    }
}

TEST(Classify, NoRoute) {
    for (const char* reason : {"IP_OUTNOROUTES", "IP_INNOROUTES", "IP6_INNOROUTES"}) {
        auto t = pod_tx();
        t.drops.push_back(drop(reason, "ip_route_output_key_hash", 63, false));
        auto c = classify(t, kServer);
        EXPECT_EQ(c.verdict, Verdict::no_route) << reason;
    }
}

TEST(Classify, OtherDrop) {
    auto t = pod_tx();
    t.drops.push_back(drop("QDISC_DROP", "__dev_queue_xmit", 63, false));
    auto c = classify(t, kServer);
    EXPECT_EQ(c.verdict, Verdict::dropped);
    EXPECT_NE(c.evidence.find("QDISC_DROP"), std::string::npos) << c.evidence;
}

TEST(Classify, TcpBookkeepingDropsAreIgnored) {
    for (auto d : {drop("TCP_OLD_DATA", "tcp_validate_incoming", 63, true),
                   drop("TCP_OFOMERGE", "tcp_data_queue", 63, true), drop("NO_SOCKET", "tcp_v4_rcv", 63, true),
                   drop("SOCKET_CLOSE", "tcp_rcv_state_process", 63, true), drop("", "tcp_v4_rcv", 63, true),
                   drop("QUEUE_PURGE", "sk_stream_kill_queues", 1, true),
                   // 6.1: a closing socket's queues freed without a specific reason
                   drop("NOT_SPECIFIED", "sk_stream_kill_queues", 1, true),
                   drop("NOT_SPECIFIED", "inet_csk_destroy_sock", 1, true)}) {
        EXPECT_TRUE(endpoint_bookkeeping(d)) << d.reason << " " << d.location;
        auto t = pod_tx();
        t.drops.push_back(d);
        EXPECT_EQ(classify(t, kServer).verdict, Verdict::no_response) << d.reason;
        auto r = pod_tx();
        r.drops.push_back(d);
        r.server_reset = true;
        EXPECT_EQ(classify(r, kServer).verdict, Verdict::refused) << d.reason;
    }
    EXPECT_FALSE(endpoint_bookkeeping(drop("IP_INHDR", "ip_forward", 1, true)));
    EXPECT_FALSE(endpoint_bookkeeping(drop("NETFILTER_DROP", "nf_hook_slow", 1, true)));
    EXPECT_FALSE(endpoint_bookkeeping(drop("NOT_SPECIFIED", "ip_forward", 1, true)));
    EXPECT_FALSE(endpoint_bookkeeping(drop("NOT_SPECIFIED", "__dev_queue_xmit", 64, false)));
}

TEST(Classify, ServerReset) {
    auto t = pod_tx();
    t.server_reset = true;
    auto c = classify(t, kServer);
    EXPECT_EQ(c.verdict, Verdict::refused);
    EXPECT_NE(c.evidence.find("reset by 169.254.169.254:80"), std::string::npos) << c.evidence;
}

TEST(Classify, NothingCameBack) {
    Transaction syn_only;
    syn_only.seen_at_socket = true;
    syn_only.ttl_sent = 64;
    syn_only.retransmits = 3;
    auto c = classify(syn_only, kServer);
    EXPECT_EQ(c.verdict, Verdict::no_response);
    EXPECT_NE(c.evidence.find("no SYN-ACK from 169.254.169.254:80, 3 retransmissions"), std::string::npos)
        << c.evidence;

    auto connected = pod_tx();
    auto d = classify(connected, kServer);
    EXPECT_EQ(d.verdict, Verdict::no_response);
    EXPECT_NE(d.evidence.find("no response to PUT /latest/api/token"), std::string::npos) << d.evidence;
}

TEST(HopFigures, FromBothTtls) {
    Transaction t;
    t.ttl_sent = 64;
    t.ttl_at_uplink = 62;  // nested: container inside a pod
    auto h = hop_figures(t);
    EXPECT_EQ(h.hops, 2);
    EXPECT_EQ(h.required_hop_limit, 3);
    EXPECT_FALSE(h.inferred);
}

TEST(HopFigures, InferredWhenCgroupTtlMissing) {
    struct Case {
        int uplink_ttl, hops;
    } cases[] = {{63, 1}, {62, 2}, {64, 0}, {127, 1}, {128, 0}, {254, 1}};
    for (auto c : cases) {
        Transaction t;
        t.ttl_at_uplink = static_cast<std::uint8_t>(c.uplink_ttl);
        auto h = hop_figures(t);
        EXPECT_EQ(h.hops, c.hops) << c.uplink_ttl;
        EXPECT_EQ(h.required_hop_limit, c.hops + 1) << c.uplink_ttl;
        EXPECT_TRUE(h.inferred);
    }
}

TEST(HopFigures, LocalSocketIsZeroHops) {
    Transaction t;
    t.local_socket_at_uplink = true;
    t.ttl_at_uplink = 64;
    auto h = hop_figures(t);
    EXPECT_EQ(h.hops, 0);
    EXPECT_EQ(h.required_hop_limit, 1);
    EXPECT_FALSE(h.inferred);

    // Seen at both hooks with the same TTL: 0, measured.
    Transaction both;
    both.ttl_sent = 64;
    both.ttl_at_uplink = 64;
    EXPECT_EQ(hop_figures(both).hops, 0);
    EXPECT_FALSE(hop_figures(both).inferred);
}

TEST(HopFigures, UnknownWithoutUplink) {
    Transaction t;
    t.ttl_sent = 64;
    auto h = hop_figures(t);
    EXPECT_FALSE(h.hops);
    EXPECT_FALSE(h.required_hop_limit);
}

TEST(Verdicts, NamesRoundTrip) {
    const char* names[] = {"OK",      "HOP_LIMIT_EXCEEDED", "TOKEN_REQUIRED", "TOKEN_INVALID",
                           "FORBIDDEN", "BAD_REQUEST",       "NOT_FOUND",      "BLOCKED",
                           "NO_ROUTE", "REFUSED",            "NO_RESPONSE",    "DROPPED"};
    for (const char* n : names) {
        auto v = verdict_from_string(n);
        ASSERT_TRUE(v) << n;
        EXPECT_EQ(to_string(*v), n);
    }
    EXPECT_FALSE(verdict_from_string("ok"));
    EXPECT_FALSE(verdict_from_string(""));
}

TEST(Verdicts, SeverityAndFailure) {
    EXPECT_EQ(severity(Verdict::ok), 0);
    EXPECT_LT(severity(Verdict::not_found), severity(Verdict::token_required));
    EXPECT_GT(severity(Verdict::hop_limit_exceeded), severity(Verdict::blocked));
    EXPECT_FALSE(is_failure(Verdict::ok));
    EXPECT_FALSE(is_failure(Verdict::not_found));
    for (auto v : {Verdict::hop_limit_exceeded, Verdict::token_required, Verdict::token_invalid, Verdict::forbidden,
                   Verdict::bad_request, Verdict::blocked, Verdict::no_route, Verdict::refused, Verdict::no_response,
                   Verdict::dropped})
        EXPECT_TRUE(is_failure(v)) << to_string(v);
}

}  // namespace
