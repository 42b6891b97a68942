// base64 (RFC 4648, standard alphabet, padded): etcd's bytes fields.
#pragma once

#include <string>
#include <string_view>

#include "common/error.hpp"

namespace understudy {

// Decoding is strict: bad characters, bad padding and non-zero pad bits are refused.
std::string base64_encode(std::string_view in);
Result<std::string> base64_decode(std::string_view in);

} // namespace understudy
