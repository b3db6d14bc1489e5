// --pods k8s-node / k8s-api / auto: the kubepods cgroup layout, /var/log/pods,
// pod addresses from network namespaces, the API client against the
// stand-in (ok, 401, 403, hang -> fallback with one warning), kubeconfig and
// in-cluster configuration, and resolver memory under pod churn.
#include <gtest/gtest.h>
#include <spdlog/sinks/ostream_sink.h>
#include <spdlog/spdlog.h>
#include <stdlib.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <thread>

#include "../testbed/k8s_api_standin.hpp"
#include "pods/k8s.hpp"
#include "pods/resolver.hpp"
#include "sinks/k8s_events.hpp"

using namespace imdstrace;
namespace fs = std::filesystem;

namespace {

const std::string kUid = "1a2b3c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d";
const std::string kUidUs = "1a2b3c4d_5e6f_4a7b_8c9d_0e1f2a3b4c5d";
const std::string kCid = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

// On tmpfs when there is one: the churn test creates and deletes ~100,000 files.
struct TempDir {
    fs::path path;
    TempDir() {
        std::error_code ec;
        std::string base = fs::is_directory("/dev/shm", ec) && ::access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
        std::string tmpl = base + "/imdstrace-k8s-XXXXXX";
        if (!::mkdtemp(tmpl.data())) {
            tmpl = "/tmp/imdstrace-k8s-XXXXXX";
            if (!::mkdtemp(tmpl.data())) throw std::runtime_error("mkdtemp failed");
        }
        path = tmpl;
    }
    ~TempDir() {
        std::error_code ec;
        fs::remove_all(path, ec);
    }
    std::string str() const { return path.string(); }
};

void write(const fs::path& p, const std::string& text) {
    fs::create_directories(p.parent_path());
    std::ofstream(p) << text;
}

std::string fib_trie_for(const std::string& ip) {
    return "Main:\n  +-- 0.0.0.0/0 3 0 5\n     |-- 0.0.0.0\n        /0 universe UNICAST\n"
           "Local:\n  +-- 0.0.0.0/0 3 0 5\n     +-- 127.0.0.0/8 2 0 2\n        |-- 127.0.0.1\n"
           "           /32 host LOCAL\n     |-- " +
           ip + "\n        /32 host LOCAL\n";
}

// A fake pod process: <proc>/<pid>/ns/net and its addresses.
void fake_process(const fs::path& proc, long pid, const std::string& netns, const std::string& ipv4,
                  const std::string& if_inet6 = "") {
    auto base = proc / std::to_string(pid);
    fs::create_directories(base / "ns");
    fs::create_symlink(netns, base / "ns" / "net");
    write(base / "net" / "fib_trie", fib_trie_for(ipv4));
    write(base / "net" / "if_inet6", if_inet6);
}

std::string self_netns() {
    char buf[256];
    auto n = ::readlink("/proc/self/ns/net", buf, sizeof buf);
    return n > 0 ? std::string(buf, static_cast<std::size_t>(n)) : "";
}

// Captures spdlog output for a scope.
struct LogCapture {
    std::ostringstream out;
    std::shared_ptr<spdlog::logger> saved = spdlog::default_logger();
    LogCapture() {
        auto sink = std::make_shared<spdlog::sinks::ostream_sink_mt>(out);
        auto l = std::make_shared<spdlog::logger>("capture", sink);
        l->set_pattern("%l|%v");
        l->set_level(spdlog::level::info);
        spdlog::set_default_logger(l);
    }
    ~LogCapture() { spdlog::set_default_logger(saved); }
    int count(const std::string& needle) const {
        auto s = out.str();
        int n = 0;
        for (auto pos = s.find(needle); pos != std::string::npos; pos = s.find(needle, pos + 1)) ++n;
        return n;
    }
};

long vm_rss_kb() {
    std::ifstream in("/proc/self/status");
    for (std::string line; std::getline(in, line);)
        if (line.starts_with("VmRSS:")) return std::stol(line.substr(6));
    return -1;
}

}  // namespace

// ---------------------------------------------------------------------------
// cgroup paths

struct LayoutCase {
    std::string path, uid, qos, container, runtime, pod_cgroup;
};

TEST(CgroupLayout, EveryDriverRuntimeAndQosClass) {
    const std::string sd_b = "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + kUidUs + ".slice";
    const std::string sd_be = "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + kUidUs + ".slice";
    const std::string sd_g = "/kubepods.slice/kubepods-pod" + kUidUs + ".slice";
    const std::vector<LayoutCase> cases = {
        // systemd driver, three runtimes, three QoS classes
        {sd_b + "/cri-containerd-" + kCid + ".scope", kUid, "burstable", kCid, "containerd", sd_b},
        {sd_be + "/crio-" + kCid + ".scope", kUid, "besteffort", kCid, "crio", sd_be},
        {sd_g + "/docker-" + kCid + ".scope", kUid, "guaranteed", kCid, "docker", sd_g},
        // cgroupfs driver
        {"/kubepods/burstable/pod" + kUid + "/" + kCid, kUid, "burstable", kCid, "", "/kubepods/burstable/pod" + kUid},
        {"/kubepods/besteffort/pod" + kUid + "/" + kCid, kUid, "besteffort", kCid, "", "/kubepods/besteffort/pod" + kUid},
        {"/kubepods/pod" + kUid + "/" + kCid, kUid, "guaranteed", kCid, "", "/kubepods/pod" + kUid},
        {"/kubepods/pod" + kUid + "/crio-" + kCid, kUid, "guaranteed", kCid, "crio", "/kubepods/pod" + kUid},
        // below another directory: kind (cgroupfs and systemd), containerd's own service, a test prefix
        {"/kubelet/kubepods/burstable/pod" + kUid + "/" + kCid, kUid, "burstable", kCid, "",
         "/kubelet/kubepods/burstable/pod" + kUid},
        {"/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod" +
             kUidUs + ".slice/cri-containerd-" + kCid + ".scope",
         kUid, "besteffort", kCid, "containerd",
         "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod" +
             kUidUs + ".slice"},
        {"/system.slice/containerd.service/kubepods-burstable-pod" + kUidUs + ".slice:cri-containerd:" + kCid, "", "",
         "", "", ""},  // containerd's "slice:prefix:id" cgroupsPath is not a directory layout
        {"/system.slice/containerd.service/kubepods/pod" + kUid + "/" + kCid, kUid, "guaranteed", kCid, "",
         "/system.slice/containerd.service/kubepods/pod" + kUid},
        {"/imdstrace-e2e/kubepods.slice" + sd_b.substr(std::string("/kubepods.slice").size()) + "/cri-containerd-" +
             kCid + ".scope",
         kUid, "burstable", kCid, "containerd", "/imdstrace-e2e" + sd_b},
        // process in the pod cgroup itself; sub-cgroups below a container (docker in docker)
        {sd_b, kUid, "burstable", "", "", sd_b},
        {"/kubepods/burstable/pod" + kUid, kUid, "burstable", "", "", "/kubepods/burstable/pod" + kUid},
        {sd_b + "/cri-containerd-" + kCid + ".scope/docker/" + std::string(64, 'f'), kUid, "burstable", kCid,
         "containerd", sd_b},
        {"/kubepods/pod" + kUid + "/" + kCid + "/system.slice/docker-" + std::string(64, 'e') + ".scope", kUid,
         "guaranteed", kCid, "", "/kubepods/pod" + kUid},
        // a sub-cgroup of the pod that is no container; CRI-O's conmon
        {sd_b + "/init.scope", kUid, "burstable", "", "", sd_b},
        {sd_b + "/crio-conmon-" + kCid + ".scope", kUid, "burstable", "", "", sd_b},
        // trailing slash, no leading slash
        {"kubepods/pod" + kUid + "/" + kCid + "/", kUid, "guaranteed", kCid, "", "/kubepods/pod" + kUid},
        // static (mirror) pod: 32-hex UID
        {"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0123456789abcdef0123456789abcdef.slice",
         "0123456789abcdef0123456789abcdef", "burstable", "", "",
         "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0123456789abcdef0123456789abcdef.slice"},
    };
    for (const auto& c : cases) {
        SCOPED_TRACE(c.path);
        auto r = parse_pod_cgroup(c.path);
        if (c.uid.empty()) {
            EXPECT_FALSE(r.has_value());
            continue;
        }
        ASSERT_TRUE(r.has_value());
        EXPECT_EQ(r->uid, c.uid);
        EXPECT_EQ(r->qos, c.qos);
        EXPECT_EQ(r->container_id, c.container);
        EXPECT_EQ(r->runtime, c.runtime);
        EXPECT_EQ(r->pod_cgroup, c.pod_cgroup);
        if (!c.container.empty()) {
            EXPECT_TRUE(r->container_cgroup.starts_with(c.pod_cgroup + "/"));
        }
    }
}

