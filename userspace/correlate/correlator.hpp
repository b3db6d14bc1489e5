// Turns the stream of packet observations into transactions.
//
// A connection is followed across hooks that may see different tuples:
// the cgroup hooks see the client's own addresses, the uplink sees them
// after any masquerading.  NAT keeps TCP sequence numbers, so the client's
// initial sequence number (SYN, or SYN-ACK ack - 1) links the two views;
// without a SYN (tracer started mid-connection) identical tuples link them.
// Drops and ICMP quotes may carry either view and are looked up in both.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <unordered_map>
#include <vector>

#include "correlate/expiry.hpp"
#include "correlate/transaction.hpp"
#include "decode/observation.hpp"

namespace imdstrace {

class DropReasons;
class KernelSymbols;

struct CorrelatorOptions {
    std::uint64_t linger_ns = 2'000'000'000;      // after a close, wait for late drops/ICMP
    std::uint64_t idle_ns = 10'000'000'000;       // no packet for this long: finished
    std::uint64_t tombstone_ns = 30'000'000'000;  // remember finished flows (late packets)
    std::uint64_t stale_idle_ns = 60'000'000'000; // idle before a connection opened before tracing is reported:
                                                  // IMDS retransmits old answers for minutes, counted whole
    std::size_t max_connections = 65536;          // memory bound under connection floods
    std::uint32_t node_netns = 0;                 // the tracer's own network namespace (drop places)
    // The target table as the BPF programs index it (imds_event.target_index):
    // IPv4 targets in configuration order, then IPv6 ones.  Followed packets
    // (DNAT, REDIRECT) are filed under the target their client asked for.
    std::vector<Endpoint> targets;
    bool uplinks_traced = false;  // tc hooks on the uplinks: "never reached the uplink" means something
};

// The BPF target table order of a list of targets (see CorrelatorOptions::targets).
std::vector<Endpoint> bpf_target_table(const std::vector<Endpoint>& targets);

class Correlator {
public:
    using Sink = std::function<void(Transaction&&)>;
    // Names for drop reasons and locations; both outlive the correlator.
    using ReasonNamer = std::function<std::string(std::uint32_t)>;
    using LocationNamer = std::function<std::string(std::uint64_t)>;

    Correlator(Sink sink, ReasonNamer reasons, LocationNamer locations, CorrelatorOptions opts = {});
    ~Correlator();

    void observe(const Observation& o);
    // Emit transactions whose connection finished before `now_ns` (monotonic).
    void expire(std::uint64_t now_ns);
    // Emit everything still open (end of a trace window).  Connections
    // still in flight are marked incomplete: their answer may just not
    // have come yet.
    void flush();

    // Events were lost (ring buffer full): `lost_total` is the kernel's
    // running count, read at monotonic `now_ns`.  Every connection open while
    // the count grew is marked incomplete with the number lost meanwhile
    // (from the counts at its open and at its end: no scan of connections).
    void note_loss(std::uint64_t lost_total, std::uint64_t now_ns);

    std::size_t open_connections() const;
    // Connections held, open or finished (kept to recognise late packets).
    std::size_t remembered_connections() const { return conns_.size(); }
    std::uint64_t unmatched_events() const { return unmatched_; }
    // Socket-bookkeeping frees (DropRecord::endpoint_bookkeeping) of no
    // connection it followed: set aside, never a transaction.
    std::uint64_t bookkeeping_frees() const { return bookkeeping_frees_; }
    // Path drops that came after their transaction was reported (a response
    // retransmitted once more): in no record, counted here.
    std::uint64_t late_drops() const { return late_drops_; }

private:
    struct Connection;
    struct Exchange;

    Connection* find_or_create(const Observation& o);
    DropRecord drop_record(const Observation& o) const;
    Connection* create(const Observation& o, bool socket_side);
    void link_uplink(Connection& c, const FlowKey& k);
    void apply(Connection& c, const Observation& o);
    void on_to_target(Connection& c, const Observation& o);
    void on_from_target(Connection& c, const Observation& o);
    void on_drop(Connection& c, const Observation& o);
    void on_icmp(Connection& c, const Observation& o);
    void on_connect(const Observation& o);
    void on_connect_failed(const Observation& o);
    Exchange& current(Connection& c);
    Exchange& answered_by(Connection& c, std::uint32_t seq);
    void finish(Connection& c);
    Transaction to_transaction(const Connection& c, const Exchange& x) const;
    void forget(std::uint64_t id);

    Sink sink_;
    ReasonNamer reasons_;
    LocationNamer locations_;
    CorrelatorOptions opts_;
    std::uint64_t next_id_ = 1;
    std::uint64_t unmatched_ = 0;
    std::uint64_t bookkeeping_frees_ = 0;
    std::uint64_t late_drops_ = 0;
    std::uint64_t deadline(const Connection& c) const;
    void arm(Connection& c, std::uint64_t due_ns);

    std::map<std::uint64_t, std::unique_ptr<Connection>> conns_;  // id order = age order
    ExpiryQueue expiry_;           // one live entry per connection (Connection::armed_due)
    std::uint64_t lost_total_ = 0; // kernel's lost-event count as of the last note_loss
    std::uint64_t last_loss_ns_ = 0;
    std::uint64_t last_loss_delta_ = 0;
    std::unordered_map<FlowKey, std::uint64_t, FlowKeyHash> by_socket_;
    std::unordered_map<FlowKey, std::uint64_t, FlowKeyHash> by_uplink_;
    struct IsnKeyHash {
        std::size_t operator()(const std::pair<Endpoint, std::uint32_t>& k) const {  // not noexcept: cached
            return FlowKeyHash{}(FlowKey{k.first, k.first}) ^ (k.second * 0x9e3779b97f4a7c15ULL);
        }
    };
    std::unordered_map<std::pair<Endpoint, std::uint32_t>, std::uint64_t, IsnKeyHash> by_isn_;  // (server, client ISN)
    struct Connector {
        ProcessInfo process;
        std::uint64_t cgroup_id = 0;
        std::uint32_t netns = 0;  // the connecting socket's network namespace
    };
    std::unordered_map<std::uint64_t, Connector> by_cookie_;  // socket cookie -> who connected
};

}  // namespace imdstrace
