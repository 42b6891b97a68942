#include "cli/resp_client.hpp"

#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>

#include <cerrno>
#include <charconv>

#include <fmt/format.h>

namespace understudy::cli {

using std::chrono::milliseconds;

namespace {
constexpr size_t kMaxReplyLine = 64 * 1024; // a RESP line longer than this is refused
constexpr int64_t kMaxBulk = 1 << 20;       // the drill's values are decimal counters: far below this
} // namespace

Result<RespConn> RespConn::connect(const replicator::Endpoint& to, Clock::time_point deadline) {
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV;
    addrinfo* list = nullptr;
    const std::string port = std::to_string(to.port);
    if (int rc = ::getaddrinfo(to.host.c_str(), port.c_str(), &hints, &list); rc != 0)
        return make_error(Errc::invalid_input, "service " + to.str() + ": " + ::gai_strerror(rc));
    Error last{Errc::system, "service " + to.str() + ": no address", 0};
    for (addrinfo* a = list; a; a = a->ai_next) {
        UniqueFd fd(::socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, a->ai_protocol));
        if (!fd.valid()) continue;
        int one = 1;
        ::setsockopt(fd.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        if (::connect(fd.get(), a->ai_addr, a->ai_addrlen) != 0 && errno != EINPROGRESS) {
            last = sys_error("connecting to the service " + to.str(), errno);
            continue;
        }
        pollfd p{fd.get(), POLLOUT, 0};
        int left = int(std::max<int64_t>(0, std::chrono::duration_cast<milliseconds>(deadline - Clock::now()).count()));
        if (::poll(&p, 1, left) != 1) {
            last = Error{Errc::timeout, "connecting to the service " + to.str() + ": timed out", 0};
            continue;
        }
        int err = 0;
        socklen_t len = sizeof err;
        ::getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &err, &len);
        if (err != 0) {
            last = sys_error("connecting to the service " + to.str(), err);
            continue;
        }
        ::freeaddrinfo(list);
        return RespConn(std::move(fd));
    }
    ::freeaddrinfo(list);
    return last;
}

void RespConn::queue(std::initializer_list<std::string_view> args) {
    out_ += fmt::format("*{}\r\n", args.size());
    for (auto a : args) out_ += fmt::format("${}\r\n{}\r\n", a.size(), a);
}

Result<void> RespConn::flush(Clock::time_point deadline) {
    size_t off = 0;
    while (off < out_.size()) {
        ssize_t n = ::send(fd_.get(), out_.data() + off, out_.size() - off, MSG_NOSIGNAL);
        if (n > 0) {
            off += size_t(n);
            continue;
        }
        if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) return sys_error("sending to the service", errno);
        US_TRYV(wait(POLLOUT, deadline));
    }
    out_.clear();
    return {};
}

Result<RespReply> RespConn::reply(Clock::time_point deadline, const std::atomic<bool>* stop) {
    auto read = read_line(deadline, stop);
    if (!read) return read.error();
    const std::string& line = *read;
    if (line.empty()) return make_error(Errc::invalid_input, "an empty RESP reply line");
    RespReply r;
    r.type = line[0];
    r.text = line.substr(1);
    if (r.type == '+' || r.type == '-' || r.type == ':') return r;
    if (r.type != '$') return make_error(Errc::invalid_input, "an unexpected RESP reply: " + line.substr(0, 40));
    int64_t n = 0;
    auto [end, ec] = std::from_chars(r.text.data(), r.text.data() + r.text.size(), n);
    if (ec != std::errc() || end != r.text.data() + r.text.size() || n < -1 || n > kMaxBulk)
        return make_error(Errc::invalid_input, "a bad RESP bulk length: " + line.substr(0, 40));
    if (n == -1) {
        r.nil = true;
        r.text.clear();
        return r;
    }
    while (buf_.size() < size_t(n) + 2) US_TRYV(fill(deadline, stop));
    if (buf_.compare(size_t(n), 2, "\r\n") != 0) return make_error(Errc::invalid_input, "a RESP bulk string without its CRLF");
    r.text = buf_.substr(0, size_t(n));
    buf_.erase(0, size_t(n) + 2);
    return r;
}

Result<void> RespConn::wait(short events, Clock::time_point deadline, const std::atomic<bool>* stop) {
    for (;;) {
        if (stop && stop->load()) return make_error(Errc::state, "stopped");
        auto left = std::chrono::duration_cast<milliseconds>(deadline - Clock::now()).count();
        if (left <= 0) return make_error(Errc::timeout, "no reply from the service in time");
        pollfd p{fd_.get(), events, 0};
        int rc = ::poll(&p, 1, int(std::min<int64_t>(left, 50)));
        if (rc < 0 && errno != EINTR) return sys_error("waiting for the service", errno);
        if (rc > 0) return {};
    }
}

Result<void> RespConn::fill(Clock::time_point deadline, const std::atomic<bool>* stop) {
    US_TRYV(wait(POLLIN, deadline, stop));
    char chunk[16384];
    ssize_t n = ::recv(fd_.get(), chunk, sizeof chunk, 0);
    if (n == 0) return make_error(Errc::system, "the service closed the connection");
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return {};
        return sys_error("receiving from the service", errno);
    }
    buf_.append(chunk, size_t(n));
    return {};
}

Result<std::string> RespConn::read_line(Clock::time_point deadline, const std::atomic<bool>* stop) {
    for (;;) {
        auto at = buf_.find("\r\n");
        if (at != std::string::npos) {
            std::string line = buf_.substr(0, at);
            buf_.erase(0, at + 2);
            return line;
        }
        if (buf_.size() > kMaxReplyLine) return make_error(Errc::invalid_input, "a RESP reply line longer than 64 KiB");
        US_TRYV(fill(deadline, stop));
    }
}

} // namespace understudy::cli
