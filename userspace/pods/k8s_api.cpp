// --pods k8s-api: the node's pods from the Kubernetes API server
// (GET /api/v1/pods?fieldSelector=spec.nodeName=<node>, relisted in the
// background), with k8s-node as the fallback while the API server is
// unreachable, refuses us or hangs, and for pods newer than the last list.
// Also: in-cluster / kubeconfig configuration, and the --pods factory.
#include <curl/curl.h>
#include <unistd.h>
#include <yaml-cpp/yaml.h>

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "pods/k8s.hpp"
#include "pods/select.hpp"

namespace imdstrace {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

std::optional<std::string> read_text(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) return std::nullopt;
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

std::string trim(std::string s) {
    while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.pop_back();
    std::size_t i = 0;
    while (i < s.size() && std::isspace(static_cast<unsigned char>(s[i]))) ++i;
    return s.substr(i);
}

std::string env(const char* name) {
    const char* v = std::getenv(name);
    return v ? v : "";
}

std::string str_at(const json& j, const char* key) {
    if (!j.is_object()) return {};
    auto it = j.find(key);
    return it != j.end() && it->is_string() ? it->get<std::string>() : std::string();
}

std::string seconds(std::chrono::milliseconds ms) {
    auto s = fmt::format("{:.1f}", ms.count() / 1000.0);
    if (s.ends_with(".0")) s.resize(s.size() - 2);
    return s + " s";
}

}  // namespace

// ---------------------------------------------------------------------------
// Configuration

std::string base64_decode(std::string_view in) {
    auto val = [](char c) -> int {
        if (c >= 'A' && c <= 'Z') return c - 'A';
        if (c >= 'a' && c <= 'z') return c - 'a' + 26;
        if (c >= '0' && c <= '9') return c - '0' + 52;
        if (c == '+' || c == '-') return 62;
        if (c == '/' || c == '_') return 63;
        return -1;
    };
    std::string out;
    unsigned buf = 0;
    int bits = 0;
    for (char c : in) {
        if (c == '=') break;
        if (std::isspace(static_cast<unsigned char>(c))) continue;
        int v = val(c);
        if (v < 0) throw std::runtime_error("not base64");
        buf = (buf << 6) | static_cast<unsigned>(v);
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out.push_back(static_cast<char>((buf >> bits) & 0xff));
        }
    }
    return out;
}

std::string current_node_name() {
    if (auto n = env("NODE_NAME"); !n.empty()) return n;
    char host[256] = {};
    if (::gethostname(host, sizeof host - 1) == 0) return host;
    return {};
}

std::optional<K8sApiConfig> in_cluster_config(std::string* why) {
    auto fail = [&](std::string w) -> std::optional<K8sApiConfig> {
        if (why) *why = std::move(w);
        return std::nullopt;
    };
    auto host = env("KUBERNETES_SERVICE_HOST");
    if (host.empty()) return fail("KUBERNETES_SERVICE_HOST is not set (not running in a pod)");
    auto dir = env("IMDSTRACE_SA_DIR");
    if (dir.empty()) dir = "/var/run/secrets/kubernetes.io/serviceaccount";
    auto token = read_text(dir + "/token");
    if (!token || trim(*token).empty())
        return fail("no readable service-account token at " + dir + "/token");
    K8sApiConfig c;
    if (host.starts_with("http://") || host.starts_with("https://")) {
        c.server = host;  // a full URL (test setups: a plain-HTTP stand-in)
    } else {
        auto port = env("KUBERNETES_SERVICE_PORT");
        if (port.empty()) port = "443";
        c.server = "https://" + (host.find(':') != std::string::npos ? "[" + host + "]" : host) + ":" + port;
    }
    c.token_file = dir + "/token";
    c.token = trim(*token);
    std::error_code ec;
    if (fs::exists(dir + "/ca.crt", ec)) c.ca_file = dir + "/ca.crt";
    c.origin = "in-cluster service account " + dir;
    return c;
}