TEST(CgroupLayout, NotAPodIsACleanMiss) {
    for (const std::string& p : std::vector<std::string>{
             "", "/", "/system.slice/sshd.service", "/user.slice/user-0.slice/session-1.scope",
             "/kubepods.slice", "/kubepods.slice/kubepods-burstable.slice", "/kubepods/burstable",
             "/kubepods/besteffort/",
             "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-podnot_a_uid.slice",
             "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod.slice",
             "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + kUidUs,  // no .slice
             "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + kUidUs.substr(1) + ".slice",
             "/kubepods/burstable/pod", "/kubepods/burstable/pod1234", "/kubepods/burstable/" + kUid,
             "/kubepods/burstable/pod" + kUid + "x", "/kubepods/pod" + kUid.substr(0, 35) + "g",
             "/kubepods/guaranteed/pod" + kUid,  // there is no guaranteed directory
             "/notkubepods/pod" + kUid, "/pod" + kUid, "///", "/kubepods//",
             std::string(5000, '/'), std::string(3000, 'a'), "/kubepods/" + std::string(2000, 'x'),
         }) {
        SCOPED_TRACE(p.substr(0, 200));
        EXPECT_FALSE(parse_pod_cgroup(p).has_value());
    }
    // A well-formed pod with a malformed container part: the pod, no container.
    auto r = parse_pod_cgroup("/kubepods/pod" + kUid + "/not-a-container-id");
    ASSERT_TRUE(r);
    EXPECT_EQ(r->container_id, "");
    r = parse_pod_cgroup("/kubepods/pod" + kUid + "/cri-containerd-xyz.scope");
    ASSERT_TRUE(r);
    EXPECT_EQ(r->container_id, "");
}

TEST(CgroupLayout, UidAndNameSyntax) {
    EXPECT_TRUE(valid_pod_uid(kUid));
    EXPECT_TRUE(valid_pod_uid("0123456789abcdef0123456789ABCDEF"));
    EXPECT_FALSE(valid_pod_uid(kUidUs));
    EXPECT_FALSE(valid_pod_uid(""));
    EXPECT_FALSE(valid_pod_uid(kUid + "0"));
    EXPECT_TRUE(valid_container_id(kCid));
    EXPECT_FALSE(valid_container_id("abc"));
    EXPECT_FALSE(valid_container_id(std::string(64, 'g')));

    auto d = parse_pod_log_dir("kube-system_aws-load-balancer-controller-6b7f9c-x2x_" + kUid);
    ASSERT_TRUE(d);
    EXPECT_EQ(d->namespace_, "kube-system");
    EXPECT_EQ(d->name, "aws-load-balancer-controller-6b7f9c-x2x");
    EXPECT_EQ(d->uid, kUid);
    EXPECT_TRUE(parse_pod_log_dir("default_web.example-0_" + kUid));  // names may have dots
    for (const std::string& bad : std::vector<std::string>{"", "_", "__", "kube-system_name", "kube-system_name_", "_name_" + kUid,
                            "ns__" + kUid, "ns_name_not-a-uid", "ns_name_" + kUid + "_extra", "NS_name_" + kUid,
                            "ns_Name_" + kUid, "ns_name-_" + kUid, "-ns_name_" + kUid, std::string(300, '_')})
        EXPECT_FALSE(parse_pod_log_dir(bad)) << bad;

    auto c = parse_container_log_name("coredns-5d78c9869d-abcde_kube-system_coredns-" + kCid + ".log");
    ASSERT_TRUE(c);
    EXPECT_EQ(c->pod, "coredns-5d78c9869d-abcde");
    EXPECT_EQ(c->namespace_, "kube-system");
    EXPECT_EQ(c->container, "coredns");
    EXPECT_EQ(c->container_id, kCid);
    for (const std::string& bad : std::vector<std::string>{"x.log", "a_b_c.log", "a_b_c-" + kCid, "a_b_-" + kCid + ".log", "a_b_c-xyz.log"})
        EXPECT_FALSE(parse_container_log_name(bad)) << bad;
}

TEST(CgroupLayout, NetnsAddresses) {
    auto v4 = parse_fib_trie_locals(fib_trie_for("198.18.1.5") + fib_trie_for("198.18.1.5"));
    ASSERT_EQ(v4.size(), 1u);
    EXPECT_EQ(v4[0], *IpAddr::parse("198.18.1.5"));
    auto v6 = parse_if_inet6(
        "00000000000000000000000000000001 01 80 10 80       lo\n"
        "fe800000000000000000000000000001 02 40 20 80     eth0\n"
        "fd000198001800000000000000000005 02 80 00 80     eth0\n"
        "garbage\n");
    ASSERT_EQ(v6.size(), 1u);
    EXPECT_EQ(v6[0], *IpAddr::parse("fd00:198:18::5"));
    EXPECT_TRUE(parse_fib_trie_locals("").empty());
    EXPECT_TRUE(parse_if_inet6("zz 1 2").empty());
}

TEST(CgroupLayout, FindsKubepodsTrees) {
    TempDir t;
    EXPECT_FALSE(has_kubepods_tree(t.str()));
    fs::create_directories(t.path / "system.slice" / "containerd.service" / "kubepods" / "burstable");
    EXPECT_TRUE(has_kubepods_tree(t.str()));
    TempDir t2;
    fs::create_directories(t2.path / "kubelet.slice" / "kubelet-kubepods.slice");
    EXPECT_TRUE(has_kubepods_tree(t2.str()));
    EXPECT_FALSE(has_kubepods_tree(t.str() + "/nonexistent"));
}

// ---------------------------------------------------------------------------
// k8s-node

namespace {

struct NodeTree {
    TempDir root;
    fs::path logs() const { return root.path / "var/log/pods"; }
    fs::path cg() const { return root.path / "cg"; }
    fs::path proc() const { return root.path / "proc"; }
    K8sNodeOptions options() const {
        K8sNodeOptions o;
        o.host_root = root.str();
        o.cgroup_mount = cg().string();
        o.proc_root = proc().string();
        o.min_rescan_interval = std::chrono::milliseconds(0);
        return o;
    }
    void pod(const std::string& ns, const std::string& name, const std::string& uid,
             const std::vector<std::string>& containers) {
        for (const auto& c : containers) write(logs() / (ns + "_" + name + "_" + uid) / c / "0.log", "");
    }
    void link(const std::string& ns, const std::string& name, const std::string& uid, const std::string& c,
              const std::string& id) {
        fs::create_directories(root.path / "var/log/containers");
        fs::create_symlink("/var/log/pods/" + ns + "_" + name + "_" + uid + "/" + c + "/0.log",
                           root.path / "var/log/containers" / (name + "_" + ns + "_" + c + "-" + id + ".log"));
    }
};

}  // namespace

