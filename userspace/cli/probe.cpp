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

#include "probe/imds_client.hpp"
#include "sinks/json.hpp"
#include "sinks/text.hpp"
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
};

std::string cgroup_of_pid(int pid) {
    std::ifstream in("/proc/" + std::to_string(pid) + "/cgroup");
    std::string line;
    while (std::getline(in, line))
        if (line.starts_with("0::")) return line.substr(3);
    return {};
}

std::optional<int> first_pid_in(const fs::path& dir) {
    std::error_code ec;
    std::ifstream procs(dir / "cgroup.procs");
    int pid;
    if (procs >> pid) return pid;
    for (const auto& e : fs::directory_iterator(dir, ec))
        if (e.is_directory(ec))
            if (auto p = first_pid_in(e.path())) return p;
    return std::nullopt;
}

// A process of pod NS/NAME: the cgroup tree walked top-down, each directory
// asked of the resolver (the same by_cgroup the tracer attributes with, so
// every --pods mode works), the first one of that pod with a process wins.
std::optional<int> pid_of_pod(const std::string& mount, PodResolver& pods, const std::string& ns,
                              const std::string& name) {
    std::error_code ec;
    for (auto it = fs::recursive_directory_iterator(mount, fs::directory_options::skip_permission_denied, ec);
         !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
        if (!it->is_directory(ec)) continue;
        auto pod = pods.by_cgroup(it->path().string().substr(mount.size()));
        if (!pod || pod->namespace_ != ns || pod->name != name) continue;
        if (auto pid = first_pid_in(it->path())) return pid;
        it.disable_recursion_pending();
    }
    return std::nullopt;
}

Place resolve_place(const ProbeArgs& a, const std::string& cgroup_mount, PodResolver* pods) {
    if (!a.pod.empty() && !pods) throw UsageError("--pod needs a pod resolver (--pods)");
    int chosen = (!a.pod.empty()) + (!a.netns.empty()) + (a.pid > 0) + a.host;
    if (chosen == 0)
        throw UsageError("probe needs where to probe from: --pod NS/NAME, --netns PATH or --pid PID "
                         "(or --host to probe from this network namespace itself)");
    if (chosen > 1) throw UsageError("give only one of --pod, --netns, --pid, --host");
    if (a.host) return Place{"", "", "this network namespace (--host)"};
    if (!a.netns.empty()) {
        if (!fs::exists(a.netns)) throw UsageError("--netns " + a.netns + ": no such file");
        return Place{a.netns, "", "network namespace " + a.netns};
    }
    int pid = a.pid;
    std::string label;
    if (!a.pod.empty()) {
        auto slash = a.pod.find('/');
        if (slash == std::string::npos) throw UsageError("--pod expects NAMESPACE/NAME, got \"" + a.pod + "\"");
        auto p = pid_of_pod(cgroup_mount, *pods, a.pod.substr(0, slash), a.pod.substr(slash + 1));
        if (!p)
            throw UsageError("--pod " + a.pod + ": no process of that pod under " + cgroup_mount +
                             " (check the name and --pods; `imdstrace watch` shows the names it resolves)");
        pid = *p;
        label = "pod " + a.pod + " (pid " + std::to_string(pid) + ")";
    } else {
        if (!fs::exists("/proc/" + std::to_string(pid))) throw UsageError("--pid " + std::to_string(pid) + ": no such process");
        label = "pid " + std::to_string(pid);
    }
    return Place{"/proc/" + std::to_string(pid) + "/ns/net", cgroup_of_pid(pid), label};
}

nlohmann::json step_json(const ProbeStep& s) {
    return {{"method", s.method}, {"path", s.path}, {"status", s.status ? nlohmann::json(*s.status) : nlohmann::json()},
            {"error", s.error},   {"local", s.local.str()}, {"ms", s.ms}};
}

