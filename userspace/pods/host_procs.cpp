#include "pods/host_procs.hpp"

#include "pods/k8s.hpp"

#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#include <spdlog/spdlog.h>

#include <algorithm>
#include <fstream>
#include <map>
#include <sstream>

namespace imdstrace {

namespace {

std::string strip_slashes(std::string s) {
    while (s.size() > 1 && s.back() == '/') s.pop_back();
    return s;
}

std::vector<std::string_view> components(std::string_view path) {
    std::vector<std::string_view> out;
    std::size_t i = 0;
    while (i < path.size()) {
        auto j = path.find('/', i);
        if (j == std::string_view::npos) j = path.size();
        if (j > i) out.push_back(path.substr(i, j - i));
        i = j + 1;
    }
    return out;
}

std::string join(const std::vector<std::string_view>& parts) {
    std::string out;
    for (auto p : parts) {
        out += '/';
        out += p;
    }
    return out.empty() ? "/" : out;
}

std::string read_link(const std::string& path) {
    char buf[256];
    auto n = ::readlink(path.c_str(), buf, sizeof buf - 1);
    return n > 0 ? std::string(buf, static_cast<std::size_t>(n)) : std::string();
}

// The v2 line ("0::<path>") of a /proc/<pid>/cgroup file.
std::optional<std::string> unified_line(const std::string& file) {
    std::ifstream in(file);
    if (!in) return std::nullopt;
    for (std::string line; std::getline(in, line);)
        if (line.starts_with("0::")) return line.substr(3);
    return std::nullopt;
}

std::vector<std::int64_t> read_procs(const std::string& dir) {
    std::vector<std::int64_t> out;
    std::ifstream in(dir + "/cgroup.procs");
    std::int64_t pid;
    while (in >> pid) out.push_back(pid);
    return out;
}

std::vector<std::string> subdirs(const std::string& dir) {
    std::vector<std::string> out;
    DIR* d = ::opendir(dir.c_str());
    if (!d) return out;
    while (auto* e = ::readdir(d)) {
        if (e->d_name[0] == '.') continue;
        bool is_dir = e->d_type == DT_DIR;
        if (e->d_type == DT_UNKNOWN) {
            struct stat st{};
            is_dir = ::stat((dir + "/" + e->d_name).c_str(), &st) == 0 && S_ISDIR(st.st_mode);
        }
        if (is_dir) out.emplace_back(e->d_name);
    }
    ::closedir(d);
    return out;
}

bool all_digits(const char* s) {
    if (!*s) return false;
    for (; *s; ++s)
        if (*s < '0' || *s > '9') return false;
    return true;
}

std::size_t depth_below(const std::string& path, const std::string& top) {
    auto rest = path.size() > top.size() ? std::string_view(path).substr(top.size()) : std::string_view();
    return components(rest).size();
}

bool inside(const std::string& path, const std::string& dir) {
    if (dir == "/" || path == dir) return true;
    return path.size() > dir.size() && path.starts_with(dir) && path[dir.size()] == '/';
}

}  // namespace

std::string cgroup_from_namespace_view(std::string_view shown, std::string_view namespace_root) {
    auto parts = components(shown);
    std::size_t up = 0;
    while (up < parts.size() && parts[up] == "..") ++up;
    auto root = components(namespace_root);
    if (up > root.size()) return {};
    std::vector<std::string_view> out(root.begin(), root.end() - static_cast<std::ptrdiff_t>(up));
    out.insert(out.end(), parts.begin() + static_cast<std::ptrdiff_t>(up), parts.end());
    return join(out);
}

HostProcs::HostProcs(std::string proc_root, std::string cgroup_mount, std::optional<std::string> namespace_root)
    : proc_root_(strip_slashes(std::move(proc_root))), mount_(strip_slashes(std::move(cgroup_mount))) {
    if (proc_root_.empty()) proc_root_ = "/proc";
    // NSpid lists the pids from the procfs's pid namespace down to ours: one
    // entry when they are the same.  (A procfs without it: a test's fake
    // tree, whose cgroup.procs files are written with its own pids.)
    std::ifstream status(proc_root_ + "/self/status");
    for (std::string line; std::getline(status, line);) {
        if (!line.starts_with("NSpid:")) continue;
        std::istringstream in(line.substr(6));
        int n = 0;
        for (std::int64_t p; in >> p;) ++n;
        pids_visible_ = n <= 1;
    }
    for (const auto& p : {proc_root_ + "/1/ns/net", std::string("/proc/self/ns/net")}) {
        auto ns = read_link(p);
        if (!ns.empty() && std::find(host_netns_.begin(), host_netns_.end(), ns) == host_netns_.end())
            host_netns_.push_back(ns);
    }
    if (namespace_root)
        ns_root_ = *namespace_root;
    else
        find_namespace_root();
    if (!pids_visible_ || ns_root_ != "/")
        spdlog::debug("host processes: {} (pids {}), cgroup namespace root {}", proc_root_,
                      pids_visible_ ? "shared" : "from a scan of */cgroup", ns_root_);
}

// /proc/<pid>/cgroup prints paths relative to the reader's cgroup namespace
// root.  Where that root is in the mount: the directory that holds this
// process (its cgroup.procs lists our own pid, as we see it), less the path
// /proc/self/cgroup shows for it.
void HostProcs::find_namespace_root() {
    auto self = unified_line("/proc/self/cgroup");
    if (!self || self->find("..") != std::string::npos) return;
    const auto pid = static_cast<std::int64_t>(::getpid());
    auto holds_self = [&](const std::string& dir) {
        auto procs = read_procs(dir);
        return std::find(procs.begin(), procs.end(), pid) != procs.end();
    };
    auto shown = components(*self);
    if (holds_self(mount_ + join(shown))) return;  // no namespace of its own
    std::vector<std::string> level{""};
    for (int depth = 0; depth < 12 && !level.empty(); ++depth) {
        std::vector<std::string> next;
        for (const auto& rel : level) {
            auto rel_parts = components(rel);
            bool ends_with_shown = rel_parts.size() >= shown.size() &&
                                   std::equal(shown.rbegin(), shown.rend(), rel_parts.rbegin());
            if (ends_with_shown && !rel.empty() && holds_self(mount_ + rel)) {
                rel_parts.resize(rel_parts.size() - shown.size());
                ns_root_ = join(rel_parts);
                return;
            }
            for (const auto& s : subdirs(mount_ + rel)) next.push_back(rel + "/" + s);
        }
        level = std::move(next);
    }
}

std::optional<std::string> HostProcs::cgroup_of(std::int64_t pid) const {
    auto shown = unified_line(proc_root_ + "/" + std::to_string(pid) + "/cgroup");
    if (!shown) return std::nullopt;
    auto path = cgroup_from_namespace_view(*shown, ns_root_);
    if (path.empty()) return std::nullopt;
    return path;
}

std::string HostProcs::netns_of(std::int64_t pid) const {
    return read_link(proc_root_ + "/" + std::to_string(pid) + "/ns/net");
}

bool HostProcs::is_host_netns(const std::string& ns) const {
    return std::find(host_netns_.begin(), host_netns_.end(), ns) != host_netns_.end();
}

std::vector<HostProcess> HostProcs::scan_all() const {
    std::vector<HostProcess> out;
    DIR* d = ::opendir(proc_root_.c_str());
    if (!d) return out;
    while (auto* e = ::readdir(d)) {
        if (!all_digits(e->d_name)) continue;
        auto pid = std::stoll(e->d_name);
        if (auto cg = cgroup_of(pid)) out.push_back({pid, std::move(*cg)});
    }
    ::closedir(d);
    std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.pid < b.pid; });
    return out;
}

