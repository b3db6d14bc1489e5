// libFuzzer: the --pods static: mapping parser on any bytes.  It either
// returns pods or throws std::runtime_error with a short message; it never
// crashes, recurses without bound or quotes a value at length.
#include <cstdint>
#include <cstdlib>
#include <stdexcept>
#include <string>

#include "pods/resolver.hpp"

using namespace imdstrace;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    std::string text(reinterpret_cast<const char*>(data), size);
    try {
        auto pods = parse_pod_mapping(text, "pods.json");
        for (const auto& p : pods)
            if (p.cgroup.empty() && p.ips.empty()) std::abort();  // unmatchable entries are refused
    } catch (const std::runtime_error& e) {
        if (std::string(e.what()).size() > 600) std::abort();
    }
    return 0;
}