// The child: wait for the tracer, enter the place, talk to IMDS, report
// each step as a JSON line on `out`.
[[noreturn]] void child(const Place& place, const std::string& cgroup_mount, const ProbePlan& plan, int go, int out) {
    char c;
    if (::read(go, &c, 1) != 1) ::_exit(2);
    if (!place.cgroup.empty()) {
        std::ofstream procs(cgroup_mount + place.cgroup + "/cgroup.procs");
        procs << ::getpid() << std::endl;
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
        auto line = step_json(s).dump() + "\n";
        (void)!::write(out, line.data(), line.size());
    });
    ::_exit(0);
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

    auto mount = find_cgroup2_mount(opts.host_root).value_or("/sys/fs/cgroup");
    std::unique_ptr<PodResolver> pods;
    if (!a.pod.empty()) pods = make_pod_resolver(opts, mount);
    Place place = resolve_place(a, mount, pods.get());

    // Fork before any thread exists; the child waits for the tracer.
    int go[2], report[2];
    if (::pipe2(go, O_CLOEXEC) != 0 || ::pipe2(report, O_CLOEXEC) != 0)
        throw std::runtime_error(std::string("pipe: ") + std::strerror(errno));
    pid_t pid = ::fork();
    if (pid < 0) throw std::runtime_error(std::string("fork: ") + std::strerror(errno));
    if (pid == 0) {
        ::close(go[1]);
        ::close(report[0]);
        child(place, mount, plan, go[0], report[1]);
    }
    ::close(go[0]);
    ::close(report[1]);
    struct ChildGuard {
        pid_t pid;
        int go_fd;
        ~ChildGuard() {
            if (go_fd >= 0) ::close(go_fd);
            if (pid > 0 && ::waitpid(pid, nullptr, WNOHANG) == 0) {
                ::kill(pid, SIGKILL);
                ::waitpid(pid, nullptr, 0);
            }
        }
    } guard{pid, go[1]};

    opts.duration_s.reset();
    Session session(opts);
    session.start();
    spdlog::info("probing {} from {}: {}", plan.target.str(), place.describe, fmt::join(session.describe(), "; "));
    (void)!::write(go[1], "g", 1);
    ::close(go[1]);
    guard.go_fd = -1;

    // Trace while the child works, then a little longer for late drops/ICMP.
    std::atomic<bool> done{false};
    std::vector<TransactionRecord> records;
    std::thread watcher([&] {
        int status = 0;
        ::waitpid(pid, &status, 0);
        guard.pid = -1;
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

    // What the child saw.
    std::vector<ProbeStep> steps;
    std::vector<nlohmann::json> step_lines;
    std::string fatal;
    {
        std::string buf;
        char tmp[4096];
        ssize_t n;
        while ((n = ::read(report[0], tmp, sizeof(tmp))) > 0) buf.append(tmp, static_cast<std::size_t>(n));
        ::close(report[0]);
        std::istringstream lines(buf);
        std::string line;
        while (std::getline(lines, line)) {
            auto j = nlohmann::json::parse(line, nullptr, false);
            if (j.is_discarded()) continue;
            if (j.contains("fatal")) fatal = j["fatal"].get<std::string>();
            else step_lines.push_back(j);
        }
    }
    if (!fatal.empty()) throw std::runtime_error(fatal);

    // The probe's own transactions: matched by the client socket's address.
    std::vector<TransactionRecord> mine;
    for (const auto& r : records)
        for (const auto& s : step_lines)
            if (s["local"] == r.client.str()) {
                mine.push_back(r);
                break;
            }
    if (mine.empty()) mine = records;  // NAT hid the socket's address: keep the window's transactions
    DiagnosisBuilder builder;
    for (const auto& r : mine) builder.add(r);
    auto d = builder.build(session.window_s(), session.target_strings());
    bool any_step_failed = std::any_of(step_lines.begin(), step_lines.end(), [](const nlohmann::json& s) {
        return s["status"].is_null() || s["status"].get<int>() >= 400;
    });
    bool failing = d.failing() || any_step_failed;

    if (output == "json") {
        nlohmann::json j;
        j["schema"] = "imdstrace.probe/v1";
        j["from"] = place.describe;
        j["target"] = plan.target.str();
        j["steps"] = step_lines;
        j["transactions"] = nlohmann::json::array();
        for (const auto& r : mine) j["transactions"].push_back(to_json(r));
        j["diagnosis"] = to_json(d);
        j["healthy"] = !failing;
        std::cout << j.dump(2) << std::endl;
    } else {
        std::cout << fmt::format("probe from {} to {}\n", place.describe, plan.target.str());
        for (const auto& s : step_lines)
            std::cout << fmt::format("  {} {:<45} -> {}\n", s["method"].get<std::string>(), s["path"].get<std::string>(),
                                     s["status"].is_null() ? s["error"].get<std::string>()
                                                           : fmt::format("{} ({} ms)", s["status"].get<int>(),
                                                                         s["ms"].get<int>()));
        std::cout << "\nwhat the kernel saw:\n";
        for (const auto& r : mine) std::cout << "  " << format_transaction(r) << "\n";
        std::cout << "\n" << format_diagnosis(d);
        if (failing && !d.failing())
            std::cout << "\nThe probe failed but the trace shows no failure on this node's path: check the target "
                         "address and --iface, or run `imdstrace check`.\n";
    }
    return failing ? 3 : 0;
}

}  // namespace imdstrace
