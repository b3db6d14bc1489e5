// imdstrace-replay: the aggregator's cost without a kernel.
//
//   imdstrace-replay synthesize FILE [--transactions N] [--rate TX_PER_S] [--clients C] [--failing PCT]
//   imdstrace-replay run FILE [--passes K] [--batch B] [--pad BYTES] [--diagnose 1]
//
// `synthesize` writes a recording of ring records exactly as the BPF programs
// lay them out (bpf/imdstrace.h: the 128-byte header, then the payload tail),
// in the order and with the TTLs the testbed's hooks produce them for a
// VPC-CNI pod one hop behind the uplink: connect(), SYN / SYN-ACK / ACK at
// the socket and at the uplink, the token PUT, the 200 answer with a fake
// token (never a real one), FINs.  A share of the transactions fails the
// way the hop limit makes them fail: the answer arrives with TTL 1, the node
// drops it in ip_forward (IP_INHDR), sends ICMP time exceeded, IMDS
// retransmits it, the client gives up after a second.
//
// `run` feeds the recording through decode -> correlate -> verdict ->
// attribute (what `watch` does for each record) (expiry after every batch of
// B records: one ring-buffer wakeup), `passes` times with the clock and the
// client addresses moved on each pass so every pass is new connections, and
// prints events per CPU-second and resident memory.  --pad 640 hands every
// record over padded to the old fixed slot (to compare with builds that
// expect it).  --diagnose 1 also hands every record to a DiagnosisBuilder, as
// `imdstrace diagnose` does for its whole window, and prints how many
// records it keeps and the memory that takes.  Not a test: it prints figures.
#include <malloc.h>
#include <sys/resource.h>
#include <time.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "correlate/correlator.hpp"
#include "decode/observation.hpp"
#include "imdstrace.h"
#include "pipeline/attribute.hpp"
#include "pods/select.hpp"
#include "verdict/diagnosis.hpp"
#include "verdict/verdict.hpp"

using namespace imdstrace;

namespace {

// The file: magic, the header size it was written with (u32), then records.
// A recording made by another layout is refused, not replayed as garbage
// (every record malformed made a bogus "events per CPU-second" once).
constexpr char kMagic[8] = {'I', 'M', 'D', 'S', 'R', 'E', 'C', '2'};
#ifdef IMDSTRACE_REPLAY_BASE
// The tree before compact records: its imds_event was the fixed 640-byte
// slot, 128 bytes of header then the payload.
constexpr std::size_t kHeaderBytes = 128;
constexpr std::size_t kMaxRecordBytes = 640;
#else
constexpr std::size_t kHeaderBytes = sizeof(imds_event);
constexpr std::size_t kMaxRecordBytes = sizeof(imds_event) + IMDS_PAYLOAD_MAX;
#endif
constexpr std::uint64_t kMs = 1'000'000;
constexpr std::uint32_t kReasonIpInhdr = 5;             // what this kernel's enum numbers it does not matter:
constexpr std::uint64_t kIpForward = 0xffffffff81a00000; // the namers below are the bench's own

struct Record {
    std::uint64_t ts;
    std::vector<std::uint8_t> bytes;
};

// ---------------------------------------------------------------- synthesize

struct Synth {
    std::vector<Record> out;
    std::mt19937_64 rng{12};

