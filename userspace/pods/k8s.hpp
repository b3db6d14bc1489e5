// Kubernetes pod attribution: the kubepods cgroup layout, the node-local
// resolver (--pods k8s-node) and the API server resolver (--pods k8s-api).
// Factories for the CLI are declared in pods/resolver.hpp.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "pods/host_procs.hpp"
#include "pods/resolver.hpp"

namespace imdstrace {

// ---------------------------------------------------------------------------
// cgroup layout (cgroup_layout.cpp)

// What a cgroup v2 path says about the pod it belongs to.
struct CgroupPodRef {
    std::string uid;           // pod UID, dashed ("1a2b3c4d-5e6f-...") or 32 hex (static pods)
    std::string qos;           // "guaranteed", "burstable" or "besteffort"
    std::string container_id;  // "" when the process sits in the pod cgroup itself
    std::string runtime;       // "containerd", "crio", "docker", "" (cgroupfs names carry none)
    std::string pod_cgroup;    // path of the pod's cgroup ("/kubepods.slice/.../kubepods-...-pod<uid>.slice")
    std::string container_cgroup;  // path of the container's cgroup, "" when none
};

// Parse a path relative to the cgroup2 mount ("/kubepods.slice/...", "/kubelet/kubepods/...").
// Both cgroup drivers (systemd, cgroupfs), containerd / CRI-O / docker scope
// names, the kubepods tree below any other directory.  Anything else,
// including malformed pod or UID names: nullopt.  Never throws.
std::optional<CgroupPodRef> parse_pod_cgroup(std::string_view path);

// Pod UID syntax: 8-4-4-4-12 hex (API pods) or 32 hex (static/mirror pods).
bool valid_pod_uid(std::string_view uid);
// Container ID syntax: 12..128 lowercase/uppercase hex digits.
bool valid_container_id(std::string_view id);
// "<ns>_<name>_<uid>" (a /var/log/pods directory name) -> parts; nullopt when malformed.
struct PodLogDirName {
    std::string namespace_, name, uid;
};
std::optional<PodLogDirName> parse_pod_log_dir(std::string_view dirname);
// "<pod>_<ns>_<container>-<id>.log" (a /var/log/containers link name).
struct ContainerLogName {
    std::string pod, namespace_, container, container_id;
};
std::optional<ContainerLogName> parse_container_log_name(std::string_view filename);
// Where the kubelet keeps pod log directories below `host_root` ("" = /):
// podLogsDir of its config file (/var/lib/kubelet/config.yaml,
// /etc/kubernetes/kubelet/config.json) when readable, else /var/log/pods.
std::string kubelet_pod_logs_dir(const std::string& host_root);
// Is there a kubepods tree (either driver) within a few levels below `cgroup_mount`?
bool has_kubepods_tree(const std::string& cgroup_mount);

// Local addresses of a network namespace as seen through one of its
// processes: <proc>/<pid>/net/fib_trie (IPv4 LOCAL entries) and
// <proc>/<pid>/net/if_inet6 (global scope).  Loopback and link-local left out.
std::vector<IpAddr> parse_fib_trie_locals(const std::string& text);
std::vector<IpAddr> parse_if_inet6(const std::string& text);

// ---------------------------------------------------------------------------
// --pods k8s-node (k8s_node.cpp)

struct K8sNodeOptions {
    std::string host_root = "/";
    // Absolute path of the cgroup2 mount whose paths by_cgroup() receives;
    // "" = locate_cgroup2(host_root) (pods/select.hpp).
    std::string cgroup_mount;
    // The host's procfs, where pods' processes and network namespaces are
    // read; "" = <host_root>/proc.  Host pids come from cgroup.procs when this
    // process shares that pid namespace, else from its */cgroup files
    // (pods/host_procs.hpp): the DaemonSet's own pid namespace works.
    std::string proc_root;
    // A miss rescans /var/log/pods (and the kubepods tree for by_ip) at most this often.
    std::chrono::milliseconds min_rescan_interval{1000};
    // Bounds: pods kept from /var/log/pods, and address entries.
    std::size_t max_pods = 8192;
    std::size_t max_ip_entries = 16384;
};

struct K8sNodeStats {
    std::size_t pods = 0;        // pods known from /var/log/pods
    std::size_t containers = 0;  // container ID -> name entries
    std::size_t pod_ips = 0;     // pods whose addresses were read
    std::size_t ip_entries = 0;  // address -> pod entries
    std::size_t skipped = 0;     // malformed /var/log/pods entries skipped on the last scan
    std::uint64_t log_scans = 0;
    std::uint64_t netns_scans = 0;
};

class K8sNodeResolver final : public PodResolver {
public:
    explicit K8sNodeResolver(K8sNodeOptions opts);
    std::optional<PodInfo> by_cgroup(const std::string& cgroup_path) override;
    std::optional<PodInfo> by_ip(const IpAddr& addr) override;
    std::string describe() const override;
    // The pod with this UID, from /var/log/pods (rescanned on a miss, rate-limited).
    std::optional<PodInfo> by_uid(const std::string& uid, const std::string& container_id = "");
    K8sNodeStats stats() const;
    const K8sNodeOptions& options() const { return opts_; }
    // Read /var/log/pods now (at start: describe() counts pods, a missing
    // directory is reported before tracing).
    void refresh();

private:
    struct Pod {
        std::string namespace_, name, uid;
        std::vector<std::string> containers;                  // subdirectory names
        std::unordered_map<std::string, std::string> by_id;  // container ID -> name
    };
    struct NetPod {
        std::string uid;
        std::string pod_cgroup;
        std::vector<IpAddr> ips;
        bool host_network = false;
    };
    using Clock = std::chrono::steady_clock;

