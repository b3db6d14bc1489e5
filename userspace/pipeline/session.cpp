#include "pipeline/session.hpp"

#include <net/if.h>
#include <spdlog/spdlog.h>
#include <time.h>

#include <algorithm>
#include <cmath>
#include <deque>
#include <fstream>
#include <unordered_map>

#include "correlate/correlator.hpp"
#include "decode/kernel_names.hpp"
#include "decode/observation.hpp"
#include "loader/uplink.hpp"
#include "pipeline/answering.hpp"
#include "pipeline/attribute.hpp"
#include "pipeline/node_scope.hpp"
#include "sinks/events_file.hpp"
#include "sinks/json.hpp"
#include "sinks/metrics.hpp"
#include "sinks/k8s_events.hpp"
#include "sinks/pcap.hpp"

namespace imdstrace {

std::uint64_t monotonic_ns() {
    timespec ts{};
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return static_cast<std::uint64_t>(ts.tv_sec) * 1'000'000'000ULL + ts.tv_nsec;
}

std::int64_t unix_ms_now() {
    timespec ts{};
    clock_gettime(CLOCK_REALTIME, &ts);
    return static_cast<std::int64_t>(ts.tv_sec) * 1000 + ts.tv_nsec / 1'000'000;
}

bool node_local_agent_address(const IpAddr& a) {
    return a.str() == "169.254.170.23" || a.str() == "fd00:ec2::23";
}

std::vector<Endpoint> default_targets() {
    return {*Endpoint::parse("169.254.169.254:80", 80), *Endpoint::parse("[fd00:ec2::254]:80", 80),
            *Endpoint::parse("169.254.170.23:80", 80), *Endpoint::parse("[fd00:ec2::23]:80", 80)};
}

namespace {

// A boolean sysctl of this network namespace (/proc/sys is per namespace).
std::optional<bool> read_sysctl_flag(const char* path) {
    std::ifstream in(path);
    int v;
    if (in >> v) return v != 0;
    return std::nullopt;
}

void add_unique(std::vector<Interface>& list, const Interface& i) {
    if (std::find(list.begin(), list.end(), i) == list.end()) list.push_back(i);
}

// Where each target is reached: uplinks (--iface, or every interface a
// routing rule's table sends it through), or this node itself.
struct TargetPaths {
    std::vector<Interface> uplinks;
    std::vector<Endpoint> on_node;  // local addresses: traced at the sockets only
};

TargetPaths resolve_target_paths(const SessionOptions& opts) {
    TargetPaths paths;
    for (const auto& t : opts.targets) {
        auto routes = target_routes(t.addr);
        if (routes.local) {
            paths.on_node.push_back(t);
            spdlog::info("{} is an address of this node: traced at the sockets (no uplink)", t.str());
        } else if (opts.ifaces.empty()) {
            if (routes.uplinks.empty()) spdlog::info("no uplink for {}: {}", t.str(), routes.error);
            for (const auto& i : routes.uplinks) add_unique(paths.uplinks, i);
        }
    }
    for (const auto& name : opts.ifaces) {
        auto i = interface_by_name(name);
        if (!i) throw UsageError("--iface " + name + ": no such interface in this network namespace");
        add_unique(paths.uplinks, *i);
    }
    if (paths.uplinks.empty() && paths.on_node.empty())
        throw std::runtime_error("no route to any target from this network namespace, so no uplink to watch: "
                                 "pass --iface NAME (the interface toward the target), or check `ip route get " +
                                 opts.targets.front().addr.str() + "`");
    if (paths.uplinks.empty() && opts.cgroup == "none")
        throw UsageError("every target is an address of this node, which only the socket hooks see: drop --cgroup none");
    return paths;
}

// The cgroup v2 directory the socket hooks attach to ("" = none).
std::string socket_hook_cgroup(const SessionOptions& opts, const Cgroup2Mount& mount) {
    if (opts.cgroup == "none") return {};
    if (!opts.cgroup.empty()) return opts.cgroup;
    if (!mount.mounted)
        throw std::runtime_error("no cgroup2 filesystem is mounted: mount one (mount -t cgroup2 none "
                                 "/sys/fs/cgroup) or pass --cgroup none to trace without the socket hooks");
    return mount.path;
}

}  // namespace

// The stages in the order data flows through them; each is one member.
struct Session::Impl {
    // Set up by start().
    KernelFeatures features;
    DropReasons reasons;
    KernelSymbols symbols;
    std::vector<Interface> uplinks;
    std::vector<Endpoint> targets_on_node;
    std::unique_ptr<NodeScope> scope;
    std::unique_ptr<PodResolver> pods;
    std::unique_ptr<CgroupPaths> cgroup_paths;
    std::unique_ptr<Correlator> correlator;
    std::unique_ptr<Tracer> tracer;
    std::unique_ptr<SocketOwners> socket_owners;  // who answered locally
    // Sinks.
    std::unique_ptr<EventsFile> events;
    std::unique_ptr<PcapWriter> pcap;
    std::unique_ptr<Metrics> metrics;
    std::unique_ptr<MetricsServer> metrics_server;
    std::unique_ptr<PodEventPoster> k8s_events;

