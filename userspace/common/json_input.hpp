// JSON that comes from outside (a --pods static: file, a recording fed to
// `report`): parsed with a nesting limit, so a hostile document cannot
// exhaust the stack of anything that walks it afterwards, and quoted in
// error messages only by a short prefix, never dumped whole.
#pragma once

#include <nlohmann/json.hpp>

#include <stdexcept>
#include <string>
#include <string_view>

namespace imdstrace {

inline constexpr int kJsonMaxDepth = 32;  // our documents nest 4 deep

// Throws std::runtime_error (nesting) or nlohmann::json::parse_error.
inline nlohmann::json parse_untrusted_json(std::string_view text, int max_depth = kJsonMaxDepth) {
    return nlohmann::json::parse(text, [max_depth](int depth, nlohmann::json::parse_event_t, nlohmann::json&) {
        if (depth > max_depth)
            throw std::runtime_error("nested deeper than " + std::to_string(max_depth) + " levels");
        return true;
    });
}

// An error message fit for a log line: at most `max` bytes.
inline std::string capped(std::string_view message, std::size_t max = 200) {
    if (message.size() <= max) return std::string(message);
    return std::string(message.substr(0, max)) + "... (" + std::to_string(message.size() - max) + " more bytes)";
}

}  // namespace imdstrace
