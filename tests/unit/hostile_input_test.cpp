// Hostile input (issue #14): names that are not UTF-8 or carry terminal
// escapes, recordings that are cut off or out of range, mapping files that
// are huge or nested deep, heads with bare LF.  None may stop the tracer,
// leak a token value or make it claim what it did not see.
#include <fcntl.h>
#include <gtest/gtest.h>

#include "cases_dir.hpp"
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <new>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "decode/http.hpp"
#include "pods/resolver.hpp"
#include "sinks/escape.hpp"
#include "sinks/events_file.hpp"
#include "sinks/json.hpp"
#include "sinks/metrics.hpp"
#include "sinks/pcap.hpp"
#include "sinks/text.hpp"
#include "verdict/diagnosis.hpp"

using namespace imdstrace;

// Every allocation of this test binary (allocation_counter.cpp).
extern std::atomic<std::uint64_t> g_allocations;

namespace {

const std::string kCases = test::cases_dir();

std::span<const std::uint8_t> bytes(std::string_view s) {
    return {reinterpret_cast<const std::uint8_t*>(s.data()), s.size()};
}

TransactionRecord record_in_cgroup(std::string cgroup, std::string comm = "curl") {
    TransactionRecord r;
    r.wall_ms = 1795730400123;
    r.cgroup = std::move(cgroup);
    r.process = ProcessInfo{42, std::move(comm)};
    r.client = *Endpoint::parse("198.18.1.5:43122", 0);
    r.server = *Endpoint::parse("169.254.169.254:80", 0);
    r.status = 200;
    r.verdict = Verdict::ok;
    r.evidence = "HTTP 200";
    return r;
}

bool valid_utf8(std::string_view s) {
    for (std::size_t i = 0; i < s.size();) {
        auto n = utf8_sequence(s, i);
        if (!n) return false;
        i += n;
    }
    return true;
}

// --- names from outside --------------------------------------------------

// A cgroup directory may be named with any byte but '/' and NUL.
const std::string kBadCgroup = std::string("/p\xff\xfe-") + "\x1b[2J\x1b[31mFAKE OK\x1b[0m\n12:00:00 OK";

TEST(HostileNames, JsonOfANonUtf8CgroupDoesNotThrowAndIsValid) {
    auto r = record_in_cgroup(kBadCgroup, "a\xc3");
    std::string text;
    ASSERT_NO_THROW(text = dump_json(to_json(r)));
    EXPECT_TRUE(valid_utf8(text)) << text;
    auto back = nlohmann::json::parse(text);  // a JSON reader accepts it
    EXPECT_NE(back["cgroup"].get<std::string>().find("\xef\xbf\xbd"), std::string::npos) << "U+FFFD stands in";
    // The diagnosis document too.
    DiagnosisBuilder b;
    b.add(r);
    ASSERT_NO_THROW(text = dump_json(to_json(b.build(1, {"169.254.169.254:80"})), 2));
    EXPECT_TRUE(valid_utf8(text));
}

TEST(HostileNames, TextCannotPaintOnTheTerminal) {
    auto r = record_in_cgroup(kBadCgroup, "x\x1b]0;title\x07");
    auto line = format_transaction(r, TextStyle{false});
    EXPECT_EQ(line.find('\x1b'), std::string::npos) << line;
    EXPECT_EQ(line.find('\n'), std::string::npos) << line;
    EXPECT_EQ(line.find('\x07'), std::string::npos) << line;
    EXPECT_NE(line.find("cgroup:/p\\xff\\xfe-\\x1b[2J"), std::string::npos) << "escaped visibly: " << line;
    EXPECT_TRUE(valid_utf8(line));

    r.verdict = Verdict::token_required;
    DiagnosisBuilder b;
    b.add(r);
    auto text = format_diagnosis(b.build(1, {"169.254.169.254:80"}), TextStyle{false});
    EXPECT_EQ(text.find('\x1b'), std::string::npos) << text;
    EXPECT_EQ(text.find("\n12:00:00 OK"), std::string::npos) << "no fake line: " << text;
    EXPECT_TRUE(valid_utf8(text));
}

TEST(HostileNames, TerminalSafeKeepsUtf8AndEscapesControls) {
    EXPECT_EQ(terminal_safe("kube-system/caf\xc3\xa9"), "kube-system/caf\xc3\xa9");
    EXPECT_EQ(terminal_safe("a\x1b[0mb"), "a\\x1b[0mb");
    EXPECT_EQ(terminal_safe("a\xc2\x9b" "31mb"), "a\\xc2\\x9b31mb") << "C1 CSI escaped";
    EXPECT_EQ(terminal_safe("a\xffz"), "a\\xffz");
    EXPECT_EQ(terminal_safe("back\\slash"), "back\\\\slash") << "an escape cannot be forged";
    EXPECT_EQ(terminal_safe("\xed\xa0\x80"), "\\xed\\xa0\\x80") << "a UTF-16 surrogate is not UTF-8";
    EXPECT_EQ(terminal_safe("\xc0\xaf"), "\\xc0\\xaf") << "overlong";
}

TEST(HostileNames, MetricLabelsStayValidUtf8) {
    Metrics m;
    auto r = record_in_cgroup(kBadCgroup);
    PodInfo p;
    p.namespace_ = "ns\xff";
    p.name = "pod\"\\\n\xfe";
    r.pod = p;
    m.record(r, 1000);
    auto text = m.render(1000);
    EXPECT_TRUE(valid_utf8(text));
    EXPECT_NE(text.find(R"(pod="pod\"\\\n)"), std::string::npos) << text;
    EXPECT_NE(text.find("namespace=\"ns\xef\xbf\xbd\""), std::string::npos) << text;
}

TEST(HostileNames, AnsiPodFromARecordingIsEscaped) {
    std::ifstream in(kCases + "/report/ansi_pod.jsonl");
    DiagnosisBuilder b;
    auto rec = read_recording(in, "ansi_pod.jsonl", [&b](TransactionRecord&& r) { b.add(r); });
    ASSERT_EQ(rec.transactions, 1u);
    auto text = format_diagnosis(b.build(1, {}), TextStyle{false});
    EXPECT_EQ(text.find('\x1b'), std::string::npos) << text;
    EXPECT_NE(text.find("x\\x1b[2J\\x1b[31mFAKE\\x1b[0m"), std::string::npos) << text;
}

// --- recordings fed to `report` -------------------------------------------

Recording read_case(const std::string& name, DiagnosisBuilder& b) {
    std::ifstream in(kCases + "/report/" + name);
    EXPECT_TRUE(in) << name;
    return read_recording(in, name, [&b](TransactionRecord&& r) { b.add(r); });
}

TEST(Recording, TruncatedLastLineIsSkippedAndCounted) {
    DiagnosisBuilder b;
    auto rec = read_case("truncated_last.jsonl", b);
    EXPECT_EQ(rec.transactions, 10u);
    EXPECT_EQ(rec.skipped, 1u);
    EXPECT_NE(rec.first_skipped.find("truncated_last.jsonl:11:"), std::string::npos) << rec.first_skipped;
    EXPECT_EQ(b.transactions(), 10u);
}

TEST(Recording, OutOfRangeNumbersAreRefusedNotWrapped) {
    for (const char* name : {"hops_intmax.jsonl", "duration_huge.jsonl"}) {
        DiagnosisBuilder b;
        auto rec = read_case(name, b);
        EXPECT_EQ(rec.transactions, 0u) << name;
        EXPECT_EQ(rec.skipped, 1u) << name;
        EXPECT_TRUE(rec.first_skipped.find("is outside") != std::string::npos ||
                    rec.first_skipped.find("must be an integer") != std::string::npos)
            << rec.first_skipped;
        auto text = format_diagnosis(b.build(1, {}), TextStyle{false});
        EXPECT_EQ(text.find("-2147483648"), std::string::npos) << text;
    }
    auto must_refuse = [](const std::string& field, const std::string& value) {
        auto j = nlohmann::json::parse(
            R"({"schema":"imdstrace.transaction/v1","ts":"2026-11-26T22:00:00.123Z","pod":null,)"
            R"("client":"198.18.1.5:1","server":"169.254.169.254:80","request":null,)"
            R"("response":{"status":200,"ttl_at_node":1},"verdict":"OK","drops":[]})");
        j[field] = nlohmann::json::parse(value);
        std::istringstream in(j.dump());
        auto rec = read_recording(in, "x", [](TransactionRecord&&) {});
        EXPECT_EQ(rec.skipped, 1u) << field << "=" << value;
    };
    must_refuse("hops", "256");
    must_refuse("hops", "-1");
    must_refuse("hops", "1.5");
    must_refuse("required_hop_limit", "1e300");
    must_refuse("duration_ms", "-5");
    must_refuse("retransmits", "-1");
    must_refuse("response", R"({"status":99})");
    must_refuse("response", R"({"status":600})");
    must_refuse("response", R"({"ttl_at_node":256})");
    must_refuse("drops", R"([{"ttl":300}])");
    must_refuse("process", R"({"pid":-1})");
}

TEST(Recording, DropCountsDoNotWrapAt2To32) {
    DiagnosisBuilder b;
    auto rec = read_case("count_overflow.jsonl", b);
    ASSERT_EQ(rec.transactions, 1u);
    auto d = b.build(1, {});
    ASSERT_FALSE(d.findings.empty());
    // 3 x 4294967295, not (3 x 4294967295) mod 2^32 = 4294967293.
    EXPECT_NE(d.findings.front().evidence.find("12884901885 drops"), std::string::npos) << d.findings.front().evidence;
    Metrics m;
    m.record(b.records().front(), 0);
    EXPECT_NE(m.render(0).find("} 12884901885\n"), std::string::npos) << m.render(0);
    // Beyond 2^32 in one field: saturates, does not wrap to a small number.
    std::string line = R"({"schema":"imdstrace.transaction/v1","ts":"2026-11-26T22:00:00.123Z","pod":null,)"
                       R"("client":"198.18.1.5:1","server":"169.254.169.254:80","request":null,"response":{},)"
                       R"("verdict":"DROPPED","drops":[{"count":18446744073709551615}],"retransmits":4294967296})";
    std::istringstream in(line);
    TransactionRecord got;
    auto r2 = read_recording(in, "x", [&got](TransactionRecord&& r) { got = r; });
    ASSERT_EQ(r2.transactions, 1u) << r2.first_skipped;
    EXPECT_EQ(got.drops.front().count, UINT32_MAX);
    EXPECT_EQ(got.retransmits, UINT32_MAX);
}

TEST(Recording, HugeBadLineGivesAShortMessage) {
    // A 100 MB string that never ends: the error names the line, briefly.
    std::string huge = R"({"schema":"imdstrace.transaction/v1","pod":")" + std::string(100u << 20, 'A');
    std::istringstream in(huge + "\n" + huge.substr(0, 5000) + "\n");
    auto rec = read_recording(in, "big.jsonl", [](TransactionRecord&&) {});
    EXPECT_EQ(rec.skipped, 2u);
    EXPECT_LT(rec.first_skipped.size(), 400u) << rec.first_skipped.substr(0, 400);
    EXPECT_NE(rec.first_skipped.find("big.jsonl:1:"), std::string::npos);
}

