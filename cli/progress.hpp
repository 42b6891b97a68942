// Progress of long work (the initial synchronization, writing or restoring a snapshot),
// docs/cli.md "Progress". On a terminal, one line redrawn in place about 10 times a
// second; otherwise (a journal, a file) a plain line when both 2 s and 10 % have passed
// since the last one, and always a final line.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <string_view>

namespace understudy::cli {

class Progress {
public:
    using Clock = std::chrono::steady_clock;
    struct Output {
        bool terminal = false;
        std::function<void(std::string_view)> write;
    };

    // Standard error, redrawn in place when it is a terminal.
    explicit Progress(std::string what);
    Progress(std::string what, Output out, std::function<Clock::time_point()> now = Clock::now);

    // Any thread. A new, non-empty `label` starts a new stage (e.g. "initial sync, round 2"):
    // it replaces `what`, and rate and ETA count from it.
    void update(uint64_t done, uint64_t total, std::string_view label = {});
    // The final line (once; later updates are ignored).
    void finish();
    // update() as a plain (done, total) callback, for hv::ProgressFn.
    std::function<void(uint64_t, uint64_t)> callback() {
        return [this](uint64_t done, uint64_t total) { update(done, total); };
    }

    // "what: 512.0 MiB of 1.0 GiB (50%), 280 MB/s, ETA 1.8 s"
    static std::string line(std::string_view what, uint64_t done, uint64_t total, double elapsed_s);

private:
    void emit(bool final);

    std::mutex mu_;
    std::string what_;
    Output out_;
    std::function<Clock::time_point()> now_;
    Clock::time_point start_, last_emit_{}, updated_{};
    uint64_t done_ = 0, total_ = 0;
    int last_percent_ = -100;
    bool emitted_ = false, finished_ = false;
    size_t last_width_ = 0;
};

} // namespace understudy::cli
