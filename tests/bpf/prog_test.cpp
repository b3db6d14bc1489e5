// The BPF programs, run by the kernel on crafted packets (BPF_PROG_TEST_RUN).
//
// Needs root (CAP_BPF + CAP_NET_ADMIN for skb test runs).  Cases are tables
// of {name, packet, expected event}, katran/cilium style; every run also
// checks the program's return value (observe only: pass, always), the ring
// buffer (exactly the expected events) and the per-CPU counters.
#include <arpa/inet.h>
#include <bpf/bpf.h>
#include <bpf/btf.h>
#include <bpf/libbpf.h>
#include <gtest/gtest.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "decode/observation.hpp"
#include "imdstrace.h"
#include "imdstrace.skel.h"
#include "loader/tracer.hpp"
#include "packet_builder.hpp"

namespace {

using pkt::Bytes;
using pkt::Packet;

constexpr std::uint32_t kTcPass = 0xffffffffu;  // TC_ACT_UNSPEC (-1): continue with the next filter
constexpr std::uint32_t kCgroupPass = 1;

// Targets as the loader would configure them.  The v4 table has a port-0
// ("any port") entry; v6 targets follow the v4 ones in the userspace table.
constexpr const char* kImds4 = "169.254.169.254";
constexpr const char* kAnyPort4 = "198.19.0.9";
constexpr const char* kImds6 = "fd00:ec2::254";
constexpr const char* kPod4 = "198.18.1.5";
constexpr const char* kNode4 = "198.18.0.2";
constexpr const char* kPod6 = "fd00:198:18::5";
constexpr const char* kNode6 = "fd00:198:18::2";

enum class Prog { uplink_ingress, uplink_egress, socket_egress, socket_ingress };
const char* name(Prog p) {
    switch (p) {
    case Prog::uplink_ingress: return "uplink_ingress";
    case Prog::uplink_egress: return "uplink_egress";
    case Prog::socket_egress: return "socket_egress";
    case Prog::socket_ingress: return "socket_ingress";
    }
    return "?";
}
bool is_tc(Prog p) { return p == Prog::uplink_ingress || p == Prog::uplink_egress; }
std::uint8_t hook_of(Prog p) {
    switch (p) {
    case Prog::uplink_ingress: return IMDS_HOOK_UPLINK_INGRESS;
    case Prog::uplink_egress: return IMDS_HOOK_UPLINK_EGRESS;
    case Prog::socket_egress: return IMDS_HOOK_CGROUP_EGRESS;
    case Prog::socket_ingress: return IMDS_HOOK_CGROUP_INGRESS;
    }
    return 0;
}
constexpr Prog kAllProgs[] = {Prog::uplink_ingress, Prog::uplink_egress, Prog::socket_egress, Prog::socket_ingress};
constexpr Prog kEgress[] = {Prog::uplink_egress, Prog::socket_egress};
constexpr Prog kIngress[] = {Prog::uplink_ingress, Prog::socket_ingress};

std::string need_root() {
    if (geteuid() == 0) return {};
    return "the BPF program tests load BPF programs and run them with BPF_PROG_TEST_RUN: they need root "
           "(CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN). Run `sudo ctest --test-dir build -L bpf`, or leave the "
           "`bpf` label out (`ctest -LE bpf`) where there is no root.";
}

struct TargetConfig {
    bool with_v6 = true;
};

// One loaded copy of the imdstrace object with its ring buffer.
class Loaded {
public:
    explicit Loaded(TargetConfig cfg = {}, bool with_tracepoints = false, std::optional<bool> has_reason = {}) {
        skel_ = imdstrace_bpf__open();
        if (!skel_) {
            error_ = std::string("imdstrace_bpf__open: ") + std::strerror(errno);
            return;
        }
        auto* ro = skel_->rodata;
        auto v4 = [&](int i, const char* addr, std::uint16_t port) {
            inet_pton(AF_INET, addr, const_cast<__be32*>(&ro->target_v4_addr[i]));
            const_cast<__be16&>(ro->target_v4_port[i]) = htons(port);
        };
        v4(0, kImds4, 80);
        v4(1, kAnyPort4, 0);
        const_cast<__u32&>(ro->n_targets_v4) = 2;
        if (cfg.with_v6) {
            inet_pton(AF_INET6, kImds6, const_cast<__u32*>(ro->target_v6_addr[0]));
            const_cast<__be16&>(ro->target_v6_port[0]) = htons(80);
            const_cast<__u32&>(ro->n_targets_v6) = 1;
        }
        const_cast<__u32&>(ro->target_v6_base) = 2;
        // The HTTP proxy ports, as the tracer configures them by default (--proxy-ports).
        for (auto port : imdstrace::TracerConfig::default_proxy_ports())
            const_cast<__u8&>(ro->proxy_port_bits[port >> 3]) |= static_cast<__u8>(1u << (port & 7));
        auto kf = imdstrace::KernelFeatures::probe();
        // As the tracer configures it (loader/tracer.cpp). The receiving-socket argument (6.11+)
        // follows the reason (5.17+): a kernel without reasons has neither, and a kernel without
        // rx_sk (6.1) rejects a program that reads it.
        const bool reason = has_reason.value_or(kf.kfree_skb_reason);
        const_cast<bool&>(ro->kfree_skb_has_reason) = reason;
        const_cast<bool&>(ro->kfree_skb_has_rx_sk) = reason && kf.kfree_skb_rx_sk;
        // PROG_TEST_RUN does not apply to tracing programs: load them only
        // when a test asks for the verifier's verdict on them.
        bpf_program__set_autoload(skel_->progs.observe_drop, with_tracepoints);
        bpf_program__set_autoload(skel_->progs.observe_icmp_send, with_tracepoints && kf.icmp_send_tracepoint);
        if (int err = imdstrace_bpf__load(skel_)) {
            error_ = std::string("imdstrace_bpf__load: ") + std::strerror(-err);
            return;
        }
        ring_ = ring_buffer__new(bpf_map__fd(skel_->maps.events), &Loaded::on_event, this, nullptr);
        if (!ring_) error_ = std::string("ring_buffer__new: ") + std::strerror(errno);
    }
    ~Loaded() {
        if (ring_) ring_buffer__free(ring_);
        if (skel_) imdstrace_bpf__destroy(skel_);
    }
    Loaded(const Loaded&) = delete;
    Loaded& operator=(const Loaded&) = delete;

