// The --pods policy: which resolver a run uses, and where the cgroup2
// hierarchy the cgroup paths are relative to is mounted.  One rule each,
// for every command (watch, diagnose, probe, check).
#pragma once

#include <memory>
#include <optional>
#include <string>

#include "pods/resolver.hpp"

namespace imdstrace {

// --pods auto | k8s-node | k8s-api | static:FILE | none, validated once.
struct PodSelection {
    enum class Source { automatic, k8s_node, k8s_api, static_file, none };
    Source source = Source::automatic;
    std::string static_file;  // Source::static_file only

    // Throws UsageError naming the accepted values.
    static PodSelection parse(const std::string& option);
};

// Where cgroup2 is mounted as seen under `host_root` (from
// /proc/self/mounts, the canonical /sys/fs/cgroup preferred when several
// are).  A --host-root without a cgroup2 mount of its own (a copied tree)
// falls back to the one this process sees.  `mounted` is false when no
// cgroup2 mount exists at all; `path` is then <host_root>/sys/fs/cgroup,
// the one place every caller falls back to.
struct Cgroup2Mount {
    std::string path;
    bool mounted = false;
};
Cgroup2Mount locate_cgroup2(const std::string& host_root = "/");

// The resolver for a selection.  Cgroup paths it is given are relative to
// settings.cgroup_mount.  Throws UsageError for a mapping file or
// kubeconfig that cannot be used.
std::unique_ptr<PodResolver> make_pod_resolver(const PodSelection& selection, const PodResolverSettings& settings);

}  // namespace imdstrace
