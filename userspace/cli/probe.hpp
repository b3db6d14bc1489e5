// `imdstrace probe`: the IMDSv2 flow of an SDK from inside a pod, traced.
#pragma once

#include <atomic>
#include <string>

#include "pipeline/session.hpp"

namespace imdstrace {

struct ProbeArgs {
    std::string pod;    // NAMESPACE/NAME (needs a resolver that knows its cgroup)
    std::string netns;  // a network namespace file (/run/netns/x, /proc/PID/ns/net)
    int pid = 0;        // a process whose network namespace and cgroup to use
    bool host = false;  // probe from imdstrace's own network namespace
    int attempts = 3;
    int timeout_ms = 1000;
    bool no_fallback = false;
};

// Exit code: 0 healthy, 3 failing.  Throws UsageError / runtime_error.
int run_probe(const ProbeArgs& args, SessionOptions opts, const std::string& output, const std::atomic<bool>& stop);

}  // namespace imdstrace
