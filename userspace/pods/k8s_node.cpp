// --pods k8s-node: pods from the node alone.
//
//   cgroup path  -> pod UID, container ID          (cgroup_layout.cpp)
//   pod UID      -> namespace/name, container names (<host-root>/var/log/pods/<ns>_<name>_<uid>/<container>/)
//   container ID -> container name                  (<host-root>/var/log/containers/<pod>_<ns>_<container>-<id>.log)
//   address      -> pod                             (the pod's network namespace, through a process of the pod:
//                                                    /proc/<pid>/net/fib_trie and /proc/<pid>/net/if_inet6)
//
// Both tables are rebuilt from what is on the node (so pods that are gone
// drop out), on a miss, at most once per min_rescan_interval, and capped.
#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fmt/ranges.h>
#include <spdlog/spdlog.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "pods/k8s.hpp"
#include "pods/select.hpp"

namespace imdstrace {

namespace fs = std::filesystem;

namespace {

std::string strip_root(std::string root) {
    while (!root.empty() && root.back() == '/') root.pop_back();
    return root;  // "" for "/"
}

std::optional<std::string> read_small_file(const std::string& path, std::size_t max = 1 << 20) {
    std::ifstream in(path, std::ios::binary);
    if (!in) return std::nullopt;
    std::string out;
    char buf[8192];
    while (in.read(buf, sizeof buf) || in.gcount() > 0) {
        out.append(buf, static_cast<std::size_t>(in.gcount()));
        if (out.size() > max) break;
    }
    return out;
}

std::string read_link(const std::string& path) {
    char buf[4096];
    auto n = ::readlink(path.c_str(), buf, sizeof buf - 1);
    if (n <= 0) return {};
    return std::string(buf, static_cast<std::size_t>(n));
}

bool is_dir(const std::string& parent, const dirent* e) {
    if (e->d_type == DT_DIR) return true;
    if (e->d_type != DT_UNKNOWN) return false;
    struct stat st{};
    return ::stat((parent + "/" + e->d_name).c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

// Entries of a directory: (name, is directory).  Empty when unreadable.
std::vector<std::pair<std::string, bool>> list_dir(const std::string& dir, int* err = nullptr) {
    std::vector<std::pair<std::string, bool>> out;
    DIR* d = ::opendir(dir.c_str());
    if (!d) {
        if (err) *err = errno;
        return out;
    }
    while (auto* e = ::readdir(d)) {
        if (e->d_name[0] == '.') continue;
        out.emplace_back(e->d_name, is_dir(dir, e));
    }
    ::closedir(d);
    return out;
}

bool container_name_ok(const std::string& n) {
    if (n.empty() || n.size() > 63) return false;
    for (char c : n)
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-')) return false;
    return true;
}

constexpr std::size_t kMaxIdsPerPod = 256;  // restarts leave a link per container ID
constexpr int kMaxCgroupDepth = 7;          // where a pod cgroup can sit, at most

}  // namespace

K8sNodeResolver::K8sNodeResolver(K8sNodeOptions o) : opts_(std::move(o)) {
    auto root = strip_root(opts_.host_root);
    if (opts_.cgroup_mount.empty()) opts_.cgroup_mount = locate_cgroup2(opts_.host_root).path;
    opts_.cgroup_mount = strip_root(opts_.cgroup_mount);
    if (opts_.proc_root.empty()) opts_.proc_root = root + "/proc";
    opts_.proc_root = strip_root(opts_.proc_root);
    procs_ = std::make_unique<HostProcs>(opts_.proc_root, opts_.cgroup_mount);
    logs_dir_ = root + kubelet_pod_logs_dir(root);
    containers_dir_ = root + "/var/log/containers";
}

void K8sNodeResolver::refresh() {
    std::lock_guard lk(mu_);
    last_log_scan_ = Clock::now();
    scan_logs();
}

std::string K8sNodeResolver::describe() const {
    std::lock_guard lk(mu_);
    return "k8s-node (" + logs_dir_ + ", cgroups under " + opts_.cgroup_mount + ", " + std::to_string(pods_.size()) +
           " pods known)";
}

K8sNodeStats K8sNodeResolver::stats() const {
    std::lock_guard lk(mu_);
    K8sNodeStats s;
    s.pods = pods_.size();
    for (const auto& [uid, p] : pods_) s.containers += p.by_id.size();
    s.pod_ips = net_.size();
    s.ip_entries = ip_to_uid_.size();
    s.skipped = skipped_;
    s.log_scans = log_scans_;
    s.netns_scans = netns_scans_;
    return s;
}

bool K8sNodeResolver::due(Clock::time_point& last) const {
    auto now = Clock::now();
    if (last != Clock::time_point{} && now - last < opts_.min_rescan_interval) return false;
    last = now;
    return true;
}

// The kubelet's podLogsDir (KubeletConfiguration, 1.29+): from its config
// file where the node keeps one (kubeadm: /var/lib/kubelet/config.yaml; EKS:
// /etc/kubernetes/kubelet/config.json), else the default /var/log/pods.
std::string kubelet_pod_logs_dir(const std::string& root) {
    for (const char* file : {"/var/lib/kubelet/config.yaml", "/etc/kubernetes/kubelet/config.json"}) {
        auto text = read_small_file(root + file);
        if (!text) continue;
        try {
            auto doc = YAML::Load(*text);
            if (doc.IsMap() && doc["podLogsDir"] && doc["podLogsDir"].IsScalar()) {
                auto dir = doc["podLogsDir"].as<std::string>();
                while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
                if (dir.starts_with("/") && dir.find("/../") == std::string::npos) return dir;
            }
        } catch (const YAML::Exception& e) {
            spdlog::debug("k8s-node: {}{}: {}", root, file, e.what());
        }
    }
    return "/var/log/pods";
}

void K8sNodeResolver::scan_logs(const std::string& relist_uid) {
    ++log_scans_;
    const auto root = strip_root(opts_.host_root);
    // The kubelet's links first: their names give namespace, pod, container
    // and ID, their targets the pod's log directory (UID included), wherever
    // the kubelet keeps it (podLogsDir).
    struct Link {
        ContainerLogName name;
        std::string uid, logs_dir;  // from the target, when it parses
    };
    std::vector<Link> links;
    std::vector<std::string> dirs{logs_dir_};
    for (const auto& [file, dir] : list_dir(containers_dir_)) {
        if (dir) continue;
        auto c = parse_container_log_name(file);
        if (!c) {
            spdlog::debug("k8s-node: skipping {}/{}: not <pod>_<namespace>_<container>-<id>.log", containers_dir_, file);
            continue;
        }
        Link l{*c, {}, {}};
        // <logs dir>/<ns>_<name>_<uid>/<container>/<n>.log
        auto target = fs::path(read_link(containers_dir_ + "/" + file));
        auto pod_dir = target.parent_path().parent_path();
        if (auto d = parse_pod_log_dir(pod_dir.filename().string()); d && d->namespace_ == c->namespace_ && d->name == c->pod) {
            l.uid = d->uid;
            if (target.is_absolute()) l.logs_dir = root + pod_dir.parent_path().string();
        }
        if (!l.logs_dir.empty() && std::find(dirs.begin(), dirs.end(), l.logs_dir) == dirs.end() && dirs.size() < 4)
            dirs.push_back(l.logs_dir);
        links.push_back(std::move(l));
    }
    std::unordered_map<std::string, Pod> fresh;
    std::unordered_map<std::string, std::vector<std::string>> by_ref;  // "ns/name" -> uids
    std::size_t skipped = 0;
    bool overflow = false, any_dir = false;
    int first_err = 0;
    for (const auto& logs_dir : dirs) {
        int err = 0;
        auto entries = list_dir(logs_dir, &err);
        if (err) {
            if (!first_err) first_err = err;
            continue;
        }
        any_dir = true;
        for (const auto& [name, dir] : entries) {
            if (!dir) continue;
            auto parsed = parse_pod_log_dir(name);
            if (!parsed) {
                ++skipped;
                spdlog::debug("k8s-node: skipping {}/{}: not <namespace>_<name>_<uid>", logs_dir, name);
                continue;
            }
            if (fresh.contains(parsed->uid)) continue;
            if (fresh.size() >= opts_.max_pods) {
                overflow = true;
                break;
            }
            Pod p;
            // A pod seen before keeps its container list unless a lookup found
            // it stale (a container ID nobody named): one directory read per
            // rescan, not one per pod.
            if (auto old = pods_.find(parsed->uid);
                old != pods_.end() && old->second.namespace_ == parsed->namespace_ &&
                old->second.name == parsed->name && parsed->uid != relist_uid) {
                p.namespace_ = std::move(old->second.namespace_);
                p.name = std::move(old->second.name);
                p.uid = std::move(old->second.uid);
                p.containers = std::move(old->second.containers);
            } else {
                p.namespace_ = parsed->namespace_;
                p.name = parsed->name;
                p.uid = parsed->uid;
                for (const auto& [c, cdir] : list_dir(logs_dir + "/" + name)) {
                    if (!cdir) continue;
                    if (!container_name_ok(c)) {
                        spdlog::debug("k8s-node: skipping {}/{}/{}: not a container name", logs_dir, name, c);
                        continue;
                    }
                    p.containers.push_back(c);
                }
                std::sort(p.containers.begin(), p.containers.end());
            }
            by_ref[p.namespace_ + "/" + p.name].push_back(p.uid);
            auto uid = p.uid;
            fresh.insert_or_assign(uid, std::move(p));
        }
    }
    // Pods whose directory cannot be read here (a podLogsDir the DaemonSet
    // does not mount): the links alone name them.
    for (const auto& l : links) {
        if (l.uid.empty() || fresh.contains(l.uid)) continue;
        if (fresh.size() >= opts_.max_pods) {
            overflow = true;
            break;
        }
        Pod p;
        p.namespace_ = l.name.namespace_;
        p.name = l.name.pod;
        p.uid = l.uid;
        by_ref[p.namespace_ + "/" + p.name].push_back(p.uid);
        fresh.insert_or_assign(l.uid, std::move(p));
    }
    if (!any_dir && links.empty() && !warned_no_logs_) {
        spdlog::warn("k8s-node: cannot read {} ({}) and there are no links in {}: pods cannot be named from this "
                     "node; is --host-root right?",
                     logs_dir_, std::strerror(first_err ? first_err : ENOENT), containers_dir_);
        warned_no_logs_ = true;
    } else if (!any_dir && !warned_no_logs_) {
        spdlog::info("k8s-node: {} cannot be read; naming pods from the links in {}", fmt::join(dirs, ", "),
                     containers_dir_);
        warned_no_logs_ = true;
    }
    if (overflow && !warned_overflow_) {
        spdlog::warn("k8s-node: more than {} pods under {}; only the first {} are attributed", opts_.max_pods,
                     logs_dir_, opts_.max_pods);
        warned_overflow_ = true;
    }
    // Container IDs -> names.
    for (const auto& l : links) {
        std::string uid = l.uid;
        if (uid.empty()) {
            auto it = by_ref.find(l.name.namespace_ + "/" + l.name.pod);
            if (it == by_ref.end() || it->second.size() != 1) continue;
            uid = it->second.front();
        }
        auto p = fresh.find(uid);
        if (p == fresh.end() || p->second.by_id.size() >= kMaxIdsPerPod) continue;
        p->second.by_id[l.name.container_id] = l.name.container;
        if (std::find(p->second.containers.begin(), p->second.containers.end(), l.name.container) ==
            p->second.containers.end())
            p->second.containers.push_back(l.name.container);
    }
    skipped_ = skipped;
    pods_ = std::move(fresh);
}

PodInfo K8sNodeResolver::info(const Pod& p, const std::string& container_id) const {
    PodInfo i;
    i.namespace_ = p.namespace_;
    i.name = p.name;
    i.uid = p.uid;
    if (!container_id.empty())
        if (auto it = p.by_id.find(container_id); it != p.by_id.end()) i.container = it->second;
    // An ID nobody named (an ephemeral container inside the rescan window,
    // CRI-O's conmon, the sandbox) is no container, even in a one-container pod.
    return i;
}

std::optional<PodInfo> K8sNodeResolver::lookup_locked(const std::string& uid, const std::string& container_id) {
    auto it = pods_.find(uid);
    bool missing = it == pods_.end();
    bool unnamed = !missing && !container_id.empty() && !it->second.by_id.contains(container_id);
    if ((missing || unnamed) && due(last_log_scan_)) {
        scan_logs(unnamed ? uid : std::string());  // unnamed: its container directories may be new
        it = pods_.find(uid);
    }
    if (it == pods_.end()) {
        spdlog::debug("k8s-node: pod UID {} is not under {}", uid, logs_dir_);
        return std::nullopt;
    }
    return info(it->second, container_id);
}

std::optional<PodInfo> K8sNodeResolver::by_uid(const std::string& uid, const std::string& container_id) {
    std::lock_guard lk(mu_);
    return lookup_locked(uid, container_id);
}

std::optional<PodInfo> K8sNodeResolver::by_cgroup(const std::string& cgroup_path) {
    auto ref = parse_pod_cgroup(cgroup_path);
    if (!ref) return std::nullopt;
    std::lock_guard lk(mu_);
    auto pod = lookup_locked(ref->uid, ref->container_id);
    if (!pod) return std::nullopt;
    pod->cgroup = ref->pod_cgroup;
    auto n = net_.find(ref->uid);
    if (n == net_.end() || n->second.pod_cgroup != ref->pod_cgroup) {
        auto look = procs_->look();
        if (auto np = read_pod_netns(ref->uid, ref->pod_cgroup, look)) {
            remember_ips(*np);
            n = net_.find(ref->uid);
        }
    }
    if (n != net_.end() && !n->second.host_network) pod->ips = n->second.ips;
    return pod;
}

std::optional<K8sNodeResolver::NetPod> K8sNodeResolver::read_pod_netns(const std::string& uid,
                                                                         const std::string& pod_cgroup,
                                                                         HostProcs::Look& look) {
    auto proc = pod_network_process(look, *procs_, pod_cgroup);
    if (!proc || proc->netns.empty()) return std::nullopt;  // no process, or gone meanwhile
    NetPod np;
    np.uid = uid;
    np.pod_cgroup = pod_cgroup;
    if (proc->host_network) {
        np.host_network = true;
        return np;
    }
    auto base = opts_.proc_root + "/" + std::to_string(proc->pid);
    if (auto fib = read_small_file(base + "/net/fib_trie", 4 << 20)) np.ips = parse_fib_trie_locals(*fib);
    if (auto v6 = read_small_file(base + "/net/if_inet6")) {
        auto more = parse_if_inet6(*v6);
        np.ips.insert(np.ips.end(), more.begin(), more.end());
    }
    return np;
}

void K8sNodeResolver::remember_ips(const NetPod& np) {
    if (net_.size() >= opts_.max_pods && !net_.contains(np.uid)) {
        // Drop pods whose cgroup is gone; if that is not enough, start over.
        for (auto it = net_.begin(); it != net_.end();) {
            struct stat st{};
            if (::stat((opts_.cgroup_mount + it->second.pod_cgroup).c_str(), &st) != 0)
                it = net_.erase(it);
            else
                ++it;
        }
        if (net_.size() >= opts_.max_pods) net_.clear();
        std::erase_if(ip_to_uid_, [&](const auto& kv) { return !net_.contains(kv.second); });
    }
    net_.insert_or_assign(np.uid, np);
    if (np.host_network) return;
    for (const auto& ip : np.ips) {
        if (ip_to_uid_.size() >= opts_.max_ip_entries && !ip_to_uid_.contains(ip)) ip_to_uid_.clear();
        ip_to_uid_[ip] = np.uid;
    }
}

void K8sNodeResolver::scan_netns() {
    ++netns_scans_;
    std::unordered_map<std::string, NetPod> fresh;
    auto look = procs_->look();  // one scan of the host's processes for every pod
    auto walk = [&](auto& self, const std::string& rel, int depth) -> void {
        for (const auto& [name, sub] : list_dir(opts_.cgroup_mount + rel)) {
            if (!sub || fresh.size() >= opts_.max_pods) continue;
            auto child = rel + "/" + name;
            auto ref = parse_pod_cgroup(child);
            if (ref) {
                if (ref->pod_cgroup != child) continue;  // below a pod: done with it
                if (auto old = net_.find(ref->uid); old != net_.end() && old->second.pod_cgroup == child)
                    fresh.insert_or_assign(ref->uid, old->second);
                else if (auto np = read_pod_netns(ref->uid, child, look))
                    fresh.insert_or_assign(ref->uid, std::move(*np));
                continue;
            }
            if (depth + 1 < kMaxCgroupDepth) self(self, child, depth + 1);
        }
    };
    walk(walk, "", 0);
    net_ = std::move(fresh);
    ip_to_uid_.clear();
    for (const auto& [uid, np] : net_) {
        if (np.host_network) continue;
        for (const auto& ip : np.ips)
            if (ip_to_uid_.size() < opts_.max_ip_entries) ip_to_uid_[ip] = uid;
    }
}

std::optional<PodInfo> K8sNodeResolver::ip_lookup_locked(const IpAddr& addr) {
    auto it = ip_to_uid_.find(addr);
    if (it == ip_to_uid_.end()) return std::nullopt;
    auto n = net_.find(it->second);
    struct stat st{};
    if (n == net_.end() || n->second.host_network ||
        ::stat((opts_.cgroup_mount + n->second.pod_cgroup).c_str(), &st) != 0) {
        // The pod is gone (its address may be someone else's by now).
        if (n != net_.end()) net_.erase(n);
        ip_to_uid_.erase(it);
        return std::nullopt;
    }
    auto pod = lookup_locked(n->second.uid, "");
    if (!pod) return std::nullopt;
    pod->cgroup = n->second.pod_cgroup;
    pod->ips = n->second.ips;
    return pod;
}

std::optional<PodInfo> K8sNodeResolver::by_ip(const IpAddr& addr) {
    std::lock_guard lk(mu_);
    if (auto p = ip_lookup_locked(addr)) return p;
    if (!due(last_netns_scan_)) return std::nullopt;
    scan_netns();
    return ip_lookup_locked(addr);
}

}  // namespace imdstrace
