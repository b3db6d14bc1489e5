#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <sys/stat.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>
#include <stdexcept>

#include "common/json_input.hpp"
#include "pods/resolver.hpp"

namespace imdstrace {
namespace {

class StaticResolver final : public PodResolver {
public:
    StaticResolver(std::vector<PodInfo> pods, std::string origin) : pods_(std::move(pods)), origin_(std::move(origin)) {}

    std::optional<PodInfo> by_cgroup(const std::string& path) override {
        // The deepest pod cgroup containing the path wins.
        const PodInfo* best = nullptr;
        for (const auto& p : pods_) {
            if (p.cgroup.empty()) continue;
            bool inside = path == p.cgroup || (path.starts_with(p.cgroup) && path[p.cgroup.size()] == '/');
            if (inside && (!best || p.cgroup.size() > best->cgroup.size())) best = &p;
        }
        if (best) return *best;
        return std::nullopt;
    }

    std::optional<PodInfo> by_ip(const IpAddr& addr) override {
        for (const auto& p : pods_)
            for (const auto& ip : p.ips)
                if (ip == addr) return p;
        return std::nullopt;
    }

    std::string describe() const override { return "static:" + origin_ + " (" + std::to_string(pods_.size()) + " pods)"; }

private:
    std::vector<PodInfo> pods_;
    std::string origin_;
};

class NullResolver final : public PodResolver {
public:
    std::optional<PodInfo> by_cgroup(const std::string&) override { return std::nullopt; }
    std::optional<PodInfo> by_ip(const IpAddr&) override { return std::nullopt; }
    std::string describe() const override { return "none"; }
};

std::string normalize_cgroup(std::string c) {
    if (c.empty()) return c;
    if (c.front() != '/') c.insert(c.begin(), '/');
    while (c.size() > 1 && c.back() == '/') c.pop_back();
    return c;
}

}  // namespace

std::vector<PodInfo> parse_pod_mapping(const std::string& text, const std::string& origin) {
    nlohmann::json doc;
    try {
        doc = parse_untrusted_json(text);
    } catch (const std::exception& e) {
        throw std::runtime_error(origin + ": not valid JSON (" + capped(e.what()) + ")");
    }
    if (!doc.is_array()) throw std::runtime_error(origin + ": expected a JSON array of pods");
    std::vector<PodInfo> pods;
    for (std::size_t i = 0; i < doc.size(); ++i) {
        const auto& j = doc[i];
        auto where = origin + ": pod #" + std::to_string(i + 1);
        if (!j.is_object()) throw std::runtime_error(where + ": expected an object");
        auto str = [&](const char* key, bool required) -> std::string {
            if (!j.contains(key)) {
                if (required) throw std::runtime_error(where + ": missing \"" + key + "\"");
                return {};
            }
            if (!j[key].is_string()) throw std::runtime_error(where + ": \"" + key + "\" must be a string");
            return j[key].get<std::string>();
        };
        PodInfo p;
        p.namespace_ = str("namespace", true);
        p.name = str("name", true);
        p.uid = str("uid", false);
        p.container = str("container", false);
        p.cgroup = normalize_cgroup(str("cgroup", false));
        if (j.contains("ips")) {
            if (!j["ips"].is_array()) throw std::runtime_error(where + ": \"ips\" must be an array of addresses");
            for (std::size_t k = 0; k < j["ips"].size(); ++k) {
                const auto& ip = j["ips"][k];
                auto a = ip.is_string() ? IpAddr::parse(ip.get<std::string>()) : std::nullopt;
                // Quote a short prefix of a string, never dump a value: it may be huge or deeply nested.
                if (!a)
                    throw std::runtime_error(fmt::format("{}: \"ips\" entry #{} ({}) is not an IP address", where, k + 1,
                                                         ip.is_string() ? "\"" + capped(ip.get<std::string>(), 64) + "\""
                                                                        : std::string("a JSON ") + ip.type_name()));
                p.ips.push_back(*a);
            }
        }
        if (p.cgroup.empty() && p.ips.empty())
            throw std::runtime_error(where + " (" + capped(p.ref(), 100) + "): needs \"cgroup\" or \"ips\" to be matched");
        pods.push_back(std::move(p));
    }
    return pods;
}

std::unique_ptr<PodResolver> make_static_resolver(const std::string& file) {
    // A regular file of bounded size: /dev/zero or a FIFO would be read forever.
    struct stat st{};
    if (::stat(file.c_str(), &st) != 0)
        throw std::runtime_error("cannot read pod mapping " + file + ": " + std::strerror(errno));
    if (!S_ISREG(st.st_mode)) throw std::runtime_error("pod mapping " + file + " is not a regular file");
    if (st.st_size > static_cast<off_t>(kPodMappingMaxBytes))
        throw std::runtime_error(fmt::format("pod mapping {} is {} bytes, more than the {} allowed", file, st.st_size,
                                             kPodMappingMaxBytes));
    std::ifstream in(file);
    if (!in) throw std::runtime_error("cannot read pod mapping " + file + ": " + std::strerror(errno));
    std::string text(static_cast<std::size_t>(st.st_size) + 1, '\0');
    in.read(text.data(), static_cast<std::streamsize>(text.size()));
    text.resize(static_cast<std::size_t>(in.gcount()));
    if (text.size() > static_cast<std::size_t>(st.st_size))  // grew since stat
        throw std::runtime_error(fmt::format("pod mapping {} is more than {} bytes", file, kPodMappingMaxBytes));
    return std::make_unique<StaticResolver>(parse_pod_mapping(text, file), file);
}

std::unique_ptr<PodResolver> make_null_resolver() { return std::make_unique<NullResolver>(); }

}  // namespace imdstrace