    const std::string& error() const { return error_; }
    imdstrace_bpf* skel() { return skel_; }

    bpf_program* prog(Prog p) {
        switch (p) {
        case Prog::uplink_ingress: return skel_->progs.uplink_ingress;
        case Prog::uplink_egress: return skel_->progs.uplink_egress;
        case Prog::socket_egress: return skel_->progs.socket_egress;
        case Prog::socket_ingress: return skel_->progs.socket_ingress;
        }
        return nullptr;
    }

    struct Run {
        int err = 0;
        std::uint32_t retval = 0;
        std::vector<Bytes> records;
    };

    Run run(Prog p, const Bytes& frame) {
        drain();
        Run r;
        LIBBPF_OPTS(bpf_test_run_opts, opts, .data_in = frame.data(),
                    .data_size_in = static_cast<__u32>(frame.size()), .repeat = 1);
        r.err = bpf_prog_test_run_opts(bpf_program__fd(prog(p)), &opts);
        r.retval = opts.retval;
        ring_buffer__consume(ring_);
        r.records = std::move(records_);
        records_.clear();
        return r;
    }

    // Sum over CPUs of counters[hook][what].
    std::uint64_t counter(std::uint8_t hook, std::uint32_t what) {
        int ncpu = libbpf_num_possible_cpus();
        std::vector<std::uint64_t> values(ncpu > 0 ? ncpu : 1);
        std::uint32_t key = hook * IMDS_CNT_MAX + what;
        if (bpf_map_lookup_elem(bpf_map__fd(skel_->maps.counters), &key, values.data()) != 0) return ~0ull;
        std::uint64_t sum = 0;
        for (auto v : values) sum += v;
        return sum;
    }

    void drain() {
        ring_buffer__consume(ring_);
        records_.clear();
    }

private:
    static int on_event(void* ctx, void* data, size_t size) {
        auto* self = static_cast<Loaded*>(ctx);
        auto* b = static_cast<const std::uint8_t*>(data);
        self->records_.emplace_back(b, b + size);
        return 0;
    }

    imdstrace_bpf* skel_ = nullptr;
    ring_buffer* ring_ = nullptr;
    std::vector<Bytes> records_;
    std::string error_;
};

// What one event must say.  Addresses as text; ports in host order.
struct Expect {
    std::uint8_t direction;
    const char* saddr;
    const char* daddr;
    std::uint16_t sport, dport;
    std::uint8_t ttl;
    std::uint32_t seq, ack;
    std::uint8_t tcp_flags;
    std::uint32_t payload_len;
    Bytes copied;  // the bytes payload[] must start with (copied == size)
    std::uint8_t target_index;
    std::uint8_t ip_proto = pkt::PROTO_TCP;
    std::uint16_t ip_id = 0;
    std::uint8_t icmp_type = 0, icmp_code = 0;
    std::uint8_t flags = 0;  // IMDS_F_* beyond SK_PRESENT that must be set (TRUNCATED, ICMP_QUOTE)
};

std::uint64_t monotonic_ns() {
    timespec ts{};
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return static_cast<std::uint64_t>(ts.tv_sec) * 1'000'000'000ull + ts.tv_nsec;
}

Bytes addr16(const char* text) {
    Bytes a = pkt::addr_bytes(text);
    a.resize(16, 0);
    return a;
}

void check_event(const Bytes& record, Prog p, const Expect& x, std::uint64_t before_ns) {
    ASSERT_GE(record.size(), sizeof(imds_event));
    imds_event e;
    std::memcpy(&e, record.data(), sizeof(e));
    const bool v6 = std::strchr(x.saddr, ':') != nullptr;
    EXPECT_EQ(e.hook, hook_of(p));
    EXPECT_EQ(e.direction, x.direction);
    EXPECT_EQ(e.family, v6 ? IMDS_AF_INET6 : IMDS_AF_INET);
    EXPECT_EQ(Bytes(e.saddr, e.saddr + 16), addr16(x.saddr));
    EXPECT_EQ(Bytes(e.daddr, e.daddr + 16), addr16(x.daddr));
    EXPECT_EQ(ntohs(e.sport), x.sport);
    EXPECT_EQ(ntohs(e.dport), x.dport);
    EXPECT_EQ(e.ttl, x.ttl);
    EXPECT_EQ(e.seq, x.seq);
    EXPECT_EQ(e.ack_seq, x.ack);
    EXPECT_EQ(e.tcp_flags, x.tcp_flags);
    EXPECT_EQ(e.ip_proto, x.ip_proto);
    EXPECT_EQ(e.ip_id, x.ip_id);
    EXPECT_EQ(e.icmp_type, x.icmp_type);
    EXPECT_EQ(e.icmp_code, x.icmp_code);
    EXPECT_EQ(e.target_index, x.target_index);
    EXPECT_EQ(e.payload_len, x.payload_len);
    ASSERT_EQ(e.copied, x.copied.size());
    // Sized to what it carries: the header, then exactly the copied payload.
    ASSERT_EQ(record.size(), sizeof(imds_event) + e.copied);
    EXPECT_EQ(Bytes(record.begin() + sizeof(imds_event), record.end()), x.copied);
    EXPECT_EQ(e.flags & ~IMDS_F_SK_PRESENT, x.flags);
    EXPECT_EQ((e.flags & IMDS_F_SK_PRESENT) != 0, e.sk_cookie != 0);
    // Fields only drop/tracepoint events carry.
    EXPECT_EQ(e.drop_reason, 0u);
    EXPECT_EQ(e.location, 0u);
    EXPECT_EQ(e.netns, 0u);
    // BPF_PROG_TEST_RUN puts the skb on the loopback device.
    EXPECT_EQ(e.ifindex, 1u);
    // The cgroup id is the socket's, at the socket hooks only.
    if (is_tc(p)) {
        EXPECT_EQ(e.cgroup_id, 0u);
    } else {
        EXPECT_NE(e.cgroup_id, 0u);
    }
    EXPECT_GE(e.ts_ns, before_ns);
    EXPECT_LE(e.ts_ns, monotonic_ns());
    for (std::uint8_t b : e.pad) EXPECT_EQ(b, 0);
}

// --- fixture ---------------------------------------------------------------

class BpfProgTest : public ::testing::Test {
protected:
    void SetUp() override {
        auto why = need_root();
        ASSERT_TRUE(why.empty()) << why;
        bpf = std::make_unique<Loaded>();
        ASSERT_TRUE(bpf->error().empty()) << bpf->error() << " (kernel " << imdstrace::KernelFeatures::probe().release
                                          << "; run with LIBBPF_LOG_LEVEL=debug for the verifier log)";
    }

