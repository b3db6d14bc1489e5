// Addresses and endpoints: what --target and the JSON "client"/"server" accept.
#include <gtest/gtest.h>

#include <unordered_set>

#include "common/net.hpp"

using namespace imdstrace;

namespace {

TEST(IpAddr, Parse) {
    auto v4 = IpAddr::parse("169.254.169.254");
    ASSERT_TRUE(v4);
    EXPECT_TRUE(v4->is_v4());
    EXPECT_EQ(v4->bytes[0], 169);
    EXPECT_EQ(v4->bytes[3], 254);
    for (int i = 4; i < 16; ++i) EXPECT_EQ(v4->bytes[i], 0);
    EXPECT_EQ(v4->str(), "169.254.169.254");

    auto v6 = IpAddr::parse("fd00:ec2::254");
    ASSERT_TRUE(v6);
    EXPECT_FALSE(v6->is_v4());
    EXPECT_EQ(v6->family, Family::ipv6);
    EXPECT_EQ(v6->bytes[0], 0xfd);
    EXPECT_EQ(v6->bytes[15], 0x54);
    EXPECT_EQ(v6->str(), "fd00:ec2::254");

    auto mapped = IpAddr::parse("::ffff:169.254.169.254");
    ASSERT_TRUE(mapped);
    EXPECT_FALSE(mapped->is_v4());
    EXPECT_NE(*mapped, *v4);

    for (const char* bad : {"", "169.254.169", "169.254.169.256", "1.2.3.4.5", " 1.2.3.4", "1.2.3.4 ", "fd00::ec2::1",
                            "[fd00:ec2::254]", "localhost", "0x7f.1", "1.2.3.4:80"})
        EXPECT_FALSE(IpAddr::parse(bad)) << bad;
}

TEST(IpAddr, FromRawCopiesOnlyTheFamily) {
    std::uint8_t raw[16];
    for (int i = 0; i < 16; ++i) raw[i] = static_cast<std::uint8_t>(0xa0 + i);
    auto a = IpAddr::from_raw(Family::ipv4, raw);
    EXPECT_EQ(a.bytes[3], 0xa3);
    EXPECT_EQ(a.bytes[4], 0);  // garbage after the v4 address is not part of it
    EXPECT_EQ(a, IpAddr::from_raw(Family::ipv4, raw));
    auto b = IpAddr::from_raw(Family::ipv6, raw);
    EXPECT_EQ(b.bytes[15], 0xaf);
}

TEST(Endpoint, Parse) {
    struct Case {
        const char* text;
        const char* addr;
        std::uint16_t port;
    } good[] = {
        {"169.254.169.254", "169.254.169.254", 80},
        {"169.254.169.254:8080", "169.254.169.254", 8080},
        {"169.254.169.254:1", "169.254.169.254", 1},
        {"169.254.169.254:65535", "169.254.169.254", 65535},
        {"[fd00:ec2::254]:80", "fd00:ec2::254", 80},
        {"[fd00:ec2::254]:8080", "fd00:ec2::254", 8080},
        {"[fd00:ec2::254]", "fd00:ec2::254", 80},
        {"fd00:ec2::254", "fd00:ec2::254", 80},  // bare IPv6: no port
        {"::1", "::1", 80},
    };
    for (const auto& c : good) {
        auto e = Endpoint::parse(c.text, 80);
        ASSERT_TRUE(e) << c.text;
        EXPECT_EQ(e->addr, *IpAddr::parse(c.addr)) << c.text;
        EXPECT_EQ(e->port, c.port) << c.text;
    }
}

TEST(Endpoint, InvalidPortsAndGarbage) {
    for (const char* bad : {"169.254.169.254:0", "169.254.169.254:65536", "169.254.169.254:99999999999",
                            "169.254.169.254:-1", "169.254.169.254:+80", "169.254.169.254:80x",
                            "169.254.169.254:http", "169.254.169.254:", "[fd00:ec2::254]:", "[fd00:ec2::254]:0",
                            "[fd00:ec2::254]:65536", "[fd00:ec2::254]80", "[fd00:ec2::254", "[169.254.169.254]x",
                            "[]:80", ":80", "", "garbage", "metadata.google.internal:80", "1.2.3.4:80:90"})
        EXPECT_FALSE(Endpoint::parse(bad, 80)) << bad;
}

TEST(Endpoint, PrintsBackWhatItParses) {
    for (const char* text : {"169.254.169.254:80", "[fd00:ec2::254]:80", "198.18.1.5:43122", "[::1]:1"}) {
        auto e = Endpoint::parse(text, 0);
        ASSERT_TRUE(e) << text;
        EXPECT_EQ(e->str(), text);
    }
}

TEST(FlowKey, HashAndOrder) {
    FlowKey a{*Endpoint::parse("198.18.1.5:40000", 0), *Endpoint::parse("169.254.169.254:80", 0)};
    FlowKey b = a;
    FlowKey c = a;
    c.client.port = 40001;
    FlowKeyHash h;
    EXPECT_EQ(a, b);
    EXPECT_EQ(h(a), h(b));
    EXPECT_NE(a, c);
    EXPECT_NE(h(a), h(c));
    EXPECT_LT(a, c);
    std::unordered_set<FlowKey, FlowKeyHash> set{a, b, c};
    EXPECT_EQ(set.size(), 2u);
    EXPECT_EQ(a.str(), "198.18.1.5:40000 -> 169.254.169.254:80");
    EXPECT_EQ(to_string(Family::ipv4), "ipv4");
    EXPECT_EQ(to_string(Family::ipv6), "ipv6");
}

}  // namespace