TEST(K8sNode, NamesPodsAndContainersFromVarLogPods) {
    NodeTree n;
    const std::string uid2 = "22222222-2222-4222-8222-222222222222";
    const std::string cid2 = std::string(64, 'b');
    n.pod("kube-system", "aws-load-balancer-controller-6b7f9c", kUid, {"controller"});
    n.pod("ci", "runner-0", uid2, {"runner", "dind"});
    n.link("ci", "runner-0", uid2, "dind", cid2);
    n.link("ci", "runner-0", uid2, "runner", std::string(64, 'c'));
    K8sNodeResolver r(n.options());

    auto p = r.by_cgroup("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + kUidUs +
                         ".slice/cri-containerd-" + kCid + ".scope");
    ASSERT_TRUE(p);
    EXPECT_EQ(p->ref(), "kube-system/aws-load-balancer-controller-6b7f9c");
    EXPECT_EQ(p->uid, kUid);
    EXPECT_EQ(p->container, "");  // no link names that ID: not even a one-container pod's container
    EXPECT_EQ(p->cgroup, "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + kUidUs + ".slice");
    EXPECT_TRUE(p->ips.empty());  // no process of the pod to read addresses from

    // Two containers: the link maps the ID; deeper (docker-in-docker) cgroups stay the dind container's.
    auto q = r.by_cgroup("/kubepods/burstable/pod" + uid2 + "/" + cid2 + "/docker/" + std::string(64, 'e'));
    ASSERT_TRUE(q);
    EXPECT_EQ(q->ref(), "ci/runner-0");
    EXPECT_EQ(q->container, "dind");
    q = r.by_cgroup("/kubepods/burstable/pod" + uid2 + "/" + std::string(64, 'c'));
    ASSERT_TRUE(q);
    EXPECT_EQ(q->container, "runner");
    // Unknown container ID of a two-container pod, and the pod cgroup itself: no container name.
    q = r.by_cgroup("/kubepods/burstable/pod" + uid2 + "/" + std::string(64, 'd'));
    ASSERT_TRUE(q);
    EXPECT_EQ(q->container, "");
    q = r.by_cgroup("/kubepods/burstable/pod" + uid2);
    ASSERT_TRUE(q);
    EXPECT_EQ(q->container, "");

    EXPECT_FALSE(r.by_cgroup("/system.slice/sshd.service"));
    EXPECT_FALSE(r.by_cgroup("/kubepods/pod33333333-3333-4333-8333-333333333333/" + kCid));  // not on this node
    auto s = r.stats();
    EXPECT_EQ(s.pods, 2u);
    EXPECT_EQ(s.containers, 2u);

    // A pod created later is found on the next miss.
    const std::string uid4 = "44444444-4444-4444-8444-444444444444";
    n.pod("default", "late", uid4, {"app"});
    auto l = r.by_cgroup("/kubepods/besteffort/pod" + uid4 + "/" + kCid);
    ASSERT_TRUE(l);
    EXPECT_EQ(l->ref(), "default/late");
}

TEST(K8sNode, SkipsMalformedEntriesWithoutCrashing) {
    NodeTree n;
    n.pod("default", "good", kUid, {"app"});
    for (const std::string& bad : std::vector<std::string>{"kube-system_missing-uid", "ns_name_not-a-uid", "a_b_c_d", "UPPER_case_" + kUid,
                            "_noname_" + kUid, "ns__" + kUid, "x"})
        fs::create_directories(n.logs() / bad / "app");
    write(n.logs() / ("default_file-not-dir_" + kUid), "");  // a file: ignored
    fs::create_directories(n.logs() / ("default_badcontainer_" + std::string("55555555-5555-4555-8555-555555555555")) /
                           "Not_A_Name");
    // Links that do not parse or point nowhere useful.
    fs::create_directories(n.root.path / "var/log/containers");
    write(n.root.path / "var/log/containers" / "garbage.log", "");
    fs::create_symlink("/nowhere", n.root.path / "var/log/containers" / ("good_default_app-" + kCid + ".log"));

    K8sNodeResolver r(n.options());
    auto p = r.by_cgroup("/kubepods/pod" + kUid + "/" + kCid);
    ASSERT_TRUE(p);
    EXPECT_EQ(p->ref(), "default/good");
    EXPECT_EQ(p->container, "app");
    auto s = r.stats();
    EXPECT_EQ(s.containers, 1u);  // the link's target did not parse: matched by namespace/name
    EXPECT_EQ(s.skipped, 7u);
    EXPECT_EQ(s.pods, 2u);  // good, and badcontainer (with no usable container directory)
    auto b = r.by_uid("55555555-5555-4555-8555-555555555555");
    ASSERT_TRUE(b);
    EXPECT_EQ(b->container, "");
}

TEST(K8sNode, MissingVarLogPodsWarnsOnce) {
    TempDir t;
    LogCapture logs;
    K8sNodeOptions o;
    o.host_root = t.str();
    o.min_rescan_interval = std::chrono::milliseconds(0);
    K8sNodeResolver r(o);
    for (int i = 0; i < 5; ++i) EXPECT_FALSE(r.by_cgroup("/kubepods/pod" + kUid + "/" + kCid));
    EXPECT_EQ(logs.count("warning|k8s-node: cannot read"), 1) << logs.out.str();
}

TEST(K8sNode, PodsAreCapped) {
    NodeTree n;
    for (int i = 0; i < 300; ++i) n.pod("default", "p" + std::to_string(i), fmt::format("{:032x}", i + 1), {"app"});
    auto o = n.options();
    o.max_pods = 100;
    LogCapture logs;
    K8sNodeResolver r(o);
    (void)r.by_uid(fmt::format("{:032x}", 999999));
    (void)r.by_uid(fmt::format("{:032x}", 999998));
    EXPECT_EQ(r.stats().pods, 100u);
    EXPECT_EQ(logs.count("warning|k8s-node: more than 100 pods"), 1) << logs.out.str();
}

TEST(K8sNode, RescansAreRateLimited) {
    NodeTree n;
    auto o = n.options();
    o.min_rescan_interval = std::chrono::milliseconds(60000);
    K8sNodeResolver r(o);
    for (int i = 0; i < 100; ++i) EXPECT_FALSE(r.by_cgroup("/kubepods/pod" + kUid + "/" + kCid));
    EXPECT_EQ(r.stats().log_scans, 1u);
    n.pod("default", "later", kUid, {"app"});
    EXPECT_FALSE(r.by_cgroup("/kubepods/pod" + kUid + "/" + kCid));  // not before the interval
}

TEST(K8sNode, AddressesFromThePodsNetworkNamespace) {
    NodeTree n;
    const std::string uid_host = "66666666-6666-4666-8666-666666666666";
    n.pod("default", "web", kUid, {"app"});
    n.pod("kube-system", "aws-node", uid_host, {"aws-node"});
    // web: a process in its container cgroup, in its own network namespace.
    auto web = n.cg() / "kubepods.slice" / "kubepods-besteffort.slice" /
               ("kubepods-besteffort-pod" + kUidUs + ".slice");
    write(web / ("cri-containerd-" + kCid + ".scope") / "cgroup.procs", "4242\n");
    write(web / "cgroup.procs", "");
    fake_process(n.proc(), 4242, "net:[4026532999]", "198.18.1.5",
                 "fd000198001800000000000000000005 02 80 00 80     eth0\n");
    // aws-node: host network (our own network namespace).
    auto host = n.cg() / "kubepods.slice" / ("kubepods-pod" + std::string("66666666_6666_4666_8666_666666666666") + ".slice");
    write(host / ("cri-containerd-" + std::string(64, 'a') + ".scope") / "cgroup.procs", "4343\n");
    fake_process(n.proc(), 4343, self_netns(), "198.18.0.1");

    K8sNodeResolver r(n.options());
    auto p = r.by_ip(*IpAddr::parse("198.18.1.5"));
    ASSERT_TRUE(p);
    EXPECT_EQ(p->ref(), "default/web");
    EXPECT_EQ(p->ips.size(), 2u);
    auto p6 = r.by_ip(*IpAddr::parse("fd00:198:18::5"));
    ASSERT_TRUE(p6);
    EXPECT_EQ(p6->ref(), "default/web");
    // The host-network pod's address is the node's: not attributed by address ...
    EXPECT_FALSE(r.by_ip(*IpAddr::parse("198.18.0.1")));
    // ... but by its cgroup.
    auto h = r.by_cgroup("/kubepods.slice/kubepods-pod66666666_6666_4666_8666_666666666666.slice/cri-containerd-" +
                         std::string(64, 'a') + ".scope");
    ASSERT_TRUE(h);
    EXPECT_EQ(h->ref(), "kube-system/aws-node");
    EXPECT_TRUE(h->ips.empty());
    // by_cgroup fills the addresses too.
    auto w = r.by_cgroup("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + kUidUs +
                         ".slice/cri-containerd-" + kCid + ".scope");
    ASSERT_TRUE(w);
    EXPECT_EQ(w->ips.size(), 2u);

    // The pod goes away: its address is no longer its.
    fs::remove_all(web);
    EXPECT_FALSE(r.by_ip(*IpAddr::parse("198.18.1.5")));
}

// ---------------------------------------------------------------------------
// k8s-api against the stand-in

namespace {

const std::string kToken = "test-token-not-a-secret";

struct Standin {
    TempDir dir;
    std::unique_ptr<k8s_standin::Server> server;
    std::thread thread;
    explicit Standin(const std::string& mode) {
        std::ofstream(dir.path / "pods.json") << R"([
 {"namespace":"kube-system","name":"aws-load-balancer-controller-6b7f9c","uid":")" +
                                                     kUid + R"(","ips":["198.18.1.5","fd00:198:18::5"],
  "container":"controller","cgroup":"/kubepods.slice/x/cri-containerd-)" +
                                                     kCid + R"(.scope"},
 {"namespace":"kube-system","name":"aws-load-balancer-controller-6b7f9c","uid":")" +
                                                     kUid + R"(","container":"sidecar","container_id":")" +
                                                     std::string(64, 'b') + R"("},
 {"namespace":"kube-system","name":"aws-node-x1","uid":"77777777-7777-4777-8777-777777777777",
  "ips":["198.18.0.1"],"hostNetwork":true,"container":"aws-node"},
 {"namespace":"default","name":"elsewhere","uid":"88888888-8888-4888-8888-888888888888","ips":["198.18.9.9"],
  "node":"other-node"}
])";
        k8s_standin::Options o;
        o.listen = "127.0.0.1:0";
        o.pods_file = (dir.path / "pods.json").string();
        o.token = kToken;
        o.mode = mode;
        server = std::make_unique<k8s_standin::Server>(o);
        thread = std::thread([this] { server->run(); });
    }
    ~Standin() {
        server->stop();
        thread.join();
    }
    std::string url() const { return "http://127.0.0.1:" + std::to_string(server->port()); }
    std::string kubeconfig(const std::string& token = kToken) const {
        auto p = dir.path / "kubeconfig";
        std::ofstream(p) << "apiVersion: v1\nkind: Config\ncurrent-context: test\n"
                            "clusters:\n- name: c\n  cluster:\n    server: "
                         << url() << "/\n"
                         << "contexts:\n- name: test\n  context:\n    cluster: c\n    user: u\n"
                            "users:\n- name: u\n  user:\n    token: "
                         << token << "\n";
        return p.string();
    }
};

