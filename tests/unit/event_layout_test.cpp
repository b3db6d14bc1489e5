// Pins the layout of the structs shared with the BPF programs
// (bpf/imdstrace.h).  A change here is a change of the kernel/userspace
// contract: update both sides together.
#include <gtest/gtest.h>

#include <cstddef>

#include "imdstrace.h"

namespace {

#define PIN(type, field, off, size)                                             \
    static_assert(offsetof(type, field) == (off), #type "." #field " moved");   \
    static_assert(sizeof(((type*)nullptr)->field) == (size), #type "." #field " resized")

PIN(imds_event, ts_ns, 0, 8);
PIN(imds_event, cgroup_id, 8, 8);
PIN(imds_event, sk_cookie, 16, 8);
PIN(imds_event, location, 24, 8);
PIN(imds_event, drop_reason, 32, 4);
PIN(imds_event, ifindex, 36, 4);
PIN(imds_event, netns, 40, 4);
PIN(imds_event, seq, 44, 4);
PIN(imds_event, ack_seq, 48, 4);
PIN(imds_event, payload_len, 52, 4);
PIN(imds_event, saddr, 56, 16);
PIN(imds_event, daddr, 72, 16);
PIN(imds_event, sport, 88, 2);
PIN(imds_event, dport, 90, 2);
PIN(imds_event, ip_id, 92, 2);
PIN(imds_event, copied, 94, 2);
PIN(imds_event, hook, 96, 1);
PIN(imds_event, direction, 97, 1);
PIN(imds_event, family, 98, 1);
PIN(imds_event, ip_proto, 99, 1);
PIN(imds_event, ttl, 100, 1);
PIN(imds_event, tcp_flags, 101, 1);
PIN(imds_event, icmp_type, 102, 1);
PIN(imds_event, icmp_code, 103, 1);
PIN(imds_event, flags, 104, 1);
PIN(imds_event, target_index, 105, 1);
PIN(imds_event, pad, 106, 2);
PIN(imds_event, pid, 108, 4);
PIN(imds_event, comm, 112, 16);
PIN(imds_event, sock_addr, 128, 16);
PIN(imds_event, sock_port, 144, 2);
PIN(imds_event, pad2, 146, 6);
// The payload is a variable-length tail after the 152-byte header.
static_assert(sizeof(imds_event) == 152);
PIN(imds_event_buf, hdr, 0, 152);
PIN(imds_event_buf, payload, 152, IMDS_PAYLOAD_MAX);
static_assert(sizeof(imds_event_buf) == 664);
static_assert(alignof(imds_event) == 8);
// Big enough for aws-sdk-go-v2's ~300-byte GET head (token header at 238-262).
static_assert(IMDS_PAYLOAD_MAX == 512);
static_assert((IMDS_PAYLOAD_MAX & (IMDS_PAYLOAD_MAX - 1)) == 0, "the BPF copy masks with MAX - 1");

#define FSIZE(type, field) sizeof(((type*)nullptr)->field)

TEST(EventLayout, SizesAndOffsets) {
    EXPECT_EQ(sizeof(imds_event), 152u);  // a record without payload (SYN, ACK, drop, connect)
    EXPECT_EQ(offsetof(imds_event_buf, payload), sizeof(imds_event));
    EXPECT_EQ(offsetof(imds_event_buf, payload) + IMDS_PAYLOAD_MAX, sizeof(imds_event_buf));
}

// Every byte belongs to a named field: no implicit padding the two
// compilers (clang -target bpf, g++) could lay out differently.
TEST(EventLayout, NoImplicitPadding) {
    constexpr std::size_t event_fields =
        FSIZE(imds_event, ts_ns) + FSIZE(imds_event, cgroup_id) + FSIZE(imds_event, sk_cookie) +
        FSIZE(imds_event, location) + FSIZE(imds_event, drop_reason) + FSIZE(imds_event, ifindex) +
        FSIZE(imds_event, netns) + FSIZE(imds_event, seq) + FSIZE(imds_event, ack_seq) +
        FSIZE(imds_event, payload_len) + FSIZE(imds_event, saddr) + FSIZE(imds_event, daddr) +
        FSIZE(imds_event, sport) + FSIZE(imds_event, dport) + FSIZE(imds_event, ip_id) + FSIZE(imds_event, copied) +
        FSIZE(imds_event, hook) + FSIZE(imds_event, direction) + FSIZE(imds_event, family) +
        FSIZE(imds_event, ip_proto) + FSIZE(imds_event, ttl) + FSIZE(imds_event, tcp_flags) +
        FSIZE(imds_event, icmp_type) + FSIZE(imds_event, icmp_code) + FSIZE(imds_event, flags) +
        FSIZE(imds_event, target_index) + FSIZE(imds_event, pad) + FSIZE(imds_event, pid) +
        FSIZE(imds_event, comm) + FSIZE(imds_event, sock_addr) + FSIZE(imds_event, sock_port) +
        FSIZE(imds_event, pad2);
    static_assert(event_fields == sizeof(imds_event), "imds_event has implicit padding");
    EXPECT_EQ(event_fields, sizeof(imds_event));
}

TEST(EventLayout, EnumValues) {
    // Numbers that travel in events and counters.
    EXPECT_EQ(IMDS_HOOK_CGROUP_EGRESS, 1);
    EXPECT_EQ(IMDS_HOOK_CGROUP_INGRESS, 2);
    EXPECT_EQ(IMDS_HOOK_UPLINK_EGRESS, 3);
    EXPECT_EQ(IMDS_HOOK_UPLINK_INGRESS, 4);
    EXPECT_EQ(IMDS_HOOK_DROP, 5);
    EXPECT_EQ(IMDS_HOOK_ICMP_SEND, 6);
    EXPECT_EQ(IMDS_HOOK_CONNECT, 7);
    EXPECT_EQ(IMDS_HOOK_CONNECT_FAILED, 8);
    EXPECT_EQ(IMDS_HOOK_MAX, 9);
    EXPECT_EQ(IMDS_DIR_TO_TARGET, 1);
    EXPECT_EQ(IMDS_DIR_FROM_TARGET, 2);
    EXPECT_EQ(IMDS_DIR_ICMP_ABOUT, 3);
    EXPECT_EQ(IMDS_AF_INET, 4);
    EXPECT_EQ(IMDS_AF_INET6, 6);
    EXPECT_EQ(IMDS_CNT_MAX, 4);
    EXPECT_EQ(IMDS_F_SK_PRESENT | IMDS_F_TRUNCATED | IMDS_F_HAS_REASON | IMDS_F_ICMP_QUOTE | IMDS_F_IN_CGROUP |
                  IMDS_F_FOLLOWED | IMDS_F_VIA_PROXY,
              0x7f);
}

}  // namespace
