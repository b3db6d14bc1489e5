// pipeline/attribute: a transaction, judged and tied to a pod.
#include <gtest/gtest.h>

#include <fstream>
#include <filesystem>

#include "pipeline/attribute.hpp"

using namespace imdstrace;

namespace {

// A resolver that knows one pod by cgroup and one by address, and records
// what it was asked.
class FakePods : public PodResolver {
public:
    std::vector<std::string> cgroup_asks;
    std::vector<std::string> ip_asks;
    std::optional<PodInfo> by_cgroup(const std::string& path) override {
        cgroup_asks.push_back(path);
        if (path.starts_with("/kubepods/pod-a")) return PodInfo{"kube-system", "alb-controller", "uid-a", "c", {}, path};
        return std::nullopt;
    }
    std::optional<PodInfo> by_ip(const IpAddr& addr) override {
        ip_asks.push_back(addr.str());
        if (addr.str() == "198.18.1.12") return PodInfo{"default", "web", "uid-b", "", {addr}, ""};
        return std::nullopt;
    }
    std::string describe() const override { return "fake"; }
};

Transaction token_tx(const char* client) {
    Transaction t;
    t.client_flow = {*Endpoint::parse(client, 0), *Endpoint::parse("169.254.169.254:80", 0)};
    t.start_ns = 1'000'000'000;
    t.end_ns = 1'250'000'000;
    HttpRequest req;
    req.method = "PUT";
    req.path = "/latest/api/token";
    req.token_ttl = true;
    t.request = req;
    t.seen_at_socket = true;
    t.ttl_sent = 64;
    t.ttl_at_uplink = 63;
    t.handshake_answered = true;
    return t;
}

CgroupNamer names(std::map<std::uint64_t, std::string> m) {
    return [m](std::uint64_t id) {
        auto it = m.find(id);
        return it == m.end() ? std::string() : it->second;
    };
}

TEST(Attribute, PodFoundByCgroupBeforeAddress) {
    FakePods pods;
    auto t = token_tx("198.18.1.12:40000");  // the address belongs to another pod: cgroup wins
    t.cgroup_id = 42;
    auto r = attribute(t, 1700000000000, names({{42, "/kubepods/pod-a/ctr"}}), pods);
    ASSERT_TRUE(r.pod);
    EXPECT_EQ(r.pod->ref(), "kube-system/alb-controller");
    EXPECT_EQ(r.cgroup, "/kubepods/pod-a/ctr");
    EXPECT_TRUE(pods.ip_asks.empty());
    EXPECT_EQ(r.wall_ms, 1700000000000);
    EXPECT_EQ(r.duration_ms, 250);
}

TEST(Attribute, PodFoundByAddressWhenCgroupSaysNothing) {
    FakePods pods;
    auto t = token_tx("198.18.1.12:40000");
    t.cgroup_id = 7;  // a cgroup that no pod owns
    auto r = attribute(t, 0, names({{7, "/system.slice/containerd.service"}}), pods);
    ASSERT_TRUE(r.pod);
    EXPECT_EQ(r.pod->ref(), "default/web");
    EXPECT_EQ(pods.cgroup_asks, std::vector<std::string>{"/system.slice/containerd.service"});
    EXPECT_EQ(r.subject(), "default/web");
}

TEST(Attribute, NeitherLeavesTheClientAddress) {
    FakePods pods;
    auto t = token_tx("198.18.9.9:40000");
    auto r = attribute(t, 0, names({}), pods);
    EXPECT_FALSE(r.pod);
    EXPECT_TRUE(r.cgroup.empty());
    EXPECT_TRUE(pods.cgroup_asks.empty());  // no cgroup id: the resolver is not asked by cgroup
    EXPECT_EQ(r.subject(), "client:198.18.9.9");
}

TEST(Attribute, HostProcessKeepsItsCgroupAndZeroHops) {
    FakePods pods;
    Transaction t = token_tx("198.18.0.2:40000");
    t.seen_at_socket = false;
    t.ttl_sent.reset();
    t.local_socket_at_uplink = true;  // left the uplink with a socket of the node
    t.cgroup_id = 9;                  // from the connect tracepoint
    t.process = ProcessInfo{321, "kubelet"};
    auto r = attribute(t, 0, names({{9, "/system.slice/kubelet.service"}}), pods);
    EXPECT_FALSE(r.pod);
    EXPECT_EQ(r.subject(), "cgroup:/system.slice/kubelet.service");
    ASSERT_TRUE(r.process);
    EXPECT_EQ(r.process->comm, "kubelet");
    EXPECT_EQ(r.hops, 0);
    EXPECT_EQ(r.required_hop_limit, 1);
}

TEST(Attribute, NatLinkedConnectionIsThePodsNotTheNodes) {
    FakePods pods;
    auto t = token_tx("198.18.1.12:40000");
    // Masqueraded: the uplink saw the node's address, linked by ISN.
    t.uplink_flow = FlowKey{*Endpoint::parse("198.18.0.2:61000", 0), *Endpoint::parse("169.254.169.254:80", 0)};
    t.response_ttl_at_node = 1;
    t.response_at_uplink = true;
    t.drops = {DropRecord{"IP_INHDR", "ip_forward", 1, true, 3, 0, {}}};
    auto r = attribute(t, 0, names({}), pods);
    ASSERT_TRUE(r.pod);
    EXPECT_EQ(r.pod->ref(), "default/web");
    EXPECT_EQ(pods.ip_asks, std::vector<std::string>{"198.18.1.12"});
    EXPECT_EQ(r.client.str(), "198.18.1.12:40000");
    EXPECT_EQ(r.verdict, Verdict::hop_limit_exceeded);
    EXPECT_EQ(r.hops, 1);
    EXPECT_EQ(r.required_hop_limit, 2);
    EXPECT_EQ(r.ttl_at_node, 1);
    ASSERT_EQ(r.drops.size(), 1u);
    EXPECT_EQ(r.drops[0].count, 3u);
}

}  // namespace