    std::deque<TransactionRecord> finished;  // attributed, not yet delivered
    std::function<void()> batch_end;
    std::uint64_t start_mono = 0;
    std::int64_t start_unix_ms = 0;
    std::uint64_t malformed = 0;
    std::uint64_t events_lost = 0;
    std::optional<double> window_s;
    NodeFacts node_facts;

    // 1. decode: one ring-buffer record -> an observation; 2. keep it only
    // if it happened on this node (and then in the pcap too).
    void on_event(std::span<const std::uint8_t> rec) {
        auto o = decode_event(rec, pcap != nullptr);
        if (!o) {
            ++malformed;
            return;
        }
        if (!scope->admits(*o)) return;
        if (pcap) pcap->write(*o);
        correlator->observe(*o);
    }

    // 3. events the ring could not hold: every connection open now may miss some.
    void check_loss() {
        auto lost = tracer->events_lost();
        if (lost == events_lost) return;
        events_lost = lost;
        correlator->note_loss(lost, monotonic_ns());
    }

    // 4. correlate hands over a finished transaction: judge and attribute it.
    void on_transaction(Transaction&& t) {
        for (auto& d : t.drops)
            if (d.rewritten) d.rewritten_to_node = is_local_address(d.rewritten->addr);
        if (t.answered_on_node && !t.answered_on_node->process) {
            std::string cg;
            if (t.answered_on_node->cgroup_id)
                if (auto rel = cgroup_paths->path_of(t.answered_on_node->cgroup_id); !rel.empty())
                    cg = cgroup_paths->mount() + rel;
            t.answered_on_node->process = socket_owners->owner(t.answered_on_node->socket, cg);
        }
        const bool on_node = node_local_agent_address(t.client_flow.server.addr) ||
                             std::find(targets_on_node.begin(), targets_on_node.end(), t.client_flow.server) !=
                                 targets_on_node.end();
        const auto start_ms = wall_ms(t.start_ns);
        finished.push_back(attribute(
            std::move(t), start_ms, [this](std::uint64_t id) { return cgroup_paths->path_of(id); }, *pods, on_node));
    }

    // 5. deliver finished records to the sinks.  Returns how many.
    std::size_t deliver(const RecordSink& sink) {
        std::size_t n = 0;
        for (; !finished.empty(); ++n) {
            auto r = std::move(finished.front());
            finished.pop_front();
            if (events) events->write(r);
            if (metrics) metrics->record(r, unix_ms_now());
            if (k8s_events) k8s_events->record(r, unix_ms_now());
            sink(r);
        }
        // A batch is written at once: a write per record cost more than its JSON.
        if (n && events) events->flush();
        if (n && batch_end) batch_end();
        return n;
    }

    // Interface names for the pcap, resolved once per ifindex (not a
    // syscall per packet).
    std::unordered_map<std::uint32_t, std::string> ifnames;
    std::string ifname(std::uint32_t ifindex) {
        if (auto it = ifnames.find(ifindex); it != ifnames.end()) return it->second;
        auto up = std::find_if(uplinks.begin(), uplinks.end(),
                               [ifindex](const Interface& u) { return static_cast<std::uint32_t>(u.ifindex) == ifindex; });
        char buf[IF_NAMESIZE] = {};
        std::string name = up != uplinks.end()            ? up->name
                           : if_indextoname(ifindex, buf) ? std::string(buf)
                                                          : "if" + std::to_string(ifindex);
        return ifnames[ifindex] = name;
    }

