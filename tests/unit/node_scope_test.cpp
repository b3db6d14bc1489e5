// pipeline/node_scope: which kernel events are this node's.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "pipeline/node_scope.hpp"

using namespace imdstrace;
namespace fs = std::filesystem;

namespace {

// A cgroup tree and a procfs laid out in a temporary directory: the
// namespace "inode" of a fake /proc/PID/ns/net is that file's inode.
struct FakeNode {
    fs::path root = fs::temp_directory_path() / ("imdstrace-scope-" + std::to_string(::getpid()));
    FakeNode() {
        fs::remove_all(root);
        fs::create_directories(root / "cg/pods/pod1");
        fs::create_directories(root / "proc");
    }
    ~FakeNode() { fs::remove_all(root); }
    std::uint32_t process(const std::string& cgroup, int pid) {
        std::ofstream(root / "cg" / cgroup / "cgroup.procs", std::ios::app) << pid << "\n";
        fs::create_directories(root / "proc" / std::to_string(pid) / "ns");
        auto f = root / "proc" / std::to_string(pid) / "ns/net";
        std::ofstream(f) << "";
        struct stat st{};
        ::stat(f.c_str(), &st);
        return static_cast<std::uint32_t>(st.st_ino);
    }
};

Observation drop_in(std::uint32_t netns) {
    Observation o;
    o.hook = Hook::drop;
    o.netns = netns;
    return o;
}

TEST(NodeScope, OwnNamespaceAndTheTracedTreesAreThisNode) {
    FakeNode n;
    auto pod_ns = n.process("pods/pod1", 4242);
    NodeScope scope((n.root / "proc").string(), (n.root / "cg").string(), (n.root / "cg").string());
    EXPECT_TRUE(scope.admits(drop_in(scope.own_netns())));
    EXPECT_TRUE(scope.admits(drop_in(pod_ns)));
    EXPECT_EQ(scope.foreign_events(), 0u);
}

TEST(NodeScope, OtherNamespacesAreIgnoredAndCounted) {
    FakeNode n;
    n.process("pods/pod1", 4242);
    NodeScope scope((n.root / "proc").string(), (n.root / "cg").string(), (n.root / "cg").string());
    EXPECT_FALSE(scope.admits(drop_in(123456789)));
    auto icmp = drop_in(123456789);
    icmp.hook = Hook::icmp_send;
    EXPECT_FALSE(scope.admits(icmp));
    EXPECT_EQ(scope.foreign_events(), 2u);
    // Packet hooks are this node by construction; so is a drop naming no namespace.
    Observation tc;
    tc.hook = Hook::uplink_ingress;
    tc.netns = 123456789;
    EXPECT_TRUE(scope.admits(tc));
    EXPECT_TRUE(scope.admits(drop_in(0)));
    EXPECT_EQ(scope.foreign_events(), 2u);
}

TEST(NodeScope, ConnectFromTheTracedTreeTeachesItsNamespace) {
    FakeNode n;
    NodeScope scope((n.root / "proc").string(), (n.root / "cg").string(), (n.root / "cg").string());
    Observation outside;
    outside.hook = Hook::connect;
    outside.netns = 777;
    outside.in_traced_cgroup = false;
    EXPECT_TRUE(scope.admits(outside));
    EXPECT_FALSE(scope.admits(drop_in(777)));
    Observation inside = outside;
    inside.netns = 778;
    inside.in_traced_cgroup = true;  // an inner container of a docker-in-docker pod, say
    EXPECT_TRUE(scope.admits(inside));
    EXPECT_TRUE(scope.admits(drop_in(778)));
}

TEST(NodeScope, WithoutTracedCgroupOnlyItsOwnNamespace) {
    FakeNode n;
    auto pod_ns = n.process("pods/pod1", 4242);
    NodeScope scope((n.root / "proc").string(), (n.root / "cg").string(), "");
    EXPECT_TRUE(scope.admits(drop_in(scope.own_netns())));
    EXPECT_FALSE(scope.admits(drop_in(pod_ns)));
}

}  // namespace
