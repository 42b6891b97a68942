// A RESP (Redis protocol) client connection for the drill's clients: blocking requests
// with deadlines, every reply checked (line and bulk lengths, CRLFs).
#pragma once

#include <atomic>
#include <chrono>
#include <initializer_list>
#include <string>
#include <string_view>

#include "common/error.hpp"
#include "common/unique_fd.hpp"
#include "replicator/transport.hpp" // Endpoint: the service as HOST:PORT

namespace understudy::cli {

// A reply: a simple string, an error, an integer, a bulk string or nil.
struct RespReply {
    char type = 0;    // '+', '-', ':', '$'
    bool nil = false; // "$-1"
    std::string text;
};

class RespConn {
public:
    using Clock = std::chrono::steady_clock;
    static Result<RespConn> connect(const replicator::Endpoint& to, Clock::time_point deadline);

    // Appends one command (an array of bulk strings) to the output; flush() sends it.
    void queue(std::initializer_list<std::string_view> args);
    Result<void> flush(Clock::time_point deadline);
    // One reply. `stop`, when set, ends the wait early (Errc::state).
    Result<RespReply> reply(Clock::time_point deadline, const std::atomic<bool>* stop = nullptr);

private:
    explicit RespConn(UniqueFd fd) : fd_(std::move(fd)) {}
    Result<void> wait(short events, Clock::time_point deadline, const std::atomic<bool>* stop = nullptr);
    Result<void> fill(Clock::time_point deadline, const std::atomic<bool>* stop);
    Result<std::string> read_line(Clock::time_point deadline, const std::atomic<bool>* stop);

    UniqueFd fd_;
    std::string out_, buf_;
};

} // namespace understudy::cli
