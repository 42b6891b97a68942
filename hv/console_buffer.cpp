#include "hv/console_buffer.hpp"

#include <fmt/format.h>

namespace understudy::hv {

ConsoleBuffer::ConsoleBuffer(Sink sink, size_t limit_bytes) : sink_(std::move(sink)), limit_(limit_bytes) {
    writer_ = std::thread([this] { writer_main(); });
}

ConsoleBuffer::~ConsoleBuffer() {
    {
        std::lock_guard lock(mu_);
        if (!partial_.empty()) queue_line_locked(std::move(partial_));
        stopping_ = true;
    }
    cv_.notify_all();
    writer_.join();
}

void ConsoleBuffer::write(std::string_view bytes) {
    std::lock_guard lock(mu_);
    for (char c : bytes) {
        if (c == '\n' || partial_.size() >= kMaxLine) {
            queue_line_locked(std::move(partial_));
            partial_.clear();
            if (c == '\n') continue;
        }
        if (c != '\r') partial_ += c;
    }
}

void ConsoleBuffer::queue_line_locked(std::string line) {
    if (queued_bytes_ + line.size() + 1 > limit_) {
        ++dropped_lines_;
        ++dropped_unreported_;
        dropped_bytes_ += line.size() + 1;
        return;
    }
    // The first line that fits after a drop says how much is missing before it.
    if (dropped_unreported_ > 0) {
        std::string notice = fmt::format("[understudy: {} console lines dropped here: the console's reader was too slow]",
                                         dropped_unreported_);
        dropped_unreported_ = 0;
        queued_bytes_ += notice.size() + 1;
        queue_.push_back(std::move(notice));
        ++queued_total_;
    }
    queued_bytes_ += line.size() + 1;
    queue_.push_back(std::move(line));
    ++queued_total_;
    cv_.notify_all();
}

void ConsoleBuffer::writer_main() {
    std::unique_lock lock(mu_);
    for (;;) {
        cv_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
        if (queue_.empty()) return; // stopping, and everything written
        std::string line = std::move(queue_.front());
        queue_.pop_front();
        lock.unlock();
        sink_(line); // may block: nothing else waits for it
        lock.lock();
        queued_bytes_ -= line.size() + 1;
        ++written_total_;
        cv_.notify_all();
    }
}

bool ConsoleBuffer::flush(std::chrono::milliseconds limit) {
    std::unique_lock lock(mu_);
    const uint64_t target = queued_total_;
    return cv_.wait_for(lock, limit, [&] { return written_total_ >= target; });
}

uint64_t ConsoleBuffer::dropped_lines() const {
    std::lock_guard lock(mu_);
    return dropped_lines_;
}

uint64_t ConsoleBuffer::dropped_bytes() const {
    std::lock_guard lock(mu_);
    return dropped_bytes_;
}

} // namespace understudy::hv
