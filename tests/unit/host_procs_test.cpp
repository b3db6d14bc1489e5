// pods/host_procs: host pids from wherever imdstrace runs (its own pid and
// cgroup namespace, as the DaemonSet runs it), and which process of a pod
// stands for its network namespace on each layout real nodes have.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>

#include "pods/host_procs.hpp"

using namespace imdstrace;
namespace fs = std::filesystem;

namespace {

const std::string kPod = "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1a2b3c4d_5e6f_4a7b_8c9d_0e1f2a3b4c5d.slice";
const std::string kCid(64, 'c');
const std::string kSid(64, '5');

std::string self_netns() {
    char buf[256];
    auto n = ::readlink("/proc/self/ns/net", buf, sizeof buf);
    return n > 0 ? std::string(buf, static_cast<std::size_t>(n)) : "";
}

// A host as a container sees it: <root>/proc (the host's procfs) and
// <root>/cg (the cgroup2 mount).
struct FakeHost {
    fs::path root = fs::temp_directory_path() / ("imdstrace-hostprocs-" + std::to_string(::getpid()));
    FakeHost() {
        fs::remove_all(root);
        fs::create_directories(root / "proc");
        fs::create_directories(root / "cg");
    }
    ~FakeHost() { fs::remove_all(root); }
    std::string proc() const { return (root / "proc").string(); }
    std::string cg() const { return (root / "cg").string(); }
    // The tracer in a pid namespace of its own: NSpid has two entries, and
    // every cgroup.procs reads 0 for host processes.
    void own_pid_namespace() {
        fs::create_directories(root / "proc/self");
        std::ofstream(root / "proc/self/status") << "Name:\timdstrace\nNSpid:\t90210\t1\n";
    }
    // A process: its /proc/<pid>/cgroup as the tracer reads it (`shown`), its
    // network namespace, and an entry in cgroup.procs of its real cgroup
    // (`cgroup`, relative to the mount) with the pid the tracer would read.
    void process(long pid, const std::string& cgroup, const std::string& netns, const std::string& shown = "",
                 bool pid_visible = true) {
        auto base = root / "proc" / std::to_string(pid);
        fs::create_directories(base / "ns");
        fs::create_symlink(netns, base / "ns" / "net");
        std::ofstream(base / "cgroup") << "1:name=systemd:/whatever\n0::" << (shown.empty() ? cgroup : shown) << "\n";
        fs::create_directories(root / "cg" / cgroup.substr(1));
        std::ofstream(root / "cg" / cgroup.substr(1) / "cgroup.procs", std::ios::app) << (pid_visible ? pid : 0) << "\n";
    }
};

}  // namespace

TEST(HostProcs, PathsAsACgroupNamespaceShowsThem) {
    // Outside a cgroup namespace the path is the path.
    EXPECT_EQ(cgroup_from_namespace_view("/kubepods.slice/x.scope", "/"), "/kubepods.slice/x.scope");
    EXPECT_EQ(cgroup_from_namespace_view("/", "/"), "/");
    // The DaemonSet's container is its cgroup namespace root: other pods are shown from it.
    const std::string ds = "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-podaa.slice/cri-containerd-dd.scope";
    EXPECT_EQ(cgroup_from_namespace_view("/", ds), ds);
    EXPECT_EQ(cgroup_from_namespace_view("/../../../kubepods-burstable.slice/p.slice/c.scope", ds),
              "/kubepods.slice/kubepods-burstable.slice/p.slice/c.scope");
    EXPECT_EQ(cgroup_from_namespace_view("/../../../../init.scope", ds), "/init.scope");
    EXPECT_EQ(cgroup_from_namespace_view("/../../../..", ds), "/");
    EXPECT_EQ(cgroup_from_namespace_view("/sub", ds), ds + "/sub");
    // Above the mount: not a path of it.
    EXPECT_EQ(cgroup_from_namespace_view("/../../x", "/a"), "");
}

