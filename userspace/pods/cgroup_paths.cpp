#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>

#include "pods/resolver.hpp"

namespace imdstrace {

namespace fs = std::filesystem;

// Since v5.5 a cgroup2 directory's id is its kernfs inode number, and the
// same id opens it through a kernfs file handle (what bpftool does).
std::optional<std::string> CgroupPaths::by_handle(std::uint64_t id) const {
    constexpr int kFileidKernfs = 0xfe;
    int mount_fd = ::open(mount_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (mount_fd < 0) return std::nullopt;
    alignas(struct file_handle) unsigned char buf[sizeof(struct file_handle) + sizeof(std::uint64_t)];
    auto* fh = reinterpret_cast<struct file_handle*>(buf);
    fh->handle_bytes = sizeof(std::uint64_t);
    fh->handle_type = kFileidKernfs;
    std::memcpy(fh->f_handle, &id, sizeof(id));
    int fd = ::open_by_handle_at(mount_fd, fh, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    ::close(mount_fd);
    if (fd < 0) return std::nullopt;
    std::error_code ec;
    auto target = fs::read_symlink("/proc/self/fd/" + std::to_string(fd), ec);
    ::close(fd);
    if (ec) return std::nullopt;
    std::string abs = target.string();
    if (abs == mount_) return std::string("/");
    if (!abs.starts_with(mount_ + "/")) return std::nullopt;
    return abs.substr(mount_.size());
}

void CgroupPaths::walk() {
    std::error_code ec;
    struct stat st{};
    if (::stat(mount_.c_str(), &st) == 0) cache_[st.st_ino] = "/";
    for (auto it = fs::recursive_directory_iterator(mount_, fs::directory_options::skip_permission_denied, ec);
         !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
        if (!it->is_directory(ec)) continue;
        if (::stat(it->path().c_str(), &st) == 0) cache_[st.st_ino] = it->path().string().substr(mount_.size());
    }
}

std::string CgroupPaths::path_of(std::uint64_t id) {
    if (id == 0) return {};
    if (auto it = cache_.find(id); it != cache_.end()) return it->second;
    if (cache_.size() > 65536) cache_.clear();  // bound memory under pod churn
    if (auto p = by_handle(id)) return cache_[id] = *p;
    walk();
    if (auto it = cache_.find(id); it != cache_.end()) return it->second;
    return {};
}

std::optional<std::uint64_t> CgroupPaths::id_of(const std::string& relative) const {
    struct stat st{};
    if (::stat((mount_ + relative).c_str(), &st) != 0) return std::nullopt;
    return st.st_ino;
}

}  // namespace imdstrace
