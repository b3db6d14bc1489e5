// --pods static:FILE: parsing the mapping and resolving cgroups and addresses.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

#include "pods/resolver.hpp"

using namespace imdstrace;

namespace {

const char* kMapping = R"([
  {"namespace":"kube-system","name":"aws-load-balancer-controller-6b7f9c","uid":"u1",
   "ips":["198.18.1.5","fd00:198:18::5"],
   "cgroup":"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-podu1.slice"},
  {"namespace":"kube-system","name":"aws-load-balancer-controller-6b7f9c","uid":"u1","container":"controller",
   "cgroup":"kubepods.slice/kubepods-burstable.slice/kubepods-burstable-podu1.slice/cri-containerd-abc.scope/"},
  {"namespace":"default","name":"app","ips":["198.18.1.9"]}
])";

void expect_error(const std::string& text, const std::string& needle) {
    try {
        parse_pod_mapping(text, "pods.json");
        ADD_FAILURE() << "accepted: " << text;
    } catch (const std::runtime_error& e) {
        std::string what = e.what();
        EXPECT_NE(what.find("pods.json"), std::string::npos) << what;
        EXPECT_NE(what.find(needle), std::string::npos) << what;
    }
}

TEST(PodMapping, ParsesValidFile) {
    auto pods = parse_pod_mapping(kMapping, "pods.json");
    ASSERT_EQ(pods.size(), 3u);
    EXPECT_EQ(pods[0].namespace_, "kube-system");
    EXPECT_EQ(pods[0].name, "aws-load-balancer-controller-6b7f9c");
    EXPECT_EQ(pods[0].uid, "u1");
    EXPECT_EQ(pods[0].container, "");
    ASSERT_EQ(pods[0].ips.size(), 2u);
    EXPECT_EQ(pods[0].ips[0], *IpAddr::parse("198.18.1.5"));
    EXPECT_EQ(pods[0].ips[1], *IpAddr::parse("fd00:198:18::5"));
    EXPECT_EQ(pods[0].ref(), "kube-system/aws-load-balancer-controller-6b7f9c");
    EXPECT_EQ(pods[1].container, "controller");
    EXPECT_TRUE(pods[2].cgroup.empty());
    EXPECT_TRUE(parse_pod_mapping("[]", "x").empty());
}