TEST(HostProcs, SharedPidNamespaceReadsCgroupProcs) {
    FakeHost h;
    h.process(4242, kPod + "/cri-containerd-" + kCid + ".scope", "net:[4026532999]");
    HostProcs procs(h.proc(), h.cg(), "/");
    EXPECT_TRUE(procs.pids_visible());
    auto look = procs.look();
    auto in = look.in_tree(kPod);
    ASSERT_EQ(in.size(), 1u);
    EXPECT_EQ(in[0].pid, 4242);
    EXPECT_EQ(in[0].cgroup, kPod + "/cri-containerd-" + kCid + ".scope");
    EXPECT_EQ(procs.cgroup_of(4242), kPod + "/cri-containerd-" + kCid + ".scope");
}

// The DaemonSet: hostPID false, the host's /proc at /host/proc.  cgroup.procs
// reads 0 for every pod process; /host/proc/*/cgroup still names them.
TEST(HostProcs, OwnPidNamespaceFindsHostPidsThroughTheHostsProc) {
    FakeHost h;
    h.own_pid_namespace();
    const std::string ctr = kPod + "/cri-containerd-" + kCid + ".scope";
    h.process(4242, ctr, "net:[4026532999]", "", false);
    h.process(4243, ctr, "net:[4026532999]", "", false);
    h.process(77, "/system.slice/containerd.service", self_netns(), "", false);
    HostProcs procs(h.proc(), h.cg(), "/");
    EXPECT_FALSE(procs.pids_visible());
    auto look = procs.look();
    auto in = look.in_tree(kPod);
    ASSERT_EQ(in.size(), 2u);
    EXPECT_EQ(in[0].pid, 4242);
    EXPECT_EQ(in[1].pid, 4243);
    EXPECT_EQ(look.in_tree("/").size(), 3u);
    auto p = pod_network_process(look, procs, kPod);
    ASSERT_TRUE(p);
    EXPECT_EQ(p->pid, 4242);
    EXPECT_EQ(p->netns, "net:[4026532999]");
    EXPECT_FALSE(p->host_network);
}

// ... and with a cgroup namespace of its own (containerd's default on cgroup v2):
// /host/proc/<pid>/cgroup shows paths relative to the DaemonSet's container.
TEST(HostProcs, OwnCgroupNamespace) {
    FakeHost h;
    h.own_pid_namespace();
    const std::string ds = "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-podaa.slice/cri-containerd-" +
                           std::string(64, 'd') + ".scope";
    const std::string ctr = kPod + "/cri-containerd-" + kCid + ".scope";
    h.process(4242, ctr, "net:[4026532999]",
              "/../../../kubepods-burstable.slice/kubepods-burstable-pod1a2b3c4d_5e6f_4a7b_8c9d_0e1f2a3b4c5d.slice/"
              "cri-containerd-" + kCid + ".scope",
              false);
    h.process(1, "/init.scope", self_netns(), "/../../../../init.scope", false);
    HostProcs procs(h.proc(), h.cg(), ds);
    EXPECT_EQ(procs.cgroup_of(4242), ctr);
    EXPECT_EQ(procs.cgroup_of(1), "/init.scope");
    auto look = procs.look();
    auto in = look.in_tree(kPod);
    ASSERT_EQ(in.size(), 1u);
    EXPECT_EQ(in[0].pid, 4242);
}

// Which process stands for the pod's network, layout by layout.
struct Proc {
    long pid;
    std::string below_pod;  // cgroup below the pod's
    std::string netns;      // "host" = the node's
};
struct ChoiceCase {
    std::string what;
    std::vector<Proc> procs;
    long want_pid;
    bool want_host_network;
};

