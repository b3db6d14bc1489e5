#include "loader/tracer.hpp"

#include <bpf/bpf.h>
#include <bpf/btf.h>
#include <bpf/libbpf.h>
#include <fcntl.h>
#include <linux/magic.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <sys/statfs.h>
#include <sys/un.h>
#include <fmt/format.h>
#include <random>
#include <algorithm>
#include <sys/utsname.h>
#include <arpa/inet.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <exception>
#include <stdexcept>
#include <utility>

#include "imdstrace.h"
#include "imdstrace.skel.h"

namespace imdstrace {
namespace {

std::string errstr(int err) { return std::strerror(err < 0 ? -err : err); }

// Legacy tc filters: every imdstrace run uses priority 0x1d5 and its own
// handle 0x01d5XXXX, and holds an abstract unix socket named after that
// handle for as long as it lives.  Abstract sockets belong to the network
// namespace and vanish with their process, even on SIGKILL: a filter of ours
// whose socket name can be bound again was left by a dead run (stale, and
// removed), one whose name is taken belongs to a live tracer (a DaemonSet
// beside a `kubectl exec imdstrace diagnose`) and is left alone.
constexpr std::uint32_t kTcPriority = 0x1d5;
constexpr std::uint32_t kTcHandleTag = 0x1d5;

bool our_handle(std::uint32_t handle) { return (handle >> 16) == kTcHandleTag; }

// Ours: our priority and handle tag, or the handle-0 entry the kernel lists
// for that priority (the filter chain's head).
bool our_filter(const TcFilter& f) {
    return f.priority == kTcPriority && f.kind == "bpf" && (f.handle == 0 || our_handle(f.handle));
}

// A clsact qdisc that holds imdstrace filters and nothing else was made by
// an imdstrace run (maybe one since killed): whoever leaves it empty removes
// it, whatever order the runs start, die and end in.  An empty qdisc, or
// one with anyone else's filter, was not ours and stays.
bool imdstrace_qdisc(int ifindex) {
    int ours = 0;
    for (bool ingress : {true, false}) {
        auto filters = tc_filters(ifindex, ingress);
        if (!filters) return false;
        for (const auto& f : *filters) {
            if (!our_filter(f)) return false;
            ++ours;
        }
    }
    return ours > 0;
}

// Bind the liveness name of `handle`; -1 when someone alive holds it.
int bind_liveness(std::uint32_t handle) {
    int fd = ::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    auto name = fmt::format("imdstrace-tc-{:08x}", handle);
    std::memcpy(a.sun_path + 1, name.data(), name.size());  // sun_path[0] = 0: abstract
    socklen_t len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 1 + name.size());
    if (::bind(fd, reinterpret_cast<sockaddr*>(&a), len) != 0) {
        ::close(fd);
        return -1;
    }
    return fd;
}

struct SkelDeleter {
    void operator()(imdstrace_bpf* s) const { imdstrace_bpf__destroy(s); }
};
struct LinkDeleter {
    void operator()(bpf_link* l) const { bpf_link__destroy(l); }
};
struct RingDeleter {
    void operator()(ring_buffer* r) const { ring_buffer__free(r); }
};
using LinkPtr = std::unique_ptr<bpf_link, LinkDeleter>;

bool btf_has(const btf* b, const char* name, int kind) { return btf__find_by_name_kind(b, name, kind) > 0; }

int enum_value(const btf* b, const char* enum_name, const char* value_name) {
    int id = btf__find_by_name_kind(b, enum_name, BTF_KIND_ENUM);
    if (id <= 0) return -1;
    const btf_type* t = btf__type_by_id(b, id);
    const struct btf_enum* e = btf_enum(t);
    for (unsigned i = 0; i < btf_vlen(t); ++i, ++e)
        if (std::strcmp(btf__name_by_offset(b, e->name_off), value_name) == 0) return e->val;
    return -1;
}

// Number of arguments of a tracepoint, from its btf_trace_<name> typedef
// (a pointer to a function whose first argument is the context).
int tracepoint_args(const btf* b, const char* typedef_name) {
    int id = btf__find_by_name_kind(b, typedef_name, BTF_KIND_TYPEDEF);
    if (id <= 0) return -1;
    const btf_type* t = btf__type_by_id(b, id);
    t = btf__type_by_id(b, t->type);  // pointer
    if (!t || !btf_is_ptr(t)) return -1;
    t = btf__type_by_id(b, t->type);  // func proto
    if (!t || !btf_is_func_proto(t)) return -1;
    return static_cast<int>(btf_vlen(t)) - 1;
}

// One uplink direction attached either as a tcx link (v6.6+: released by
// the kernel when this process exits, however it exits) or as a netlink tc
// filter in a clsact qdisc (older kernels: removed by the destructor).
class UplinkHook {
public:
    UplinkHook(const Interface& iface, bool ingress, int prog_fd, const KernelFeatures& kf, bool prefer_tcx,
               std::uint32_t handle)
        : iface_(iface), ingress_(ingress), handle_(handle) {
        if (prefer_tcx && kf.tcx) {
            int type = ingress ? kf.tcx_ingress : kf.tcx_egress;
            int fd = bpf_link_create(prog_fd, iface.ifindex, static_cast<bpf_attach_type>(type), nullptr);
            if (fd >= 0) {
                tcx_fd_ = fd;
                return;
            }
            spdlog::debug("tcx attach on {} failed ({}), using a clsact qdisc", iface.name, errstr(fd));
        }
        attach_legacy(prog_fd);
    }
    ~UplinkHook() {
        if (tcx_fd_ >= 0) {
            ::close(tcx_fd_);
            return;
        }
        bpf_tc_hook hook = make_hook();
        bpf_tc_opts opts{};
        opts.sz = sizeof(opts);
        opts.handle = handle_;
        opts.priority = kTcPriority;
        if (int err = bpf_tc_detach(&hook, &opts); err && err != -ENOENT && err != -ENODEV)
            spdlog::warn("could not remove the tc filter on {}: {}", iface_.name, errstr(err));
        // Filters of runs that died since we attached go too: nothing of
        // ours may stay because of the order runs end in.
        remove_stale(hook);
        // The qdisc goes only if this run (or a killed earlier run) created
        // it and nobody else's filter hangs off it by now.
        const int left_in = created_qdisc_ ? tc_filter_count(iface_.ifindex, true) : -1;
        const int left_out = created_qdisc_ ? tc_filter_count(iface_.ifindex, false) : -1;
        spdlog::debug("{} {}: qdisc ours {}, filters left {}/{}", iface_.name, ingress_ ? "ingress" : "egress",
                      created_qdisc_, left_in, left_out);
        if (created_qdisc_ && left_in == 0 && left_out == 0) {
            hook.attach_point = static_cast<bpf_tc_attach_point>(BPF_TC_INGRESS | BPF_TC_EGRESS);
            if (int err = bpf_tc_hook_destroy(&hook); err && err != -ENOENT && err != -ENODEV && err != -EINVAL)
                spdlog::warn("could not remove the clsact qdisc on {}: {}", iface_.name, errstr(err));
        }
    }
    UplinkHook(const UplinkHook&) = delete;
    UplinkHook& operator=(const UplinkHook&) = delete;