K8sApiConfig load_kubeconfig(const std::string& path) {
    auto fail = [&](const std::string& what) { return std::runtime_error("kubeconfig " + path + ": " + what); };
    auto text = read_text(path);
    if (!text) throw fail(std::string("cannot read it: ") + std::strerror(errno));
    YAML::Node doc;
    try {
        doc = YAML::Load(*text);
    } catch (const YAML::Exception& e) {
        throw fail(std::string("not valid YAML: ") + e.what());
    }
    auto base = fs::path(path).parent_path();
    auto abs = [&](const std::string& p) { return p.empty() || fs::path(p).is_absolute() ? p : (base / p).string(); };
    try {
        auto named = [&](const char* list, const std::string& name, const char* inner) -> YAML::Node {
            auto seq = doc[list];
            if (seq && seq.IsSequence())
                for (const auto& e : seq)
                    if (e["name"] && e["name"].as<std::string>() == name) return e[inner];
            throw fail(std::string("no ") + list + " entry named \"" + name + "\"");
        };
        std::string ctx_name = doc["current-context"] ? doc["current-context"].as<std::string>() : "";
        if (ctx_name.empty()) {
            auto ctxs = doc["contexts"];
            if (!ctxs || !ctxs.IsSequence() || ctxs.size() != 1)
                throw fail("no current-context (and not exactly one context to pick)");
            ctx_name = ctxs[0]["name"].as<std::string>();
        }
        auto ctx = named("contexts", ctx_name, "context");
        if (!ctx || !ctx["cluster"]) throw fail("context \"" + ctx_name + "\" names no cluster");
        auto cluster = named("clusters", ctx["cluster"].as<std::string>(), "cluster");
        K8sApiConfig c;
        c.origin = "kubeconfig " + path;
        if (!cluster || !cluster["server"]) throw fail("cluster \"" + ctx["cluster"].as<std::string>() + "\" has no server");
        c.server = cluster["server"].as<std::string>();
        while (c.server.ends_with("/")) c.server.pop_back();
        if (cluster["certificate-authority-data"])
            c.ca_pem = base64_decode(cluster["certificate-authority-data"].as<std::string>());
        if (cluster["certificate-authority"]) c.ca_file = abs(cluster["certificate-authority"].as<std::string>());
        if (cluster["insecure-skip-tls-verify"]) c.insecure_skip_tls_verify = cluster["insecure-skip-tls-verify"].as<bool>();
        if (ctx["user"]) {
            auto user = named("users", ctx["user"].as<std::string>(), "user");
            if (user) {
                if (user["token"]) c.token = user["token"].as<std::string>();
                if (user["tokenFile"]) {
                    c.token_file = abs(user["tokenFile"].as<std::string>());
                    auto t = read_text(c.token_file);
                    if (!t) throw fail("cannot read tokenFile " + c.token_file);
                    c.token = trim(*t);
                }
                if (user["client-certificate-data"]) c.cert_pem = base64_decode(user["client-certificate-data"].as<std::string>());
                if (user["client-certificate"]) c.cert_file = abs(user["client-certificate"].as<std::string>());
                if (user["client-key-data"]) c.key_pem = base64_decode(user["client-key-data"].as<std::string>());
                if (user["client-key"]) c.key_file = abs(user["client-key"].as<std::string>());
                bool has_cert = !c.cert_pem.empty() || !c.cert_file.empty();
                if (c.token.empty() && !has_cert && (user["exec"] || user["auth-provider"]))
                    throw fail("user \"" + ctx["user"].as<std::string>() +
                               "\" authenticates through an exec/auth-provider plugin (for example aws eks get-token), "
                               "which imdstrace does not run: use a token or client certificate, or run in-cluster");
            }
        }
        if (!c.server.starts_with("https://") && !c.server.starts_with("http://"))
            throw fail("server \"" + c.server + "\" is not an http(s):// URL");
        return c;
    } catch (const YAML::Exception& e) {
        throw fail(std::string("unexpected structure: ") + e.what());
    } catch (const std::runtime_error& e) {
        if (std::string_view(e.what()).starts_with("kubeconfig ")) throw;
        throw fail(e.what());
    }
}

