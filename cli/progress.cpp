#include "cli/progress.hpp"

#include <unistd.h>

#include <algorithm>
#include <cstdio>

namespace understudy::cli {

namespace {

std::string bytes(uint64_t n) {
    char buf[32];
    if (n >= (1ull << 30)) std::snprintf(buf, sizeof buf, "%.1f GiB", double(n) / double(1ull << 30));
    else std::snprintf(buf, sizeof buf, "%.1f MiB", double(n) / double(1ull << 20));
    return buf;
}

} // namespace

Progress::Progress(std::string what)
    : Progress(std::move(what), Output{::isatty(STDERR_FILENO) == 1, [](std::string_view s) {
                                           std::fwrite(s.data(), 1, s.size(), stderr);
                                           std::fflush(stderr);
                                       }}) {}

Progress::Progress(std::string what, Output out, std::function<Clock::time_point()> now)
    : what_(std::move(what)), out_(std::move(out)), now_(std::move(now)), start_(now_()) {}

std::string Progress::line(std::string_view what, uint64_t done, uint64_t total, double elapsed_s) {
    uint64_t shown = std::min(done, total);
    int percent = total ? int(shown * 100 / total) : 100;
    std::string s = std::string(what) + ": " + bytes(shown) + " of " + bytes(total) + " (" + std::to_string(percent) + "%)";
    // A rate from the first instants or the first bytes would be noise.
    if (elapsed_s >= 0.25 && total > 0 && done >= total / 100) {
        double rate = double(done) / elapsed_s;
        char buf[64];
        std::snprintf(buf, sizeof buf, ", %.0f MB/s", rate / 1e6);
        s += buf;
        if (shown < total) {
            std::snprintf(buf, sizeof buf, ", ETA %.1f s", double(total - shown) / rate);
            s += buf;
        } else {
            std::snprintf(buf, sizeof buf, ", %.1f s", elapsed_s);
            s += buf;
        }
    }
    return s;
}

void Progress::update(uint64_t done, uint64_t total, std::string_view label) {
    std::lock_guard lock(mu_);
    if (finished_) return;
    auto now = now_();
    if (!label.empty() && label != what_) {
        // A new stage: its own rate, and a journal line for it as soon as 2 s allow.
        what_ = label;
        start_ = now;
        last_percent_ = -100;
    }
    done_ = done;
    total_ = total;
    updated_ = now;
    int percent = total ? int(std::min(done, total) * 100 / total) : 100;
    bool due = out_.terminal ? now - last_emit_ >= std::chrono::milliseconds(100)
                             : now - last_emit_ >= std::chrono::seconds(2) && percent - last_percent_ >= 10;
    if (!emitted_ || due) {
        last_emit_ = now;
        last_percent_ = percent;
        emit(false);
    }
}

void Progress::finish() {
    std::lock_guard lock(mu_);
    if (finished_ || !emitted_) {
        finished_ = true;
        return; // nothing was ever shown: no final line either
    }
    finished_ = true;
    emit(true);
}

void Progress::emit(bool final) {
    // As of the last update: a final line drawn later does not dilute the rate.
    std::string s = line(what_, done_, total_, std::chrono::duration<double>(updated_ - start_).count());
    if (out_.terminal) {
        // Redraw in place; pad over a longer previous line.
        std::string text = "\r" + s + std::string(last_width_ > s.size() ? last_width_ - s.size() : 0, ' ');
        last_width_ = s.size();
        if (final) text += "\n";
        out_.write(text);
    } else {
        out_.write(s + "\n");
    }
    emitted_ = true;
}

} // namespace understudy::cli