    std::string mode() const { return tcx_fd_ >= 0 ? "tcx" : "tc clsact"; }

private:
    bpf_tc_hook make_hook() const {
        bpf_tc_hook hook{};
        hook.sz = sizeof(hook);
        hook.ifindex = iface_.ifindex;
        hook.attach_point = ingress_ ? BPF_TC_INGRESS : BPF_TC_EGRESS;
        return hook;
    }

    void attach_legacy(int prog_fd) {
        bpf_tc_hook hook = make_hook();
        // Ask first rather than provoke the kernel's "exclusivity flag"
        // refusal (which libbpf logs as a warning).
        int err = has_clsact(iface_.ifindex) ? -EEXIST : bpf_tc_hook_create(&hook);
        if (err && err != -EEXIST)
            throw std::runtime_error("cannot add a clsact qdisc to " + iface_.name + ": " + errstr(err) +
                                     " (needs CAP_NET_ADMIN and the sch_ingress module)");
        created_qdisc_ = err == 0 || imdstrace_qdisc(iface_.ifindex);
        remove_stale(hook);
        bpf_tc_opts opts{};
        opts.sz = sizeof(opts);
        opts.prog_fd = prog_fd;
        opts.handle = handle_;
        opts.priority = kTcPriority;
        err = bpf_tc_attach(&hook, &opts);
        if (err) {
            if (created_qdisc_) {
                hook.attach_point = static_cast<bpf_tc_attach_point>(BPF_TC_INGRESS | BPF_TC_EGRESS);
                bpf_tc_hook_destroy(&hook);
            }
            throw std::runtime_error("cannot attach the tc program to " + iface_.name + ": " + errstr(err) +
                                     " (needs CAP_NET_ADMIN and the cls_bpf module)");
        }
    }