    imds_event base(std::uint64_t ts, imds_hook hook, bool to_target, std::uint32_t pod_ip, std::uint16_t port) {
        imds_event e{};
        e.ts_ns = ts;
        e.hook = hook;
        e.direction = to_target ? IMDS_DIR_TO_TARGET : IMDS_DIR_FROM_TARGET;
        e.family = IMDS_AF_INET;
        e.ip_proto = 6;
        const std::uint8_t imds[4] = {169, 254, 169, 254};
        std::uint8_t client[4];
        std::memcpy(client, &pod_ip, 4);
        // The uplink sees the pod's own address (VPC CNI: no SNAT).
        std::memcpy(to_target ? e.saddr : e.daddr, client, 4);
        std::memcpy(to_target ? e.daddr : e.saddr, imds, 4);
        std::uint16_t p = __builtin_bswap16(port), s80 = __builtin_bswap16(80);
        e.sport = to_target ? p : s80;
        e.dport = to_target ? s80 : p;
        return e;
    }
    void push(const imds_event& e, const std::string& payload = {}) {
        Record r{e.ts_ns, std::vector<std::uint8_t>(kHeaderBytes + payload.size())};
        std::memcpy(r.bytes.data(), &e, kHeaderBytes);
        std::memcpy(r.bytes.data() + kHeaderBytes, payload.data(), payload.size());
        auto* h = reinterpret_cast<imds_event*>(r.bytes.data());
        h->copied = static_cast<std::uint16_t>(payload.size());
        if (!h->payload_len) h->payload_len = static_cast<std::uint32_t>(payload.size());
        out.push_back(std::move(r));
    }
    // A packet seen at both places on its way: the socket hook, then the uplink (or the reverse).
    void both(std::uint64_t ts, bool to_target, std::uint32_t ip, std::uint16_t port, std::uint8_t flags,
              std::uint32_t seq, std::uint32_t ack, std::uint8_t ttl_sock, std::uint8_t ttl_up, std::uint64_t cookie,
              const std::string& payload = {}) {
        auto sock = base(ts, to_target ? IMDS_HOOK_CGROUP_EGRESS : IMDS_HOOK_CGROUP_INGRESS, to_target, ip, port);
        auto up = base(ts, to_target ? IMDS_HOOK_UPLINK_EGRESS : IMDS_HOOK_UPLINK_INGRESS, to_target, ip, port);
        for (auto* e : {&sock, &up}) {
            e->tcp_flags = flags;
            e->seq = seq;
            e->ack_seq = ack;
        }
        sock.ttl = ttl_sock;
        up.ttl = ttl_up;
        sock.cgroup_id = 4242;
        sock.sk_cookie = cookie;
        sock.flags = IMDS_F_SK_PRESENT;
        if (to_target) {
            up.ts_ns = ts + 20'000;  // forwarded through the node: a little later
            push(sock, payload);
            push(up, payload);
        } else {
            sock.ts_ns = ts + 20'000;
            push(up, payload);
            push(sock, payload);
        }
    }