K8sApiOptions fast_options() {
    K8sApiOptions o;
    o.node_name = "node-1";
    o.timeout = std::chrono::milliseconds(300);
    o.relist_interval = std::chrono::milliseconds(50);
    o.min_miss_relist_interval = std::chrono::milliseconds(10);
    return o;
}

// The fallback's view: the same pod under another name, so tests can tell who answered.
std::unique_ptr<K8sNodeResolver> node_fallback(NodeTree& n) {
    n.pod("kube-system", "from-var-log-pods", kUid, {"controller"});
    n.link("kube-system", "from-var-log-pods", kUid, "controller", kCid);
    return std::make_unique<K8sNodeResolver>(n.options());
}

const std::string kCtrlCgroup = "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + kUidUs +
                                ".slice/cri-containerd-" + kCid + ".scope";

}  // namespace

TEST(K8sApi, ListsThisNodesPods) {
    Standin s("ok");
    NodeTree n;
    LogCapture logs;
    K8sApiResolver r(load_kubeconfig(s.kubeconfig()), fast_options(), node_fallback(n));
    auto st = r.stats();
    EXPECT_TRUE(st.api_up);
    EXPECT_EQ(st.pods, 2u);  // "elsewhere" runs on another node
    auto p = r.by_cgroup(kCtrlCgroup);
    ASSERT_TRUE(p);
    EXPECT_EQ(p->ref(), "kube-system/aws-load-balancer-controller-6b7f9c");
    EXPECT_EQ(p->container, "controller");
    EXPECT_EQ(p->uid, kUid);
    auto side = r.by_cgroup("/kubepods/burstable/pod" + kUid + "/" + std::string(64, 'b'));
    ASSERT_TRUE(side);
    EXPECT_EQ(side->container, "sidecar");
    auto byip = r.by_ip(*IpAddr::parse("fd00:198:18::5"));
    ASSERT_TRUE(byip);
    EXPECT_EQ(byip->ref(), "kube-system/aws-load-balancer-controller-6b7f9c");
    EXPECT_FALSE(r.by_ip(*IpAddr::parse("198.18.0.1")));  // hostNetwork: the node's address
    EXPECT_FALSE(r.by_ip(*IpAddr::parse("198.18.9.9")));  // another node's pod
    EXPECT_EQ(logs.count("warning|"), 0) << logs.out.str();
    // Background relists keep it current.
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    EXPECT_GE(r.stats().lists_ok, 2u);
    EXPECT_NE(r.describe().find("k8s-api (http://127.0.0.1:"), std::string::npos) << r.describe();
}

TEST(K8sApi, FallsBackWithOneWarning) {
    struct Case {
        std::string mode, token, needle;
    };
    for (const auto& c : std::vector<Case>{{"unauthorized", kToken, "HTTP 401"},
                                           {"ok", "wrong-token", "HTTP 401"},
                                           {"forbidden", kToken, "HTTP 403"},
                                           {"hang", kToken, "did not answer within 0.3 s"}}) {
        SCOPED_TRACE(c.mode + " " + c.token);
        Standin s(c.mode);
        NodeTree n;
        LogCapture logs;
        auto t0 = std::chrono::steady_clock::now();
        {
            K8sApiResolver r(load_kubeconfig(s.kubeconfig(c.token)), fast_options(), node_fallback(n));
            EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(2));
            EXPECT_FALSE(r.stats().api_up);
            auto p = r.by_cgroup(kCtrlCgroup);
            ASSERT_TRUE(p);
            EXPECT_EQ(p->ref(), "kube-system/from-var-log-pods");  // k8s-node answered
            EXPECT_EQ(p->container, "controller");
            std::this_thread::sleep_for(std::chrono::milliseconds(c.mode == "hang" ? 700 : 250));
            EXPECT_GE(r.stats().lists_failed, 2u);  // it keeps trying ...
            EXPECT_NE(r.describe().find("unavailable"), std::string::npos);
        }
        // ... but says so once.
        EXPECT_EQ(logs.count("warning|"), 1) << logs.out.str();
        EXPECT_EQ(logs.count(c.needle), 1) << logs.out.str();
        EXPECT_EQ(logs.count("attributing pods from the node instead"), 1) << logs.out.str();
        EXPECT_EQ(logs.out.str().find(kToken), std::string::npos);  // never the token
    }
}