// ---------------------------------------------------------------------------
// PodList

std::vector<ApiPod> parse_pod_list(const std::string& text, std::string* resource_version) {
    json doc;
    try {
        doc = json::parse(text);
    } catch (const json::parse_error& e) {
        throw std::runtime_error(std::string("not JSON: ") + e.what());
    }
    if (!doc.is_object()) throw std::runtime_error("not a PodList (not an object)");
    if (auto kind = str_at(doc, "kind"); !kind.empty() && kind != "PodList")
        throw std::runtime_error("not a PodList (kind " + kind + ")");
    if (!doc.contains("items") || !(doc["items"].is_array() || doc["items"].is_null()))
        throw std::runtime_error("not a PodList (no items)");
    if (resource_version && doc.contains("metadata")) *resource_version = str_at(doc["metadata"], "resourceVersion");
    std::vector<ApiPod> out;
    if (doc["items"].is_null()) return out;
    for (const auto& item : doc["items"]) {
        if (!item.is_object()) continue;
        const json empty = json::object();
        const auto& meta = item.contains("metadata") ? item["metadata"] : empty;
        const auto& spec = item.contains("spec") && item["spec"].is_object() ? item["spec"] : empty;
        const auto& status = item.contains("status") && item["status"].is_object() ? item["status"] : empty;
        ApiPod p;
        p.info.namespace_ = str_at(meta, "namespace");
        p.info.name = str_at(meta, "name");
        p.info.uid = str_at(meta, "uid");
        if (meta.contains("annotations") && meta["annotations"].is_object())
            p.mirror_of = str_at(meta["annotations"], "kubernetes.io/config.mirror");
        if (p.info.namespace_.empty() || p.info.name.empty() || p.info.uid.empty()) {
            spdlog::debug("k8s-api: skipping a pod without namespace, name or uid");
            continue;
        }
        p.node = str_at(spec, "nodeName");
        p.host_network = spec.contains("hostNetwork") && spec["hostNetwork"].is_boolean() && spec["hostNetwork"].get<bool>();
        auto phase = str_at(status, "phase");
        p.terminated = phase == "Succeeded" || phase == "Failed";
        if (spec.contains("containers") && spec["containers"].is_array())
            for (const auto& c : spec["containers"])
                if (auto n = str_at(c, "name"); !n.empty()) p.containers.push_back(n);
        auto add_ip = [&](const std::string& s) {
            if (auto a = IpAddr::parse(s); a && std::find(p.info.ips.begin(), p.info.ips.end(), *a) == p.info.ips.end())
                p.info.ips.push_back(*a);
        };
        if (status.contains("podIPs") && status["podIPs"].is_array())
            for (const auto& ip : status["podIPs"]) add_ip(str_at(ip, "ip"));
        if (auto ip = str_at(status, "podIP"); !ip.empty()) add_ip(ip);
        for (const char* key : {"containerStatuses", "initContainerStatuses", "ephemeralContainerStatuses"}) {
            if (!status.contains(key) || !status[key].is_array()) continue;
            for (const auto& cs : status[key]) {
                auto name = str_at(cs, "name"), id = str_at(cs, "containerID");
                if (name.empty() || id.empty()) continue;
                if (auto pos = id.find("://"); pos != std::string::npos) id = id.substr(pos + 3);
                p.by_id[id] = name;
            }
        }
        out.push_back(std::move(p));
    }
    return out;
}

// ---------------------------------------------------------------------------
// The resolver