    // Filters of earlier imdstrace runs that died without cleaning up
    // (SIGKILL): ours by priority and handle tag, dead by their free
    // liveness name.  Removed before attaching.
    void remove_stale(const bpf_tc_hook& hook) {
        auto filters = tc_filters(iface_.ifindex, ingress_);
        if (!filters) return;
        for (const auto& f : *filters) {
            if (f.priority != kTcPriority || f.kind != "bpf" || !our_handle(f.handle) || f.handle == handle_) continue;
            int probe = bind_liveness(f.handle);
            if (probe < 0) {
                spdlog::info("another imdstrace is tracing {} (tc handle {:#x}): leaving its filter alone",
                             iface_.name, f.handle);
                continue;
            }
            bpf_tc_opts d{};
            d.sz = sizeof(d);
            d.handle = f.handle;
            d.priority = kTcPriority;
            if (bpf_tc_detach(&hook, &d) == 0) {
                spdlog::warn("removed a stale imdstrace tc filter on {} left by an earlier run", iface_.name);
                created_qdisc_ = true;  // that run's qdisc: ours to remove once empty
            }
            ::close(probe);
        }
    }

    Interface iface_;
    bool ingress_;
    std::uint32_t handle_;
    int tcx_fd_ = -1;
    bool created_qdisc_ = false;
};

// While the programs load, libbpf's warnings (the verifier log among them,
// dozens of lines) are held here: printed as warnings if the load works,
// left at debug level if it fails, where one line says why.
std::vector<std::string>* g_held_warnings = nullptr;

// The capabilities a BPF load needs that this process lacks ("" if none).
std::string missing_load_capabilities() {
    std::ifstream status("/proc/self/status");
    std::string line;
    std::uint64_t eff = 0;
    while (std::getline(status, line))
        if (line.starts_with("CapEff:")) eff = std::stoull(line.substr(7), nullptr, 16);
    auto has = [eff](int bit) { return (eff >> bit) & 1; };
    constexpr int kSysAdmin = 21, kPerfmon = 38, kBpf = 39;
    if (has(kSysAdmin)) return {};
    std::string out;
    if (!has(kBpf)) out += "CAP_BPF";
    if (!has(kPerfmon)) out += std::string(out.empty() ? "" : " and ") + "CAP_PERFMON";
    return out;
}

int libbpf_to_spdlog(libbpf_print_level level, const char* fmt, va_list args) {
    va_list copy;
    va_copy(copy, args);
    int n = std::vsnprintf(nullptr, 0, fmt, copy);
    va_end(copy);
    if (n <= 0) return n;
    std::string text(static_cast<std::size_t>(n) + 1, '\0');
    std::vsnprintf(text.data(), text.size(), fmt, args);
    text.resize(n);
    while (!text.empty() && text.back() == '\n') text.pop_back();
    if (text.starts_with("libbpf: ")) text.erase(0, 8);
    // The verifier log arrives as one multi-line message.
    std::size_t start = 0;
    while (start <= text.size()) {
        auto end = text.find('\n', start);
        auto line = text.substr(start, end == std::string::npos ? std::string::npos : end - start);
        switch (level) {
        case LIBBPF_WARN:
            if (g_held_warnings) {
                g_held_warnings->push_back(line);
                spdlog::debug("libbpf: {}", line);
            } else {
                spdlog::warn("libbpf: {}", line);
            }
            break;
        case LIBBPF_INFO: spdlog::debug("libbpf: {}", line); break;
        default: spdlog::trace("libbpf: {}", line); break;
        }
        if (end == std::string::npos) break;
        start = end + 1;
    }
    return n;
}

}  // namespace

