// libFuzzer: `imdstrace report` on any bytes.  Whatever a recording holds,
// reading it, building the diagnosis and printing it as text and JSON must
// not crash, hang or trip ASan/UBSan, the text must not carry a control
// byte that can paint on a terminal (ESC, a bare CR, BEL), and the JSON
// must be valid UTF-8 that parses back.
#include <cstdint>
#include <cstdlib>
#include <sstream>
#include <string>

#include "sinks/escape.hpp"
#include "sinks/events_file.hpp"
#include "sinks/json.hpp"
#include "sinks/text.hpp"
#include "verdict/diagnosis.hpp"

using namespace imdstrace;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    std::istringstream in(std::string(reinterpret_cast<const char*>(data), size));
    DiagnosisBuilder builder;
    auto rec = read_recording(in, "fuzz.jsonl", [&builder](TransactionRecord&& r) { builder.add(r); });
    if (rec.first_skipped.size() > 400) std::abort();  // messages stay short
    auto d = builder.build(rec.recorded_window, rec.recorded_targets);
    auto text = format_diagnosis(d, TextStyle{false});
    for (char c : text)
        if (c == '\x1b' || c == '\r' || c == '\x07' || c == '\0') std::abort();
    for (const auto& r : builder.records()) {
        auto line = format_transaction(r, TextStyle{false});
        if (line.find_first_of("\x1b\r\n\x07") != std::string::npos) std::abort();
    }
    auto json = dump_json(to_json(d), 2);
    for (std::size_t i = 0; i < json.size();) {
        auto n = utf8_sequence(json, i);
        if (!n) std::abort();
        i += n;
    }
    (void)nlohmann::json::parse(json);  // throws (and the fuzzer reports it) if not JSON
    return 0;
}
