// Deadlines of connections, earliest first, so that expiry costs what
// expires, not what is remembered.
//
// The correlator used to rescan every connection (finished ones kept for
// late packets included) on every ring-buffer wakeup.  Here each connection
// has one live entry: (due, id).  Packets never touch the queue: a packet
// only pushes a connection's deadline later, so an entry that comes due is
// checked against the connection's real deadline and re-armed if that moved.
// A deadline that moves earlier (a FIN shortens idle to linger) is armed
// again by the owner; the older entry is then stale and skipped, since only
// the entry whose due time the owner last armed is live.
//
// Cost: nothing per event; O(log n) per arm and per due entry, and a
// connection is re-armed at most once per idle period it stays active.
#pragma once

#include <cstdint>
#include <functional>
#include <queue>
#include <vector>

namespace imdstrace {

class ExpiryQueue {
public:
    void arm(std::uint64_t due_ns, std::uint64_t id) { heap_.push({due_ns, id}); }

    // Hands every entry due at `now_ns` to `on_due(id, due_ns)`, earliest
    // first.  The callback decides whether the entry is live (its due time
    // is the one last armed for that connection) and may arm again.
    template <class OnDue>
    void pop_due(std::uint64_t now_ns, OnDue&& on_due) {
        while (!heap_.empty() && heap_.top().due_ns <= now_ns) {
            Entry e = heap_.top();
            heap_.pop();
            on_due(e.id, e.due_ns);
        }
    }

    std::size_t size() const { return heap_.size(); }
    bool empty() const { return heap_.empty(); }
    void clear() { heap_ = {}; }

private:
    struct Entry {
        std::uint64_t due_ns;
        std::uint64_t id;
        bool operator>(const Entry& o) const { return due_ns != o.due_ns ? due_ns > o.due_ns : id > o.id; }
    };
    std::priority_queue<Entry, std::vector<Entry>, std::greater<Entry>> heap_;
};

}  // namespace imdstrace
