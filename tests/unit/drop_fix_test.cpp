// verdict/drop_fix: every drop reason met on the metadata path gets a fix
// naming the thing to change at the place it happened.
#include <gtest/gtest.h>

#include "verdict/drop_fix.hpp"

using namespace imdstrace;

namespace {

DropRecord drop(std::string reason, std::string location, std::string place, bool response = false, int ttl = 64) {
    DropRecord d;
    d.reason = std::move(reason);
    d.location = std::move(location);
    d.place = std::move(place);
    d.response = response;
    d.ttl = static_cast<std::uint8_t>(ttl);
    d.count = 1;
    return d;
}

TEST(DropFix, EveryReasonNamesWhatToChange) {
    NodeFacts node{true, true};
    struct Case {
        DropRecord d;
        const char* must;  // the thing the fix names
    } cases[] = {
        {drop("NETFILTER_DROP", "nf_hook_slow", "pod"), "init container or a sidecar"},
        {drop("NETFILTER_DROP", "nft_do_chain", "node", false, 63), "rule on the node drops it (FORWARD"},
        {drop("NETFILTER_DROP", "nf_hook_slow", "between", false, 63), "the pod's own rules"},
        {drop("BPF_CGROUP_EGRESS", "__cgroup_bpf_run_filter_skb", "pod"), "bpftool cgroup tree"},
        {drop("TC_EGRESS", "sch_handle_egress", "node"), "bpftool net show"},
        {drop("IP_INADDRERRORS", "ip_error", "node"), "ip_forward"},
        {drop("IP_OUTNOROUTES", "ip_route_output", "pod"), "ip route get 169.254.169.254"},
        {drop("IP_RPFILTER", "ip_rcv_finish_core", "node", true, 2), "rp_filter=2"},
        {drop("NEIGH_FAILED", "neigh_invalidate", "node"), "ip neigh"},
        {drop("OTHERHOST", "ip_rcv_core", "pod", true, 63), "neighbour entry"},
        {drop("XFRM_POLICY", "__xfrm_policy_check", "node"), "ip xfrm policy"},
        {drop("IP_CSUM", "ip_rcv_core", "node", true, 1), "checksum"},
        {drop("SOMETHING_NEW", "some_function", "node"), "bpftool net show"},
    };
    for (const auto& c : cases) {
        auto fix = drop_fix(c.d, false, false, node);
        EXPECT_NE(fix.find(c.must), std::string::npos) << c.d.reason << ": " << fix;
        EXPECT_EQ(fix.find("look up"), std::string::npos) << fix;
        EXPECT_EQ(fix.find("look it up"), std::string::npos) << fix;
    }
}

TEST(DropFix, ForwardingOffIsSaidOnlyWhenTheNodeSaysSo) {
    auto d = drop("IP_INADDRERRORS", "ip_error", "node");
    auto off = drop_fix(d, false, false, NodeFacts{false, true});
    EXPECT_NE(off.find("net.ipv4.ip_forward is 0"), std::string::npos) << off;
    EXPECT_NE(off.find("sysctl -w net.ipv4.ip_forward=1"), std::string::npos) << off;
    auto on = drop_fix(d, false, false, NodeFacts{true, true});
    EXPECT_EQ(on.find("is 0"), std::string::npos) << on;
    auto v6 = drop_fix(drop("IP_INADDRERRORS", "ip6_forward", "node"), true, false, NodeFacts{true, false});
    EXPECT_NE(v6.find("net.ipv6.conf.all.forwarding is 0"), std::string::npos) << v6;
}

TEST(DropFix, ChainFollowsPlaceAndDirection) {
    EXPECT_EQ(netfilter_chain(drop("NETFILTER_DROP", "nf_hook_slow", "pod"), false), "OUTPUT");
    EXPECT_EQ(netfilter_chain(drop("NETFILTER_DROP", "nf_hook_slow", "node"), true), "OUTPUT");
    EXPECT_EQ(netfilter_chain(drop("NETFILTER_DROP", "nf_hook_slow", "node"), false), "FORWARD (or PREROUTING)");
    EXPECT_EQ(netfilter_chain(drop("IP_INHDR", "ip_forward", "node", true, 1), false), "");
}

}  // namespace