TEST(K8sApi, RecoversWhenTheApiServerComesBack) {
    Standin s("unauthorized");
    NodeTree n;
    LogCapture logs;
    K8sApiResolver r(load_kubeconfig(s.kubeconfig()), fast_options(), node_fallback(n));
    EXPECT_EQ(r.by_cgroup(kCtrlCgroup)->name, "from-var-log-pods");
    s.server->set_mode("ok");
    for (int i = 0; i < 100 && !r.stats().api_up; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    EXPECT_TRUE(r.stats().api_up);
    EXPECT_EQ(r.by_cgroup(kCtrlCgroup)->name, "aws-load-balancer-controller-6b7f9c");
    EXPECT_EQ(logs.count("answers again"), 1) << logs.out.str();
}

TEST(K8sApi, UnreachableServerFallsBack) {
    // A port nobody listens on (bound, then closed).
    int port;
    {
        k8s_standin::Options o;
        o.listen = "127.0.0.1:0";
        k8s_standin::Server tmp(o);
        port = tmp.port();
    }
    K8sApiConfig cfg;
    cfg.server = "http://127.0.0.1:" + std::to_string(port);
    cfg.origin = "test";
    NodeTree n;
    LogCapture logs;
    K8sApiResolver r(cfg, fast_options(), node_fallback(n));
    EXPECT_EQ(r.by_cgroup(kCtrlCgroup)->name, "from-var-log-pods");
    EXPECT_EQ(logs.count("warning|k8s-api: cannot reach the API server"), 1) << logs.out.str();
}

TEST(K8sApi, InClusterConfigAndAuto) {
    Standin s("ok");
    TempDir sa;
    write(sa.path / "token", kToken + "\n");
    NodeTree n;
    fs::create_directories(n.cg() / "kubepods.slice");
    n.pod("kube-system", "from-var-log-pods", kUid, {"controller"});
    ::setenv("KUBERNETES_SERVICE_HOST", s.url().c_str(), 1);
    ::setenv("IMDSTRACE_SA_DIR", sa.str().c_str(), 1);
    ::setenv("NODE_NAME", "node-1", 1);
    std::string why;
    auto cfg = in_cluster_config(&why);
    ASSERT_TRUE(cfg) << why;
    EXPECT_EQ(cfg->server, s.url());
    EXPECT_EQ(cfg->token, kToken);
    EXPECT_EQ(cfg->token_file, sa.str() + "/token");

    PodResolverSettings ps;
    ps.host_root = n.root.str();
    ps.cgroup_mount = n.cg().string();
    {
        auto r = make_k8s_resolver(K8sMode::automatic, ps);
        ASSERT_NE(dynamic_cast<K8sApiResolver*>(r.get()), nullptr) << r->describe();
        EXPECT_EQ(r->by_cgroup(kCtrlCgroup)->name, "aws-load-balancer-controller-6b7f9c");
    }
    // A real cluster: https on KUBERNETES_SERVICE_PORT, CA from the service account.
    ::setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1", 1);
    ::setenv("KUBERNETES_SERVICE_PORT", "443", 1);
    write(sa.path / "ca.crt", "");
    cfg = in_cluster_config();
    ASSERT_TRUE(cfg);
    EXPECT_EQ(cfg->server, "https://10.96.0.1:443");
    EXPECT_EQ(cfg->ca_file, sa.str() + "/ca.crt");
    ::setenv("KUBERNETES_SERVICE_HOST", "fd00:10:96::1", 1);
    EXPECT_EQ(in_cluster_config()->server, "https://[fd00:10:96::1]:443");
    ::unsetenv("KUBERNETES_SERVICE_PORT");

    // No token: not in a cluster.
    fs::remove(sa.path / "token");
    EXPECT_FALSE(in_cluster_config(&why));
    EXPECT_NE(why.find("token"), std::string::npos);
    ::unsetenv("KUBERNETES_SERVICE_HOST");
    ::unsetenv("IMDSTRACE_SA_DIR");
    EXPECT_FALSE(in_cluster_config(&why));
    EXPECT_NE(why.find("KUBERNETES_SERVICE_HOST"), std::string::npos);

    // auto: kubepods tree -> k8s-node; nothing -> none.
    {
        auto r = make_k8s_resolver(K8sMode::automatic, ps);
        ASSERT_NE(dynamic_cast<K8sNodeResolver*>(r.get()), nullptr) << r->describe();
        EXPECT_EQ(r->by_cgroup(kCtrlCgroup)->name, "from-var-log-pods");
    }
    TempDir empty;
    ps.cgroup_mount = empty.str();
    EXPECT_EQ(make_k8s_resolver(K8sMode::automatic, ps)->describe(), "none");
    // k8s-api without any configuration: one warning, k8s-node.
    {
        LogCapture logs;
        ::setenv("KUBECONFIG", "/nonexistent/kubeconfig", 1);
        auto r = make_k8s_resolver(K8sMode::api, ps);
        ::unsetenv("KUBECONFIG");
        EXPECT_NE(dynamic_cast<K8sNodeResolver*>(r.get()), nullptr);
        EXPECT_EQ(logs.count("warning|k8s-api: no API server configuration"), 1) << logs.out.str();
    }
    // An explicit kubeconfig that cannot be used is an error, not a fallback.
    ps.kubeconfig = "/nonexistent/kubeconfig";
    EXPECT_THROW(make_k8s_resolver(K8sMode::api, ps), std::runtime_error);
    ::unsetenv("NODE_NAME");
}

TEST(K8sApi, Kubeconfig) {
    TempDir t;
    auto b64 = [](const std::string& s) {
        static const char* tbl = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        std::string out;
        unsigned v = 0;
        int bits = -6;
        for (unsigned char c : s) {
            v = (v << 8) + c;
            bits += 8;
            while (bits >= 0) {
                out.push_back(tbl[(v >> bits) & 0x3f]);
                bits -= 6;
            }
        }
        if (bits > -6) out.push_back(tbl[((v << 8) >> (bits + 8)) & 0x3f]);
        while (out.size() % 4) out.push_back('=');
        return out;
    };
    EXPECT_EQ(base64_decode(b64("-----BEGIN CERTIFICATE-----\nxyz\n")), "-----BEGIN CERTIFICATE-----\nxyz\n");
    write(t.path / "kc", "apiVersion: v1\nkind: Config\ncurrent-context: b\nclusters:\n"
                         "- name: ca\n  cluster:\n    server: https://a:6443\n"
                         "- name: cb\n  cluster:\n    server: https://b.example:6443\n"
                         "    certificate-authority-data: " + b64("CA PEM") + "\n"
                         "contexts:\n- name: a\n  context: {cluster: ca, user: ua}\n"
                         "- name: b\n  context: {cluster: cb, user: ub}\n"
                         "users:\n- name: ua\n  user: {token: abc}\n"
                         "- name: ub\n  user:\n    client-certificate-data: " + b64("CERT PEM") + "\n"
                         "    client-key: keys/key.pem\n");
    auto c = load_kubeconfig((t.path / "kc").string());
    EXPECT_EQ(c.server, "https://b.example:6443");
    EXPECT_EQ(c.ca_pem, "CA PEM");
    EXPECT_EQ(c.cert_pem, "CERT PEM");
    EXPECT_EQ(c.key_file, (t.path / "keys/key.pem").string());
    EXPECT_TRUE(c.token.empty());

    write(t.path / "json", R"({"clusters":[{"name":"c","cluster":{"server":"https://x","insecure-skip-tls-verify":true}}],
        "contexts":[{"name":"only","context":{"cluster":"c","user":"u"}}],"users":[{"name":"u","user":{"token":"t"}}]})");
    c = load_kubeconfig((t.path / "json").string());
    EXPECT_TRUE(c.insecure_skip_tls_verify);
    EXPECT_EQ(c.token, "t");

    auto expect_error = [&](const std::string& text, const std::string& needle) {
        write(t.path / "bad", text);
        try {
            load_kubeconfig((t.path / "bad").string());
            ADD_FAILURE() << "accepted: " << text;
        } catch (const std::runtime_error& e) {
            std::string w = e.what();
            EXPECT_NE(w.find((t.path / "bad").string()), std::string::npos) << w;
            EXPECT_NE(w.find(needle), std::string::npos) << w;
        }
    };
    expect_error("users: [", "YAML");
    expect_error("current-context: x\n", "contexts");
    expect_error("current-context: a\ncontexts:\n- name: a\n  context: {cluster: nope}\n", "clusters");
    expect_error("current-context: a\ncontexts:\n- name: a\n  context: {cluster: c, user: u}\n"
                 "clusters:\n- name: c\n  cluster: {server: 'https://x'}\n"
                 "users:\n- name: u\n  user:\n    exec: {command: aws, args: [eks, get-token]}\n",
                 "exec");
    expect_error("current-context: a\ncontexts:\n- name: a\n  context: {cluster: c}\n"
                 "clusters:\n- name: c\n  cluster: {server: 'ftp://x'}\n",
                 "http");
    EXPECT_THROW(load_kubeconfig((t.path / "missing").string()), std::runtime_error);
}

