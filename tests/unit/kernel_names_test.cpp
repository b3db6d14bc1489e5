// Names for the numbers in drop events: reasons and code locations.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>

#include "decode/kernel_names.hpp"

using namespace imdstrace;

namespace {

TEST(DropReasons, Names) {
    DropReasons r({{2, "NOT_SPECIFIED"}, {5, "IP_INHDR"}, {6, "NETFILTER_DROP"}});
    EXPECT_EQ(r.name(5), "IP_INHDR");
    EXPECT_EQ(r.name(6), "NETFILTER_DROP");
    EXPECT_EQ(r.name(999), "REASON_999");
    EXPECT_EQ(r.size(), 3u);
    EXPECT_EQ(DropReasons{}.name(1), "REASON_1");
}

TEST(KernelSymbols, FunctionContainingAnAddress) {
    char tmpl[] = "/tmp/imdstrace-kallsyms-XXXXXX";
    int fd = mkstemp(tmpl);
    ASSERT_GE(fd, 0);
    ::close(fd);
    {
        std::ofstream f(tmpl);
        f << "ffffffff81a00000 T ip_forward\n"
             "ffffffff81a00800 t ip_forward_finish\n"
             "ffffffff81a01000 D some_data\n"
             "ffffffff81a02000 T ip6_forward\t[ipv6]\n"
             "0000000000000000 T hidden_without_root\n"
             "garbage line\n";
    }
    KernelSymbols syms(tmpl);
    EXPECT_EQ(syms.function_at(0xffffffff81a00000ull), "ip_forward");
    EXPECT_EQ(syms.function_at(0xffffffff81a001c4ull), "ip_forward");
    EXPECT_EQ(syms.function_at(0xffffffff81a00900ull), "ip_forward_finish");
    EXPECT_EQ(syms.function_at(0xffffffff81a01100ull), "ip_forward_finish") << "data symbols are not functions";
    EXPECT_EQ(syms.function_at(0xffffffff81a02010ull), "ip6_forward");
    EXPECT_EQ(syms.function_at(0x1000), "0x1000");
    EXPECT_EQ(syms.function_at(0), "0x0");
    std::remove(tmpl);
}

TEST(KernelSymbols, MissingFileGivesAddresses) {
    KernelSymbols syms("/nonexistent/kallsyms");
    EXPECT_EQ(syms.function_at(0xffffffff81a001c4ull), "0xffffffff81a001c4");
}

}  // namespace