    // Run `frame` through `p`; the program must pass it, and emit exactly the
    // expected event (or none), with counters to match.
    // may_refuse: the kernel itself may refuse to build such an skb.  Linux
    // 6.18 answers EINVAL for a frame whose IP header is incomplete; kernels
    // that run the program on it must see it passed without an event.
    void expect_run(const std::string& what, Prog p, const Bytes& frame, const std::optional<Expect>& want,
                    bool may_refuse = false) {
        SCOPED_TRACE(what + " via " + name(p));
        const std::uint8_t hook = hook_of(p);
        const auto seen0 = bpf->counter(hook, IMDS_CNT_SEEN), emitted0 = bpf->counter(hook, IMDS_CNT_EMITTED),
                   lost0 = bpf->counter(hook, IMDS_CNT_LOST);
        const auto before = monotonic_ns();
        auto r = bpf->run(p, frame);
        if (may_refuse && r.err == -EINVAL) {
            EXPECT_TRUE(r.records.empty());
            return;
        }
        ASSERT_EQ(r.err, 0) << std::strerror(-r.err);
        EXPECT_EQ(r.retval, is_tc(p) ? kTcPass : kCgroupPass) << "observe only: every packet passes";
        if (!want) {
            EXPECT_EQ(r.records.size(), 0u) << "no event for this packet";
            EXPECT_EQ(bpf->counter(hook, IMDS_CNT_SEEN), seen0);
            EXPECT_EQ(bpf->counter(hook, IMDS_CNT_EMITTED), emitted0);
            return;
        }
        ASSERT_EQ(r.records.size(), 1u) << "exactly one event";
        check_event(r.records[0], p, *want, before);
        EXPECT_EQ(bpf->counter(hook, IMDS_CNT_SEEN), seen0 + 1);
        EXPECT_EQ(bpf->counter(hook, IMDS_CNT_EMITTED), emitted0 + 1);
        EXPECT_EQ(bpf->counter(hook, IMDS_CNT_LOST), lost0);
        EXPECT_EQ(bpf->counter(hook, IMDS_CNT_DROPS_SEEN), 0u);
        last_record = r.records[0];
    }

