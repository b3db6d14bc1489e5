#include "sinks/json.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <climits>
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

// Numbers read back from a recording are checked against what the tracer
// can have written: a hostile file must not print NEEDS -2147483648 or
// convert 1e300 to int.
std::int64_t int_in(const json& v, const char* key, std::int64_t lo, std::int64_t hi) {
    if (!v.is_number_integer())
        throw std::runtime_error(fmt::format("field \"{}\" must be an integer from {} to {}", key, lo, hi));
    // Unsigned first: 2^64-1 read as int64 would be -1.
    const bool in_range = v.is_number_unsigned()
                              ? v.get<std::uint64_t>() <= static_cast<std::uint64_t>(hi) && v.get<std::int64_t>() >= lo
                              : v.get<std::int64_t>() >= lo && v.get<std::int64_t>() <= hi;
    if (!in_range) throw std::runtime_error(fmt::format("field \"{}\" is outside {}..{}", key, lo, hi));
    return v.get<std::int64_t>();
}

std::optional<int> get_optional_int(const json& j, const char* key, int lo, int hi) {
    if (!j.contains(key) || j[key].is_null()) return std::nullopt;
    return static_cast<int>(int_in(j[key], key, lo, hi));
}

// Counters: non-negative integers; beyond 2^32-1 they saturate instead of wrapping.
std::uint32_t get_count(const json& j, const char* key, std::uint32_t fallback) {
    if (!j.contains(key)) return fallback;
    const auto& v = j[key];
    if (!v.is_number_integer() || (v.is_number_integer() && !v.is_number_unsigned() && v.get<std::int64_t>() < 0))
        throw std::runtime_error(fmt::format("field \"{}\" must be a non-negative integer", key));
    return static_cast<std::uint32_t>(std::min<std::uint64_t>(v.get<std::uint64_t>(), UINT32_MAX));
}

std::string get_string(const json& j, const char* key) {
    if (!j.contains(key) || j[key].is_null()) return {};
    if (!j[key].is_string()) throw std::runtime_error(fmt::format("field \"{}\" must be a string", key));
    return j[key].get<std::string>();
}

bool get_bool(const json& j, const char* key) {
    if (!j.contains(key) || j[key].is_null()) return false;
    if (!j[key].is_boolean()) throw std::runtime_error(fmt::format("field \"{}\" must be true or false", key));
    return j[key].get<bool>();
}

constexpr std::int64_t kMaxDurationMs = 10LL * 365 * 24 * 3600 * 1000;  // ten years

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
                        // null: head cut off before any token header (unknown, not absent)
                        {"token", r.request->token_unknown() ? json(nullptr) : json(r.request->token)},
                        {"token_ttl_header", r.request->token_ttl},
                        {"forwarded_for", r.request->forwarded_for}};
    else
        j["request"] = nullptr;
    j["response"] = {{"status", optional_int(r.status)}, {"ttl_at_node", optional_int(r.ttl_at_node)}};
    j["hops"] = optional_int(r.hops);
    j["hops_inferred"] = r.hops_inferred;
    j["required_hop_limit"] = optional_int(r.required_hop_limit);
    // No verdict from missing evidence: null, and "set_aside" says why.
    const auto aside = set_aside_reason(r);
    // Null only where the verdict would come from absence; a set-aside record with evidence of
    // its own (opened before tracing, opening unseen) keeps it, and "set_aside" says why it counts for nothing.
    j["verdict"] = r.incomplete && r.verdict == Verdict::no_response && !aside.empty()
                       ? json(nullptr)
                       : json(std::string(to_string(r.verdict)));
    if (!aside.empty()) j["set_aside"] = aside;
    j["evidence"] = r.evidence;
    json drops = json::array();
    for (const auto& d : r.drops)
        drops.push_back({{"reason", d.reason.empty() ? json(nullptr) : json(d.reason)},
                         {"location", d.location},
                         {"ttl", d.ttl},
                         {"direction", d.response ? "response" : "request"},
                         {"count", d.count},
                         {"netns", d.netns ? json(d.netns) : json(nullptr)},
                         {"place", d.place.empty() ? json(nullptr) : json(d.place)},
                         {"after_dnat_to", d.rewritten ? json(d.rewritten->str()) : json(nullptr)},
                         {"after_dnat_to_node", d.rewritten_to_node},
                         {"device", d.device.empty() ? json(nullptr) : json(d.device)}});
    j["drops"] = drops;
    j["icmp_time_exceeded"] = r.icmp_time_exceeded;
    j["retransmits"] = r.retransmits;
    j["duration_ms"] = r.duration_ms;
    j["opened_before_tracing"] = r.opened_before_tracing;
    j["opening_unseen"] = r.opening_unseen;
    j["incomplete"] = r.incomplete;
    j["events_lost"] = r.events_lost;
    j["target_on_node"] = r.target_on_node;
    // The path: where the request went and who answered.
    auto endpoint = [](const std::optional<Endpoint>& e) { return e ? json(e->str()) : json(nullptr); };
    j["path"] = {{"reached_uplink", r.reached_uplink ? json(*r.reached_uplink) : json(nullptr)},
                 {"redirected_to", endpoint(r.redirected_to)},
                 {"via_proxy", endpoint(r.via_proxy)},
                 {"connect_errno", optional_int(r.connect_errno)}};
    if (r.answered_by) {
        json a = {{"by", r.answered_by->in_client_pod ? "pod" : "node"},
                  {"socket", r.answered_by->socket.str()},
                  {"process", nullptr}};
        if (r.answered_by->process)
            a["process"] = {{"pid", r.answered_by->process->pid}, {"comm", r.answered_by->process->comm}};
        j["answered_by"] = a;
    } else {
        j["answered_by"] = nullptr;
    }
    return j;
}

