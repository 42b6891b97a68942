#include "common/error.hpp"

#include <cstring>

namespace understudy {

const char* errc_name(Errc c) {
    switch (c) {
    case Errc::system: return "system error";
    case Errc::invalid_input: return "invalid input";
    case Errc::unsupported: return "unsupported";
    case Errc::guest_fault: return "guest fault";
    case Errc::state: return "invalid state";
    case Errc::timeout: return "timeout";
    case Errc::not_found: return "not found";
    }
    return "error";
}

std::string Error::describe() const {
    std::string s = message;
    if (sys_errno != 0) {
        s += " (";
        s += std::strerror(sys_errno);
        s += ")";
    }
    return s;
}

Error Error::wrap(const std::string& context) && {
    message = context + ": " + message;
    return std::move(*this);
}

} // namespace understudy
