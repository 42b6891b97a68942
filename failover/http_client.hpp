// A small HTTP/1.1 client (Boost.Beast) for the etcd arbiter's JSON gateway: one request
// per connection, bounded by one deadline overall.
#pragma once

#include <chrono>
#include <string>
#include <string_view>

#include "common/error.hpp"

namespace understudy::failover {

// An endpoint as http_request() takes it: an IP address and port ("127.0.0.1:2379",
// "[::1]:2379"), never a name, since name resolution cannot be bounded by a deadline.
Result<void> check_endpoint(std::string_view endpoint);

struct HttpReply {
    unsigned status = 0;
    std::string body;
};
// One request on a fresh connection to `endpoint` ("IP:port"), bounded by `timeout`
// overall. Answers of any status are returned; only transport and HTTP framing problems
// are errors. Bodies over 64 KiB are refused.
Result<HttpReply> http_request(std::string_view endpoint, std::string_view method,
                               std::string_view target, std::string_view body,
                               std::chrono::milliseconds timeout);

} // namespace understudy::failover
