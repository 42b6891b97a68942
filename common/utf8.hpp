// UTF-8 as RFC 3629 defines it: no overlong forms, no surrogates, nothing above U+10FFFF.
// Text from peers, guests and files is checked with it before it reaches a JSON or TOML
// reader or writer.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace understudy {

// Length (1 to 4) of the well-formed sequence starting at s[i], or 0 if there is none.
size_t utf8_sequence(std::string_view s, size_t i);
// The code point of the well-formed sequence of length n at s[i].
uint32_t utf8_code_point(std::string_view s, size_t i, size_t n);

} // namespace understudy
