// A Kubernetes API server stand-in for --pods k8s-api tests: answers
// GET /api/v1/pods?fieldSelector=spec.nodeName=X with a v1 PodList in the
// real wire format, built from a pods file, behind a bearer token; or answers
// 401/403, or hangs (accepts, reads the request, never answers).
//
// Pods file: either a v1 PodList / a JSON array of Pod objects (served as
// they are), or the static mapping format (../shared/DESIGN.md) with optional
// extras per entry:
//   {"namespace","name","uid","ips":[..],"cgroup":"...","container":"c",
//    "container_id":"<hex>","node":"n1","hostNetwork":false,"annotations":{..}}
// Entries with the same uid are one pod (one container each).  A container ID
// is taken from "container_id" or else from the cgroup path's last component
// (cri-containerd-<id>.scope, crio-<id>.scope, docker-<id>.scope, <id>).
// The file is re-read on every request, so tests can change it live.
//
// Events: POST /api/v1/namespaces/<ns>/events takes a core/v1 Event and checks what the
// real API server's validation checks (kind/apiVersion, a name or generateName, the
// namespace in the body matching the URL's, involvedObject in that namespace, reason,
// message, type Normal or Warning, a source or reportingComponent); 201 with the stored
// object (uid, resourceVersion, creationTimestamp), 409 for a name already taken, 422
// (reason Invalid) otherwise.
//
// Plain HTTP/1.1, one request per connection, numeric addresses only; it
// listens on exactly the address it is given.  Header-only so the unit tests
// can run it in-process; k8s_api_standin.cpp is the command-line tool.
#pragma once

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include <atomic>
#include <cctype>
#include <cstdlib>
#include <map>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <fstream>
#include <mutex>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace k8s_standin {

using json = nlohmann::json;

struct Options {
    std::string listen = "127.0.0.1:0";  // ADDR:PORT or [V6]:PORT
    std::string pods_file;
    std::string token;  // required bearer token ("" = any request is accepted)
    std::string mode = "ok";  // ok | unauthorized | forbidden | hang
    std::string node;  // nodeName for entries that name none ("" = whatever node is asked for)
    // POST /api/v1/namespaces/<ns>/events (core/v1 Event): "ok" stores it (201 Created) and
    // appends it to events_log as one JSON line; "forbidden" answers 403 as RBAC does
    // without `create events`.
    std::string events_mode = "ok";
    std::string events_log;
};

inline std::string url_decode(const std::string& s) {
    std::string out;
    for (std::size_t i = 0; i < s.size(); ++i) {
        if (s[i] == '%' && i + 2 < s.size() && std::isxdigit(static_cast<unsigned char>(s[i + 1])) &&
            std::isxdigit(static_cast<unsigned char>(s[i + 2]))) {
            out.push_back(static_cast<char>(std::stoi(s.substr(i + 1, 2), nullptr, 16)));
            i += 2;
        } else {
            out.push_back(s[i] == '+' ? ' ' : s[i]);
        }
    }
    return out;
}

inline std::string container_id_from_cgroup(const std::string& cgroup) {
    auto last = cgroup.substr(cgroup.find_last_of('/') + 1);
    if (last.ends_with(".scope")) last.resize(last.size() - 6);
    for (const char* p : {"cri-containerd-", "crio-", "docker-"})
        if (last.starts_with(p)) last = last.substr(std::strlen(p));
    if (last.size() < 12) return {};
    for (char c : last)
        if (!std::isxdigit(static_cast<unsigned char>(c))) return {};
    return last;
}

