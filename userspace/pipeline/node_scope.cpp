#include "pipeline/node_scope.hpp"

#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

namespace imdstrace {
namespace {

std::uint64_t now_monotonic_ns() {
    timespec ts{};
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return static_cast<std::uint64_t>(ts.tv_sec) * 1'000'000'000ULL + ts.tv_nsec;
}

constexpr std::uint64_t kRescanInterval = 1'000'000'000ULL;

}  // namespace

std::uint32_t NodeScope::netns_of(const std::string& proc_root, int pid) {
    struct stat st{};
    std::string path = proc_root + "/" + (pid > 0 ? std::to_string(pid) : std::string("self")) + "/ns/net";
    if (::stat(path.c_str(), &st) != 0) return 0;
    return static_cast<std::uint32_t>(st.st_ino);
}

NodeScope::NodeScope(std::string proc_root, std::string cgroup_mount, std::string traced_cgroup)
    : procs_(std::move(proc_root), std::move(cgroup_mount)), traced_cgroup_(std::move(traced_cgroup)) {
    // The tracer's own namespace, as the kernel names it (not through a
    // host-root procfs: that is the host's view of *its* processes).
    own_ = netns_of("/proc", 0);
    if (own_) netns_.insert(own_);
    rescan(now_monotonic_ns());
}

void NodeScope::rescan(std::uint64_t now_ns) {
    last_scan_ns_ = now_ns;
    if (traced_cgroup_.empty()) return;
    const auto& mount = procs_.cgroup_mount();
    if (traced_cgroup_ == mount || traced_cgroup_.starts_with(mount + "/")) {
        auto look = procs_.look();
        for (const auto& p : look.in_tree(traced_cgroup_.substr(mount.size()), 64))
            if (auto ns = netns_of(procs_.proc_root(), static_cast<int>(p.pid))) netns_.insert(ns);
        return;
    }
    // A --cgroup outside the located mount: its own cgroup.procs (pids as this process sees them).
    namespace fs = std::filesystem;
    std::error_code ec;
    auto visit = [this](const fs::path& dir) {
        std::ifstream procs(dir / "cgroup.procs");
        int pid;
        while (procs >> pid)
            if (pid > 0)
                if (auto ns = netns_of("/proc", pid)) netns_.insert(ns);
    };
    visit(traced_cgroup_);
    for (auto it = fs::recursive_directory_iterator(traced_cgroup_, fs::directory_options::skip_permission_denied, ec);
         !ec && it != fs::recursive_directory_iterator(); it.increment(ec))
        if (it->is_directory(ec)) visit(it->path());
}

bool NodeScope::admits(const Observation& o) {
    if (o.hook == Hook::connect) {
        if (o.in_traced_cgroup && o.netns) netns_.insert(o.netns);
        return true;
    }
    // A failed connect() is a transaction of its own: the task must be
    // this node's (in the traced tree, or in one of its namespaces).
    if (o.hook == Hook::connect_failed && o.in_traced_cgroup) {
        if (o.netns) netns_.insert(o.netns);
        return true;
    }
    // tc runs on this namespace's uplinks, cgroup_skb on the traced tree's
    // sockets: both are this node by construction.  A kernel event that
    // names no namespace cannot be placed elsewhere either.
    if ((o.hook != Hook::drop && o.hook != Hook::icmp_send && o.hook != Hook::connect_failed) || !o.netns)
        return true;
    if (netns_.contains(o.netns)) return true;
    // A pod that started since the last look: look again, at most once a second.
    if (auto now = now_monotonic_ns(); now - last_scan_ns_ >= kRescanInterval) {
        rescan(now);
        if (netns_.contains(o.netns)) return true;
    }
    if (foreign_++ < 5)
        spdlog::debug("set aside: {} event in network namespace {} (this node: {} namespaces)", to_string(o.hook),
                      o.netns, netns_.size());
    return false;
}

}  // namespace imdstrace