TEST(K8sApi, PodListParsing) {
    std::string rv;
    auto pods = parse_pod_list(R"({"kind":"PodList","apiVersion":"v1","metadata":{"resourceVersion":"42"},"items":[
      {"metadata":{"name":"a","namespace":"n","uid":"u1"},"spec":{"nodeName":"x","hostNetwork":false,
       "containers":[{"name":"c1"}]},"status":{"phase":"Running","podIP":"10.0.0.1","podIPs":[{"ip":"10.0.0.1"},{"ip":"fd00::1"}],
       "containerStatuses":[{"name":"c1","containerID":"cri-o://abc"}],"initContainerStatuses":[{"name":"i","containerID":"docker://def"}]}},
      {"metadata":{"name":"no-uid","namespace":"n"}},
      {"metadata":{"name":"done","namespace":"n","uid":"u2"},"status":{"phase":"Succeeded"}},
      42, {"metadata":"weird","spec":[],"status":"x"}]})",
                               &rv);
    EXPECT_EQ(rv, "42");
    ASSERT_EQ(pods.size(), 2u);
    EXPECT_EQ(pods[0].info.ips.size(), 2u);
    EXPECT_EQ(pods[0].by_id.at("abc"), "c1");
    EXPECT_EQ(pods[0].by_id.at("def"), "i");
    EXPECT_TRUE(pods[1].terminated);
    EXPECT_TRUE(parse_pod_list(R"({"kind":"PodList","items":null})").empty());
    EXPECT_THROW(parse_pod_list("nope"), std::runtime_error);
    EXPECT_THROW(parse_pod_list(R"({"kind":"Status","code":401})"), std::runtime_error);
    EXPECT_THROW(parse_pod_list("[]"), std::runtime_error);
}

// ---------------------------------------------------------------------------
// Churn: 10,000 pods created and deleted while resolving.

TEST(K8sNode, MemoryStaysBoundedUnderChurn) {
    NodeTree n;
    auto o = n.options();
    o.max_pods = 48;  // above the live pods, so the address cache also has to prune the dead
    o.max_ip_entries = 96;
    K8sNodeResolver r(o);
    constexpr int kPods = 10000, kLive = 40;
    auto uid_of = [](int i) { return fmt::format("{:08x}-0000-4000-8000-{:012x}", i, i); };
    auto ip_of = [](int i) { return fmt::format("10.{}.{}.{}", 100 + (i >> 16), (i >> 8) & 255, i & 255); };
    auto pod_dir = [&](int i) {
        auto u = uid_of(i);
        std::replace(u.begin(), u.end(), '-', '_');
        return std::string("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod") + u + ".slice";
    };
    auto cid_of = [](int i) { return fmt::format("{:064x}", i + 1); };
    // Plain syscalls on known shapes: std::filesystem's generic walks would
    // make this test measure the test.
    auto put = [](const std::string& path, const std::string& text) {
        int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        ASSERT_GE(fd, 0) << path;
        ASSERT_EQ(::write(fd, text.data(), text.size()), static_cast<ssize_t>(text.size()));
        ::close(fd);
    };
    const std::string logs = n.logs().string(), cg = n.cg().string(), proc = n.proc().string();
    fs::create_directories(n.logs());
    fs::create_directories(n.proc());
    fs::create_directories(cg + "/kubepods.slice/kubepods-besteffort.slice");
    auto log_dir = [&](int i) { return logs + "/churn_pod-" + std::to_string(i) + "_" + uid_of(i); };
    auto ctr_dir = [&](int i) { return cg + pod_dir(i) + "/cri-containerd-" + cid_of(i) + ".scope"; };
    auto pid_dir = [&](int i) { return proc + "/" + std::to_string(100000 + i); };
    const std::string links = n.root.str() + "/var/log/containers";
    fs::create_directories(links);
    auto link_of = [&](int i) { return links + "/pod-" + std::to_string(i) + "_churn_app-" + cid_of(i) + ".log"; };
    auto create = [&](int i) {
        ::mkdir(log_dir(i).c_str(), 0755);
        ::mkdir((log_dir(i) + "/app").c_str(), 0755);
        ::symlink(("/var/log/pods/churn_pod-" + std::to_string(i) + "_" + uid_of(i) + "/app/0.log").c_str(),
                  link_of(i).c_str());
        ::mkdir((cg + pod_dir(i)).c_str(), 0755);
        ::mkdir(ctr_dir(i).c_str(), 0755);
        put(ctr_dir(i) + "/cgroup.procs", std::to_string(100000 + i) + "\n");
        ::mkdir(pid_dir(i).c_str(), 0755);
        ::mkdir((pid_dir(i) + "/ns").c_str(), 0755);
        ::mkdir((pid_dir(i) + "/net").c_str(), 0755);
        ::symlink(("net:[" + std::to_string(4026600000LL + i) + "]").c_str(), (pid_dir(i) + "/ns/net").c_str());
        put(pid_dir(i) + "/net/fib_trie", fib_trie_for(ip_of(i)));
    };
    auto remove = [&](int i) {
        ::rmdir((log_dir(i) + "/app").c_str());
        ::unlink(link_of(i).c_str());
        ::rmdir(log_dir(i).c_str());
        ::unlink((ctr_dir(i) + "/cgroup.procs").c_str());
        ::rmdir(ctr_dir(i).c_str());
        ::rmdir((cg + pod_dir(i)).c_str());
        ::unlink((pid_dir(i) + "/ns/net").c_str());
        ::unlink((pid_dir(i) + "/net/fib_trie").c_str());
        ::rmdir((pid_dir(i) + "/ns").c_str());
        ::rmdir((pid_dir(i) + "/net").c_str());
        ::rmdir(pid_dir(i).c_str());
    };
    // Warm up allocator and code paths before measuring.
    create(kPods + 1);
    (void)r.by_cgroup(pod_dir(kPods + 1));
    remove(kPods + 1);
    long rss_before = vm_rss_kb();
    K8sNodeStats peak;
    auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < kPods; ++i) {
        create(i);
        auto ip = *IpAddr::parse(ip_of(i));
        if (i % 50 == 1) {  // now and then found by address first (a namespace scan), then by cgroup
            auto p = r.by_ip(ip);
            ASSERT_TRUE(p) << i;
            ASSERT_EQ(p->name, "pod-" + std::to_string(i));
        }
        auto p = r.by_cgroup(pod_dir(i) + "/cri-containerd-" + cid_of(i) + ".scope");
        ASSERT_TRUE(p) << i;
        ASSERT_EQ(p->name, "pod-" + std::to_string(i));
        ASSERT_EQ(p->container, "app");
        ASSERT_EQ(p->ips.size(), 1u);
        if (i >= kLive) {
            remove(i - kLive);
            if (i % 97 == 0) {
                ASSERT_FALSE(r.by_ip(*IpAddr::parse(ip_of(i - kLive)))) << "stale address " << i;
            }
        }
        auto s = r.stats();
        peak.pods = std::max(peak.pods, s.pods);
        peak.containers = std::max(peak.containers, s.containers);
        peak.pod_ips = std::max(peak.pod_ips, s.pod_ips);
        peak.ip_entries = std::max(peak.ip_entries, s.ip_entries);
    }
    auto secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    long rss_after = vm_rss_kb();
    auto s = r.stats();
    std::cout << "[churn] " << kPods << " pods created and deleted (" << kLive << " live at a time) in " << secs
              << " s; VmRSS before " << rss_before << " kB, after " << rss_after << " kB (" << (rss_after - rss_before)
              << " kB); caches now: pods " << s.pods << ", container ids " << s.containers << ", pods with addresses "
              << s.pod_ips << ", address entries " << s.ip_entries << "; peak: pods " << peak.pods << ", pods with addresses "
              << peak.pod_ips << ", address entries " << peak.ip_entries << "; scans: /var/log/pods " << s.log_scans
              << ", netns " << s.netns_scans << std::endl;
    EXPECT_LE(peak.pods, static_cast<std::size_t>(kLive + 1));  // rebuilt from what is on disk
    EXPECT_LE(peak.pod_ips, o.max_pods);
    EXPECT_LE(peak.ip_entries, o.max_ip_entries);
    EXPECT_LE(s.pod_ips, o.max_pods);
    EXPECT_LT(rss_after - rss_before, 4096) << "resolver memory grew with churn";
}

// ---------------------------------------------------------------------------
// Where the kubelet keeps pod logs (podLogsDir), and the links alone.

