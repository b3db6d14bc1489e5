// Untrusted text on its way out.  Pod names, cgroup paths, process names
// and everything read back by `report` come from outside: a cgroup
// directory may hold any byte but '/' and NUL, a JSONL file any string.
// Each output gets the escaping its reader needs, in one place.
#pragma once

#include <nlohmann/json.hpp>

#include <string>
#include <string_view>

namespace imdstrace {

// Length of the well-formed UTF-8 sequence at s[i] (1-4), 0 when the bytes
// there are not one (invalid lead byte, truncated, overlong, surrogate,
// beyond U+10FFFF).
std::size_t utf8_sequence(std::string_view s, std::size_t i);

// Valid UTF-8: each byte that does not belong to a well-formed sequence
// becomes U+FFFD.  For Prometheus label values (which must be UTF-8).
std::string utf8_or_replacement(std::string_view s);

// Safe to print on a terminal: control characters (C0, DEL, C1 such as
// ESC, CSI, newline) and bytes that are not UTF-8 become "\xNN", and a
// backslash becomes "\\", so no name can move the cursor, recolour the
// screen or start a fake line.
std::string terminal_safe(std::string_view s);

// JSON text that is always valid UTF-8 (invalid bytes become U+FFFD):
// nlohmann's default dump throws on them, which would end a live trace.
std::string dump_json(const nlohmann::json& j, int indent = -1);

}  // namespace imdstrace