    std::unique_ptr<Loaded> bpf;
    Bytes last_record;
};

const std::string kPut =
    "PUT /latest/api/token HTTP/1.1\r\nHost: 169.254.169.254\r\nUser-Agent: aws-sdk-go-v2/1.30.3\r\n"
    "X-aws-ec2-metadata-token-ttl-seconds: 21600\r\nContent-Length: 0\r\n\r\n";
const std::string kResponse = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 56\r\n\r\n"
                              "AQAEAFakeT0kenValue_zz9XyWq1bM3r7QeKd2ZkLhJ5cQ==AQAEAFake";

// MSS, SACK-permitted, timestamps, window scale: a real SYN's options.
Bytes syn_options() {
    return {2, 4, 0x05, 0xb4, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 3, 7};
}

struct TargetCase {
    const char* name;
    Packet packet;
    Expect expect;
};

// Target traffic: each packet through both hooks of its direction.
std::vector<TargetCase> to_target_cases() {
    return {
        {"v4 SYN with options",
         Packet::v4(kPod4, kImds4).ttl(64).ip_id(0x1234).tcp(43122, 80).seq(1000).flags(pkt::SYN).tcp_options(syn_options()),
         {IMDS_DIR_TO_TARGET, kPod4, kImds4, 43122, 80, 64, 1000, 0, pkt::SYN, 0, {}, 0, pkt::PROTO_TCP, 0x1234}},
        {"v4 token PUT",
         Packet::v4(kPod4, kImds4).ttl(63).ip_id(7).tcp(43122, 80).seq(1001).ack(5001).flags(pkt::PSH | pkt::ACK).payload(kPut),
         {IMDS_DIR_TO_TARGET, kPod4, kImds4, 43122, 80, 63, 1001, 5001, pkt::PSH | pkt::ACK,
          static_cast<std::uint32_t>(kPut.size()), pkt::as_bytes(kPut), 0, pkt::PROTO_TCP, 7}},
        {"v4 request larger than the copy",
         Packet::v4(kNode4, kImds4).tcp(61000, 80).seq(1).ack(2).payload(std::string(600, 'x')),
         {IMDS_DIR_TO_TARGET, kNode4, kImds4, 61000, 80, 64, 1, 2, pkt::ACK, 600, Bytes(IMDS_PAYLOAD_MAX, 'x'), 0,
          pkt::PROTO_TCP, 0, 0, 0, IMDS_F_TRUNCATED}},
        {"v4 FIN",
         Packet::v4(kPod4, kImds4).tcp(43122, 80).seq(1200).ack(5400).flags(pkt::FIN | pkt::ACK),
         {IMDS_DIR_TO_TARGET, kPod4, kImds4, 43122, 80, 64, 1200, 5400, pkt::FIN | pkt::ACK, 0, {}, 0}},
        {"v4 any-port target",
         Packet::v4(kPod4, kAnyPort4).tcp(40000, 8080).seq(9).flags(pkt::SYN),
         {IMDS_DIR_TO_TARGET, kPod4, kAnyPort4, 40000, 8080, 64, 9, 0, pkt::SYN, 0, {}, 1}},
        {"v6 SYN",
         Packet::v6(kPod6, kImds6).ttl(64).tcp(50000, 80).seq(0xfffffff0u).flags(pkt::SYN).tcp_options(syn_options()),
         {IMDS_DIR_TO_TARGET, kPod6, kImds6, 50000, 80, 64, 0xfffffff0u, 0, pkt::SYN, 0, {}, 2}},
        {"v6 token PUT",
         Packet::v6(kPod6, kImds6).ttl(63).tcp(50000, 80).seq(1).ack(2).flags(pkt::PSH | pkt::ACK).payload(kPut),
         {IMDS_DIR_TO_TARGET, kPod6, kImds6, 50000, 80, 63, 1, 2, pkt::PSH | pkt::ACK,
          static_cast<std::uint32_t>(kPut.size()), pkt::as_bytes(kPut), 2}},
    };
}

std::vector<TargetCase> from_target_cases() {
    return {
        {"v4 SYN-ACK",
         Packet::v4(kImds4, kPod4).ttl(64).ip_id(0).tcp(80, 43122).seq(5000).ack(1001).flags(pkt::SYN | pkt::ACK)
             .tcp_options(syn_options()),
         {IMDS_DIR_FROM_TARGET, kImds4, kPod4, 80, 43122, 64, 5000, 1001, pkt::SYN | pkt::ACK, 0, {}, 0}},
        {"v4 token response, TTL 1",
         Packet::v4(kImds4, kPod4).ttl(1).ip_id(0xbeef).tcp(80, 43122).seq(5001).ack(1001 + kPut.size())
             .flags(pkt::PSH | pkt::ACK).payload(kResponse),
         {IMDS_DIR_FROM_TARGET, kImds4, kPod4, 80, 43122, 1, 5001, static_cast<std::uint32_t>(1001 + kPut.size()),
          pkt::PSH | pkt::ACK, static_cast<std::uint32_t>(kResponse.size()), pkt::as_bytes(kResponse), 0,
          pkt::PROTO_TCP, 0xbeef}},
        {"v4 RST",
         Packet::v4(kImds4, kPod4).tcp(80, 43122).seq(0).ack(1001).flags(pkt::RST | pkt::ACK),
         {IMDS_DIR_FROM_TARGET, kImds4, kPod4, 80, 43122, 64, 0, 1001, pkt::RST | pkt::ACK, 0, {}, 0}},
        {"v6 token response, hop limit 1",
         Packet::v6(kImds6, kPod6).ttl(1).tcp(80, 50000).seq(77).ack(78).flags(pkt::PSH | pkt::ACK).payload(kResponse),
         {IMDS_DIR_FROM_TARGET, kImds6, kPod6, 80, 50000, 1, 77, 78, pkt::PSH | pkt::ACK,
          static_cast<std::uint32_t>(kResponse.size()), pkt::as_bytes(kResponse), 2}},
    };
}

TEST_F(BpfProgTest, TargetPacketsToTheEndpoint) {
    for (const auto& c : to_target_cases()) {
        for (Prog p : kEgress) expect_run(c.name, p, c.packet.frame(), c.expect);
        // Ingress hooks match the source address: a packet to the target is not theirs.
        for (Prog p : kIngress) expect_run(std::string(c.name) + " (wrong direction)", p, c.packet.frame(), std::nullopt);
    }
}

TEST_F(BpfProgTest, TargetPacketsFromTheEndpoint) {
    for (const auto& c : from_target_cases()) {
        for (Prog p : kIngress) expect_run(c.name, p, c.packet.frame(), c.expect);
        // A local socket sending FROM a target address answers for it (a
        // node-local agent, or a proxy behind DNAT): cgroup egress keeps it.
        // Leaving through an uplink, such a packet is not the node's concern.
        for (Prog p : kEgress)
            expect_run(std::string(c.name) + (p == Prog::socket_egress ? " (a local answer)" : " (wrong direction)"), p,
                       c.packet.frame(), p == Prog::socket_egress ? std::optional<Expect>(c.expect) : std::nullopt);
    }
}

TEST_F(BpfProgTest, NonTargetPacketsProduceNothing) {
    struct Case {
        const char* name;
        Bytes frame;
    } cases[] = {
        {"v4 other address", Packet::v4(kPod4, "198.18.0.1").tcp(43122, 80).seq(1).flags(pkt::SYN).frame()},
        {"v4 other address, from it", Packet::v4("198.18.0.1", kPod4).tcp(80, 43122).payload(kResponse).frame()},
        {"v4 target address, other port", Packet::v4(kPod4, kImds4).tcp(43122, 8080).flags(pkt::SYN).frame()},
        {"v4 from target, other port", Packet::v4(kImds4, kPod4).tcp(8080, 43122).payload(kResponse).frame()},
        {"v4 UDP to target port 80", Packet::v4(kPod4, kImds4).udp(5353, 80).payload("hello").frame()},
        {"v4 UDP from target port 80", Packet::v4(kImds4, kPod4).udp(80, 5353).payload("hello").frame()},
        {"v6 other address", Packet::v6(kPod6, "fd00:198:18::1").tcp(50000, 80).flags(pkt::SYN).frame()},
        {"v6 target address, other port", Packet::v6(kPod6, kImds6).tcp(50000, 443).flags(pkt::SYN).frame()},
        {"v6 from target, other port", Packet::v6(kImds6, kPod6).tcp(443, 50000).payload(kResponse).frame()},
        {"v6 UDP to target", Packet::v6(kPod6, kImds6).udp(5353, 80).payload("x").frame()},
        {"v4-mapped v6 to target", Packet::v6(kPod6, "::ffff:169.254.169.254").tcp(50000, 80).frame()},
        {"ARP", pkt::ethernet(0x0806, Bytes(28, 0))},
        {"v4 ethertype, v6 packet", pkt::ethernet(pkt::ETH_IPV4, Packet::v6(kPod6, kImds6).tcp(1, 80).l3())},
    };
    for (const auto& c : cases)
        for (Prog p : kAllProgs) expect_run(c.name, p, c.frame, std::nullopt);
}

// The node answers an expired response with ICMP time exceeded toward the
// target, quoting the response: the uplink egress and the socket egress
// hooks report the quoted tuple.
TEST_F(BpfProgTest, IcmpErrorsAboutTargetTraffic) {
    const auto quoted4 = Packet::v4(kImds4, kPod4).ttl(1).ip_id(0x4242).tcp(80, 43122).seq(5001).ack(1100)
                             .flags(pkt::PSH | pkt::ACK).payload(kResponse).l3();
    const auto quoted6 = Packet::v6(kImds6, kPod6).ttl(1).tcp(80, 50000).seq(77).ack(78).payload(kResponse).l3();
    struct Case {
        const char* name;
        Bytes frame;
        Expect expect;
    } cases[] = {
        {"v4 time exceeded, RFC 792 quote (IP header + 8 bytes)",
         Packet::v4(kNode4, kImds4).ttl(64).icmp_error(11, 0, quoted4, 20 + 8).frame(),
         {IMDS_DIR_ICMP_ABOUT, kImds4, kPod4, 80, 43122, 1, 5001, 0, 0, 0, {}, 0, pkt::PROTO_ICMP, 0x4242, 11, 0,
          IMDS_F_ICMP_QUOTE}},
        {"v4 time exceeded, long quote (Linux quotes up to 576 bytes)",
         Packet::v4(kNode4, kImds4).ttl(64).icmp_error(11, 0, quoted4).frame(),
         {IMDS_DIR_ICMP_ABOUT, kImds4, kPod4, 80, 43122, 1, 5001, 0, 0, 0, {}, 0, pkt::PROTO_ICMP, 0x4242, 11, 0,
          IMDS_F_ICMP_QUOTE}},
        {"v4 unreachable (host prohibited)",
         Packet::v4(kNode4, kImds4).icmp_error(3, 10, quoted4, 28).frame(),
         {IMDS_DIR_ICMP_ABOUT, kImds4, kPod4, 80, 43122, 1, 5001, 0, 0, 0, {}, 0, pkt::PROTO_ICMP, 0x4242, 3, 10,
          IMDS_F_ICMP_QUOTE}},
        {"v6 time exceeded",
         Packet::v6(kNode6, kImds6).ttl(64).icmp_error(3, 0, quoted6, 40 + 8).frame(),
         {IMDS_DIR_ICMP_ABOUT, kImds6, kPod6, 80, 50000, 1, 77, 0, 0, 0, {}, 2, pkt::PROTO_ICMPV6, 0, 3, 0,
          IMDS_F_ICMP_QUOTE}},
    };
    for (const auto& c : cases) {
        for (Prog p : kEgress) expect_run(c.name, p, c.frame, c.expect);
        for (Prog p : kIngress) expect_run(std::string(c.name) + " (ingress)", p, c.frame, std::nullopt);
    }
}

TEST_F(BpfProgTest, IcmpNotAboutTargetTraffic) {
    const auto from_other = Packet::v4("198.18.0.1", kPod4).ttl(1).tcp(80, 43122).seq(1).l3();
    const auto udp_from_target = Packet::v4(kImds4, kPod4).ttl(1).udp(80, 43122).l3();
    const auto other_port = Packet::v4(kImds4, kPod4).ttl(1).tcp(8080, 43122).l3();
    const auto to_target = Packet::v4(kPod4, kImds4).ttl(1).tcp(43122, 80).l3();
    struct Case {
        const char* name;
        Bytes frame;
    } cases[] = {
        {"echo request to target", Packet::v4(kNode4, kImds4).icmp_error(8, 0, Bytes(32, 0xaa)).frame()},
        {"time exceeded quoting another source", Packet::v4(kNode4, kImds4).icmp_error(11, 0, from_other, 28).frame()},
        {"time exceeded quoting UDP from target", Packet::v4(kNode4, kImds4).icmp_error(11, 0, udp_from_target, 28).frame()},
        {"time exceeded quoting another port", Packet::v4(kNode4, kImds4).icmp_error(11, 0, other_port, 28).frame()},
        {"time exceeded quoting a packet to the target",
         Packet::v4(kNode4, kImds4).icmp_error(11, 0, to_target, 28).frame()},
        {"time exceeded to another address", Packet::v4(kNode4, "198.18.0.1").icmp_error(11, 0, Packet::v4(kImds4, kPod4).tcp(80, 1).l3(), 28).frame()},
        {"quote cut inside the quoted IP header", Packet::v4(kNode4, kImds4).icmp_error(11, 0, Packet::v4(kImds4, kPod4).tcp(80, 1).l3(), 16).frame()},
        {"quote with 4 bytes of TCP", Packet::v4(kNode4, kImds4).icmp_error(11, 0, Packet::v4(kImds4, kPod4).tcp(80, 1).l3(), 24).frame()},
        {"v6 echo request to target", Packet::v6(kNode6, kImds6).icmp_error(128, 0, Bytes(16, 0)).frame()},
        {"v6 quote cut", Packet::v6(kNode6, kImds6).icmp_error(3, 0, Packet::v6(kImds6, kPod6).tcp(80, 1).l3(), 30).frame()},
    };
    for (const auto& c : cases)
        for (Prog p : kAllProgs) expect_run(c.name, p, c.frame, std::nullopt);
}

// Malformed and cut packets: no crash, the packet passes, and no event or
// an honestly truncated one.
TEST_F(BpfProgTest, TruncatedPackets) {
    const auto put4 = Packet::v4(kPod4, kImds4).tcp(43122, 80).seq(1001).ack(5001).flags(pkt::PSH | pkt::ACK).payload(kPut);
    const auto put6 = Packet::v6(kPod6, kImds6).tcp(50000, 80).seq(1001).ack(5001).flags(pkt::PSH | pkt::ACK).payload(kPut);
    struct Case {
        const char* name;
        Bytes frame;
        bool may_refuse;
    } none[] = {
        {"Ethernet header only", pkt::ethernet(pkt::ETH_IPV4, {}), true},
        {"v4 header cut at 12 bytes", pkt::cut(put4.frame(), 14 + 12), true},
        {"v4 header cut at 19 bytes", pkt::cut(put4.frame(), 14 + 19), true},
        {"v6 header cut", pkt::cut(put6.frame(), 14 + 30), true},
        {"v4 TCP header cut at 10 bytes", pkt::cut(put4.frame(), 14 + 20 + 10), false},
        {"v4 TCP header cut at 19 bytes", pkt::cut(put4.frame(), 14 + 20 + 19), false},
        {"v6 TCP header cut", pkt::cut(put6.frame(), 14 + 40 + 12), false},
    };
    for (const auto& c : none)
        for (Prog p : kAllProgs) expect_run(c.name, p, c.frame, std::nullopt, c.may_refuse);

    // The IP length promises more payload than the packet has: the event
    // says how long the payload is and copies what is there.
    auto lying4 = Packet::v4(kPod4, kImds4).tcp(43122, 80).seq(1001).ack(5001).flags(pkt::PSH | pkt::ACK)
                      .payload(kPut.substr(0, 50)).ip_length(20 + 20 + 200);
    auto lying6 = Packet::v6(kPod6, kImds6).tcp(50000, 80).seq(1001).ack(5001).flags(pkt::PSH | pkt::ACK)
                      .payload(kPut.substr(0, 50)).ip_length(20 + 200);
    for (Prog p : kEgress) {
        expect_run("v4 payload shorter than the IP length", p, lying4.frame(),
                   Expect{IMDS_DIR_TO_TARGET, kPod4, kImds4, 43122, 80, 64, 1001, 5001, pkt::PSH | pkt::ACK, 200,
                          pkt::as_bytes(kPut.substr(0, 50)), 0, pkt::PROTO_TCP, 0, 0, 0, IMDS_F_TRUNCATED});
        expect_run("v6 payload shorter than the IP length", p, lying6.frame(),
                   Expect{IMDS_DIR_TO_TARGET, kPod6, kImds6, 50000, 80, 64, 1001, 5001, pkt::PSH | pkt::ACK, 200,
                          pkt::as_bytes(kPut.substr(0, 50)), 2, pkt::PROTO_TCP, 0, 0, 0, IMDS_F_TRUNCATED});
    }

    // Trailing bytes after the IP length (Ethernet padding): not payload.
    auto padded = put4.frame();
    padded.insert(padded.end(), 18, 0);
    auto syn = Packet::v4(kPod4, kImds4).tcp(43122, 80).seq(1).flags(pkt::SYN).frame();
    syn.insert(syn.end(), 6, 0);  // a 54-byte SYN padded to the 60-byte Ethernet minimum
    for (Prog p : kEgress) {
        expect_run("v4 request with Ethernet padding", p, padded,
                   Expect{IMDS_DIR_TO_TARGET, kPod4, kImds4, 43122, 80, 64, 1001, 5001, pkt::PSH | pkt::ACK,
                          static_cast<std::uint32_t>(kPut.size()), pkt::as_bytes(kPut), 0});
        expect_run("v4 SYN with Ethernet padding", p, syn,
                   Expect{IMDS_DIR_TO_TARGET, kPod4, kImds4, 43122, 80, 64, 1, 0, pkt::SYN, 0, {}, 0});
    }

    // A TCP data offset below the minimum header is not TCP a kernel accepts.
    auto bad_doff = put4.frame();
    bad_doff[14 + 20 + 12] = 0x20;  // doff = 2 words
    for (Prog p : kEgress) expect_run("TCP data offset < 5", p, bad_doff, std::nullopt);
    // Nor is an IPv4 header length below 20 bytes.
    auto bad_ihl = put4.frame();
    bad_ihl[14] = 0x44;
    for (Prog p : kEgress) expect_run("IPv4 IHL < 5", p, bad_ihl, std::nullopt);
    // An IHL pointing past the end of a short packet: no TCP header to read.
    auto long_ihl = pkt::cut(put4.frame(), 14 + 20 + 16);
    long_ihl[14] = 0x4f;  // 60-byte header
    for (Prog p : kEgress) expect_run("IPv4 IHL past the end", p, long_ihl, std::nullopt, true);
}

// An IPv4 header with options: the TCP header follows the options.
TEST_F(BpfProgTest, Ipv4Options) {
    auto l3 = Packet::v4(kPod4, kImds4).tcp(43122, 80).seq(1001).ack(5001).flags(pkt::PSH | pkt::ACK).payload(kPut).l3();
    // Insert 4 bytes of options (NOP x3, EOL) and fix IHL and total length.
    l3.insert(l3.begin() + 20, {1, 1, 1, 0});
    l3[0] = 0x46;
    pkt::set16(l3, 2, static_cast<std::uint16_t>(l3.size()));
    for (Prog p : kEgress)
        expect_run("v4 with options", p, pkt::ethernet(pkt::ETH_IPV4, l3),
                   Expect{IMDS_DIR_TO_TARGET, kPod4, kImds4, 43122, 80, 64, 1001, 5001, pkt::PSH | pkt::ACK,
                          static_cast<std::uint32_t>(kPut.size()), pkt::as_bytes(kPut), 0});
}

// The kernel's event decodes into the observation the correlator expects.
TEST_F(BpfProgTest, EventsDecode) {
    auto resp = Packet::v4(kImds4, kNode4).ttl(1).tcp(80, 61000).seq(5001).ack(1100).flags(pkt::PSH | pkt::ACK)
                    .payload(kResponse);
    expect_run("response", Prog::uplink_ingress, resp.frame(),
               Expect{IMDS_DIR_FROM_TARGET, kImds4, kNode4, 80, 61000, 1, 5001, 1100, pkt::PSH | pkt::ACK,
                      static_cast<std::uint32_t>(kResponse.size()), pkt::as_bytes(kResponse), 0});
    auto o = imdstrace::decode_event(last_record);
    ASSERT_TRUE(o);
    EXPECT_EQ(o->hook, imdstrace::Hook::uplink_ingress);
    EXPECT_EQ(o->flow.client.str(), "198.18.0.2:61000");
    EXPECT_EQ(o->flow.server.str(), "169.254.169.254:80");
    ASSERT_TRUE(o->response);
    EXPECT_EQ(o->response->status, 200);

    auto put = Packet::v6(kPod6, kImds6).tcp(50000, 80).seq(1).payload(
        "GET /latest/meta-data/mac HTTP/1.1\r\nX-aws-ec2-metadata-token: AQAEAsecret\r\n\r\n");
    auto r = bpf->run(Prog::socket_egress, put.frame());
    ASSERT_EQ(r.records.size(), 1u);
    auto q = imdstrace::decode_event(r.records[0]);
    ASSERT_TRUE(q && q->request);
    EXPECT_EQ(q->flow.client.str(), "[fd00:198:18::5]:50000");
    EXPECT_EQ(q->request->path, "/latest/meta-data/mac");
    EXPECT_TRUE(q->request->token);
    EXPECT_NE(q->cgroup_id, 0u);
}

// A pod's metadata request to an HTTP proxy (absolute URI) is a metadata
// request; any other request to the same proxy is not.  Once a proxied
// request was seen, the proxy's answers on that connection are followed.
TEST_F(BpfProgTest, AbsoluteUriRequestsToAProxy) {
    constexpr const char* kProxy = "198.18.0.2";
    // A port no proxy is configured on (--proxy-ports) is not looked into.
    auto unlisted = Packet::v4(kPod4, kProxy).tcp(41002, 9999).seq(1).flags(pkt::PSH | pkt::ACK)
                        .payload("GET http://169.254.169.254/latest/meta-data/ HTTP/1.1\r\n\r\n");
    expect_run("a metadata request to a port not in --proxy-ports", Prog::socket_egress, unlisted.frame(), std::nullopt);
    auto other = Packet::v4(kPod4, kProxy).tcp(41000, 3128).seq(1).flags(pkt::PSH | pkt::ACK)
                     .payload("GET http://example.com/index.html HTTP/1.1\r\nHost: example.com\r\n\r\n");
    expect_run("a proxied request for another host", Prog::socket_egress, other.frame(), std::nullopt);

    auto put = Packet::v4(kPod4, kProxy).tcp(41001, 3128).seq(1).flags(pkt::PSH | pkt::ACK)
                   .payload("PUT http://169.254.169.254/latest/api/token HTTP/1.1\r\nHost: 169.254.169.254\r\n"
                            "X-aws-ec2-metadata-token-ttl-seconds: 21600\r\n\r\n");
    auto r = bpf->run(Prog::socket_egress, put.frame());
    ASSERT_EQ(r.records.size(), 1u);
    auto q = imdstrace::decode_event(r.records[0]);
    ASSERT_TRUE(q && q->request);
    EXPECT_TRUE(q->via_proxy);
    EXPECT_EQ(q->flow.server.str(), "198.18.0.2:3128");
    EXPECT_EQ(q->request->absolute_authority, "169.254.169.254");
    EXPECT_TRUE(q->request->is_token_request());

    auto answer = Packet::v4(kProxy, kPod4).tcp(3128, 41001).seq(9).flags(pkt::PSH | pkt::ACK).payload(kResponse);
    auto a = bpf->run(Prog::socket_ingress, answer.frame());
    ASSERT_EQ(a.records.size(), 1u) << "the proxy's answer on that connection";
    auto ao = imdstrace::decode_event(a.records[0]);
    ASSERT_TRUE(ao && ao->response);
    EXPECT_TRUE(ao->via_proxy);
    EXPECT_EQ(ao->flow.client.str(), "198.18.1.5:41001");

    auto unrelated = Packet::v4(kProxy, kPod4).tcp(3128, 41000).seq(9).flags(pkt::PSH | pkt::ACK).payload(kResponse);
    expect_run("the proxy's answer on another connection", Prog::socket_ingress, unrelated.frame(), std::nullopt);
}

// Loader configuration: without IPv6 targets, IPv6 traffic to the default
// IPv6 endpoint is not traced.
TEST(BpfConfig, NoV6Targets) {
    auto why = need_root();
    ASSERT_TRUE(why.empty()) << why;
    Loaded bpf(TargetConfig{.with_v6 = false});
    ASSERT_TRUE(bpf.error().empty()) << bpf.error();
    auto v6 = Packet::v6(kPod6, kImds6).tcp(50000, 80).flags(pkt::SYN).frame();
    for (Prog p : kEgress) {
        auto r = bpf.run(p, v6);
        EXPECT_EQ(r.err, 0);
        EXPECT_EQ(r.retval, is_tc(p) ? kTcPass : kCgroupPass);
        EXPECT_TRUE(r.records.empty()) << name(p);
    }
    auto v4 = Packet::v4(kPod4, kImds4).tcp(43122, 80).flags(pkt::SYN).frame();
    EXPECT_EQ(bpf.run(Prog::uplink_egress, v4).records.size(), 1u);
}

// The verifier accepts the whole object as the tracer loads it, including
// the tracing programs PROG_TEST_RUN cannot run, on both drop-reason paths.
TEST(BpfConfig, WholeObjectLoads) {
    auto why = need_root();
    ASSERT_TRUE(why.empty()) << why;
    auto kf = imdstrace::KernelFeatures::probe();
    ASSERT_TRUE(kf.has_btf) << "kernel BTF is needed";
    {
        Loaded bpf({}, true);
        EXPECT_TRUE(bpf.error().empty()) << bpf.error();
        if (bpf.error().empty()) {
            EXPECT_GE(bpf_program__fd(bpf.skel()->progs.observe_drop), 0);
            if (kf.icmp_send_tracepoint) {
                EXPECT_GE(bpf_program__fd(bpf.skel()->progs.observe_icmp_send), 0);
            }
        }
    }
    {
        Loaded legacy({}, true, false);  // kernels < 5.17: no reason argument
        EXPECT_TRUE(legacy.error().empty()) << legacy.error();
    }
}

// The ring buffer full: events are counted as lost, packets still pass.
TEST_F(BpfProgTest, RingBufferFullCountsLost) {
    auto frame = Packet::v4(kPod4, kImds4).tcp(43122, 80).seq(1).payload(kPut).frame();
    const std::uint32_t cap = bpf_map__max_entries(bpf->skel()->maps.events);
    // A record is its 8-byte ring header, the event header and the payload tail, rounded to 8.
    const std::uint32_t per_event = ((8 + sizeof(imds_event) + std::string_view(kPut).size() + 7) / 8) * 8;
    const int repeat = static_cast<int>(cap / per_event + 100);
    const auto lost0 = bpf->counter(IMDS_HOOK_UPLINK_EGRESS, IMDS_CNT_LOST);
    // The total userspace reads after every poll, from the mapped .bss (no syscall).
    const auto total0 = __atomic_load_n(&bpf->skel()->bss->events_lost_total, __ATOMIC_RELAXED);
    LIBBPF_OPTS(bpf_test_run_opts, opts, .data_in = frame.data(), .data_size_in = static_cast<__u32>(frame.size()),
                .repeat = repeat);
    ASSERT_EQ(bpf_prog_test_run_opts(bpf_program__fd(bpf->skel()->progs.uplink_egress), &opts), 0);
    EXPECT_EQ(opts.retval, kTcPass);
    const auto lost = bpf->counter(IMDS_HOOK_UPLINK_EGRESS, IMDS_CNT_LOST) - lost0;
    EXPECT_GE(lost, 100u);
    EXPECT_LT(lost, static_cast<std::uint64_t>(repeat));
    EXPECT_EQ(__atomic_load_n(&bpf->skel()->bss->events_lost_total, __ATOMIC_RELAXED) - total0, lost)
        << "the .bss total counts every lost event the per-hook counter does";
    bpf->drain();
}

}  // namespace
