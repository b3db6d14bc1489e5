#include "sinks/k8s_events.hpp"

#include <curl/curl.h>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <fstream>

#include "common/json_input.hpp"
#include "sinks/escape.hpp"
#include "sinks/json.hpp"
#include "verdict/diagnosis.hpp"

namespace imdstrace {
namespace {

// HOP_LIMIT_EXCEEDED -> ImdsHopLimitExceeded (an Event reason is UpperCamelCase).
std::string reason_of(Verdict v) {
    std::string out = "Imds";
    bool up = true;
    for (char c : to_string(v)) {
        if (c == '_') {
            up = true;
            continue;
        }
        out += up ? c : static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
        up = false;
    }
    return out;
}

std::string message_of(const TransactionRecord& r) {
    if (r.verdict == Verdict::hop_limit_exceeded && r.ttl_at_node && r.required_hop_limit)
        return fmt::format("IMDS token responses dropped at the node: hop limit {}, this pod needs {} "
                           "(raise httpPutResponseHopLimit to {})",
                           *r.ttl_at_node, *r.required_hop_limit, *r.required_hop_limit);
    std::string what = r.request ? r.request->method + " " + r.request->path : std::string("connection");
    return capped(fmt::format("IMDS request {} to {} failed: {}{}{}", what, r.server.str(), to_string(r.verdict),
                              r.evidence.empty() ? "" : ": ", r.evidence),
                  1000);
}

}  // namespace

std::optional<nlohmann::json> pod_event(const TransactionRecord& r, const std::string& node, std::int64_t now_ms) {
    if (!r.pod || r.pod->namespace_.empty() || r.pod->name.empty()) return std::nullopt;
    if (!is_failure(r.verdict) || !set_aside_reason(r).empty()) return std::nullopt;
    const std::string ts = iso8601_ms(now_ms).substr(0, 19) + "Z";  // RFC 3339, seconds (metav1.Time)
    nlohmann::json object = {{"apiVersion", "v1"},
                             {"kind", "Pod"},
                             {"namespace", utf8_or_replacement(r.pod->namespace_)},
                             {"name", utf8_or_replacement(r.pod->name)}};
    if (!r.pod->uid.empty()) object["uid"] = r.pod->uid;
    // client-go's recorder names an Event <object>.<unix nanoseconds in hex>.
    return nlohmann::json{
        {"apiVersion", "v1"},
        {"kind", "Event"},
        {"metadata",
         {{"name", fmt::format("{}.{:x}", utf8_or_replacement(r.pod->name), now_ms * 1'000'000)},
          {"namespace", utf8_or_replacement(r.pod->namespace_)}}},
        {"involvedObject", object},
        {"reason", reason_of(r.verdict)},
        {"message", utf8_or_replacement(message_of(r))},
        {"type", "Warning"},
        {"source", {{"component", "imdstrace"}, {"host", utf8_or_replacement(node)}}},
        {"firstTimestamp", ts},
        {"lastTimestamp", ts},
        {"count", 1},
        {"reportingComponent", "imdstrace"},
        {"reportingInstance", utf8_or_replacement(node)}};
}

PodEventPoster::PodEventPoster(K8sApiConfig cfg, PodEventOptions opts) : cfg_(std::move(cfg)), opts_(std::move(opts)) {
    static std::once_flag once;
    std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
    while (cfg_.server.ends_with("/")) cfg_.server.pop_back();
    thread_ = std::thread([this] { loop(); });
}

PodEventPoster::~PodEventPoster() {
    {
        std::lock_guard lk(mu_);
        stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
}

void PodEventPoster::record(const TransactionRecord& r, std::int64_t now_ms) {
    auto ev = pod_event(r, opts_.node, now_ms);
    if (!ev) return;
    const std::string key = (r.pod->uid.empty() ? r.pod->namespace_ + "/" + r.pod->name : r.pod->uid) + "|" +
                            std::string(to_string(r.verdict));
    std::lock_guard lk(mu_);
    if (refused_) return;
    if (auto it = last_posted_.find(key); it != last_posted_.end() && now_ms - it->second < opts_.interval.count()) {
        ++stats_.suppressed;
        return;
    }
    if (queue_.size() >= opts_.max_queue) {
        ++stats_.dropped;
        return;
    }
    last_posted_[key] = now_ms;
    // Bounded: forget what is older than an interval (pods come and go).
    if (last_posted_.size() > 4096)
        std::erase_if(last_posted_, [&](const auto& kv) { return now_ms - kv.second >= opts_.interval.count(); });
    queue_.push_back(std::move(*ev));
    cv_.notify_all();
}

void PodEventPoster::flush(std::chrono::milliseconds timeout) {
    std::unique_lock lk(mu_);
    cv_.wait_for(lk, timeout, [&] { return queue_.empty() && !busy_; });
}

PodEventStats PodEventPoster::stats() const {
    std::lock_guard lk(mu_);
    return stats_;
}

void PodEventPoster::loop() {
    std::unique_lock lk(mu_);
    for (;;) {
        cv_.wait(lk, [&] { return stop_ || !queue_.empty(); });
        if (queue_.empty()) return;  // stopping, nothing left
        auto ev = std::move(queue_.front());
        queue_.pop_front();
        busy_ = true;
        lk.unlock();
        bool ok = post(ev);
        lk.lock();
        busy_ = false;
        ++(ok ? stats_.posted : stats_.failed);
        cv_.notify_all();
    }
}

bool PodEventPoster::post(const nlohmann::json& event) {
    std::string token = cfg_.token;
    if (!cfg_.token_file.empty()) {
        std::ifstream in(cfg_.token_file);
        std::string t;
        if (in >> t) token = t;
    }
    std::unique_ptr<CURL, void (*)(CURL*)> h(curl_easy_init(), &curl_easy_cleanup);
    if (!h) return false;
    const std::string ns = event["metadata"]["namespace"].get<std::string>();
    std::unique_ptr<char, void (*)(void*)> ns_escaped(curl_easy_escape(h.get(), ns.c_str(), 0), &curl_free);
    const std::string url = cfg_.server + "/api/v1/namespaces/" + ns_escaped.get() + "/events";
    const std::string body = dump_json(event);
    std::string answer;
    char errbuf[CURL_ERROR_SIZE] = {};
    curl_slist* headers = curl_slist_append(nullptr, "Content-Type: application/json");
    headers = curl_slist_append(headers, "Accept: application/json");
    if (!token.empty()) headers = curl_slist_append(headers, ("Authorization: Bearer " + token).c_str());
    std::unique_ptr<curl_slist, void (*)(curl_slist*)> header_list(headers, &curl_slist_free_all);
    curl_easy_setopt(h.get(), CURLOPT_URL, url.c_str());
    curl_easy_setopt(h.get(), CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(h.get(), CURLOPT_POSTFIELDS, body.c_str());
    curl_easy_setopt(h.get(), CURLOPT_POSTFIELDSIZE, static_cast<long>(body.size()));
    curl_easy_setopt(h.get(), CURLOPT_USERAGENT, "imdstrace");
    curl_easy_setopt(h.get(), CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h.get(), CURLOPT_TIMEOUT_MS, static_cast<long>(opts_.timeout.count()));
    curl_easy_setopt(h.get(), CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(h.get(), CURLOPT_ERRORBUFFER, errbuf);
    curl_easy_setopt(h.get(), CURLOPT_WRITEDATA, &answer);
    curl_easy_setopt(h.get(), CURLOPT_WRITEFUNCTION, +[](char* p, size_t sz, size_t n, void* ud) -> size_t {
        auto* b = static_cast<std::string*>(ud);
        if (b->size() + sz * n > (1u << 20)) return 0;
        b->append(p, sz * n);
        return sz * n;
    });
    apply_k8s_tls(h.get(), cfg_);
    CURLcode rc = curl_easy_perform(h.get());
    long code = 0;
    curl_easy_getinfo(h.get(), CURLINFO_RESPONSE_CODE, &code);
    if (rc == CURLE_OK && (code == 201 || code == 200)) {
        spdlog::debug("k8s events: {} on {}/{}", event["reason"].get<std::string>(), ns,
                      event["involvedObject"]["name"].get<std::string>());
        return true;
    }
    std::string why = rc != CURLE_OK ? (errbuf[0] ? errbuf : curl_easy_strerror(rc))
                                     : fmt::format("HTTP {}{}", code, [&] {
                                           auto j = nlohmann::json::parse(answer, nullptr, false);
                                           return j.is_object() && j.contains("message") && j["message"].is_string()
                                                      ? ": " + capped(j["message"].get<std::string>(), 300)
                                                      : std::string();
                                       }());
    std::lock_guard lk(mu_);
    // Refused (credentials, RBAC without `create events`): stop asking.
    if (code == 401 || code == 403) refused_ = true;
    if (!said_) {
        said_ = true;
        spdlog::info("k8s events: cannot post an Event on {}/{} to {} ({}){}", ns,
                     event["involvedObject"]["name"].get<std::string>(), cfg_.server, why,
                     refused_ ? "; no more Events (the ClusterRole needs create on events)" : "");
    }
    return false;
}

}  // namespace imdstrace
