#include "sinks/metrics.hpp"

#include <fmt/format.h>
#include <httplib.h>

#include <unistd.h>

#include <cstdlib>
#include <stdexcept>

#include "common/net.hpp"
#include "verdict/diagnosis.hpp"
#include "sinks/escape.hpp"

namespace imdstrace {
namespace {

// A label value: valid UTF-8 (a cgroup name may hold any byte), with
// backslash, quote and newline escaped as the exposition format asks.
std::string escape(const std::string& raw) {
    std::string out;
    for (char c : utf8_or_replacement(raw)) {
        if (c == '\\') out += "\\\\";
        else if (c == '"') out += "\\\"";
        else if (c == '\n') out += "\\n";
        else out += c;
    }
    return out;
}

constexpr const char* kVersion = "0.1.0";

}  // namespace

void Metrics::record(const TransactionRecord& r, std::int64_t now_ms) {
    // Leftovers of connections opened before tracing, and transactions with
    // only missing evidence, count in no pod's figures (set aside).
    if (!set_aside_reason(r).empty()) return;
    std::lock_guard lock(mu_);
    std::string ns = r.pod ? r.pod->namespace_ : "";
    std::string pod = r.pod ? r.pod->name : r.subject();
    auto& p = pods_[ns + "/" + pod];
    p.ns = ns;
    p.pod = pod;
    p.last_ms = now_ms;
    ++p.transactions[std::string(to_string(r.verdict))];
    for (const auto& d : r.drops)
        if (!endpoint_bookkeeping(d)) p.drops[d.reason.empty() ? d.location : d.reason] += d.count;
    if (r.required_hop_limit) p.required_hop_limit = std::max(p.required_hop_limit.value_or(0), *r.required_hop_limit);
    if (r.ttl_at_node) {
        int ttl = *r.ttl_at_node;
        for (std::size_t i = 0; i < std::size(kTtlBuckets); ++i)
            if (ttl <= kTtlBuckets[i]) ++ttl_bucket_counts_[i];
        ++ttl_count_;
        ttl_sum_ += static_cast<std::uint64_t>(ttl);
        // The latest token response, not the lowest ever: after the hop
        // limit is raised the gauge (and any alert on it) recovers.
        // Only a 200 answer to a token PUT carries the hop limit.
        if (r.token_request() && r.status == 200 && !r.target_on_node) node_hop_limit_ = ttl;
    }
}

void Metrics::set_events_lost(std::uint64_t lost) {
    std::lock_guard lock(mu_);
    events_lost_ = lost;
}

void Metrics::age_out(std::int64_t now_ms) {
    for (auto it = pods_.begin(); it != pods_.end();) {
        if (now_ms - it->second.last_ms > kRetainTtls * pod_ttl_.count()) it = pods_.erase(it);
        else ++it;
    }
}

std::size_t Metrics::pod_series() const {
    std::lock_guard lock(mu_);
    return pods_.size();
}

std::string Metrics::render(std::int64_t now_ms) {
    std::lock_guard lock(mu_);
    age_out(now_ms);
    // Aged out of the exposition (kept only to continue its counts).
    auto shown = [&](const PodSeries& p) { return now_ms - p.last_ms <= pod_ttl_.count(); };
    const std::string node = escape(node_);
    std::string o;
    o += "# HELP imdstrace_transactions_total IMDS transactions by pod and verdict.\n";
    o += "# TYPE imdstrace_transactions_total counter\n";
    for (const auto& [k, p] : pods_) {
        if (!shown(p)) continue;
        for (const auto& [v, n] : p.transactions)
            o += fmt::format("imdstrace_transactions_total{{node=\"{}\",namespace=\"{}\",pod=\"{}\",verdict=\"{}\"}} {}\n",
                             node, escape(p.ns), escape(p.pod), v, n);
    }
    o += "# HELP imdstrace_drops_total Kernel drops of IMDS traffic by pod and drop reason.\n";
    o += "# TYPE imdstrace_drops_total counter\n";
    for (const auto& [k, p] : pods_) {
        if (!shown(p)) continue;
        for (const auto& [reason, n] : p.drops)
            o += fmt::format("imdstrace_drops_total{{node=\"{}\",namespace=\"{}\",pod=\"{}\",reason=\"{}\"}} {}\n", node,
                             escape(p.ns),
                             escape(p.pod), escape(reason), n);
    }
    o += "# HELP imdstrace_response_ttl_at_node IP TTL of IMDS responses arriving at the node.\n";
    o += "# TYPE imdstrace_response_ttl_at_node histogram\n";
    for (std::size_t i = 0; i < std::size(kTtlBuckets); ++i)
        o += fmt::format("imdstrace_response_ttl_at_node_bucket{{node=\"{}\",le=\"{}\"}} {}\n", node, kTtlBuckets[i],
                         ttl_bucket_counts_[i]);
    o += fmt::format("imdstrace_response_ttl_at_node_bucket{{node=\"{}\",le=\"+Inf\"}} {}\n", node, ttl_count_);
    o += fmt::format("imdstrace_response_ttl_at_node_sum{{node=\"{}\"}} {}\n", node, ttl_sum_);
    o += fmt::format("imdstrace_response_ttl_at_node_count{{node=\"{}\"}} {}\n", node, ttl_count_);
    o += "# HELP imdstrace_pod_required_hop_limit IMDS hop limit the pod needs (hops behind the uplink + 1).\n";
    o += "# TYPE imdstrace_pod_required_hop_limit gauge\n";
    for (const auto& [k, p] : pods_)
        if (shown(p) && p.required_hop_limit)
            o += fmt::format("imdstrace_pod_required_hop_limit{{node=\"{}\",namespace=\"{}\",pod=\"{}\"}} {}\n", node,
                             escape(p.ns),
                             escape(p.pod), *p.required_hop_limit);
    o += "# HELP imdstrace_node_hop_limit_observed TTL of IMDS token responses arriving at the node.\n";
    o += "# TYPE imdstrace_node_hop_limit_observed gauge\n";
    if (node_hop_limit_) o += fmt::format("imdstrace_node_hop_limit_observed{{node=\"{}\"}} {}\n", node, *node_hop_limit_);
    o += "# HELP imdstrace_events_lost_total Events the kernel could not queue (ring buffer full).\n";
    o += "# TYPE imdstrace_events_lost_total counter\n";
    o += fmt::format("imdstrace_events_lost_total{{node=\"{}\"}} {}\n", node, events_lost_);
    o += "# HELP imdstrace_build_info imdstrace version.\n";
    o += "# TYPE imdstrace_build_info gauge\n";
    o += fmt::format("imdstrace_build_info{{node=\"{}\",version=\"{}\"}} 1\n", node, kVersion);
    o += "# HELP imdstrace_start_time_seconds Unix time this imdstrace began counting.\n";
    o += "# TYPE imdstrace_start_time_seconds gauge\n";
    const auto started_ms =
        std::chrono::duration_cast<std::chrono::milliseconds>(started_.time_since_epoch()).count();
    o += fmt::format("imdstrace_start_time_seconds{{node=\"{}\"}} {}.{:03}\n", node, started_ms / 1000,
                     started_ms % 1000);
    return o;
}

std::string metrics_node_name(const std::string& given) {
    if (!given.empty()) return given;
    if (const char* env = std::getenv("NODE_NAME"); env && *env) return env;
    char host[256] = {};
    if (gethostname(host, sizeof host - 1) == 0 && host[0]) return host;
    return "unknown";
}

std::optional<Endpoint> parse_metrics_listen(const std::string& listen) {
    // Endpoint::parse refuses port 0 and defaults a missing one: ":0" is
    // read as "no port" (default 0), a missing port as an error.
    if (listen.ends_with(":0")) {
        auto ep = Endpoint::parse(std::string_view(listen).substr(0, listen.size() - 2), 0);
        if (ep && listen.size() > 2 && (ep->addr.is_v4() || listen[listen.size() - 3] == ']')) return ep;
        return std::nullopt;
    }
    auto with_0 = Endpoint::parse(listen, 0), with_1 = Endpoint::parse(listen, 1);
    if (!with_0 || with_0 != with_1) return std::nullopt;
    return with_0;
}

MetricsServer::MetricsServer(Metrics& metrics, const std::string& listen) : server_(std::make_unique<httplib::Server>()) {
    auto ep = parse_metrics_listen(listen);
    if (!ep) throw std::invalid_argument("--metrics " + listen + ": expected ADDR:PORT, e.g. 0.0.0.0:9655");
    server_->Get("/metrics", [&metrics](const httplib::Request&, httplib::Response& res) {
        auto now = std::chrono::duration_cast<std::chrono::milliseconds>(
                       std::chrono::system_clock::now().time_since_epoch())
                       .count();
        res.set_content(metrics.render(now), "text/plain; version=0.0.4; charset=utf-8");
    });
    server_->Get("/", [](const httplib::Request&, httplib::Response& res) {
        res.set_content("imdstrace: metrics at /metrics\n", "text/plain");
    });
    std::string host = ep->addr.str();
    if (ep->port == 0) {
        port_ = server_->bind_to_any_port(host);
    } else {
        port_ = server_->bind_to_port(host, ep->port) ? ep->port : -1;
    }
    if (port_ <= 0) throw std::runtime_error("--metrics: cannot listen on " + listen + " (address in use or not local)");
    thread_ = std::thread([this] { server_->listen_after_bind(); });
}

MetricsServer::~MetricsServer() {
    server_->stop();
    if (thread_.joinable()) thread_.join();
}

}  // namespace imdstrace