TEST(PodMapping, NormalisesCgroups) {
    auto pods = parse_pod_mapping(kMapping, "pods.json");
    EXPECT_EQ(pods[1].cgroup,
              "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-podu1.slice/cri-containerd-abc.scope");
    auto root = parse_pod_mapping(R"([{"namespace":"a","name":"b","cgroup":"/"}])", "x");
    EXPECT_EQ(root[0].cgroup, "/");
    auto slashes = parse_pod_mapping(R"([{"namespace":"a","name":"b","cgroup":"x///"}])", "x");
    EXPECT_EQ(slashes[0].cgroup, "/x");
}

TEST(PodMapping, Errors) {
    expect_error(R"([{"namespace":"a","ips":["198.18.1.5"]}])", "missing \"name\"");
    expect_error(R"([{"name":"a","ips":["198.18.1.5"]}])", "missing \"namespace\"");
    expect_error(R"([{"namespace":"a","name":"b","ips":["198.18.1.500"]}])", "is not an IP address");
    expect_error(R"([{"namespace":"a","name":"b","ips":[42]}])", "is not an IP address");
    expect_error(R"([{"namespace":"a","name":"b","ips":"198.18.1.5"}])", "must be an array");
    expect_error(R"({"namespace":"a","name":"b","ips":["198.18.1.5"]})", "expected a JSON array");
    expect_error(R"([{"namespace":"a","name":"b"}])", "needs \"cgroup\" or \"ips\"");
    expect_error(R"([{"namespace":"a","name":7,"ips":["198.18.1.5"]}])", "must be a string");
    expect_error(R"(["a"])", "expected an object");
    expect_error(R"([{"namespace":"a",)", "not valid JSON");
    // The position of the bad entry is named.
    expect_error(R"([{"namespace":"a","name":"b","ips":["198.18.1.5"]},{"namespace":"c"}])", "pod #2");
}

class StaticResolverTest : public ::testing::Test {
protected:
    void SetUp() override {
        char tmpl[] = "/tmp/imdstrace-pods-XXXXXX";
        int fd = mkstemp(tmpl);
        ASSERT_GE(fd, 0);
        ::close(fd);
        path = tmpl;
        std::ofstream(path) << kMapping;
        resolver = make_static_resolver(path);
    }
    void TearDown() override { std::remove(path.c_str()); }
    std::string path;
    std::unique_ptr<PodResolver> resolver;
};

TEST_F(StaticResolverTest, ByCgroupDeepestWins) {
    const std::string pod_cg = "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-podu1.slice";
    auto p = resolver->by_cgroup(pod_cg);
    ASSERT_TRUE(p);
    EXPECT_EQ(p->container, "");
    auto c = resolver->by_cgroup(pod_cg + "/cri-containerd-abc.scope");
    ASSERT_TRUE(c);
    EXPECT_EQ(c->container, "controller");
    auto sub = resolver->by_cgroup(pod_cg + "/cri-containerd-abc.scope/nested/deeper");
    ASSERT_TRUE(sub);
    EXPECT_EQ(sub->container, "controller");
    auto sibling = resolver->by_cgroup(pod_cg + "/cri-containerd-def.scope");
    ASSERT_TRUE(sibling);
    EXPECT_EQ(sibling->container, "") << "another container of the same pod: the pod";
    // A name that merely starts with the pod's cgroup is not inside it.
    EXPECT_FALSE(resolver->by_cgroup(pod_cg + "x"));
    EXPECT_FALSE(resolver->by_cgroup("/kubepods.slice"));
    EXPECT_FALSE(resolver->by_cgroup("/system.slice/kubelet.service"));
    EXPECT_FALSE(resolver->by_cgroup(""));
}

TEST_F(StaticResolverTest, ByIp) {
    auto a = resolver->by_ip(*IpAddr::parse("198.18.1.9"));
    ASSERT_TRUE(a);
    EXPECT_EQ(a->ref(), "default/app");
    auto b = resolver->by_ip(*IpAddr::parse("fd00:198:18::5"));
    ASSERT_TRUE(b);
    EXPECT_EQ(b->name, "aws-load-balancer-controller-6b7f9c");
    EXPECT_FALSE(resolver->by_ip(*IpAddr::parse("198.18.0.2")));
    EXPECT_NE(resolver->describe().find("static:"), std::string::npos);
    EXPECT_NE(resolver->describe().find("3 pods"), std::string::npos);
}

TEST(StaticResolver, MissingFile) {
    try {
        make_static_resolver("/nonexistent/imdstrace/pods.json");
        ADD_FAILURE() << "no error for a missing file";
    } catch (const std::runtime_error& e) {
        EXPECT_NE(std::string(e.what()).find("/nonexistent/imdstrace/pods.json"), std::string::npos) << e.what();
    }
}

TEST(NullResolver, ResolvesNothing) {
    auto r = make_null_resolver();
    EXPECT_FALSE(r->by_cgroup("/kubepods.slice"));
    EXPECT_FALSE(r->by_ip(*IpAddr::parse("198.18.1.5")));
    EXPECT_EQ(r->describe(), "none");
}

// cgroup ids are directory inodes; a plain directory tree stands in for the
// cgroup2 mount (the file-handle lookup fails there and the walk answers).
TEST(CgroupPaths, IdsAndPaths) {
    namespace fs = std::filesystem;
    char tmpl[] = "/tmp/imdstrace-cgroup-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    const std::string mount = tmpl;
    fs::create_directories(mount + "/kubepods.slice/pod-a/cri-containerd-1.scope");
    CgroupPaths paths(mount);
    EXPECT_EQ(paths.mount(), mount);
    auto id = paths.id_of("/kubepods.slice/pod-a/cri-containerd-1.scope");
    ASSERT_TRUE(id);
    struct stat st{};
    ASSERT_EQ(::stat((mount + "/kubepods.slice/pod-a/cri-containerd-1.scope").c_str(), &st), 0);
    EXPECT_EQ(*id, st.st_ino);
    EXPECT_EQ(paths.path_of(*id), "/kubepods.slice/pod-a/cri-containerd-1.scope");
    EXPECT_EQ(paths.path_of(*id), "/kubepods.slice/pod-a/cri-containerd-1.scope") << "cached";
    EXPECT_EQ(paths.path_of(*paths.id_of("/")), "/");
    EXPECT_EQ(paths.path_of(0), "");
    EXPECT_FALSE(paths.id_of("/no/such/cgroup"));
    fs::remove_all(mount);
}

}  // namespace
