#include "sinks/escape.hpp"

#include <fmt/format.h>

namespace imdstrace {

std::size_t utf8_sequence(std::string_view s, std::size_t i) {
    auto byte = [&](std::size_t k) { return static_cast<unsigned char>(s[k]); };
    const unsigned char b0 = byte(i);
    if (b0 < 0x80) return 1;
    std::size_t len = 0;
    std::uint32_t cp = 0, min = 0;
    if ((b0 & 0xe0) == 0xc0) len = 2, cp = b0 & 0x1f, min = 0x80;
    else if ((b0 & 0xf0) == 0xe0) len = 3, cp = b0 & 0x0f, min = 0x800;
    else if ((b0 & 0xf8) == 0xf0) len = 4, cp = b0 & 0x07, min = 0x10000;
    else return 0;
    if (i + len > s.size()) return 0;
    for (std::size_t k = 1; k < len; ++k) {
        if ((byte(i + k) & 0xc0) != 0x80) return 0;
        cp = (cp << 6) | (byte(i + k) & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return 0;
    return len;
}

std::string utf8_or_replacement(std::string_view s) {
    std::string out;
    out.reserve(s.size());
    for (std::size_t i = 0; i < s.size();) {
        if (std::size_t n = utf8_sequence(s, i)) {
            out.append(s.substr(i, n));
            i += n;
        } else {
            out += "\xef\xbf\xbd";
            ++i;
        }
    }
    return out;
}

std::string terminal_safe(std::string_view s) {
    std::string out;
    out.reserve(s.size());
    for (std::size_t i = 0; i < s.size();) {
        const auto b = static_cast<unsigned char>(s[i]);
        const std::size_t n = utf8_sequence(s, i);
        // C1 controls (U+0080..U+009F) are two bytes: C2 80..C2 9F.
        const bool c1 = n == 2 && b == 0xc2 && static_cast<unsigned char>(s[i + 1]) < 0xa0;
        if (n == 0 || c1 || b < 0x20 || b == 0x7f) {
            out += fmt::format("\\x{:02x}", b);
            ++i;
        } else if (b == '\\') {
            out += "\\\\";
            ++i;
        } else {
            out.append(s.substr(i, n));
            i += n;
        }
    }
    return out;
}

std::string dump_json(const nlohmann::json& j, int indent) {
    return j.dump(indent, ' ', false, nlohmann::json::error_handler_t::replace);
}

}  // namespace imdstrace
