#include "cli/session.hpp"

#include <spdlog/spdlog.h>
#include <time.h>

#include <cmath>
#include <deque>
#include <unordered_map>
#include <fstream>
#include <set>

#include "correlate/correlator.hpp"
#include "decode/kernel_names.hpp"
#include "decode/observation.hpp"
#include "sinks/json.hpp"
#include "sinks/metrics.hpp"
#include "sinks/pcap.hpp"

#include <net/if.h>

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

std::vector<Endpoint> default_targets() {
    return {*Endpoint::parse("169.254.169.254:80", 80), *Endpoint::parse("[fd00:ec2::254]:80", 80)};
}

std::optional<std::string> find_cgroup2_mount(const std::string& host_root) {
    std::ifstream mounts("/proc/self/mounts");
    std::string dev, dir, type, rest;
    std::string root = host_root == "/" ? "" : host_root;
    std::optional<std::string> found, ours;
    while (mounts >> dev >> dir >> type && std::getline(mounts, rest)) {
        if (type != "cgroup2") continue;
        // Prefer the canonical place when several are mounted.
        if (!ours || dir == "/sys/fs/cgroup") ours = dir;
        if (!root.empty() && dir.starts_with(root) && (!found || dir == root + "/sys/fs/cgroup")) found = dir;
    }
    // A --host-root without a cgroup2 mount of its own (a copied tree, a
    // test) still runs on the cgroups of this kernel, as seen from here.
    return root.empty() || !found ? ours : found;
}

std::unique_ptr<PodResolver> make_pod_resolver(const SessionOptions& opts, const std::string& cgroup_mount) {
    const std::string& pods = opts.pods;
    if (pods.starts_with("static:")) {
        try {
            return make_static_resolver(pods.substr(7));
        } catch (const std::exception& e) {
            throw UsageError(std::string("--pods: ") + e.what());
        }
    }
    if (pods == "none") return make_null_resolver();
    if (pods == "k8s-node" || pods == "k8s-api" || pods == "auto") {
        PodResolverSettings ps;
        ps.host_root = opts.host_root;
        ps.kubeconfig = opts.kubeconfig;
        // Cgroup paths handed to the resolver are relative to this mount.
        ps.cgroup_mount = cgroup_mount;
        std::unique_ptr<PodResolver> r;
        try {
            r = make_k8s_resolver(pods, ps);
        } catch (const std::exception& e) {
            throw UsageError("--pods " + pods + ": " + e.what());
        }
        spdlog::info("pods: {}", r->describe());
        return r;
    }
    throw UsageError("--pods must be auto, k8s-node, k8s-api, static:FILE or none (got \"" + pods + "\")");
}

struct Session::Impl {
    KernelFeatures features;
    std::unique_ptr<Tracer> tracer;
    std::unique_ptr<PodResolver> pods;
    std::unique_ptr<CgroupPaths> cgroup_paths;
    std::unique_ptr<Correlator> correlator;
    DropReasons reasons;
    KernelSymbols symbols;
    std::vector<Interface> uplinks;
    std::string cgroup_dir;
    std::deque<TransactionRecord> pending;
    std::ofstream events;
    std::uint64_t start_mono = 0;
    std::int64_t start_unix_ms = 0;
    std::uint64_t malformed = 0;
    std::optional<double> window_s;
    std::unique_ptr<PcapWriter> pcap;
    std::unique_ptr<Metrics> metrics;
    std::unique_ptr<MetricsServer> metrics_server;

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
    const auto mount = find_cgroup2_mount(opts_.host_root);
    impl.pods = make_pod_resolver(opts_, mount.value_or(
        (opts_.host_root == "/" ? "" : opts_.host_root) + "/sys/fs/cgroup"));

    // Uplinks: named, or the interfaces the routing table uses for the targets.
    if (!opts_.ifaces.empty()) {
        for (const auto& name : opts_.ifaces) {
            auto i = interface_by_name(name);
            if (!i) throw UsageError("--iface " + name + ": no such interface in this network namespace");
            if (std::find(impl.uplinks.begin(), impl.uplinks.end(), *i) == impl.uplinks.end()) impl.uplinks.push_back(*i);
        }
    } else {
        for (const auto& t : opts_.targets) {
            std::string why;
            auto i = route_interface(t.addr, &why);
            if (!i) {
                spdlog::info("no uplink for {}: {}", t.str(), why);
                continue;
            }
            if (std::find(impl.uplinks.begin(), impl.uplinks.end(), *i) == impl.uplinks.end()) impl.uplinks.push_back(*i);
        }
        if (impl.uplinks.empty())
            throw std::runtime_error("no route to any target from this network namespace, so no uplink to watch: "
                                     "pass --iface NAME (the interface toward IMDS), or check `ip route get "
                                     "169.254.169.254`");
    }

    // cgroup v2 directory for the socket hooks.
    if (opts_.cgroup == "none") {
        impl.cgroup_dir.clear();
    } else if (opts_.cgroup.empty()) {
        if (!mount)
            throw std::runtime_error("no cgroup2 filesystem is mounted: mount one (mount -t cgroup2 none "
                                     "/sys/fs/cgroup) or pass --cgroup none to trace without the socket hooks");
        impl.cgroup_dir = *mount;
    } else {
        impl.cgroup_dir = opts_.cgroup;
    }
    std::string paths_root = mount.value_or("/sys/fs/cgroup");
    impl.cgroup_paths = std::make_unique<CgroupPaths>(paths_root);

