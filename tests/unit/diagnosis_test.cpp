// DiagnosisBuilder: from judged transactions to per-pod verdicts, node facts,
// findings and the fix.
#include <gtest/gtest.h>

#include <random>
#include <string>

#include "sinks/escape.hpp"
#include "sinks/json.hpp"
#include "sinks/text.hpp"
#include "verdict/diagnosis.hpp"

using namespace imdstrace;

namespace {

PodInfo pod(std::string ns, std::string name) {
    PodInfo p;
    p.namespace_ = std::move(ns);
    p.name = std::move(name);
    p.uid = "uid-" + p.name;
    return p;
}

HttpRequest req(std::string method, std::string path, bool token = false) {
    HttpRequest r;
    r.method = std::move(method);
    r.path = std::move(path);
    r.token = token;
    r.token_ttl = r.method == "PUT";
    return r;
}

TransactionRecord rec(std::optional<PodInfo> p, const char* client, Verdict v, HttpRequest r) {
    TransactionRecord t;
    t.pod = std::move(p);
    t.client = *Endpoint::parse(client, 0);
    t.server = *Endpoint::parse("169.254.169.254:80", 0);
    t.request = std::move(r);
    t.verdict = v;
    t.evidence = std::string(to_string(v)) + " evidence";
    return t;
}

// A token PUT that ran out of hops: response TTL 1 at the node, pod `hops` away.
TransactionRecord hop_failure(std::optional<PodInfo> p, const char* client, int hops = 1, int ttl = 1) {
    auto t = rec(std::move(p), client, Verdict::hop_limit_exceeded, req("PUT", "/latest/api/token"));
    t.status = 200;  // the token was issued: its response was seen arriving at the uplink
    t.ttl_at_node = ttl;
    t.hops = hops;
    t.required_hop_limit = hops + 1;
    t.drops.push_back(DropRecord{"IP_INHDR", "ip_forward", 1, true, 3, 0, {}});
    t.icmp_time_exceeded = 2;
    t.retransmits = 2;
    return t;
}

TransactionRecord ok_get(std::optional<PodInfo> p, const char* client, bool token, int ttl = 64, int hops = 1) {
    auto t = rec(std::move(p), client, Verdict::ok, req("GET", "/latest/meta-data/mac", token));
    t.status = 200;
    t.ttl_at_node = ttl;
    t.hops = hops;
    t.required_hop_limit = hops + 1;
    return t;
}

const PodSummary* find_pod(const Diagnosis& d, const std::string& subject) {
    for (const auto& p : d.pods)
        if (p.subject == subject) return &p;
    return nullptr;
}

TEST(Diagnosis, HopLimitPerPodWithImdsV1Fallback) {
    DiagnosisBuilder b;
    auto alb = pod("kube-system", "aws-load-balancer-controller-6b7f9c");
    for (int i = 0; i < 3; ++i) b.add(hop_failure(alb, ("198.18.1.5:4312" + std::to_string(i)).c_str()));
    b.add(ok_get(alb, "198.18.1.5:43200", false));  // IMDSv1 still answers (default TTL)
    auto app = pod("default", "app");
    b.add(ok_get(app, "198.18.1.9:5000", true));
    auto host = rec(std::nullopt, "198.18.0.2:50000", Verdict::ok, req("PUT", "/latest/api/token"));
    host.cgroup = "/system.slice/kubelet.service";
    host.status = 200;
    host.ttl_at_node = 1;
    host.hops = 0;
    host.required_hop_limit = 1;
    b.add(host);

    auto d = b.build(30, {"169.254.169.254:80"});
    EXPECT_EQ(d.window_s, 30);
    EXPECT_EQ(d.transactions, 6);
    EXPECT_EQ(d.targets, std::vector<std::string>{"169.254.169.254:80"});
    ASSERT_TRUE(d.hop_limit_observed);
    EXPECT_EQ(*d.hop_limit_observed, 1);
    ASSERT_EQ(d.pods.size(), 3u);

    // Worst first.
    const auto& p = d.pods.front();
    EXPECT_EQ(p.subject, "kube-system/aws-load-balancer-controller-6b7f9c");
    ASSERT_TRUE(p.pod);
    EXPECT_EQ(p.pod->name, "aws-load-balancer-controller-6b7f9c");
    EXPECT_EQ(p.verdict, Verdict::hop_limit_exceeded);
    EXPECT_EQ(p.transactions, 4);
    EXPECT_EQ(p.verdicts.at(Verdict::hop_limit_exceeded), 3);
    EXPECT_EQ(p.verdicts.at(Verdict::ok), 1);
    EXPECT_EQ(p.hops, 1);
    EXPECT_EQ(p.required_hop_limit, 2);
    EXPECT_EQ(p.ips, std::set<std::string>{"198.18.1.5"});

    auto* h = find_pod(d, "cgroup:/system.slice/kubelet.service");
    ASSERT_NE(h, nullptr);
    EXPECT_FALSE(h->pod);
    EXPECT_EQ(h->cgroup, "/system.slice/kubelet.service");
    EXPECT_EQ(h->verdict, Verdict::ok);
    EXPECT_EQ(h->hops, 0);
    ASSERT_NE(find_pod(d, "default/app"), nullptr);
    EXPECT_EQ(find_pod(d, "default/app")->verdict, Verdict::ok);

    ASSERT_EQ(d.findings.size(), 1u);
    const auto& f = d.findings[0];
    EXPECT_EQ(f.verdict, Verdict::hop_limit_exceeded);
    EXPECT_EQ(f.pods, std::vector<std::string>{"kube-system/aws-load-balancer-controller-6b7f9c"});
    EXPECT_NE(f.evidence.find("3 transactions"), std::string::npos) << f.evidence;
    EXPECT_NE(f.evidence.find("TTL 1"), std::string::npos) << f.evidence;
    EXPECT_NE(f.evidence.find("hop limit 2"), std::string::npos) << f.evidence;
    EXPECT_NE(f.evidence.find("9 drops reason IP_INHDR at ip_forward (TTL 1)"), std::string::npos) << f.evidence;
    EXPECT_NE(f.evidence.find("6 ICMP time exceeded"), std::string::npos) << f.evidence;
    EXPECT_NE(f.evidence.find("IMDSv1"), std::string::npos) << f.evidence;
    EXPECT_NE(f.fix.find("httpPutResponseHopLimit: 2"), std::string::npos) << f.fix;
    EXPECT_NE(f.fix.find("--http-put-response-hop-limit 2"), std::string::npos) << f.fix;
    EXPECT_NE(f.fix.find("HttpPutResponseHopLimit = 2"), std::string::npos) << f.fix;
    EXPECT_TRUE(d.failing());
}

TEST(Diagnosis, NestedPodNeedsThree) {
    DiagnosisBuilder b;
    b.add(hop_failure(pod("ci", "dind-runner"), "198.18.2.7:40000", 2, 2));
    auto d = b.build(10, {});
    ASSERT_EQ(d.findings.size(), 1u);
    EXPECT_EQ(d.hop_limit_observed, 2);
    EXPECT_EQ(d.pods[0].required_hop_limit, 3);
    EXPECT_NE(d.findings[0].fix.find("httpPutResponseHopLimit: 3"), std::string::npos) << d.findings[0].fix;
    EXPECT_EQ(d.findings[0].evidence.find("IMDSv1"), std::string::npos) << d.findings[0].evidence;
}

TEST(Diagnosis, HopLimitObservedFromTokenResponsesOnly) {
    DiagnosisBuilder b;
    auto p = pod("default", "app");
    auto token = ok_get(p, "198.18.1.9:5000", false, 2);
    token.request = req("PUT", "/latest/api/token");
    b.add(token);
    b.add(ok_get(p, "198.18.1.9:5001", true, 1));  // a GET answered with a lower TTL
    auto d = b.build(1, {});
    ASSERT_TRUE(d.hop_limit_observed);
    EXPECT_EQ(*d.hop_limit_observed, 2);

    DiagnosisBuilder none;
    none.add(ok_get(p, "198.18.1.9:5001", true, 1));
    EXPECT_FALSE(none.build(1, {}).hop_limit_observed);
}

TEST(Diagnosis, WorstVerdictPerPodAndOneFindingPerVerdict) {
    DiagnosisBuilder b;
    auto p = pod("default", "legacy");
    auto q = pod("default", "other");
    auto nf = rec(p, "198.18.1.20:1", Verdict::not_found, req("GET", "/latest/meta-data/iam/info", true));
    nf.status = 404;
    b.add(nf);
    auto v1 = rec(p, "198.18.1.20:2", Verdict::token_required, req("GET", "/latest/meta-data/mac"));
    v1.status = 401;
    b.add(v1);
    b.add(rec(q, "198.18.1.21:2", Verdict::token_required, req("GET", "/latest/meta-data/mac")));
    auto d = b.build(1, {});
    ASSERT_EQ(d.pods.size(), 2u);
    EXPECT_EQ(find_pod(d, "default/legacy")->verdict, Verdict::token_required);
    ASSERT_EQ(d.findings.size(), 2u);
    EXPECT_EQ(d.findings[0].verdict, Verdict::token_required) << "worst first";
    EXPECT_EQ(d.findings[0].pods, (std::vector<std::string>{"default/legacy", "default/other"}));
    EXPECT_NE(d.findings[0].fix.find("IMDSv2"), std::string::npos);
    EXPECT_NE(d.findings[0].evidence.find("2 transactions"), std::string::npos);
    EXPECT_EQ(d.findings[1].verdict, Verdict::not_found);
    EXPECT_TRUE(d.failing());
}

TEST(Diagnosis, HealthyHasNoFindings) {
    DiagnosisBuilder b;
    b.add(ok_get(pod("default", "app"), "198.18.1.9:5000", true));
    b.add(ok_get(pod("default", "app"), "198.18.1.9:5001", true));
    auto d = b.build(30, {"169.254.169.254:80"});
    EXPECT_TRUE(d.findings.empty());
    EXPECT_FALSE(d.failing());
    ASSERT_EQ(d.pods.size(), 1u);
    EXPECT_EQ(d.pods[0].transactions, 2);
    EXPECT_EQ(d.pods[0].verdict, Verdict::ok);

    Diagnosis empty = DiagnosisBuilder{}.build(5, {});
    EXPECT_FALSE(empty.failing());
    EXPECT_TRUE(empty.pods.empty());
    EXPECT_EQ(empty.transactions, 0);
}

TEST(Diagnosis, NotFoundIsNotFailing) {
    DiagnosisBuilder b;
    auto nf = rec(pod("default", "app"), "198.18.1.9:5000", Verdict::not_found,
                  req("GET", "/latest/meta-data/iam/security-credentials/", true));
    nf.status = 404;
    b.add(nf);
    auto d = b.build(1, {});
    ASSERT_EQ(d.findings.size(), 1u);
    EXPECT_EQ(d.findings[0].verdict, Verdict::not_found);
    EXPECT_FALSE(d.failing());
}

TEST(Diagnosis, ExactHopsBeatInferred) {
    DiagnosisBuilder b;
    auto p = pod("default", "app");
    auto inferred = ok_get(p, "198.18.1.9:5000", true, 64, 3);
    inferred.hops_inferred = true;
    b.add(inferred);  // first, and larger
    b.add(ok_get(p, "198.18.1.9:5001", true, 64, 1));
    auto later = ok_get(p, "198.18.1.9:5002", true, 64, 5);
    later.hops_inferred = true;
    b.add(later);  // after an exact figure: ignored
    auto d = b.build(1, {});
    ASSERT_EQ(d.pods.size(), 1u);
    EXPECT_EQ(d.pods[0].hops, 1);
    EXPECT_EQ(d.pods[0].required_hop_limit, 2);

    DiagnosisBuilder only_inferred;
    only_inferred.add(inferred);
    only_inferred.add(later);
    EXPECT_EQ(only_inferred.build(1, {}).pods[0].hops, 5);
}

TEST(Diagnosis, GenericFindingsCarryTheirFix) {
    struct Case {
        Verdict v;
        const char* in_fix;
    } cases[] = {
        {Verdict::token_invalid, "fetch a new token"},
        {Verdict::forbidden, "X-Forwarded-For"},
        {Verdict::bad_request, "ttl-seconds"},
        {Verdict::blocked, "nf_hook_slow"},
        {Verdict::no_route, "ip route get"},
        {Verdict::refused, "reset"},
        {Verdict::no_response, "throttles"},
        {Verdict::dropped, "nf_hook_slow"},
    };
    for (const auto& c : cases) {
        DiagnosisBuilder b;
        auto r = rec(pod("default", "app"), "198.18.1.9:5000", c.v, req("GET", "/latest/meta-data/mac", true));
        r.drops.push_back(DropRecord{"NETFILTER_DROP", "nf_hook_slow", 63, false, 4, 0, {}});
        b.add(r);
        auto d = b.build(1, {});
        ASSERT_EQ(d.findings.size(), 1u) << to_string(c.v);
        EXPECT_EQ(d.findings[0].verdict, c.v);
        EXPECT_NE(d.findings[0].fix.find(c.in_fix), std::string::npos) << to_string(c.v) << ": " << d.findings[0].fix;
        EXPECT_NE(d.findings[0].evidence.find("4 drops reason NETFILTER_DROP"), std::string::npos)
            << d.findings[0].evidence;
        EXPECT_TRUE(d.failing());
    }
}

TEST(Diagnosis, SubjectFallsBackToCgroupThenClient) {
    auto r = rec(std::nullopt, "198.18.0.2:1", Verdict::ok, req("GET", "/"));
    EXPECT_EQ(r.subject(), "client:198.18.0.2");
    r.cgroup = "/system.slice/x.service";
    EXPECT_EQ(r.subject(), "cgroup:/system.slice/x.service");
    r.pod = pod("a", "b");
    EXPECT_EQ(r.subject(), "a/b");
}

}  // namespace