TEST(HostProcs, ThePodsOwnNetworkNamespace) {
    const std::string pod_ns = "net:[4026532000]", inner1 = "net:[4026532101]", inner2 = "net:[4026532102]";
    const std::vector<ChoiceCase> cases = {
        {"containerd: sandbox and container",
         {{10, "/cri-containerd-" + kSid + ".scope", pod_ns}, {11, "/cri-containerd-" + kCid + ".scope", pod_ns}},
         10, false},
        // CRI-O, conmon_cgroup = "pod" (OpenShift): conmon scopes (the host's namespace) list first.
        {"CRI-O conmon in the pod (systemd)",
         {{5, "/crio-conmon-" + kCid + ".scope", "host"}, {6, "/crio-conmon-" + kSid + ".scope", "host"},
          {20, "/crio-" + kSid + ".scope", pod_ns}, {21, "/crio-" + kCid + ".scope", pod_ns}},
         20, false},
        {"CRI-O conmon in the pod (cgroupfs)",
         {{5, "/crio-conmon-" + kCid, "host"}, {30, "/crio-" + kCid, pod_ns}}, 30, false},
        {"CRI-O without an infra container (drop_infra_ctr): only conmon and the container",
         {{5, "/crio-conmon-" + kCid + ".scope", "host"}, {40, "/crio-" + kCid + ".scope", pod_ns}}, 40, false},
        // moby's dind: the container's processes in <ctr>/init, inner containers in <ctr>/docker/<id>.
        {"docker-in-docker (moby), sandbox present",
         {{50, "/cri-containerd-" + kCid + ".scope/docker/" + std::string(64, 'e'), inner1},
          {51, "/cri-containerd-" + kCid + ".scope/docker/" + std::string(64, 'f'), inner2},
          {52, "/cri-containerd-" + kCid + ".scope/init", pod_ns},
          {53, "/cri-containerd-" + kSid + ".scope", pod_ns}},
         53, false},
        {"docker-in-docker (moby) under CRI-O without an infra container, a busy inner container",
         {{3, "/crio-conmon-" + kCid + ".scope", "host"},
          {60, "/crio-" + kCid + ".scope/docker/" + std::string(64, 'e'), inner1},
          {61, "/crio-" + kCid + ".scope/docker/" + std::string(64, 'e'), inner1},
          {62, "/crio-" + kCid + ".scope/docker/" + std::string(64, 'e'), inner1},
          {63, "/crio-" + kCid + ".scope/init", pod_ns}},
         63, false},
        // kind (a Kubernetes node) in a pod: systemd in the container, nested pods below it.
        {"kind node in a pod",
         {{70, "/cri-containerd-" + kCid + ".scope/init.scope", pod_ns},
          {71, "/cri-containerd-" + kCid + ".scope/system.slice/containerd.service", pod_ns},
          {72, "/cri-containerd-" + kCid + ".scope/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-podx.slice/cri-containerd-1.scope", inner1},
          {73, "/cri-containerd-" + kCid + ".scope/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-pody.slice/cri-containerd-2.scope", inner2},
          {74, "/cri-containerd-" + kSid + ".scope", pod_ns}},
         74, false},
        {"host-network pod (every process in the node's namespace)",
         {{80, "/cri-containerd-" + kSid + ".scope", "host"}, {81, "/cri-containerd-" + kCid + ".scope", "host"}},
         80, true},
        {"host-network pod under CRI-O: conmon too", {{5, "/crio-conmon-" + kCid + ".scope", "host"}, {90, "/crio-" + kCid + ".scope", "host"}}, 90, true},
        {"a process in the pod cgroup itself", {{95, "", pod_ns}}, 95, false},
    };
    FakeHost h;
    HostProcs procs(h.proc(), h.cg(), "/");
    const auto host = self_netns();
    for (const auto& c : cases) {
        SCOPED_TRACE(c.what);
        std::vector<PodProcessCandidate> in;
        for (const auto& p : c.procs) in.push_back({{p.pid, kPod + p.below_pod}, p.netns == "host" ? host : p.netns});
        // Whatever order the cgroup tree lists them in.
        for (int rotation = 0; rotation < static_cast<int>(in.size()); ++rotation) {
            std::rotate(in.begin(), in.begin() + 1, in.end());
            auto got = choose_pod_network_process(in, kPod, procs);
            ASSERT_TRUE(got);
            EXPECT_EQ(got->pid, c.want_pid);
            EXPECT_EQ(got->host_network, c.want_host_network);
        }
    }
    EXPECT_FALSE(choose_pod_network_process({}, kPod, procs));
}
