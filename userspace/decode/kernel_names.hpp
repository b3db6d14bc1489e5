// Names the running kernel gives to numbers in drop events: drop reasons
// (enum skb_drop_reason, numbered differently by each kernel) and the code
// addresses of the functions that freed a packet.
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <vector>

namespace imdstrace {

class DropReasons {
public:
    // Reads enum skb_drop_reason from the running kernel's BTF.
    static DropReasons from_kernel_btf();
    // For tests and recorded data.
    explicit DropReasons(std::map<std::uint32_t, std::string> names) : names_(std::move(names)) {}
    DropReasons() = default;

    // "IP_INHDR" for SKB_DROP_REASON_IP_INHDR; "REASON_<n>" when unknown.
    std::string name(std::uint32_t value) const;
    std::size_t size() const { return names_.size(); }

private:
    std::map<std::uint32_t, std::string> names_;
};

class KernelSymbols {
public:
    // Lazily reads /proc/kallsyms (root sees real addresses) on first lookup.
    explicit KernelSymbols(std::string path = "/proc/kallsyms") : path_(std::move(path)) {}
    // Whether `path` shows real addresses: without CAP_SYSLOG the kernel
    // shows every symbol at 0, and drop locations stay bare addresses.
    static bool addresses_visible(const std::string& path = "/proc/kallsyms");
    // Function containing addr ("ip_forward"), or "0x..." when unknown.
    std::string function_at(std::uint64_t addr);

private:
    void load();
    std::string path_;
    std::once_flag loaded_;
    std::vector<std::pair<std::uint64_t, std::string>> text_;  // sorted by address
};

}  // namespace imdstrace