TEST(Recording, DeepNestingIsRefusedNotRecursed) {
    std::string deep = R"({"schema":)" + std::string(200000, '[') + std::string(200000, ']') + "}";
    std::istringstream in(deep + "\n");
    auto rec = read_recording(in, "deep.jsonl", [](TransactionRecord&&) {});
    EXPECT_EQ(rec.skipped, 1u);
    EXPECT_NE(rec.first_skipped.find("nested deeper"), std::string::npos) << rec.first_skipped;
}

// Building the findings is linear in distinct pods.  Counted, not timed:
// every allocation made while building and printing the diagnosis of 10k
// and of 40k pods (one operator new for the whole test binary counts
// them).  4x the pods may cost at most 4.4x the allocations; a step that
// copies a growing list per pod costs 16x.
TEST(Recording, FindingsBuildLinearlyInDistinctPods) {
    auto allocations = [](int pods) {
        DiagnosisBuilder b;
        for (int i = 0; i < pods; ++i) {
            TransactionRecord r = record_in_cgroup("/kubepods/pod" + std::to_string(i));
            PodInfo p;
            p.namespace_ = "ns";
            p.name = "pod-" + std::to_string(i);
            r.pod = p;
            r.verdict = i % 2 ? Verdict::hop_limit_exceeded : Verdict::token_required;
            r.hops = 1;
            r.required_hop_limit = i % 3 ? 2 : 3;
            r.ttl_at_node = 1;
            HttpRequest q;
            q.method = i % 2 ? "PUT" : "GET";
            q.path = i % 2 ? "/latest/api/token" : "/latest/meta-data/mac";
            r.request = q;
            b.add(r);
        }
        const auto before = g_allocations.load();
        auto d = b.build(1, {"169.254.169.254:80"});
        auto text = format_diagnosis(d, TextStyle{false});
        auto json = dump_json(to_json(d));
        EXPECT_EQ(d.pods.size(), static_cast<std::size_t>(pods));
        return g_allocations.load() - before;
    };
    const double small = static_cast<double>(allocations(10000));
    const double large = static_cast<double>(allocations(40000));
    EXPECT_LT(large, 4.4 * small) << "10k pods: " << small << " allocations, 40k pods: " << large;
}