    void transaction(std::uint64_t t0, std::uint32_t ip, std::uint16_t port, std::uint64_t cookie, bool failing) {
        const std::string put =
            "PUT /latest/api/token HTTP/1.1\r\nHost: 169.254.169.254\r\nUser-Agent: aws-sdk-go-v2/1.30.0\r\n"
            "X-Aws-Ec2-Metadata-Token-Ttl-Seconds: 21600\r\nContent-Length: 0\r\n\r\n";
        const std::string answer =
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-Aws-Ec2-Metadata-Token-Ttl-Seconds: 21600\r\n"
            "Date: Mon, 30 Nov 2026 04:00:00 GMT\r\nServer: EC2ws\r\nContent-Length: 56\r\n\r\n"
            "AQAEAFakeReplayTokenNeverARealOne0000000000000000000==";
        const std::uint32_t isn = static_cast<std::uint32_t>(rng()), sisn = static_cast<std::uint32_t>(rng());
        const std::uint8_t sock_ttl = 64, up_ttl = 63;
        const std::uint8_t hop_limit = failing ? 1 : 2;
        auto c = base(t0, IMDS_HOOK_CONNECT, true, ip, 0);
        std::memset(c.saddr, 0, 16);
        c.sk_cookie = cookie;
        c.cgroup_id = 4242;
        c.pid = 1000 + port % 5000;
        std::memcpy(c.comm, "controller", 10);
        c.flags = IMDS_F_SK_PRESENT | IMDS_F_IN_CGROUP;
        push(c);
        std::uint64_t t = t0 + 30'000;
        const std::uint8_t SYN = 0x02, ACK = 0x10, PSH = 0x08, FIN = 0x01;
        both(t, true, ip, port, SYN, isn, 0, sock_ttl, up_ttl, cookie);
        t += 150'000;
        both(t, false, ip, port, SYN | ACK, sisn, isn + 1, 63, 64, cookie);
        t += 20'000;
        both(t, true, ip, port, ACK, isn + 1, sisn + 1, sock_ttl, up_ttl, cookie);
        both(t + 5'000, true, ip, port, PSH | ACK, isn + 1, sisn + 1, sock_ttl, up_ttl, cookie, put);
        t += 300'000;
        const std::uint32_t cseq = isn + 1 + static_cast<std::uint32_t>(put.size());
        if (!failing) {
            both(t, false, ip, port, PSH | ACK, sisn + 1, cseq, hop_limit - 1, hop_limit, cookie, answer);
            t += 30'000;
            const std::uint32_t sfin = sisn + 1 + static_cast<std::uint32_t>(answer.size());
            both(t, true, ip, port, ACK, cseq, sfin, sock_ttl, up_ttl, cookie);
            both(t + 10'000, true, ip, port, FIN | ACK, cseq, sfin, sock_ttl, up_ttl, cookie);
            both(t + 150'000, false, ip, port, FIN | ACK, sfin, cseq + 1, 63, 64, cookie);
            both(t + 170'000, true, ip, port, ACK, cseq + 1, sfin + 1, sock_ttl, up_ttl, cookie);
            return;
        }
        // The answer dies on the node: arrives with TTL 1, dropped in ip_forward, ICMP back; IMDS retransmits.
        for (int attempt = 0; attempt < 3; ++attempt) {
            const std::uint64_t ta = t + static_cast<std::uint64_t>(attempt) * 200 * kMs;
            auto in = base(ta, IMDS_HOOK_UPLINK_INGRESS, false, ip, port);
            in.tcp_flags = PSH | ACK;
            in.seq = sisn + 1;
            in.ack_seq = cseq;
            in.ttl = 1;
            push(in, answer);
            auto drop = base(ta + 8'000, IMDS_HOOK_DROP, false, ip, port);
            drop.tcp_flags = PSH | ACK;
            drop.seq = sisn + 1;
            drop.ack_seq = cseq;
            drop.ttl = 1;
            drop.drop_reason = kReasonIpInhdr;
            drop.location = kIpForward + 0x40;
            drop.flags = IMDS_F_HAS_REASON;
            drop.netns = 4026531840u;
            drop.payload_len = static_cast<std::uint32_t>(answer.size());
            std::memcpy(drop.comm, "uplink0", 7);
            push(drop);
            auto icmp = base(ta + 9'000, IMDS_HOOK_ICMP_SEND, false, ip, port);
            icmp.seq = sisn + 1;
            icmp.ttl = 1;
            icmp.icmp_type = 11;
            icmp.netns = 4026531840u;
            push(icmp);
            auto quote = base(ta + 12'000, IMDS_HOOK_UPLINK_EGRESS, false, ip, port);
            quote.direction = IMDS_DIR_ICMP_ABOUT;
            quote.ip_proto = 1;
            quote.seq = sisn + 1;
            quote.ttl = 1;
            quote.icmp_type = 11;
            quote.flags = IMDS_F_ICMP_QUOTE;
            push(quote);
        }
        // The client's per-attempt timeout: it closes.
        both(t0 + 1000 * kMs, true, ip, port, FIN | ACK, cseq, sisn + 1, sock_ttl, up_ttl, cookie);
        both(t0 + 1000 * kMs + 150'000, false, ip, port, ACK, sisn + 1, cseq + 1, 63, 64, cookie);
    }
};

int synthesize(const std::string& file, long transactions, double rate, int clients, int failing_pct) {
    Synth s;
    const std::uint64_t start = 1'000'000 * kMs;  // 1000 s of uptime
    for (long i = 0; i < transactions; ++i) {
        const int client = static_cast<int>(i % clients);
        const std::uint32_t ip = (198u) | (18u << 8) | (1u << 16) | (static_cast<std::uint32_t>(5 + client) << 24);
        const std::uint16_t port = static_cast<std::uint16_t>(32768 + (i / clients) % 28000);
        const std::uint64_t t0 = start + static_cast<std::uint64_t>(static_cast<double>(i) / rate * 1e9);
        s.transaction(t0, ip, port, 0x100000 + static_cast<std::uint64_t>(i), static_cast<int>(i % 100) < failing_pct);
    }
    std::stable_sort(s.out.begin(), s.out.end(), [](const Record& a, const Record& b) { return a.ts < b.ts; });
    std::ofstream out(file, std::ios::binary | std::ios::trunc);
    if (!out) throw std::runtime_error("cannot write " + file);
    out.write(kMagic, sizeof(kMagic));
    const std::uint32_t header = kHeaderBytes;
    out.write(reinterpret_cast<const char*>(&header), 4);
    std::size_t bytes = 0;
    for (const auto& r : s.out) {
        const std::uint32_t n = static_cast<std::uint32_t>(r.bytes.size());
        out.write(reinterpret_cast<const char*>(&n), 4);
        out.write(reinterpret_cast<const char*>(r.bytes.data()), n);
        bytes += n;
    }
    if (!out.flush()) throw std::runtime_error("cannot write " + file);
    std::printf("wrote %s: %ld transactions (%d%% failing), %zu records, %.1f bytes a record, %.1f s of traffic\n",
                file.c_str(), transactions, failing_pct, s.out.size(), static_cast<double>(bytes) / s.out.size(),
                transactions / rate);
    return 0;
}

// ---------------------------------------------------------------- run

std::vector<std::vector<std::uint8_t>> load(const std::string& file) {
    std::ifstream in(file, std::ios::binary);
    char magic[8];
    if (!in.read(magic, 8) || std::memcmp(magic, kMagic, 8) != 0)
        throw std::runtime_error(file + ": not an imdstrace-replay recording (or one from before the header size was "
                                        "recorded): synthesize it again with this build");
    std::uint32_t header = 0;
    if (!in.read(reinterpret_cast<char*>(&header), 4) || header != kHeaderBytes)
        throw std::runtime_error(fmt::format("{}: recorded with {}-byte record headers, this build's are {}: synthesize "
                                             "it again with this build",
                                             file, header, kHeaderBytes));
    std::vector<std::vector<std::uint8_t>> recs;
    std::uint32_t n;
    while (in.read(reinterpret_cast<char*>(&n), 4)) {
        if (n < kHeaderBytes || n > kMaxRecordBytes) throw std::runtime_error(file + ": bad record size");
        std::vector<std::uint8_t> r(n);
        if (!in.read(reinterpret_cast<char*>(r.data()), n)) throw std::runtime_error(file + ": cut off");
        recs.push_back(std::move(r));
    }
    return recs;
}

double cpu_seconds() {
    timespec ts{};
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return static_cast<double>(ts.tv_sec) + ts.tv_nsec / 1e9;
}

long status_kb(const char* key) {
    std::ifstream in("/proc/self/status");
    std::string line;
    while (std::getline(in, line))
        if (line.rfind(key, 0) == 0) return std::strtol(line.c_str() + std::strlen(key), nullptr, 10);
    return -1;
}

// Moves a record to pass `p`: later in time, another client address and socket.
void shift(std::vector<std::uint8_t>& r, std::uint64_t dt, int p) {
    auto* e = reinterpret_cast<imds_event*>(r.data());
    e->ts_ns += dt;
    if (e->sk_cookie) e->sk_cookie += static_cast<std::uint64_t>(p) << 32;
    std::uint8_t* client = e->direction == IMDS_DIR_TO_TARGET ? e->saddr : e->daddr;
    if (e->hook != IMDS_HOOK_CONNECT) client[2] = static_cast<std::uint8_t>(1 + p % 200);
}

int run(const std::string& file, int passes, int batch, std::size_t pad, bool diagnose) {
    const long rss_start = status_kb("VmRSS:");
    auto recs = load(file);
    if (recs.empty()) throw std::runtime_error(file + ": no records");
    if (pad)
        for (auto& r : recs)
            if (r.size() < pad) r.resize(pad, 0);
    const std::uint64_t first = reinterpret_cast<const imds_event*>(recs.front().data())->ts_ns;
    const std::uint64_t last = reinterpret_cast<const imds_event*>(recs.back().data())->ts_ns;
    const std::uint64_t span = last - first + 1000 * kMs;
    const long rss_loaded = status_kb("VmRSS:");

    auto none = make_pod_resolver(PodSelection::parse("none"), PodResolverSettings{});
    std::uint64_t transactions = 0, malformed = 0;
    std::map<Verdict, std::uint64_t> verdicts;
    DiagnosisBuilder builder;
    Correlator corr(
        [&](Transaction&& t) {
            auto r = attribute(t, 0, [](std::uint64_t) { return std::string("/kubepods.slice/pod-a"); }, *none);
            ++verdicts[r.verdict];
            if (diagnose) builder.add(r);
            ++transactions;
        },
        [](std::uint32_t r) { return r == kReasonIpInhdr ? std::string("IP_INHDR") : "REASON_" + std::to_string(r); },
        [](std::uint64_t a) { return a >= kIpForward && a < kIpForward + 0x400 ? std::string("ip_forward") : std::string("?"); },
        CorrelatorOptions{});

    double cpu = 0;
    std::uint64_t events = 0;
    long rss_peak_run = 0;
    for (int p = 0; p < passes; ++p) {
        if (p > 0)
            for (auto& r : recs) shift(r, span, p);
        const double c0 = cpu_seconds();
        std::uint64_t now = 0;
        int in_batch = 0;
        for (const auto& r : recs) {
            auto o = decode_event(std::span<const std::uint8_t>(r.data(), r.size()), false);  // as the session without --pcap
            if (!o) {
                ++malformed;
                continue;
            }
            now = o->ts_ns;
            corr.observe(*o);
            if (++in_batch == batch) {
                corr.expire(now);
                in_batch = 0;
            }
        }
        corr.expire(now);
        cpu += cpu_seconds() - c0;
        events += recs.size();
        rss_peak_run = std::max(rss_peak_run, status_kb("VmRSS:"));
    }
    // After the burst: everything expires (idle, then tombstones).
    const long rss_before_quiet = status_kb("VmRSS:");
    const std::uint64_t end = reinterpret_cast<const imds_event*>(recs.back().data())->ts_ns;
    corr.expire(end + 120'000 * kMs);
    corr.expire(end + 240'000 * kMs);
    recs.clear();
    recs.shrink_to_fit();
    malloc_trim(0);  // what the process still holds, not what the allocator keeps cached
    const long rss_after = status_kb("VmRSS:");

    if (malformed)
        throw std::runtime_error(fmt::format("{} of {} records did not decode: no figures from them (a recording of "
                                             "another layout?)",
                                             malformed, events));
    std::printf("replay %s: %d passes x %zu records (batch %d a wakeup)%s\n", file.c_str(), passes,
                events / std::max(passes, 1), batch, pad ? " padded to 640 bytes" : "");
    std::printf("  events              %llu (%llu malformed)\n", static_cast<unsigned long long>(events),
                static_cast<unsigned long long>(malformed));
    std::printf("  transactions        %llu", static_cast<unsigned long long>(transactions));
    for (const auto& [v, n] : verdicts) std::printf("  %s %llu", std::string(to_string(v)).c_str(), static_cast<unsigned long long>(n));
    std::printf("\n  cpu                 %.3f s\n", cpu);
    std::printf("  events_per_cpu_s    %.0f\n", events / cpu);
    std::printf("  rss_kb              start %ld, recording loaded %ld, peak in run %ld, end of burst %ld, "
                "after expiry (recording freed) %ld\n",
                rss_start, rss_loaded, rss_peak_run, rss_before_quiet, rss_after);
#ifndef IMDSTRACE_REPLAY_BASE
    std::printf("  connections left    %zu\n", corr.remembered_connections());
#endif
    if (diagnose) {
        const double c0 = cpu_seconds();
        auto d = builder.build(1, {});
        std::printf("  diagnosis           %d transactions judged, %zu records kept, %zu pods, %zu findings, "
                    "built in %.3f s\n",
                    d.transactions, builder.records().size(), d.pods.size(), d.findings.size(), cpu_seconds() - c0);
        std::printf("RESULT replay_diagnose transactions=%d records_kept=%zu rss_after_kb=%ld\n", d.transactions,
                    builder.records().size(), rss_after);
        return 0;
    }
    std::printf("RESULT replay events_per_cpu_s=%.0f rss_peak_kb=%ld rss_growth_kb=%ld rss_after_kb=%ld\n",
                events / cpu, rss_peak_run, rss_peak_run - rss_loaded, rss_after);
    return 0;
}

int usage() {
    std::fprintf(stderr,
                 "usage: imdstrace-replay synthesize FILE [--transactions N] [--rate TX_PER_S] [--clients C] "
                 "[--failing PCT]\n"
                 "       imdstrace-replay run FILE [--passes K] [--batch B] [--pad BYTES] [--diagnose 1]\n");
    return 2;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc < 3) return usage();
    const std::string cmd = argv[1], file = argv[2];
    long transactions = 20000, passes = 10, batch = 32, clients = 8, failing = 10, pad = 0, diagnose = 0;
    double rate = 4000;
    for (int i = 3; i + 1 < argc; i += 2) {
        std::string k = argv[i];
        const char* v = argv[i + 1];
        if (k == "--transactions") transactions = std::atol(v);
        else if (k == "--rate") rate = std::atof(v);
        else if (k == "--clients") clients = std::atol(v);
        else if (k == "--failing") failing = std::atol(v);
        else if (k == "--passes") passes = std::atol(v);
        else if (k == "--batch") batch = std::atol(v);
        else if (k == "--pad") pad = std::atol(v);
        else if (k == "--diagnose") diagnose = std::atol(v);
        else return usage();
    }
    if (transactions <= 0 || rate <= 0 || clients <= 0 || passes <= 0 || batch <= 0 || failing < 0 || failing > 100 ||
        pad < 0 || pad > 4096)
        return usage();
    try {
        if (cmd == "synthesize") return synthesize(file, transactions, rate, static_cast<int>(clients), static_cast<int>(failing));
        if (cmd == "run")
            return run(file, static_cast<int>(passes), static_cast<int>(batch), static_cast<std::size_t>(pad),
                       diagnose != 0);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "imdstrace-replay: %s\n", e.what());
        return 1;
    }
    return usage();
}