namespace {

// A link as the kubelet writes it with its logs under `logs_dir`.
void link_into(NodeTree& n, const std::string& logs_dir, const std::string& ns, const std::string& name,
               const std::string& uid, const std::string& c, const std::string& id) {
    fs::create_directories(n.root.path / "var/log/containers");
    fs::create_symlink(logs_dir + "/" + ns + "_" + name + "_" + uid + "/" + c + "/0.log",
                       n.root.path / "var/log/containers" / (name + "_" + ns + "_" + c + "-" + id + ".log"));
}

const std::string kCtrCg = "/kubepods/burstable/pod" + kUid + "/" + kCid;

}  // namespace

TEST(K8sNode, PodLogsDirFromTheKubeletsConfig) {
    struct Case {
        std::string what, config_file, config;
    };
    for (const auto& c : std::vector<Case>{
             {"kubeadm", "var/lib/kubelet/config.yaml",
              "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\npodLogsDir: /data/pod-logs\n"},
             {"EKS (JSON)", "etc/kubernetes/kubelet/config.json",
              R"({"kind":"KubeletConfiguration","apiVersion":"kubelet.config.k8s.io/v1beta1","podLogsDir":"/data/pod-logs/"})"},
         }) {
        SCOPED_TRACE(c.what);
        NodeTree n;
        write(n.root.path / c.config_file, c.config);
        EXPECT_EQ(kubelet_pod_logs_dir(n.root.str()), "/data/pod-logs");
        write(n.root.path / "data/pod-logs" / ("kube-system_web_" + kUid) / "app/0.log", "");
        link_into(n, "/data/pod-logs", "kube-system", "web", kUid, "app", kCid);
        LogCapture logs;
        K8sNodeResolver r(n.options());
        r.refresh();
        auto p = r.by_cgroup(kCtrCg);
        ASSERT_TRUE(p);
        EXPECT_EQ(p->ref(), "kube-system/web");
        EXPECT_EQ(p->container, "app");
        EXPECT_NE(r.describe().find("/data/pod-logs"), std::string::npos) << r.describe();
        EXPECT_EQ(logs.count("warning|"), 0) << logs.out.str();
    }
    NodeTree none;
    EXPECT_EQ(kubelet_pod_logs_dir(none.root.str()), "/var/log/pods");
}

// The DaemonSet mounts /var/log/pods (empty: hostPath DirectoryOrCreate) and
// /var/log/containers, not the configured directory, nor the kubelet's config.
TEST(K8sNode, NamesFromTheLinksAloneWhenTheirDirectoryIsNotMounted) {
    NodeTree n;
    fs::create_directories(n.logs());
    const std::string uid2 = "22222222-2222-4222-8222-222222222222";
    link_into(n, "/data/pod-logs", "kube-system", "web", kUid, "app", kCid);
    link_into(n, "/data/pod-logs", "ci", "runner", uid2, "runner", std::string(64, 'b'));
    link_into(n, "/data/pod-logs", "ci", "runner", uid2, "dind", std::string(64, 'd'));
    LogCapture logs;
    K8sNodeResolver r(n.options());
    r.refresh();
    auto p = r.by_cgroup(kCtrCg);
    ASSERT_TRUE(p);
    EXPECT_EQ(p->ref(), "kube-system/web");
    EXPECT_EQ(p->container, "app");
    auto q = r.by_cgroup("/kubepods/pod" + uid2 + "/" + std::string(64, 'd') + "/docker/" + std::string(64, 'e'));
    ASSERT_TRUE(q);
    EXPECT_EQ(q->ref(), "ci/runner");
    EXPECT_EQ(q->container, "dind");
    EXPECT_EQ(r.stats().pods, 2u);
    EXPECT_EQ(logs.count("host-root right"), 0) << logs.out.str();
}

// Pods from before a podLogsDir change (still under /var/log/pods) and after it.
TEST(K8sNode, PodsInTheOldAndTheNewLogDirectory) {
    NodeTree n;
    write(n.root.path / "var/lib/kubelet/config.yaml", "podLogsDir: /data/pod-logs\n");
    const std::string uid2 = "22222222-2222-4222-8222-222222222222";
    n.pod("default", "old", kUid, {"app"});
    n.link("default", "old", kUid, "app", kCid);
    write(n.root.path / "data/pod-logs" / ("default_new_" + uid2) / "app/0.log", "");
    link_into(n, "/data/pod-logs", "default", "new", uid2, "app", std::string(64, 'b'));
    K8sNodeResolver r(n.options());
    EXPECT_EQ(r.by_cgroup(kCtrCg)->ref(), "default/old");
    EXPECT_EQ(r.by_cgroup("/kubepods/pod" + uid2 + "/" + std::string(64, 'b'))->ref(), "default/new");
}

// ---------------------------------------------------------------------------
// A container ID nobody named is no container, even in a one-container pod.

TEST(K8sNode, UnknownContainerIdsNameNoContainer) {
    NodeTree n;
    n.pod("default", "web", kUid, {"app"});
    n.link("default", "web", kUid, "app", kCid);
    K8sNodeResolver r(n.options());
    const std::string pod = "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + kUidUs + ".slice";
    EXPECT_EQ(r.by_cgroup(pod + "/cri-containerd-" + kCid + ".scope")->container, "app");
    for (const std::string& other : {pod + "/cri-containerd-" + std::string(64, 'e') + ".scope",  // ephemeral / sandbox
                                     pod + "/crio-conmon-" + kCid + ".scope",                     // CRI-O's conmon
                                     pod + "/crio-" + std::string(64, '5') + ".scope",            // CRI-O's infra
                                     pod}) {
        SCOPED_TRACE(other);
        auto p = r.by_cgroup(other);
        ASSERT_TRUE(p);
        EXPECT_EQ(p->ref(), "default/web");
        EXPECT_EQ(p->container, "");
    }
}

TEST(K8sApi, UnknownContainerIdsNameNoContainer) {
    Standin s("ok");
    NodeTree n;
    K8sApiResolver r(load_kubeconfig(s.kubeconfig()), fast_options(), node_fallback(n));
    auto aws_node = r.by_cgroup("/kubepods/pod77777777-7777-4777-8777-777777777777/" + std::string(64, 'e'));
    ASSERT_TRUE(aws_node);
    EXPECT_EQ(aws_node->ref(), "kube-system/aws-node-x1");  // one container, "aws-node", no ID listed
    EXPECT_EQ(aws_node->container, "");
}

// ---------------------------------------------------------------------------
// Static pods: the cgroup carries the config hash, the API lists the mirror pod.

TEST(K8sApi, StaticPodsAreTheirMirrorPodsWithoutRelisting) {
    const std::string hash = "0123456789abcdef0123456789abcdef";
    const std::string hash2 = "fedcba9876543210fedcba9876543210";
    Standin s("ok");
    std::ofstream(s.dir.path / "pods.json") << R"([
 {"namespace":"kube-system","name":"kube-apiserver-node-1","uid":"99999999-9999-4999-8999-999999999999",
  "hostNetwork":true,"ips":["198.18.0.2"],"container":"kube-apiserver","container_id":")" +
                                                   kCid + R"(",
  "annotations":{"kubernetes.io/config.hash":")" + hash + R"(","kubernetes.io/config.mirror":")" + hash +
                                                   R"(","kubernetes.io/config.source":"file"}},
 {"namespace":"kube-system","name":"proxy-from-http-node-1","uid":"aaaaaaaa-9999-4999-8999-999999999999",
  "ips":["198.18.1.77"],"container":"proxy",
  "annotations":{"kubernetes.io/config.mirror":")" + hash2 + R"(","kubernetes.io/config.source":"http"}}
])";
    NodeTree n;
    n.pod("kube-system", "kube-apiserver-node-1", hash, {"kube-apiserver"});  // the node's own view
    auto o = fast_options();
    o.relist_interval = std::chrono::milliseconds(10000);
    o.min_miss_relist_interval = std::chrono::milliseconds(100);
    K8sApiResolver r(load_kubeconfig(s.kubeconfig()), o, std::make_unique<K8sNodeResolver>(n.options()));
    const auto lists = s.server->requests();
    const std::string cg = "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + hash + ".slice/cri-containerd-" + kCid + ".scope";
    const std::string cg2 = "/kubepods/besteffort/pod" + hash2 + "/" + std::string(64, 'b');
    for (int i = 0; i < 12; ++i) {  // a transaction every 100 ms for 1.2 s
        auto p = r.by_cgroup(cg);
        ASSERT_TRUE(p);
        EXPECT_EQ(p->ref(), "kube-system/kube-apiserver-node-1");
        EXPECT_EQ(p->container, "kube-apiserver");
        auto q = r.by_cgroup(cg2);
        ASSERT_TRUE(q);
        EXPECT_EQ(q->ref(), "kube-system/proxy-from-http-node-1");
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    EXPECT_EQ(s.server->requests(), lists) << "a static pod's transactions made the resolver relist";
    EXPECT_FALSE(r.by_ip(*IpAddr::parse("198.18.0.2")));  // host network: the node's address
    EXPECT_EQ(r.by_ip(*IpAddr::parse("198.18.1.77"))->ref(), "kube-system/proxy-from-http-node-1");
}

