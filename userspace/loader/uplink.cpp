#include "loader/uplink.hpp"

#include <linux/fib_rules.h>
#include <linux/netlink.h>
#include <linux/pkt_sched.h>
#include <linux/rtnetlink.h>
#include <net/if.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <algorithm>
#include <functional>
#include <map>

namespace imdstrace {
namespace {

// One rtnetlink request and its answer: every message reaches `on_message`
// until the kernel says done (dumps) or, for a plain request, after the
// first datagram.  Returns 0, or a negative errno (socket failure, or the
// kernel's NLMSG_ERROR).
int netlink_round_trip(const nlmsghdr& request, const std::function<void(const nlmsghdr&)>& on_message) {
    int fd = ::socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
    if (fd < 0) return -errno;
    sockaddr_nl kernel{};
    kernel.nl_family = AF_NETLINK;
    if (::sendto(fd, &request, request.nlmsg_len, 0, reinterpret_cast<sockaddr*>(&kernel), sizeof(kernel)) < 0) {
        int err = -errno;
        ::close(fd);
        return err;
    }
    const bool dump = request.nlmsg_flags & NLM_F_DUMP;
    alignas(nlmsghdr) char buf[16384];
    for (;;) {
        ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
        if (n < 0) {
            int err = -errno;
            ::close(fd);
            return err;
        }
        for (auto* nh = reinterpret_cast<nlmsghdr*>(buf); NLMSG_OK(nh, static_cast<unsigned>(n)); nh = NLMSG_NEXT(nh, n)) {
            if (nh->nlmsg_type == NLMSG_DONE) {
                ::close(fd);
                return 0;
            }
            if (nh->nlmsg_type == NLMSG_ERROR) {
                int err = static_cast<nlmsgerr*>(NLMSG_DATA(nh))->error;
                ::close(fd);
                return err;
            }
            on_message(*nh);
        }
        if (!dump || n == 0) break;
    }
    ::close(fd);
    return 0;
}

}  // namespace

std::optional<Interface> interface_by_name(const std::string& name) {
    unsigned idx = if_nametoindex(name.c_str());
    if (idx == 0) return std::nullopt;
    return Interface{static_cast<int>(idx), name};
}

std::optional<Interface> route_interface(const IpAddr& dst, std::string* error) {
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

    int oif = 0;
    int err = netlink_round_trip(req.nh, [&oif](const nlmsghdr& nh) {
        if (nh.nlmsg_type != RTM_NEWROUTE) return;
        auto* rt = static_cast<const rtmsg*>(NLMSG_DATA(&nh));
        int len = RTM_PAYLOAD(&nh);
        for (auto* a = RTM_RTA(rt); RTA_OK(a, len); a = RTA_NEXT(a, len))
            if (a->rta_type == RTA_OIF) oif = *static_cast<const int*>(RTA_DATA(a));
    });
    auto fail = [error](std::string why) -> std::optional<Interface> {
        if (error) *error = std::move(why);
        return std::nullopt;
    };
    if (err) return fail(std::strerror(-err));
    if (!oif) return fail("route has no output interface");
    char name[IF_NAMESIZE] = {};
    if (!if_indextoname(oif, name)) return fail("route via unknown interface index " + std::to_string(oif));
    if (std::string(name) == "lo") return fail("the route points at lo (the address is local)");
    return Interface{oif, name};
}

namespace {

bool prefix_matches(const IpAddr& dst, const unsigned char* prefix, int bits) {
    const int bytes = bits / 8, rest = bits % 8;
    if (std::memcmp(dst.bytes.data(), prefix, bytes) != 0) return false;
    if (rest == 0) return true;
    const unsigned char mask = static_cast<unsigned char>(0xff << (8 - rest));
    return (dst.bytes[bytes] & mask) == (prefix[bytes] & mask);
}

// Tables routing rules look up (FR_ACT_TO_TBL), the local table left out.
std::vector<std::uint32_t> rule_tables(int family) {
    struct {
        nlmsghdr nh;
        fib_rule_hdr frh;
    } req{};
    req.nh.nlmsg_len = NLMSG_LENGTH(sizeof(fib_rule_hdr));
    req.nh.nlmsg_type = RTM_GETRULE;
    req.nh.nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
    req.nh.nlmsg_seq = 1;
    req.frh.family = static_cast<unsigned char>(family);
    std::vector<std::uint32_t> tables;
    netlink_round_trip(req.nh, [&tables](const nlmsghdr& nh) {
        if (nh.nlmsg_type != RTM_NEWRULE) return;
        auto* frh = static_cast<const fib_rule_hdr*>(NLMSG_DATA(&nh));
        if (frh->action != FR_ACT_TO_TBL) return;
        std::uint32_t table = frh->table;
        int len = static_cast<int>(nh.nlmsg_len) - NLMSG_LENGTH(sizeof(fib_rule_hdr));
        for (auto* a = reinterpret_cast<const rtattr*>(reinterpret_cast<const char*>(frh) + NLMSG_ALIGN(sizeof(fib_rule_hdr)));
             RTA_OK(a, len); a = RTA_NEXT(a, len))
            if (a->rta_type == FRA_TABLE) table = *static_cast<const std::uint32_t*>(RTA_DATA(a));
        if (table != RT_TABLE_LOCAL && std::find(tables.begin(), tables.end(), table) == tables.end())
            tables.push_back(table);
    });
    return tables;
}

// The output interfaces of the longest-prefix unicast route to `dst` in
// each of `tables`.
std::vector<int> table_routes(const IpAddr& dst, const std::vector<std::uint32_t>& tables) {
    struct {
        nlmsghdr nh;
        rtmsg rt;
    } req{};
    req.nh.nlmsg_len = NLMSG_LENGTH(sizeof(rtmsg));
    req.nh.nlmsg_type = RTM_GETROUTE;
    req.nh.nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
    req.nh.nlmsg_seq = 1;
    req.rt.rtm_family = dst.is_v4() ? AF_INET : AF_INET6;
    struct Best {
        int bits = -1;
        std::vector<int> oifs;
    };
    std::map<std::uint32_t, Best> best;
    netlink_round_trip(req.nh, [&](const nlmsghdr& nh) {
        if (nh.nlmsg_type != RTM_NEWROUTE) return;
        auto* rt = static_cast<const rtmsg*>(NLMSG_DATA(&nh));
        if (rt->rtm_type != RTN_UNICAST) return;
        std::uint32_t table = rt->rtm_table;
        const unsigned char* prefix = nullptr;
        std::vector<int> oifs;
        int len = RTM_PAYLOAD(&nh);
        for (auto* a = RTM_RTA(rt); RTA_OK(a, len); a = RTA_NEXT(a, len)) {
            switch (a->rta_type) {
            case RTA_TABLE: table = *static_cast<const std::uint32_t*>(RTA_DATA(a)); break;
            case RTA_DST: prefix = static_cast<const unsigned char*>(RTA_DATA(a)); break;
            case RTA_OIF: oifs.push_back(*static_cast<const int*>(RTA_DATA(a))); break;
            case RTA_MULTIPATH: {
                auto* nhp = static_cast<const rtnexthop*>(RTA_DATA(a));
                int left = static_cast<int>(RTA_PAYLOAD(a));
                while (left >= static_cast<int>(sizeof(rtnexthop)) && nhp->rtnh_len >= sizeof(rtnexthop) &&
                       nhp->rtnh_len <= left) {
                    oifs.push_back(nhp->rtnh_ifindex);
                    left -= NLMSG_ALIGN(nhp->rtnh_len);
                    nhp = RTNH_NEXT(nhp);
                }
                break;
            }
            }
        }
        if (std::find(tables.begin(), tables.end(), table) == tables.end()) return;
        int bits = rt->rtm_dst_len;
        if (bits > 0 && (!prefix || !prefix_matches(dst, prefix, bits))) return;
        auto& b = best[table];
        if (bits > b.bits) b = Best{bits, oifs};
        else if (bits == b.bits) b.oifs.insert(b.oifs.end(), oifs.begin(), oifs.end());
    });
    std::vector<int> out;
    for (const auto& [table, b] : best)
        for (int oif : b.oifs)
            if (std::find(out.begin(), out.end(), oif) == out.end()) out.push_back(oif);
    return out;
}

}  // namespace

TargetRoutes target_routes(const IpAddr& dst) {
    TargetRoutes r;
    auto add = [&r](int oif) {
        char name[IF_NAMESIZE] = {};
        if (oif <= 0 || !if_indextoname(oif, name)) return;
        if (std::string(name) == "lo") {
            r.local = true;
            return;
        }
        Interface i{oif, name};
        if (std::find(r.uplinks.begin(), r.uplinks.end(), i) == r.uplinks.end()) r.uplinks.push_back(i);
    };
    std::string why;
    if (auto main = route_interface(dst, &why)) add(main->ifindex);
    else if (why.find("is local") != std::string::npos) r.local = true;
    if (!r.local)
        for (int oif : table_routes(dst, rule_tables(dst.is_v4() ? AF_INET : AF_INET6))) add(oif);
    if (r.uplinks.empty() && !r.local) r.error = why.empty() ? "no route" : why;
    return r;
}

std::optional<std::vector<TcFilter>> tc_filters(int ifindex, bool ingress) {
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

    std::vector<TcFilter> out;
    int err = netlink_round_trip(req.nh, [&out](const nlmsghdr& nh) {
        if (nh.nlmsg_type != RTM_NEWTFILTER) return;
        auto* tc = static_cast<const tcmsg*>(NLMSG_DATA(&nh));
        TcFilter f;
        f.handle = tc->tcm_handle;
        f.priority = static_cast<std::uint16_t>(TC_H_MAJ(tc->tcm_info) >> 16);
        int len = static_cast<int>(nh.nlmsg_len) - NLMSG_LENGTH(sizeof(tcmsg));
        for (auto* a = reinterpret_cast<const rtattr*>(reinterpret_cast<const char*>(tc) + NLMSG_ALIGN(sizeof(tcmsg)));
             RTA_OK(a, len); a = RTA_NEXT(a, len))
            if (a->rta_type == TCA_KIND) f.kind = static_cast<const char*>(RTA_DATA(a));
        out.push_back(std::move(f));
    });
    if (err) return std::nullopt;
    return out;
}

bool has_clsact(int ifindex) {
    struct {
        nlmsghdr nh;
        tcmsg tc;
    } req{};
    req.nh.nlmsg_len = NLMSG_LENGTH(sizeof(tcmsg));
    req.nh.nlmsg_type = RTM_GETQDISC;
    req.nh.nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
    req.nh.nlmsg_seq = 1;
    req.tc.tcm_family = AF_UNSPEC;
    bool found = false;
    netlink_round_trip(req.nh, [&found, ifindex](const nlmsghdr& nh) {
        if (nh.nlmsg_type != RTM_NEWQDISC) return;
        auto* tc = static_cast<const tcmsg*>(NLMSG_DATA(&nh));
        if (tc->tcm_ifindex != ifindex) return;
        int len = static_cast<int>(nh.nlmsg_len) - NLMSG_LENGTH(sizeof(tcmsg));
        for (auto* a = reinterpret_cast<const rtattr*>(reinterpret_cast<const char*>(tc) + NLMSG_ALIGN(sizeof(tcmsg)));
             RTA_OK(a, len); a = RTA_NEXT(a, len))
            if (a->rta_type == TCA_KIND && std::strcmp(static_cast<const char*>(RTA_DATA(a)), "clsact") == 0)
                found = true;
    });
    return found;
}

int tc_filter_count(int ifindex, bool ingress) {
    auto f = tc_filters(ifindex, ingress);
    return f ? static_cast<int>(f->size()) : -1;
}

}  // namespace imdstrace