// A pod that only made IMDSv1 GETs (answered with the default TTL) sits
// beyond the hop limit other clients' token responses reveal: warned
// before it fails, with the fix, while the node is still healthy.
TEST(Diagnosis, WarnsAboutPodsBeyondTheHopBudget) {
    DiagnosisBuilder b;
    auto host_token = rec(std::nullopt, "198.18.0.2:40000", Verdict::ok, req("PUT", "/latest/api/token"));
    host_token.status = 200;
    host_token.ttl_at_node = 1;
    host_token.hops = 0;
    host_token.required_hop_limit = 1;
    host_token.cgroup = "/system.slice/kubelet.service";
    b.add(host_token);
    b.add(ok_get(pod("ci", "runner"), "198.19.1.2:40001", false, 64, 2));
    b.add(ok_get(pod("default", "web"), "198.18.1.11:40002", false, 64, 0));
    auto d = b.build(30, {"169.254.169.254:80"});
    EXPECT_FALSE(d.failing());
    EXPECT_TRUE(d.findings.empty());
    ASSERT_EQ(d.warnings.size(), 1u);
    EXPECT_EQ(d.warnings[0].pods, std::vector<std::string>{"ci/runner"});
    EXPECT_NE(d.warnings[0].message.find("node's hop limit is 1"), std::string::npos) << d.warnings[0].message;
    EXPECT_NE(d.warnings[0].fix.find("httpPutResponseHopLimit: 3"), std::string::npos) << d.warnings[0].fix;
}