// ---------------------------------------------------------------------------
// Kubernetes Events on failing pods (sinks/k8s_events), against the stand-in

namespace {

TransactionRecord failing_token_put(const std::string& ns, const std::string& name, Verdict v) {
    TransactionRecord r;
    PodInfo p;
    p.namespace_ = ns;
    p.name = name;
    p.uid = kUid;
    r.pod = p;
    r.client = *Endpoint::parse("198.18.1.5:40000", 0);
    r.server = *Endpoint::parse("169.254.169.254:80", 80);
    HttpRequest req;
    req.method = "PUT";
    req.path = "/latest/api/token";
    r.request = req;
    r.status = 200;
    r.ttl_at_node = 1;
    r.hops = 1;
    r.required_hop_limit = 2;
    r.verdict = v;
    return r;
}

}  // namespace

TEST(K8sEvents, TheEventInTheRealWireFormat) {
    auto ev = pod_event(failing_token_put("kube-system", "alb", Verdict::hop_limit_exceeded), "node-1",
                        1'764'460'800'123);
    ASSERT_TRUE(ev);
    EXPECT_EQ((*ev)["apiVersion"], "v1");
    EXPECT_EQ((*ev)["kind"], "Event");
    EXPECT_EQ((*ev)["metadata"]["namespace"], "kube-system");
    EXPECT_TRUE((*ev)["metadata"]["name"].get<std::string>().starts_with("alb."));
    EXPECT_EQ((*ev)["involvedObject"], (nlohmann::json{{"apiVersion", "v1"}, {"kind", "Pod"}, {"namespace", "kube-system"},
                                                      {"name", "alb"}, {"uid", kUid}}));
    EXPECT_EQ((*ev)["reason"], "ImdsHopLimitExceeded");
    EXPECT_EQ((*ev)["type"], "Warning");
    EXPECT_EQ((*ev)["message"],
              "IMDS token responses dropped at the node: hop limit 1, this pod needs 2 (raise httpPutResponseHopLimit to 2)");
    EXPECT_EQ((*ev)["source"]["component"], "imdstrace");
    EXPECT_EQ((*ev)["source"]["host"], "node-1");
    EXPECT_EQ((*ev)["firstTimestamp"], "2025-11-30T00:00:00Z");
    EXPECT_EQ((*ev)["count"], 1);
    // No Event for success, NOT_FOUND, a host process, or a connection opened before tracing.
    EXPECT_FALSE(pod_event(failing_token_put("a", "b", Verdict::ok), "n", 1));
    EXPECT_FALSE(pod_event(failing_token_put("a", "b", Verdict::not_found), "n", 1));
    auto host = failing_token_put("a", "b", Verdict::hop_limit_exceeded);
    host.pod.reset();
    EXPECT_FALSE(pod_event(host, "n", 1));
    auto stale = failing_token_put("a", "b", Verdict::hop_limit_exceeded);
    stale.opened_before_tracing = true;
    EXPECT_FALSE(pod_event(stale, "n", 1));
}

TEST(K8sEvents, PostedOncePerPodAndVerdictPerInterval) {
    Standin api("ok");
    PodEventOptions o;
    o.node = "node-1";
    o.interval = std::chrono::milliseconds(60'000);
    PodEventPoster poster(load_kubeconfig(api.kubeconfig()), o);
    auto hop = failing_token_put("kube-system", "alb", Verdict::hop_limit_exceeded);
    poster.record(hop, 1'000'000);
    poster.record(hop, 1'010'000);  // within the interval: not again
    poster.record(failing_token_put("kube-system", "alb", Verdict::token_required), 1'010'000);  // another verdict
    poster.record(hop, 1'070'000);  // the next interval
    poster.flush(std::chrono::seconds(5));
    auto s = poster.stats();
    EXPECT_EQ(s.posted, 3u);
    EXPECT_EQ(s.suppressed, 1u);
    EXPECT_EQ(s.failed, 0u);
    auto stored = api.server->events();
    ASSERT_EQ(stored.size(), 3u);
    EXPECT_EQ(stored[0]["reason"], "ImdsHopLimitExceeded");
    EXPECT_EQ(stored[1]["reason"], "ImdsTokenRequired");
    EXPECT_EQ(stored[0]["involvedObject"]["name"], "alb");
    EXPECT_FALSE(stored[0]["metadata"]["uid"].get<std::string>().empty()) << "stored as the API stores it";
}

TEST(K8sEvents, RbacWithoutCreateEventsStopsAfterOneRefusal) {
    Standin api("ok");
    api.server->set_events("forbidden", "");
    PodEventOptions o;
    o.node = "node-1";
    PodEventPoster poster(load_kubeconfig(api.kubeconfig()), o);
    poster.record(failing_token_put("kube-system", "alb", Verdict::hop_limit_exceeded), 1'000);
    poster.flush(std::chrono::seconds(5));
    poster.record(failing_token_put("kube-system", "web", Verdict::hop_limit_exceeded), 2'000);
    poster.flush(std::chrono::seconds(5));
    auto s = poster.stats();
    EXPECT_EQ(s.posted, 0u);
    EXPECT_EQ(s.failed, 1u) << "refused once, not asked again";
    EXPECT_TRUE(api.server->events().empty());
}

TEST(K8sEvents, TheStandinValidatesAsTheApiServerDoes) {
    Standin api("ok");
    auto post = [&](const nlohmann::json& ev, const std::string& ns) {
        // Raw HTTP, so the body can be anything.
        int fd = ::socket(AF_INET, SOCK_STREAM, 0);
        sockaddr_in sa{};
        sa.sin_family = AF_INET;
        sa.sin_port = htons(api.server->port());
        sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        EXPECT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa), 0);
        std::string body = ev.dump();
        std::string req = "POST /api/v1/namespaces/" + ns + "/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " +
                          kToken + "\r\nContent-Type: application/json\r\nContent-Length: " +
                          std::to_string(body.size()) + "\r\n\r\n" + body;
        EXPECT_EQ(::write(fd, req.data(), req.size()), static_cast<ssize_t>(req.size()));
        char buf[4096] = {};
        auto n = ::read(fd, buf, sizeof buf - 1);
        ::close(fd);
        std::string answer(buf, n > 0 ? static_cast<std::size_t>(n) : 0);
        return answer.substr(9, 3);
    };
    auto good = *pod_event(failing_token_put("kube-system", "alb", Verdict::hop_limit_exceeded), "n", 1'000);
    EXPECT_EQ(post(good, "kube-system"), "201");
    EXPECT_EQ(post(good, "kube-system"), "409") << "the same name twice";
    auto other_ns = good;
    other_ns["metadata"]["name"] = "x.1";
    EXPECT_EQ(post(other_ns, "default"), "422") << "body namespace differs from the URL's";
    auto no_type = good;
    no_type["metadata"]["name"] = "x.2";
    no_type["type"] = "Error";
    EXPECT_EQ(post(no_type, "kube-system"), "422");
    auto no_source = good;
    no_source["metadata"]["name"] = "x.3";
    no_source.erase("source");
    no_source.erase("reportingComponent");
    EXPECT_EQ(post(no_source, "kube-system"), "422");
    auto not_event = good;
    not_event["kind"] = "Pod";
    EXPECT_EQ(post(not_event, "kube-system"), "400");
}