namespace {

void curl_init_once() {
    static std::once_flag once;
    std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
}

struct Fetched {
    bool ok = false;
    std::string error;
    std::vector<ApiPod> pods;
    std::string resource_version;
};

std::string status_message(const std::string& body) {
    try {
        auto j = json::parse(body);
        return str_at(j, "message");
    } catch (...) {
        return {};
    }
}

}  // namespace

void apply_k8s_tls(void* curl, const K8sApiConfig& cfg) {
    CURL* h = static_cast<CURL*>(curl);
    curl_blob ca{}, cert{}, key{};
    if (!cfg.ca_pem.empty()) {
        ca = {const_cast<char*>(cfg.ca_pem.data()), cfg.ca_pem.size(), CURL_BLOB_COPY};
        curl_easy_setopt(h, CURLOPT_CAINFO_BLOB, &ca);
    } else if (!cfg.ca_file.empty()) {
        curl_easy_setopt(h, CURLOPT_CAINFO, cfg.ca_file.c_str());
    }
    if (!cfg.cert_pem.empty()) {
        cert = {const_cast<char*>(cfg.cert_pem.data()), cfg.cert_pem.size(), CURL_BLOB_COPY};
        curl_easy_setopt(h, CURLOPT_SSLCERT_BLOB, &cert);
        curl_easy_setopt(h, CURLOPT_SSLCERTTYPE, "PEM");
    } else if (!cfg.cert_file.empty()) {
        curl_easy_setopt(h, CURLOPT_SSLCERT, cfg.cert_file.c_str());
    }
    if (!cfg.key_pem.empty()) {
        key = {const_cast<char*>(cfg.key_pem.data()), cfg.key_pem.size(), CURL_BLOB_COPY};
        curl_easy_setopt(h, CURLOPT_SSLKEY_BLOB, &key);
        curl_easy_setopt(h, CURLOPT_SSLKEYTYPE, "PEM");
    } else if (!cfg.key_file.empty()) {
        curl_easy_setopt(h, CURLOPT_SSLKEY, cfg.key_file.c_str());
    }
    if (cfg.insecure_skip_tls_verify) {
        curl_easy_setopt(h, CURLOPT_SSL_VERIFYPEER, 0L);
        curl_easy_setopt(h, CURLOPT_SSL_VERIFYHOST, 0L);
    }
}

struct K8sApiResolver::Impl {
    using Clock = std::chrono::steady_clock;
    K8sApiConfig cfg;
    K8sApiOptions opts;
    std::unique_ptr<PodResolver> fallback;
    std::string node;

    mutable std::mutex mu;  // guards the tables and state below
    std::unordered_map<std::string, ApiPod> pods;
    std::map<IpAddr, std::string> ip_to_uid;
    // A static pod's cgroup carries its config hash; the API lists its mirror
    // pod under another UID, with the hash in kubernetes.io/config.mirror.
    std::unordered_map<std::string, std::string> mirror_to_uid;
    bool up = false, warned = false;
    std::uint64_t lists_ok = 0, lists_failed = 0;

    std::mutex tmu;  // the relist thread
    std::condition_variable cv;
    bool stop = false, kick = false;
    std::atomic<bool> stopping{false};
    Clock::time_point last_kick{};
    std::thread thread;

    std::string where() const { return "the API server at " + cfg.server + " (" + cfg.origin + ")"; }