TransactionRecord record_from_json(const json& j) {
    if (!j.is_object()) throw std::runtime_error("not a JSON object");
    auto need = [&j](const char* key) -> const json& {
        if (!j.contains(key)) throw std::runtime_error(fmt::format("missing field \"{}\"", key));
        return j[key];
    };
    auto object_or_null = [](const json& v, const char* key) -> const json& {
        if (!v.is_object() && !v.is_null()) throw std::runtime_error(fmt::format("field \"{}\" must be an object", key));
        return v;
    };
    // Never dump a value into a message: it may be megabytes, or nested
    // deep enough to exhaust the stack.
    if (!need("schema").is_string() || need("schema") != kTransactionSchema)
        throw std::runtime_error(fmt::format("field \"schema\" is not {}", kTransactionSchema));
    TransactionRecord r;
    auto ts = parse_iso8601_ms(get_string(j, "ts"));
    if (!ts) throw std::runtime_error("field \"ts\" is not an ISO 8601 UTC time");
    r.wall_ms = *ts;
    if (const auto& p = object_or_null(need("pod"), "pod"); !p.is_null()) {
        PodInfo pod;
        pod.namespace_ = get_string(p, "namespace");
        pod.name = get_string(p, "name");
        pod.uid = get_string(p, "uid");
        pod.container = get_string(p, "container");
        r.pod = pod;
    }
    if (j.contains("cgroup") && j["cgroup"].is_string()) r.cgroup = j["cgroup"].get<std::string>();
    if (j.contains("process") && j["process"].is_object())
        r.process = ProcessInfo{static_cast<std::uint32_t>(int_in(j["process"].value("pid", json(0)), "pid", 0, UINT32_MAX)),
                                get_string(j["process"], "comm")};
    auto client = Endpoint::parse(get_string(j, "client"), 0);
    auto server = Endpoint::parse(get_string(j, "server"), 0);
    if (!client || !server) throw std::runtime_error("field \"client\" or \"server\" is not ADDR:PORT");
    r.client = *client;
    r.server = *server;
    if (const auto& q = object_or_null(need("request"), "request"); !q.is_null()) {
        HttpRequest req;
        req.method = get_string(q, "method");
        req.path = get_string(q, "path");
        // null: the head was cut off before the blank line and no token
        // header was in the part seen (presence unknown).
        req.token = get_bool(q, "token");
        req.head_cut = q.contains("token") && q["token"].is_null();
        req.token_ttl = get_bool(q, "token_ttl_header");
        req.forwarded_for = get_bool(q, "forwarded_for");
        r.request = req;
    }
    const auto& resp = need("response");
    if (!resp.is_object()) throw std::runtime_error("field \"response\" must be an object");
    r.status = get_optional_int(resp, "status", 100, 599);
    r.ttl_at_node = get_optional_int(resp, "ttl_at_node", 0, 255);
    r.hops = get_optional_int(j, "hops", 0, 255);
    r.hops_inferred = get_bool(j, "hops_inferred");
    r.required_hop_limit = get_optional_int(j, "required_hop_limit", 1, 256);
    r.incomplete = j.contains("incomplete") && j["incomplete"].is_boolean() && j["incomplete"].get<bool>();
    if (r.incomplete && j.contains("verdict") && j["verdict"].is_null()) {
        r.verdict = Verdict::no_response;  // no verdict: set aside, as when it was recorded
    } else {
        auto v = verdict_from_string(get_string(j, "verdict"));
        if (!v) throw std::runtime_error("field \"verdict\" is not a verdict name");
        r.verdict = *v;
    }
    r.evidence = get_string(j, "evidence");
    const auto& drops = need("drops");
    if (!drops.is_array()) throw std::runtime_error("field \"drops\" must be an array");
    for (const auto& d : drops) {
        if (!d.is_object()) throw std::runtime_error("a drop must be an object");
        DropRecord dr;
        dr.reason = get_string(d, "reason");
        dr.location = get_string(d, "location");
        dr.ttl = static_cast<std::uint8_t>(int_in(d.value("ttl", json(0)), "ttl", 0, 255));
        dr.response = d.value("direction", json("response")) == "response";
        dr.count = get_count(d, "count", 1);
        if (d.contains("netns") && d["netns"].is_number_unsigned() && d["netns"].get<std::uint64_t>() <= UINT32_MAX)
            dr.netns = d["netns"].get<std::uint32_t>();
        if (d.contains("place") && d["place"].is_string()) dr.place = get_string(d, "place");
        if (d.contains("after_dnat_to") && d["after_dnat_to"].is_string())
            dr.rewritten = Endpoint::parse(d["after_dnat_to"].get<std::string>(), 0);
        if (d.contains("device") && d["device"].is_string()) dr.device = get_string(d, "device");
        dr.rewritten_to_node = d.contains("after_dnat_to_node") && d["after_dnat_to_node"].is_boolean() &&
                               d["after_dnat_to_node"].get<bool>();
        r.drops.push_back(dr);
    }
    r.icmp_time_exceeded = get_count(j, "icmp_time_exceeded", 0);
    r.retransmits = get_count(j, "retransmits", 0);
    r.events_lost = get_count(j, "events_lost", 0);
    r.duration_ms = j.contains("duration_ms") ? int_in(j["duration_ms"], "duration_ms", 0, kMaxDurationMs) : 0;
    auto flag = [&j](const char* key) { return j.contains(key) && j[key].is_boolean() && j[key].get<bool>(); };
    r.opened_before_tracing = flag("opened_before_tracing");
    r.opening_unseen = flag("opening_unseen");
    r.incomplete = flag("incomplete");
    r.target_on_node = flag("target_on_node");
    // Recordings from before the path fields have none: nothing is implied.
    auto endpoint_at = [](const json& o, const char* key) -> std::optional<Endpoint> {
        if (!o.contains(key) || o[key].is_null()) return std::nullopt;
        if (!o[key].is_string()) throw std::runtime_error(fmt::format("field \"{}\" must be ADDR:PORT or null", key));
        auto e = Endpoint::parse(o[key].get<std::string>(), 0);
        if (!e) throw std::runtime_error(fmt::format("field \"{}\" is not ADDR:PORT", key));
        return e;
    };
    if (j.contains("path")) {
        const auto& path = object_or_null(j["path"], "path");
        if (!path.is_null()) {
            r.redirected_to = endpoint_at(path, "redirected_to");
            r.via_proxy = endpoint_at(path, "via_proxy");
            r.connect_errno = get_optional_int(path, "connect_errno", 1, 4095);
            if (path.contains("reached_uplink") && path["reached_uplink"].is_boolean())
                r.reached_uplink = path["reached_uplink"].get<bool>();
        }
    }
    if (j.contains("answered_by")) {
        const auto& a = object_or_null(j["answered_by"], "answered_by");
        if (!a.is_null()) {
            LocalAnswer la;
            auto sock = endpoint_at(a, "socket");
            if (!sock) throw std::runtime_error("field \"answered_by\" has no socket");
            la.socket = *sock;
            la.in_client_pod = a.contains("by") && a["by"] == "pod";
            if (a.contains("process") && a["process"].is_object())
                la.process = ProcessInfo{
                    static_cast<std::uint32_t>(int_in(a["process"].value("pid", json(0)), "pid", 0, UINT32_MAX)),
                    get_string(a["process"], "comm")};
            r.answered_by = la;
        }
    }
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
    j["partial"] = d.partial.empty() ? json(nullptr) : json(d.partial);
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
                {"verdict", std::string(to_string(p.verdict))},
                {"incomplete", p.incomplete},
                {"incomplete_set_aside", p.incomplete_set_aside}};
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
                      {"opening_unseen", {{"transactions", a.opening_unseen}, {"drops", a.opening_unseen_drops}}},
                      {"incomplete_transactions", a.incomplete},
                      {"incomplete_pods", a.incomplete_pods},
                      {"events_lost", a.events_lost},
                      {"other_namespace_events", a.other_namespaces},
                      {"socket_bookkeeping_frees", a.socket_bookkeeping},
                      {"late_drops", a.late_drops}};
    return j;
}

}  // namespace imdstrace
