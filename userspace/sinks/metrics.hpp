// Prometheus metrics (names are a contract: ../shared/DESIGN.md), served
// over HTTP by cpp-httplib.  Label cardinality is bounded: a pod whose
// series have not moved for `pod_ttl` ages out of the exposition.  Its
// counts are kept for `kRetainTtls` x `pod_ttl` more: a subject that comes
// back within that time continues from them, so a repeat of the same number
// of failures is an increase Prometheus sees (restarting at 0 with the same
// labels made "3 again" look like no change).  Every
// series carries `node` (--node-name, the DaemonSet's NODE_NAME, else the
// host name), so alerts and `imdstrace fleet` can name the node.
#pragma once

#include "common/net.hpp"

#include <optional>

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "verdict/record.hpp"

namespace httplib {
class Server;
}

namespace imdstrace {

class Metrics {
public:
    // `started`: when this process began counting, exported as
    // imdstrace_start_time_seconds (Unix seconds), so a rule can tell a
    // counter that appeared already above zero because it is new from one
    // that Prometheus merely never saw before (it restarted).
    explicit Metrics(std::string node = "", std::chrono::milliseconds pod_ttl = std::chrono::minutes(10),
                     std::chrono::system_clock::time_point started = std::chrono::system_clock::now())
        : node_(std::move(node)), pod_ttl_(pod_ttl), started_(started) {}

    void record(const TransactionRecord& r, std::int64_t now_ms);
    void set_events_lost(std::uint64_t lost);
    // Prometheus text exposition format 0.0.4.
    std::string render(std::int64_t now_ms);
    std::size_t pod_series() const;  // subjects kept, shown or aged out of the exposition

private:
    struct PodSeries {
        std::string ns, pod;
        std::map<std::string, std::uint64_t> transactions;  // verdict -> count
        std::map<std::string, std::uint64_t> drops;         // reason -> count
        std::optional<int> required_hop_limit;
        std::int64_t last_ms = 0;
    };
    void age_out(std::int64_t now_ms);
    static constexpr int kRetainTtls = 6;  // counts kept for 6 x pod_ttl (an hour by default)

    mutable std::mutex mu_;
    std::string node_;
    std::chrono::milliseconds pod_ttl_;
    std::chrono::system_clock::time_point started_;
    std::map<std::string, PodSeries> pods_;
    static constexpr int kTtlBuckets[] = {1, 2, 3, 4, 8, 16, 32, 64, 128, 255};
    std::uint64_t ttl_bucket_counts_[10] = {};
    std::uint64_t ttl_count_ = 0;
    std::uint64_t ttl_sum_ = 0;
    std::optional<int> node_hop_limit_;
    std::uint64_t events_lost_ = 0;
};

// The node name metrics carry: `given` (--node-name) when set, else the
// NODE_NAME environment variable (the downward API), else the host name.
std::string metrics_node_name(const std::string& given);

// --metrics ADDR:PORT.  The port is required; 0 asks for a free one (the
// caller logs the bound port).  nullopt when the text is not that.
std::optional<Endpoint> parse_metrics_listen(const std::string& listen);

class MetricsServer {
public:
    // ADDR:PORT (e.g. 0.0.0.0:9655, [::]:9655, 127.0.0.1:0).  Throws with a
    // clear message when the address cannot be bound.
    MetricsServer(Metrics& metrics, const std::string& listen);
    ~MetricsServer();
    int port() const { return port_; }

private:
    std::unique_ptr<httplib::Server> server_;
    std::thread thread_;
    int port_ = 0;
};

}  // namespace imdstrace
