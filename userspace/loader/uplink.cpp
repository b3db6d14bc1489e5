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

std::optional<std::vector<TcFilter>> tc_filters(int ifindex, bool ingress) {
    int fd = ::socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
    if (fd < 0) return std::nullopt;
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
        return std::nullopt;
    }
    std::vector<TcFilter> out;
    char buf[16384];
    for (;;) {
        ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
        if (n <= 0) break;
        for (auto* nh = reinterpret_cast<nlmsghdr*>(buf); NLMSG_OK(nh, static_cast<unsigned>(n)); nh = NLMSG_NEXT(nh, n)) {
            if (nh->nlmsg_type == NLMSG_DONE) {
                ::close(fd);
                return out;
            }
            if (nh->nlmsg_type == NLMSG_ERROR) {
                auto* err = static_cast<nlmsgerr*>(NLMSG_DATA(nh));
                ::close(fd);
                if (err->error == 0) return out;
                return std::nullopt;
            }
            if (nh->nlmsg_type != RTM_NEWTFILTER) continue;
            auto* tc = static_cast<tcmsg*>(NLMSG_DATA(nh));
            TcFilter f;
            f.handle = tc->tcm_handle;
            f.priority = static_cast<std::uint16_t>(TC_H_MAJ(tc->tcm_info) >> 16);
            int len = static_cast<int>(nh->nlmsg_len) - NLMSG_LENGTH(sizeof(tcmsg));
            for (auto* a = reinterpret_cast<rtattr*>(reinterpret_cast<char*>(tc) + NLMSG_ALIGN(sizeof(tcmsg)));
                 RTA_OK(a, len); a = RTA_NEXT(a, len))
                if (a->rta_type == TCA_KIND) f.kind = static_cast<const char*>(RTA_DATA(a));
            out.push_back(std::move(f));
        }
    }
    ::close(fd);
    return std::nullopt;
}

int tc_filter_count(int ifindex, bool ingress) {
    auto f = tc_filters(ifindex, ingress);
    return f ? static_cast<int>(f->size()) : -1;
}

}  // namespace imdstrace
