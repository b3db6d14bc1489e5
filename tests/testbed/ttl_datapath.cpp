// ttl-datapath: loads ttl_datapath.bpf.c (a Cilium-like datapath that decrements TTL / hop limit
// itself and drops at <= 1) as a tc clsact ingress filter on the node's uplink, for one pod, and
// stays in the foreground until SIGTERM/SIGINT; then removes its filter (and the clsact qdisc if
// it created it and no other filter is left on it). Testbed tool: run it in the node netns.
//
//   ttl-datapath --iface uplink0 --to-iface veth1 --dst-mac 02:00:c6:13:00:01
//                [--pod-ip4 198.18.1.11] [--pod-ip6 fd00:198:18:1::11] [--src-mac MAC]
//                [--prio 1] [--handle 1] [--pidfile F] [--ready-file F]
//
// SIGUSR1 prints the counters (redirected, dropped_ttl) to stderr; they are printed on exit too.
// Exit 0 after a clean shutdown, 1 on runtime errors, 2 on usage errors.

#include <arpa/inet.h>
#include <linux/netlink.h>
#include <linux/pkt_sched.h>
#include <linux/rtnetlink.h>
#include <net/if.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <bpf/libbpf.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "ttl_datapath.skel.h"

namespace {

struct Options {
    std::string iface;
    std::string to_iface;
    std::string pod_ip4;
    std::string pod_ip6;
    std::string dst_mac;
    std::string src_mac;
    unsigned prio = 1;
    unsigned handle = 1;
    std::string pidfile;
    std::string ready_file;
};

[[noreturn]] void usage(const char* msg) {
    if (msg) std::fprintf(stderr, "ttl-datapath: %s\n", msg);
    std::fprintf(stderr,
                 "usage: ttl-datapath --iface UPLINK --to-iface VETH --dst-mac POD_MAC\n"
                 "                    [--pod-ip4 A] [--pod-ip6 A] [--src-mac MAC] [--prio N] [--handle N]\n"
                 "                    [--pidfile F] [--ready-file F]\n");
    std::exit(2);
}

bool parse_mac(const std::string& s, unsigned char out[6]) {
    unsigned v[6];
    char tail;
    if (std::sscanf(s.c_str(), "%x:%x:%x:%x:%x:%x%c", &v[0], &v[1], &v[2], &v[3], &v[4], &v[5], &tail) != 6)
        return false;
    for (int i = 0; i < 6; i++) {
        if (v[i] > 255) return false;
        out[i] = static_cast<unsigned char>(v[i]);
    }
    return true;
}

bool iface_mac(const std::string& name, unsigned char out[6]) {
    int fd = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return false;
    ifreq ifr{};
    std::snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "%s", name.c_str());
    bool ok = ::ioctl(fd, SIOCGIFHWADDR, &ifr) == 0;
    ::close(fd);
    if (ok) std::memcpy(out, ifr.ifr_hwaddr.sa_data, 6);
    return ok;
}

// Number of tc filters under the clsact ingress/egress parent of ifindex, -1 on error.
int tc_filter_count(int ifindex, bool ingress) {
    int fd = ::socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
    if (fd < 0) return -1;
    struct {
        nlmsghdr n;
        tcmsg t;
    } req{};
    req.n.nlmsg_len = sizeof(req);
    req.n.nlmsg_type = RTM_GETTFILTER;
    req.n.nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
    req.n.nlmsg_seq = 1;
    req.t.tcm_family = AF_UNSPEC;
    req.t.tcm_ifindex = ifindex;
    req.t.tcm_parent = TC_H_MAKE(TC_H_CLSACT, ingress ? TC_H_MIN_INGRESS : TC_H_MIN_EGRESS);
    if (::send(fd, &req, sizeof(req), 0) < 0) {
        ::close(fd);
        return -1;
    }
    int count = 0;
    alignas(nlmsghdr) char buf[16384];
    for (;;) {
        ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
        if (n < 0) {
            if (errno == EINTR) continue;
            count = -1;
            break;
        }
        for (auto* h = reinterpret_cast<nlmsghdr*>(buf); NLMSG_OK(h, static_cast<unsigned>(n)); h = NLMSG_NEXT(h, n)) {
            if (h->nlmsg_type == NLMSG_DONE) {
                ::close(fd);
                return count;
            }
            if (h->nlmsg_type == NLMSG_ERROR) {
                ::close(fd);
                return -1;
            }
            if (h->nlmsg_type == RTM_NEWTFILTER) count++;
        }
    }
    ::close(fd);
    return count;
}

