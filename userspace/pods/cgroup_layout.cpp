// The kubelet's cgroup layout, both drivers:
//
//   systemd   /kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_>.slice/cri-containerd-<id>.scope
//             /kubepods.slice/kubepods-pod<uid_>.slice/crio-<id>.scope            (guaranteed)
//             /kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/...  (kind, --cgroup-root)
//   cgroupfs  /kubepods/burstable/pod<uid>/<id>
//             /kubepods/pod<uid>/<id>                                               (guaranteed)
//             /kubelet/kubepods/besteffort/pod<uid>/<id>                             (kind)
//
// and the same below any other directory (/system.slice/containerd.service/kubepods...).
// The container is the directory directly under the pod; anything deeper
// (docker-in-docker, a container's own sub-cgroups) belongs to that container.
#include <dirent.h>

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <functional>

#include "pods/k8s.hpp"

namespace imdstrace {

namespace {

bool is_hex(char c) { return std::isxdigit(static_cast<unsigned char>(c)) != 0; }

bool all_hex(std::string_view s) { return !s.empty() && std::all_of(s.begin(), s.end(), is_hex); }

std::vector<std::string_view> split(std::string_view s, char sep) {
    std::vector<std::string_view> out;
    std::size_t start = 0;
    while (start <= s.size()) {
        auto pos = s.find(sep, start);
        if (pos == std::string_view::npos) pos = s.size();
        out.push_back(s.substr(start, pos - start));
        start = pos + 1;
    }
    return out;
}

bool ends_with(std::string_view s, std::string_view suffix) {
    return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

bool is_kubepods_component(std::string_view c, bool* systemd) {
    if (c == "kubepods") {
        *systemd = false;
        return true;
    }
    if (c == "kubepods.slice" || ends_with(c, "-kubepods.slice")) {
        *systemd = true;
        return true;
    }
    return false;
}

bool is_qos(std::string_view q) { return q == "burstable" || q == "besteffort"; }

// "<prefix>-[<qos>-]pod<uid_with_underscores>.slice" -> uid (dashed), qos.
bool parse_systemd_pod_slice(std::string_view c, std::string* uid, std::string* qos) {
    if (!ends_with(c, ".slice")) return false;
    c.remove_suffix(6);
    auto pos = c.rfind("-pod");
    if (pos == std::string_view::npos) return false;
    std::string u(c.substr(pos + 4));
    std::replace(u.begin(), u.end(), '_', '-');
    if (!valid_pod_uid(u)) return false;
    auto head = c.substr(0, pos);  // "kubepods-burstable", "kubepods", "kubelet-kubepods-besteffort"
    auto dash = head.rfind('-');
    auto last = dash == std::string_view::npos ? head : head.substr(dash + 1);
    *qos = is_qos(last) ? std::string(last) : "guaranteed";
    *uid = std::move(u);
    return true;
}

// A container's cgroup name -> runtime, id.
bool parse_container_component(std::string_view c, std::string* runtime, std::string* id) {
    bool scope = ends_with(c, ".scope");
    if (scope) c.remove_suffix(6);
    struct Prefix {
        std::string_view text, runtime;
    };
    static constexpr Prefix prefixes[] = {
        {"cri-containerd-", "containerd"}, {"crio-", "crio"}, {"docker-", "docker"},
        {"containerd-", "containerd"},     {"cri-o-", "crio"}, {"libpod-", "podman"},
    };
    std::string_view rt;
    for (const auto& p : prefixes) {
        if (c.starts_with(p.text)) {
            c.remove_prefix(p.text.size());
            rt = p.runtime;
            break;
        }
    }
    if (scope && rt.empty()) return false;  // some other unit
    if (!valid_container_id(c)) return false;  // "crio-conmon-<id>", sub-cgroups, ...
    *runtime = std::string(rt);
    *id = std::string(c);
    return true;
}

std::string join(const std::vector<std::string_view>& parts, std::size_t n) {
    std::string out;
    for (std::size_t i = 0; i < n; ++i) {
        out += '/';
        out += parts[i];
    }
    return out.empty() ? "/" : out;
}

// The pod at kubepods component k, or nullopt.
std::optional<CgroupPodRef> pod_at(const std::vector<std::string_view>& parts, std::size_t k, bool systemd) {
    CgroupPodRef ref;
    std::size_t i = k + 1;
    if (i >= parts.size()) return std::nullopt;
    if (systemd) {
        auto prefix = parts[k].substr(0, parts[k].size() - 6);  // without ".slice"
        std::string qos_slice_b = std::string(prefix) + "-burstable.slice";
        std::string qos_slice_e = std::string(prefix) + "-besteffort.slice";
        std::string slice_qos;
        if (parts[i] == qos_slice_b) slice_qos = "burstable";
        if (parts[i] == qos_slice_e) slice_qos = "besteffort";
        if (!slice_qos.empty() && ++i >= parts.size()) return std::nullopt;
        if (!parse_systemd_pod_slice(parts[i], &ref.uid, &ref.qos)) return std::nullopt;
        if (!slice_qos.empty()) ref.qos = slice_qos;
    } else {
        if (is_qos(parts[i])) {
            ref.qos = std::string(parts[i]);
            if (++i >= parts.size()) return std::nullopt;
        } else {
            ref.qos = "guaranteed";
        }
        auto c = parts[i];
        if (!c.starts_with("pod") || !valid_pod_uid(c.substr(3))) return std::nullopt;
        ref.uid = std::string(c.substr(3));
    }
    ref.pod_cgroup = join(parts, i + 1);
    if (i + 1 < parts.size() && parse_container_component(parts[i + 1], &ref.runtime, &ref.container_id))
        ref.container_cgroup = join(parts, i + 2);
    return ref;
}

bool dns_label(std::string_view s, std::size_t max_len, bool dots) {
    if (s.empty() || s.size() > max_len) return false;
    auto ok = [&](char c) {
        return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || (dots && c == '.');
    };
    if (!std::all_of(s.begin(), s.end(), ok)) return false;
    auto alnum = [](char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'); };
    return alnum(s.front()) && alnum(s.back());
}

}  // namespace

bool valid_pod_uid(std::string_view u) {
    if (u.size() == 32) return all_hex(u);
    if (u.size() != 36) return false;
    for (std::size_t i = 0; i < u.size(); ++i) {
        bool dash = i == 8 || i == 13 || i == 18 || i == 23;
        if (dash ? u[i] != '-' : !is_hex(u[i])) return false;
    }
    return true;
}

bool valid_container_id(std::string_view id) { return id.size() >= 12 && id.size() <= 128 && all_hex(id); }

std::optional<CgroupPodRef> parse_pod_cgroup(std::string_view path) {
    if (path.empty() || path.size() > 4096) return std::nullopt;
    std::vector<std::string_view> parts;
    for (auto p : split(path, '/'))
        if (!p.empty()) parts.push_back(p);
    // The outermost kubepods tree that holds a well-formed pod wins: a kubelet
    // nested inside a pod (kind in a pod) still belongs to the outer pod here.
    for (std::size_t k = 0; k < parts.size(); ++k) {
        bool systemd = false;
        if (!is_kubepods_component(parts[k], &systemd)) continue;
        if (auto ref = pod_at(parts, k, systemd)) return ref;
    }
    return std::nullopt;
}

std::optional<PodLogDirName> parse_pod_log_dir(std::string_view name) {
    auto parts = split(name, '_');
    if (parts.size() != 3) return std::nullopt;
    if (!dns_label(parts[0], 63, false) || !dns_label(parts[1], 253, true) || !valid_pod_uid(parts[2]))
        return std::nullopt;
    return PodLogDirName{std::string(parts[0]), std::string(parts[1]), std::string(parts[2])};
}

std::optional<ContainerLogName> parse_container_log_name(std::string_view name) {
    if (!ends_with(name, ".log")) return std::nullopt;
    name.remove_suffix(4);
    auto parts = split(name, '_');
    if (parts.size() != 3) return std::nullopt;
    auto dash = parts[2].rfind('-');
    if (dash == std::string_view::npos) return std::nullopt;
    auto container = parts[2].substr(0, dash), id = parts[2].substr(dash + 1);
    if (!dns_label(parts[0], 253, true) || !dns_label(parts[1], 63, false) || !dns_label(container, 63, false) ||
        !valid_container_id(id))
        return std::nullopt;
    return ContainerLogName{std::string(parts[0]), std::string(parts[1]), std::string(container), std::string(id)};
}

bool has_kubepods_tree(const std::string& mount) {
    // kubepods sits at most a few levels down (/kubepods.slice, /kubelet/kubepods,
    // /system.slice/containerd.service/kubepods...).
    std::function<bool(const std::string&, int)> walk = [&](const std::string& dir, int depth) {
        DIR* d = ::opendir(dir.c_str());
        if (!d) return false;
        std::vector<std::string> subdirs;
        bool found = false;
        while (auto* e = ::readdir(d)) {
            std::string_view n = e->d_name;
            if (n == "." || n == "..") continue;
            if (e->d_type == DT_UNKNOWN) {
                std::error_code ec;
                if (!std::filesystem::is_directory(dir + "/" + std::string(n), ec)) continue;
            } else if (e->d_type != DT_DIR) {
                continue;
            }
            bool systemd = false;
            if (is_kubepods_component(n, &systemd)) {
                found = true;
                break;
            }
            if (depth > 1) subdirs.emplace_back(n);
        }
        ::closedir(d);
        if (found) return true;
        for (const auto& s : subdirs)
            if (walk(dir + "/" + s, depth - 1)) return true;
        return false;
    };
    return walk(mount, 3);
}

std::vector<IpAddr> parse_fib_trie_locals(const std::string& text) {
    std::vector<IpAddr> out;
    std::string current;
    std::size_t pos = 0;
    while (pos < text.size()) {
        auto eol = text.find('\n', pos);
        if (eol == std::string::npos) eol = text.size();
        std::string_view line(text.data() + pos, eol - pos);
        pos = eol + 1;
        if (auto leaf = line.find("|-- "); leaf != std::string_view::npos) {
            current = std::string(line.substr(leaf + 4));
            while (!current.empty() && std::isspace(static_cast<unsigned char>(current.back()))) current.pop_back();
            continue;
        }
        if (line.find("/32 host LOCAL") == std::string_view::npos || current.empty()) continue;
        auto a = IpAddr::parse(current);
        if (!a || !a->is_v4() || a->bytes[0] == 127) continue;
        if (std::find(out.begin(), out.end(), *a) == out.end()) out.push_back(*a);
    }
    return out;
}

std::vector<IpAddr> parse_if_inet6(const std::string& text) {
    std::vector<IpAddr> out;
    std::size_t pos = 0;
    while (pos < text.size()) {
        auto eol = text.find('\n', pos);
        if (eol == std::string::npos) eol = text.size();
        std::string_view line(text.data() + pos, eol - pos);
        pos = eol + 1;
        // "<32 hex> <ifindex> <prefixlen> <scope> <flags> <name>"
        std::vector<std::string_view> f;
        for (auto w : split(line, ' '))
            if (!w.empty()) f.push_back(w);
        if (f.size() < 5 || f[0].size() != 32 || !all_hex(f[0])) continue;
        if (f[3] != "00") continue;  // global scope only: not host (10) or link (20)
        std::uint8_t raw[16];
        for (int i = 0; i < 16; ++i) raw[i] = static_cast<std::uint8_t>(std::stoi(std::string(f[0].substr(i * 2, 2)), nullptr, 16));
        auto a = IpAddr::from_raw(Family::ipv6, raw);
        if (std::find(out.begin(), out.end(), a) == out.end()) out.push_back(a);
    }
    return out;
}

}  // namespace imdstrace