    Fetched fetch() {
        Fetched f;
        std::string token = cfg.token;
        if (!cfg.token_file.empty())
            if (auto t = read_text(cfg.token_file)) token = trim(*t);
        CURL* h = curl_easy_init();
        if (!h) {
            f.error = "libcurl could not start a request";
            return f;
        }
        char* sel = curl_easy_escape(h, ("spec.nodeName=" + node).c_str(), 0);
        std::string url = cfg.server + "/api/v1/pods?fieldSelector=" + (sel ? sel : "");
        curl_free(sel);
        std::string body;
        char errbuf[CURL_ERROR_SIZE] = {};
        curl_slist* headers = nullptr;
        headers = curl_slist_append(headers, "Accept: application/json");
        if (!token.empty()) headers = curl_slist_append(headers, ("Authorization: Bearer " + token).c_str());
        curl_easy_setopt(h, CURLOPT_URL, url.c_str());
        curl_easy_setopt(h, CURLOPT_HTTPHEADER, headers);
        curl_easy_setopt(h, CURLOPT_USERAGENT, "imdstrace");
        curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, static_cast<long>(opts.timeout.count()));
        curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, static_cast<long>(opts.timeout.count()));
        curl_easy_setopt(h, CURLOPT_ERRORBUFFER, errbuf);
        curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
        curl_easy_setopt(h, CURLOPT_ACCEPT_ENCODING, "");
        curl_easy_setopt(h, CURLOPT_WRITEDATA, &body);
        curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, +[](char* p, size_t sz, size_t n, void* ud) -> size_t {
            auto* b = static_cast<std::string*>(ud);
            if (b->size() + sz * n > (512u << 20)) return 0;  // not a node's pod list
            b->append(p, sz * n);
            return sz * n;
        });
        // Let the destructor end a request in flight at once.
        curl_easy_setopt(h, CURLOPT_NOPROGRESS, 0L);
        curl_easy_setopt(h, CURLOPT_XFERINFODATA, &stopping);
        curl_easy_setopt(h, CURLOPT_XFERINFOFUNCTION,
                         +[](void* ud, curl_off_t, curl_off_t, curl_off_t, curl_off_t) -> int {
                             return static_cast<std::atomic<bool>*>(ud)->load() ? 1 : 0;
                         });
        apply_k8s_tls(h, cfg);
        CURLcode rc = curl_easy_perform(h);
        long code = 0;
        curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &code);
        curl_slist_free_all(headers);
        curl_easy_cleanup(h);
        if (rc == CURLE_OPERATION_TIMEDOUT) {
            f.error = where() + " did not answer within " + seconds(opts.timeout);
            return f;
        }
        if (rc != CURLE_OK) {
            f.error = "cannot reach " + where() + ": " + (errbuf[0] ? errbuf : curl_easy_strerror(rc));
            return f;
        }
        if (code == 401) {
            f.error = where() + " refused the credentials (HTTP 401 Unauthorized: token missing, expired or revoked)";
            return f;
        }
        if (code == 403) {
            auto m = status_message(body);
            f.error = where() + " forbids listing pods (HTTP 403 Forbidden" + (m.empty() ? "" : ": " + m) +
                      "); the identity needs RBAC list on pods";
            return f;
        }
        if (code != 200) {
            auto m = status_message(body);
            f.error = where() + " answered HTTP " + std::to_string(code) + (m.empty() ? "" : " (" + m + ")");
            return f;
        }
        try {
            f.pods = parse_pod_list(body, &f.resource_version);
        } catch (const std::exception& e) {
            f.error = where() + " sent no usable PodList: " + e.what();
            return f;
        }
        f.ok = true;
        return f;
    }

    void apply(Fetched&& f) {
        std::lock_guard lk(mu);
        if (!f.ok) {
            ++lists_failed;
            bool was_up = up;
            up = false;
            if (was_up || !warned) {
                spdlog::warn("k8s-api: {}; attributing pods from the node instead (k8s-node: kubepods cgroups and "
                             "/var/log/pods)",
                             f.error);
                warned = true;
            } else {
                spdlog::debug("k8s-api: still unavailable: {}", f.error);
            }
            return;
        }
        ++lists_ok;
        std::size_t n = f.pods.size();
        pods.clear();
        ip_to_uid.clear();
        mirror_to_uid.clear();
        for (auto& p : f.pods) {
            if (!p.node.empty() && p.node != node) continue;  // a server that ignores fieldSelector
            if (!p.host_network && !p.terminated)
                for (const auto& ip : p.info.ips) ip_to_uid[ip] = p.info.uid;
            if (!p.mirror_of.empty()) mirror_to_uid[p.mirror_of] = p.info.uid;
            auto uid = p.info.uid;
            pods.insert_or_assign(uid, std::move(p));
        }
        if (!up) {
            if (warned)
                spdlog::info("k8s-api: {} answers again ({} pods on node {})", where(), pods.size(), node);
            else
                spdlog::debug("k8s-api: {} pods on node {} from {}", pods.size(), node, where());
            if (n == 0 && lists_ok == 1)
                spdlog::warn("k8s-api: {} lists no pods on node \"{}\": is that the node's name? (set NODE_NAME)",
                             where(), node);
        }
        up = true;
    }

    void loop() {
        std::unique_lock lk(tmu);
        while (!stop) {
            cv.wait_for(lk, opts.relist_interval, [&] { return stop || kick; });
            if (stop) break;
            kick = false;
            lk.unlock();
            auto f = fetch();
            if (!stopping) apply(std::move(f));
            lk.lock();
        }
    }

    void request_relist() {
        std::lock_guard lk(tmu);
        auto now = Clock::now();
        if (last_kick != Clock::time_point{} && now - last_kick < opts.min_miss_relist_interval) return;
        last_kick = now;
        kick = true;
        cv.notify_all();
    }

    // The pod whose cgroup carries `uid` (its own, or the static pod's hash its mirror names).
    const ApiPod* find(const std::string& uid) const {
        if (auto it = pods.find(uid); it != pods.end()) return &it->second;
        if (auto m = mirror_to_uid.find(uid); m != mirror_to_uid.end())
            if (auto it = pods.find(m->second); it != pods.end()) return &it->second;
        return nullptr;
    }

    PodInfo info(const ApiPod& p, const std::string& container_id) const {
        PodInfo i = p.info;
        if (!container_id.empty())
            if (auto it = p.by_id.find(container_id); it != p.by_id.end()) i.container = it->second;
        return i;  // only an ID the API named is a container (see k8s_node.cpp)
    }
};