// --- the IMDSv1 fallback claim ---------------------------------------------

TEST(Diagnosis, TokenPutIsNotAnImdsV1Success) {
    // A tokens-required node: the pod's token PUTs run out of hops except
    // one that got through; its only tokenless GET was refused (401).
    auto make = [](Verdict v, const char* method, const char* path, std::optional<int> status) {
        TransactionRecord r = record_in_cgroup("/pods/a");
        r.verdict = v;
        r.status = status;
        HttpRequest q;
        q.method = method;
        q.path = path;
        q.token_ttl = std::string(method) == "PUT";
        q.headers_complete = true;
        r.request = q;
        r.hops = 1;
        r.required_hop_limit = 2;
        r.ttl_at_node = 1;
        return r;
    };
    DiagnosisBuilder b;
    b.add(make(Verdict::hop_limit_exceeded, "PUT", "/latest/api/token", std::nullopt));
    b.add(make(Verdict::ok, "PUT", "/latest/api/token", 200));
    b.add(make(Verdict::token_required, "GET", "/latest/meta-data/mac", 401));
    auto d = b.build(1, {});
    ASSERT_FALSE(d.findings.empty());
    EXPECT_EQ(d.findings.front().verdict, Verdict::hop_limit_exceeded);
    EXPECT_EQ(d.findings.front().evidence.find("still succeed"), std::string::npos) << d.findings.front().evidence;
    // A tokenless GET that works is still reported.
    b.add(make(Verdict::ok, "GET", "/latest/meta-data/instance-id", 200));
    d = b.build(1, {});
    EXPECT_NE(d.findings.front().evidence.find("IMDSv1 requests without a token still succeed"), std::string::npos);
}

