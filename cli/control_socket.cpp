#include "cli/control_socket.hpp"

#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

#include <cstring>
#include <vector>

#include "common/json.hpp"

namespace understudy::cli {

using namespace std::chrono;

namespace {

Result<sockaddr_un> unix_address(const std::string& path) {
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    if (path.empty() || path.size() >= sizeof a.sun_path)
        return make_error(Errc::invalid_input, "control socket path '" + path + "' is empty or longer than " +
                                                   std::to_string(sizeof a.sun_path - 1) + " bytes");
    std::memcpy(a.sun_path, path.data(), path.size());
    return a;
}

// Something at `path` already: replace a socket nobody accepts on; refuse anything else.
Result<void> clear_stale(const std::string& path, const sockaddr_un& addr) {
    struct stat st {};
    if (::lstat(path.c_str(), &st) < 0) {
        if (errno == ENOENT) return {};
        return sys_error("checking control socket path " + path);
    }
    if (!S_ISSOCK(st.st_mode))
        return make_error(Errc::invalid_input, "control socket path " + path + " exists and is not a socket");
    UniqueFd probe(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!probe.valid()) return sys_error("creating a socket");
    if (::connect(probe.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof addr) == 0)
        return make_error(Errc::state, "control socket " + path + " is in use by a running instance");
    if (errno != ECONNREFUSED) return sys_error("probing control socket " + path);
    if (::unlink(path.c_str()) < 0 && errno != ENOENT) return sys_error("removing stale control socket " + path);
    return {};
}

struct Client {
    UniqueFd fd;
    std::string in, out;
    steady_clock::time_point last;
    bool closing = false; // close once `out` is flushed
};

void flush(Client& c) {
    while (!c.out.empty()) {
        ssize_t n = ::send(c.fd.get(), c.out.data(), c.out.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
        if (n < 0) {
            c.fd.reset();
            return;
        }
        c.out.erase(0, size_t(n));
    }
}

} // namespace

std::string ControlSocket::error_json(std::string_view message) {
    return "{\"ok\":false,\"error\":" + json_quote(message) + "}";
}

ControlSocket::ControlSocket(std::string path, UniqueFd listener, UniqueFd wake, Handler h, ControlSocketLimits l)
    : path_(std::move(path)), listener_(std::move(listener)), wake_(std::move(wake)), handler_(std::move(h)), limits_(l) {}

Result<std::unique_ptr<ControlSocket>> ControlSocket::start(std::string path, Handler handler, ControlSocketLimits limits) {
    auto addr = US_TRY(unix_address(path));
    US_TRYV(clear_stale(path, addr));
    UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
    if (!fd.valid()) return sys_error("creating the control socket");
    // The socket file takes the socket inode's mode (less the umask) when bind() creates
    // it: set 0600 first, so the file never exists with wider permissions.
    if (::fchmod(fd.get(), 0600) < 0) return sys_error("setting the control socket's mode");
    if (::bind(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof addr) < 0)
        return sys_error("binding the control socket " + path);
    struct stat st {};
    if (::lstat(path.c_str(), &st) < 0 || (st.st_mode & 077) != 0) {
        int err = errno;
        ::unlink(path.c_str());
        return st.st_mode & 077 ? make_error(Errc::unsupported, "control socket " + path + " was created with group or other permissions")
                                : sys_error("checking the control socket " + path, err);
    }
    if (::listen(fd.get(), 16) < 0) {
        int err = errno;
        ::unlink(path.c_str());
        return sys_error("listening on the control socket " + path, err);
    }
    UniqueFd wake(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    if (!wake.valid()) {
        int err = errno;
        ::unlink(path.c_str());
        return sys_error("creating an eventfd", err);
    }
    std::unique_ptr<ControlSocket> s(new ControlSocket(std::move(path), std::move(fd), std::move(wake), std::move(handler), limits));
    s->thread_ = std::thread([p = s.get()] { p->serve(); });
    return s;
}

ControlSocket::~ControlSocket() {
    uint64_t one = 1;
    (void)!::write(wake_.get(), &one, sizeof one); // an eventfd write of 1 cannot fail here
    if (thread_.joinable()) thread_.join();
    ::unlink(path_.c_str());
}

void ControlSocket::serve() {
    std::vector<Client> clients;
    std::vector<pollfd> fds;
    const size_t max_queued = limits_.max_request * 64;
    for (;;) {
        fds.clear();
        fds.push_back({wake_.get(), POLLIN, 0});
        fds.push_back({listener_.get(), POLLIN, 0});
        for (auto& c : clients) fds.push_back({c.fd.get(), short(POLLIN | (c.out.empty() ? 0 : POLLOUT)), 0});
        int n = ::poll(fds.data(), fds.size(), 500);
        if (n < 0 && errno != EINTR) return;
        if (fds[0].revents) return;
        auto now = steady_clock::now();
        for (size_t i = 0; i < clients.size(); ++i) {
            Client& c = clients[i];
            short ev = fds[i + 2].revents;
            if (ev & (POLLIN | POLLHUP | POLLERR)) {
                char buf[4096];
                ssize_t got = ::recv(c.fd.get(), buf, sizeof buf, MSG_DONTWAIT);
                if (got == 0 || (got < 0 && errno != EAGAIN && errno != EINTR)) {
                    c.fd.reset();
                    continue;
                }
                if (got > 0 && !c.closing) {
                    c.last = now;
                    c.in.append(buf, size_t(got));
                    size_t nl;
                    while (!c.closing && (nl = c.in.find('\n')) != std::string::npos) {
                        std::string_view line(c.in.data(), nl);
                        if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
                        if (line.size() > limits_.max_request) break;
                        std::string reply;
                        try {
                            reply = handler_(line);
                        } catch (const std::exception& e) {
                            reply = error_json(std::string("internal error: ") + e.what());
                        }
                        c.out += reply;
                        c.out += '\n';
                        c.in.erase(0, nl + 1);
                    }
                    size_t pending = c.in.find('\n');
                    if (!c.closing && (pending == std::string::npos ? c.in.size() : pending) > limits_.max_request) {
                        c.out += error_json("request too long (limit " + std::to_string(limits_.max_request) + " bytes)") + "\n";
                        c.in.clear();
                        c.closing = true;
                    }
                }
            }
            if (c.fd.valid()) flush(c);
            if (c.fd.valid() && ((c.closing && c.out.empty()) || c.out.size() > max_queued || now - c.last > limits_.idle_timeout))
                c.fd.reset();
        }
        std::erase_if(clients, [](const Client& c) { return !c.fd.valid(); });
        if (fds[1].revents & POLLIN) {
            for (;;) {
                UniqueFd cfd(::accept4(listener_.get(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK));
                if (!cfd.valid()) break;
                if (clients.size() >= limits_.max_connections) {
                    std::string refuse =
                        error_json("too many connections (limit " + std::to_string(limits_.max_connections) + ")") + "\n";
                    (void)!::send(cfd.get(), refuse.data(), refuse.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
                    continue; // closed here
                }
                clients.push_back(Client{std::move(cfd), {}, {}, now, false});
            }
        }
    }
}

Result<std::string> control_request(const std::string& path, std::string_view request, milliseconds timeout) {
    auto addr = US_TRY(unix_address(path));
    UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
    if (!fd.valid()) return sys_error("creating a socket");
    if (::connect(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof addr) < 0)
        return sys_error("connecting to the control socket " + path);
    auto deadline = steady_clock::now() + timeout;
    auto wait = [&](short events) -> Result<void> {
        for (;;) {
            auto left = duration_cast<milliseconds>(deadline - steady_clock::now()).count();
            if (left <= 0) return make_error(Errc::timeout, "no answer on the control socket " + path + " in time");
            pollfd p{fd.get(), events, 0};
            int n = ::poll(&p, 1, int(left));
            if (n > 0) return {};
            if (n < 0 && errno != EINTR) return sys_error("waiting on the control socket");
        }
    };
    std::string out(request);
    out += '\n';
    for (size_t done = 0; done < out.size();) {
        US_TRYV(wait(POLLOUT));
        ssize_t n = ::send(fd.get(), out.data() + done, out.size() - done, MSG_NOSIGNAL);
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) continue;
        if (n < 0) return sys_error("writing to the control socket " + path);
        done += size_t(n);
    }
    std::string in;
    for (;;) {
        if (auto nl = in.find('\n'); nl != std::string::npos) return in.substr(0, nl);
        if (in.size() > (16u << 20)) return make_error(Errc::invalid_input, "the control socket's answer is longer than 16 MiB");
        US_TRYV(wait(POLLIN));
        char buf[65536];
        ssize_t n = ::recv(fd.get(), buf, sizeof buf, 0);
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) continue;
        if (n < 0) return sys_error("reading from the control socket " + path);
        if (n == 0) return make_error(Errc::invalid_input, "the control socket closed without a complete answer");
        in.append(buf, size_t(n));
    }
}

Result<Json> control_action(const std::string& path, std::string_view request,
                                                  milliseconds timeout) {
    auto line = US_TRY(control_request(path, request, timeout));
    auto doc = parse_json(line);
    const Json* ok = doc ? doc->find("ok") : nullptr;
    if (!ok || ok->kind != Json::Kind::boolean)
        return make_error(Errc::invalid_input, "the control socket's answer is not understood: " + line.substr(0, 200));
    if (!ok->boolean) {
        const Json* e = doc->find("error");
        return make_error(Errc::state, "the instance refused: " +
                                           (e && e->kind == Json::Kind::string ? e->text : std::string("(no reason given)")));
    }
    return std::move(*doc);
}

} // namespace understudy::cli
