// A running instance's control socket (docs/status.md, "Control socket"): a UNIX stream
// socket, mode 0600 from the moment it exists, speaking newline-delimited requests and
// responses (the handler turns one request line into one response line).
//
// Bounds, and what happens at them:
//   - at most `max_connections` clients at once: one more is sent
//     {"ok":false,"error":"too many connections (limit N)"} and closed;
//   - a request line longer than `max_request` bytes (newline excluded) is answered
//     {"ok":false,"error":"request too long (limit N bytes)"} and the connection closed;
//   - a client idle for `idle_timeout`, or not reading its answers (more than
//     max_request x 64 bytes queued for it), is closed.
// One thread serves every client with poll(); the handler runs on that thread.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <thread>

#include "common/error.hpp"
#include "common/unique_fd.hpp"
#include "common/json.hpp"

namespace understudy::cli {

struct ControlSocketLimits {
    size_t max_connections = 8;
    size_t max_request = 4096;
    std::chrono::milliseconds idle_timeout{30000};
};

class ControlSocket {
public:
    // Returns the response to one request line (without its newline); the socket adds one.
    using Handler = std::function<std::string(std::string_view request)>;
    // Error JSON line for a refusal, e.g. {"ok":false,"error":"..."}.
    static std::string error_json(std::string_view message);

    // Creates the socket at `path` (its directory must exist). A socket file left by an
    // instance that is gone (nothing accepts on it) is replaced; a live one, or a path
    // that is not a socket, is an error.
    static Result<std::unique_ptr<ControlSocket>> start(std::string path, Handler handler, ControlSocketLimits limits = {});
    ~ControlSocket(); // stops the thread and removes the socket file
    ControlSocket(const ControlSocket&) = delete;
    ControlSocket& operator=(const ControlSocket&) = delete;

    const std::string& path() const { return path_; }

private:
    ControlSocket(std::string path, UniqueFd listener, UniqueFd wake, Handler h, ControlSocketLimits l);
    void serve();

    std::string path_;
    UniqueFd listener_, wake_; // wake_: an eventfd that ends serve()
    Handler handler_;
    ControlSocketLimits limits_;
    std::thread thread_;
};

// Connects to the control socket at `path`, sends one request line and returns the
// response line (without its newline), all within `timeout`.
Result<std::string> control_request(const std::string& path, std::string_view request,
                                    std::chrono::milliseconds timeout = std::chrono::seconds(5));

// An action request (docs/status.md, "Actions"): control_request, then the answer object
// when it says "ok": true. Otherwise why: the request's own error, Errc::state with the
// instance's reason when it refused, Errc::invalid_input for an answer not understood.
Result<Json> control_action(const std::string& path, std::string_view request,
                                                  std::chrono::milliseconds timeout);

} // namespace understudy::cli
