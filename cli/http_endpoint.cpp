#include "cli/http_endpoint.hpp"

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include <charconv>

namespace understudy::cli {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
using namespace std::chrono;

namespace {
constexpr auto kRequestTimeout = seconds(2);

Result<tcp::endpoint> parse_listen(const std::string& text) {
    auto bad = [&](const std::string& why) {
        return make_error(Errc::invalid_input, "--metrics-listen '" + text + "': " + why + " (expected ADDR:PORT, e.g. 127.0.0.1:9470)");
    };
    auto colon = text.rfind(':');
    if (colon == std::string::npos || colon == 0) return bad("no port");
    std::string host = text.substr(0, colon), port = text.substr(colon + 1);
    if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
    unsigned p = 0;
    auto [end, ec] = std::from_chars(port.data(), port.data() + port.size(), p);
    if (port.empty() || ec != std::errc() || end != port.data() + port.size() || p > 65535) return bad("bad port");
    boost::system::error_code aec;
    auto addr = asio::ip::make_address(host, aec);
    if (aec) return bad("'" + host + "' is not an IP address");
    return tcp::endpoint(addr, static_cast<uint16_t>(p));
}

// Runs the io_context until `ec` leaves would_block or `stop` turns true.
void run_until(asio::io_context& ioc, const beast::error_code& ec, const std::atomic<bool>& stop) {
    while (ec == asio::error::would_block && !stop) {
        ioc.restart();
        ioc.run_for(milliseconds(200));
    }
}
} // namespace

struct HttpEndpoint::Impl {
    asio::io_context ioc;
    tcp::acceptor acceptor{ioc};
    Handler handler;

    void answer(tcp::socket sock, const std::atomic<bool>& stop) {
        beast::tcp_stream stream(std::move(sock));
        beast::flat_buffer buf(16384);
        http::request_parser<http::empty_body> parser;
        parser.header_limit(8192);
        beast::error_code ec = asio::error::would_block;
        stream.expires_after(kRequestTimeout);
        http::async_read(stream, buf, parser, [&](beast::error_code e, std::size_t) { ec = e; });
        run_until(ioc, ec, stop);
        if (ec) {
            stream.close();
            ioc.restart();
            ioc.run(); // completes the cancelled operation
            return;
        }
        const auto& req = parser.get();
        http::response<http::string_body> res;
        res.version(req.version());
        res.set(http::field::server, "understudy");
        res.keep_alive(false);
        if (req.method() != http::verb::get && req.method() != http::verb::head) {
            res.result(http::status::method_not_allowed);
            res.set(http::field::allow, "GET, HEAD");
            res.set(http::field::content_type, "text/plain; charset=utf-8");
            res.body() = "only GET and HEAD\n";
        } else {
            std::string_view target(req.target().data(), req.target().size());
            if (auto q = target.find('?'); q != std::string_view::npos) target = target.substr(0, q);
            HttpAnswer a;
            try {
                a = handler(target);
            } catch (const std::exception& e) {
                a = {500, "text/plain; charset=utf-8", std::string("internal error: ") + e.what() + "\n"};
            }
            res.result(a.status);
            res.set(http::field::content_type, a.content_type);
            res.body() = std::move(a.body);
        }
        res.prepare_payload();
        if (req.method() == http::verb::head) res.body().clear(); // Content-Length stays
        ec = asio::error::would_block;
        stream.expires_after(kRequestTimeout);
        http::async_write(stream, res, [&](beast::error_code e, std::size_t) { ec = e; });
        run_until(ioc, ec, stop);
        beast::error_code ignored;
        stream.socket().shutdown(tcp::socket::shutdown_both, ignored);
        stream.close();
        ioc.restart();
        ioc.run();
    }
};

HttpEndpoint::HttpEndpoint(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Result<std::unique_ptr<HttpEndpoint>> HttpEndpoint::start(const std::string& listen, Handler handler) {
    auto ep = US_TRY(parse_listen(listen));
    auto impl = std::make_unique<Impl>();
    impl->handler = std::move(handler);
    beast::error_code ec;
    impl->acceptor.open(ep.protocol(), ec);
    if (!ec) impl->acceptor.set_option(asio::socket_base::reuse_address(true), ec);
    if (!ec) impl->acceptor.bind(ep, ec);
    if (!ec) impl->acceptor.listen(16, ec);
    if (ec) return make_error(Errc::system, "listening for metrics on " + listen + ": " + ec.message());
    std::unique_ptr<HttpEndpoint> h(new HttpEndpoint(std::move(impl)));
    h->port_ = h->impl_->acceptor.local_endpoint().port();
    h->thread_ = std::thread([p = h.get()] { p->serve(); });
    return h;
}

HttpEndpoint::~HttpEndpoint() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
}

void HttpEndpoint::serve() {
    auto& ioc = impl_->ioc;
    // Outside the loop: a pending accept writes to both until it completes.
    tcp::socket sock(ioc); // reusable after a move
    beast::error_code ec;
    while (!stop_) {
        ec = asio::error::would_block;
        impl_->acceptor.async_accept(sock, [&](beast::error_code e) { ec = e; });
        run_until(ioc, ec, stop_);
        if (stop_) break;
        if (ec) {
            std::this_thread::sleep_for(milliseconds(10)); // e.g. out of descriptors: do not spin
            continue;
        }
        impl_->answer(std::move(sock), stop_);
    }
    beast::error_code ignored;
    impl_->acceptor.close(ignored);
    ioc.restart();
    ioc.run(); // completes the cancelled accept
}

} // namespace understudy::cli