TEST(MetricsListen, PortRequiredZeroAllowed) {
    EXPECT_FALSE(parse_metrics_listen("127.0.0.1")) << "no port: not a random one";
    EXPECT_FALSE(parse_metrics_listen("[::1]"));
    EXPECT_FALSE(parse_metrics_listen("::1:0")) << "ambiguous without brackets";
    EXPECT_FALSE(parse_metrics_listen("127.0.0.1:99999"));
    EXPECT_FALSE(parse_metrics_listen(":0"));
    EXPECT_EQ(parse_metrics_listen("127.0.0.1:0")->port, 0);
    EXPECT_EQ(parse_metrics_listen("[::1]:0")->port, 0);
    EXPECT_EQ(parse_metrics_listen("0.0.0.0:9655")->port, 9655);
}

// --- --pods static: files ----------------------------------------------------

TEST(PodMappingFile, DeeplyNestedIpsIsAnErrorNotACrash) {
    std::string deep = R"([{"namespace":"a","name":"b","ips":[)" + std::string(200000, '[') + std::string(200000, ']') + "]}]";
    try {
        parse_pod_mapping(deep, "pods.json");
        ADD_FAILURE() << "accepted";
    } catch (const std::runtime_error& e) {
        EXPECT_LT(std::string(e.what()).size(), 400u);
        EXPECT_NE(std::string(e.what()).find("nested deeper"), std::string::npos) << e.what();
    }
    // An "ips" entry that is not an address is named by position and type, not dumped.
    std::string big = R"([{"namespace":"a","name":"b","ips":[{"x":")" + std::string(1 << 20, 'x') + R"("}]}])";
    try {
        parse_pod_mapping(big, "pods.json");
        ADD_FAILURE() << "accepted";
    } catch (const std::runtime_error& e) {
        EXPECT_LT(std::string(e.what()).size(), 400u);
        EXPECT_NE(std::string(e.what()).find("entry #1 (a JSON object)"), std::string::npos) << e.what();
    }
}

