#include "verdict/drop_fix.hpp"

#include <fmt/format.h>

namespace imdstrace {
namespace {

bool netfilter(const DropRecord& d) {
    return d.reason == "NETFILTER_DROP" || d.reason == "IPTABLES" || d.location.starts_with("nft_") ||
           d.location.starts_with("ipt_") || d.location.starts_with("ip6t_") || d.location == "nf_hook_slow";
}

std::string at(const DropRecord& d) {
    return fmt::format("{}{}{}", d.location, d.reason.empty() ? "" : ", reason ", d.reason);
}

// The device a drop happened on, or words for it when the kernel named none.
std::string dev_or(const DropRecord& d, const char* otherwise) { return d.device.empty() ? otherwise : d.device; }

}  // namespace

std::string drop_place_words(const DropRecord& d) {
    if (d.place == "pod") return "in the pod's own network namespace";
    if (d.place == "between")
        return "in a network namespace between the client and the node (the pod's own, around its nested containers)";
    if (d.place == "node") return "on the node";
    return "on this node";
}

std::string netfilter_chain(const DropRecord& d, bool client_on_node) {
    if (!netfilter(d)) return {};
    if (!d.response) {
        // A request still in the namespace it was made in has not been routed
        // anywhere: only the local output path can drop it there.
        if (d.place == "pod" || client_on_node) return "OUTPUT";
        // DNAT in PREROUTING made it the node's own: it was routed to INPUT.
        if (d.place == "node" && d.rewritten_to_node) return "INPUT";
        if (d.place == "node" || d.place == "between") return "FORWARD (or PREROUTING)";
        return "OUTPUT or FORWARD";
    }
    if (d.place == "pod") return "INPUT (or PREROUTING)";
    // The reply of a local agent that DNAT sent the request to: it leaves through OUTPUT.
    if (d.place == "node" && d.rewritten_to_node) return "OUTPUT";
    return client_on_node ? "INPUT (or PREROUTING)" : "FORWARD (or PREROUTING)";
}

std::string drop_fix(const DropRecord& d, bool ipv6, bool client_on_node, const NodeFacts& node) {
    const std::string where = drop_place_words(d);
    if (netfilter(d)) {
        auto chain = netfilter_chain(d, client_on_node);
        if (d.place == "pod" || d.place == "between")
            return fmt::format(
                "A netfilter rule {} drops its metadata traffic ({} chain, at {}): the pod's own rules, installed by "
                "an init container or a sidecar (some charts block 169.254.169.254 on purpose). List them from the "
                "node with `nsenter --net=/proc/<pod pid>/ns/net {}-save`; remove the rule, or stop the client from "
                "calling IMDS if blocking it is intended. No node or instance setting changes this.",
                where, chain, at(d), ipv6 ? "ip6tables" : "iptables");
        return fmt::format(
            "A netfilter rule on the node drops it ({} chain, at {}): `{}-save | grep -n -e DROP -e REJECT` and "
            "`nft list ruleset` on the node; look for network-policy chains (Calico, kube-router, Cilium's "
            "iptables mode) and rules matching 169.254.169.254 or the pod's address, and allow the pod's metadata "
            "traffic (or the policy's egress rule for 169.254.169.254/32). No DROP rule? A nat rule that cannot "
            "apply drops too: a REDIRECT on an interface without an IPv4 address (a VPC CNI veth): `{}-save -t nat`.",
            chain, at(d), ipv6 ? "ip6tables" : "iptables", ipv6 ? "ip6tables" : "iptables");
    }
    if (d.reason.starts_with("BPF_CGROUP"))
        return fmt::format("A cgroup BPF program drops it {} ({}): a CNI or network-policy agent's socket filter "
                           "(`bpftool cgroup tree` lists them); allow the pod's metadata traffic in that policy.",
                           where, at(d));
    if (d.reason.starts_with("TC_"))
        return fmt::format("A tc BPF program (a CNI datapath such as Cilium's) drops it {} ({}), not for the TTL: "
                           "`bpftool net show` lists them; check that datapath's policy for 169.254.169.254.",
                           where, at(d));
    if (d.reason == "IP_INADDRERRORS" || d.location == "ip_error" ||
        (d.location == "ip6_forward" && d.reason != "IP_INHDR")) {
        const std::optional<bool> fwd = ipv6 ? node.ipv6_forwarding : node.ipv4_forwarding;
        const char* sysctl = ipv6 ? "net.ipv6.conf.all.forwarding" : "net.ipv4.ip_forward";
        if (fwd == false)
            return fmt::format("The node does not forward pod traffic: {} is 0 here, so {} drops every packet it "
                               "should route ({}). Set `sysctl -w {}=1` and persist it in /etc/sysctl.d (the VPC "
                               "CNI and kubelet expect it on; something on the node turned it off).",
                               sysctl, d.location, at(d), sysctl);
        if (!d.response)
            return fmt::format("The node refused to route the request {} ({}): forwarding is off for the interface it "
                               "came in on ({} and net.ipv{}.conf.{}.forwarding must be 1), or no route fits; check "
                               "`ip route get {} from <pod IP> iif {}` on the node.",
                               where, at(d), sysctl, ipv6 ? 6 : 4, dev_or(d, "<pod's host veth>"),
                               ipv6 ? "fd00:ec2::254" : "169.254.169.254", dev_or(d, "<pod's host veth>"));
        return fmt::format("The node refused to route it {} ({}): no usable route for the pod's traffic on the "
                           "node, or forwarding is off ({} and net.ipv4.conf.<uplink>.forwarding must be 1); check "
                           "`ip route get <pod IP> from 169.254.169.254 iif <uplink>` on the node.",
                           where, at(d), sysctl);
    }
    if (d.reason.ends_with("NOROUTES"))
        return fmt::format("There is no route {} ({}): check `ip route get 169.254.169.254` in the pod and on the "
                           "node, and the node's route back to the pod's address.",
                           where, at(d));
    if (d.reason == "IP_RPFILTER" && !d.response)
        return fmt::format("Reverse-path filtering drops the pod's request {} ({}): the node's route back to the pod's "
                           "address does not go out of {} (a missing or wrong pod route). Check `ip route get <pod IP>` "
                           "on the node, or set net.ipv4.conf.{}.rp_filter=2 (loose).",
                           where, at(d), dev_or(d, "the interface it came in on"), dev_or(d, "<pod's host veth>"));
    if (d.reason == "IP_RPFILTER")
        return fmt::format("Reverse-path filtering drops it {} ({}): the answer arrives on an interface the route "
                           "back does not use (a secondary ENI, policy routing). Set "
                           "net.ipv4.conf.{}.rp_filter=2 (loose), as the VPC CNI does.",
                           where, at(d), dev_or(d, "<uplink>"));
    if (d.reason.starts_with("NEIGH_"))
        return fmt::format("The next hop's link-layer address cannot be resolved {} ({}): check `ip neigh` on the "
                           "uplink and the pod's gateway entry (VPC CNI: 169.254.1.1 must resolve to the host "
                           "veth's MAC).",
                           where, at(d));
    if (d.reason == "OTHERHOST")
        return fmt::format("The packet arrived {} addressed to another host's MAC ({}): the pod's static gateway "
                           "neighbour entry is stale (recreate the pod, or fix the CNI's veth MAC).",
                           where, at(d));
    if (d.reason.starts_with("XFRM"))
        return fmt::format("An IPsec (xfrm) policy drops it {} ({}): `ip xfrm policy`; exempt 169.254.169.254.",
                           where, at(d));
    if (d.reason == "IP_INHDR" || d.reason == "IP_CSUM" || d.reason == "PKT_TOO_SMALL")
        return fmt::format("The kernel found the IP header invalid {} ({}, TTL {}): a datapath rewrote the packet "
                           "badly (checksum, length); check the CNI's and any tc program's packet mangling.",
                           where, at(d), d.ttl);
    return fmt::format("The kernel dropped it {} at {} (TTL {}). That reason is not one imdstrace knows a fix "
                       "for: the --pcap evidence has the packet, and `bpftool net show`, `iptables-save`, `nft list "
                       "ruleset` and `ip rule` on the node cover what usually drops at that place.",
                       where, at(d), d.ttl);
}

}  // namespace imdstrace
