// The BPF side's life cycle: open -> configure -> load -> attach -> poll ->
// detach.  A Tracer owns the skeleton, every attachment and the ring
// buffer; destroying it (normal exit, SIGINT, SIGTERM, an exception) leaves
// nothing behind: no tc filter, no clsact qdisc it created, no cgroup link,
// nothing pinned.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "common/net.hpp"
#include "loader/uplink.hpp"

namespace imdstrace {

// What the running kernel offers, read from its BTF (no tracefs needed).
struct KernelFeatures {
    std::string release;             // uname -r
    std::string machine;             // uname -m: x86_64, aarch64
    bool has_btf = false;            // /sys/kernel/btf/vmlinux readable
    bool kfree_skb_reason = false;   // v5.17+: kfree_skb carries a drop reason
    bool kfree_skb_rx_sk = false;    // v6.11+: and the receiving socket (its netns for TCP drops)
    bool icmp_send_tracepoint = false;  // v6.9+: icmp/icmp_send
    bool connect_tracepoint = false;    // v4.16+: sock/inet_sock_set_state
    bool syscall_tracepoints = false;   // raw_syscalls sys_enter/sys_exit (connect() failures)
    bool tcx = false;                // v6.6+: tcx links (detach on process exit)
    int tcx_ingress = -1;            // enum bpf_attach_type values of this kernel
    int tcx_egress = -1;
    bool tracefs_mounted = false;    // informational: tp_btf does not need it

    static KernelFeatures probe();
};

struct TracerConfig {
    std::vector<Endpoint> targets;
    std::vector<Interface> uplinks;
    std::string cgroup_dir;   // cgroup v2 directory for the cgroup_skb programs; "" = none
    bool prefer_tcx = true;   // fall back to netlink tc when the kernel has no tcx
    bool attach = true;       // false: load only (the verifier's verdict, for `check`)
    std::uint32_t ring_size = 0;  // event ring bytes, a power of two of pages; 0 = the object's default
    // Destination ports whose TCP payloads are checked for absolute-URI
    // metadata requests (an HTTP proxy); empty = none; proxy_any_port: all.
    std::vector<std::uint16_t> proxy_ports = default_proxy_ports();
    bool proxy_any_port = false;
    // The ports HTTP proxies commonly listen on (squid 3128/3129, 8080, 8000,
    // 8081, privoxy 8118, 8888, 80).
    static std::vector<std::uint16_t> default_proxy_ports() { return {3128, 3129, 8080, 8000, 8081, 8118, 8888, 80}; }
};

struct TracerCounters {
    std::uint64_t seen = 0;
    std::uint64_t emitted = 0;
    std::uint64_t lost = 0;
    std::uint64_t drops_seen = 0;
};

class Tracer {
public:
    using EventHandler = std::function<void(std::span<const std::uint8_t>)>;

    // Loads and attaches; throws std::runtime_error with a message that says
    // what failed and what to do.  Nothing stays attached on failure.
    static std::unique_ptr<Tracer> start(const TracerConfig& config, const KernelFeatures& features,
                                         EventHandler on_event);
    ~Tracer();
    Tracer(const Tracer&) = delete;
    Tracer& operator=(const Tracer&) = delete;

    // Deliver pending events to the handler; waits up to timeout_ms.
    // Returns the number of events, or -1 on error.
    int poll(int timeout_ms);
    TracerCounters counters() const;
    // Events the kernel could not queue (ring buffer full), all hooks: the
    // cheap subset of counters(), read after every poll.
    std::uint64_t events_lost() const;
    // "tcx" or "tc" per uplink, and which drop/ICMP paths are in use.
    std::vector<std::string> attach_summary() const;

private:
    Tracer() = default;
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

}  // namespace imdstrace
