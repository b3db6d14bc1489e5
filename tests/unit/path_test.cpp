// The path of a request (issue #11): who answered, where DNAT sent it, a
// proxy it went through, a connect() that never sent a packet.  Each decides
// the verdict's evidence and, above all, the fix: never IMDS's when IMDS
// never saw the request.
#include <gtest/gtest.h>

#include <string>

#include "sinks/json.hpp"
#include "verdict/diagnosis.hpp"
#include "verdict/verdict.hpp"

using namespace imdstrace;

namespace {

Endpoint ep(const char* text) { return *Endpoint::parse(text, 80); }

Transaction answered_403_after_dnat() {
    Transaction t;
    t.client_flow = {ep("198.18.1.11:40000"), ep("169.254.169.254:80")};
    t.seen_at_socket = true;
    t.opened_before_window = false;
    t.request = HttpRequest{.method = "PUT", .path = "/latest/api/token", .token_ttl = true, .headers_complete = true};
    t.response = HttpResponse{403};
    t.delivered = true;
    t.answered_on_node = LocalAnswer{ep("198.18.0.2:8181"), 7, ProcessInfo{4242, "kube2iam"}};
    t.redirected_to = ep("198.18.0.2:8181");
    return t;
}

TransactionRecord record_of(const Transaction& t, const char* pod) {
    TransactionRecord r;
    auto c = classify(t, t.client_flow.server.str());
    r.pod = PodInfo{.namespace_ = "default", .name = pod};
    r.client = t.client_flow.client;
    r.server = t.client_flow.server;
    r.request = t.request;
    if (t.response) r.status = t.response->status;
    r.verdict = c.verdict;
    r.evidence = c.evidence;
    r.drops = t.drops;
    r.answered_by = t.answered_on_node;
    r.redirected_to = t.redirected_to;
    r.via_proxy = t.via_proxy;
    r.connect_errno = t.connect_errno;
    return r;
}

TEST(Path, AnsweredOnTheNodeAfterDnat) {
    auto t = answered_403_after_dnat();
    auto c = classify(t, "169.254.169.254:80");
    EXPECT_EQ(c.verdict, Verdict::forbidden);
    EXPECT_NE(c.evidence.find("answered on this node by kube2iam (pid 4242) at 198.18.0.2:8181 after DNAT; the "
                              "request never reached the uplink"),
              std::string::npos)
        << c.evidence;
    DiagnosisBuilder b;
    b.add(record_of(t, "web"));
    auto d = b.build(1, {});
    ASSERT_EQ(d.findings.size(), 1u);
    EXPECT_NE(d.findings[0].fix.find("kube2iam (pid 4242) on this node answers"), std::string::npos) << d.findings[0].fix;
    EXPECT_EQ(d.findings[0].fix.find("http-endpoint"), std::string::npos) << "no IMDS setting: " << d.findings[0].fix;
}

// One verdict, two causes: the pod behind the proxy and the pod IMDS itself
// refused get separate findings, each with its own fix.
TEST(Path, OneVerdictTwoPathsTwoFindings) {
    auto intercepted = answered_403_after_dnat();
    auto direct = answered_403_after_dnat();
    direct.answered_on_node.reset();
    direct.redirected_to.reset();
    direct.response_at_uplink = true;
    DiagnosisBuilder b;
    b.add(record_of(intercepted, "behind-proxy"));
    b.add(record_of(direct, "direct"));
    auto d = b.build(1, {});
    ASSERT_EQ(d.findings.size(), 2u);
    for (const auto& f : d.findings) {
        ASSERT_EQ(f.pods.size(), 1u);
        const bool proxied = f.pods[0] == "default/behind-proxy";
        EXPECT_EQ(f.fix.find("http-endpoint") == std::string::npos, proxied) << f.pods[0] << ": " << f.fix;
    }
}

TEST(Path, ConnectFailuresBeforeAnyPacket) {
    struct Case {
        int err;
        Verdict verdict;
        const char* words;
        const char* fix;
    } cases[] = {
        {101, Verdict::no_route, "network unreachable", "AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE=IPv6"},
        {113, Verdict::no_route, "EHOSTUNREACH", "IPv4 route"},
        {13, Verdict::blocked, "prohibit", "ip route get"},
        {1, Verdict::blocked, "EPERM", "cgroup BPF connect program"},
        {99, Verdict::no_route, "EADDRNOTAVAIL", "source address"},
        {97, Verdict::no_route, "EAFNOSUPPORT", "IPv6 endpoint"},
        {22, Verdict::no_route, "blackhole", "blackhole"},
    };
    for (const auto& c : cases) {
        Transaction t;
        t.client_flow = {Endpoint{IpAddr{}, 0}, ep("169.254.169.254:80")};
        t.process = ProcessInfo{10, "app"};
        t.connect_errno = c.err;
        auto k = classify(t, "169.254.169.254:80");
        EXPECT_EQ(k.verdict, c.verdict) << c.err;
        EXPECT_NE(k.evidence.find("failed before any packet was sent"), std::string::npos) << k.evidence;
        EXPECT_NE(k.evidence.find(c.words), std::string::npos) << k.evidence;
        EXPECT_FALSE(k.hops.hops) << "no packet, no hops";
        DiagnosisBuilder b;
        b.add(record_of(t, "app"));
        auto d = b.build(1, {});
        ASSERT_EQ(d.findings.size(), 1u);
        EXPECT_NE(d.findings[0].fix.find(c.fix), std::string::npos) << c.err << ": " << d.findings[0].fix;
    }
}

TEST(Path, ResetByTheNodeAtTheDnatTarget) {
    Transaction t;
    t.client_flow = {ep("198.18.1.11:40000"), ep("169.254.169.254:80")};
    t.seen_at_socket = true;
    t.server_reset = true;
    t.redirected_to = ep("198.18.0.2:8181");
    DropRecord d;
    d.reason = "NO_SOCKET";
    d.location = "tcp_v4_rcv";
    d.count = 1;
    d.rewritten = ep("198.18.0.2:8181");
    t.drops.push_back(d);
    auto c = classify(t, "169.254.169.254:80");
    EXPECT_EQ(c.verdict, Verdict::refused);
    EXPECT_NE(c.evidence.find("the node itself reset the connection, not 169.254.169.254:80: nothing listens at "
                              "198.18.0.2:8181"),
              std::string::npos)
        << c.evidence;
    DiagnosisBuilder b;
    b.add(record_of(t, "web"));
    auto f = b.build(1, {}).findings.at(0);
    EXPECT_NE(f.fix.find("nothing listens there"), std::string::npos) << f.fix;
}

TEST(Path, JsonRoundTrip) {
    auto r = record_of(answered_403_after_dnat(), "web");
    r.via_proxy = ep("198.18.0.2:3128");
    r.connect_errno = 101;
    DropRecord d;
    d.reason = "NETFILTER_DROP";
    d.location = "nft_do_chain";
    d.rewritten = ep("198.18.0.2:8181");
    d.rewritten_to_node = true;
    d.count = 2;
    r.drops.push_back(d);
    auto back = record_from_json(to_json(r));
    ASSERT_TRUE(back.answered_by);
    EXPECT_EQ(back.answered_by->socket, ep("198.18.0.2:8181"));
    ASSERT_TRUE(back.answered_by->process);
    EXPECT_EQ(back.answered_by->process->comm, "kube2iam");
    EXPECT_EQ(back.redirected_to, ep("198.18.0.2:8181"));
    EXPECT_EQ(back.via_proxy, ep("198.18.0.2:3128"));
    EXPECT_EQ(back.connect_errno, 101);
    ASSERT_EQ(back.drops.size(), 1u);
    EXPECT_EQ(back.drops[0].rewritten, ep("198.18.0.2:8181"));
    EXPECT_TRUE(back.drops[0].rewritten_to_node);
}

}  // namespace
