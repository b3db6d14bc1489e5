// Who owns a socket of this network namespace: the process behind a local
// answer for the metadata address (a kube2iam/kiam-style proxy that DNAT
// sends pods' requests to, or a node-local agent on its own address).
#pragma once

#include <map>
#include <optional>
#include <string>

#include "common/net.hpp"
#include "correlate/transaction.hpp"

namespace imdstrace {

class SocketOwners {
public:
    // proc_root: the host's procfs ("/proc", or <host-root>/proc with a
    // PID namespace of its own).
    explicit SocketOwners(std::string proc_root = "/proc");

    // The process holding a TCP socket bound to `local` in this process's
    // network namespace (a listener first, else a connected one), from
    // sock_diag (NETLINK_SOCK_DIAG, inet_diag_req_v2: the socket's inode)
    // and /proc/PID/fd (which process has socket:[inode] open).  nullopt
    // when no socket matches (it lives in another namespace, or closed),
    // or its owner is not visible.  Found owners are cached per endpoint.
    std::optional<ProcessInfo> owner(const Endpoint& local);
    // The same, when the socket may live in another network namespace (a
    // sidecar in a pod): among the processes of `cgroup_dir` (its
    // cgroup.procs), the one whose /proc/PID/net/tcp{,6} lists a socket on
    // that port and whose fds hold it.
    std::optional<ProcessInfo> owner(const Endpoint& local, const std::string& cgroup_dir);

private:
    std::string proc_root_;
    std::map<Endpoint, ProcessInfo> cache_;
};

// Is `addr` one of this network namespace's own addresses (getifaddrs)?
bool is_local_address(const IpAddr& addr);

// The inode of the TCP socket bound to `local` in this network namespace:
// a listener on that address (or on the wildcard address, either family)
// first.  nullopt when none, or sock_diag is unavailable.
std::optional<unsigned long> tcp_socket_inode(const Endpoint& local);

// The process with `socket:[inode]` among its open files under proc_root.
std::optional<ProcessInfo> process_with_socket(const std::string& proc_root, unsigned long inode);

}  // namespace imdstrace
