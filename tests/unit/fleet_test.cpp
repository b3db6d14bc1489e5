// The fleet view: metrics carry the node; `imdstrace fleet` turns Prometheus
// answers into nodes, failing pods, node groups and fixes; --events rotation
// and reading a rotated set back in order.
#include <gtest/gtest.h>

#include "cases_dir.hpp"

#include <filesystem>
#include <fstream>
#include <sstream>

#include <yaml-cpp/yaml.h>

#include "fleet/fleet.hpp"
#include "sinks/events_file.hpp"
#include "sinks/metrics.hpp"

using namespace imdstrace;

namespace {

TransactionRecord token_put(const std::string& pod, int ttl, Verdict v, std::optional<int> required) {
    TransactionRecord r;
    r.wall_ms = 1'000;
    PodInfo p;
    p.namespace_ = "kube-system";
    p.name = pod;
    r.pod = p;
    r.client = *Endpoint::parse("198.18.1.11:40000", 0);
    r.server = *Endpoint::parse("169.254.169.254:80", 80);
    HttpRequest req;
    req.method = "PUT";
    req.path = "/latest/api/token";
    req.token_ttl = true;
    req.headers_complete = true;
    r.request = req;
    r.status = 200;
    r.ttl_at_node = ttl;
    r.required_hop_limit = required;
    r.hops = required ? std::optional(*required - 1) : std::nullopt;
    r.verdict = v;
    return r;
}

nlohmann::json sample(std::map<std::string, std::string> labels, double v) {
    nlohmann::json m = nlohmann::json::object();
    for (const auto& [k, val] : labels) m[k] = val;
    return {{"metric", m}, {"value", {1700000000.0, std::to_string(v)}}};
}

}  // namespace

TEST(MetricsNode, EverySeriesCarriesTheNode) {
    Metrics m("ip-10-0-1-5.ec2.internal");
    m.record(token_put("alb-controller", 1, Verdict::hop_limit_exceeded, 2), 1000);
    m.set_events_lost(7);
    auto text = m.render(1000);
    std::istringstream in(text);
    int series = 0;
    for (std::string line; std::getline(in, line);) {
        if (line.empty() || line[0] == '#') continue;
        ++series;
        EXPECT_NE(line.find("{node=\"ip-10-0-1-5.ec2.internal\""), std::string::npos) << line;
    }
    EXPECT_GE(series, 10);
    EXPECT_NE(text.find("imdstrace_node_hop_limit_observed{node=\"ip-10-0-1-5.ec2.internal\"} 1\n"), std::string::npos);
    EXPECT_NE(text.find("imdstrace_pod_required_hop_limit{node=\"ip-10-0-1-5.ec2.internal\",namespace=\"kube-system\","
                        "pod=\"alb-controller\"} 2\n"),
              std::string::npos)
        << text;
    EXPECT_NE(text.find("imdstrace_events_lost_total{node=\"ip-10-0-1-5.ec2.internal\"} 7\n"), std::string::npos);
}

// The alert tells a new failure series from one a restarted Prometheus never
// saw by the process's start (deploy/prometheus-rules.yaml).
TEST(MetricsNode, StartTimeInUnixSeconds) {
    using namespace std::chrono;
    Metrics m("n", minutes(10), system_clock::time_point(milliseconds(1700000000250)));
    EXPECT_NE(m.render(0).find("imdstrace_start_time_seconds{node=\"n\"} 1700000000.250\n"), std::string::npos)
        << m.render(0);
    Metrics now("n");
    const auto t0 = duration_cast<seconds>(system_clock::now().time_since_epoch()).count();
    const auto text = now.render(0);
    const auto at = text.find("imdstrace_start_time_seconds{node=\"n\"} ");
    ASSERT_NE(at, std::string::npos);
    const double started = std::stod(text.substr(at + 39));
    EXPECT_LE(std::abs(started - static_cast<double>(t0)), 5.0);
}