    impl.features = KernelFeatures::probe();
    impl.reasons = DropReasons::from_kernel_btf();
    impl.correlator = std::make_unique<Correlator>(
        [this](Transaction&& t) {
            auto& im = *impl_;
            TransactionRecord r;
            auto server_text = t.client_flow.server.str();
            auto c = classify(t, server_text);
            r.wall_ms = im.wall_ms(t.start_ns);
            r.client = t.client_flow.client;
            r.server = t.client_flow.server;
            if (t.cgroup_id) r.cgroup = im.cgroup_paths->path_of(t.cgroup_id);
            if (!r.cgroup.empty()) r.pod = im.pods->by_cgroup(r.cgroup);
            if (!r.pod) r.pod = im.pods->by_ip(r.client.addr);
            r.request = t.request;
            r.process = t.process;
            if (t.response) r.status = t.response->status;
            if (t.response_ttl_at_node) r.ttl_at_node = *t.response_ttl_at_node;
            r.hops = c.hops.hops;
            r.hops_inferred = c.hops.inferred;
            r.required_hop_limit = c.hops.required_hop_limit;
            r.verdict = c.verdict;
            r.evidence = c.evidence;
            r.drops = t.drops;
            r.icmp_time_exceeded = t.icmp_time_exceeded;
            r.retransmits = t.retransmits;
            r.duration_ms = static_cast<std::int64_t>((t.end_ns - t.start_ns) / 1'000'000);
            im.pending.push_back(std::move(r));
        },
        [this](std::uint32_t v) { return impl_->reasons.name(v); },
        [this](std::uint64_t a) { return impl_->symbols.function_at(a); });

    if (!opts_.events_file.empty()) {
        impl.events.open(opts_.events_file, std::ios::app);
        if (!impl.events) throw UsageError("--events: cannot write " + opts_.events_file);
    }

    if (!opts_.pcap_file.empty()) {
        try {
            impl.pcap = std::make_unique<PcapWriter>(
                opts_.pcap_file,
                [this](const Observation& o) {
                    return "drop reason=" + (o.drop_reason ? impl_->reasons.name(*o.drop_reason) : std::string("-")) +
                           " location=" + impl_->symbols.function_at(o.location);
                },
                [this](std::uint32_t i) { return impl_->ifname(i); },
                unix_ms_now() * 1'000'000LL - static_cast<std::int64_t>(monotonic_ns()));
        } catch (const std::exception& e) {
            throw UsageError(std::string("--pcap: ") + e.what());
        }
    }
    TracerConfig tc;
    tc.targets = opts_.targets;
    tc.uplinks = impl.uplinks;
    tc.cgroup_dir = impl.cgroup_dir;
    tc.prefer_tcx = opts_.prefer_tcx;
    impl.start_mono = monotonic_ns();
    impl.start_unix_ms = unix_ms_now();
    impl.tracer = Tracer::start(tc, impl.features, [this](std::span<const std::uint8_t> rec) {
        auto o = decode_event(rec, impl_->pcap != nullptr);
        if (!o) {
            ++impl_->malformed;
            return;
        }
        if (impl_->pcap) impl_->pcap->write(*o);
        impl_->correlator->observe(*o);
    });
    for (const auto& line : impl.tracer->attach_summary()) spdlog::debug("{}", line);
    // Serve metrics only once tracing: a scrape (or readiness probe) that
    // answers means the hooks are attached.
    if (!opts_.metrics_listen.empty()) {
        impl.metrics = std::make_unique<Metrics>();
        try {
            impl.metrics_server = std::make_unique<MetricsServer>(*impl.metrics, opts_.metrics_listen);
        } catch (const std::invalid_argument& e) {
            throw UsageError(e.what());
        }
        spdlog::info("metrics on http://{}/metrics", opts_.metrics_listen);
    }


    if (!opts_.ready_file.empty()) std::ofstream(opts_.ready_file) << "ready\n";
}

void Session::run(const std::atomic<bool>& stop, const RecordSink& sink, const std::function<void()>& quiet,
                  double quiet_s) {
    auto& impl = *impl_;
    std::uint64_t last_activity = monotonic_ns();
    std::uint64_t last_counters = 0;
    auto deliver = [&] {
        if (!impl.pending.empty()) last_activity = monotonic_ns();
        while (!impl.pending.empty()) {
            auto r = std::move(impl.pending.front());
            impl.pending.pop_front();
            if (impl.events.is_open()) impl.events << to_json(r).dump() << std::endl;  // flushed per record
            if (impl.metrics) impl.metrics->record(r, unix_ms_now());
            sink(r);
        }
    };
    const std::uint64_t deadline =
        opts_.duration_s ? impl.start_mono + static_cast<std::uint64_t>(*opts_.duration_s * 1e9) : UINT64_MAX;
    while (!stop.load()) {
        int n = impl.tracer->poll(100);
        if (n < 0) throw std::runtime_error("reading the event ring buffer failed: " + std::to_string(n));
        auto now = monotonic_ns();
        impl.correlator->expire(now);
        deliver();
        // The loss counter is 32 map reads: once a second is plenty.
        if (impl.metrics && now - last_counters >= 1'000'000'000ULL) {
            impl.metrics->set_events_lost(impl.tracer->counters().lost);
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
    impl.correlator->flush();
    deliver();
    impl.window_s = std::round(elapsed_s() * 1000) / 1000;
    // A trailer so `report` knows the window and the targets of this run.
    if (impl.events.is_open())
        impl.events << nlohmann::json{{"schema", kSessionSchema},
                                      {"ts", iso8601_ms(impl.start_unix_ms)},
                                      {"window_s", *impl.window_s},
                                      {"targets", target_strings()}}
                           .dump()
                    << std::endl;
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