KernelFeatures KernelFeatures::probe() {
    KernelFeatures kf;
    utsname u{};
    if (uname(&u) == 0) {
        kf.release = u.release;
        kf.machine = u.machine;
    }
    {
        std::ifstream mounts("/proc/self/mounts");
        std::string dev, dir, type;
        std::string rest;
        while (mounts >> dev >> dir >> type && std::getline(mounts, rest))
            if (type == "tracefs") kf.tracefs_mounted = true;
    }
    struct btf* vmlinux = btf__load_vmlinux_btf();
    if (!vmlinux) return kf;
    kf.has_btf = true;
    kf.kfree_skb_reason = tracepoint_args(vmlinux, "btf_trace_kfree_skb") >= 3;
    kf.kfree_skb_rx_sk = tracepoint_args(vmlinux, "btf_trace_kfree_skb") >= 4;
    kf.icmp_send_tracepoint = btf_has(vmlinux, "btf_trace_icmp_send", BTF_KIND_TYPEDEF);
    kf.connect_tracepoint = btf_has(vmlinux, "btf_trace_inet_sock_set_state", BTF_KIND_TYPEDEF);
    kf.syscall_tracepoints = btf_has(vmlinux, "btf_trace_sys_enter", BTF_KIND_TYPEDEF) &&
                             btf_has(vmlinux, "btf_trace_sys_exit", BTF_KIND_TYPEDEF);
    kf.tcx_ingress = enum_value(vmlinux, "bpf_attach_type", "BPF_TCX_INGRESS");
    kf.tcx_egress = enum_value(vmlinux, "bpf_attach_type", "BPF_TCX_EGRESS");
    kf.tcx = kf.tcx_ingress >= 0 && kf.tcx_egress >= 0;
    btf__free(vmlinux);
    return kf;
}

struct Tracer::Impl {
    std::unique_ptr<imdstrace_bpf, SkelDeleter> skel;
    std::vector<LinkPtr> links;
    std::vector<std::unique_ptr<UplinkHook>> uplink_hooks;
    std::unique_ptr<ring_buffer, RingDeleter> ring;
    EventHandler on_event;
    std::vector<std::string> summary;
    int cgroup_fd = -1;
    int liveness_fd = -1;  // held for the life of the legacy tc filters
    // An exception from the handler (a sink that cannot write) must not
    // unwind through libbpf's C frames: kept here, rethrown by poll().
    std::exception_ptr handler_error;

    ~Impl() {
        // Detach before the programs and maps go away.
        ring.reset();
        while (!uplink_hooks.empty()) uplink_hooks.pop_back();  // reverse order of attach
        links.clear();
        if (cgroup_fd >= 0) ::close(cgroup_fd);
        if (liveness_fd >= 0) ::close(liveness_fd);
    }

    static int on_sample(void* ctx, void* data, size_t size) {
        auto* self = static_cast<Impl*>(ctx);
        try {
            self->on_event(std::span<const std::uint8_t>(static_cast<const std::uint8_t*>(data), size));
        } catch (...) {
            self->handler_error = std::current_exception();
            return -ECANCELED;  // ends this ring_buffer__poll
        }
        return 0;
    }
};