std::vector<HostProcess> HostProcs::Look::in_tree(const std::string& dir_in, int max_depth) {
    std::string dir = dir_in.empty() ? "/" : strip_slashes(dir_in);
    std::vector<HostProcess> out;
    if (!h_->pids_visible_) {
        if (!scanned_) {
            all_ = h_->scan_all();
            scanned_ = true;
        }
        for (const auto& p : all_)
            if (inside(p.cgroup, dir) && depth_below(p.cgroup, dir == "/" ? "" : dir) <= static_cast<std::size_t>(max_depth))
                out.push_back(p);
        return out;
    }
    std::vector<std::string> level{dir == "/" ? "" : dir};
    for (int d = 0; d <= max_depth && !level.empty(); ++d) {
        std::vector<std::string> next;
        for (const auto& rel : level) {
            for (auto pid : read_procs(h_->mount_ + rel))
                if (pid > 0) out.push_back({pid, rel.empty() ? "/" : rel});
            if (d < max_depth)
                for (const auto& s : subdirs(h_->mount_ + rel)) next.push_back(rel + "/" + s);
        }
        level = std::move(next);
    }
    return out;
}

std::optional<PodNetworkProcess> choose_pod_network_process(const std::vector<PodProcessCandidate>& candidates,
                                                            const std::string& pod_cgroup, const HostProcs& procs) {
    if (candidates.empty()) return std::nullopt;
    auto depth = [&](const PodProcessCandidate& c) { return depth_below(c.process.cgroup, pod_cgroup); };
    auto better = [&](const PodProcessCandidate* a, const PodProcessCandidate& b) {
        return !a || depth(b) < depth(*a) || (depth(b) == depth(*a) && b.process.pid < a->process.pid);
    };
    std::optional<std::size_t> min_depth;
    for (const auto& c : candidates)
        if (!c.netns.empty() && !procs.is_host_netns(c.netns)) min_depth = std::min(min_depth.value_or(depth(c)), depth(c));
    if (!min_depth) {
        // Nothing of the pod outside the host's namespace: a host-network pod
        // (or namespaces we may not read).  A container's process rather
        // than CRI-O's conmon, whose cgroup names no container.
        auto in_container = [](const PodProcessCandidate& c) {
            auto ref = parse_pod_cgroup(c.process.cgroup);
            return ref && !ref->container_id.empty();
        };
        const PodProcessCandidate* best = nullptr;
        for (const auto& c : candidates)
            if (!best || (in_container(c) && !in_container(*best)) ||
                (in_container(c) == in_container(*best) && better(best, c)))
                best = &c;
        return PodNetworkProcess{best->process.pid, best->process.cgroup, best->netns,
                                 !best->netns.empty() && procs.is_host_netns(best->netns)};
    }
    std::map<std::string, int> votes;
    for (const auto& c : candidates)
        if (!c.netns.empty() && !procs.is_host_netns(c.netns) && depth(c) == *min_depth) ++votes[c.netns];
    int most = 0;
    for (const auto& [ns, n] : votes) most = std::max(most, n);
    const PodProcessCandidate* best = nullptr;
    for (const auto& c : candidates)
        if (votes.contains(c.netns) && votes[c.netns] == most && better(best, c)) best = &c;
    // The chosen namespace's process nearest the pod cgroup.
    const PodProcessCandidate* pick = nullptr;
    for (const auto& c : candidates)
        if (c.netns == best->netns && better(pick, c)) pick = &c;
    return PodNetworkProcess{pick->process.pid, pick->process.cgroup, pick->netns, false};
}

std::optional<PodNetworkProcess> pod_network_process(HostProcs::Look& look, const HostProcs& procs,
                                                     const std::string& pod_cgroup) {
    std::vector<PodProcessCandidate> candidates;
    for (auto& p : look.in_tree(pod_cgroup, 4)) {
        auto ns = procs.netns_of(p.pid);
        candidates.push_back({std::move(p), std::move(ns)});
    }
    return choose_pod_network_process(candidates, pod_cgroup, procs);
}

}  // namespace imdstrace
