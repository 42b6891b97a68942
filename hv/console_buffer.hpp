// The guest's console, between the vCPUs that write it and a sink that may block (a full
// pipe on stdout, a stalled terminal or log collector). Lines are queued, up to a bound,
// and handed to the sink by a thread of their own; a line that does not fit is dropped
// and counted, never waited for. So a stalled console can never hold a vCPU, a pause or a
// checkpoint (docs/limits.md).
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>

namespace understudy::hv {

class ConsoleBuffer {
public:
    using Sink = std::function<void(std::string_view line)>; // one line, without its newline
    static constexpr size_t kMaxLine = 4096;                 // longer lines are split
    explicit ConsoleBuffer(Sink sink, size_t limit_bytes = 1u << 20);
    // Hands what is queued to the sink, then ends the thread.
    ~ConsoleBuffer();
    ConsoleBuffer(const ConsoleBuffer&) = delete;
    ConsoleBuffer& operator=(const ConsoleBuffer&) = delete;

    // Bytes as the guest wrote them: split into lines at '\n' (CRs dropped, kMaxLine at
    // most). Never waits for the sink.
    void write(std::string_view bytes);
    // Waits up to `limit` until every complete line written so far has reached the sink.
    bool flush(std::chrono::milliseconds limit);
    // Lines dropped because the queue was full, and their bytes.
    uint64_t dropped_lines() const;
    uint64_t dropped_bytes() const;

private:
    void queue_line_locked(std::string line);
    void writer_main();

    Sink sink_;
    const size_t limit_;
    mutable std::mutex mu_;
    std::condition_variable cv_;
    std::string partial_;             // the line being written
    std::deque<std::string> queue_;   // complete lines for the sink
    size_t queued_bytes_ = 0;
    uint64_t queued_total_ = 0, written_total_ = 0; // lines queued and handed to the sink so far
    uint64_t dropped_lines_ = 0, dropped_bytes_ = 0;
    uint64_t dropped_unreported_ = 0; // dropped since the last notice in the output
    bool stopping_ = false;
    std::thread writer_;
};

} // namespace understudy::hv
