#include "fleet/fleet.hpp"

#include <curl/curl.h>
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <mutex>
#include <set>
#include <stdexcept>

#include "common/json_input.hpp"
#include "sinks/escape.hpp"
#include "verdict/diagnosis.hpp"
#include "verdict/verdict.hpp"

namespace imdstrace {
namespace {

constexpr const char* kFailing = R"(verdict!~"OK|NOT_FOUND")";

std::size_t append_body(char* p, std::size_t sz, std::size_t n, void* ud) {
    auto* body = static_cast<std::string*>(ud);
    if (body->size() + sz * n > (64u << 20)) return 0;  // a runaway answer is an error, not memory
    body->append(p, sz * n);
    return sz * n;
}

// A sample's value as an int, when it is a finite number.
std::optional<double> sample_value(const nlohmann::json& s) {
    if (!s.contains("value") || !s["value"].is_array() || s["value"].size() != 2 || !s["value"][1].is_string())
        return std::nullopt;
    try {
        double v = std::stod(s["value"][1].get<std::string>());
        return std::isfinite(v) ? std::optional(v) : std::nullopt;
    } catch (const std::exception&) {
        return std::nullopt;
    }
}

std::string label(const nlohmann::json& s, const char* name) {
    if (!s.contains("metric") || !s["metric"].is_object()) return "";
    const auto& m = s["metric"];
    return m.contains(name) && m[name].is_string() ? m[name].get<std::string>() : "";
}

// kube-state-metrics' name for a node label: label_ + the name with every
// character outside [a-zA-Z0-9_] as _.
std::string ksm_label(const std::string& node_label) {
    std::string out = "label_";
    for (char c : node_label) out += std::isalnum(static_cast<unsigned char>(c)) ? c : '_';
    return out;
}

int clamp_int(double v) { return static_cast<int>(std::clamp(v, -1e9, 1e9)); }

}  // namespace

PromQuery prometheus_http(const std::string& url, long timeout_ms) {
    static std::once_flag once;
    std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
    std::string base = url;
    while (base.ends_with("/")) base.pop_back();
    if (!base.starts_with("http://") && !base.starts_with("https://"))
        throw std::invalid_argument("--prometheus " + url + ": expected an http:// or https:// URL");
    return [base, timeout_ms](const std::string& promql) {
        std::unique_ptr<CURL, void (*)(CURL*)> h(curl_easy_init(), &curl_easy_cleanup);
        if (!h) throw std::runtime_error("libcurl could not start a request");
        std::unique_ptr<char, void (*)(void*)> q(curl_easy_escape(h.get(), promql.c_str(), 0), &curl_free);
        std::string target = base + "/api/v1/query?query=" + q.get(), body;
        char errbuf[CURL_ERROR_SIZE] = {};
        curl_easy_setopt(h.get(), CURLOPT_URL, target.c_str());
        curl_easy_setopt(h.get(), CURLOPT_USERAGENT, "imdstrace");
        curl_easy_setopt(h.get(), CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(h.get(), CURLOPT_TIMEOUT_MS, timeout_ms);
        curl_easy_setopt(h.get(), CURLOPT_PROTOCOLS_STR, "http,https");
        curl_easy_setopt(h.get(), CURLOPT_ERRORBUFFER, errbuf);
        curl_easy_setopt(h.get(), CURLOPT_WRITEDATA, &body);
        curl_easy_setopt(h.get(), CURLOPT_WRITEFUNCTION, &append_body);
        CURLcode rc = curl_easy_perform(h.get());
        long code = 0;
        curl_easy_getinfo(h.get(), CURLINFO_RESPONSE_CODE, &code);
        if (rc != CURLE_OK)
            throw std::runtime_error("cannot reach Prometheus at " + base + ": " +
                                     (errbuf[0] ? errbuf : curl_easy_strerror(rc)));
        nlohmann::json j = nlohmann::json::parse(body, nullptr, false);
        if (j.is_discarded() || !j.is_object())
            throw std::runtime_error(fmt::format("Prometheus at {} answered HTTP {} with no JSON", base, code));
        if (j.value("status", "") != "success")
            throw std::runtime_error(fmt::format("Prometheus refused the query {}: {}", promql,
                                                 capped(j.value("error", "HTTP " + std::to_string(code)), 300)));
        if (!j.contains("data") || !j["data"].contains("result") || !j["data"]["result"].is_array())
            throw std::runtime_error("Prometheus answered " + promql + " without a result vector");
        return j["data"]["result"];
    };
}

bool FleetNode::failing() const { return !pods.empty(); }

bool Fleet::failing() const {
    return std::any_of(nodes.begin(), nodes.end(), [](const FleetNode& n) { return n.failing(); });
}

std::string failing_pods_query(int window_s) {
    const std::string w = std::to_string(window_s) + "s";
    // How far back to look for a series' and its node's first samples: past
    // the window, so a node Prometheus has had longer shows its earlier one.
    const std::string history = std::to_string(window_s + 300) + "s:1m";
    return fmt::format(
        "(sum by (node, namespace, pod, verdict) (increase(imdstrace_transactions_total{{{0}}}[{1}])) > 0) or "
        "(sum by (node, namespace, pod, verdict) ((imdstrace_transactions_total{{{0}}} unless "
        "imdstrace_transactions_total offset {1}) and on (node) (time() - imdstrace_start_time_seconds < {2}))) or "
        "(sum by (node, namespace, pod, verdict) ((imdstrace_transactions_total{{{0}}} unless "
        "imdstrace_transactions_total offset {1}) and (min_over_time(timestamp(imdstrace_transactions_total{{{0}}})[{3}]) "
        "> on (node) group_left min by (node) (min_over_time(timestamp(imdstrace_build_info)[{3}])))))",
        kFailing, w, window_s, history);
}

Fleet build_fleet(const PromQuery& query, const FleetOptions& opts, std::string prometheus_url) {
    Fleet f;
    f.prometheus = std::move(prometheus_url);
    f.window_s = opts.window_s;
    const std::string w = std::to_string(opts.window_s) + "s";
    std::map<std::string, FleetNode> nodes;
    auto node = [&nodes](const std::string& name) -> FleetNode& {
        auto& n = nodes[name];
        n.name = name;
        return n;
    };
    // Every node that runs imdstrace, healthy or not.
    for (const auto& s : query("max by (node) (imdstrace_build_info)")) node(label(s, "node"));
    for (const auto& s : query("min by (node) (imdstrace_node_hop_limit_observed)"))
        if (auto v = sample_value(s)) node(label(s, "node")).hop_limit_observed = clamp_int(*v);
    for (const auto& s : query("sum by (node) (increase(imdstrace_events_lost_total[" + w + "]))"))
        if (auto v = sample_value(s)) node(label(s, "node")).events_lost = std::lround(*v);

    // Pods: what each needs, and its failures in the window: the
    // ImdsRequestsFailing alert's expression (deploy/prometheus-rules.yaml,
    // with the window for its 10 minutes): a series that grew, or one that
    // appeared already above zero on a node whose imdstrace started within
    // the window, or after Prometheus's first sample of its node (not merely
    // one that a restarted Prometheus never saw before).
    std::map<std::pair<std::string, std::string>, FleetPod> pods;  // (node, ns/pod)
    auto pod = [&pods](const nlohmann::json& s) -> FleetPod& {
        auto& p = pods[{label(s, "node"), label(s, "namespace") + "/" + label(s, "pod")}];
        p.namespace_ = label(s, "namespace");
        p.name = label(s, "pod");
        return p;
    };
    for (const auto& s : query("max by (node, namespace, pod) (imdstrace_pod_required_hop_limit)"))
        if (auto v = sample_value(s)) pod(s).required_hop_limit = clamp_int(*v);
    const std::string failing = failing_pods_query(opts.window_s);
    std::set<std::tuple<std::string, std::string, std::string, std::string>> failed;
    for (const auto& s : query(failing))
        failed.insert({label(s, "node"), label(s, "namespace"), label(s, "pod"), label(s, "verdict")});
    // Counted as the counters stand (what diagnose's TRANSACTIONS column shows).
    for (const auto& s : query("sum by (node, namespace, pod, verdict) (imdstrace_transactions_total{" +
                               std::string(kFailing) + "})"))
        if (failed.count({label(s, "node"), label(s, "namespace"), label(s, "pod"), label(s, "verdict")}))
            if (auto v = sample_value(s)) pod(s).failures[label(s, "verdict")] = std::lround(*v);

    // Node groups from kube-state-metrics, when Prometheus has it.
    std::map<std::string, std::string> group_of;
    for (const auto& gl : opts.group_labels) {
        const std::string l = ksm_label(gl);
        for (const auto& s : query("max by (node, " + l + ") (kube_node_labels{" + l + "!=\"\"})")) {
            const std::string n = label(s, "node"), g = label(s, l.c_str());
            if (!n.empty() && !g.empty() && !group_of.count(n)) group_of[n] = g;
        }
    }

    for (auto& [key, p] : pods) {
        auto& n = node(key.first);
        if (p.required_hop_limit)
            n.required_hop_limit = std::max(n.required_hop_limit.value_or(0), *p.required_hop_limit);
        const bool short_of_hops = p.required_hop_limit && n.hop_limit_observed && *p.required_hop_limit > *n.hop_limit_observed;
        if (p.failures.empty() && !short_of_hops) continue;
        // The worst verdict; the hop arithmetic names HOP_LIMIT_EXCEEDED
        // even before a transaction of the window failed with it.
        int worst = -1;
        for (const auto& [v, count] : p.failures) {
            auto parsed = verdict_from_string(v);
            int sev = parsed ? severity(*parsed) : 0;
            if (sev > worst) worst = sev, p.verdict = v;
        }
        if (short_of_hops && (p.failures.empty() || p.failures.count("HOP_LIMIT_EXCEEDED")))
            p.verdict = "HOP_LIMIT_EXCEEDED";
        n.pods.push_back(p);
    }

    std::map<std::string, FleetGroup> groups;
    for (auto& [name, n] : nodes) {
        if (auto it = group_of.find(name); it != group_of.end()) n.group = it->second;
        // Named groups first, then each ungrouped node alone.
        auto& g = groups[n.group.empty() ? "1" + name : "0" + n.group];
        g.name = n.group;
        g.nodes.push_back(name);
        if (n.hop_limit_observed)
            g.hop_limit_observed = std::min(g.hop_limit_observed.value_or(255), *n.hop_limit_observed);
        if (n.required_hop_limit)
            g.required_hop_limit = std::max(g.required_hop_limit.value_or(0), *n.required_hop_limit);
        std::sort(n.pods.begin(), n.pods.end(), [](const FleetPod& a, const FleetPod& b) {
            return std::tie(a.namespace_, a.name) < std::tie(b.namespace_, b.name);
        });
        f.nodes.push_back(std::move(n));
    }
    for (auto& [key, g] : groups) {
        if (g.required_hop_limit && g.hop_limit_observed && *g.required_hop_limit > *g.hop_limit_observed)
            g.fix = hop_limit_fix(*g.required_hop_limit);
        f.groups.push_back(std::move(g));
    }
    return f;
}

nlohmann::json to_json(const Fleet& f) {
    auto opt = [](const std::optional<int>& v) { return v ? nlohmann::json(*v) : nlohmann::json(); };
    nlohmann::json nodes = nlohmann::json::array(), groups = nlohmann::json::array();
    for (const auto& n : f.nodes) {
        nlohmann::json pods = nlohmann::json::array();
        for (const auto& p : n.pods) {
            nlohmann::json verdicts = nlohmann::json::object();
            for (const auto& [v, c] : p.failures) verdicts[v] = c;
            pods.push_back({{"namespace", utf8_or_replacement(p.namespace_)},
                            {"name", utf8_or_replacement(p.name)},
                            {"required_hop_limit", opt(p.required_hop_limit)},
                            {"verdicts", verdicts},
                            {"verdict", p.verdict}});
        }
        nodes.push_back({{"node", utf8_or_replacement(n.name)},
                         {"node_group", n.group.empty() ? nlohmann::json() : nlohmann::json(utf8_or_replacement(n.group))},
                         {"hop_limit_observed", opt(n.hop_limit_observed)},
                         {"required_hop_limit", opt(n.required_hop_limit)},
                         {"events_lost", n.events_lost},
                         {"status", n.failing() ? "FAILING" : "OK"},  // a node has no verdict: its pods do
                         {"failing_pods", pods}});
    }
    for (const auto& g : f.groups) {
        nlohmann::json names = nlohmann::json::array();
        for (const auto& n : g.nodes) names.push_back(utf8_or_replacement(n));
        groups.push_back({{"node_group", g.name.empty() ? nlohmann::json() : nlohmann::json(utf8_or_replacement(g.name))},
                          {"nodes", names},
                          {"hop_limit_observed", opt(g.hop_limit_observed)},
                          {"required_hop_limit", opt(g.required_hop_limit)},
                          {"fix", g.fix.empty() ? nlohmann::json() : nlohmann::json(g.fix)}});
    }
    return {{"schema", "imdstrace.fleet/v1"},
            {"prometheus", f.prometheus},
            {"window_s", f.window_s},
            {"failing", f.failing()},
            {"nodes", nodes},
            {"node_groups", groups}};
}

std::string format_fleet(const Fleet& f, bool color) {
    auto opt = [](const std::optional<int>& v) { return v ? std::to_string(*v) : std::string("-"); };
    auto paint = [color](const std::string& s, bool bad) {
        return color ? fmt::format("\x1b[{}m{}\x1b[0m", bad ? "31" : "32", s) : s;
    };
    std::size_t failing_nodes = 0;
    for (const auto& n : f.nodes) failing_nodes += n.failing();
    std::string o = fmt::format("imdstrace fleet: {} node{} reporting to {}, {} failing (failures over the last {} s)\n\n",
                                f.nodes.size(), f.nodes.size() == 1 ? "" : "s", f.prometheus, failing_nodes, f.window_s);
    o += fmt::format("{:<8}  {:<40}  {:<20}  {:>4}  {:>5}  {}\n", "STATUS", "NODE", "NODE GROUP", "HOPS", "NEEDS",
                     "FAILING PODS");
    for (const auto& n : f.nodes) {
        std::string pods;
        for (const auto& p : n.pods) {
            std::string counts;
            for (const auto& [v, c] : p.failures) counts += fmt::format("{}{} {}", counts.empty() ? "" : ", ", c, v);
            pods += fmt::format("{}{}/{} {}{}", pods.empty() ? "" : "; ", terminal_safe(p.namespace_),
                                terminal_safe(p.name), p.verdict,
                                counts.empty() ? " (needs " + opt(p.required_hop_limit) + ")" : " (" + counts + ")");
        }
        o += fmt::format("{:<8}  {:<40}  {:<20}  {:>4}  {:>5}  {}\n", paint(n.failing() ? "FAILING" : "OK", n.failing()),
                         terminal_safe(n.name), n.group.empty() ? "-" : terminal_safe(n.group), opt(n.hop_limit_observed),
                         opt(n.required_hop_limit), pods.empty() ? "-" : pods);
        if (n.events_lost)
            o += fmt::format("          {} events lost in the window: some of its transactions are incomplete\n",
                             n.events_lost);
    }
    for (const auto& g : f.groups) {
        if (g.fix.empty()) continue;
        std::string names;
        for (const auto& n : g.nodes) names += (names.empty() ? "" : ", ") + terminal_safe(n);
        o += fmt::format("\nnode group {}: hop limit {}, its pods need {} (nodes: {})\n",
                         g.name.empty() ? "(none: " + names + ")" : terminal_safe(g.name), opt(g.hop_limit_observed),
                         opt(g.required_hop_limit), names);
        std::string fix = g.fix;
        std::string indented;
        for (std::size_t start = 0; start < fix.size();) {
            auto end = fix.find('\n', start);
            auto line = fix.substr(start, end - start);
            line.erase(0, line.find_first_not_of(' '));  // aligned under the first line, as diagnose does
            indented += (indented.empty() ? "  fix:   " : "\n         ") + line;
            start = end == std::string::npos ? fix.size() : end + 1;
        }
        o += indented + "\n";
    }
    return o;
}

}  // namespace imdstrace