TEST(PodMappingFile, OnlyRegularFilesOfBoundedSize) {
    try {
        make_static_resolver("/dev/zero");
        ADD_FAILURE() << "/dev/zero accepted";
    } catch (const std::runtime_error& e) {
        EXPECT_NE(std::string(e.what()).find("not a regular file"), std::string::npos) << e.what();
    }
    auto dir = std::filesystem::temp_directory_path() / ("imdstrace-pods-" + std::to_string(getpid()));
    std::filesystem::create_directories(dir);
    auto big = dir / "big.json";
    { std::ofstream(big) << "["; }
    std::filesystem::resize_file(big, kPodMappingMaxBytes + 1);  // sparse: costs no disk
    try {
        make_static_resolver(big.string());
        ADD_FAILURE() << "oversized file accepted";
    } catch (const std::runtime_error& e) {
        EXPECT_NE(std::string(e.what()).find("more than the"), std::string::npos) << e.what();
    }
    std::filesystem::remove_all(dir);
}

// --- evidence files that cannot be written ------------------------------------

TEST(EvidenceFiles, EventsOnAFullDiskThrowsNamingTheFile) {
    EventsFile f("/dev/full");
    try {
        f.write(record_in_cgroup("/a"));
        f.flush();  // the session's, after each batch
        ADD_FAILURE() << "a write to /dev/full succeeded";
    } catch (const std::runtime_error& e) {
        EXPECT_NE(std::string(e.what()).find("/dev/full"), std::string::npos) << e.what();
        EXPECT_NE(std::string(e.what()).find("No space left"), std::string::npos) << e.what();
    }
}

TEST(EvidenceFiles, PcapOnAFullDiskThrowsNamingTheFile) {
    try {
        PcapWriter w("/dev/full", [](const Observation&) { return std::string(); },
                     [](std::uint32_t) { return std::string("eth0"); }, 0);
        Observation o;
        o.flow = {*Endpoint::parse("198.18.1.5:1", 0), *Endpoint::parse("169.254.169.254:80", 0)};
        w.write(o);
        ADD_FAILURE() << "a pcap on /dev/full was written without an error";
    } catch (const std::runtime_error& e) {
        EXPECT_NE(std::string(e.what()).find("/dev/full"), std::string::npos) << e.what();
        EXPECT_NE(std::string(e.what()).find("No space left"), std::string::npos) << e.what();
    }
}

// --- request heads -------------------------------------------------------------

constexpr std::string_view kSecret = "AQAEAFakeT0kenValue_zz9XyWq1bM3r7QeKd2ZkLhJ5cQ==";

TEST(RedactHttpHead, BareLineFeedsKeepNoTokenValue) {
    for (std::string eol : {"\n", "\r", "\r\n"}) {
        std::string head = "GET /latest/meta-data/mac HTTP/1.1" + eol + "Host: 169.254.169.254" + eol +
                           "X-aws-ec2-metadata-token: " + std::string(kSecret) + eol + "Accept: */*" + eol + eol;
        auto out = redact_http_head(bytes(head));
        EXPECT_EQ(out.find(kSecret.substr(0, 8)), std::string::npos) << "eol " << nlohmann::json(eol).dump() << ": " << out;
        EXPECT_NE(out.find("X-aws-ec2-metadata-token: REDACTED"), std::string::npos) << out;
        auto r = parse_http_request(bytes(head));
        ASSERT_TRUE(r);
        EXPECT_TRUE(r->token);
        EXPECT_TRUE(r->headers_complete);
    }
    // The token smuggled onto the request line is not kept either.
    auto out = redact_http_head(bytes("GET /a HTTP/1.1 X-aws-ec2-metadata-token: " + std::string(kSecret) + "\n\n"));
    EXPECT_EQ(out.find(kSecret.substr(0, 8)), std::string::npos) << out;
}

TEST(HttpRequest, CutOffHeadLeavesTheTokenUnknown) {
    auto r = parse_http_request(bytes("GET /latest/meta-data/mac HTTP/1.1\r\nHost: 169.254.169.254\r\nUser-Ag"));
    ASSERT_TRUE(r);
    EXPECT_FALSE(r->token);
    EXPECT_TRUE(r->head_cut);
    EXPECT_TRUE(r->token_unknown());
    TransactionRecord t = record_in_cgroup("/a");
    t.request = *r;
    auto j = to_json(t);
    EXPECT_TRUE(j["request"]["token"].is_null()) << "unknown, not false: " << j.dump();
    auto back = record_from_json(j);
    EXPECT_TRUE(back.request->token_unknown());
    // A complete head without the header: false, known.
    auto full = parse_http_request(bytes("GET /latest/meta-data/mac HTTP/1.1\r\nHost: x\r\n\r\n"));
    EXPECT_FALSE(full->token_unknown());
    t.request = *full;
    EXPECT_EQ(to_json(t)["request"]["token"], false);
}

}  // namespace
