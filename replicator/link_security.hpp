// The link security layer (docs/security.md, docs/wire-format.md "Link security"): a
// pre-shared key, a handshake in which each side proves that it holds the key over both
// sides' fresh nonces, and from then on AES-256-GCM frames under per-direction keys
// derived with HKDF-SHA256. It sits below the records: once a connection is secured,
// Connection::send() and recv_record() carry the same records as before, sealed.
//
// The checkpoint stream and the control connection each run their own handshake (the
// channel is bound into the keys), before the stream header or the control hello.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "common/error.hpp"
#include "replicator/transport.hpp"

namespace understudy::replicator {

inline constexpr size_t kLinkKeyMinBytes = 32;   // a shorter key file is refused
inline constexpr size_t kLinkKeyMaxBytes = 4096; // and so is a longer one (not a key file)
inline constexpr size_t kLinkKeyGenBytes = 32;   // what `understudy keygen` writes

// The pre-shared key. Wiped when destroyed.
class LinkKey {
public:
    static Result<LinkKey> from_bytes(std::span<const uint8_t> bytes);
    static Result<LinkKey> random(); // kLinkKeyGenBytes from the OpenSSL CSPRNG
    LinkKey(LinkKey&&) noexcept;
    LinkKey& operator=(LinkKey&&) noexcept;
    ~LinkKey();
    std::span<const uint8_t> bytes() const { return bytes_; }

private:
    LinkKey() = default;
    std::vector<uint8_t> bytes_;
};

// Reads a key file: a regular file that neither group nor others may access (mode 0600
// or stricter), of kLinkKeyMinBytes .. kLinkKeyMaxBytes bytes, used as it is.
Result<LinkKey> load_link_key(const std::string& path);
// Writes a fresh random key to a new file with mode 0600; refuses to overwrite one.
Result<void> write_new_link_key(const std::string& path);

enum class LinkSecurityMode { required, disabled };
Result<LinkSecurityMode> parse_link_security_mode(const std::string& text); // "required" | "disabled"
const char* link_security_mode_name(LinkSecurityMode m);

// What a primary or a backup does on its connections. The default is required; required
// needs a key.
struct LinkSecurity {
    LinkSecurityMode mode = LinkSecurityMode::required;
    std::shared_ptr<const LinkKey> key;
    bool enabled() const { return mode == LinkSecurityMode::required; }
};
Result<void> validate(const LinkSecurity& s);

// Which connection a handshake opens; bound into the session keys.
enum class LinkChannel : uint32_t { stream = 1, control = 2 };

// The client (primary) side of the handshake, on a fresh connection: on success the
// connection carries sealed frames only. A peer that does not hold the same key, answers
// in clear (link security disabled there) or speaks something else is an
// Errc::invalid_input error that says which.
Result<void> secure_client(Connection& conn, const LinkKey& key, LinkChannel channel);
// The server (backup) side: returns the channel the client opened. A client that sends a
// plain stream header or control hello (link security disabled there) is answered with
// a REJECT record naming the mismatch.
Result<LinkChannel> secure_server(Connection& conn, const LinkKey& key);

// A backup with link security disabled reads the client hello where it expects a stream
// header: this tells it apart (the first 8 bytes), so the refusal can name the mismatch.
bool is_link_hello_magic(std::span<const uint8_t, 8> magic);
// The REJECT text such a backup sends, and the primary's (disabled) counterpart.
extern const char* const kMismatchBackupDisabled;
extern const char* const kMismatchBackupRequired;

} // namespace understudy::replicator
