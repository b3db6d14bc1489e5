#include "decode/kernel_names.hpp"

#include <bpf/btf.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <sstream>

namespace imdstrace {

DropReasons DropReasons::from_kernel_btf() {
    std::map<std::uint32_t, std::string> names;
    struct btf* vmlinux = btf__load_vmlinux_btf();
    if (!vmlinux) {
        spdlog::warn("kernel BTF not readable: drop reasons will be shown as numbers");
        return DropReasons{};
    }
    int id = btf__find_by_name_kind(vmlinux, "skb_drop_reason", BTF_KIND_ENUM);
    if (id > 0) {
        const struct btf_type* t = btf__type_by_id(vmlinux, id);
        const struct btf_enum* e = btf_enum(t);
        for (unsigned i = 0; i < btf_vlen(t); ++i, ++e) {
            std::string n = btf__name_by_offset(vmlinux, e->name_off);
            constexpr std::string_view prefix = "SKB_DROP_REASON_";
            if (n.starts_with(prefix)) n = n.substr(prefix.size());
            else if (n.starts_with("SKB_")) n = n.substr(4);
            names.emplace(static_cast<std::uint32_t>(e->val), n);
        }
    }
    btf__free(vmlinux);
    return DropReasons{std::move(names)};
}

std::string DropReasons::name(std::uint32_t value) const {
    if (auto it = names_.find(value); it != names_.end()) return it->second;
    return "REASON_" + std::to_string(value);
}

void KernelSymbols::load() {
    std::ifstream in(path_);
    std::string line;
    while (std::getline(in, line)) {
        // "ffffffff81a2b3c0 T ip_forward" (possibly "\t[module]")
        std::istringstream fields(line);
        std::string addr, type, name;
        if (!(fields >> addr >> type >> name)) continue;
        if (type != "t" && type != "T") continue;
        std::uint64_t a = std::strtoull(addr.c_str(), nullptr, 16);
        if (a == 0) continue;
        text_.emplace_back(a, name);
    }
    std::sort(text_.begin(), text_.end());
    if (text_.empty()) spdlog::warn("no kernel symbols in {}: drop locations will be shown as addresses", path_);
}

std::string KernelSymbols::function_at(std::uint64_t addr) {
    std::call_once(loaded_, [this] { load(); });
    auto it = std::upper_bound(text_.begin(), text_.end(), std::make_pair(addr, std::string{}),
                               [](const auto& a, const auto& b) { return a.first < b.first; });
    if (it == text_.begin() || addr == 0) {
        char buf[32];
        std::snprintf(buf, sizeof(buf), "0x%llx", static_cast<unsigned long long>(addr));
        return buf;
    }
    return std::prev(it)->second;
}

bool KernelSymbols::addresses_visible(const std::string& path) {
    std::ifstream in(path);
    std::string addr, rest;
    for (int i = 0; i < 64 && in >> addr && std::getline(in, rest); ++i)
        if (addr.find_first_not_of('0') != std::string::npos) return true;
    return false;
}

}  // namespace imdstrace
