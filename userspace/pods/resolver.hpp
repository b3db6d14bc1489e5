// Who is behind a transaction: pod (namespace/name/uid/container) from the
// client socket's cgroup or, failing that, the client address.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "common/net.hpp"

namespace imdstrace {

struct PodInfo {
    std::string namespace_;
    std::string name;
    std::string uid;
    std::string container;
    std::vector<IpAddr> ips;
    std::string cgroup;  // relative to the cgroup2 mount, "/kubepods.slice/..."

    std::string ref() const { return namespace_ + "/" + name; }
};

// cgroup v2 id (the directory's inode) -> path relative to the mount.
class CgroupPaths {
public:
    explicit CgroupPaths(std::string mount) : mount_(std::move(mount)) {}
    const std::string& mount() const { return mount_; }
    // "" when the cgroup no longer exists.
    std::string path_of(std::uint64_t id);
    // Inode id of a path relative to the mount, nullopt when absent.
    std::optional<std::uint64_t> id_of(const std::string& relative) const;

private:
    std::optional<std::string> by_handle(std::uint64_t id) const;
    void walk();
    std::string mount_;
    std::unordered_map<std::uint64_t, std::string> cache_;
};

class PodResolver {
public:
    virtual ~PodResolver() = default;
    virtual std::optional<PodInfo> by_cgroup(const std::string& cgroup_path) = 0;
    virtual std::optional<PodInfo> by_ip(const IpAddr& addr) = 0;
    virtual std::string describe() const = 0;
};

// --pods static:FILE (format: ../shared/DESIGN.md).  Throws std::runtime_error
// with a message naming the file and the problem.
// A static mapping file: a regular file of at most kPodMappingMaxBytes.
inline constexpr std::size_t kPodMappingMaxBytes = 16u << 20;
std::unique_ptr<PodResolver> make_static_resolver(const std::string& file);
std::unique_ptr<PodResolver> make_null_resolver();
// Parse the static mapping from JSON text (for tests).
std::vector<PodInfo> parse_pod_mapping(const std::string& json_text, const std::string& origin);

// --pods k8s-node | k8s-api | auto (pods/k8s.hpp has the details).
struct PodResolverSettings {
    std::string host_root = "/";  // where /var/log/pods is
    std::string cgroup_mount;     // absolute cgroup2 mount the cgroup paths are relative to; "" = locate_cgroup2(host_root)
    std::string kubeconfig;       // --kubeconfig; "" = in-cluster, else $KUBECONFIG (k8s-api only)
    std::string node_name;        // "" = $NODE_NAME, else the hostname
};
// k8s-node: from the node alone.  k8s-api: the API server (in-cluster or
// kubeconfig), falling back to k8s-node with one warning when it is missing,
// unreachable, refuses or hangs (3 s).  auto: k8s-api in a cluster (or with
// an explicit kubeconfig), else k8s-node where a kubepods cgroup tree
// exists, else none.  Throws std::runtime_error for a kubeconfig the user
// named that cannot be used.
enum class K8sMode { node, api, automatic };
std::unique_ptr<PodResolver> make_k8s_resolver(K8sMode mode, const PodResolverSettings& settings);

}  // namespace imdstrace
