#include "failover/http_client.hpp"

#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include <charconv>

namespace understudy::failover {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;

namespace {
Result<tcp::endpoint> parse_endpoint(std::string_view ep) {
    auto bad = [&](const std::string& why) {
        return make_error(Errc::invalid_input, "etcd endpoint \"" + std::string(ep) + "\": " + why +
                                                   " (expected IP:port, e.g. 127.0.0.1:2379 or [::1]:2379)");
    };
    std::string_view host, port;
    if (ep.starts_with('[')) {
        const auto close = ep.find(']');
        if (close == std::string_view::npos || close + 1 >= ep.size() || ep[close + 1] != ':') return bad("bad [IPv6]:port");
        host = ep.substr(1, close - 1);
        port = ep.substr(close + 2);
    } else {
        const auto colon = ep.rfind(':');
        if (colon == std::string_view::npos) return bad("no port");
        host = ep.substr(0, colon);
        port = ep.substr(colon + 1);
    }
    unsigned p = 0;
    auto [end, ec] = std::from_chars(port.data(), port.data() + port.size(), p);
    if (port.empty() || ec != std::errc() || end != port.data() + port.size() || p == 0 || p > 65535)
        return bad("bad port");
    boost::system::error_code aec;
    const auto addr = asio::ip::make_address(std::string(host), aec);
    if (aec) return bad("not an IP address (host names are not resolved: that cannot be bounded by a deadline)");
    return tcp::endpoint(addr, static_cast<unsigned short>(p));
}

} // namespace

Result<void> check_endpoint(std::string_view endpoint) {
    US_TRYV(parse_endpoint(endpoint));
    return {};
}

Result<HttpReply> http_request(std::string_view endpoint, std::string_view method, std::string_view target,
                               std::string_view body, std::chrono::milliseconds timeout) {
    const auto ep = US_TRY(parse_endpoint(endpoint));
    const std::string what = "etcd " + std::string(endpoint) + " " + std::string(method) + " " + std::string(target);
    const auto verb = http::string_to_verb(beast::string_view(method.data(), method.size()));
    if (verb == http::verb::unknown) return make_error(Errc::invalid_input, what + ": unknown HTTP method");

    asio::io_context ioc;
    beast::tcp_stream stream(ioc);
    // One deadline for connect, send and answer together.
    stream.expires_after(timeout);
    beast::error_code ec;
    auto run = [&] {
        ioc.run();
        ioc.restart();
    };
    auto failed = [&](const char* stage) -> Error {
        if (ec == beast::error::timeout)
            return make_error(Errc::timeout, what + ": no answer within " + std::to_string(timeout.count()) + " ms (" +
                                                 stage + ")");
        if (ec.category() == http::make_error_code(http::error::end_of_stream).category() || ec == asio::error::eof)
            return make_error(Errc::invalid_input, what + ": malformed or truncated HTTP answer: " + ec.message());
        if (ec.category() == boost::system::system_category())
            return sys_error(what + ": " + stage + " failed", ec.value()); // describe() adds strerror
        return make_error(Errc::system, what + ": " + stage + " failed: " + ec.message());
    };

    ec = asio::error::would_block;
    stream.async_connect(ep, [&](beast::error_code e) { ec = e; });
    run();
    if (ec) return failed("connect");

    http::request<http::string_body> req{verb, std::string(target), 11};
    req.set(http::field::host, std::string(endpoint));
    req.set(http::field::content_type, "application/json");
    req.keep_alive(false);
    if (verb != http::verb::get || !body.empty()) {
        req.body() = std::string(body);
        req.prepare_payload();
    }
    ec = asio::error::would_block;
    http::async_write(stream, req, [&](beast::error_code e, std::size_t) { ec = e; });
    run();
    if (ec) return failed("send");

    beast::flat_buffer buf;
    http::response_parser<http::string_body> parser;
    parser.header_limit(16 * 1024);
    constexpr std::uint64_t max_body = 64 * 1024;
    parser.body_limit(max_body); // applies to chunked and read-to-EOF bodies
    ec = asio::error::would_block;
    http::async_read_header(stream, buf, parser, [&](beast::error_code e, std::size_t) { ec = e; });
    run();
    if (ec) return failed("answer");
    // Boost 1.74's parser lets a Content-Length over the body limit through when the
    // header arrives on its own: checked here, before reading any of the body.
    if (auto len = parser.content_length(); len && *len > max_body)
        return make_error(Errc::invalid_input, what + ": answer body of " + std::to_string(*len) +
                                                   " bytes is over the body limit of 64 KiB");
    ec = asio::error::would_block;
    http::async_read(stream, buf, parser, [&](beast::error_code e, std::size_t) { ec = e; });
    run();
    if (ec) return failed("answer");
    if (parser.get().body().size() > max_body)
        return make_error(Errc::invalid_input, what + ": answer body is over the body limit of 64 KiB");

    beast::error_code ignored;
    stream.socket().shutdown(tcp::socket::shutdown_both, ignored);
    auto res = parser.release();
    return HttpReply{res.result_int(), std::move(res.body())};
}

} // namespace understudy::failover