K8sApiResolver::K8sApiResolver(K8sApiConfig cfg, K8sApiOptions opts, std::unique_ptr<PodResolver> fallback)
    : impl_(std::make_unique<Impl>()) {
    curl_init_once();
    while (cfg.server.ends_with("/")) cfg.server.pop_back();
    node_ = opts.node_name.empty() ? current_node_name() : opts.node_name;
    impl_->cfg = std::move(cfg);
    impl_->opts = opts;
    impl_->fallback = std::move(fallback);
    impl_->node = node_;
    // The first list before tracing starts (bounded by the timeout), then relists.
    impl_->apply(impl_->fetch());
    impl_->thread = std::thread([this] { impl_->loop(); });
}

K8sApiResolver::~K8sApiResolver() {
    {
        std::lock_guard lk(impl_->tmu);
        impl_->stop = true;
        impl_->stopping = true;
    }
    impl_->cv.notify_all();
    if (impl_->thread.joinable()) impl_->thread.join();
}

std::optional<PodInfo> K8sApiResolver::by_cgroup(const std::string& cgroup_path) {
    auto ref = parse_pod_cgroup(cgroup_path);
    if (!ref) return std::nullopt;
    auto& im = *impl_;
    bool up;
    {
        std::lock_guard lk(im.mu);
        up = im.up;
        if (up)
            if (auto p = im.find(ref->uid)) {
                auto i = im.info(*p, ref->container_id);
                i.cgroup = ref->pod_cgroup;
                return i;
            }
    }
    if (up) im.request_relist();  // a pod newer than the last list
    if (im.fallback)
        if (auto p = im.fallback->by_cgroup(cgroup_path)) return p;
    if (!up) {
        // Down: the last list still names pods by UID correctly.
        std::lock_guard lk(im.mu);
        if (auto p = im.find(ref->uid)) {
            auto i = im.info(*p, ref->container_id);
            i.cgroup = ref->pod_cgroup;
            return i;
        }
    }
    return std::nullopt;
}

