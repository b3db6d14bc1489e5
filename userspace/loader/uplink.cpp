#include "loader/uplink.hpp"

#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <net/if.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace imdstrace {

std::optional<Interface> interface_by_name(const std::string& name) {
    unsigned idx = if_nametoindex(name.c_str());
    if (idx == 0) return std::nullopt;
    return Interface{static_cast<int>(idx), name};
}

std::optional<Interface> route_interface(const IpAddr& dst, std::string* error) {
    auto fail = [error](std::string why) -> std::optional<Interface> {
        if (error) *error = std::move(why);
        return std::nullopt;
    };
    int fd = ::socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
    if (fd < 0) return fail(std::string("netlink socket: ") + std::strerror(errno));

    struct {
        nlmsghdr nh;
        rtmsg rt;
        char attrs[64];
    } req{};
    const int alen = dst.is_v4() ? 4 : 16;
    req.nh.nlmsg_len = NLMSG_LENGTH(sizeof(rtmsg));
    req.nh.nlmsg_type = RTM_GETROUTE;
    req.nh.nlmsg_flags = NLM_F_REQUEST;
    req.nh.nlmsg_seq = 1;
    req.rt.rtm_family = dst.is_v4() ? AF_INET : AF_INET6;
    req.rt.rtm_dst_len = alen * 8;
    auto* rta = reinterpret_cast<rtattr*>(reinterpret_cast<char*>(&req) + NLMSG_ALIGN(req.nh.nlmsg_len));
    rta->rta_type = RTA_DST;
    rta->rta_len = RTA_LENGTH(alen);
    std::memcpy(RTA_DATA(rta), dst.bytes.data(), alen);
    req.nh.nlmsg_len = NLMSG_ALIGN(req.nh.nlmsg_len) + RTA_ALIGN(rta->rta_len);

    sockaddr_nl kernel{};
    kernel.nl_family = AF_NETLINK;
    if (::sendto(fd, &req, req.nh.nlmsg_len, 0, reinterpret_cast<sockaddr*>(&kernel), sizeof(kernel)) < 0) {
        ::close(fd);
        return fail(std::string("netlink send: ") + std::strerror(errno));
    }
    char buf[8192];
    ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
    ::close(fd);
    if (n < 0) return fail(std::string("netlink recv: ") + std::strerror(errno));
    for (auto* nh = reinterpret_cast<nlmsghdr*>(buf); NLMSG_OK(nh, static_cast<unsigned>(n)); nh = NLMSG_NEXT(nh, n)) {
        if (nh->nlmsg_type == NLMSG_ERROR) {
            auto* err = static_cast<nlmsgerr*>(NLMSG_DATA(nh));
            return fail(err->error ? std::strerror(-err->error) : "no route");
        }
        if (nh->nlmsg_type != RTM_NEWROUTE) continue;
        auto* rt = static_cast<rtmsg*>(NLMSG_DATA(nh));
        int len = RTM_PAYLOAD(nh);
        for (auto* a = RTM_RTA(rt); RTA_OK(a, len); a = RTA_NEXT(a, len)) {
            if (a->rta_type != RTA_OIF) continue;
            int oif = *static_cast<int*>(RTA_DATA(a));
            char name[IF_NAMESIZE] = {};
            if (!if_indextoname(oif, name)) return fail("route via unknown interface index " + std::to_string(oif));
            if (std::string(name) == "lo") return fail("the route points at lo (the address is local)");
            return Interface{oif, name};
        }
    }
    return fail("route has no output interface");
}

}  // namespace imdstrace

#include <linux/pkt_sched.h>

namespace imdstrace {

int tc_filter_count(int ifindex, bool ingress) {
    int fd = ::socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
    if (fd < 0) return -1;
    struct {
        nlmsghdr nh;
        tcmsg tc;
    } req{};
    req.nh.nlmsg_len = NLMSG_LENGTH(sizeof(tcmsg));
    req.nh.nlmsg_type = RTM_GETTFILTER;
    req.nh.nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
    req.nh.nlmsg_seq = 1;
    req.tc.tcm_family = AF_UNSPEC;
    req.tc.tcm_ifindex = ifindex;
    req.tc.tcm_parent = TC_H_MAKE(TC_H_CLSACT, ingress ? TC_H_MIN_INGRESS : TC_H_MIN_EGRESS);
    sockaddr_nl kernel{};
    kernel.nl_family = AF_NETLINK;
    if (::sendto(fd, &req, req.nh.nlmsg_len, 0, reinterpret_cast<sockaddr*>(&kernel), sizeof(kernel)) < 0) {
        ::close(fd);
        return -1;
    }
    int count = 0;
    char buf[16384];
    for (;;) {
        ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
        if (n <= 0) {
            count = -1;
            break;
        }
        for (auto* nh = reinterpret_cast<nlmsghdr*>(buf); NLMSG_OK(nh, static_cast<unsigned>(n)); nh = NLMSG_NEXT(nh, n)) {
            if (nh->nlmsg_type == NLMSG_DONE) {
                ::close(fd);
                return count;
            }
            if (nh->nlmsg_type == NLMSG_ERROR) {
                auto* err = static_cast<nlmsgerr*>(NLMSG_DATA(nh));
                ::close(fd);
                return err->error == 0 ? count : -1;
            }
            if (nh->nlmsg_type == RTM_NEWTFILTER) ++count;
        }
    }
    ::close(fd);
    return count;
}

}  // namespace imdstrace
