// A tracing session: tracer -> decode -> correlate -> judge -> attribute,
// handing finished transaction records to the caller.
#pragma once

#include <atomic>
#include <cstdint>
#include <fstream>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/net.hpp"
#include "loader/tracer.hpp"
#include "pods/resolver.hpp"
#include "verdict/record.hpp"

namespace imdstrace {

struct SessionOptions {
    std::vector<Endpoint> targets;
    std::vector<std::string> ifaces;  // empty = auto (route lookup)
    std::string cgroup;               // "" = cgroup2 mount root; "none" = no socket hooks
    std::string pods = "auto";
    std::string host_root = "/";
    std::string kubeconfig;           // --kubeconfig for --pods k8s-api/auto ("" = in-cluster, $KUBECONFIG)
    std::string events_file;          // JSONL, appended and flushed per record
    std::string ready_file;           // written once attached (tests, scripts)
    std::string pcap_file;            // pcapng evidence of every observed packet
    std::string metrics_listen;       // ADDR:PORT for the Prometheus exposition
    std::optional<double> duration_s;
    bool prefer_tcx = true;
};

// Usage problems (exit 2) vs. runtime failures (exit 1).
struct UsageError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

std::vector<Endpoint> default_targets();
// The cgroup2 mount point under host_root, from /proc/self/mounts; when
// host_root has none of its own, the one this process sees.
std::optional<std::string> find_cgroup2_mount(const std::string& host_root = "/");
// The resolver --pods names (UsageError for a bad value or mapping file);
// cgroup paths it is given are relative to cgroup_mount.
std::unique_ptr<PodResolver> make_pod_resolver(const SessionOptions& opts, const std::string& cgroup_mount);

class Session {
public:
    using RecordSink = std::function<void(const TransactionRecord&)>;

    explicit Session(SessionOptions opts);
    ~Session();

    // Resolve uplinks, cgroup, pods; load and attach.  Throws UsageError or
    // std::runtime_error.
    void start();
    // Trace until the duration ends or `stop` becomes true.  `quiet` is
    // called after every `quiet_s` seconds without a transaction.
    void run(const std::atomic<bool>& stop, const RecordSink& sink, const std::function<void()>& quiet = {},
             double quiet_s = 10);
    std::size_t open_connections() const;

    double elapsed_s() const;
    // The traced window: frozen when run() returns (what diagnose reports
    // and the --events trailer records, so `report` prints the same).
    double window_s() const;
    TracerCounters counters() const;
    std::vector<std::string> describe() const;  // what is attached where
    const SessionOptions& options() const { return opts_; }
    std::vector<std::string> target_strings() const;
    int metrics_port() const;  // the bound port (useful with :0), -1 without --metrics

private:
    struct Impl;
    SessionOptions opts_;
    std::unique_ptr<Impl> impl_;
};

std::uint64_t monotonic_ns();
std::int64_t unix_ms_now();

}  // namespace imdstrace
