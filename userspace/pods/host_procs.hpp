// The host's processes, as seen from wherever imdstrace runs: on the node
// itself, or in the DaemonSet's container (a pid namespace of its own, the
// host's procfs at <host-root>/proc, maybe a cgroup namespace of its own).
//
// In a pid namespace of its own a process reads `cgroup.procs` as 0 for
// every process outside that namespace: the kernel prints pids in the
// reader's namespace.  The host's procfs still lists them with their host
// pids, and <host-root>/proc/<pid>/cgroup names their cgroup.  So pids come
// from `cgroup.procs` only when the two namespaces are the same, and from a
// scan of <host-root>/proc/*/cgroup otherwise.
//
// And which of a pod's processes stands for its network: not CRI-O's conmon
// (the host's network namespace, in the pod's cgroup with conmon_cgroup =
// "pod"), not a container nested inside the pod (docker-in-docker puts its
// inner containers in <container>/docker/<id>, each in a network namespace
// of its own), but a process in the pod's own namespace.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace imdstrace {

// A process of the host: its pid in the host's pid namespace and its cgroup
// v2 path relative to the cgroup2 mount.
struct HostProcess {
    std::int64_t pid = 0;
    std::string cgroup;
};

// "/../../a/b" (a path as /proc/<pid>/cgroup prints it, relative to the
// reader's cgroup namespace root) -> the path relative to the mount, given
// where that root is in the mount ("/" outside a cgroup namespace).
// "" when the path climbs above the mount.
std::string cgroup_from_namespace_view(std::string_view shown, std::string_view namespace_root);

class HostProcs {
public:
    // `proc_root`: the host's procfs ("/proc", or <host-root>/proc).
    // `cgroup_mount`: absolute path of the cgroup2 mount paths are relative to.
    // `namespace_root`: where this process's cgroup namespace root is in the
    // mount; found out when not given (tests give it).
    HostProcs(std::string proc_root, std::string cgroup_mount,
              std::optional<std::string> namespace_root = std::nullopt);

    const std::string& proc_root() const { return proc_root_; }
    const std::string& cgroup_mount() const { return mount_; }
    // Whether cgroup.procs holds host pids (this process shares the host's pid namespace).
    bool pids_visible() const { return pids_visible_; }
    // Where this process's cgroup namespace root is, relative to the mount ("/" = none of its own).
    const std::string& namespace_root() const { return ns_root_; }

    // One look at the processes: every host process whose cgroup is `dir`
    // (relative to the mount) or below it.  Reads `cgroup.procs` when pids
    // are visible, else scans <proc>/*/cgroup once per Look.
    class Look {
    public:
        std::vector<HostProcess> in_tree(const std::string& dir, int max_depth = 16);

    private:
        friend class HostProcs;
        explicit Look(const HostProcs& h) : h_(&h) {}
        const HostProcs* h_;
        bool scanned_ = false;
        std::vector<HostProcess> all_;
    };
    Look look() const { return Look(*this); }

    // The cgroup of a host pid (relative to the mount); nullopt when gone.
    std::optional<std::string> cgroup_of(std::int64_t pid) const;
    // "net:[4026531840]" of a host pid; "" when gone or not readable.
    std::string netns_of(std::int64_t pid) const;
    // The host's network namespace (its pid 1's) or this process's own.
    bool is_host_netns(const std::string& netns) const;

private:
    std::vector<HostProcess> scan_all() const;
    void find_namespace_root();

    std::string proc_root_, mount_;
    bool pids_visible_ = true;
    std::string ns_root_ = "/";
    std::vector<std::string> host_netns_;
};

// The process that stands for a pod's network namespace.
struct PodNetworkProcess {
    std::int64_t pid = 0;
    std::string cgroup;  // relative to the mount
    std::string netns;   // "net:[...]"
    bool host_network = false;  // every process of the pod is in the host's namespace
};

// A process of the pod, read from one look at the processes.  Processes in
// the host's network namespace are passed over (CRI-O's conmon) unless the
// pod has nothing else (a host-network pod); of the rest, the namespace of
// the processes nearest the pod cgroup wins (the sandbox and the containers
// sit directly below it, nested containers deeper), and of those the one
// most of them share.  nullopt when the pod has no process.
struct PodProcessCandidate {
    HostProcess process;
    std::string netns;
};
std::optional<PodNetworkProcess> choose_pod_network_process(const std::vector<PodProcessCandidate>& candidates,
                                                            const std::string& pod_cgroup,
                                                            const HostProcs& procs);
std::optional<PodNetworkProcess> pod_network_process(HostProcs::Look& look, const HostProcs& procs,
                                                     const std::string& pod_cgroup);

}  // namespace imdstrace
