#include "pipeline/answering.hpp"

#include <arpa/inet.h>
#include <dirent.h>
#include <ifaddrs.h>
#include <linux/inet_diag.h>
#include <linux/netlink.h>
#include <linux/sock_diag.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <fstream>
#include <sstream>

namespace imdstrace {

namespace {

struct Fd {
    int fd;
    explicit Fd(int f) : fd(f) {}
    ~Fd() {
        if (fd >= 0) ::close(fd);
    }
    Fd(const Fd&) = delete;
    Fd& operator=(const Fd&) = delete;
};

// One family's TCP sockets on `port`: the best match's inode (a listener
// on the exact address, then one on the wildcard, then any other state).
std::optional<unsigned long> dump_family(int family, const Endpoint& local) {
    Fd sock(::socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_SOCK_DIAG));
    if (sock.fd < 0) return std::nullopt;
    struct {
        nlmsghdr nlh;
        inet_diag_req_v2 req;
    } msg{};
    msg.nlh.nlmsg_len = sizeof(msg);
    msg.nlh.nlmsg_type = SOCK_DIAG_BY_FAMILY;
    msg.nlh.nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
    msg.req.sdiag_family = static_cast<std::uint8_t>(family);
    msg.req.sdiag_protocol = IPPROTO_TCP;
    msg.req.idiag_states = ~0u;
    msg.req.id.idiag_sport = htons(local.port);  // not a kernel-side filter without bytecode: checked below
    if (::send(sock.fd, &msg, sizeof(msg), 0) < 0) return std::nullopt;

    const bool v4 = local.addr.is_v4();
    int best_rank = 0;
    std::optional<unsigned long> best;
    std::array<char, 32768> buf;
    for (;;) {
        ssize_t n = ::recv(sock.fd, buf.data(), buf.size(), 0);
        if (n <= 0) return best;
        for (auto* h = reinterpret_cast<nlmsghdr*>(buf.data()); NLMSG_OK(h, static_cast<unsigned>(n));
             h = NLMSG_NEXT(h, n)) {
            if (h->nlmsg_type == NLMSG_DONE || h->nlmsg_type == NLMSG_ERROR) return best;
            if (h->nlmsg_len < NLMSG_LENGTH(sizeof(inet_diag_msg))) continue;
            const auto* m = static_cast<const inet_diag_msg*>(NLMSG_DATA(h));
            if (ntohs(m->id.idiag_sport) != local.port) continue;
            // The socket's bound address: exact, wildcard, or IPv4-mapped on a dual-stack socket.
            std::array<std::uint8_t, 16> a{};
            std::memcpy(a.data(), m->id.idiag_src, 16);
            const auto& want = local.addr.bytes;
            bool exact = family == AF_INET ? v4 && std::memcmp(a.data(), want.data(), 4) == 0
                                           : (!v4 && a == want) ||
                                                 (v4 && a[10] == 0xff && a[11] == 0xff &&
                                                  std::all_of(a.begin(), a.begin() + 10, [](auto b) { return b == 0; }) &&
                                                  std::memcmp(a.data() + 12, want.data(), 4) == 0);
            bool wildcard = std::all_of(a.begin(), a.begin() + (family == AF_INET ? 4 : 16), [](auto b) { return b == 0; });
            if (!exact && !wildcard) continue;
            const bool listening = m->idiag_state == TCP_LISTEN;
            int rank = (listening ? 4 : 0) + (exact ? 2 : 1);
            if (rank > best_rank && m->idiag_inode != 0) {
                best_rank = rank;
                best = m->idiag_inode;
            }
        }
    }
}

}  // namespace

bool is_local_address(const IpAddr& addr) {
    ifaddrs* list = nullptr;
    if (::getifaddrs(&list) != 0) return false;
    bool found = false;
    for (auto* a = list; a && !found; a = a->ifa_next) {
        if (!a->ifa_addr) continue;
        if (a->ifa_addr->sa_family == AF_INET && addr.is_v4()) {
            const auto* in = reinterpret_cast<const sockaddr_in*>(a->ifa_addr);
            found = std::memcmp(&in->sin_addr, addr.bytes.data(), 4) == 0;
        } else if (a->ifa_addr->sa_family == AF_INET6 && !addr.is_v4()) {
            const auto* in6 = reinterpret_cast<const sockaddr_in6*>(a->ifa_addr);
            found = std::memcmp(&in6->sin6_addr, addr.bytes.data(), 16) == 0;
        }
    }
    ::freeifaddrs(list);
    return found;
}

