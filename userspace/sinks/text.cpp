#include "sinks/text.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <ctime>
#include <map>
#include <optional>

#include "sinks/escape.hpp"

namespace imdstrace {
namespace {

std::string paint(const std::string& s, Verdict v, TextStyle style) {
    if (!style.color) return s;
    const char* code = v == Verdict::ok ? "\033[32m" : v == Verdict::not_found ? "\033[33m" : "\033[1;31m";
    return code + s + "\033[0m";
}

std::string clock_time(std::int64_t unix_ms) {
    std::time_t secs = unix_ms / 1000;
    std::tm tm{};
    localtime_r(&secs, &tm);
    return fmt::format("{:02}:{:02}:{:02}.{:03}", tm.tm_hour, tm.tm_min, tm.tm_sec, static_cast<int>(unix_ms % 1000));
}

std::string opt(const std::optional<int>& v) { return v ? std::to_string(*v) : "-"; }

std::string plural(std::uint64_t n, const char* one, const char* many) {
    return fmt::format("{} {}", n, n == 1 ? one : many);
}

// What was left out of the verdicts, one line each, said aloud.
// `hop_limit`: the hop limit observed in the window, if any.
std::string set_aside_text(const SetAside& a, std::optional<int> hop_limit) {
    std::string out;
    // "the kernel dropped N what; ...", with one packet said as one.
    auto dropped = [](const std::map<std::string, std::uint64_t>& drops) {
        std::string out;
        for (const auto& [what, n] : drops)
            out += fmt::format("{}{} {}", out.empty() ? "" : "; ", n,
                               n == 1 && what.rfind("responses ", 0) == 0   ? "response " + what.substr(10)
                               : n == 1 && what.rfind("requests ", 0) == 0 ? "request " + what.substr(9)
                                                                           : what);
        return out;
    };

    if (a.opened_before_tracing) {
        out += fmt::format("set aside: {} of connections opened before tracing started (in no verdict, hop figure or fix)",
                           plural(a.opened_before_tracing, "transaction", "transactions"));
        if (!a.opened_before_tracing_drops.empty()) {
            const auto& low = a.opened_before_tracing_lowest_ttl;
            // Only against a hop limit seen now, and higher: else nothing says it changed.
            out += fmt::format("; the kernel dropped {}{}", dropped(a.opened_before_tracing_drops),
                               low && *low <= 1 && hop_limit && *hop_limit > *low
                                   ? fmt::format(": the hop limit was lower when they were opened (it is {} now)",
                                                 *hop_limit)
                                   : "");
        }
        out += "\n";
    }
    if (a.opening_unseen) {
        out += fmt::format("set aside: {} whose opening was not seen while events were lost: new, or leftovers of "
                           "connections made before tracing, nothing tells which (in no verdict, hop figure or fix)",
                           plural(a.opening_unseen, "transaction", "transactions"));
        if (!a.opening_unseen_drops.empty()) out += "; the kernel dropped " + dropped(a.opening_unseen_drops);
        out += "\n";
    }
    if (a.incomplete)
        out += fmt::format("set aside: {} with nothing but absence as evidence (events lost, or still in flight when "
                           "the window ended): no verdict from missing evidence\n",
                           plural(a.incomplete, "transaction", "transactions"));
    if (a.late_drops)
        out += fmt::format("set aside: {} after their transaction was reported (retransmissions the node dropped "
                           "again); counted here only\n",
                           plural(a.late_drops, "drop arrived", "drops arrived"));
    if (a.events_lost) {
        out += fmt::format("INCOMPLETE: {} lost (ring buffer full): figures are lower bounds",
                           plural(a.events_lost, "event was", "events were"));
        std::string pods;
        for (const auto& [who, n] : a.incomplete_pods)
            pods += fmt::format("{}{} ({})", pods.empty() ? "" : ", ", terminal_safe(who), n);
        if (!pods.empty())
            out += fmt::format("; transactions open meanwhile, by pod: {}; none is judged from what is missing "
                               "(no NO_RESPONSE for want of evidence); a larger --ring-size keeps them",
                               pods);
        out += "\n";
    }
    if (a.other_namespaces)
        out += fmt::format("set aside: {} from network namespaces that are not this node's\n",
                           plural(a.other_namespaces, "kernel event", "kernel events"));
    if (a.socket_bookkeeping)
        out += fmt::format("set aside: {} (sockets freeing their own queues, no connection to judge)\n",
                           plural(a.socket_bookkeeping, "socket bookkeeping free", "socket bookkeeping frees"));
    return out;
}

// At most `width` bytes of already escaped text, cut on a character boundary.
std::string fit(std::string s, std::size_t width) {
    if (s.size() <= width) return s;
    std::size_t cut = width - 3;
    while (cut > 0 && (static_cast<unsigned char>(s[cut]) & 0xc0) == 0x80) --cut;
    return s.substr(0, cut) + "...";
}

// Every name in these lines may come from outside (a cgroup directory, a
// pod, a recorded file): escaped, so it cannot paint on the terminal.
std::string safe_list(const std::vector<std::string>& v) {
    std::string out;
    for (const auto& s : v) out += (out.empty() ? "" : ", ") + terminal_safe(s);
    return out;
}

// Our fixes are multi-line; what they quote from the input is escaped line by line.
std::string safe_lines(const std::string& s) {
    std::string out;
    std::size_t start = 0;
    while (true) {
        auto nl = s.find('\n', start);
        out += terminal_safe(std::string_view(s).substr(start, nl == std::string::npos ? std::string::npos : nl - start));
        if (nl == std::string::npos) break;
        out += '\n';
        start = nl + 1;
    }
    return out;
}

}  // namespace

std::string format_transaction_header(TextStyle) {
    return fmt::format("{:<12}  {:<18}  {:<32}  {:<42}  {:>6}  {:>7}  {:>4}  {:>5}  {}", "TIME", "VERDICT", "WHO",
                       "REQUEST", "STATUS", "TTL@NODE", "HOPS", "NEEDS", "EVIDENCE");
}

std::string format_transaction(const TransactionRecord& r, TextStyle style) {
    std::string request = fit(r.request ? terminal_safe(r.request->method + " " + r.request->path) : "(no request)", 42);
    std::string who = fit(terminal_safe(r.subject()), 32);
    // Set-aside transactions carry no verdict: say why instead.
    const auto aside = set_aside_reason(r);
    auto verdict = aside.empty() ? paint(fmt::format("{:<18}", to_string(r.verdict)), r.verdict, style)
                                 : fmt::format("{:<18}", "SET_ASIDE");
    std::string proc =
        r.process ? fmt::format(", pid {} {}", r.process->pid, terminal_safe(r.process->comm)) : std::string();
    return fmt::format("{:<12}  {}  {:<32}  {:<42}  {:>6}  {:>7}  {:>4}  {:>5}  {}{} ({} -> {}{}, {} ms)",
                       clock_time(r.wall_ms), verdict, who, request, opt(r.status), opt(r.ttl_at_node),
                       opt(r.hops) + (r.hops_inferred ? "?" : ""), opt(r.required_hop_limit),
                       aside.empty() ? (r.incomplete && r.events_lost ? fmt::format("[incomplete: {} events lost while open] ",
                                                                                    r.events_lost)
                                                                      : std::string())
                                     : "[" + aside + (r.events_lost ? fmt::format(": {}", r.events_lost) : "") + "] ",
                       terminal_safe(r.evidence), r.client.str(),
                       r.server.str(), proc, r.duration_ms);
}

std::string format_diagnosis(const Diagnosis& d, TextStyle style) {
    std::string out;
    std::string targets = safe_list(d.targets);
    out += fmt::format("imdstrace diagnosis: {} transaction{} in {:.0f} s to {}\n", d.transactions,
                       d.transactions == 1 ? "" : "s", d.window_s, targets);
    if (d.hop_limit_observed)
        out += fmt::format("node: IMDS hop limit observed {} (TTL of token responses arriving at the node)\n",
                           *d.hop_limit_observed);
    else if (!d.partial.empty())
        out += "node: IMDS hop limit not observed in the files read (no 200 answer to a token PUT among them; the "
               "part not read may have one)\n";
    else
        out += "node: IMDS hop limit not observed (no 200 answer to a token PUT reached the uplink)\n";
    if (!d.partial.empty()) {
        out += fmt::format("PARTIAL: {}\n", terminal_safe(d.partial));
        const auto& a = d.set_aside;
        if (a.other_namespaces || a.socket_bookkeeping || a.events_lost || a.late_drops)
            out += "PARTIAL: the kernel-event counts below (other namespaces, lost events, late drops) are the whole "
                   "sessions', from their trailers, not only the files read\n";
    }
    out += set_aside_text(d.set_aside, d.hop_limit_observed);
    if (d.pods.empty()) {
        out += d.partial.empty()
                   ? "\nNo metadata traffic seen. Is anything on this node calling IMDS? Try `imdstrace probe`.\n"
                   : "\nNo metadata traffic in the files read (see PARTIAL).\n";
        return out;
    }
    // The pod column fits the longest name (up to 72): names are what people read.
    std::size_t width = 3;
    std::vector<std::string> subjects;
    for (const auto& p : d.pods) subjects.push_back(terminal_safe(p.subject));
    for (const auto& s : subjects) width = std::max(width, std::min<std::size_t>(s.size(), 72));
    out += fmt::format("\n{:<18}  {:<{}}  {:>4}  {:>5}  {:>3}  {}\n", "VERDICT", "POD", width, "HOPS", "NEEDS", "TX",
                       "TRANSACTIONS BY VERDICT");
    for (std::size_t i = 0; i < d.pods.size(); ++i) {
        const auto& p = d.pods[i];
        std::string by;
        for (const auto& [v, n] : p.verdicts) by += fmt::format("{}{} {}", by.empty() ? "" : ", ", n, to_string(v));
        if (p.incomplete || p.incomplete_set_aside)
            by += fmt::format(" (INCOMPLETE: {}{}{})",
                              p.incomplete ? fmt::format("{} of these open while events were lost", p.incomplete) : "",
                              p.incomplete && p.incomplete_set_aside ? "; " : "",
                              p.incomplete_set_aside ? fmt::format("{} more open then with no evidence, set aside",
                                                                   p.incomplete_set_aside)
                                                     : "");
        std::string who = fit(subjects[i], width);
        out += fmt::format("{}  {:<{}}  {:>4}  {:>5}  {:>3}  {}\n",
                           paint(fmt::format("{:<18}", to_string(p.verdict)), p.verdict, style), who, width, opt(p.hops),
                           opt(p.required_hop_limit), p.transactions, by);
    }
    auto indent_fix = [](const std::string& text) {
        std::string fix = safe_lines(text);
        for (std::size_t pos = 0; (pos = fix.find('\n', pos)) != std::string::npos; pos += 7)
            fix.replace(pos, 1, "\n       ");
        return fix;
    };
    for (const auto& w : d.warnings) {
        out += fmt::format("\n{} {}\n  {}\n  fix:   {}\n", style.color ? "\033[1;33mWARNING\033[0m" : "WARNING",
                           safe_list(w.pods), terminal_safe(w.message), indent_fix(w.fix));
    }
    if (d.findings.empty()) {
        if (!d.partial.empty())
            out += "\nNo failure in what was read, but the files do not hold the whole window: partial, not healthy "
                   "(see PARTIAL).\n";
        else if (d.set_aside.events_lost)
            out += "\nNo failure in what was seen, but events were lost: incomplete, not healthy (see INCOMPLETE).\n";
        else
            out += d.warnings.empty() ? "\nHealthy: every transaction was answered and delivered.\n"
                                      : "\nNo failure yet: every transaction was answered and delivered.\n";
        return out;
    }
    for (const auto& f : d.findings) {
        out += fmt::format("\n{} {}\n", paint(std::string(to_string(f.verdict)), f.verdict, style), safe_list(f.pods));
        out += fmt::format("  evidence: {}\n", terminal_safe(f.evidence));
        if (!f.fix.empty()) out += fmt::format("  fix:   {}\n", indent_fix(f.fix));
    }
    return out;
}

}  // namespace imdstrace