TEST(Diagnosis, NoWarningWithoutAnObservedHopLimit) {
    DiagnosisBuilder b;
    b.add(ok_get(pod("ci", "runner"), "198.19.1.2:40001", false, 64, 2));
    EXPECT_TRUE(b.build(30, {}).warnings.empty());
}

namespace {

// After the fix: leftovers of connections opened at hop limit 1 are set
// aside; the connections opened in the window decide, and no figure mixes
// one connection's TTL with another's hops.
TEST(Diagnosis, ConnectionsOpenedBeforeTracingAreSetAside) {
    DiagnosisBuilder b;
    auto p = pod("kube-system", "aws-load-balancer-controller");
    auto stale = hop_failure(p, "198.18.1.11:40000", 1, 1);
    stale.opened_before_tracing = true;
    b.add(stale);
    b.add(stale);
    auto fresh = rec(p, "198.18.1.11:40002", Verdict::ok, req("PUT", "/latest/api/token"));
    fresh.status = 200;
    fresh.ttl_at_node = 2;
    fresh.hops = 1;
    fresh.required_hop_limit = 2;
    b.add(fresh);
    auto d = b.build(10, {});
    EXPECT_FALSE(d.failing());
    EXPECT_TRUE(d.findings.empty());
    ASSERT_EQ(d.pods.size(), 1u);
    EXPECT_EQ(d.pods[0].verdict, Verdict::ok);
    EXPECT_EQ(d.pods[0].transactions, 1);
    EXPECT_EQ(d.hop_limit_observed, 2);
    EXPECT_EQ(d.transactions, 1);
    EXPECT_EQ(d.set_aside.opened_before_tracing, 2u);
    ASSERT_EQ(d.set_aside.opened_before_tracing_drops.size(), 1u);
    EXPECT_EQ(d.set_aside.opened_before_tracing_drops.begin()->second, 6u);
    EXPECT_NE(d.set_aside.opened_before_tracing_drops.begin()->first.find("ip_forward"), std::string::npos);
}

TEST(Diagnosis, RequiredHopLimitFromEachConnectionsOwnEvidence) {
    DiagnosisBuilder b;
    // Another client's token response arrived with TTL 2 (not this pod's).
    auto other = rec(pod("default", "web"), "198.18.1.20:1", Verdict::ok, req("PUT", "/latest/api/token"));
    other.status = 200;
    other.ttl_at_node = 2;
    other.hops = 1;
    other.required_hop_limit = 2;
    b.add(other);
    // This pod's failure, 1 hop away with TTL 1 on its own connection: needs 2, not 3.
    b.add(hop_failure(pod("kube-system", "alb"), "198.18.1.11:2", 1, 1));
    auto d = b.build(10, {});
    ASSERT_EQ(d.findings.size(), 1u);
    EXPECT_NE(d.findings[0].fix.find("httpPutResponseHopLimit: 2"), std::string::npos) << d.findings[0].fix;
    EXPECT_EQ(d.findings[0].fix.find("httpPutResponseHopLimit: 3"), std::string::npos) << d.findings[0].fix;
}

TEST(Diagnosis, NoMeasuredDistanceNoNumberInTheFix) {
    DiagnosisBuilder b;
    auto t = hop_failure(pod("kube-system", "alb"), "198.18.1.11:2", 1, 1);
    t.hops.reset();
    t.required_hop_limit.reset();
    b.add(t);
    auto d = b.build(10, {});
    ASSERT_EQ(d.findings.size(), 1u);
    EXPECT_EQ(d.findings[0].fix.find("httpPutResponseHopLimit: "), std::string::npos) << d.findings[0].fix;
    EXPECT_NE(d.findings[0].fix.find("could not measure"), std::string::npos) << d.findings[0].fix;
}

TEST(Diagnosis, OnlyATokenGrantTellsTheHopLimit) {
    DiagnosisBuilder b;
    // PUT with X-Forwarded-For: IMDS answers 403 with the default TTL.
    auto xff = rec(std::nullopt, "198.18.0.2:1", Verdict::forbidden, req("PUT", "/latest/api/token"));
    xff.status = 403;
    xff.ttl_at_node = 64;
    b.add(xff);
    auto d = b.build(1, {});
    EXPECT_FALSE(d.hop_limit_observed);
}

TEST(Diagnosis, IncompleteWithOnlyAbsenceIsNoVerdict) {
    DiagnosisBuilder b;
    auto t = rec(pod("a", "b"), "198.18.1.5:1", Verdict::no_response, req("PUT", "/latest/api/token"));
    t.incomplete = true;
    b.add(t);
    b.add_session_counts(3, 4, 17);
    auto d = b.build(1, {});
    EXPECT_FALSE(d.failing());
    EXPECT_TRUE(d.pods.empty());
    EXPECT_EQ(d.set_aside.incomplete, 1u);
    EXPECT_EQ(d.set_aside.other_namespaces, 3u);
    EXPECT_EQ(d.set_aside.socket_bookkeeping, 4u);
    EXPECT_EQ(d.set_aside.events_lost, 17u);
}

// A row never says more of its transactions were incomplete than it has: the
// ones set aside (absence only) are counted apart, not in TX.
TEST(Diagnosis, IncompleteCountsKeepJudgedAndSetAsideApart) {
    DiagnosisBuilder b;
    auto judged = rec(pod("a", "b"), "198.18.1.5:1", Verdict::ok, req("GET", "/latest/meta-data/mac"));
    judged.incomplete = true;
    judged.events_lost = 5;
    b.add(judged);
    b.add(rec(pod("a", "b"), "198.18.1.5:2", Verdict::ok, req("GET", "/latest/meta-data/mac")));
    for (const char* c : {"198.18.1.5:3", "198.18.1.5:4", "198.18.1.5:5"}) {
        auto aside = rec(pod("a", "b"), c, Verdict::no_response, req("PUT", "/latest/api/token"));
        aside.incomplete = true;
        aside.events_lost = 5;
        b.add(aside);
    }
    auto d = b.build(1, {});
    ASSERT_EQ(d.pods.size(), 1u);
    EXPECT_EQ(d.pods[0].transactions, 2);
    EXPECT_EQ(d.pods[0].incomplete, 1);
    EXPECT_EQ(d.pods[0].incomplete_set_aside, 3);
    EXPECT_EQ(d.set_aside.incomplete, 3u);
    EXPECT_EQ(d.set_aside.incomplete_pods.at("a/b"), 4u);
    auto text = format_diagnosis(d);
    EXPECT_NE(text.find("1 of these open while events were lost; 3 more open then with no evidence, set aside"),
              std::string::npos)
        << text;
}

// A report over files that do not hold the whole window never says "Healthy".
TEST(Diagnosis, PartialFilesAreNeverHealthy) {
    DiagnosisBuilder b;
    b.add(rec(pod("a", "b"), "198.18.1.5:1", Verdict::ok, req("GET", "/latest/meta-data/mac")));
    auto d = b.build(10, {});
    EXPECT_NE(format_diagnosis(d).find("Healthy"), std::string::npos);
    d.partial = "events.jsonl.2 continues a file that was rotated away";
    auto text = format_diagnosis(d);
    EXPECT_EQ(text.find("Healthy"), std::string::npos) << text;
    EXPECT_NE(text.find("PARTIAL: events.jsonl.2 continues a file that was rotated away"), std::string::npos) << text;
    EXPECT_NE(text.find("partial, not healthy"), std::string::npos) << text;
}

// Repeats are counted, not kept: the diagnosis of a long window of the same
// traffic costs what one of each kind costs.
TEST(Diagnosis, RepeatsAreCountedNotKept) {
    DiagnosisBuilder b;
    for (int i = 0; i < 100000; ++i) {
        auto t = ok_get(pod("a", "b"), "198.18.1.5:1", i % 2 == 0);
        t.client.port = static_cast<std::uint16_t>(1024 + i % 60000);
        t.wall_ms = 1'000'000 + i;
        t.duration_ms = i % 7;
        b.add(t);
        if (i % 10 == 0) {
            auto f = hop_failure(pod("a", "c"), "198.18.1.6:1");
            f.client.port = static_cast<std::uint16_t>(1024 + i % 60000);
            b.add(f);
        }
    }
    EXPECT_LE(b.records().size(), 3u) << "two kinds of GET and one failure";
    EXPECT_EQ(b.transactions(), 110000u);
    auto d = b.build(60, {});
    EXPECT_EQ(d.transactions, 110000);
    ASSERT_EQ(d.findings.size(), 1u);
    EXPECT_NE(d.findings[0].evidence.find("10000 transactions"), std::string::npos) << d.findings[0].evidence;
    EXPECT_NE(d.findings[0].evidence.find("30000 drops reason IP_INHDR"), std::string::npos) << d.findings[0].evidence;
    EXPECT_NE(d.findings[0].evidence.find("20000 ICMP"), std::string::npos) << d.findings[0].evidence;
    const auto* p = find_pod(d, "a/b");
    ASSERT_NE(p, nullptr);
    EXPECT_EQ(p->transactions, 100000);
    EXPECT_EQ(p->verdicts.at(Verdict::ok), 100000);
}

// Folding changes nothing a user sees: random mixes of every kind of record,
// diagnosed with and without it, print the same text and the same JSON.
TEST(Diagnosis, FoldingRepeatsChangesNothingPrinted) {
    std::mt19937 rng(20261130);
    auto pick = [&rng](int n) { return static_cast<int>(rng() % static_cast<unsigned>(n)); };
    std::size_t folded_total = 0, kept_total = 0;
    for (int round = 0; round < 40; ++round) {
        DiagnosisBuilder folded, kept(false);
        const int n = 50 + pick(400);
        for (int i = 0; i < n; ++i) {
            std::optional<PodInfo> who;
            if (int k = pick(5); k < 3) who = pod("ns" + std::to_string(k % 2), "p" + std::to_string(k));
            if (who && pick(4) == 0) who->container = "c" + std::to_string(pick(2));
            std::string client = "198.18.1." + std::to_string(5 + pick(3)) + ":" + std::to_string(1000 + i);
            TransactionRecord t;
            switch (pick(6)) {
            case 0: t = hop_failure(who, client.c_str(), 1 + pick(2), 1 + pick(2)); break;
            case 1: t = ok_get(who, client.c_str(), pick(2) == 0, 1 + pick(64), 1 + pick(2)); break;
            case 2: {
                t = rec(who, client.c_str(), Verdict::ok, req("PUT", "/latest/api/token"));
                t.status = 200;
                t.ttl_at_node = 1 + pick(3);
                t.hops = pick(3);
                t.hops_inferred = pick(2) == 0;
                break;
            }
            case 3: {
                const Verdict vs[] = {Verdict::token_required, Verdict::forbidden, Verdict::no_response,
                                      Verdict::refused, Verdict::dropped, Verdict::not_found};
                t = rec(who, client.c_str(), vs[pick(6)], req("GET", "/latest/meta-data/iam/info", pick(2) == 0));
                if (pick(3) == 0) t.drops.push_back(DropRecord{"NETFILTER_DROP", "nf_hook_slow", 63, false,
                                                               static_cast<std::uint32_t>(1 + pick(3)), 0, {}});
                if (pick(4) == 0) t.redirected_to = Endpoint::parse("198.18.0.2:8181", 0);
                if (pick(5) == 0) t.reached_uplink = false;
                t.evidence = "evidence " + std::to_string(pick(3));
                break;
            }
            case 4: {
                t = rec(who, client.c_str(), Verdict::ok, req("GET", "/latest/meta-data/mac"));
                t.incomplete = true;
                t.events_lost = static_cast<std::uint64_t>(1 + pick(9));
                break;
            }
            default: {
                t = rec(who, client.c_str(), Verdict::no_response, req("PUT", "/latest/api/token"));
                t.incomplete = pick(2) == 0;
                t.events_lost = static_cast<std::uint64_t>(pick(3));
                t.target_on_node = pick(3) == 0;
            }
            }
            if (!who && pick(2) == 0) t.cgroup = "/host" + std::to_string(pick(2));
            t.wall_ms = 1'000'000 + i * 10;
            t.duration_ms = pick(1000);
            t.retransmits = static_cast<std::uint32_t>(pick(3));
            folded.add(t);
            kept.add(t);
        }
        const auto a = folded.build(30, {"169.254.169.254:80"});
        const auto b = kept.build(30, {"169.254.169.254:80"});
        EXPECT_EQ(format_diagnosis(a), format_diagnosis(b)) << "round " << round;
        EXPECT_EQ(dump_json(to_json(a)), dump_json(to_json(b))) << "round " << round;
        folded_total += folded.records().size();
        kept_total += kept.records().size();
    }
    EXPECT_LT(folded_total, kept_total * 9 / 10) << "the mixes repeat: some records fold";
}

// The minute after the fix, with events lost: IMDS still retransmits the TTL-1
// answers of connections made before tracing (and before the fix).  First
// seen just after a loss, they might be new connections whose SYN was lost;
// nothing tells which, so they judge nothing (a HOP_LIMIT_EXCEEDED with
// "raise to 2" on a node already at 2 was printed).
TEST(Diagnosis, OpeningUnseenWhileEventsWereLostJudgesNothing) {
    DiagnosisBuilder b;
    auto old = hop_failure(pod("a", "b"), "198.18.1.5:40000", 1, 1);
    old.incomplete = true;
    old.events_lost = 1543;
    old.opening_unseen = true;
    b.add(old);
    auto put = rec(std::nullopt, "198.18.0.2:1", Verdict::ok, req("PUT", "/latest/api/token"));
    put.status = 200;
    put.ttl_at_node = 2;
    put.hops = 0;
    b.add(put);
    b.add_session_counts(0, 0, 1543);
    auto d = b.build(10, {});
    EXPECT_FALSE(d.failing());
    EXPECT_TRUE(d.findings.empty());
    EXPECT_EQ(d.hop_limit_observed, 2);
    EXPECT_EQ(d.set_aside.opening_unseen, 1u);
    EXPECT_EQ(find_pod(d, "a/b"), nullptr) << "no row judged from it";
    EXPECT_EQ(d.set_aside.incomplete_pods.at("a/b"), 1u) << "but the pod is named among those the loss touches";
    auto text = format_diagnosis(d);
    EXPECT_NE(text.find("whose opening was not seen while events were lost"), std::string::npos) << text;
    EXPECT_NE(text.find("3 responses at ip_forward, reason IP_INHDR (TTL 1)"), std::string::npos) << text;
    EXPECT_EQ(text.find("the hop limit was lower"), std::string::npos) << "said of old connections only";
    // It survives the JSON round trip (report says what the live run said).
    auto back = record_from_json(to_json(old));
    EXPECT_TRUE(back.opening_unseen);
    EXPECT_EQ(set_aside_reason(back), set_aside_reason(old));
    // JSON keeps what its own evidence says, and why it counts for nothing.
    EXPECT_EQ(to_json(old)["verdict"], "HOP_LIMIT_EXCEEDED");
    EXPECT_TRUE(to_json(old).contains("set_aside"));
}

// "The hop limit was lower when they were opened" only when a higher one is
// seen now: at hop limit 1 all along, old connections' TTL-1 drops say
// nothing about a change (it sat beside "Healthy" and read like "fixed").
TEST(Diagnosis, OldConnectionsSayTheHopLimitChangedOnlyWhenItDid) {
    auto old = hop_failure(pod("a", "b"), "198.18.1.5:40000", 1, 1);
    old.opened_before_tracing = true;
    old.drops[0].count = 1;
    auto put = [](int ttl) {
        auto t = rec(std::nullopt, "198.18.0.2:1", Verdict::ok, req("PUT", "/latest/api/token"));
        t.status = 200;
        t.ttl_at_node = ttl;
        t.hops = 0;
        return t;
    };
    for (int now : {1, 2}) {
        DiagnosisBuilder b;
        b.add(old);
        b.add(put(now));
        auto text = format_diagnosis(b.build(10, {}));
        EXPECT_NE(text.find("the kernel dropped 1 response at ip_forward, reason IP_INHDR (TTL 1)"), std::string::npos)
            << text;
        EXPECT_EQ(text.find("the hop limit was lower when they were opened (it is 2 now)") != std::string::npos,
                  now == 2)
            << text;
    }
}

// Only a response carries the hop limit (IMDS sets its TTL): an old
// connection's *request* dropped at TTL 1 says nothing about what the hop
// limit was.
TEST(Diagnosis, OldConnectionsRequestDropsSayNothingOfTheHopLimit) {
    auto old = hop_failure(pod("a", "b"), "198.18.1.5:40000", 1, 1);
    old.opened_before_tracing = true;
    old.drops[0].count = 1;
    old.drops[0].response = false;
    auto now = rec(std::nullopt, "198.18.0.2:1", Verdict::ok, req("PUT", "/latest/api/token"));
    now.status = 200;
    now.ttl_at_node = 2;
    now.hops = 0;
    DiagnosisBuilder b;
    b.add(old);
    b.add(now);
    auto text = format_diagnosis(b.build(10, {}));
    EXPECT_NE(text.find("the kernel dropped 1 request at ip_forward"), std::string::npos) << text;
    EXPECT_EQ(text.find("the hop limit was lower"), std::string::npos) << text;
}

TEST(Diagnosis, NodeLocalAgentFixNamesTheAgentNotImds) {
    DiagnosisBuilder b;
    auto t = rec(pod("a", "b"), "198.18.1.5:1", Verdict::no_response, req("GET", "/v1/credentials"));
    t.server = *Endpoint::parse("169.254.170.23:80", 0);
    t.target_on_node = true;
    b.add(t);
    auto d = b.build(1, {});
    ASSERT_EQ(d.findings.size(), 1u);
    EXPECT_NE(d.findings[0].fix.find("agent on this node"), std::string::npos) << d.findings[0].fix;
    EXPECT_EQ(d.findings[0].fix.find("throttle"), std::string::npos) << d.findings[0].fix;
}

}  // namespace
