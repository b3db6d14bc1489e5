#include "cli/check.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <iostream>

#include "cli/output.hpp"
#include "decode/kernel_names.hpp"
#include "loader/tracer.hpp"
#include "loader/uplink.hpp"
#include "sinks/escape.hpp"
#include "sinks/reports.hpp"

namespace imdstrace {
namespace {

std::uint64_t effective_caps() {
    std::ifstream status("/proc/self/status");
    std::string line;
    while (std::getline(status, line))
        if (line.starts_with("CapEff:")) return std::stoull(line.substr(7), nullptr, 16);
    return 0;
}

}  // namespace

int run_check(const SessionOptions& opts, const std::string& output) {
    CheckReport report;
    auto& lines = report.lines;
    auto kf = KernelFeatures::probe();
    lines.push_back({"kernel", true, true, kf.release, ""});
    // The architecture this binary and its BPF objects were built for; the kernel's is uname -m.
#if defined(__aarch64__)
    constexpr const char* kBuiltFor = "aarch64";
#elif defined(__x86_64__)
    constexpr const char* kBuiltFor = "x86_64";
#else
    constexpr const char* kBuiltFor = "unknown";
#endif
    lines.push_back({"arch", kf.machine == kBuiltFor, true,
                     kf.machine == kBuiltFor ? kf.machine : fmt::format("{} (imdstrace built for {})", kf.machine, kBuiltFor),
                     fmt::format("use the {} build of imdstrace", kf.machine)});
    lines.push_back({"btf", kf.has_btf, true, kf.has_btf ? "/sys/kernel/btf/vmlinux" : "missing",
                     "use a kernel built with CONFIG_DEBUG_INFO_BTF=y (all EKS AMIs, Bottlerocket, AL2023)"});

    auto caps = effective_caps();
    auto has = [caps](int bit) { return (caps >> bit) & 1; };
    constexpr int kNetAdmin = 12, kSysAdmin = 21, kPerfmon = 38, kBpf = 39;
    bool bpf_ok = has(kSysAdmin) || (has(kBpf) && has(kPerfmon));
    bool priv_ok = bpf_ok && has(kNetAdmin);
    lines.push_back({"privileges", priv_ok, true,
                     fmt::format("euid {}, CAP_BPF {}, CAP_PERFMON {}, CAP_NET_ADMIN {}, CAP_SYS_ADMIN {}", geteuid(),
                                 has(kBpf) ? "yes" : "no", has(kPerfmon) ? "yes" : "no", has(kNetAdmin) ? "yes" : "no",
                                 has(kSysAdmin) ? "yes" : "no"),
                     "run as root, or grant CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN"});

    auto mount = locate_cgroup2(opts.host_root());
    if (opts.cgroup == "none") {
        lines.push_back({"cgroup2", true, false, "socket hooks disabled (--cgroup none)", ""});
    } else {
        std::string dir = opts.cgroup.empty() ? (mount.mounted ? mount.path : "") : opts.cgroup;
        struct stat st{};
        bool ok = !dir.empty() && ::stat(dir.c_str(), &st) == 0;
        lines.push_back({"cgroup2", ok, true,
                         ok ? fmt::format("socket hooks on {} (mount {})", dir, mount.mounted ? mount.path : "?")
                            : (dir.empty() ? "no cgroup2 mount" : dir + " does not exist"),
                         "mount cgroup2 (mount -t cgroup2 none /sys/fs/cgroup) or pass --cgroup DIR / --cgroup none"});
    }

    // Every target must be reachable some way: through uplinks (every
    // interface a routing rule can send it through) or on this node itself
    // (a node-local agent, seen by the socket hooks).
    bool any_path = false;
    std::vector<std::string> uplink_names;
    for (const auto& t : opts.targets) {
        auto routes = target_routes(t.addr);
        std::string names;
        for (const auto& i : routes.uplinks) {
            names += (names.empty() ? "" : ", ") + i.name;
            if (std::find(uplink_names.begin(), uplink_names.end(), i.name) == uplink_names.end())
                uplink_names.push_back(i.name);
        }
        if (routes.local) {
            bool hooks = opts.cgroup != "none";
            any_path |= hooks;
            lines.push_back({"uplink " + t.str(), hooks, false,
                             "an address of this node (a node-local agent): traced by the socket hooks, no uplink",
                             "node-local targets are seen only by the socket hooks: drop --cgroup none"});
        } else if (node_local_agent_address(t.addr)) {
            lines.push_back({"uplink " + t.str(), true, false,
                             "not an address of this node: no node-local agent (EKS Pod Identity) runs here; its "
                             "traffic, if any, is traced " +
                                 (routes.uplinks.empty() ? std::string("nowhere (no route)") : "via " + names),
                             ""});
        } else {
            any_path |= !routes.uplinks.empty();
            lines.push_back({"uplink " + t.str(), !routes.uplinks.empty(), false,
                             routes.uplinks.empty() ? "no route (" + routes.error + ")" : "via " + names,
                             "no route to this target from this network namespace; pass --iface NAME if it is reached "
                             "some other way"});
        }
    }
    if (!opts.ifaces.empty()) {
        for (const auto& n : opts.ifaces) {
            auto i = interface_by_name(n);
            any_path |= i.has_value();
            lines.push_back({"iface " + n, i.has_value(), true, i ? "ifindex " + std::to_string(i->ifindex) : "absent",
                             "no interface of that name in this network namespace"});
        }
    }
    lines.push_back({"uplinks", any_path, true,
                     uplink_names.empty() ? (any_path ? "none needed (node-local targets only)" : "none")
                                          : fmt::format("{} (every interface a routing rule sends a target through)",
                                                        fmt::join(uplink_names, ", ")),
                     "no interface routes to a target: pass --iface NAME (the interface toward IMDS)"});

    lines.push_back({"drop path", true, false,
                     kf.kfree_skb_reason ? "tp_btf/kfree_skb with drop reasons (reason names from kernel BTF)"
                                         : "tp_btf/kfree_skb without reasons (kernel < 5.17): locations only",
                     ""});
    lines.push_back({"icmp path", true, false,
                     kf.icmp_send_tracepoint ? "tp_btf/icmp_send (in mainline since 6.9; some stable kernels have it) and ICMP leaving the uplink"
                                             : "ICMP leaving the uplink (no icmp_send tracepoint before 6.9)",
                     ""});
    lines.push_back({"tc attach", true, false,
                     kf.tcx ? "tcx links (6.6+): released by the kernel even if imdstrace is killed"
                            : "netlink tc filters in a clsact qdisc (kernel < 6.6): removed on exit",
                     ""});
    const bool symbols = KernelSymbols::addresses_visible();
    lines.push_back({"kernel symbols", symbols, false,
                     symbols ? "/proc/kallsyms shows addresses: drop locations are named (ip_forward, nf_hook_slow)"
                             : "/proc/kallsyms shows every address as 0 (no CAP_SYSLOG): drop locations will be "
                               "bare addresses (0xffffffff81ff7b50)",
                     "grant CAP_SYSLOG (or run as root) so drop locations are named"});
    lines.push_back({"tracefs", true, false,
                     kf.tracefs_mounted ? "mounted (not needed)" : "not mounted (not needed: tp_btf attaches via BTF)",
                     ""});

    // The verifier's verdict on this kernel: load every program, attach none.
    if (kf.has_btf && bpf_ok) {
        TracerConfig tc;
        tc.targets = opts.targets;
        tc.uplinks = {Interface{1, "lo"}};
        tc.cgroup_dir = "/";
        tc.attach = false;
        try {
            Tracer::start(tc, kf, [](std::span<const std::uint8_t>) {});
            lines.push_back({"bpf load", true, true, "all programs accepted by the verifier", ""});
        } catch (const std::exception& e) {
            lines.push_back({"bpf load", false, true, e.what(), "run with --log-level debug and report the log"});
        }
    }

    write_stdout(output == "json" ? dump_json(to_json(report), 2) + "\n" : format_check(report));
    return report.ok() ? 0 : 1;
}

}  // namespace imdstrace