// A pod quiet for the age-out leaves the exposition; back within the hour,
// its counters continue (3 more failures read as +3, not as "3 again",
// which Prometheus's increase() would take for no change).  After the hour
// they start again.
TEST(MetricsNode, AgedOutSubjectContinuesItsCounts) {
    using namespace std::chrono;
    constexpr std::int64_t min = 60'000;
    Metrics m("n", minutes(10));
    const auto series = [](int n) {
        return "imdstrace_transactions_total{node=\"n\",namespace=\"kube-system\",pod=\"alb-controller\","
               "verdict=\"HOP_LIMIT_EXCEEDED\"} " + std::to_string(n) + "\n";
    };
    for (int i = 0; i < 3; ++i) m.record(token_put("alb-controller", 1, Verdict::hop_limit_exceeded, 2), 0);
    EXPECT_NE(m.render(1 * min).find(series(3)), std::string::npos);
    const auto quiet = m.render(11 * min);
    EXPECT_EQ(quiet.find("alb-controller"), std::string::npos) << "aged out of the exposition:\n" << quiet;
    for (int i = 0; i < 3; ++i) m.record(token_put("alb-controller", 1, Verdict::hop_limit_exceeded, 2), 20 * min);
    EXPECT_NE(m.render(20 * min).find(series(6)), std::string::npos) << m.render(20 * min);
    EXPECT_EQ(m.pod_series(), 1u);
    m.render(81 * min);  // an hour after it was last seen: forgotten
    EXPECT_EQ(m.pod_series(), 0u);
    m.record(token_put("alb-controller", 1, Verdict::hop_limit_exceeded, 2), 82 * min);
    EXPECT_NE(m.render(82 * min).find(series(1)), std::string::npos) << m.render(82 * min);
}