// The pods in `doc` (any accepted form) as v1 Pod objects.
inline json pods_from_file(const json& doc, const std::string& default_node) {
    if (doc.is_object() && doc.contains("items")) return doc["items"];  // a PodList
    if (!doc.is_array()) throw std::runtime_error("pods file: expected a PodList or a JSON array");
    if (!doc.empty() && doc[0].is_object() && doc[0].contains("metadata")) return doc;  // Pod objects
    json items = json::array();
    std::map<std::string, std::size_t> index;  // uid (or ns/name) -> item
    for (const auto& e : doc) {
        std::string ns = e.value("namespace", ""), name = e.value("name", "");
        std::string uid = e.value("uid", "");
        std::string key = uid.empty() ? ns + "/" + name : uid;
        if (uid.empty()) uid = "00000000-0000-4000-8000-" + std::to_string(100000000000 + index.size());
        if (!index.contains(key)) {
            json pod = {{"metadata", {{"name", name}, {"namespace", ns}, {"uid", uid}, {"resourceVersion", "1"}}},
                        {"spec",
                         {{"nodeName", e.value("node", default_node)},
                          {"hostNetwork", e.value("hostNetwork", false)},
                          {"containers", json::array()}}},
                        {"status",
                         {{"phase", "Running"}, {"podIPs", json::array()}, {"containerStatuses", json::array()}}}};
            if (e.contains("annotations")) pod["metadata"]["annotations"] = e["annotations"];
            for (const auto& ip : e.value("ips", json::array())) {  // hostNetwork: the node's
                if (!pod["status"].contains("podIP")) pod["status"]["podIP"] = ip;
                pod["status"]["podIPs"].push_back({{"ip", ip}});
            }
            index[key] = items.size();
            items.push_back(pod);
        }
        auto& pod = items[index[key]];
        std::string container = e.value("container", "");
        std::string id = e.value("container_id", "");
        if (id.empty()) id = container_id_from_cgroup(e.value("cgroup", ""));
        if (container.empty() && !id.empty()) container = "c" + std::to_string(pod["spec"]["containers"].size());
        if (container.empty()) continue;
        pod["spec"]["containers"].push_back({{"name", container}});
        json cs = {{"name", container}, {"ready", true}, {"restartCount", 0}, {"image", "testbed"}};
        if (!id.empty()) cs["containerID"] = "containerd://" + id;
        pod["status"]["containerStatuses"].push_back(cs);
    }
    return items;
}