void write_file(const std::string& path, const std::string& content) {
    if (path.empty()) return;
    std::string tmp = path + ".tmp";
    FILE* f = std::fopen(tmp.c_str(), "w");
    if (!f) return;
    std::fputs(content.c_str(), f);
    std::fclose(f);
    std::rename(tmp.c_str(), path.c_str());
}

int libbpf_quiet(enum libbpf_print_level level, const char* fmt, va_list ap) {
    if (level == LIBBPF_DEBUG) return 0;
    return std::vfprintf(stderr, fmt, ap);
}

}  // namespace

int main(int argc, char** argv) {
    Options o;
    for (int i = 1; i < argc; i++) {
        std::string a = argv[i];
        auto need = [&]() -> std::string {
            if (i + 1 >= argc) usage((a + " needs a value").c_str());
            return argv[++i];
        };
        if (a == "--iface") o.iface = need();
        else if (a == "--to-iface") o.to_iface = need();
        else if (a == "--pod-ip4") o.pod_ip4 = need();
        else if (a == "--pod-ip6") o.pod_ip6 = need();
        else if (a == "--dst-mac") o.dst_mac = need();
        else if (a == "--src-mac") o.src_mac = need();
        else if (a == "--prio") o.prio = static_cast<unsigned>(std::strtoul(need().c_str(), nullptr, 0));
        else if (a == "--handle") o.handle = static_cast<unsigned>(std::strtoul(need().c_str(), nullptr, 0));
        else if (a == "--pidfile") o.pidfile = need();
        else if (a == "--ready-file") o.ready_file = need();
        else if (a == "-h" || a == "--help") usage(nullptr);
        else usage(("unknown argument " + a).c_str());
    }
    if (o.iface.empty() || o.to_iface.empty() || o.dst_mac.empty()) usage("--iface, --to-iface and --dst-mac are required");
    if (o.pod_ip4.empty() && o.pod_ip6.empty()) usage("need --pod-ip4 and/or --pod-ip6");
    if (o.prio == 0 || o.prio > 0xffff || o.handle == 0) usage("--prio must be 1..65535, --handle > 0");

    int ifindex = static_cast<int>(if_nametoindex(o.iface.c_str()));
    int to_ifindex = static_cast<int>(if_nametoindex(o.to_iface.c_str()));
    if (!ifindex || !to_ifindex) {
        std::fprintf(stderr, "ttl-datapath: no interface %s in this netns\n", !ifindex ? o.iface.c_str() : o.to_iface.c_str());
        return 1;
    }
    unsigned char dmac[6], smac[6];
    if (!parse_mac(o.dst_mac, dmac)) usage("bad --dst-mac");
    if (o.src_mac.empty()) {
        if (!iface_mac(o.to_iface, smac)) {
            std::fprintf(stderr, "ttl-datapath: cannot read the MAC of %s: %s\n", o.to_iface.c_str(), std::strerror(errno));
            return 1;
        }
    } else if (!parse_mac(o.src_mac, smac)) {
        usage("bad --src-mac");
    }

    libbpf_set_print(libbpf_quiet);
    ttl_datapath_bpf* skel = ttl_datapath_bpf__open();
    if (!skel) {
        std::fprintf(stderr, "ttl-datapath: cannot open the BPF object: %s\n", std::strerror(errno));
        return 1;
    }
    auto* ro = skel->rodata;
    if (!o.pod_ip4.empty()) {
        in_addr a{};
        if (inet_pton(AF_INET, o.pod_ip4.c_str(), &a) != 1) usage("bad --pod-ip4");
        ro->pod_ip4 = a.s_addr;
        ro->has_ip4 = 1;
    }
    if (!o.pod_ip6.empty()) {
        in6_addr a{};
        if (inet_pton(AF_INET6, o.pod_ip6.c_str(), &a) != 1) usage("bad --pod-ip6");
        std::memcpy(const_cast<__u8*>(ro->pod_ip6), &a, 16);
        ro->has_ip6 = 1;
    }
    ro->redirect_ifindex = static_cast<__u32>(to_ifindex);
    std::memcpy(const_cast<__u8*>(ro->dst_mac), dmac, 6);
    std::memcpy(const_cast<__u8*>(ro->src_mac), smac, 6);
    if (int err = ttl_datapath_bpf__load(skel)) {
        std::fprintf(stderr, "ttl-datapath: cannot load the BPF program: %s\n", std::strerror(-err));
        ttl_datapath_bpf__destroy(skel);
        return 1;
    }

    // Block the signals before anything is attached, so a TERM cannot kill us half-way.
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    sigaddset(&set, SIGUSR1);
    sigprocmask(SIG_BLOCK, &set, nullptr);

    bpf_tc_hook hook{};
    hook.sz = sizeof(hook);
    hook.ifindex = ifindex;
    hook.attach_point = BPF_TC_INGRESS;
    int err = bpf_tc_hook_create(&hook);
    if (err && err != -EEXIST) {
        std::fprintf(stderr, "ttl-datapath: cannot add a clsact qdisc to %s: %s\n", o.iface.c_str(), std::strerror(-err));
        ttl_datapath_bpf__destroy(skel);
        return 1;
    }
    const bool created_qdisc = err == 0;
    bpf_tc_opts opts{};
    opts.sz = sizeof(opts);
    opts.prog_fd = bpf_program__fd(skel->progs.ttl_datapath);
    opts.handle = o.handle;
    opts.priority = o.prio;
    opts.flags = BPF_TC_F_REPLACE;  // a filter a SIGKILLed earlier run left behind
    err = bpf_tc_attach(&hook, &opts);
    if (err) {
        std::fprintf(stderr, "ttl-datapath: cannot attach to %s ingress: %s\n", o.iface.c_str(), std::strerror(-err));
        if (created_qdisc) {
            hook.attach_point = static_cast<bpf_tc_attach_point>(BPF_TC_INGRESS | BPF_TC_EGRESS);
            bpf_tc_hook_destroy(&hook);
        }
        ttl_datapath_bpf__destroy(skel);
        return 1;
    }

    write_file(o.pidfile, std::to_string(::getpid()) + "\n");
    std::fprintf(stderr, "ttl-datapath: pid %d on %s ingress (tc prio %u handle %u) -> %s%s%s%s%s\n", ::getpid(),
                 o.iface.c_str(), o.prio, o.handle, o.to_iface.c_str(), o.pod_ip4.empty() ? "" : " ",
                 o.pod_ip4.c_str(), o.pod_ip6.empty() ? "" : " ", o.pod_ip6.c_str());
    write_file(o.ready_file, "ready\n");

    auto print_counters = [&] {
        std::fprintf(stderr, "ttl-datapath: redirected=%llu dropped_ttl=%llu\n",
                     static_cast<unsigned long long>(skel->bss->redirected),
                     static_cast<unsigned long long>(skel->bss->dropped_ttl));
    };
    for (;;) {
        int sig = 0;
        if (sigwait(&set, &sig) != 0) continue;
        if (sig == SIGUSR1) {
            print_counters();
            continue;
        }
        break;
    }
    print_counters();

    hook.attach_point = BPF_TC_INGRESS;
    bpf_tc_opts det{};
    det.sz = sizeof(det);
    det.handle = o.handle;
    det.priority = o.prio;
    int rc = 0;
    if ((err = bpf_tc_detach(&hook, &det)) && err != -ENOENT && err != -ENODEV) {
        std::fprintf(stderr, "ttl-datapath: cannot remove the filter: %s\n", std::strerror(-err));
        rc = 1;
    }
    if (created_qdisc && tc_filter_count(ifindex, true) == 0 && tc_filter_count(ifindex, false) == 0) {
        hook.attach_point = static_cast<bpf_tc_attach_point>(BPF_TC_INGRESS | BPF_TC_EGRESS);
        if ((err = bpf_tc_hook_destroy(&hook)) && err != -ENOENT && err != -ENODEV && err != -EINVAL) {
            std::fprintf(stderr, "ttl-datapath: cannot remove the clsact qdisc: %s\n", std::strerror(-err));
            rc = 1;
        }
    }
    ttl_datapath_bpf__destroy(skel);
    if (!o.ready_file.empty()) ::unlink(o.ready_file.c_str());
    if (!o.pidfile.empty()) ::unlink(o.pidfile.c_str());
    return rc;
}