    std::int64_t wall_ms(std::uint64_t mono_ns) const {
        return start_unix_ms + (static_cast<std::int64_t>(mono_ns) - static_cast<std::int64_t>(start_mono)) / 1'000'000;
    }
};

Session::Session(SessionOptions opts) : opts_(std::move(opts)), impl_(std::make_unique<Impl>()) {
    if (opts_.targets.empty()) opts_.targets = default_targets();
}

Session::~Session() = default;

std::vector<std::string> Session::target_strings() const {
    std::vector<std::string> out;
    for (const auto& t : opts_.targets) out.push_back(t.str());
    return out;
}

void Session::start() {
    auto& impl = *impl_;
    // Pods first: a bad mapping file is a usage error, before touching the kernel.
    const auto mount = locate_cgroup2(opts_.host_root());
    opts_.pod_settings.cgroup_mount = mount.path;
    impl.pods = make_pod_resolver(opts_.pods, opts_.pod_settings);
    auto paths = resolve_target_paths(opts_);
    impl.uplinks = std::move(paths.uplinks);
    impl.targets_on_node = std::move(paths.on_node);
    const std::string cgroup_dir = socket_hook_cgroup(opts_, mount);
    impl.cgroup_paths = std::make_unique<CgroupPaths>(mount.path);
    const std::string root = opts_.host_root() == "/" ? "" : opts_.host_root();
    impl.scope = std::make_unique<NodeScope>(root + "/proc", mount.path, cgroup_dir);

    impl.node_facts.ipv4_forwarding = read_sysctl_flag("/proc/sys/net/ipv4/ip_forward");
    impl.node_facts.ipv6_forwarding = read_sysctl_flag("/proc/sys/net/ipv6/conf/all/forwarding");
    impl.features = KernelFeatures::probe();
    impl.reasons = DropReasons::from_kernel_btf();
    CorrelatorOptions co;
    co.node_netns = impl.scope->own_netns();
    co.targets = bpf_target_table(opts_.targets);
    co.uplinks_traced = !impl.uplinks.empty();
    impl.socket_owners = std::make_unique<SocketOwners>(
        opts_.host_root() == "/" || opts_.host_root().empty() ? "/proc" : opts_.host_root() + "/proc");
    impl.correlator = std::make_unique<Correlator>(
        [this](Transaction&& t) { impl_->on_transaction(std::move(t)); },
        [this](std::uint32_t v) { return impl_->reasons.name(v); },
        [this](std::uint64_t a) { return impl_->symbols.function_at(a); }, co);

    // Kubernetes Events on failing pods wherever the API names the pods.
    using Source = PodSelection::Source;
    if (opts_.k8s_events_interval_s > 0 &&
        (opts_.pods.source == Source::k8s_api || opts_.pods.source == Source::automatic)) {
        std::optional<K8sApiConfig> api;
        try {
            auto kubeconfig = opts_.pod_settings.kubeconfig;
            if (kubeconfig.empty())
                if (const char* env = std::getenv("KUBECONFIG"); env && opts_.pods.source == Source::k8s_api) kubeconfig = env;
            api = kubeconfig.empty() ? in_cluster_config() : std::optional(load_kubeconfig(kubeconfig));
        } catch (const std::exception& e) {
            spdlog::debug("k8s events: no API configuration: {}", e.what());
        }
        if (api) {
            PodEventOptions eo;
            eo.interval = std::chrono::milliseconds(static_cast<std::int64_t>(opts_.k8s_events_interval_s * 1000));
            eo.node = metrics_node_name(opts_.node_name);
            impl.k8s_events = std::make_unique<PodEventPoster>(*api, eo);
            spdlog::debug("k8s events: Events on failing pods to {}", api->server);
        }
    }
    if (!opts_.events_file.empty()) impl.events = std::make_unique<EventsFile>(opts_.events_file, opts_.events_rotation);
    if (!opts_.pcap_file.empty()) {
        impl.pcap = std::make_unique<PcapWriter>(
            opts_.pcap_file,
            [this](const Observation& o) {
                return "drop reason=" + (o.drop_reason ? impl_->reasons.name(*o.drop_reason) : std::string("-")) +
                       " location=" + impl_->symbols.function_at(o.location);
            },
            [this](std::uint32_t i) { return impl_->ifname(i); },
            unix_ms_now() * 1'000'000LL - static_cast<std::int64_t>(monotonic_ns()));
    }
    TracerConfig tc;
    tc.targets = opts_.targets;
    tc.uplinks = impl.uplinks;
    tc.cgroup_dir = cgroup_dir;
    tc.prefer_tcx = opts_.prefer_tcx;
    tc.ring_size = opts_.ring_size;
    tc.proxy_ports = opts_.proxy_ports;
    tc.proxy_any_port = opts_.proxy_any_port;
    impl.start_mono = monotonic_ns();
    impl.start_unix_ms = unix_ms_now();
    impl.tracer = Tracer::start(tc, impl.features, [this](std::span<const std::uint8_t> rec) { impl_->on_event(rec); });
    for (const auto& line : impl.tracer->attach_summary()) spdlog::debug("{}", line);
    // Serve metrics only once tracing: a scrape (or readiness probe) that
    // answers means the hooks are attached.
    if (!opts_.metrics_listen.empty()) {
        impl.metrics = std::make_unique<Metrics>(metrics_node_name(opts_.node_name));
        try {
            impl.metrics_server = std::make_unique<MetricsServer>(*impl.metrics, opts_.metrics_listen);
        } catch (const std::invalid_argument& e) {
            throw UsageError(e.what());
        }
        // The bound port, which differs from the one asked for with :0.
        spdlog::info("metrics on http://{}/metrics",
                     Endpoint{parse_metrics_listen(opts_.metrics_listen)->addr,
                              static_cast<std::uint16_t>(impl.metrics_server->port())}
                         .str());
    }

    if (!opts_.ready_file.empty()) std::ofstream(opts_.ready_file) << "ready\n";
}

void Session::on_batch_end(std::function<void()> f) { impl_->batch_end = std::move(f); }

void Session::run(const std::atomic<bool>& stop, const RecordSink& sink, const std::function<void()>& quiet,
                  double quiet_s) {
    auto& impl = *impl_;
    std::uint64_t last_activity = monotonic_ns();
    std::uint64_t last_counters = 0;
    const std::uint64_t deadline =
        opts_.duration_s ? impl.start_mono + static_cast<std::uint64_t>(*opts_.duration_s * 1e9) : UINT64_MAX;
    while (!stop.load()) {
        int n = impl.tracer->poll(100);
        if (n < 0) throw std::runtime_error("reading the event ring buffer failed: " + std::to_string(n));
        auto now = monotonic_ns();
        impl.check_loss();
        impl.correlator->expire(now);
        if (impl.deliver(sink)) last_activity = now;
            if (impl.metrics && now - last_counters >= 1'000'000'000ULL) {
            impl.metrics->set_events_lost(impl.events_lost);
            last_counters = now;
        }
        if (quiet && now - last_activity >= static_cast<std::uint64_t>(quiet_s * 1e9)) {
            quiet();
            last_activity = now;
        }
        if (now >= deadline) break;
    }
    // Drain what the kernel already queued, then close every open transaction.
    impl.tracer->poll(0);
    impl.check_loss();
    impl.correlator->flush();
    impl.deliver(sink);
    if (impl.k8s_events) impl.k8s_events->flush(std::chrono::seconds(5));
    impl.window_s = std::round(elapsed_s() * 1000) / 1000;
    // A trailer so `report` knows the window and the targets of this run.
    if (impl.events) {
        auto a = set_aside();
        impl.events->write_trailer(impl.start_unix_ms, *impl.window_s, target_strings(),
                                   {{"other_namespace_events", a.other_namespaces},
                                    {"socket_bookkeeping_frees", a.socket_bookkeeping},
                                    {"events_lost", a.events_lost},
                                    {"late_drops", a.late_drops}},
                                   node_facts_json(impl.node_facts));
    }
}

const NodeFacts& Session::node_facts() const { return impl_->node_facts; }

SessionSetAside Session::set_aside() const {
    SessionSetAside a;
    if (impl_->scope) a.other_namespaces = impl_->scope->foreign_events();
    if (impl_->correlator) a.socket_bookkeeping = impl_->correlator->bookkeeping_frees();
    a.events_lost = impl_->events_lost;
    if (impl_->correlator) a.late_drops = impl_->correlator->late_drops();
    return a;
}

int Session::metrics_port() const { return impl_->metrics_server ? impl_->metrics_server->port() : -1; }

std::size_t Session::open_connections() const {
    return impl_->correlator ? impl_->correlator->open_connections() : 0;
}

double Session::window_s() const { return impl_->window_s.value_or(elapsed_s()); }

double Session::elapsed_s() const { return (monotonic_ns() - impl_->start_mono) / 1e9; }

TracerCounters Session::counters() const { return impl_->tracer ? impl_->tracer->counters() : TracerCounters{}; }

std::vector<std::string> Session::describe() const {
    return impl_->tracer ? impl_->tracer->attach_summary() : std::vector<std::string>{};
}

}  // namespace imdstrace
