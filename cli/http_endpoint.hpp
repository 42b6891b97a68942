// `--metrics-listen ADDR:PORT`: a small HTTP/1.1 server (Boost.Beast, header-only) for
// Prometheus scrapes and health checks (docs/metrics.md). One thread, one connection at a
// time, `Connection: close` after each answer; GET and HEAD only; a request must arrive
// whole within 2 s and its header within 8 KiB, or the connection is closed.
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <thread>

#include "common/error.hpp"

namespace understudy::cli {

struct HttpAnswer {
    unsigned status = 200;
    std::string content_type = "text/plain; charset=utf-8";
    std::string body;
};

class HttpEndpoint {
public:
    // `target` is the request's path (query string removed).
    using Handler = std::function<HttpAnswer(std::string_view target)>;

    // `listen`: "IPv4:PORT" or "[IPv6]:PORT" (port 0: any free port, see port()).
    static Result<std::unique_ptr<HttpEndpoint>> start(const std::string& listen, Handler handler);
    ~HttpEndpoint();
    HttpEndpoint(const HttpEndpoint&) = delete;
    HttpEndpoint& operator=(const HttpEndpoint&) = delete;

    uint16_t port() const { return port_; }

private:
    struct Impl;
    explicit HttpEndpoint(std::unique_ptr<Impl> impl);
    void serve();

    std::unique_ptr<Impl> impl_;
    uint16_t port_ = 0;
    std::atomic<bool> stop_{false};
    std::thread thread_;
};

} // namespace understudy::cli