// The node's hop limit is the latest answered token response's TTL, not the
// lowest ever: after the hop limit is raised, ImdsHopLimitTooLow and fleet
// must stop asking for the raise that was done.
TEST(MetricsNode, NodeHopLimitFollowsTheLatestTokenResponse) {
    Metrics m("n");
    m.record(token_put("alb-controller", 1, Verdict::hop_limit_exceeded, 2), 0);
    EXPECT_NE(m.render(0).find("imdstrace_node_hop_limit_observed{node=\"n\"} 1\n"), std::string::npos);
    m.record(token_put("alb-controller", 2, Verdict::ok, 2), 60'000);
    EXPECT_NE(m.render(60'000).find("imdstrace_node_hop_limit_observed{node=\"n\"} 2\n"), std::string::npos)
        << m.render(60'000);
}

TEST(MetricsNode, NameFromOptionThenNodeNameThenHostname) {
    setenv("NODE_NAME", "from-downward-api", 1);
    EXPECT_EQ(metrics_node_name("given"), "given");
    EXPECT_EQ(metrics_node_name(""), "from-downward-api");
    unsetenv("NODE_NAME");
    char host[256] = {};
    gethostname(host, sizeof host - 1);
    EXPECT_EQ(metrics_node_name(""), host);
}

// Canned answers by query text, as Prometheus's /api/v1/query returns them.
struct FakePrometheus {
    std::vector<std::string> asked;
    nlohmann::json operator()(const std::string& q) {
        asked.push_back(q);
        auto a = nlohmann::json::array();
        if (q.starts_with("max by (node) (imdstrace_build_info)"))
            for (auto n : {"node-a", "node-b", "node-c"}) a.push_back(sample({{"node", n}}, 1));
        else if (q.starts_with("min by (node) (imdstrace_node_hop_limit_observed)"))
            a = {sample({{"node", "node-a"}}, 1), sample({{"node", "node-b"}}, 2), sample({{"node", "node-c"}}, 1)};
        else if (q.find("imdstrace_events_lost_total") != std::string::npos)
            a = {sample({{"node", "node-a"}}, 0), sample({{"node", "node-b"}}, 12)};
        else if (q.starts_with("max by (node, namespace, pod) (imdstrace_pod_required_hop_limit)"))
            a = {sample({{"node", "node-a"}, {"namespace", "kube-system"}, {"pod", "alb"}}, 2),
                 sample({{"node", "node-a"}, {"namespace", ""}, {"pod", "cgroup:/system.slice/kubelet.service"}}, 1),
                 sample({{"node", "node-b"}, {"namespace", "default"}, {"pod", "web"}}, 2),
                 sample({{"node", "node-c"}, {"namespace", "default"}, {"pod", "idle"}}, 2)};
        else if (q.starts_with("(sum by (node, namespace, pod, verdict) (increase("))
            a = {sample({{"node", "node-a"}, {"namespace", "kube-system"}, {"pod", "alb"}, {"verdict", "HOP_LIMIT_EXCEEDED"}}, 3),
                 sample({{"node", "node-b"}, {"namespace", "default"}, {"pod", "web"}, {"verdict", "TOKEN_REQUIRED"}}, 1)};
        else if (q.starts_with("sum by (node, namespace, pod, verdict) (imdstrace_transactions_total"))
            a = {sample({{"node", "node-a"}, {"namespace", "kube-system"}, {"pod", "alb"}, {"verdict", "HOP_LIMIT_EXCEEDED"}}, 6),
                 sample({{"node", "node-b"}, {"namespace", "default"}, {"pod", "web"}, {"verdict", "TOKEN_REQUIRED"}}, 4),
                 // An old failure outside the window: not in the answer above, so not failing.
                 sample({{"node", "node-b"}, {"namespace", "default"}, {"pod", "old"}, {"verdict", "NO_RESPONSE"}}, 9)};
        else if (q.find("label_karpenter_sh_nodepool") != std::string::npos)
            a = {sample({{"node", "node-a"}, {"label_karpenter_sh_nodepool", "general"}}, 1),
                 sample({{"node", "node-c"}, {"label_karpenter_sh_nodepool", "general"}}, 1)};
        return a;
    }
};

TEST(Fleet, NodesFailingPodsGroupsAndTheFix) {
    FakePrometheus prom;
    auto f = build_fleet(std::ref(prom), FleetOptions{}, "http://prom:9090");
    ASSERT_EQ(f.nodes.size(), 3u);
    EXPECT_TRUE(f.failing());
    const auto& a = f.nodes[0];
    EXPECT_EQ(a.name, "node-a");
    EXPECT_EQ(a.group, "general");
    EXPECT_EQ(a.hop_limit_observed, 1);
    EXPECT_EQ(a.required_hop_limit, 2);
    ASSERT_EQ(a.pods.size(), 1u) << "the host process needs 1 and did not fail";
    EXPECT_EQ(a.pods[0].name, "alb");
    EXPECT_EQ(a.pods[0].verdict, "HOP_LIMIT_EXCEEDED");
    EXPECT_EQ(a.pods[0].failures.at("HOP_LIMIT_EXCEEDED"), 6) << "counted as the counter stands";
    const auto& b = f.nodes[1];
    EXPECT_EQ(b.group, "");
    EXPECT_EQ(b.events_lost, 12);
    ASSERT_EQ(b.pods.size(), 1u) << "the failure outside the window is not one";
    EXPECT_EQ(b.pods[0].verdict, "TOKEN_REQUIRED");
    // node-c: no failure yet, but its pod needs 2 and the node has 1: failing by the arithmetic.
    const auto& c = f.nodes[2];
    ASSERT_EQ(c.pods.size(), 1u);
    EXPECT_EQ(c.pods[0].verdict, "HOP_LIMIT_EXCEEDED");
    EXPECT_TRUE(c.pods[0].failures.empty());
    // Node group general (a and c) needs 2, has 1: the fix.  node-b alone has what it needs.
    ASSERT_EQ(f.groups.size(), 2u);
    EXPECT_EQ(f.groups[0].name, "general");
    EXPECT_EQ(f.groups[0].nodes, (std::vector<std::string>{"node-a", "node-c"}));
    EXPECT_EQ(f.groups[0].required_hop_limit, 2);
    EXPECT_NE(f.groups[0].fix.find("httpPutResponseHopLimit: 2"), std::string::npos);
    EXPECT_EQ(f.groups[1].fix, "");
    auto j = to_json(f);
    EXPECT_EQ(j["schema"], "imdstrace.fleet/v1");
    EXPECT_EQ(j["nodes"][0]["status"], "FAILING");
    EXPECT_EQ(j["nodes"][1]["node_group"], nullptr);
    auto text = format_fleet(f, false);
    EXPECT_NE(text.find("node group general: hop limit 1, its pods need 2 (nodes: node-a, node-c)"), std::string::npos)
        << text;
    EXPECT_NE(text.find("12 events lost"), std::string::npos) << text;
}

// deploy/ beside tests/cases, in the source tree and in the kernel matrix's guest.
std::string deploy_file(const char* name) { return test::cases_dir() + "/../../deploy/" + name; }

std::string without_spaces(std::string s) {
    std::erase_if(s, [](unsigned char c) { return std::isspace(c) != 0; });
    return s;
}

// fleet lists a pod as failing exactly when the shipped alert fires for it
// (the alert's PromQL is tested with promtool in tests/deploy/rules_test.yaml).
TEST(Fleet, FailingPodsQueryIsTheAlertsExpression) {
    YAML::Node rules = YAML::LoadFile(deploy_file("prometheus-rules.yaml"));
    std::string expr;
    for (const auto& g : rules["groups"])
        for (const auto& r : g["rules"])
            if (r["alert"] && r["alert"].as<std::string>() == "ImdsRequestsFailing") expr = r["expr"].as<std::string>();
    ASSERT_FALSE(expr.empty()) << "no ImdsRequestsFailing alert in deploy/prometheus-rules.yaml";
    auto in_window = [](std::string e, const std::string& range, const std::string& seconds) {
        const auto history = std::to_string(std::stoi(seconds) + 300) + "s:1m";
        for (auto [from, to] : {std::pair<std::string, std::string>{"[10m]", "[" + range + "]"},
                                {"offset 10m", "offset " + range},
                                {"< 600)", "< " + seconds + ")"},
                                {"[15m:1m]", "[" + history + "]"}})
            for (auto at = e.find(from); at != std::string::npos; at = e.find(from, at + to.size()))
                e.replace(at, from.size(), to);
        return e;
    };
    EXPECT_EQ(without_spaces(failing_pods_query(600)), without_spaces(in_window(expr, "600s", "600")));
    EXPECT_EQ(without_spaces(failing_pods_query(3600)), without_spaces(in_window(expr, "3600s", "3600")));
    FakePrometheus prom;
    FleetOptions opts;
    opts.window_s = 900;
    build_fleet(std::ref(prom), opts, "u");
    EXPECT_EQ(std::count(prom.asked.begin(), prom.asked.end(), failing_pods_query(900)), 1);
}

TEST(Fleet, HealthyFleetIsNotFailing) {
    auto f = build_fleet(
        [](const std::string& q) {
            auto a = nlohmann::json::array();
            if (q.starts_with("max by (node) (imdstrace_build_info)")) a.push_back(sample({{"node", "n"}}, 1));
            if (q.starts_with("min by (node)")) a.push_back(sample({{"node", "n"}}, 2));
            if (q.starts_with("max by (node, namespace, pod)"))
                a.push_back(sample({{"node", "n"}, {"namespace", "x"}, {"pod", "p"}}, 2));
            return a;
        },
        FleetOptions{}, "u");
    EXPECT_FALSE(f.failing());
    EXPECT_TRUE(f.groups[0].fix.empty());
}

// An empty scratch directory of this test process, removed with the object.
struct ScratchDir {
    std::filesystem::path dir;
    explicit ScratchDir(const std::string& name)
        : dir(std::filesystem::temp_directory_path() / (name + "-" + std::to_string(getpid()))) {
        std::filesystem::remove_all(dir);
        std::filesystem::create_directories(dir);
    }
    ~ScratchDir() { std::filesystem::remove_all(dir); }
    std::string file(const char* name) const { return (dir / name).string(); }
};

TEST(EventsRotation, CapsSizeAndCountAndReadsBackInOrder) {
    ScratchDir scratch("imdstrace-rot");
    const std::string file = scratch.file("events.jsonl");
    {
        EventsFile ev(file, EventsRotation{4096, 3});
        for (int i = 0; i < 40; ++i) {
            auto r = token_put("pod" + std::to_string(i), 1, Verdict::hop_limit_exceeded, 2);
            r.wall_ms = 1'000'000 + i;
            ev.write(r);
        }
    }
    EXPECT_TRUE(std::filesystem::exists(file + ".1"));
    EXPECT_TRUE(std::filesystem::exists(file + ".2"));
    EXPECT_FALSE(std::filesystem::exists(file + ".3")) << "at most 3 files";
    for (auto f : {file, file + ".1", file + ".2"}) EXPECT_LE(std::filesystem::file_size(f), 4096u) << f;
    auto set = rotated_set(file);
    EXPECT_EQ(set, (std::vector<std::string>{file + ".2", file + ".1", file}));
    std::vector<std::int64_t> order;
    auto rec = read_recordings(set, [&order](TransactionRecord&& r) { order.push_back(r.wall_ms); });
    ASSERT_GE(order.size(), 10u);
    EXPECT_TRUE(std::is_sorted(order.begin(), order.end())) << "oldest file first";
    EXPECT_EQ(order.back(), 1'000'039) << "the newest transaction is in FILE";
    EXPECT_LT(order.size(), 40u) << "the oldest were dropped with the file beyond the count";
    EXPECT_EQ(rec.transactions, order.size());
    EXPECT_TRUE(rec.continues_earlier) << "FILE.2 continues a file that was removed";
    EXPECT_FALSE(rec.continued_at.empty());
}

// Nothing removed yet: the oldest file is the first one, so the set is whole;
// read from FILE.1 on, it is not.
TEST(EventsRotation, KnowsWhetherTheOldestFileReadIsTheFirst) {
    ScratchDir scratch("imdstrace-rot1");
    const std::string file = scratch.file("events.jsonl");
    {
        EventsFile ev(file, EventsRotation{4096, 10});
        for (int i = 0; i < 12; ++i) ev.write(token_put("pod" + std::to_string(i), 1, Verdict::ok, 2));
        ev.write_trailer(1'000'000, 10, {"169.254.169.254:80"}, nlohmann::json::object(), nlohmann::json::object());
    }
    auto set = rotated_set(file);
    ASSERT_GE(set.size(), 3u);
    std::uint64_t all = 0, part = 0;
    auto whole = read_recordings(set, [&all](TransactionRecord&&) { ++all; });
    EXPECT_FALSE(whole.continues_earlier) << "the oldest file read is the first one written";
    EXPECT_EQ(all, 12u) << "rotation records are not transactions and not bad lines";
    EXPECT_EQ(whole.skipped, 0u);
    auto newer = read_recordings({set.begin() + 1, set.end()}, [&part](TransactionRecord&&) { ++part; });
    EXPECT_TRUE(newer.continues_earlier) << "read from " << set[1];
    EXPECT_TRUE(newer.sequence_break.empty()) << newer.sequence_break;
    EXPECT_LT(part, all);
    auto none = [](TransactionRecord&&) {};
    // Given by hand: one left out between two, or out of order.
    auto skip = read_recordings({set[0], set[2]}, none);
    EXPECT_FALSE(skip.continues_earlier);
    EXPECT_NE(skip.sequence_break.find("a file between them is not read"), std::string::npos) << skip.sequence_break;
    // Without its newest file (where the run's session record is), the run's end was not read.
    auto older = read_recordings({set.begin(), set.end() - 1}, none);
    EXPECT_NE(older.sequence_break.find("that run's end"), std::string::npos) << older.sequence_break;
    auto swapped = read_recordings({set[1], set[0]}, none);
    EXPECT_NE(swapped.sequence_break.find("given twice or out of order"), std::string::npos) << swapped.sequence_break;
    // Another run appending to FILE, rotating on: its files follow each other too.
    {
        EventsFile ev(file, EventsRotation{4096, 10});
        for (int i = 0; i < 12; ++i) ev.write(token_put("pod" + std::to_string(i), 1, Verdict::ok, 2));
        ev.write_trailer(1'000'000, 10, {"169.254.169.254:80"}, nlohmann::json::object(), nlohmann::json::object());
    }
    auto both = read_recordings(rotated_set(file), none);
    EXPECT_FALSE(both.continues_earlier);
    EXPECT_TRUE(both.sequence_break.empty()) << both.sequence_break;
}

// A run that ends before writing anything (no uplink, a usage error found late)
// leaves no rotation record, so it never reads as a run whose end is missing.
TEST(EventsRotation, ARunThatWritesNothingLeavesNoMark) {
    ScratchDir scratch("imdstrace-rot2");
    const std::string file = scratch.file("events.jsonl");
    {
        EventsFile ev(file, EventsRotation{4096, 3});
        ev.write(token_put("pod", 1, Verdict::ok, 2));
        ev.write_trailer(1'000'000, 10, {"169.254.169.254:80"}, nlohmann::json::object(), nlohmann::json::object());
    }
    { EventsFile nothing(file, EventsRotation{4096, 3}); }
    auto rec = read_recordings(rotated_set(file), [](TransactionRecord&&) {});
    EXPECT_EQ(rec.transactions, 1u);
    EXPECT_TRUE(rec.sequence_break.empty()) << rec.sequence_break;
    EXPECT_FALSE(rec.continues_earlier);
}

TEST(EventsRotation, ByteSizes) {
    EXPECT_EQ(parse_byte_size("4096"), 4096u);
    EXPECT_EQ(parse_byte_size("64M"), 64u << 20);
    EXPECT_EQ(parse_byte_size("2G"), std::uint64_t{2} << 30);
    EXPECT_EQ(parse_byte_size("8k"), 8192u);
    for (auto bad : {"", "0", "-1", "10X", "M", "1.5M", "99999999999999999999"})
        EXPECT_FALSE(parse_byte_size(bad)) << bad;
}
