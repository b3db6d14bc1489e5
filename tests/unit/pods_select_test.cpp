// pods/select: the --pods policy and where cgroup2 is.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "common/errors.hpp"
#include "pods/select.hpp"

using namespace imdstrace;
namespace fs = std::filesystem;

namespace {

TEST(PodSelection, AcceptsEveryMode) {
    using S = PodSelection::Source;
    EXPECT_EQ(PodSelection::parse("auto").source, S::automatic);
    EXPECT_EQ(PodSelection::parse("k8s-node").source, S::k8s_node);
    EXPECT_EQ(PodSelection::parse("k8s-api").source, S::k8s_api);
    EXPECT_EQ(PodSelection::parse("none").source, S::none);
    auto s = PodSelection::parse("static:/etc/pods.json");
    EXPECT_EQ(s.source, S::static_file);
    EXPECT_EQ(s.static_file, "/etc/pods.json");
}

TEST(PodSelection, RejectsAnythingElseAsUsage) {
    for (const char* bad : {"", "k8s", "K8S-NODE", "static:", "static", "api", "auto "}) {
        try {
            PodSelection::parse(bad);
            ADD_FAILURE() << "accepted \"" << bad << "\"";
        } catch (const UsageError& e) {
            EXPECT_NE(std::string(e.what()).find("--pods"), std::string::npos) << e.what();
        }
    }
}

TEST(PodSelection, ResolverForEachSource) {
    PodResolverSettings settings;
    auto dir = fs::temp_directory_path() / ("imdstrace-select-" + std::to_string(::getpid()));
    fs::create_directories(dir);
    settings.host_root = dir.string();
    settings.cgroup_mount = dir.string();  // no kubepods tree: auto -> none
    EXPECT_EQ(make_pod_resolver(PodSelection::parse("none"), settings)->describe(), "none");
    EXPECT_EQ(make_pod_resolver(PodSelection::parse("auto"), settings)->describe(), "none");
    std::ofstream(dir / "pods.json") << R"([{"namespace":"a","name":"b","ips":["198.18.1.5"]}])";
    auto r = make_pod_resolver(PodSelection::parse("static:" + (dir / "pods.json").string()), settings);
    auto pod = r->by_ip(*IpAddr::parse("198.18.1.5"));
    ASSERT_TRUE(pod);
    EXPECT_EQ(pod->ref(), "a/b");
    // A mapping file that cannot be used is the user's to fix: exit 2.
    EXPECT_THROW(make_pod_resolver(PodSelection::parse("static:" + (dir / "missing.json").string()), settings),
                 UsageError);
    fs::remove_all(dir);
}

TEST(Cgroup2Mount, OneFallbackForEveryCaller) {
    // This process sees some cgroup2 mount (or none); a host root without
    // one of its own falls back to exactly that, and with none at all to
    // <host-root>/sys/fs/cgroup.
    auto ours = locate_cgroup2("/");
    auto elsewhere = locate_cgroup2("/nonexistent-host-root");
    EXPECT_EQ(elsewhere.mounted, ours.mounted);
    if (ours.mounted) {
        EXPECT_EQ(elsewhere.path, ours.path);
    } else {
        EXPECT_EQ(elsewhere.path, "/nonexistent-host-root/sys/fs/cgroup");
        EXPECT_EQ(ours.path, "/sys/fs/cgroup");
    }
}

}  // namespace
