// Link helpers shared by the benchmarks that replicate: the run's link key (also kept in
// a key file, for a backup started as its own process) and the limits of the link
// measured in the same run (loopback TCP through the transport, AES-256-GCM sealing on
// one core). Header-only; benchmarks only; needs understudy_replicator.
#pragma once

#include <stdlib.h>
#include <unistd.h>

#include <atomic>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "bench/bench_common.hpp"
#include "replicator/link_cipher.hpp"
#include "replicator/link_security.hpp"
#include "replicator/transport.hpp"

namespace understudy::bench {

// One key for the whole run, as both hosts would load it from the same file. The file
// (mode 0600, in $TMPDIR or /tmp) is removed when the program ends.
class RunKey {
public:
    static const RunKey& get() {
        static RunKey k;
        return k;
    }
    const std::string& path() const { return path_; }
    replicator::LinkSecurity security(bool secure) const {
        if (!secure) return {replicator::LinkSecurityMode::disabled, nullptr};
        return {replicator::LinkSecurityMode::required, key_};
    }
    ~RunKey() {
        if (!path_.empty()) ::unlink(path_.c_str());
        if (!dir_.empty()) ::rmdir(dir_.c_str());
    }

private:
    RunKey() {
        const char* tmp = std::getenv("TMPDIR");
        std::string templ = std::string(tmp && *tmp ? tmp : "/tmp") + "/understudy-bench-XXXXXX";
        if (!::mkdtemp(templ.data())) die("making a folder for the link key: " + std::string(std::strerror(errno)));
        dir_ = templ;
        path_ = dir_ + "/link.key";
        if (auto w = replicator::write_new_link_key(path_); !w) die(w.error().describe());
        auto k = replicator::load_link_key(path_);
        if (!k) die(k.error().describe());
        key_ = std::make_shared<const replicator::LinkKey>(std::move(*k));
    }
    std::string dir_, path_;
    std::shared_ptr<const replicator::LinkKey> key_;
};

inline replicator::LinkSecurity link_security(bool secure) { return RunKey::get().security(secure); }

// A limit is what the machine can do: the best of three runs of a third of the bytes
// each, so that a neighbour's burst during one run does not lower it.
template <class Measure>
double best_of_three(size_t total, Measure measure) {
    double best = 0;
    for (int round = 0; round < 3; ++round) best = std::max(best, measure(total / 3));
    return best;
}

// One run of loopback_mbps().
inline double loopback_mbps_once(size_t total, bool secure) {
    using namespace replicator;
    using namespace std::chrono;
    auto ep = Endpoint::parse("127.0.0.1:0");
    auto l = Listener::listen(*ep);
    if (!l) die("listen: " + l.error().describe());
    const size_t chunk = 4u << 20;
    std::atomic<uint64_t> done_ns{0};
    std::string err;
    std::thread rx([&] {
        auto c = l->accept(seconds(10));
        if (!c) {
            err = c.error().describe();
            return;
        }
        if (secure)
            if (auto h = secure_server(**c, *link_security(true).key); !h) {
                err = h.error().describe();
                return;
            }
        std::vector<uint8_t> in(chunk);
        for (size_t got = 0; got < total; got += chunk)
            if (auto r = (*c)->recv_exact(in); !r) {
                err = r.error().describe();
                return;
            }
        done_ns = now_ns();
    });
    auto c = Connection::connect(l->local(), seconds(5));
    if (!c) die("connect: " + c.error().describe());
    if (secure)
        if (auto h = secure_client(**c, *link_security(true).key, LinkChannel::stream); !h) die(h.error().describe());
    std::vector<uint8_t> out(chunk);
    for (size_t i = 0; i < chunk; ++i) out[i] = uint8_t(i * 131);
    std::span<const uint8_t> s(out);
    (void)(*c)->send({&s, 1}); // warm-up: one chunk, not timed
    uint64_t t0 = now_ns();
    for (size_t sent = chunk; sent < total; sent += chunk)
        if (auto r = (*c)->send({&s, 1}); !r) die("send: " + r.error().describe());
    rx.join();
    if (!err.empty()) die("loopback receive: " + err);
    return double(total - chunk) / (double(done_ns.load() - t0) / 1e9) / 1e6;
}

// Loopback bandwidth through the transport itself, MB/s: `total` bytes in 4 MiB sends,
// sealed (after the link handshake) or in clear.
inline double loopback_mbps(size_t total, bool secure) {
    return best_of_three(total, [&](size_t part) { return loopback_mbps_once(part, secure); });
}

// One run of aes_gcm_mbps().
inline double aes_gcm_mbps_once(size_t total) {
    using namespace replicator;
    auto cipher = FrameCipher::create(LinkSecret{1, 2, 3}, LinkIv{4, 5, 6}, true);
    if (!cipher) die(cipher.error().describe());
    std::vector<uint8_t> plain(kMaxFramePlain), out(kMaxFramePlain + kFrameOverhead);
    for (size_t i = 0; i < plain.size(); ++i) plain[i] = uint8_t(i * 131);
    std::span<const uint8_t> piece(plain);
    uint64_t t0 = now_ns();
    for (size_t done = 0; done < total; done += plain.size())
        if (auto r = (*cipher)->seal({&piece, 1}, plain.size(), out.data()); !r) die(r.error().describe());
    return double(total) / (double(now_ns() - t0) / 1e9) / 1e6;
}

// AES-256-GCM sealing on one core, MB/s of plaintext: `total` bytes in frames of the
// link's largest size, through the link's own FrameCipher.
inline double aes_gcm_mbps(size_t total) { return best_of_three(total, aes_gcm_mbps_once); }

} // namespace understudy::bench
