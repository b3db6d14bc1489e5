#include "sinks/json.hpp"

#include <fmt/format.h>

#include <ctime>
#include <stdexcept>

namespace imdstrace {

using nlohmann::json;

std::string iso8601_ms(std::int64_t unix_ms) {
    std::time_t secs = unix_ms / 1000;
    std::tm tm{};
    gmtime_r(&secs, &tm);
    return fmt::format("{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
                       tm.tm_hour, tm.tm_min, tm.tm_sec, static_cast<int>(unix_ms % 1000));
}

std::optional<std::int64_t> parse_iso8601_ms(const std::string& s) {
    std::tm tm{};
    int ms = 0;
    if (std::sscanf(s.c_str(), "%4d-%2d-%2dT%2d:%2d:%2d.%3dZ", &tm.tm_year, &tm.tm_mon, &tm.tm_mday, &tm.tm_hour,
                    &tm.tm_min, &tm.tm_sec, &ms) != 7)
        return std::nullopt;
    tm.tm_year -= 1900;
    tm.tm_mon -= 1;
    return static_cast<std::int64_t>(timegm(&tm)) * 1000 + ms;
}

namespace {

json optional_int(const std::optional<int>& v) { return v ? json(*v) : json(nullptr); }

json pod_json(const std::optional<PodInfo>& p) {
    if (!p) return nullptr;
    return json{{"namespace", p->namespace_}, {"name", p->name}, {"uid", p->uid}, {"container", p->container}};
}

std::optional<int> get_optional_int(const json& j, const char* key) {
    if (!j.contains(key) || j[key].is_null()) return std::nullopt;
    return j[key].get<int>();
}

}  // namespace

json to_json(const TransactionRecord& r) {
    json j;
    j["schema"] = kTransactionSchema;
    j["ts"] = iso8601_ms(r.wall_ms);
    j["pod"] = pod_json(r.pod);
    if (!r.pod || !r.cgroup.empty()) j["cgroup"] = r.cgroup.empty() ? json(nullptr) : json(r.cgroup);
    if (r.process) j["process"] = {{"pid", r.process->pid}, {"comm", r.process->comm}};
    j["client"] = r.client.str();
    j["server"] = r.server.str();
    j["family"] = std::string(to_string(r.family()));
    if (r.request)
        j["request"] = {{"method", r.request->method},
                        {"path", r.request->path},
                        {"token", r.request->token},
                        {"token_ttl_header", r.request->token_ttl},
                        {"forwarded_for", r.request->forwarded_for}};
    else
        j["request"] = nullptr;
    j["response"] = {{"status", optional_int(r.status)}, {"ttl_at_node", optional_int(r.ttl_at_node)}};
    j["hops"] = optional_int(r.hops);
    j["hops_inferred"] = r.hops_inferred;
    j["required_hop_limit"] = optional_int(r.required_hop_limit);
    j["verdict"] = std::string(to_string(r.verdict));
    j["evidence"] = r.evidence;
    json drops = json::array();
    for (const auto& d : r.drops)
        drops.push_back({{"reason", d.reason.empty() ? json(nullptr) : json(d.reason)},
                         {"location", d.location},
                         {"ttl", d.ttl},
                         {"direction", d.response ? "response" : "request"},
                         {"count", d.count},
                         {"netns", d.netns ? json(d.netns) : json(nullptr)},
                         {"place", d.place.empty() ? json(nullptr) : json(d.place)}});
    j["drops"] = drops;
    j["icmp_time_exceeded"] = r.icmp_time_exceeded;
    j["retransmits"] = r.retransmits;
    j["duration_ms"] = r.duration_ms;
    j["opened_before_tracing"] = r.opened_before_tracing;
    j["incomplete"] = r.incomplete;
    j["target_on_node"] = r.target_on_node;
    return j;
}

TransactionRecord record_from_json(const json& j) {
    auto need = [&j](const char* key) -> const json& {
        if (!j.contains(key)) throw std::runtime_error(fmt::format("missing field \"{}\"", key));
        return j[key];
    };
    if (need("schema") != kTransactionSchema)
        throw std::runtime_error(fmt::format("schema is {}, expected {}", j["schema"].dump(), kTransactionSchema));
    TransactionRecord r;
    auto ts = parse_iso8601_ms(need("ts").get<std::string>());
    if (!ts) throw std::runtime_error("field \"ts\" is not an ISO 8601 UTC time");
    r.wall_ms = *ts;
    if (const auto& p = need("pod"); !p.is_null()) {
        PodInfo pod;
        pod.namespace_ = p.value("namespace", "");
        pod.name = p.value("name", "");
        pod.uid = p.value("uid", "");
        pod.container = p.value("container", "");
        r.pod = pod;
    }
    if (j.contains("cgroup") && j["cgroup"].is_string()) r.cgroup = j["cgroup"].get<std::string>();
    if (j.contains("process") && j["process"].is_object())
        r.process = ProcessInfo{j["process"].value("pid", 0u), j["process"].value("comm", "")};
    auto client = Endpoint::parse(need("client").get<std::string>(), 0);
    auto server = Endpoint::parse(need("server").get<std::string>(), 0);
    if (!client || !server) throw std::runtime_error("field \"client\" or \"server\" is not ADDR:PORT");
    r.client = *client;
    r.server = *server;
    if (const auto& q = need("request"); !q.is_null()) {
        HttpRequest req;
        req.method = q.value("method", "");
        req.path = q.value("path", "");
        req.token = q.value("token", false);
        req.token_ttl = q.value("token_ttl_header", false);
        req.forwarded_for = q.value("forwarded_for", false);
        r.request = req;
    }
    const auto& resp = need("response");
    r.status = get_optional_int(resp, "status");
    r.ttl_at_node = get_optional_int(resp, "ttl_at_node");
    r.hops = get_optional_int(j, "hops");
    r.hops_inferred = j.value("hops_inferred", false);
    r.required_hop_limit = get_optional_int(j, "required_hop_limit");
    auto v = verdict_from_string(need("verdict").get<std::string>());
    if (!v) throw std::runtime_error("unknown verdict " + j["verdict"].dump());
    r.verdict = *v;
    r.evidence = j.value("evidence", "");
    for (const auto& d : need("drops")) {
        DropRecord dr;
        dr.reason = d.contains("reason") && d["reason"].is_string() ? d["reason"].get<std::string>() : "";
        dr.location = d.value("location", "");
        dr.ttl = d.value("ttl", 0);
        dr.response = d.value("direction", "response") == "response";
        dr.count = d.value("count", 1u);
        if (d.contains("netns") && d["netns"].is_number_unsigned()) dr.netns = d["netns"].get<std::uint32_t>();
        if (d.contains("place") && d["place"].is_string()) dr.place = d["place"].get<std::string>();
        r.drops.push_back(dr);
    }
    r.icmp_time_exceeded = j.value("icmp_time_exceeded", 0u);
    r.retransmits = j.value("retransmits", 0u);
    r.duration_ms = j.value("duration_ms", 0);
    r.opened_before_tracing = j.value("opened_before_tracing", false);
    r.incomplete = j.value("incomplete", false);
    r.target_on_node = j.value("target_on_node", false);
    return r;
}

json node_facts_json(const NodeFacts& n) {
    auto flag = [](const std::optional<bool>& v) { return v ? json(*v) : json(nullptr); };
    return {{"ipv4_forwarding", flag(n.ipv4_forwarding)}, {"ipv6_forwarding", flag(n.ipv6_forwarding)}};
}

NodeFacts node_facts_from_json(const json& j) {
    NodeFacts n;
    if (!j.is_object()) return n;
    if (j.contains("ipv4_forwarding") && j["ipv4_forwarding"].is_boolean()) n.ipv4_forwarding = j["ipv4_forwarding"].get<bool>();
    if (j.contains("ipv6_forwarding") && j["ipv6_forwarding"].is_boolean()) n.ipv6_forwarding = j["ipv6_forwarding"].get<bool>();
    return n;
}

json to_json(const Diagnosis& d) {
    json j;
    j["schema"] = kDiagnosisSchema;
    j["window_s"] = d.window_s;
    j["transactions"] = d.transactions;
    j["node"] = {{"hop_limit_observed", optional_int(d.hop_limit_observed)}, {"targets", d.targets}};
    const json facts = node_facts_json(d.node);
    for (const auto& [key, value] : facts.items()) j["node"][key] = value;
    json pods = json::array();
    for (const auto& p : d.pods) {
        json verdicts = json::object();
        for (const auto& [v, n] : p.verdicts) verdicts[std::string(to_string(v))] = n;
        json pj{{"namespace", p.pod ? json(p.pod->namespace_) : json(nullptr)},
                {"name", p.pod ? json(p.pod->name) : json(nullptr)},
                {"subject", p.subject},
                {"ips", std::vector<std::string>(p.ips.begin(), p.ips.end())},
                {"hops", optional_int(p.hops)},
                {"required_hop_limit", optional_int(p.required_hop_limit)},
                {"transactions", p.transactions},
                {"verdicts", verdicts},
                {"verdict", std::string(to_string(p.verdict))}};
        if (!p.pod) pj["cgroup"] = p.cgroup.empty() ? json(nullptr) : json(p.cgroup);
        pods.push_back(pj);
    }
    j["pods"] = pods;
    json findings = json::array();
    for (const auto& f : d.findings)
        findings.push_back(
            {{"verdict", std::string(to_string(f.verdict))}, {"pods", f.pods}, {"evidence", f.evidence}, {"fix", f.fix}});
    j["findings"] = findings;
    json warnings = json::array();
    for (const auto& w : d.warnings) warnings.push_back({{"pods", w.pods}, {"message", w.message}, {"fix", w.fix}});
    j["warnings"] = warnings;
    const auto& a = d.set_aside;
    j["set_aside"] = {{"opened_before_tracing", {{"transactions", a.opened_before_tracing},
                                                 {"drops", a.opened_before_tracing_drops}}},
                      {"incomplete_transactions", a.incomplete},
                      {"events_lost", a.events_lost},
                      {"other_namespace_events", a.other_namespaces},
                      {"socket_bookkeeping_frees", a.socket_bookkeeping},
                      {"late_drops", a.late_drops}};
    return j;
}

}  // namespace imdstrace
