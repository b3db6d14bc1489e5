// "This node": which kernel events belong to the node imdstrace traces.
//
// The drop and icmp_send tracepoints fire for every network namespace of
// the machine: another kind node, a second testbed, an unrelated container
// with the same pod addresses.  An event belongs to this node when its
// namespace is the tracer's own (the uplinks) or one in which a process of
// the traced cgroup tree lives (the pods, a docker-in-docker pod's own
// namespace included).  Everything else is ignored and counted.
#pragma once

#include <cstdint>
#include <string>
#include <unordered_set>

#include "decode/observation.hpp"
#include "pods/host_procs.hpp"

namespace imdstrace {

class NodeScope {
public:
    // `proc_root`: the host's procfs ("/proc", or <host-root>/proc in a
    // container, which may have a pid namespace of its own: host pids are
    // then found as pods/host_procs.hpp says).  `cgroup_mount`: the cgroup2
    // mount.  `traced_cgroup`: absolute path of the cgroup tree the socket
    // hooks trace; "" = none (only the tracer's own namespace is this node's).
    NodeScope(std::string proc_root, std::string cgroup_mount, std::string traced_cgroup);

    // Whether `o` happened on this node.  Connect events of tasks in the
    // traced tree teach it their namespace; a drop or ICMP from a namespace
    // it does not know makes it rescan the tree (at most once a second)
    // before it says no.
    bool admits(const Observation& o);

    std::uint32_t own_netns() const { return own_; }
    std::size_t namespaces() const { return netns_.size(); }
    std::uint64_t foreign_events() const { return foreign_; }

    // Network namespace inode of a process, 0 when it cannot be read.
    static std::uint32_t netns_of(const std::string& proc_root, int pid);

private:
    void rescan(std::uint64_t now_ns);

    HostProcs procs_;
    std::string traced_cgroup_;
    std::uint32_t own_ = 0;
    std::unordered_set<std::uint32_t> netns_;
    std::uint64_t last_scan_ns_ = 0;
    std::uint64_t foreign_ = 0;
};

}  // namespace imdstrace
