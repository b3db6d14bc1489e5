// The JSON contracts (DESIGN.md): transaction lines and the diagnosis document.
#include <gtest/gtest.h>

#include <string>

#include "sinks/json.hpp"
#include "sinks/text.hpp"

using namespace imdstrace;
using nlohmann::json;

namespace {

TransactionRecord sample() {
    TransactionRecord r;
    r.wall_ms = 1795730400123;  // 2026-11-26T22:00:00.123Z
    PodInfo p;
    p.namespace_ = "kube-system";
    p.name = "aws-load-balancer-controller-5d8f";
    p.uid = "0b6c7f3e-1111-2222-3333-444455556666";
    p.container = "controller";
    r.pod = p;
    r.cgroup = "/kubepods.slice/kubepods-pod0b6c.slice/cri-containerd-abc.scope";
    r.process = ProcessInfo{1234, "controller"};
    r.client = *Endpoint::parse("198.18.1.5:43122", 0);
    r.server = *Endpoint::parse("169.254.169.254:80", 0);
    HttpRequest q;
    q.method = "PUT";
    q.path = "/latest/api/token";
    q.token_ttl = true;
    r.request = q;
    r.status = 200;
    r.ttl_at_node = 1;
    r.hops = 1;
    r.required_hop_limit = 2;
    r.verdict = Verdict::hop_limit_exceeded;
    r.evidence = "response reached the node with TTL 1";
    r.drops.push_back(DropRecord{"IP_INHDR", "ip_forward", 1, true, 5, 0, {}});
    r.drops.push_back(DropRecord{"", "nf_hook_slow", 63, false, 1, 0, {}});
    r.icmp_time_exceeded = 2;
    r.retransmits = 5;
    r.duration_ms = 7012;
    return r;
}

void expect_same(const TransactionRecord& a, const TransactionRecord& b) {
    EXPECT_EQ(a.wall_ms, b.wall_ms);
    ASSERT_EQ(a.pod.has_value(), b.pod.has_value());
    if (a.pod) {
        EXPECT_EQ(a.pod->namespace_, b.pod->namespace_);
        EXPECT_EQ(a.pod->name, b.pod->name);
        EXPECT_EQ(a.pod->uid, b.pod->uid);
        EXPECT_EQ(a.pod->container, b.pod->container);
    }
    EXPECT_EQ(a.cgroup, b.cgroup);
    ASSERT_EQ(a.process.has_value(), b.process.has_value());
    if (a.process) {
        EXPECT_EQ(a.process->pid, b.process->pid);
        EXPECT_EQ(a.process->comm, b.process->comm);
    }
    EXPECT_EQ(a.client, b.client);
    EXPECT_EQ(a.server, b.server);
    ASSERT_EQ(a.request.has_value(), b.request.has_value());
    if (a.request) {
        EXPECT_EQ(a.request->method, b.request->method);
        EXPECT_EQ(a.request->path, b.request->path);
        EXPECT_EQ(a.request->token, b.request->token);
        EXPECT_EQ(a.request->token_ttl, b.request->token_ttl);
        EXPECT_EQ(a.request->forwarded_for, b.request->forwarded_for);
    }
    EXPECT_EQ(a.status, b.status);
    EXPECT_EQ(a.ttl_at_node, b.ttl_at_node);
    EXPECT_EQ(a.hops, b.hops);
    EXPECT_EQ(a.hops_inferred, b.hops_inferred);
    EXPECT_EQ(a.required_hop_limit, b.required_hop_limit);
    EXPECT_EQ(a.verdict, b.verdict);
    EXPECT_EQ(a.evidence, b.evidence);
    ASSERT_EQ(a.drops.size(), b.drops.size());
    for (std::size_t i = 0; i < a.drops.size(); ++i) {
        EXPECT_EQ(a.drops[i].reason, b.drops[i].reason);
        EXPECT_EQ(a.drops[i].location, b.drops[i].location);
        EXPECT_EQ(a.drops[i].ttl, b.drops[i].ttl);
        EXPECT_EQ(a.drops[i].response, b.drops[i].response);
        EXPECT_EQ(a.drops[i].count, b.drops[i].count);
    }
    EXPECT_EQ(a.icmp_time_exceeded, b.icmp_time_exceeded);
    EXPECT_EQ(a.retransmits, b.retransmits);
    EXPECT_EQ(a.duration_ms, b.duration_ms);
}

TEST(TransactionJson, HasEveryContractField) {
    auto j = to_json(sample());
    EXPECT_EQ(j["schema"], "imdstrace.transaction/v1");
    EXPECT_EQ(j["ts"], "2026-11-26T22:00:00.123Z");
    ASSERT_TRUE(j["pod"].is_object());
    EXPECT_EQ(j["pod"]["namespace"], "kube-system");
    EXPECT_EQ(j["pod"]["name"], "aws-load-balancer-controller-5d8f");
    EXPECT_EQ(j["pod"]["uid"], "0b6c7f3e-1111-2222-3333-444455556666");
    EXPECT_EQ(j["pod"]["container"], "controller");
    EXPECT_EQ(j["process"]["pid"], 1234);
    EXPECT_EQ(j["process"]["comm"], "controller");
    EXPECT_EQ(j["client"], "198.18.1.5:43122");
    EXPECT_EQ(j["server"], "169.254.169.254:80");
    EXPECT_EQ(j["family"], "ipv4");
    EXPECT_EQ(j["request"]["method"], "PUT");
    EXPECT_EQ(j["request"]["path"], "/latest/api/token");
    EXPECT_EQ(j["request"]["token"], false);
    EXPECT_EQ(j["response"]["status"], 200);
    EXPECT_EQ(j["response"]["ttl_at_node"], 1);
    EXPECT_EQ(j["hops"], 1);
    EXPECT_EQ(j["required_hop_limit"], 2);
    EXPECT_EQ(j["verdict"], "HOP_LIMIT_EXCEEDED");
    ASSERT_TRUE(j["drops"].is_array());
    ASSERT_EQ(j["drops"].size(), 2u);
    EXPECT_EQ(j["drops"][0]["reason"], "IP_INHDR");
    EXPECT_EQ(j["drops"][0]["location"], "ip_forward");
    EXPECT_EQ(j["drops"][0]["ttl"], 1);
    EXPECT_EQ(j["drops"][0]["count"], 5);
    EXPECT_TRUE(j["drops"][1]["reason"].is_null()) << "no reason: null, not an empty string";
    EXPECT_EQ(j["icmp_time_exceeded"], 2);
    EXPECT_EQ(j["retransmits"], 5);
    EXPECT_EQ(j["duration_ms"], 7012);
}

TEST(TransactionJson, NullsWhenUnknown) {
    TransactionRecord r;
    r.client = *Endpoint::parse("[fd00:198:18::5]:50000", 0);
    r.server = *Endpoint::parse("[fd00:ec2::254]:80", 0);
    r.cgroup = "/system.slice/kubelet.service";
    r.verdict = Verdict::no_response;
    auto j = to_json(r);
    EXPECT_TRUE(j["pod"].is_null());
    EXPECT_EQ(j["cgroup"], "/system.slice/kubelet.service") << "a process outside pods shows its cgroup";
    EXPECT_FALSE(j.contains("process"));
    EXPECT_EQ(j["family"], "ipv6");
    EXPECT_EQ(j["client"], "[fd00:198:18::5]:50000");
    EXPECT_EQ(j["server"], "[fd00:ec2::254]:80");
    EXPECT_TRUE(j["request"].is_null());
    EXPECT_TRUE(j["response"]["status"].is_null());
    EXPECT_TRUE(j["response"]["ttl_at_node"].is_null());
    EXPECT_TRUE(j["hops"].is_null());
    EXPECT_TRUE(j["required_hop_limit"].is_null());
    EXPECT_TRUE(j["drops"].is_array());
    EXPECT_TRUE(j["drops"].empty());
    expect_same(r, record_from_json(j));
}

TEST(TransactionJson, RoundTrip) {
    auto r = sample();
    expect_same(r, record_from_json(to_json(r)));
    // Through text, as `report` reads a JSONL file.
    expect_same(r, record_from_json(json::parse(to_json(r).dump())));

    auto x = sample();
    x.pod.reset();
    x.process.reset();
    x.request->token = true;
    x.request->forwarded_for = true;
    x.hops_inferred = true;
    x.status.reset();
    expect_same(x, record_from_json(to_json(x)));
}

TEST(TransactionJson, NeverCarriesSecrets) {
    // Nothing in the record can hold a header value; make sure the JSON has
    // no field that could (a "headers" object, a body).
    auto j = to_json(sample());
    EXPECT_FALSE(j.contains("headers"));
    EXPECT_FALSE(j.contains("body"));
    EXPECT_FALSE(j["request"].contains("headers"));
    EXPECT_FALSE(j["response"].contains("body"));
}

TEST(TransactionJson, ErrorsNameTheField) {
    const auto good = to_json(sample());
    for (const char* key : {"schema", "ts", "pod", "client", "server", "request", "response", "verdict", "drops"}) {
        auto j = good;
        j.erase(key);
        try {
            record_from_json(j);
            ADD_FAILURE() << "accepted a record without " << key;
        } catch (const std::runtime_error& e) {
            EXPECT_NE(std::string(e.what()).find(key), std::string::npos) << e.what();
        }
    }
    auto bad_schema = good;
    bad_schema["schema"] = "imdstrace.transaction/v0";
    EXPECT_THROW(record_from_json(bad_schema), std::runtime_error);
    auto bad_ts = good;
    bad_ts["ts"] = "yesterday";
    EXPECT_THROW(record_from_json(bad_ts), std::runtime_error);
    auto bad_client = good;
    bad_client["client"] = "not-an-address";
    EXPECT_THROW(record_from_json(bad_client), std::runtime_error);
    auto bad_verdict = good;
    bad_verdict["verdict"] = "MAYBE";
    EXPECT_THROW(record_from_json(bad_verdict), std::runtime_error);
}

TEST(Iso8601, RoundTrip) {
    EXPECT_EQ(iso8601_ms(0), "1970-01-01T00:00:00.000Z");
    EXPECT_EQ(iso8601_ms(1795730400123), "2026-11-26T22:00:00.123Z");
    EXPECT_EQ(iso8601_ms(951782400999), "2000-02-29T00:00:00.999Z");
    for (std::int64_t ms : {0LL, 1LL, 999LL, 1000LL, 951782400999LL, 1795730400123LL, 4102444799999LL})
        EXPECT_EQ(parse_iso8601_ms(iso8601_ms(ms)), ms) << ms;
    EXPECT_FALSE(parse_iso8601_ms(""));
    EXPECT_FALSE(parse_iso8601_ms("garbage"));
    EXPECT_FALSE(parse_iso8601_ms("2026-11-26 22:00:00.123"));
}

Diagnosis sample_diagnosis() {
    DiagnosisBuilder b;
    b.add(sample());
    auto ok = sample();
    ok.pod.reset();
    ok.cgroup = "/system.slice/kubelet.service";
    ok.verdict = Verdict::ok;
    ok.hops = 0;
    ok.required_hop_limit = 1;
    ok.drops.clear();
    b.add(ok);
    return b.build(30, {"169.254.169.254:80"});
}

TEST(DiagnosisJson, Shape) {
    auto j = to_json(sample_diagnosis());
    EXPECT_EQ(j["schema"], "imdstrace.diagnosis/v1");
    EXPECT_EQ(j["window_s"], 30);
    EXPECT_EQ(j["node"]["hop_limit_observed"], 1);
    EXPECT_EQ(j["node"]["targets"], json::array({"169.254.169.254:80"}));
    ASSERT_TRUE(j["pods"].is_array());
    ASSERT_EQ(j["pods"].size(), 2u);
    const auto& p = j["pods"][0];
    EXPECT_EQ(p["namespace"], "kube-system");
    EXPECT_EQ(p["name"], "aws-load-balancer-controller-5d8f");
    EXPECT_EQ(p["ips"], json::array({"198.18.1.5"}));
    EXPECT_EQ(p["hops"], 1);
    EXPECT_EQ(p["required_hop_limit"], 2);
    EXPECT_EQ(p["transactions"], 1);
    EXPECT_EQ(p["verdicts"], json({{"HOP_LIMIT_EXCEEDED", 1}}));
    EXPECT_EQ(p["verdict"], "HOP_LIMIT_EXCEEDED");
    const auto& h = j["pods"][1];
    EXPECT_TRUE(h["namespace"].is_null());
    EXPECT_TRUE(h["name"].is_null());
    EXPECT_EQ(h["cgroup"], "/system.slice/kubelet.service");
    EXPECT_EQ(h["verdict"], "OK");
    ASSERT_TRUE(j["findings"].is_array());
    ASSERT_EQ(j["findings"].size(), 1u);
    const auto& f = j["findings"][0];
    EXPECT_EQ(f["verdict"], "HOP_LIMIT_EXCEEDED");
    EXPECT_EQ(f["pods"], json::array({"kube-system/aws-load-balancer-controller-5d8f"}));
    EXPECT_TRUE(f["evidence"].is_string());
    EXPECT_NE(f["fix"].get<std::string>().find("httpPutResponseHopLimit: 2"), std::string::npos);
}

TEST(DiagnosisJson, HealthyHasNullsAndNoFindings) {
    auto j = to_json(DiagnosisBuilder{}.build(5, {}));
    EXPECT_TRUE(j["node"]["hop_limit_observed"].is_null());
    EXPECT_TRUE(j["pods"].is_array() && j["pods"].empty());
    EXPECT_TRUE(j["findings"].is_array() && j["findings"].empty());
}

// The text sinks print the same facts (smoke: they run and name the verdict).
TEST(TextSink, NamesVerdictAndFix) {
    auto line = format_transaction(sample());
    EXPECT_NE(line.find("HOP_LIMIT_EXCEEDED"), std::string::npos) << line;
    EXPECT_FALSE(format_transaction_header().empty());
    auto report = format_diagnosis(sample_diagnosis());
    EXPECT_NE(report.find("httpPutResponseHopLimit: 2"), std::string::npos) << report;
}

}  // namespace
