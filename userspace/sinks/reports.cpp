#include "sinks/reports.hpp"

#include <fmt/format.h>

#include <algorithm>

#include "sinks/escape.hpp"
#include "sinks/json.hpp"
#include "sinks/text.hpp"

namespace imdstrace {

bool CheckReport::ok() const {
    return std::all_of(lines.begin(), lines.end(), [](const CheckLine& l) { return l.ok || !l.required; });
}

std::string format_check(const CheckReport& r) {
    std::string out;
    for (const auto& l : r.lines) {
        const char* tag = l.ok ? "ok  " : (l.required ? "FAIL" : "warn");
        out += fmt::format("{}  {:<28} {}\n", tag, l.name, l.detail);
        if (!l.ok) out += fmt::format("      {:<28} -> {}\n", "", l.hint);
    }
    out += r.ok() ? "imdstrace can run here.\n" : "imdstrace cannot run here: fix the FAIL lines above.\n";
    return out;
}

nlohmann::json to_json(const CheckReport& r) {
    nlohmann::json j;
    j["schema"] = kCheckSchema;
    j["ok"] = r.ok();
    j["checks"] = nlohmann::json::array();
    for (const auto& l : r.lines)
        j["checks"].push_back({{"name", l.name}, {"ok", l.ok}, {"required", l.required}, {"detail", l.detail},
                               {"hint", l.ok ? "" : l.hint}});
    return j;
}

bool ProbeReport::healthy() const {
    bool step_failed = std::any_of(steps.begin(), steps.end(),
                                   [](const ProbeStep& s) { return !s.status || *s.status >= 400; });
    return !diagnosis.failing() && !step_failed;
}

nlohmann::json step_to_json(const ProbeStep& s) {
    return {{"method", s.method}, {"path", s.path}, {"status", s.status ? nlohmann::json(*s.status) : nlohmann::json()},
            {"error", s.error},   {"local", s.local.str()}, {"ms", s.ms}};
}

ProbeStep step_from_json(const nlohmann::json& j) {
    ProbeStep s;
    s.method = j.value("method", "");
    s.path = j.value("path", "");
    if (j.contains("status") && j["status"].is_number_integer()) s.status = j["status"].get<int>();
    s.error = j.value("error", "");
    if (auto ep = Endpoint::parse(j.value("local", ""), 0)) s.local = *ep;
    s.ms = j.value("ms", 0);
    return s;
}

std::string format_probe(const ProbeReport& r) {
    std::string out = fmt::format("probe from {} to {}\n", terminal_safe(r.from), terminal_safe(r.target));
    for (const auto& s : r.steps)
        out += fmt::format("  {} {:<45} -> {}\n", s.method, s.path,
                           s.status ? fmt::format("{} ({} ms)", *s.status, s.ms) : terminal_safe(s.error));
    out += "\nwhat the kernel saw:\n";
    for (const auto& t : r.transactions) out += "  " + format_transaction(t) + "\n";
    out += "\n" + format_diagnosis(r.diagnosis);
    if (!r.healthy() && !r.diagnosis.failing())
        out += "\nThe probe failed but the trace shows no failure on this node's path: check the target "
               "address and --iface, or run `imdstrace check`.\n";
    return out;
}

nlohmann::json to_json(const ProbeReport& r) {
    nlohmann::json j;
    j["schema"] = kProbeSchema;
    j["from"] = r.from;
    j["target"] = r.target;
    j["steps"] = nlohmann::json::array();
    for (const auto& s : r.steps) j["steps"].push_back(step_to_json(s));
    j["transactions"] = nlohmann::json::array();
    for (const auto& t : r.transactions) j["transactions"].push_back(to_json(t));
    j["diagnosis"] = to_json(r.diagnosis);
    j["healthy"] = r.healthy();
    return j;
}

}  // namespace imdstrace