    bool due(Clock::time_point& last) const;
    void scan_logs(const std::string& relist_uid = "");
    void scan_netns();
    std::optional<NetPod> read_pod_netns(const std::string& uid, const std::string& pod_cgroup, HostProcs::Look& look);
    PodInfo info(const Pod& p, const std::string& container_id) const;
    void remember_ips(const NetPod& np);
    std::optional<PodInfo> lookup_locked(const std::string& uid, const std::string& container_id);
    std::optional<PodInfo> ip_lookup_locked(const IpAddr& addr);

    K8sNodeOptions opts_;
    std::string logs_dir_, containers_dir_;
    mutable std::mutex mu_;
    std::unordered_map<std::string, Pod> pods_;  // uid -> pod
    std::unordered_map<std::string, NetPod> net_;  // uid -> addresses
    std::map<IpAddr, std::string> ip_to_uid_;
    Clock::time_point last_log_scan_{}, last_netns_scan_{};
    std::size_t skipped_ = 0;
    std::uint64_t log_scans_ = 0, netns_scans_ = 0;
    std::unique_ptr<HostProcs> procs_;
    bool warned_no_logs_ = false, warned_overflow_ = false;
};

// ---------------------------------------------------------------------------
// --pods k8s-api (k8s_api.cpp)

// Where and how to reach the API server.
struct K8sApiConfig {
    std::string server;  // "https://10.96.0.1:443" or "http://127.0.0.1:8080" (tests)
    std::string token;   // bearer token ("" = none)
    std::string token_file;  // re-read before every request (rotated service-account tokens)
    std::string ca_file, ca_pem;          // CA bundle: a file or PEM text
    std::string cert_file, cert_pem;      // client certificate
    std::string key_file, key_pem;        // client key
    bool insecure_skip_tls_verify = false;
    std::string origin;  // "in-cluster service account" or the kubeconfig path (messages)
};

// The CA, client certificate and key of `cfg` on a libcurl easy handle
// (`curl` is a CURL*; blobs are copied, so nothing must outlive the call).
void apply_k8s_tls(void* curl, const K8sApiConfig& cfg);

// In-cluster config: KUBERNETES_SERVICE_HOST/PORT and the service account in
// $IMDSTRACE_SA_DIR or /var/run/secrets/kubernetes.io/serviceaccount.
// nullopt (with the reason in *why) when not in a cluster.
std::optional<K8sApiConfig> in_cluster_config(std::string* why = nullptr);
// A kubeconfig file (YAML or JSON): current context's cluster and user.
// Throws std::runtime_error naming the file and the problem.
K8sApiConfig load_kubeconfig(const std::string& path);
std::string base64_decode(std::string_view in);

// One pod as the API server describes it.
struct ApiPod {
    PodInfo info;  // namespace, name, uid, ips (container left empty)
    bool host_network = false;
    bool terminated = false;  // phase Succeeded/Failed: its address may be reused
    std::string mirror_of;    // a mirror pod: the static pod's config hash (its cgroup's UID)
    std::string node;
    std::vector<std::string> containers;                   // spec names
    std::unordered_map<std::string, std::string> by_id;   // container ID (no scheme) -> name
};
// A v1 PodList document.  Throws std::runtime_error when it is not one.
std::vector<ApiPod> parse_pod_list(const std::string& json_text, std::string* resource_version = nullptr);

struct K8sApiOptions {
    std::string node_name;  // "" = $NODE_NAME, else the hostname
    std::chrono::milliseconds timeout{3000};
    std::chrono::milliseconds relist_interval{10000};
    std::chrono::milliseconds min_miss_relist_interval{1000};  // a miss may trigger an early relist
};

struct K8sApiStats {
    std::size_t pods = 0, ip_entries = 0;
    std::uint64_t lists_ok = 0, lists_failed = 0;
    bool api_up = false;
};

// Lists the node's pods (relisting in the background); while the API server
// is unreachable, refuses or hangs, answers from `fallback` (k8s-node) after
// one warning.  Misses also go to `fallback` (pods newer than the last list).
class K8sApiResolver final : public PodResolver {
public:
    K8sApiResolver(K8sApiConfig cfg, K8sApiOptions opts, std::unique_ptr<PodResolver> fallback);
    ~K8sApiResolver() override;
    std::optional<PodInfo> by_cgroup(const std::string& cgroup_path) override;
    std::optional<PodInfo> by_ip(const IpAddr& addr) override;
    std::string describe() const override;
    K8sApiStats stats() const;
    const std::string& node_name() const { return node_; }

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
    std::string node_;
};

// The node name for fieldSelector=spec.nodeName: $NODE_NAME, else the hostname.
std::string current_node_name();

}  // namespace imdstrace
