#include "pods/select.hpp"

#include <spdlog/spdlog.h>

#include <fstream>

#include "common/errors.hpp"

namespace imdstrace {

PodSelection PodSelection::parse(const std::string& option) {
    PodSelection s;
    if (option.starts_with("static:")) {
        s.source = Source::static_file;
        s.static_file = option.substr(7);
        if (s.static_file.empty()) throw UsageError("--pods static: needs a file, e.g. --pods static:/etc/imdstrace/pods.json");
    } else if (option == "auto") {
        s.source = Source::automatic;
    } else if (option == "k8s-node") {
        s.source = Source::k8s_node;
    } else if (option == "k8s-api") {
        s.source = Source::k8s_api;
    } else if (option == "none") {
        s.source = Source::none;
    } else {
        throw UsageError("--pods must be auto, k8s-node, k8s-api, static:FILE or none (got \"" + option + "\")");
    }
    return s;
}

Cgroup2Mount locate_cgroup2(const std::string& host_root) {
    const std::string root = host_root == "/" ? "" : host_root;
    std::ifstream mounts("/proc/self/mounts");
    std::string dev, dir, type, rest;
    std::optional<std::string> under_root, ours;
    while (mounts >> dev >> dir >> type && std::getline(mounts, rest)) {
        if (type != "cgroup2") continue;
        if (!ours || dir == "/sys/fs/cgroup") ours = dir;
        if (!root.empty() && dir.starts_with(root) && (!under_root || dir == root + "/sys/fs/cgroup")) under_root = dir;
    }
    if (under_root) return {*under_root, true};
    if (ours) return {*ours, true};
    return {root + "/sys/fs/cgroup", false};
}

std::unique_ptr<PodResolver> make_pod_resolver(const PodSelection& selection, const PodResolverSettings& settings) {
    using Source = PodSelection::Source;
    std::unique_ptr<PodResolver> r;
    try {
        switch (selection.source) {
        case Source::none: return make_null_resolver();
        case Source::static_file: return make_static_resolver(selection.static_file);
        case Source::k8s_node: r = make_k8s_resolver(K8sMode::node, settings); break;
        case Source::k8s_api: r = make_k8s_resolver(K8sMode::api, settings); break;
        case Source::automatic: r = make_k8s_resolver(K8sMode::automatic, settings); break;
        }
    } catch (const UsageError&) {
        throw;
    } catch (const std::exception& e) {
        throw UsageError(std::string("--pods: ") + e.what());
    }
    spdlog::info("pods: {}", r->describe());
    return r;
}

}  // namespace imdstrace
