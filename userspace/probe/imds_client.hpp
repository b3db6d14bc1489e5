// The IMDSv2 conversation an AWS SDK has with the metadata service, for
// `imdstrace probe`: token PUT (per-attempt timeout, a few attempts), then
// GETs with the token; without a token, optionally IMDSv1 GETs (what the
// SDKs fall back to when tokens are optional).  Blocking sockets, no
// dependencies: it runs in a forked child inside the pod's network namespace.
#pragma once

#include <chrono>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "common/net.hpp"

namespace imdstrace {

struct ProbeStep {
    std::string method;
    std::string path;
    std::optional<int> status;  // nullopt: timeout or connection failure
    std::string error;          // "timeout after 1000 ms", "connection refused", ...
    Endpoint local;             // the socket's own address (to find it in the trace)
    int ms = 0;
};

struct ProbePlan {
    Endpoint target;
    int attempts = 3;
    std::chrono::milliseconds timeout{1000};
    bool fallback_v1 = true;
    std::vector<std::string> paths = {"/latest/meta-data/instance-id", "/latest/meta-data/mac"};
};

// Runs the flow; `on_step` sees each step as it completes.  Token values
// are used, never returned or printed.
std::vector<ProbeStep> run_imds_flow(const ProbePlan& plan, const std::function<void(const ProbeStep&)>& on_step);

}  // namespace imdstrace
