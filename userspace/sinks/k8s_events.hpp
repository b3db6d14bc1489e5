// Kubernetes Events on the failing pod, so `kubectl describe pod` shows why
// it cannot reach IMDS: a core/v1 Event (POST /api/v1/namespaces/<ns>/events,
// the permission the ClusterRole grants: create events), at most once per pod
// and verdict per interval.  Posted from a thread of its own: the tracer never
// waits on the API server.  Refused (RBAC, credentials) or unreachable: said
// once, and the tracing goes on.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

#include <nlohmann/json.hpp>

#include "pods/k8s.hpp"
#include "verdict/record.hpp"

namespace imdstrace {

struct PodEventOptions {
    std::chrono::milliseconds interval{std::chrono::minutes(10)};  // per pod and verdict
    std::string node;                                                // source.host, reportingInstance
    std::chrono::milliseconds timeout{3000};
    std::size_t max_queue = 256;
};

// The Event for a record, or nullopt when it gets none: not a failure, no
// pod (a host process), or set aside (opened before tracing, incomplete).
std::optional<nlohmann::json> pod_event(const TransactionRecord& r, const std::string& node, std::int64_t now_ms);

struct PodEventStats {
    std::uint64_t posted = 0, suppressed = 0, failed = 0, dropped = 0;
};

class PodEventPoster {
public:
    PodEventPoster(K8sApiConfig cfg, PodEventOptions opts);
    ~PodEventPoster();
    PodEventPoster(const PodEventPoster&) = delete;
    PodEventPoster& operator=(const PodEventPoster&) = delete;
    void record(const TransactionRecord& r, std::int64_t now_ms);
    // Waits (at most `timeout`) until every queued Event was sent or failed.
    void flush(std::chrono::milliseconds timeout);
    PodEventStats stats() const;

private:
    void loop();
    bool post(const nlohmann::json& event);
    K8sApiConfig cfg_;
    PodEventOptions opts_;
    mutable std::mutex mu_;
    std::condition_variable cv_;
    std::deque<nlohmann::json> queue_;
    std::map<std::string, std::int64_t> last_posted_;  // pod uid|ns/name + verdict -> ms
    PodEventStats stats_;
    bool stop_ = false, busy_ = false, refused_ = false, said_ = false;
    std::thread thread_;
};

}  // namespace imdstrace