std::unique_ptr<Tracer> Tracer::start(const TracerConfig& config, const KernelFeatures& kf, EventHandler on_event) {
    libbpf_set_print(libbpf_to_spdlog);
    if (!kf.has_btf)
        throw std::runtime_error("kernel BTF (/sys/kernel/btf/vmlinux) is not available: imdstrace needs a kernel "
                                 "built with CONFIG_DEBUG_INFO_BTF=y (every EKS AMI kernel is)");
    std::unique_ptr<Tracer> tracer(new Tracer());
    tracer->impl_ = std::make_unique<Impl>();
    auto& impl = *tracer->impl_;
    impl.on_event = std::move(on_event);

    impl.skel.reset(imdstrace_bpf__open());
    if (!impl.skel) throw std::runtime_error("cannot open the BPF object: " + errstr(errno));
    auto* ro = impl.skel->rodata;
    std::uint32_t v4 = 0, v6 = 0;
    for (const auto& t : config.targets) (t.addr.is_v4() ? v4 : v6)++;
    if (v4 > IMDS_MAX_TARGETS || v6 > IMDS_MAX_TARGETS)
        throw std::runtime_error("at most " + std::to_string(IMDS_MAX_TARGETS) + " IPv4 and " +
                                 std::to_string(IMDS_MAX_TARGETS) + " IPv6 targets are supported");
    v4 = v6 = 0;
    for (const auto& t : config.targets) {
        if (t.addr.is_v4()) {
            std::memcpy(const_cast<__be32*>(&ro->target_v4_addr[v4]), t.addr.bytes.data(), 4);
            const_cast<__be16&>(ro->target_v4_port[v4]) = htons(t.port);
            ++v4;
        } else {
            std::memcpy(const_cast<__u32*>(ro->target_v6_addr[v6]), t.addr.bytes.data(), 16);
            const_cast<__be16&>(ro->target_v6_port[v6]) = htons(t.port);
            ++v6;
        }
    }
    const_cast<__u32&>(ro->n_targets_v4) = v4;
    const_cast<__u32&>(ro->n_targets_v6) = v6;
    const_cast<__u32&>(ro->target_v6_base) = v4;
    const_cast<bool&>(ro->kfree_skb_has_reason) = kf.kfree_skb_reason;
    const_cast<bool&>(ro->kfree_skb_has_rx_sk) = kf.kfree_skb_rx_sk;
    const_cast<bool&>(ro->detect_proxy) = config.proxy_any_port || !config.proxy_ports.empty();
    for (unsigned port = 0; port < 65536; ++port) {
        const bool on = config.proxy_any_port ||
                        std::find(config.proxy_ports.begin(), config.proxy_ports.end(), port) != config.proxy_ports.end();
        if (on) const_cast<__u8&>(ro->proxy_port_bits[port >> 3]) |= static_cast<__u8>(1u << (port & 7));
    }
    if (config.ring_size) {
        if (int err = bpf_map__set_max_entries(impl.skel->maps.events, config.ring_size))
            throw std::runtime_error("cannot size the event ring buffer to " + std::to_string(config.ring_size) +
                                     " bytes: " + errstr(err));
    }
    bpf_program__set_autoload(impl.skel->progs.observe_icmp_send, kf.icmp_send_tracepoint);
    bpf_program__set_autoload(impl.skel->progs.observe_connect, kf.connect_tracepoint);
    bpf_program__set_autoload(impl.skel->progs.observe_connect_enter, kf.syscall_tracepoints);
    bpf_program__set_autoload(impl.skel->progs.observe_connect_exit, kf.syscall_tracepoints);
    if (config.cgroup_dir.empty()) {
        bpf_program__set_autoload(impl.skel->progs.socket_egress, false);
        bpf_program__set_autoload(impl.skel->progs.socket_ingress, false);
    }
    if (config.uplinks.empty()) {
        bpf_program__set_autoload(impl.skel->progs.uplink_ingress, false);
        bpf_program__set_autoload(impl.skel->progs.uplink_egress, false);
    }
    std::vector<std::string> held;
    g_held_warnings = &held;
    int err = imdstrace_bpf__load(impl.skel.get());
    g_held_warnings = nullptr;
    if (err) {
        auto missing = missing_load_capabilities();
        if ((err == -EPERM || err == -EACCES) && !missing.empty())
            throw std::runtime_error("the kernel refused to load the BPF programs: " + errstr(err) + ": missing " +
                                     missing +
                                     " (tracing programs need CAP_BPF and CAP_PERFMON, or CAP_SYS_ADMIN; run as "
                                     "root or grant them)");
        throw std::runtime_error("the kernel refused to load the BPF programs: " + errstr(err) +
                                 (err == -EPERM ? " (run as root, or with CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN)"
                                                : " (run with --log-level debug for the verifier log)"));
    }
    for (const auto& line : held) spdlog::warn("libbpf: {}", line);

    if (!config.attach) return tracer;

    // Tracepoints: raw (tp_btf) attachment needs BTF, not tracefs.
    auto attach_tp = [&impl](bpf_program* prog, const char* what) {
        LinkPtr link(bpf_program__attach(prog));
        if (!link) throw std::runtime_error(std::string("cannot attach to tracepoint ") + what + ": " + errstr(errno));
        impl.links.push_back(std::move(link));
    };
    attach_tp(impl.skel->progs.observe_drop, "skb/kfree_skb");
    impl.summary.push_back(kf.kfree_skb_reason ? "drops: tp_btf/kfree_skb with drop reasons"
                                               : "drops: tp_btf/kfree_skb, locations only (kernel < 5.17)");
    if (kf.connect_tracepoint) {
        attach_tp(impl.skel->progs.observe_connect, "sock/inet_sock_set_state");
        impl.summary.push_back("processes: tp_btf/inet_sock_set_state (pid, comm of connect())");
    }
    if (kf.syscall_tracepoints) {
        attach_tp(impl.skel->progs.observe_connect_enter, "raw_syscalls/sys_enter");
        attach_tp(impl.skel->progs.observe_connect_exit, "raw_syscalls/sys_exit");
        impl.summary.push_back("connect() failures: tp_btf/sys_enter and sys_exit (errors before the first packet)");
    }
    if (kf.icmp_send_tracepoint) {
        attach_tp(impl.skel->progs.observe_icmp_send, "icmp/icmp_send");
        impl.summary.push_back("icmp: tp_btf/icmp_send and ICMP leaving the uplink");
    } else {
        impl.summary.push_back("icmp: ICMP leaving the uplink (no icmp_send tracepoint before 6.9)");
    }

    if (!config.cgroup_dir.empty()) {
        struct statfs sfs{};
        if (::statfs(config.cgroup_dir.c_str(), &sfs) != 0)
            throw std::runtime_error("cgroup directory " + config.cgroup_dir + ": " + errstr(errno));
        if (sfs.f_type != CGROUP2_SUPER_MAGIC)
            throw std::runtime_error(config.cgroup_dir +
                                     " is not a cgroup v2 directory: pass --cgroup with a directory of the "
                                     "cgroup2 mount (see /proc/self/mounts)");
        impl.cgroup_fd = ::open(config.cgroup_dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (impl.cgroup_fd < 0) throw std::runtime_error("cannot open " + config.cgroup_dir + ": " + errstr(errno));
        // connect() events from tasks below it mark their namespaces as this node's.
        std::uint32_t slot = 0;
        if (bpf_map_update_elem(bpf_map__fd(impl.skel->maps.traced_cgroup), &slot, &impl.cgroup_fd, BPF_ANY) != 0)
            throw std::runtime_error("cannot store the traced cgroup in its BPF map: " + errstr(errno));
        for (auto* prog : {impl.skel->progs.socket_egress, impl.skel->progs.socket_ingress}) {
            LinkPtr link(bpf_program__attach_cgroup(prog, impl.cgroup_fd));
            if (!link)
                throw std::runtime_error("cannot attach cgroup_skb to " + config.cgroup_dir + ": " + errstr(errno));
            impl.links.push_back(std::move(link));
        }
        impl.summary.push_back("sockets: cgroup_skb ingress+egress on " + config.cgroup_dir);
    }

    std::uint32_t handle = 0;
    if (!config.uplinks.empty()) {  // also for tcx: a failed tcx attach falls back to tc
        std::random_device rd;
        for (int i = 0; i < 64 && impl.liveness_fd < 0; ++i) {
            handle = (kTcHandleTag << 16) | (1 + rd() % 0xfffe);
            impl.liveness_fd = bind_liveness(handle);
        }
        if (impl.liveness_fd < 0) throw std::runtime_error("cannot reserve a tc filter handle (abstract unix socket)");
    }
    for (const auto& up : config.uplinks) {
        auto in = std::make_unique<UplinkHook>(up, true, bpf_program__fd(impl.skel->progs.uplink_ingress), kf,
                                               config.prefer_tcx, handle);
        auto out = std::make_unique<UplinkHook>(up, false, bpf_program__fd(impl.skel->progs.uplink_egress), kf,
                                                config.prefer_tcx, handle);
        impl.summary.push_back("uplink " + up.name + ": " + in->mode() + " ingress+egress");
        // Both directions share one clsact qdisc; the ingress hook created it
        // (if anyone did) and, destroyed last, removes it.
        impl.uplink_hooks.push_back(std::move(in));
        impl.uplink_hooks.push_back(std::move(out));
    }

    impl.ring.reset(ring_buffer__new(bpf_map__fd(impl.skel->maps.events), &Impl::on_sample, &impl, nullptr));
    if (!impl.ring) throw std::runtime_error("cannot open the event ring buffer: " + errstr(errno));
    return tracer;
}

Tracer::~Tracer() = default;

int Tracer::poll(int timeout_ms) {
    int n = ring_buffer__poll(impl_->ring.get(), timeout_ms);
    // The programs wake us only for a batch (wakeup_flag()): what came in
    // below that is read when the wait times out.
    if (n == 0) n = ring_buffer__consume(impl_->ring.get());
    if (auto e = std::exchange(impl_->handler_error, nullptr)) std::rethrow_exception(e);
    if (n == -EINTR) return 0;
    return n;
}

TracerCounters Tracer::counters() const {
    TracerCounters c;
    int ncpu = libbpf_num_possible_cpus();
    if (ncpu <= 0) return c;
    std::vector<std::uint64_t> values(ncpu);
    int fd = bpf_map__fd(impl_->skel->maps.counters);
    for (std::uint32_t hook = 0; hook < IMDS_HOOK_MAX; ++hook) {
        for (std::uint32_t what = 0; what < IMDS_CNT_MAX; ++what) {
            std::uint32_t key = hook * IMDS_CNT_MAX + what;
            if (bpf_map_lookup_elem(fd, &key, values.data()) != 0) continue;
            std::uint64_t sum = 0;
            for (auto v : values) sum += v;
            switch (what) {
            case IMDS_CNT_SEEN: c.seen += sum; break;
            case IMDS_CNT_EMITTED: c.emitted += sum; break;
            case IMDS_CNT_LOST: c.lost += sum; break;
            case IMDS_CNT_DROPS_SEEN: c.drops_seen += sum; break;
            }
        }
    }
    return c;
}

std::uint64_t Tracer::events_lost() const {
    // The BPF side's .bss, mapped into this process by the skeleton: no
    // syscall, read after every poll.
    return __atomic_load_n(&impl_->skel->bss->events_lost_total, __ATOMIC_RELAXED);
}

std::vector<std::string> Tracer::attach_summary() const { return impl_->summary; }

}  // namespace imdstrace
