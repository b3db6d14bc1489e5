// imdstrace: why can't this pod reach the instance metadata service?
#include <CLI/CLI.hpp>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <csignal>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>

#include "cli/check.hpp"
#include "cli/output.hpp"
#include "common/json_input.hpp"
#include "cli/probe.hpp"
#include "fleet/fleet.hpp"
#include "pipeline/session.hpp"
#include "sinks/events_file.hpp"
#include "sinks/metrics.hpp"
#include "sinks/escape.hpp"
#include "sinks/json.hpp"
#include "sinks/text.hpp"
#include "verdict/diagnosis.hpp"

using namespace imdstrace;

namespace {

constexpr int kExitHealthy = 0;
constexpr int kExitRuntime = 1;
constexpr int kExitUsage = 2;
constexpr int kExitFailures = 3;
// No failure in what was seen, but not all was seen: events were lost, or the
// files `report` read do not hold the whole window.  Not "healthy" (0).
constexpr int kExitIncomplete = 4;

std::atomic<bool> g_stop{false};

void on_signal(int) { g_stop.store(true); }

void install_signal_handlers() {
    struct sigaction sa{};
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    for (int sig : {SIGINT, SIGTERM, SIGHUP}) sigaction(sig, &sa, nullptr);
    signal(SIGPIPE, SIG_IGN);
}

struct CommonArgs {
    std::vector<std::string> ifaces;
    std::vector<std::string> targets;
    std::string cgroup;
    std::string pods = "auto";
    std::string host_root = "/";
    std::string output = "text";
    std::string events;
    std::string events_max_bytes;
    unsigned events_max_files = 0;
    std::string pcap;
    std::string metrics;
    std::string node_name;
    double k8s_events_interval = 600;
    std::string ready_file;
    std::string kubeconfig;
    std::optional<std::string> duration;  // checked by duration_s()
    std::optional<std::string> ring_size;  // checked by ring_size_bytes()
    std::optional<std::string> proxy_ports;  // checked by parse_proxy_ports()
    std::string log_level = "info";
    bool no_tcx = false;
};

void add_common(CLI::App* app, CommonArgs& a, bool tracing) {
    app->add_option("-o,--output", a.output, "Output format")->check(CLI::IsMember({"text", "json"}));
    app->add_option("--log-level", a.log_level, "trace|debug|info|warn|error")
        ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error", "off"}));
    if (!tracing) return;
    app->add_option("--iface", a.ifaces, "Uplink interface (repeatable; default: the routes to the targets)");
    app->add_option("--target", a.targets,
                    "Metadata endpoint ADDR[:PORT] (repeatable; default 169.254.169.254:80 and [fd00:ec2::254]:80)");
    app->add_option("--cgroup", a.cgroup, "cgroup v2 directory for the socket hooks (default: the cgroup2 root; none)");
    app->add_option("--pods", a.pods, "Pod resolver: auto|k8s-node|k8s-api|static:FILE|none");
    app->add_option("--host-root", a.host_root, "Where the host's /proc, /sys/fs/cgroup, /var/log/pods are");
    app->add_option("--kubeconfig", a.kubeconfig, "kubeconfig for --pods k8s-api (default: in-cluster config)");
    app->add_option("--events", a.events, "Append every transaction as JSONL to FILE");
    app->add_option("--events-max-bytes", a.events_max_bytes,
                    "Rotate --events FILE before it passes SIZE bytes (K, M, G suffixes): FILE.1, FILE.2, ... "
                    "(like tcpdump -C)");
    app->add_option("--events-max-files", a.events_max_files,
                    "With --events-max-bytes: keep at most N files, FILE included (default 10; like tcpdump -W)")
        ->check(CLI::Range(1u, 10000u));
    app->add_option("--pcap", a.pcap, "Write the IMDS packets to a pcap FILE");
    app->add_option("--metrics", a.metrics, "Serve Prometheus metrics on ADDR:PORT");
    app->add_option("--k8s-events-interval", a.k8s_events_interval,
                    "With the API (--pods k8s-api, or auto in a cluster): a Kubernetes Event on a failing pod at "
                    "most once per pod and verdict per SECONDS (default 600; 0: none)")
        ->check(CLI::Range(0.0, 31.0 * 24 * 3600));
    app->add_option("--node-name", a.node_name,
                    "The metrics' node label (default: $NODE_NAME, as the DaemonSet sets it, else the host name)");
    app->add_option("--proxy-ports", a.proxy_ports,
                    "Destination ports whose TCP payloads are checked for metadata requests sent through an HTTP "
                    "proxy: a comma list, 'any' (every port: ~25 ns per data segment a pod sends) or 'none' "
                    "(default 3128,3129,8080,8000,8081,8118,8888,80)");
    app->add_option("--ring-size", a.ring_size,
                    "Event ring buffer size in bytes (K/M/G suffixes: KiB/MiB/GiB): a power of two from one page "
                    "to 1G (default 4M)");
    app->add_option("--ready-file", a.ready_file, "Write FILE once the probes are attached")->group("");
    app->add_flag("--no-tcx", a.no_tcx, "Attach with netlink tc even where tcx links exist")->group("");
}

void setup_logging(const std::string& level) {
    auto logger = spdlog::stderr_color_mt("imdstrace");
    spdlog::set_default_logger(logger);
    spdlog::set_pattern("imdstrace: %^%l%$: %v");
    spdlog::set_level(spdlog::level::from_str(level));
}

constexpr double kMaxDurationS = 365.0 * 24 * 3600;

// --duration: a positive, finite number of seconds, at most a year; nullopt
// when not given.  Checked here, before anything is attached.
std::optional<double> duration_s(const std::optional<std::string>& given) {
    if (!given) return std::nullopt;
    const std::string& text = *given;
    char* end = nullptr;
    errno = 0;
    double v = std::strtod(text.c_str(), &end);
    if (end == text.c_str() || *end != '\0' || !std::isfinite(v) || v <= 0 || v > kMaxDurationS)
        throw UsageError("--duration " + text + ": --duration must be a positive, finite number of seconds (at most " +
                         std::to_string(static_cast<long>(kMaxDurationS)) + ", a year)");
    return v;
}

// --ring-size: what libbpf and the kernel accept for a BPF ring buffer, a
// power of two of pages, checked here with a message instead of a refused
// map create (or libbpf silently rounding it up).  0 when not given.
std::uint32_t ring_size_bytes(const std::optional<std::string>& given) {
    if (!given) return 0;
    const std::string& text = *given;
    const auto page = static_cast<std::uint64_t>(sysconf(_SC_PAGESIZE));
    constexpr std::uint64_t kMax = 1ULL << 30;
    auto bad = [&] {
        return UsageError("--ring-size " + text + ": expected a power of two of bytes between one page (" +
                          std::to_string(page) + ") and 1G, e.g. 4M, 16M or 262144");
    };
    std::uint64_t v = 0;
    std::size_t i = 0;
    for (; i < text.size() && text[i] >= '0' && text[i] <= '9'; ++i) {
        v = v * 10 + static_cast<std::uint64_t>(text[i] - '0');
        if (v > kMax) throw bad();
    }
    if (i == 0) throw bad();
    std::string unit = text.substr(i);
    if (unit == "K" || unit == "k" || unit == "KiB") v <<= 10;
    else if (unit == "M" || unit == "m" || unit == "MiB") v <<= 20;
    else if (unit == "G" || unit == "g" || unit == "GiB") v <<= 30;
    else if (!unit.empty()) throw bad();
    if (v < page || v > kMax || (v & (v - 1)) != 0) throw bad();
    return static_cast<std::uint32_t>(v);
}

// --proxy-ports LIST|any|none.  Sets the session's ports; a usage error
// names the bad element.
void parse_proxy_ports(const std::optional<std::string>& given, SessionOptions& o) {
    if (!given) return;
    const std::string& text = *given;
    o.proxy_any_port = false;
    o.proxy_ports.clear();
    if (text == "any") {
        o.proxy_any_port = true;
        return;
    }
    if (text == "none") return;
    std::size_t start = 0;
    while (start <= text.size()) {
        auto end = text.find(',', start);
        std::string item = text.substr(start, end == std::string::npos ? std::string::npos : end - start);
        unsigned long port = 0;
        bool ok = !item.empty() && item.size() <= 5 &&
                  std::all_of(item.begin(), item.end(), [](char c) { return c >= '0' && c <= '9'; });
        if (ok) port = std::stoul(item);
        if (!ok || port == 0 || port > 65535)
            throw UsageError("--proxy-ports " + text + ": '" + item +
                             "' is not a port (1-65535); give a comma list, 'any' or 'none'");
        if (o.proxy_ports.size() == 16) throw UsageError("--proxy-ports " + text + ": at most 16 ports (or 'any')");
        o.proxy_ports.push_back(static_cast<std::uint16_t>(port));
        if (end == std::string::npos) break;
        start = end + 1;
    }
}

// --metrics ADDR:PORT: the port is required (0 picks a free one, and the
// bound port is logged).
void check_metrics_listen(const std::string& listen) {
    if (listen.empty()) return;
    if (!parse_metrics_listen(listen))
        throw UsageError("--metrics " + listen +
                         ": expected ADDR:PORT, e.g. 127.0.0.1:9655 or [::1]:9655 (port 0: a free port, logged)");
}

SessionOptions session_options(const CommonArgs& a, std::optional<double> duration) {
    check_metrics_listen(a.metrics);
    SessionOptions o;
    for (const auto& t : a.targets) {
        auto ep = Endpoint::parse(t, 80);
        if (!ep) throw UsageError("--target " + t + ": expected ADDR[:PORT], e.g. 169.254.169.254:80 or [fd00:ec2::254]:80");
        o.targets.push_back(*ep);
    }
    if (o.targets.empty()) o.targets = default_targets();
    o.ifaces = a.ifaces;
    o.cgroup = a.cgroup;
    o.pods = PodSelection::parse(a.pods);
    o.pod_settings.host_root = a.host_root;
    o.pod_settings.kubeconfig = a.kubeconfig;
    o.events_file = a.events;
    if (!a.events_max_bytes.empty()) {
        auto bytes = parse_byte_size(a.events_max_bytes);
        if (!bytes)
            throw UsageError("--events-max-bytes " + a.events_max_bytes +
                             ": expected a whole number of bytes with an optional K, M or G (powers of 1024), e.g. "
                             "64M; at most 1024T");
        if (*bytes < 4096)
            throw UsageError("--events-max-bytes " + a.events_max_bytes + ": at least 4096 bytes (4K), e.g. 64M");
        if (a.events.empty()) throw UsageError("--events-max-bytes needs --events FILE");
        o.events_rotation.max_bytes = *bytes;
    }
    if (a.events_max_files) {
        if (!o.events_rotation.max_bytes) throw UsageError("--events-max-files needs --events-max-bytes");
        o.events_rotation.max_files = a.events_max_files;
    }
    o.ready_file = a.ready_file;
    o.pcap_file = a.pcap;
    o.metrics_listen = a.metrics;
    o.node_name = a.node_name;
    o.k8s_events_interval_s = a.k8s_events_interval;
    o.duration_s = duration;
    o.prefer_tcx = !a.no_tcx;
    o.ring_size = ring_size_bytes(a.ring_size);
    parse_proxy_ports(a.proxy_ports, o);
    return o;
}

std::string join(const std::vector<std::string>& v, const char* sep) {
    std::string out;
    for (const auto& s : v) out += (out.empty() ? "" : sep) + s;
    return out;
}

int run_watch(const CommonArgs& a) {
    Session session(session_options(a, duration_s(a.duration)));
    session.start();
    spdlog::info("watching IMDS traffic (Ctrl-C to stop): {}", join(session.describe(), "; "));
    TextStyle style{isatty(STDOUT_FILENO) == 1};
    const bool json = a.output == "json";
    if (!json) write_stdout(format_transaction_header(style) + "\n");
    OutputWatch output_watch(g_stop);
    std::map<Verdict, int> totals;
    // One write per batch of records, not per record.
    std::string pending;
    session.on_batch_end([&] {
        write_stdout(pending);
        pending.clear();
    });
    session.run(
        g_stop,
        [&](const TransactionRecord& r) {
            ++totals[r.verdict];
            pending += json ? dump_json(to_json(r)) : format_transaction(r, style);
            pending += '\n';
        },
        [&] {
            // A heartbeat on stderr: quiet is not the same as dead.
            auto c = session.counters();
            std::size_t done = 0;
            for (const auto& [v, n] : totals) done += n;
            spdlog::info("{:.0f} s: no new transaction; {} so far, {} in flight, {} events, {} lost",
                         session.elapsed_s(), done, session.open_connections(), c.emitted, c.lost);
        });
    std::string summary;
    for (const auto& [v, n] : totals) summary += fmt::format("{}{} {}", summary.empty() ? "" : ", ", n, to_string(v));
    auto c = session.counters();
    spdlog::info("{:.1f} s: {} ({} events, {} lost)", session.elapsed_s(), summary.empty() ? "no transactions" : summary,
                 c.emitted, c.lost);
    return kExitHealthy;
}

int print_diagnosis(const Diagnosis& d, const std::string& output) {
    write_stdout(output == "json" ? dump_json(to_json(d), 2) + "\n"
                                  : format_diagnosis(d, TextStyle{isatty(STDOUT_FILENO) == 1}));
    if (d.failing()) return kExitFailures;
    return d.set_aside.events_lost || !d.partial.empty() ? kExitIncomplete : kExitHealthy;
}

int run_diagnose(const CommonArgs& a) {
    const double duration = duration_s(a.duration).value_or(30.0);
    Session session(session_options(a, duration));
    session.start();
    spdlog::info("tracing IMDS traffic for {:.0f} s (Ctrl-C to stop early): {}", duration,
                 join(session.describe(), "; "));
    DiagnosisBuilder builder;
    TextStyle style{isatty(STDERR_FILENO) == 1};
    session.run(g_stop, [&](const TransactionRecord& r) {
        builder.add(r);
        if (a.output == "text") std::cerr << "  " << format_transaction(r, style) << std::endl;
    });
    auto aside = session.set_aside();
    if (aside.events_lost)
        spdlog::warn("{} events were lost (ring buffer full): the transactions they touch are marked incomplete",
                     aside.events_lost);
    builder.add_session_counts(aside.other_namespaces, aside.socket_bookkeeping, aside.events_lost, aside.late_drops);
    builder.set_node_facts(session.node_facts());
    return print_diagnosis(builder.build(session.window_s(), session.target_strings()), a.output);
}

int run_report(const std::vector<std::string>& given, const CommonArgs& a) {
    // One file: with the files --events-max-bytes rotated out of it, oldest
    // first.  Several: in the order given.
    const auto files = given.size() == 1 ? rotated_set(given[0]) : given;
    if (files.size() > given.size())
        spdlog::info("reading the rotated set, oldest first: {}", join(files, ", "));
    // Why the files read may not hold the whole window: said on stderr as it is found, and in
    // the diagnosis itself (PARTIAL), which then never calls the node healthy.
    std::string partial;
    if (given.size() == 1)
        if (auto gap = rotated_gap(given[0], files.size())) {
            partial = fmt::format("{}.{} is missing: {}.{} and older files are not read (a gap in the rotated set)",
                                  given[0], *gap, given[0], *gap + 1);
            spdlog::warn("{}; the report covers {} only", partial, join(files, ", "));
        }
    // The same file twice counts its transactions twice: refused, not doubled.
    for (std::size_t i = 0; i < files.size(); ++i)
        for (std::size_t k = 0; k < i; ++k) {
            std::error_code ec;
            if (files[i] == files[k] || std::filesystem::equivalent(files[i], files[k], ec))
                throw UsageError(fmt::format("report: {} is given twice (as {} and {}): give each file once",
                                             files[i], files[k], files[i]));
        }
    const std::string file = join(given, ", ");
    DiagnosisBuilder builder;
    auto rec = read_recordings(files, [&builder](TransactionRecord&& r) { builder.add(r); });
    if (rec.skipped && !rec.transactions && rec.recorded_window == 0)
        throw std::runtime_error(fmt::format("report: no line of {} is a transaction or session record ({} bad lines; "
                                             "first: {})",
                                             file, rec.skipped, rec.first_skipped));
    if (rec.skipped)
        spdlog::warn("skipped {} line{} that {} not a transaction (a run killed mid-write leaves one; first: {}); "
                     "the report covers the other {}",
                     rec.skipped, rec.skipped == 1 ? "" : "s", rec.skipped == 1 ? "is" : "are", rec.first_skipped,
                     rec.transactions);
    // Session trailers (one per run appended to the file) give the windows
    // and targets exactly as the live run had them.
    builder.add_session_counts(rec.other_namespace_events, rec.socket_bookkeeping_frees, rec.events_lost,
                               rec.late_drops);
    builder.set_node_facts(rec.node);
    // A rotated set keeps the newest files only: the oldest one read opens with a rotation
    // record when the file before it was not read.  Every reason said (the first may hide the one that matters): "A; also: B".
    auto also = [&partial](std::string why) {
        spdlog::warn("{}", why);
        partial += (partial.empty() ? "" : "; also: ") + why;
    };
    if (rec.continues_earlier) {
        const double span_s = rec.first_ms ? (rec.last_ms - rec.first_ms) / 1000.0 : 0;
        also(fmt::format("{} continues a file that was rotated away{} (--events-max-files, or not given here): "
                         "its transactions are not in this report{}",
                         files.front(), rec.continued_at.empty() ? "" : " at " + rec.continued_at,
                         rec.recorded_window > 0
                             ? fmt::format("; the files read hold {:.1f} s of the {:.0f} s the sessions ran", span_s,
                                           rec.recorded_window)
                             : ""));
    }
    if (!rec.sequence_break.empty()) also(rec.sequence_break);
    double window = rec.recorded_window > 0 ? rec.recorded_window
                    : rec.first_ms          ? (rec.last_ms - rec.first_ms) / 1000.0
                                            : 0;
    // Without a trailer (a killed run): the targets given here (the same
    // defaults as live), plus any other server that appears in the file.
    std::vector<std::string> all = rec.recorded_targets;
    if (all.empty())
        for (const auto& t : session_options(a, std::nullopt).targets) all.push_back(t.str());
    for (const auto& t : rec.servers)
        if (std::find(all.begin(), all.end(), t) == all.end()) all.push_back(t);
    auto d = builder.build(window, all);
    d.partial = std::move(partial);
    return print_diagnosis(d, a.output);
}

struct FleetArgs {
    std::string prometheus;
    int window_s = 600;
    std::vector<std::string> group_labels;
};

// The cluster-wide answer from Prometheus: exit 3 when any node fails.
int run_fleet(const FleetArgs& f, const CommonArgs& a) {
    FleetOptions opts;
    opts.window_s = f.window_s;
    if (!f.group_labels.empty()) opts.group_labels = f.group_labels;
    PromQuery query;
    try {
        query = prometheus_http(f.prometheus);
    } catch (const std::invalid_argument& e) {
        throw UsageError(e.what());
    }
    auto fleet = build_fleet(query, opts, f.prometheus);
    write_stdout(a.output == "json" ? dump_json(to_json(fleet), 2) + "\n"
                                    : format_fleet(fleet, isatty(STDOUT_FILENO) == 1));
    // No node reporting is not a healthy fleet: nothing could be judged.
    if (fleet.nodes.empty())
        throw std::runtime_error("no imdstrace reports to " + f.prometheus +
                                 " (no imdstrace_build_info series): is it scraping the DaemonSet? Nothing was judged");
    return fleet.failing() ? kExitFailures : kExitHealthy;
}

}  // namespace

