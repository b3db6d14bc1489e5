// `imdstrace probe`: make the IMDSv2 requests an SDK makes, from inside a
// pod's network namespace (and cgroup), while tracing them, and say what
// happened to them.
#include "cli/probe.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <sched.h>
#include <spdlog/spdlog.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <sstream>
#include <thread>
#include <fstream>
#include <iostream>

#include "cli/output.hpp"
#include "pods/host_procs.hpp"
#include "probe/imds_client.hpp"
#include "sinks/escape.hpp"
#include "sinks/json.hpp"
#include "sinks/reports.hpp"
#include "verdict/diagnosis.hpp"

namespace imdstrace {
namespace {

namespace fs = std::filesystem;

// Where the probe runs: a network namespace and, when known, a cgroup (so
// the socket hooks see it and attribute it to the pod).
struct Place {
    std::string netns;   // path to a netns file; "" = this process's own
    std::string cgroup;  // relative to the cgroup2 mount; "" = stay where we are
    std::string describe;
    std::optional<PodInfo> pod;  // --pod: the pod its own transactions belong to
};

// The cgroup directory of pod NS/NAME: the cgroup tree walked top-down, each
// directory asked of the resolver (the same by_cgroup the tracer attributes
// with, so every --pods mode works); the first one of that pod is its cgroup.
std::optional<std::pair<std::string, PodInfo>> cgroup_of_pod(const std::string& mount, PodResolver& pods,
                                                             const std::string& ns, const std::string& name) {
    std::error_code ec;
    for (auto it = fs::recursive_directory_iterator(mount, fs::directory_options::skip_permission_denied, ec);
         !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
        if (!it->is_directory(ec)) continue;
        auto rel = it->path().string().substr(mount.size());
        auto pod = pods.by_cgroup(rel);
        if (!pod || pod->namespace_ != ns || pod->name != name) continue;
        // The pod's own cgroup, as the resolver knows it (a container's parent).
        auto dir = !pod->cgroup.empty() && (rel == pod->cgroup || rel.starts_with(pod->cgroup + "/")) ? pod->cgroup : rel;
        pod->container.clear();
        return std::make_pair(dir, *pod);
    }
    return std::nullopt;
}

Place resolve_place(const ProbeArgs& a, const HostProcs& procs, PodResolver* pods) {
    if (!a.pod.empty() && !pods) throw UsageError("--pod needs a pod resolver (--pods)");
    int chosen = (!a.pod.empty()) + (!a.netns.empty()) + (a.pid > 0) + a.host;
    if (chosen == 0)
        throw UsageError("probe needs where to probe from: --pod NS/NAME, --netns PATH or --pid PID "
                         "(or --host to probe from this network namespace itself)");
    if (chosen > 1) throw UsageError("give only one of --pod, --netns, --pid, --host");
    if (a.host) return Place{"", "", "this network namespace (--host)", std::nullopt};
    if (!a.netns.empty()) {
        if (!fs::exists(a.netns)) throw UsageError("--netns " + a.netns + ": no such file");
        return Place{a.netns, "", "network namespace " + a.netns, std::nullopt};
    }
    const auto& mount = procs.cgroup_mount();
    const auto proc = procs.proc_root() + "/";
    if (!a.pod.empty()) {
        auto slash = a.pod.find('/');
        if (slash == std::string::npos) throw UsageError("--pod expects NAMESPACE/NAME, got \"" + a.pod + "\"");
        auto pod = cgroup_of_pod(mount, *pods, a.pod.substr(0, slash), a.pod.substr(slash + 1));
        auto look = procs.look();
        auto p = pod ? pod_network_process(look, procs, pod->first) : std::nullopt;
        if (!p)
            throw UsageError("--pod " + a.pod + ": no process of that pod under " + mount +
                             " (check the name and --pods; `imdstrace watch` shows the names it resolves)");
        // The pod's own network namespace: not CRI-O's conmon (the host's),
        // not a container nested inside the pod (pods/host_procs.hpp).
        return Place{proc + std::to_string(p->pid) + "/ns/net", p->cgroup,
                     "pod " + a.pod + " (pid " + std::to_string(p->pid) + (p->host_network ? ", host network" : "") + ")",
                     pod->second};
    }
    // --pid: a host pid (what `watch` prints: the kernel's view), read in the host's procfs.
    if (!fs::exists(proc + std::to_string(a.pid)))
        throw UsageError("--pid " + std::to_string(a.pid) + ": no such process in " + procs.proc_root());
    return Place{proc + std::to_string(a.pid) + "/ns/net", procs.cgroup_of(a.pid).value_or(""),
                 "pid " + std::to_string(a.pid), std::nullopt};
}

// The child: wait for the tracer, enter the place, talk to IMDS, report
// each step as a JSON line on `out`.
[[noreturn]] void child(const Place& place, const std::string& cgroup_mount, const ProbePlan& plan, int go, int out) {
    char c;
    if (::read(go, &c, 1) != 1) ::_exit(2);
    if (!place.cgroup.empty()) {
        // "0": this process, whatever pid namespace it is in.
        int fd = ::open((cgroup_mount + place.cgroup + "/cgroup.procs").c_str(), O_WRONLY | O_CLOEXEC);
        if (fd < 0 || ::write(fd, "0", 1) != 1) {
            auto msg = nlohmann::json{{"warning", "cannot join the cgroup " + place.cgroup + " (" +
                                                      std::strerror(errno) + "): its transactions are matched to it by address"}}
                           .dump() +
                       "\n";
            (void)!::write(out, msg.data(), msg.size());
        }
        if (fd >= 0) ::close(fd);
    }
    if (!place.netns.empty()) {
        int fd = ::open(place.netns.c_str(), O_RDONLY | O_CLOEXEC);
        if (fd < 0 || ::setns(fd, CLONE_NEWNET) != 0) {
            auto msg = nlohmann::json{{"fatal", std::string("cannot enter ") + place.netns + ": " + std::strerror(errno)}}.dump() + "\n";
            (void)!::write(out, msg.data(), msg.size());
            ::_exit(2);
        }
        ::close(fd);
    }
    run_imds_flow(plan, [out](const ProbeStep& s) {
        auto line = dump_json(step_to_json(s)) + "\n";
        (void)!::write(out, line.data(), line.size());
    });
    ::_exit(0);
}

// The child's side of the flow, as it reported it: its steps, or the
// reason it could not start (throws).
std::vector<ProbeStep> read_steps(int fd) {
    std::string buf;
    char tmp[4096];
    ssize_t n;
    while ((n = ::read(fd, tmp, sizeof(tmp))) > 0) buf.append(tmp, static_cast<std::size_t>(n));
    ::close(fd);
    std::vector<ProbeStep> steps;
    std::istringstream lines(buf);
    std::string line;
    while (std::getline(lines, line)) {
        auto j = nlohmann::json::parse(line, nullptr, false);
        if (j.is_discarded()) continue;
        if (j.contains("fatal")) throw std::runtime_error(j["fatal"].get<std::string>());
        if (j.contains("warning")) {
            spdlog::warn("probe: {}", j["warning"].get<std::string>());
            continue;
        }
        steps.push_back(step_from_json(j));
    }
    return steps;
}

// The probe's own transactions, matched by the client socket's address.
std::vector<TransactionRecord> own_transactions(std::vector<TransactionRecord> records,
                                                const std::vector<ProbeStep>& steps) {
    std::vector<TransactionRecord> mine;
    for (const auto& r : records)
        if (std::any_of(steps.begin(), steps.end(), [&r](const ProbeStep& s) { return s.local == r.client; }))
            mine.push_back(r);
    return mine.empty() ? records : mine;  // NAT hid the socket's address: keep the window's transactions
}

// The child process: forked before any thread exists, it waits on `go`
// for the tracer to attach.
struct ProbeChild {
    pid_t pid = -1;
    int go_fd = -1;      // write one byte: start
    int report_fd = -1;  // the steps, one JSON line each

