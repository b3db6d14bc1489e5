#include "correlate/correlator.hpp"

#include <algorithm>

namespace imdstrace {

bool DropRecord::endpoint_bookkeeping() const {
    const auto& d = *this;
    if (d.reason.starts_with("TCP_") || d.reason == "NO_SOCKET" || d.reason == "SOCKET_CLOSE" ||
        d.reason == "QUEUE_PURGE")
        return true;
    // Kernels before ~6.2 free a closing socket's queues without a specific
    // reason (NOT_SPECIFIED): judge those by where they were freed.
    if (d.reason.empty() || d.reason == "NOT_SPECIFIED") {
        for (std::string_view socket_layer : {"tcp_", "sk_", "__sk_", "inet_", "__inet_", "skb_queue_purge"})
            if (d.location.starts_with(socket_layer)) return true;
    }
    return false;
}

struct Correlator::Exchange {
    std::optional<HttpRequest> request;
    std::optional<std::uint32_t> request_seq;
    Hook request_hook = Hook::cgroup_egress;  // where the request was first seen
    std::optional<HttpResponse> response;
    std::optional<std::uint32_t> response_seq;
    std::optional<std::uint8_t> response_ttl_at_node;
    bool response_at_uplink = false;
    bool delivered = false;
    std::vector<DropRecord> drops;
    std::uint32_t icmp_at_uplink = 0;  // ICMP time exceeded leaving the uplink
    std::uint32_t icmp_sent = 0;       // icmp_send tracepoint (the same ICMPs, earlier)
    std::uint32_t retransmits = 0;
    std::uint64_t start_ns = 0;
    std::uint64_t end_ns = 0;
    bool emitted = false;
};

struct Correlator::Connection {
    std::uint64_t id = 0;
    std::optional<FlowKey> socket_key;
    std::optional<FlowKey> uplink_key;
    std::optional<std::uint32_t> isn;
    std::uint64_t cgroup_id = 0;
    std::uint64_t cookie = 0;
    std::optional<ProcessInfo> process;
    bool seen_at_socket = false;
    bool local_at_uplink = false;
    std::optional<std::uint8_t> ttl_sent;
    std::optional<std::uint8_t> ttl_uplink;
    bool handshake_answered = false;
    bool server_reset = false;
    bool client_closed = false;
    std::uint32_t syns_at_socket = 0;
    std::uint32_t syns_at_uplink = 0;
    std::vector<Exchange> exchanges;
    std::uint64_t first_ns = 0;
    std::uint64_t last_ns = 0;
    std::uint64_t closed_ns = 0;
    bool finished = false;
    bool opened_in_window = false;  // its SYN or connect() was seen
    std::uint32_t client_netns = 0; // the client socket's namespace (connect())
    bool incomplete = false;        // events lost while it was open
    std::optional<LocalAnswer> answered_on_node;
    std::optional<Endpoint> redirected_to;
    std::optional<Endpoint> via_proxy;
    std::uint64_t lost_at_open = 0; // the kernel's lost-event count when it was created
    // Created, without its SYN, just after events were lost: its opening may
    // be what was lost, so it is incomplete rather than "opened before tracing".
    bool opened_in_loss = false;
    std::uint64_t armed_due = 0;    // the live ExpiryQueue entry's due time
    // Finished with every answer delivered and closed by the client: nothing
    // late is expected, so its tombstone is short (memory follows live
    // connections, not the last 30 s of healthy ones).
    bool clean = false;
};

std::vector<Endpoint> bpf_target_table(const std::vector<Endpoint>& targets) {
    std::vector<Endpoint> table;
    for (const auto& t : targets)
        if (t.addr.is_v4()) table.push_back(t);
    for (const auto& t : targets)
        if (!t.addr.is_v4()) table.push_back(t);
    return table;
}

Correlator::Correlator(Sink sink, ReasonNamer reasons, LocationNamer locations, CorrelatorOptions opts)
    : sink_(std::move(sink)), reasons_(std::move(reasons)), locations_(std::move(locations)), opts_(opts) {}

Correlator::~Correlator() = default;

std::size_t Correlator::open_connections() const {
    return std::count_if(conns_.begin(), conns_.end(), [](const auto& kv) { return !kv.second->finished; });
}

namespace {

bool socket_hook(Hook h) { return h == Hook::cgroup_egress || h == Hook::cgroup_ingress; }

}  // namespace

Correlator::Connection* Correlator::create(const Observation& o, bool socket_side) {
    if (conns_.size() >= opts_.max_connections) {
        // Bound memory: the oldest connection gives way.
        auto oldest = conns_.begin();
        if (!oldest->second->finished) finish(*oldest->second);
        forget(oldest->first);
    }
    auto c = std::make_unique<Connection>();
    c->id = next_id_++;
    c->first_ns = c->last_ns = o.ts_ns;
    c->lost_at_open = lost_total_;
    if (last_loss_ns_ && !o.is_syn() && o.ts_ns <= last_loss_ns_ + opts_.idle_ns) c->opened_in_loss = true;
    // The earliest it can be due; expire() re-arms when activity moved it.
    c->armed_due = o.ts_ns + std::min(opts_.idle_ns, opts_.stale_idle_ns);
    expiry_.arm(c->armed_due, c->id);
    if (socket_side) {
        c->socket_key = o.flow;
        by_socket_[o.flow] = c->id;
    } else {
        c->uplink_key = o.flow;
        by_uplink_[o.flow] = c->id;
    }
    auto* raw = c.get();
    conns_.emplace(raw->id, std::move(c));
    return raw;
}

void Correlator::link_uplink(Connection& c, const FlowKey& k) {
    c.uplink_key = k;
    by_uplink_[k] = c.id;
}

Correlator::Connection* Correlator::find_or_create(const Observation& o) {
    auto lookup = [this](auto& index, const FlowKey& k) -> Connection* {
        auto it = index.find(k);
        if (it == index.end()) return nullptr;
        auto c = conns_.find(it->second);
        return c == conns_.end() ? nullptr : c->second.get();
    };
    // A new SYN on a tuple whose connection finished, or closed and lingers, is a new
    // connection (port reuse: a client whose server closed first holds no TIME_WAIT).
    auto reusable = [&o](Connection* c) { return c && !((c->finished || c->closed_ns) && o.is_syn()); };

    const bool either_side = o.hook == Hook::drop || o.hook == Hook::icmp_send || o.direction == Direction::icmp_about;
    if (either_side) {
        if (auto* c = lookup(by_socket_, o.flow)) return c;
        if (auto* c = lookup(by_uplink_, o.flow)) return c;
        // A socket freeing its own queues (a proxy closing its
        // connections, a stale duplicate) is no connection of its own.
        if (o.hook == Hook::drop && drop_record(o).endpoint_bookkeeping()) {
            ++bookkeeping_frees_;
            return nullptr;
        }
        ++unmatched_;
        return create(o, true);
    }
    if (socket_hook(o.hook)) {
        if (auto* c = lookup(by_socket_, o.flow); reusable(c)) return c;
        if (auto* c = lookup(by_uplink_, o.flow); reusable(c) && !c->socket_key) {
            c->socket_key = o.flow;
            by_socket_[o.flow] = c->id;
            return c;
        }
        return create(o, true);
    }
    // Uplink hooks: the tuple may have been rewritten by NAT on the way.
    if (auto* c = lookup(by_uplink_, o.flow); reusable(c)) return c;
    std::optional<std::uint32_t> isn;
    if (o.direction == Direction::to_target && o.is_syn()) isn = o.seq;
    if (o.direction == Direction::from_target && o.is_synack()) isn = o.ack - 1;
    if (isn) {
        if (auto it = by_isn_.find({o.flow.server, *isn}); it != by_isn_.end()) {
            if (auto c = conns_.find(it->second); c != conns_.end() && !c->second->uplink_key && !c->second->finished) {
                link_uplink(*c->second, o.flow);
                return c->second.get();
            }
        }
    }
    if (auto* c = lookup(by_socket_, o.flow); reusable(c) && !c->uplink_key) {
        link_uplink(*c, o.flow);
        return c;
    }
    return create(o, false);
}

Correlator::Exchange& Correlator::current(Connection& c) {
    if (c.exchanges.empty()) {
        c.exchanges.emplace_back();
        c.exchanges.back().start_ns = c.first_ns;
    }
    return c.exchanges.back();
}

void Correlator::on_connect(const Observation& o) {
    if (!o.sk_cookie) return;
    if (by_cookie_.size() >= opts_.max_connections) by_cookie_.clear();  // bound memory under connect floods
    by_cookie_[o.sk_cookie] = Connector{ProcessInfo{o.pid, o.comm}, o.cgroup_id, o.netns};
}

// The exchange a packet from the target (or a drop/ICMP quote of one)
// belongs to: the one already holding its sequence number (a
// retransmission), else the oldest request not answered yet.
Correlator::Exchange& Correlator::answered_by(Connection& c, std::uint32_t seq) {
    for (auto& e : c.exchanges)
        if (e.response_seq == seq) return e;
    for (auto& e : c.exchanges)
        if (e.request && !e.response_seq) return e;
    return current(c);
}

void Correlator::observe(const Observation& seen) {
    if (seen.hook == Hook::connect) {
        on_connect(seen);
        return;
    }
    if (seen.hook == Hook::connect_failed) {
        on_connect_failed(seen);
        return;
    }
    // A followed packet is filed under the target its client asked for;
    // where it really went is kept as the connection's redirect.
    const Observation* op = &seen;
    Observation filed;
    if (seen.followed && seen.target_index < opts_.targets.size()) {
        filed = seen;
        const Endpoint& target = opts_.targets[seen.target_index];
        filed.flow.server = Endpoint{target.addr, target.port ? target.port : seen.flow.server.port};
        op = &filed;
    }
    const Observation& o = *op;
    Connection* c = find_or_create(o);
    if (!c) return;
    // Seen open: its SYN (at any hook, a dropped one too).
    if (o.direction == Direction::to_target && o.is_syn()) c->opened_in_window = true;
    if (o.followed && o.rewritten_server && o.rewritten_server != o.flow.server) c->redirected_to = o.rewritten_server;
    if (o.via_proxy) {
        c->via_proxy = o.flow.server;
        // Its SYN went to the proxy, not a target, and was not followed
        // yet: the request head itself, seen whole, is this window's.
        if (o.request) c->opened_in_window = true;
    }
    if (o.answering_socket) {
        if (!c->answered_on_node) c->answered_on_node = LocalAnswer{*o.answering_socket, o.cgroup_id, std::nullopt};
        // A wildcard bind says the port, not where DNAT sent it.
        if (*o.answering_socket != o.flow.server && !o.answering_socket->addr.is_unspecified())
            c->redirected_to = *o.answering_socket;
        // The answering socket's handshake: the connection is this window's,
        // though its SYN went out to the rewritten address.
        if (o.is_synack()) c->opened_in_window = true;
    }
    apply(*c, o);
}

// connect(2) failed before a packet existed: a transaction of its own,
// with nothing but the task, its cgroup and the error.
void Correlator::on_connect_failed(const Observation& o) {
    Transaction t;
    t.id = next_id_++;
    t.start_ns = t.end_ns = o.ts_ns;
    t.client_flow = o.flow;
    t.cgroup_id = o.cgroup_id;
    t.process = ProcessInfo{o.pid, o.comm};
    t.connect_errno = o.connect_errno;
    sink_(std::move(t));
}

void Correlator::note_loss(std::uint64_t lost_total, std::uint64_t now_ns) {
    if (lost_total <= lost_total_) return;
    last_loss_delta_ = lost_total - lost_total_;
    lost_total_ = lost_total;
    last_loss_ns_ = now_ns;
}

void Correlator::arm(Connection& c, std::uint64_t due_ns) {
    c.armed_due = due_ns;
    expiry_.arm(due_ns, c.id);
}

// When a connection is due: finished ones are forgotten after the
// tombstone time, open ones finish when closed (plus linger) or idle.
std::uint64_t Correlator::deadline(const Connection& c) const {
    if (c.finished) return c.last_ns + (c.clean ? opts_.linger_ns : opts_.tombstone_ns);
    std::uint64_t idle = c.last_ns + (c.opened_in_window ? opts_.idle_ns : opts_.stale_idle_ns);
    if (c.closed_ns) return std::min(idle, c.closed_ns + opts_.linger_ns);
    return idle;
}

void Correlator::apply(Connection& c, const Observation& o) {
    c.last_ns = std::max(c.last_ns, o.ts_ns);
    if (c.finished) {
        // Reported and kept only to recognise late packets: a path drop
        // now is in no record, and counted.
        if (o.hook == Hook::drop && !drop_record(o).endpoint_bookkeeping()) ++late_drops_;
        return;
    }
    if (o.hook == Hook::drop) on_drop(c, o);
    else if (o.hook == Hook::icmp_send || o.direction == Direction::icmp_about) on_icmp(c, o);
    else if (o.direction == Direction::to_target) on_to_target(c, o);
    else on_from_target(c, o);
}

void Correlator::on_to_target(Connection& c, const Observation& o) {
    if (o.sk_cookie && !c.process) {
        if (auto it = by_cookie_.find(o.sk_cookie); it != by_cookie_.end()) {
            c.process = it->second.process;
            // A node process outside the traced cgroup still has a cgroup.
            if (!c.cgroup_id) c.cgroup_id = it->second.cgroup_id;
            c.cookie = o.sk_cookie;
            c.client_netns = it->second.netns;
            c.opened_in_window = true;  // connect() happened while tracing
            by_cookie_.erase(it);
        }
    }
    if (o.hook == Hook::cgroup_egress) {
        c.seen_at_socket = true;
        if (!c.cgroup_id) c.cgroup_id = o.cgroup_id;
        if (!c.ttl_sent) c.ttl_sent = o.ttl;
    } else if (o.hook == Hook::uplink_egress) {
        if (!c.ttl_uplink) c.ttl_uplink = o.ttl;
        if (o.has_socket) c.local_at_uplink = true;
    }
    if (o.is_syn()) {
        if (!c.isn) {
            c.isn = o.seq;
            by_isn_[{o.flow.server, o.seq}] = c.id;
        }
        auto& syns = o.hook == Hook::cgroup_egress ? c.syns_at_socket : c.syns_at_uplink;
        ++syns;
        // Count retransmissions once, at the first hook that saw the SYN.
        bool counting_hook = o.hook == Hook::cgroup_egress || c.syns_at_socket == 0;
        if (syns > 1 && counting_hook) ++current(c).retransmits;
    }
    if (o.request) {
        auto it = std::find_if(c.exchanges.begin(), c.exchanges.end(),
                               [&o](const Exchange& x) { return x.request_seq == o.seq; });
        if (it != c.exchanges.end()) {
            if (it->request_hook == o.hook) ++it->retransmits;
            it->end_ns = std::max(it->end_ns, o.ts_ns);
        } else {
            Exchange* x = &current(c);
            if (x->request) {
                c.exchanges.emplace_back();
                x = &c.exchanges.back();
                x->start_ns = o.ts_ns;
            }
            x->request = o.request;
            x->request_seq = o.seq;
            x->request_hook = o.hook;
            x->end_ns = o.ts_ns;
        }
    } else {
        current(c).end_ns = std::max(current(c).end_ns, o.ts_ns);
    }
    if (o.is_fin() || o.is_rst()) {
        c.client_closed = true;
        if (!c.closed_ns) {
            c.closed_ns = o.ts_ns;
            arm(c, deadline(c));  // linger is shorter than idle
        }
    }
}

void Correlator::on_from_target(Connection& c, const Observation& o) {
    if (o.hook == Hook::cgroup_ingress) {
        c.seen_at_socket = true;
        if (!c.cgroup_id) c.cgroup_id = o.cgroup_id;  // its request went out rewritten, unseen
    }
    if (o.is_synack()) {
        c.handshake_answered = true;
        if (!c.isn) c.isn = o.ack - 1;
    }
    if (o.is_rst()) {
        c.server_reset = true;
        if (!c.closed_ns) {
            c.closed_ns = o.ts_ns;
            arm(c, deadline(c));
        }
    }
    if (!o.response) {
        current(c).end_ns = std::max(current(c).end_ns, o.ts_ns);
        return;
    }
    Exchange* x = &answered_by(c, o.seq);
    x->end_ns = std::max(x->end_ns, o.ts_ns);
    if (o.hook == Hook::uplink_ingress) {
        if (x->response_at_uplink && x->response_seq == o.seq) ++x->retransmits;
        x->response_at_uplink = true;
        x->response_ttl_at_node = std::min<std::uint8_t>(x->response_ttl_at_node.value_or(255), o.ttl);
    } else if (o.hook == Hook::cgroup_ingress) {
        x->delivered = true;
    }
    x->response = o.response;
    x->response_seq = o.seq;
    if (x->delivered && !x->emitted) {
        // The answer reached the client: nothing later can change this verdict.
        x->emitted = true;
        sink_(to_transaction(c, *x));
    }
}

std::string drop_place(std::uint32_t drop_netns, std::uint32_t client_netns, std::uint32_t node_netns) {
    if (!drop_netns || !node_netns) return {};
    if (drop_netns == node_netns) return "node";
    // Any other namespace that reached us is one of this node's pods'
    // (node_scope keeps only those).
    if (!client_netns || drop_netns == client_netns) return "pod";
    return "between";
}

DropRecord Correlator::drop_record(const Observation& o) const {
    DropRecord d;
    d.reason = o.drop_reason ? reasons_(*o.drop_reason) : std::string{};
    d.location = locations_(o.location);
    d.ttl = o.ttl;
    d.response = o.direction == Direction::from_target;
    d.count = 1;
    d.netns = o.netns;
    if (o.followed) d.rewritten = o.rewritten_server;
    d.device = o.ifname;
    return d;
}

void Correlator::on_drop(Connection& c, const Observation& o) {
    const bool response = o.direction == Direction::from_target;
    Exchange* x = response ? &answered_by(c, o.seq) : &current(c);
    x->end_ns = std::max(x->end_ns, o.ts_ns);
    DropRecord d = drop_record(o);
    if (x->emitted) {
        if (!d.endpoint_bookkeeping()) ++late_drops_;
        return;
    }
    d.place = drop_place(d.netns, c.client_netns, opts_.node_netns);
    auto same = std::find_if(x->drops.begin(), x->drops.end(), [&d](const DropRecord& r) {
        return r.reason == d.reason && r.location == d.location && r.ttl == d.ttl && r.response == d.response &&
               r.netns == d.netns && r.rewritten == d.rewritten;
    });
    if (same != x->drops.end()) ++same->count;
    else x->drops.push_back(std::move(d));
}

void Correlator::on_icmp(Connection& c, const Observation& o) {
    if (!o.is_time_exceeded()) return;
    Exchange* x = &answered_by(c, o.seq);
    x->end_ns = std::max(x->end_ns, o.ts_ns);
    if (o.hook == Hook::icmp_send) ++x->icmp_sent;
    else ++x->icmp_at_uplink;
}

Transaction Correlator::to_transaction(const Connection& c, const Exchange& x) const {
    Transaction t;
    t.id = c.id;
    t.start_ns = x.start_ns ? x.start_ns : c.first_ns;
    t.end_ns = std::max(x.end_ns, t.start_ns);
    t.client_flow = c.socket_key ? *c.socket_key : *c.uplink_key;
    t.uplink_flow = c.uplink_key;
    t.cgroup_id = c.cgroup_id;
    t.seen_at_socket = c.seen_at_socket;
    t.local_socket_at_uplink = c.local_at_uplink;
    t.process = c.process;
    t.request = x.request;
    t.response = x.response;
    t.ttl_sent = c.ttl_sent;
    t.ttl_at_uplink = c.ttl_uplink;
    t.response_ttl_at_node = x.response_ttl_at_node;
    t.response_at_uplink = x.response_at_uplink;
    t.delivered = x.delivered;
    t.handshake_answered = c.handshake_answered;
    t.server_reset = c.server_reset;
    t.client_closed = c.client_closed;
    t.drops = x.drops;
    // The same ICMP errors are seen twice where both hooks exist.
    t.icmp_time_exceeded = std::max(x.icmp_at_uplink, x.icmp_sent);
    t.retransmits = x.retransmits;
    t.events_lost = lost_total_ - c.lost_at_open;
    if (c.opened_in_loss && !t.events_lost) t.events_lost = last_loss_delta_;
    t.incomplete = c.incomplete || t.events_lost > 0;
    // Its SYN may be among the lost events: not "opened before tracing".
    t.opened_before_window = !c.opened_in_window && !c.opened_in_loss;
    t.opening_unseen = !c.opened_in_window && c.opened_in_loss;
    t.answered_on_node = c.answered_on_node;
    t.redirected_to = c.redirected_to;
    t.via_proxy = c.via_proxy;
    t.uplinks_traced = opts_.uplinks_traced;
    return t;
}

void Correlator::finish(Connection& c) {
    if (c.finished) return;
    if (c.exchanges.empty()) current(c);
    for (auto& x : c.exchanges) {
        if (x.emitted) continue;
        x.emitted = true;
        sink_(to_transaction(c, x));
    }
    c.finished = true;
    c.clean = c.client_closed && !c.server_reset &&
              std::all_of(c.exchanges.begin(), c.exchanges.end(), [](const Exchange& x) { return x.delivered; });
    // A tombstone keeps only what recognises late packets (its keys):
    // memory follows live connections, not the last 30 s of history.
    std::vector<Exchange>().swap(c.exchanges);
    c.process.reset();
    if (c.isn) {
        const Endpoint& server = c.socket_key ? c.socket_key->server : c.uplink_key->server;
        if (auto f = by_isn_.find({server, *c.isn}); f != by_isn_.end() && f->second == c.id) by_isn_.erase(f);
    }
}

void Correlator::forget(std::uint64_t id) {
    auto it = conns_.find(id);
    if (it == conns_.end()) return;
    auto& c = *it->second;
    auto drop_key = [id](auto& index, const std::optional<FlowKey>& k) {
        if (!k) return;
        if (auto f = index.find(*k); f != index.end() && f->second == id) index.erase(f);
    };
    drop_key(by_socket_, c.socket_key);
    drop_key(by_uplink_, c.uplink_key);
    if (c.isn) {
        const Endpoint& server = c.socket_key ? c.socket_key->server : c.uplink_key->server;
        if (auto f = by_isn_.find({server, *c.isn}); f != by_isn_.end() && f->second == id) by_isn_.erase(f);
    }
    conns_.erase(it);
}

void Correlator::expire(std::uint64_t now_ns) {
    expiry_.pop_due(now_ns, [&](std::uint64_t id, std::uint64_t due) {
        auto it = conns_.find(id);
        if (it == conns_.end()) return;  // forgotten early (the connection cap)
        Connection& c = *it->second;
        if (due != c.armed_due) return;  // superseded by a later arm()
        if (std::uint64_t d = deadline(c); d > now_ns) {
            arm(c, d);  // activity moved it: check again then
            return;
        }
        if (!c.finished) {
            finish(c);
            arm(c, deadline(c));  // now a tombstone
        } else {
            forget(id);
        }
    });
}

void Correlator::flush() {
    for (auto& [id, c] : conns_) {
        if (!c->finished && !c->closed_ns) c->incomplete = true;
        finish(*c);
    }
}

}  // namespace imdstrace