int main(int argc, char** argv) {
    CLI::App app{"imdstrace: why a pod cannot reach the instance metadata service, and what to change"};
    app.require_subcommand(0, 1);
    // Set before the subcommands are added (they copy it): CLI11's own messages read like
    // imdstrace's usage errors, "imdstrace: error: ..." then the hint.
    app.failure_message([](const CLI::App* a, const CLI::Error& e) {
        return "imdstrace: error: " + CLI::FailureMessage::simple(a, e);
    });
    CommonArgs args;

    auto* watch = app.add_subcommand("watch", "Stream IMDS transactions live (default command)");
    add_common(watch, args, true);
    watch->add_option("--duration", args.duration, "Stop after SECONDS (default: until Ctrl-C)");

    auto* diagnose = app.add_subcommand("diagnose", "Trace for --duration, then per-pod verdicts, root cause, fix");
    add_common(diagnose, args, true);
    diagnose->add_option("--duration", args.duration, "Seconds to trace (default 30)");

    std::vector<std::string> report_files;
    auto* report = app.add_subcommand("report", "Rebuild the diagnosis from a recorded JSONL file");
    add_common(report, args, false);
    report->add_option("file", report_files,
                       "JSONL written by --events (one FILE: FILE.N .. FILE.1 rotated out of it are read first; "
                       "several: in the order given)")
        ->required();
    report->add_option("--target", args.targets, "Targets the recording was made with (default: the IMDS addresses)");

    ProbeArgs probe_args;
    auto* probe = app.add_subcommand("probe", "Make a real IMDSv2 request from inside a pod/netns while tracing it");
    add_common(probe, args, true);
    probe->add_option("--pod", probe_args.pod, "NAMESPACE/NAME of the pod to probe from (needs --pods)");
    probe->add_option("--netns", probe_args.netns, "Network namespace file to probe from (/run/netns/X, /proc/PID/ns/net)");
    probe->add_option("--pid", probe_args.pid, "Probe from this process's network namespace and cgroup");
    probe->add_flag("--host", probe_args.host, "Probe from imdstrace's own network namespace");
    probe->add_option("--attempts", probe_args.attempts, "Token attempts, like the SDKs (default 3)");
    probe->add_option("--timeout-ms", probe_args.timeout_ms, "Per-request timeout (default 1000, aws-sdk-go-v2's)");
    probe->add_flag("--no-fallback", probe_args.no_fallback, "Do not fall back to IMDSv1 GETs without a token");

    FleetArgs fleet_args;
    auto* fleet = app.add_subcommand("fleet", "The cluster-wide answer from Prometheus: nodes, failing pods, fixes");
    add_common(fleet, args, false);
    fleet->add_option("--prometheus", fleet_args.prometheus, "Prometheus base URL (http://host:9090)")->required();
    fleet->add_option("--window", fleet_args.window_s, "Failures over the last SECONDS (default 600, the alerts')")
        ->check(CLI::Range(60, 31 * 24 * 3600));
    fleet->add_option("--node-group-label", fleet_args.group_labels,
                      "Node label naming a node group, read from kube-state-metrics' kube_node_labels (repeatable; "
                      "default karpenter.sh/nodepool, eks.amazonaws.com/nodegroup, alpha.eksctl.io/nodegroup-name)");

    auto* check = app.add_subcommand("check", "Preflight: kernel, BTF, privileges, cgroup v2, attach points");
    add_common(check, args, true);

    // Without a subcommand, the top level takes watch's options.
    add_common(&app, args, true);
    app.add_option("--duration", args.duration, "Stop after SECONDS");

    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
        int rc = app.exit(e);
        return rc == 0 ? 0 : kExitUsage;
    }
    setup_logging(args.log_level);
    install_signal_handlers();
    try {
        if (*diagnose) return run_diagnose(args);
        if (*report) return run_report(report_files, args);
        if (*fleet) return run_fleet(fleet_args, args);
        if (*probe) return run_probe(probe_args, session_options(args, std::nullopt), args.output, g_stop);
        if (*check) return run_check(session_options(args, std::nullopt), args.output);
        return run_watch(args);
    } catch (const OutputClosed&) {
        // The reader went away (`| head`): everything is detached by now.
        spdlog::debug("standard output was closed: stopping");
        return kExitHealthy;
    } catch (const UsageError& e) {
        spdlog::error("{}", capped(e.what(), 1000));
        return kExitUsage;
    } catch (const std::exception& e) {
        spdlog::error("{}", capped(e.what(), 1000));
        return kExitRuntime;
    }
}