std::optional<PodInfo> K8sApiResolver::by_ip(const IpAddr& addr) {
    auto& im = *impl_;
    bool up;
    {
        std::lock_guard lk(im.mu);
        up = im.up;
        if (up)
            if (auto it = im.ip_to_uid.find(addr); it != im.ip_to_uid.end())
                if (auto p = im.pods.find(it->second); p != im.pods.end()) return im.info(p->second, "");
    }
    // Addresses go stale quickly (reuse): only the node's own view while down.
    return im.fallback ? im.fallback->by_ip(addr) : std::nullopt;
}

std::string K8sApiResolver::describe() const {
    std::lock_guard lk(impl_->mu);
    if (impl_->up)
        return "k8s-api (" + impl_->cfg.server + ", node " + node_ + ", " + std::to_string(impl_->pods.size()) + " pods)";
    return "k8s-api (" + impl_->cfg.server + " unavailable; falling back to " +
           (impl_->fallback ? impl_->fallback->describe() : std::string("none")) + ")";
}

K8sApiStats K8sApiResolver::stats() const {
    std::lock_guard lk(impl_->mu);
    return {impl_->pods.size(), impl_->ip_to_uid.size(), impl_->lists_ok, impl_->lists_failed, impl_->up};
}

// ---------------------------------------------------------------------------
// --pods k8s-node | k8s-api | auto

std::unique_ptr<PodResolver> make_k8s_resolver(K8sMode mode, const PodResolverSettings& s) {
    K8sNodeOptions no;
    no.host_root = s.host_root.empty() ? "/" : s.host_root;
    no.cgroup_mount = s.cgroup_mount.empty() ? locate_cgroup2(no.host_root).path : s.cgroup_mount;
    auto node = [&] { return std::make_unique<K8sNodeResolver>(no); };
    auto primary_node = [&] {  // k8s-node on its own: read /var/log/pods now
        auto r = node();
        r->refresh();
        return r;
    };
    if (mode == K8sMode::node) return primary_node();

    std::optional<K8sApiConfig> cfg;
    std::string why;
    if (!s.kubeconfig.empty()) {
        cfg = load_kubeconfig(s.kubeconfig);  // asked for explicitly: a broken one is the user's to fix
    } else {
        cfg = in_cluster_config(&why);
        if (!cfg && mode == K8sMode::api) {
            // $KUBECONFIG (a colon-separated list: the first file that exists).
            std::string list = env("KUBECONFIG");
            std::stringstream ss(list);
            for (std::string p; std::getline(ss, p, ':');) {
                std::error_code ec;
                if (!p.empty() && fs::exists(p, ec)) {
                    cfg = load_kubeconfig(p);
                    break;
                }
            }
            if (!cfg) why += list.empty() ? "; no --kubeconfig, KUBECONFIG unset" : "; no file of KUBECONFIG exists";
        }
    }
    if (cfg) {
        K8sApiOptions ao;
        if (!s.node_name.empty()) ao.node_name = s.node_name;
        return std::make_unique<K8sApiResolver>(std::move(*cfg), ao, node());
    }
    if (mode == K8sMode::api) {
        spdlog::warn("k8s-api: no API server configuration ({}); attributing pods from the node instead (k8s-node)", why);
        return primary_node();
    }
    const auto& mount = no.cgroup_mount;
    if (has_kubepods_tree(mount)) {
        spdlog::info("pods: auto -> k8s-node (no API server configuration: {}; kubepods cgroups under {})", why, mount);
        return primary_node();
    }
    spdlog::info("pods: auto -> none (not in a cluster: {}; no kubepods cgroup tree under {})", why, mount);
    return make_null_resolver();
}

}  // namespace imdstrace
