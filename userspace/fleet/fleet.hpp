// `imdstrace fleet`: the cluster-wide answer from Prometheus.  Every node's
// imdstrace exports its observed hop limit, what each pod needs and the
// verdicts of its transactions, labelled with the node (sinks/metrics);
// this reads them back per node and node group, in diagnose's style.
#pragma once

#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace imdstrace {

// One PromQL instant query -> its result vector (`data.result` of
// /api/v1/query).  Throws std::runtime_error when Prometheus cannot answer.
using PromQuery = std::function<nlohmann::json(const std::string& promql)>;

// Queries a Prometheus at `url` (http[s]://host:port[/prefix]) with libcurl.
PromQuery prometheus_http(const std::string& url, long timeout_ms = 5000);

struct FleetOptions {
    int window_s = 600;  // failures counted over this window (the alert's 10 minutes)
    // Node label that names a node group, as kube-state-metrics exports it in
    // kube_node_labels (label_<name with . / - as _>).  Tried in order; a node
    // without any is a group of its own.
    std::vector<std::string> group_labels = {"karpenter.sh/nodepool", "eks.amazonaws.com/nodegroup",
                                             "alpha.eksctl.io/nodegroup-name"};
};

struct FleetPod {
    std::string namespace_, name;
    std::optional<int> required_hop_limit;
    std::map<std::string, long> failures;  // verdict -> transactions (counter value) in the window
    std::string verdict = "OK";            // worst failure, or HOP_LIMIT_EXCEEDED by the hop arithmetic
};

struct FleetNode {
    std::string name, group;
    std::optional<int> hop_limit_observed;
    std::optional<int> required_hop_limit;  // the most any pod on it needs
    long events_lost = 0;
    std::vector<FleetPod> pods;  // pods with a failure or needing more than the node has
    bool failing() const;
};

struct FleetGroup {
    std::string name;  // "" = the node alone (no group label known)
    std::vector<std::string> nodes;
    std::optional<int> hop_limit_observed;  // the lowest of its nodes'
    std::optional<int> required_hop_limit;  // the most any pod on its nodes needs
    std::string fix;                        // "" when the group has what it needs
};

struct Fleet {
    std::string prometheus;
    int window_s = 0;
    std::vector<FleetNode> nodes;
    std::vector<FleetGroup> groups;
    bool failing() const;
};

Fleet build_fleet(const PromQuery& query, const FleetOptions& opts, std::string prometheus_url);

// The PromQL that finds pods whose IMDS transactions failed in the last
// `window_s` seconds, by (node, namespace, pod, verdict): the
// ImdsRequestsFailing alert of deploy/prometheus-rules.yaml with its 10
// minutes replaced by the window (a unit test holds the two together).
std::string failing_pods_query(int window_s);

nlohmann::json to_json(const Fleet& f);          // schema imdstrace.fleet/v1
std::string format_fleet(const Fleet& f, bool color);  // text, like diagnose's

}  // namespace imdstrace