    ProbeChild(const Place& place, const std::string& cgroup_mount, const ProbePlan& plan) {
        int go[2], report[2];
        if (::pipe2(go, O_CLOEXEC) != 0 || ::pipe2(report, O_CLOEXEC) != 0)
            throw std::runtime_error(std::string("pipe: ") + std::strerror(errno));
        pid = ::fork();
        if (pid < 0) throw std::runtime_error(std::string("fork: ") + std::strerror(errno));
        if (pid == 0) {
            ::close(go[1]);
            ::close(report[0]);
            child(place, cgroup_mount, plan, go[0], report[1]);
        }
        ::close(go[0]);
        ::close(report[1]);
        go_fd = go[1];
        report_fd = report[0];
    }
    ProbeChild(const ProbeChild&) = delete;
    ProbeChild& operator=(const ProbeChild&) = delete;
    ~ProbeChild() {
        if (go_fd >= 0) ::close(go_fd);
        if (report_fd >= 0) ::close(report_fd);
        if (pid > 0 && ::waitpid(pid, nullptr, WNOHANG) == 0) {
            ::kill(pid, SIGKILL);
            ::waitpid(pid, nullptr, 0);
        }
    }
    void start() {
        (void)!::write(go_fd, "g", 1);
        ::close(go_fd);
        go_fd = -1;
    }
    // Blocks until the child exits.
    void wait() {
        int status = 0;
        ::waitpid(pid, &status, 0);
        pid = -1;
    }
    std::vector<ProbeStep> steps() {
        int fd = report_fd;
        report_fd = -1;
        return read_steps(fd);
    }
};

// Trace while the child works, then a little longer for late drops/ICMP.
std::vector<TransactionRecord> trace_child(Session& session, ProbeChild& probe, const std::atomic<bool>& stop) {
    std::vector<TransactionRecord> records;
    std::atomic<bool> done{false};
    std::thread watcher([&] {
        probe.wait();
        for (int i = 0; i < 30 && !stop.load(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(100));
        done.store(true);
    });
    std::atomic<bool> either{false};
    std::thread relay([&] {
        while (!done.load() && !stop.load()) std::this_thread::sleep_for(std::chrono::milliseconds(50));
        either.store(true);
    });
    session.run(either, [&](const TransactionRecord& r) { records.push_back(r); });
    watcher.join();
    relay.join();
    return records;
}

}  // namespace

int run_probe(const ProbeArgs& a, SessionOptions opts, const std::string& output, const std::atomic<bool>& stop) {
    ProbePlan plan;
    plan.target = opts.targets.empty() ? default_targets().front() : opts.targets.front();
    plan.attempts = a.attempts;
    plan.timeout = std::chrono::milliseconds(a.timeout_ms);
    plan.fallback_v1 = !a.no_fallback;
    if (plan.attempts < 1 || plan.attempts > 10) throw UsageError("--attempts must be 1..10");
    if (a.timeout_ms < 50 || a.timeout_ms > 60000) throw UsageError("--timeout-ms must be 50..60000");

    const auto mount = locate_cgroup2(opts.host_root()).path;
    const auto root = opts.host_root() == "/" ? std::string() : opts.host_root();
    std::unique_ptr<PodResolver> pods;
    if (!a.pod.empty()) {
        auto settings = opts.pod_settings;
        settings.cgroup_mount = mount;
        pods = make_pod_resolver(opts.pods, settings);
    }
    const HostProcs procs(root + "/proc", mount);
    const Place place = resolve_place(a, procs, pods.get());

    ProbeChild probe(place, mount, plan);  // fork before any thread exists
    opts.duration_s.reset();
    Session session(opts);
    session.start();
    spdlog::info("probing {} from {}: {}", plan.target.str(), place.describe, fmt::join(session.describe(), "; "));
    probe.start();
    auto records = trace_child(session, probe, stop);

    ProbeReport report;
    report.from = place.describe;
    report.target = plan.target.str();
    report.steps = probe.steps();
    report.transactions = own_transactions(std::move(records), report.steps);
    // They are the probe's own, made from inside the pod: the pod's, even
    // where the probe could not join its cgroup (a read-only cgroup mount).
    if (place.pod)
        for (auto& r : report.transactions)
            if (std::any_of(report.steps.begin(), report.steps.end(), [&r](const ProbeStep& s) { return s.local == r.client; }) &&
                (!r.pod || r.pod->uid != place.pod->uid))
                r.pod = place.pod;
    DiagnosisBuilder builder;
    for (const auto& r : report.transactions) builder.add(r);
    report.diagnosis = builder.build(session.window_s(), session.target_strings());

    write_stdout(output == "json" ? dump_json(to_json(report), 2) + "\n" : format_probe(report));
    return report.healthy() ? 0 : 3;
}

}  // namespace imdstrace
