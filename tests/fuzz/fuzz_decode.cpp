// libFuzzer: the event decoder and the HTTP redaction, on any bytes.
//
// 1. Any ring-buffer record: decode_event (with the redacted head the pcap
//    writer uses) must not crash or read out of bounds.
// 2. No token value ever survives redaction: the input is made of fuzzed
//    bytes, then a line break, the token header with a recognisable value,
//    then more fuzzed bytes.  Whatever surrounds it (line endings, case,
//    cut-off heads, bodies, garbage), neither the redacted head nor the
//    parsed request may contain the value.
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#include "decode/http.hpp"
#include "decode/observation.hpp"
#include "imdstrace.h"

using namespace imdstrace;

namespace {

constexpr std::string_view kSecret = "Zq7SecretT0kenValue4xW";

std::span<const std::uint8_t> bytes(const std::string& s) {
    return {reinterpret_cast<const std::uint8_t*>(s.data()), s.size()};
}

void must_not_leak(const std::string& input) {
    auto out = redact_http_head(bytes(input));
    if (out.find(kSecret) != std::string::npos) std::abort();
    if (out.find(kSecret.substr(0, 10)) != std::string::npos) std::abort();
    if (auto r = parse_http_request(bytes(input)))
        if (r->path.find(kSecret) != std::string::npos || r->method.find(kSecret) != std::string::npos) std::abort();
    // What the BPF copy hands over is a prefix: every cut must hold too.
    if (input.size() > IMDS_PAYLOAD_MAX) must_not_leak(input.substr(0, IMDS_PAYLOAD_MAX));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    // 1. The record as the ring buffer would hand it over.
    std::vector<std::uint8_t> record(data, data + size);
    if (record.size() < sizeof(imds_event)) record.resize(sizeof(imds_event));
    (void)decode_event(record, true);
    (void)decode_event(std::span<const std::uint8_t>(data, size), true);

    // 2. fuzzed prefix | line break | token header | fuzzed suffix.
    if (size < 3) return 0;
    const std::uint8_t control = data[0];
    std::string_view rest(reinterpret_cast<const char*>(data + 1), size - 1);
    const std::size_t cut = control % (rest.size() + 1);
    std::string prefix(rest.substr(0, cut)), suffix(rest.substr(cut));
    if (prefix.find(kSecret.substr(0, 10)) != std::string::npos ||
        suffix.find(kSecret.substr(0, 10)) != std::string::npos)
        return 0;  // the fuzzer wrote the value itself: it is not a token header's
    static constexpr const char* kBreaks[] = {"\r\n", "\n", "\r"};
    static constexpr const char* kNames[] = {"X-aws-ec2-metadata-token", "x-aws-ec2-metadata-token",
                                             "X-AWS-EC2-METADATA-TOKEN", "X-aws-ec2-metadata-token "};
    static constexpr const char* kSeps[] = {": ", ":", ":\t", ":  "};
    std::string input = prefix + kBreaks[control % 3] + kNames[(control >> 2) % 4] + kSeps[(control >> 4) % 4] +
                        std::string(kSecret) + suffix;
    must_not_leak(input);
    return 0;
}