std::optional<unsigned long> tcp_socket_inode(const Endpoint& local) {
    if (local.addr.is_v4())
        if (auto inode = dump_family(AF_INET, local)) return inode;
    return dump_family(AF_INET6, local);
}

namespace {

// Does process `pid` under proc_root hold socket:[inode] among its fds?
bool holds_socket(const std::string& proc_root, const std::string& pid, unsigned long inode) {
    const std::string want = "socket:[" + std::to_string(inode) + "]";
    const std::string fd_dir = proc_root + "/" + pid + "/fd";
    DIR* fds = ::opendir(fd_dir.c_str());
    if (!fds) return false;
    bool found = false;
    char target[64];
    while (auto* f = ::readdir(fds)) {
        if (f->d_name[0] == '.') continue;
        ssize_t n = ::readlinkat(::dirfd(fds), f->d_name, target, sizeof(target) - 1);
        if (n > 0 && std::string_view(target, static_cast<std::size_t>(n)) == want) {
            found = true;
            break;
        }
    }
    ::closedir(fds);
    return found;
}


ProcessInfo process_info(const std::string& proc_root, const std::string& pid) {
    ProcessInfo p;
    p.pid = static_cast<std::uint32_t>(std::strtoul(pid.c_str(), nullptr, 10));
    std::ifstream comm(proc_root + "/" + pid + "/comm");
    std::getline(comm, p.comm);
    return p;
}

}  // namespace

std::optional<ProcessInfo> process_with_socket(const std::string& proc_root, unsigned long inode) {
    DIR* procs = ::opendir(proc_root.c_str());
    if (!procs) return std::nullopt;
    std::optional<ProcessInfo> found;
    while (auto* e = ::readdir(procs)) {
        char* end = nullptr;
        unsigned long pid = std::strtoul(e->d_name, &end, 10);
        if (!end || *end != '\0' || pid == 0) continue;
        if (holds_socket(proc_root, e->d_name, inode)) {
            found = process_info(proc_root, e->d_name);
            break;
        }
    }
    ::closedir(procs);
    return found;
}

namespace {

// A TCP socket on `port` in the network namespace of `pid`, from
// /proc/PID/net/tcp and tcp6 (local_address "ADDR:PORT" in hex): a listener
// first.  Its inode, or nullopt.
std::optional<unsigned long> inode_on_port(const std::string& proc_root, const std::string& pid, std::uint16_t port) {
    std::optional<unsigned long> any;
    for (const char* table : {"/net/tcp", "/net/tcp6"}) {
        std::ifstream in(proc_root + "/" + pid + table);
        std::string line;
        std::getline(in, line);  // header
        while (std::getline(in, line)) {
            std::istringstream fields(line);
            std::string sl, local, remote, state, queues, timer, retr, uid, timeout, inode;
            if (!(fields >> sl >> local >> remote >> state >> queues >> timer >> retr >> uid >> timeout >> inode)) continue;
            auto colon = local.rfind(':');
            if (colon == std::string::npos) continue;
            if (std::strtoul(local.c_str() + colon + 1, nullptr, 16) != port) continue;
            unsigned long ino = std::strtoul(inode.c_str(), nullptr, 10);
            if (ino == 0) continue;
            if (state == "0A") return ino;  // TCP_LISTEN
            if (!any) any = ino;
        }
    }
    return any;
}

}  // namespace

std::optional<ProcessInfo> SocketOwners::owner(const Endpoint& local, const std::string& cgroup_dir) {
    if (auto p = owner(local)) return p;
    if (cgroup_dir.empty()) return std::nullopt;
    std::ifstream procs(cgroup_dir + "/cgroup.procs");
    std::string pid;
    while (procs >> pid) {
        if (pid == "0") continue;  // outside this PID namespace
        auto inode = inode_on_port(proc_root_, pid, local.port);
        if (inode && holds_socket(proc_root_, pid, *inode)) return process_info(proc_root_, pid);
    }
    return std::nullopt;
}

SocketOwners::SocketOwners(std::string proc_root) : proc_root_(std::move(proc_root)) {}

std::optional<ProcessInfo> SocketOwners::owner(const Endpoint& local) {
    if (auto it = cache_.find(local); it != cache_.end()) return it->second;
    auto inode = tcp_socket_inode(local);
    if (!inode) return std::nullopt;
    auto p = process_with_socket(proc_root_, *inode);
    if (p) cache_[local] = *p;
    return p;
}

}  // namespace imdstrace
