// A tracing session: the pipeline from the kernel to the sinks.
//
//   loader/Tracer (ring buffer) -> decode_event -> Correlator (transactions)
//     -> attribute (verdict + pod) -> sinks (--events, --metrics, the caller's)
//
// cli/ builds SessionOptions from the command line and consumes records;
// everything between the kernel and a finished record happens here.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/errors.hpp"
#include "common/net.hpp"
#include "loader/tracer.hpp"
#include "pods/select.hpp"
#include "sinks/events_file.hpp"
#include "verdict/drop_fix.hpp"
#include "verdict/record.hpp"

namespace imdstrace {

struct SessionOptions {
    std::vector<Endpoint> targets;
    std::vector<std::string> ifaces;  // empty = auto (route lookup)
    std::string cgroup;               // "" = cgroup2 mount root; "none" = no socket hooks
    PodSelection pods;                // --pods
    PodResolverSettings pod_settings; // --host-root, --kubeconfig (cgroup_mount is filled in by start())
    std::string events_file;          // JSONL, appended and flushed per record
    EventsRotation events_rotation;   // --events-max-bytes, --events-max-files
    std::string ready_file;           // written once attached (tests, scripts)
    std::string pcap_file;            // pcapng evidence of every observed packet
    std::string metrics_listen;       // ADDR:PORT for the Prometheus exposition
    std::string node_name;            // the metrics' `node` label ("" = NODE_NAME, else the host name)
    double k8s_events_interval_s = 600;  // Events on failing pods (k8s-api/auto with a cluster); 0 = none
    std::optional<double> duration_s;
    std::uint32_t ring_size = 0;  // event ring buffer bytes (power of two of pages); 0 = the BPF default
    std::vector<std::uint16_t> proxy_ports = TracerConfig::default_proxy_ports();  // --proxy-ports
    bool proxy_any_port = false;
    bool prefer_tcx = true;

    const std::string& host_root() const { return pod_settings.host_root; }
};

// 169.254.169.254:80 and [fd00:ec2::254]:80 (IMDS), 169.254.170.23:80 and
// [fd00:ec2::23]:80 (the EKS Pod Identity agent, node-local).
std::vector<Endpoint> default_targets();

// The EKS Pod Identity agent's addresses (169.254.170.23, fd00:ec2::23):
// served on each node by the agent itself, never by IMDS.
bool node_local_agent_address(const IpAddr& a);

// What the session itself left out (the diagnosis adds the transactions it sets aside).
struct SessionSetAside {
    std::uint64_t other_namespaces = 0;    // kernel events of namespaces not this node's
    std::uint64_t socket_bookkeeping = 0;  // frees of sockets' own queues, no followed connection
    std::uint64_t events_lost = 0;         // ring buffer full
    std::uint64_t late_drops = 0;          // path drops after their transaction was reported
};

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
    // Called after each batch of records handed to run()'s sink (at most one
    // batch per poll, 100 ms apart): a sink that buffers writes it out here.
    void on_batch_end(std::function<void()> f);
    std::size_t open_connections() const;

    double elapsed_s() const;
    // The traced window: frozen when run() returns (what diagnose reports
    // and the --events trailer records, so `report` prints the same).
    double window_s() const;
    TracerCounters counters() const;
    SessionSetAside set_aside() const;
    // The node's forwarding sysctls, as this network namespace has them.
    const NodeFacts& node_facts() const;
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