inline bool parse_listen(const std::string& text, sockaddr_storage* ss, socklen_t* len) {
    std::string host, port;
    if (text.starts_with("[")) {
        auto end = text.find("]:");
        if (end == std::string::npos) return false;
        host = text.substr(1, end - 1);
        port = text.substr(end + 2);
    } else {
        auto colon = text.rfind(':');
        if (colon == std::string::npos) return false;
        host = text.substr(0, colon);
        port = text.substr(colon + 1);
    }
    char* endp = nullptr;
    long p = std::strtol(port.c_str(), &endp, 10);
    if (port.empty() || *endp || p < 0 || p > 65535) return false;
    std::memset(ss, 0, sizeof *ss);
    auto* v4 = reinterpret_cast<sockaddr_in*>(ss);
    auto* v6 = reinterpret_cast<sockaddr_in6*>(ss);
    if (inet_pton(AF_INET, host.c_str(), &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        v4->sin_port = htons(static_cast<uint16_t>(p));
        *len = sizeof(sockaddr_in);
        return true;
    }
    if (inet_pton(AF_INET6, host.c_str(), &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6;
        v6->sin6_port = htons(static_cast<uint16_t>(p));
        *len = sizeof(sockaddr_in6);
        return true;
    }
    return false;
}

class Server {
public:
    explicit Server(Options o) : opts_(std::move(o)) {
        sockaddr_storage ss{};
        socklen_t len = 0;
        if (!parse_listen(opts_.listen, &ss, &len))
            throw std::runtime_error("--listen: expected a numeric ADDR:PORT or [V6ADDR]:PORT, got " + opts_.listen);
        fd_ = ::socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd_ < 0) throw std::runtime_error(std::string("socket: ") + std::strerror(errno));
        int one = 1;
        ::setsockopt(fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (ss.ss_family == AF_INET6) ::setsockopt(fd_, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
        if (::bind(fd_, reinterpret_cast<sockaddr*>(&ss), len) != 0 || ::listen(fd_, 64) != 0) {
            auto e = std::string(std::strerror(errno));
            ::close(fd_);
            throw std::runtime_error("cannot listen on " + opts_.listen + ": " + e);
        }
        sockaddr_storage bound{};
        socklen_t bl = sizeof bound;
        ::getsockname(fd_, reinterpret_cast<sockaddr*>(&bound), &bl);
        port_ = ntohs(bound.ss_family == AF_INET ? reinterpret_cast<sockaddr_in*>(&bound)->sin_port
                                                 : reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port);
        if (::pipe2(wake_, O_CLOEXEC) != 0) throw std::runtime_error("pipe");
    }
    ~Server() {
        stop();
        ::close(fd_);
        ::close(wake_[0]);
        ::close(wake_[1]);
    }
    Server(const Server&) = delete;
    Server& operator=(const Server&) = delete;

    std::uint16_t port() const { return port_; }
    std::string address() const {
        auto host = opts_.listen.substr(0, opts_.listen.rfind(':'));
        return host + ":" + std::to_string(port_);
    }
    void set_mode(const std::string& m) {
        std::lock_guard lk(mu_);
        opts_.mode = m;
    }
    void set_events(const std::string& mode, const std::string& log) {
        std::lock_guard lk(mu_);
        opts_.events_mode = mode;
        opts_.events_log = log;
    }
    // The Events created so far (as stored, with uid and resourceVersion).
    std::vector<json> events() {
        std::lock_guard lk(mu_);
        return events_;
    }
    std::uint64_t requests() const { return requests_; }

    // Accept until stop().
    void run() {
        while (!stopped_) {
            pollfd p[2] = {{fd_, POLLIN, 0}, {wake_[0], POLLIN, 0}};
            if (::poll(p, 2, -1) < 0) {
                if (errno == EINTR) continue;
                break;
            }
            if (p[1].revents) break;
            int c = ::accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC);
            if (c < 0) continue;
            {
                std::lock_guard lk(mu_);
                ++active_;
            }
            std::thread([this, c] {
                serve(c);
                ::close(c);
                std::lock_guard lk(mu_);
                --active_;
                done_.notify_all();
            }).detach();
        }
    }
    // Async-signal-safe: wakes run() and every connection.
    void request_stop() {
        if (!stopped_.exchange(true)) {
            char b = 1;
            (void)!::write(wake_[1], &b, 1);
        }
    }
    // Ends run() and every connection, hanging ones included; waits for them.
    void stop() {
        request_stop();
        std::unique_lock lk(mu_);
        done_.wait(lk, [&] { return active_ == 0; });
    }

private:
    // Wait for the client to go away or for stop().
    void hang(int c) {
        char buf[512];
        for (;;) {
            pollfd p[2] = {{c, POLLIN, 0}, {wake_[0], POLLIN, 0}};
            if (::poll(p, 2, -1) < 0 && errno != EINTR) return;
            if (p[1].revents) return;
            if (p[0].revents && ::read(c, buf, sizeof buf) <= 0) return;
        }
    }

    static void send_all(int c, const std::string& s) {
        std::size_t off = 0;
        while (off < s.size()) {
            auto n = ::send(c, s.data() + off, s.size() - off, MSG_NOSIGNAL);
            if (n <= 0) return;
            off += static_cast<std::size_t>(n);
        }
    }

    static void respond(int c, int code, const std::string& reason, const std::string& body) {
        std::ostringstream o;
        o << "HTTP/1.1 " << code << ' ' << reason << "\r\nContent-Type: application/json\r\nContent-Length: "
          << body.size() << "\r\nConnection: close\r\n\r\n"
          << body;
        send_all(c, o.str());
    }

    static json status(int code, const std::string& reason, const std::string& message) {
        return {{"kind", "Status"}, {"apiVersion", "v1"}, {"metadata", json::object()}, {"status", "Failure"},
                {"message", message}, {"reason", reason}, {"code", code}};
    }

    void serve(int c) {
        // Read the request head (5 s at most).
        std::string req;
        char buf[4096];
        while (req.find("\r\n\r\n") == std::string::npos && req.size() < 65536) {
            pollfd p[2] = {{c, POLLIN, 0}, {wake_[0], POLLIN, 0}};
            if (::poll(p, 2, 5000) <= 0 || p[1].revents) return;
            auto n = ::read(c, buf, sizeof buf);
            if (n <= 0) return;
            req.append(buf, static_cast<std::size_t>(n));
        }
        // The body, by Content-Length (events are small: 1 MiB at most).
        std::size_t head_end = req.find("\r\n\r\n") + 4, content_length = 0;
        {
            std::string lower = req.substr(0, head_end);
            for (auto& ch : lower) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
            if (auto at = lower.find("\r\ncontent-length:"); at != std::string::npos)
                content_length = std::strtoul(lower.c_str() + at + 17, nullptr, 10);
        }
        if (content_length > (1u << 20)) content_length = 1u << 20;
        while (req.size() - head_end < content_length) {
            pollfd p[2] = {{c, POLLIN, 0}, {wake_[0], POLLIN, 0}};
            if (::poll(p, 2, 5000) <= 0 || p[1].revents) return;
            auto n = ::read(c, buf, sizeof buf);
            if (n <= 0) return;
            req.append(buf, static_cast<std::size_t>(n));
        }
        const std::string body = req.substr(head_end, content_length);
        ++requests_;
        Options o;
        {
            std::lock_guard lk(mu_);
            o = opts_;
        }
        if (o.mode == "hang") return hang(c);
        std::istringstream in(req.substr(0, req.find("\r\n\r\n")));
        std::string method, target, version, line;
        in >> method >> target >> version;
        std::getline(in, line);
        std::string auth;
        while (std::getline(in, line)) {
            if (!line.empty() && line.back() == '\r') line.pop_back();
            auto colon = line.find(':');
            if (colon == std::string::npos) continue;
            std::string name = line.substr(0, colon);
            for (auto& ch : name) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
            if (name == "authorization") {
                auth = line.substr(colon + 1);
                while (!auth.empty() && auth.front() == ' ') auth.erase(auth.begin());
            }
        }
        if (o.mode == "unauthorized" || (!o.token.empty() && auth != "Bearer " + o.token))
            return respond(c, 401, "Unauthorized", status(401, "Unauthorized", "Unauthorized").dump());
        if (o.mode == "forbidden")
            return respond(c, 403, "Forbidden",
                           status(403, "Forbidden",
                                  "pods is forbidden: User \"system:serviceaccount:kube-system:imdstrace\" cannot "
                                  "list resource \"pods\" in API group \"\" at the cluster scope")
                               .dump());
        auto q = target.find('?');
        std::string path = target.substr(0, q), query = q == std::string::npos ? "" : target.substr(q + 1);
        if (method == "POST" && path.starts_with("/api/v1/namespaces/") && path.ends_with("/events"))
            return create_event(c, o, path.substr(19, path.size() - 19 - 7), body);
        if (method != "GET") return respond(c, 405, "Method Not Allowed", status(405, "MethodNotAllowed", method).dump());
        if (path == "/healthz" || path == "/readyz") return respond(c, 200, "OK", "ok");
        if (path != "/api/v1/pods")
            return respond(c, 404, "Not Found", status(404, "NotFound", "the server could not find the requested resource").dump());
        std::string node;
        std::istringstream qs(query);
        for (std::string kv; std::getline(qs, kv, '&');) {
            auto eq = kv.find('=');
            if (eq == std::string::npos || url_decode(kv.substr(0, eq)) != "fieldSelector") continue;
            auto sel = url_decode(kv.substr(eq + 1));
            if (sel.starts_with("spec.nodeName=")) node = sel.substr(14);
        }
        json items;
        try {
            std::ifstream f(o.pods_file);
            if (!f) throw std::runtime_error("cannot read " + o.pods_file);
            items = pods_from_file(json::parse(f), o.node.empty() ? node : o.node);
        } catch (const std::exception& e) {
            return respond(c, 500, "Internal Server Error", status(500, "InternalError", e.what()).dump());
        }
        json list = {{"kind", "PodList"}, {"apiVersion", "v1"},
                     {"metadata", {{"resourceVersion", std::to_string(1000 + requests_.load())}}},
                     {"items", json::array()}};
        for (auto& p : items) {
            p["apiVersion"] = "v1";
            p["kind"] = "Pod";
            if (!node.empty() && p["spec"].value("nodeName", "") != node) continue;
            list["items"].push_back(p);
        }
        respond(c, 200, "OK", list.dump());
    }

    static json invalid(const std::string& name, const std::string& why) {
        json s = status(422, "Invalid", "Event \"" + name + "\" is invalid: " + why);
        s["details"] = {{"name", name}, {"kind", "Event"}, {"causes", json::array({{{"message", why}}})}};
        return s;
    }

    void create_event(int c, const Options& o, const std::string& ns, const std::string& body) {
        if (o.events_mode == "forbidden")
            return respond(c, 403, "Forbidden",
                           status(403, "Forbidden",
                                  "events is forbidden: User \"system:serviceaccount:imdstrace:imdstrace\" cannot "
                                  "create resource \"events\" in API group \"\" in the namespace \"" + ns + "\"")
                               .dump());
        json ev;
        try {
            ev = json::parse(body);
        } catch (const std::exception& e) {
            return respond(c, 400, "Bad Request", status(400, "BadRequest", std::string("invalid JSON: ") + e.what()).dump());
        }
        auto str = [](const json& j, const char* k) {
            return j.is_object() && j.contains(k) && j[k].is_string() ? j[k].get<std::string>() : std::string();
        };
        if (!ev.is_object() || str(ev, "kind") != "Event" || str(ev, "apiVersion") != "v1")
            return respond(c, 400, "Bad Request", status(400, "BadRequest", "the body is not a v1 Event").dump());
        auto& meta = ev["metadata"];
        std::string name = str(meta, "name");
        if (name.empty() && !str(meta, "generateName").empty()) {
            std::lock_guard lk(mu_);
            name = str(meta, "generateName") + std::to_string(10000 + events_.size());
        }
        std::string why;
        const auto& obj = ev.contains("involvedObject") ? ev["involvedObject"] : json();
        if (name.empty()) why = "metadata.name: Required value: name or generateName is required";
        else if (!str(meta, "namespace").empty() && str(meta, "namespace") != ns)
            why = "metadata.namespace: Invalid value: \"" + str(meta, "namespace") +
                  "\": the namespace of the provided object does not match the namespace sent on the request";
        else if (str(obj, "namespace") != ns)
            why = "involvedObject.namespace: Invalid value: \"" + str(obj, "namespace") + "\": does not match event.namespace";
        else if (str(obj, "kind").empty() || str(obj, "name").empty())
            why = "involvedObject: Required value: kind and name";
        else if (str(ev, "reason").empty()) why = "reason: Required value";
        else if (str(ev, "type") != "Normal" && str(ev, "type") != "Warning")
            why = "type: Unsupported value: \"" + str(ev, "type") + "\": supported values: \"Normal\", \"Warning\"";
        else if (str(ev, "message").size() > 4096) why = "message: Too long: may not be more than 4096 bytes";
        else if (str(ev.value("source", json::object()), "component").empty() && str(ev, "reportingComponent").empty())
            why = "source.component: Required value";
        if (!why.empty()) return respond(c, 422, "Unprocessable Entity", invalid(name, why).dump());
        std::lock_guard lk(mu_);
        for (const auto& e : events_)
            if (e["metadata"]["name"] == name && e["metadata"]["namespace"] == ns)
                return respond(c, 409, "Conflict",
                               status(409, "AlreadyExists", "events \"" + name + "\" already exists").dump());
        meta["name"] = name;
        meta["namespace"] = ns;
        meta["uid"] = "5e0f0000-0000-4000-8000-" + std::to_string(100000000000 + events_.size());
        meta["resourceVersion"] = std::to_string(5000 + events_.size());
        meta["creationTimestamp"] = "2026-01-01T00:00:00Z";
        events_.push_back(ev);
        if (!o.events_log.empty()) std::ofstream(o.events_log, std::ios::app) << ev.dump() << "\n";
        respond(c, 201, "Created", ev.dump());
    }

    std::vector<json> events_;
    Options opts_;
    int fd_ = -1;
    int wake_[2] = {-1, -1};
    std::uint16_t port_ = 0;
    std::atomic<bool> stopped_{false};
    std::atomic<std::uint64_t> requests_{0};
    std::mutex mu_;
    std::condition_variable done_;
    int active_ = 0;
};

}  // namespace k8s_standin
