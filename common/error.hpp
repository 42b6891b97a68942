// The project's one error convention: functions that can fail return Result<T>, an
// std::expected whose error carries a category, the errno where one applies, and a
// message that says what failed in words an operator can act on. Library code never
// exits the process and never throws across threads.
#pragma once

#include <cerrno>
#include <expected>
#include <string>
#include <utility>

namespace understudy {

enum class Errc {
    system,        // a system call failed; sys_errno says why
    invalid_input, // a file, peer, guest or user gave us something malformed
    unsupported,   // the host or the image lacks something we need
    guest_fault,   // the guest did something illegal; the VM is stopped
    state,         // the call is not valid in the object's current state
    timeout,
    not_found,
};

const char* errc_name(Errc c);

struct Error {
    Errc code;
    std::string message;
    int sys_errno = 0;

    // "what: message (strerror)" for logs and CLI output.
    std::string describe() const;
    // Prefixes context, e.g. err.wrap("loading churn.elf").
    Error wrap(const std::string& context) &&;
};

template <class T = void>
class [[nodiscard]] Result : public std::expected<T, Error> {
public:
    using std::expected<T, Error>::expected;
    Result(Error e) : std::expected<T, Error>(std::unexpected(std::move(e))) {}
};

inline Error make_error(Errc code, std::string message) { return Error{code, std::move(message), 0}; }
// Captures errno at the call site.
inline Error sys_error(std::string what) { return Error{Errc::system, std::move(what), errno}; }
inline Error sys_error(std::string what, int err) { return Error{Errc::system, std::move(what), err}; }

} // namespace understudy

// Propagate an error from an expression of type Result<T>; yields the value.
#define US_TRY(expr)                                                                     \
    ({                                                                                   \
        auto us_try_result_ = (expr);                                                    \
        if (!us_try_result_) return ::understudy::Error(std::move(us_try_result_.error())); \
        std::move(*us_try_result_);                                                      \
    })

// Same, for Result<void>.
#define US_TRYV(expr)                                                                    \
    do {                                                                                 \
        auto us_try_result_ = (expr);                                                    \
        if (!us_try_result_) return ::understudy::Error(std::move(us_try_result_.error())); \
    } while (0)
