#include "replicator/link_security.hpp"

#include <fcntl.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <cstring>

#include "common/unique_fd.hpp"
#include "replicator/link_cipher.hpp"
#include "replicator/wire.hpp"

namespace understudy::replicator {

const char* const kMismatchBackupDisabled =
    "link security mismatch: this backup runs with --link-security disabled and the primary requires it; "
    "both sides must use the same --link-security mode";
const char* const kMismatchBackupRequired =
    "link security mismatch: this backup requires link security (--link-security required) and the primary has it "
    "disabled; both sides must use the same --link-security mode and --link-key";

namespace {

constexpr char kHelloMagic[8] = {'U', 'S', 'L', 'I', 'N', 'K', '\r', '\n'};
constexpr char kVerdictMagic[8] = {'U', 'S', 'L', 'I', 'N', 'K', 'V', '\n'};
constexpr uint32_t kLinkVersion = 1;
constexpr uint32_t kSuitePskAes256Gcm = 1; // PSK, HKDF-SHA256, HMAC-SHA256 proofs, AES-256-GCM frames
constexpr uint32_t kRoleClient = 1, kRoleServer = 2;
constexpr uint32_t kVerdictAccepted = 0, kVerdictKeyMismatch = 1;

// Both hellos, 64 bytes (docs/wire-format.md, "Link security").
struct LinkHello {
    char magic[8];       // 0: "USLINK\r\n"
    uint32_t version;    // 8: 1
    uint32_t suite;      // 12: 1
    uint32_t channel;    // 16: LinkChannel (the server echoes the client's)
    uint32_t role;       // 20: 1 client, 2 server
    uint8_t nonce[32];   // 24: fresh random bytes
    uint64_t reserved;   // 56: 0
};
static_assert(std::is_standard_layout_v<LinkHello> && sizeof(LinkHello) == 64);

// The server's last handshake message, 16 bytes.
struct LinkVerdict {
    char magic[8];     // 0: "USLINKV\n"
    uint32_t status;   // 8: 0 accepted, 1 the client's key proof did not match
    uint32_t reserved; // 12: 0
};
static_assert(std::is_standard_layout_v<LinkVerdict> && sizeof(LinkVerdict) == 16);

using Proof = std::array<uint8_t, 32>;

// Everything both sides derive from the key and the two hellos.
struct Schedule {
    LinkSecret c2s_key, s2c_key, client_proof_key, server_proof_key;
    LinkIv c2s_iv, s2c_iv;
    std::array<uint8_t, 32> transcript_hash;
    ~Schedule() { OPENSSL_cleanse(this, sizeof *this); }
};

template <class T>
std::span<const uint8_t> bytes_of(const T& v) {
    return {reinterpret_cast<const uint8_t*>(&v), sizeof v};
}

Error handshake_error(const std::string& why) { return make_error(Errc::invalid_input, why); }

Result<LinkHello> make_hello(uint32_t role, LinkChannel channel) {
    LinkHello h{};
    std::memcpy(h.magic, kHelloMagic, 8);
    h.version = kLinkVersion;
    h.suite = kSuitePskAes256Gcm;
    h.channel = static_cast<uint32_t>(channel);
    h.role = role;
    if (RAND_bytes(h.nonce, sizeof h.nonce) != 1) return make_error(Errc::system, "drawing a link nonce: OpenSSL RAND_bytes failed");
    return h;
}

// Checks a hello that carries the magic; `what` names the peer for the message.
Result<void> check_hello(const LinkHello& h, uint32_t role, const std::string& what) {
    if (h.version != kLinkVersion)
        return handshake_error(what + " speaks link security version " + std::to_string(h.version) + "; this side speaks " +
                               std::to_string(kLinkVersion));
    if (h.suite != kSuitePskAes256Gcm) return handshake_error(what + " offers unknown cipher suite " + std::to_string(h.suite));
    if (h.role != role) return handshake_error(what + " sent a link hello of the wrong role");
    if (h.channel != static_cast<uint32_t>(LinkChannel::stream) && h.channel != static_cast<uint32_t>(LinkChannel::control))
        return handshake_error(what + " asked for unknown channel " + std::to_string(h.channel));
    if (h.reserved != 0) return handshake_error(what + " sent a link hello with a non-zero reserved field");
    return {};
}

Result<void> derive(const LinkKey& key, const LinkHello& client, const LinkHello& server, Schedule& s) {
    std::array<uint8_t, 128> transcript;
    std::memcpy(transcript.data(), &client, 64);
    std::memcpy(transcript.data() + 64, &server, 64);
    unsigned len = 0;
    if (EVP_Digest(transcript.data(), transcript.size(), s.transcript_hash.data(), &len, EVP_sha256(), nullptr) != 1)
        return make_error(Errc::system, "hashing the link handshake: OpenSSL failed");
    static constexpr char kInfo[] = "understudy link v1 keys";
    std::array<uint8_t, 4 * 32 + 2 * 12> okm;
    US_TRYV(hkdf_sha256(key.bytes(), s.transcript_hash, {reinterpret_cast<const uint8_t*>(kInfo), sizeof kInfo - 1}, okm));
    size_t at = 0;
    auto take = [&](auto& out) {
        std::memcpy(out.data(), okm.data() + at, out.size());
        at += out.size();
    };
    take(s.c2s_key);
    take(s.c2s_iv);
    take(s.s2c_key);
    take(s.s2c_iv);
    take(s.client_proof_key);
    take(s.server_proof_key);
    OPENSSL_cleanse(okm.data(), okm.size());
    return {};
}

// HMAC-SHA256(proof_key, label || transcript hash || extra).
Result<Proof> proof(const LinkSecret& proof_key, const char* label, const Schedule& s, std::span<const uint8_t> extra) {
    std::vector<uint8_t> msg(label, label + std::strlen(label));
    msg.insert(msg.end(), s.transcript_hash.begin(), s.transcript_hash.end());
    msg.insert(msg.end(), extra.begin(), extra.end());
    Proof out;
    size_t len = 0;
    if (!EVP_Q_mac(nullptr, "HMAC", nullptr, "SHA256", nullptr, proof_key.data(), proof_key.size(), msg.data(), msg.size(),
                   out.data(), out.size(), &len) ||
        len != out.size())
        return make_error(Errc::system, "computing a link key proof: OpenSSL HMAC failed");
    return out;
}

Result<void> send_bytes(Connection& c, std::span<const uint8_t> b) { return c.send({&b, 1}); }

// After the client's hello: the first 16 bytes tell a link hello from a REJECT record
// (a backup with link security disabled, or one that refuses our version).
Result<LinkHello> read_server_hello(Connection& conn) {
    std::array<uint8_t, 16> first;
    US_TRYV(conn.recv_exact(first));
    if (std::memcmp(first.data(), kHelloMagic, 8) == 0) {
        LinkHello h;
        std::memcpy(&h, first.data(), 16);
        US_TRYV(conn.recv_exact({reinterpret_cast<uint8_t*>(&h) + 16, sizeof h - 16}));
        return h;
    }
    RecordHeader rh;
    std::memcpy(&rh, first.data(), sizeof rh);
    if (rh.type == kReject && rh.length <= 4096) {
        std::vector<uint8_t> body(rh.length + (8 - rh.length % 8) % 8);
        US_TRYV(conn.recv_exact(body));
        body.resize(rh.length);
        if (checksum64(body) == rh.checksum)
            return handshake_error("the backup at " + conn.peer() + " refused the link: " + std::string(body.begin(), body.end()));
    }
    return handshake_error("the backup at " + conn.peer() + " did not answer the link handshake (it does not speak link "
                           "security version 1)");
}

} // namespace

// ---- keys ----

LinkKey::LinkKey(LinkKey&&) noexcept = default;
LinkKey& LinkKey::operator=(LinkKey&& o) noexcept {
    if (this != &o) {
        OPENSSL_cleanse(bytes_.data(), bytes_.size());
        bytes_ = std::move(o.bytes_);
    }
    return *this;
}
LinkKey::~LinkKey() { OPENSSL_cleanse(bytes_.data(), bytes_.size()); }

Result<LinkKey> LinkKey::from_bytes(std::span<const uint8_t> bytes) {
    if (bytes.size() < kLinkKeyMinBytes)
        return make_error(Errc::invalid_input, "a link key of " + std::to_string(bytes.size()) + " bytes is too short: it needs at least " +
                                                   std::to_string(kLinkKeyMinBytes));
    if (bytes.size() > kLinkKeyMaxBytes)
        return make_error(Errc::invalid_input, "a link key of " + std::to_string(bytes.size()) + " bytes is over the limit of " +
                                                   std::to_string(kLinkKeyMaxBytes));
    LinkKey k;
    k.bytes_.assign(bytes.begin(), bytes.end());
    return k;
}

Result<LinkKey> LinkKey::random() {
    std::array<uint8_t, kLinkKeyGenBytes> b;
    if (RAND_bytes(b.data(), b.size()) != 1) return make_error(Errc::system, "drawing a link key: OpenSSL RAND_bytes failed");
    auto k = from_bytes(b);
    OPENSSL_cleanse(b.data(), b.size());
    return k;
}

Result<LinkKey> load_link_key(const std::string& path) {
    UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd.valid()) return sys_error("opening link key file " + path);
    struct stat st{};
    if (::fstat(fd.get(), &st) < 0) return sys_error("link key file " + path);
    auto bad = [&](const std::string& why) { return make_error(Errc::invalid_input, "link key file " + path + " " + why); };
    if (!S_ISREG(st.st_mode)) return bad("is not a regular file");
    if (st.st_mode & 077) {
        char mode[8];
        std::snprintf(mode, sizeof mode, "%04o", unsigned(st.st_mode & 07777));
        return bad(std::string("can be read or written by group or others (mode ") + mode +
                   "): it must be accessible to its owner only (chmod 600 " + path + ")");
    }
    if (st.st_size < static_cast<off_t>(kLinkKeyMinBytes))
        return bad("holds " + std::to_string(st.st_size) + " bytes; a key needs at least " + std::to_string(kLinkKeyMinBytes) +
                   " (make one with `understudy keygen FILE`)");
    if (st.st_size > static_cast<off_t>(kLinkKeyMaxBytes))
        return bad("holds " + std::to_string(st.st_size) + " bytes, more than a key file may (" +
                   std::to_string(kLinkKeyMaxBytes) + ")");
    std::vector<uint8_t> buf(static_cast<size_t>(st.st_size));
    for (size_t done = 0; done < buf.size();) {
        ssize_t n = ::read(fd.get(), buf.data() + done, buf.size() - done);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return sys_error("reading link key file " + path);
        if (n == 0) return bad("shrank while it was read");
        done += static_cast<size_t>(n);
    }
    auto k = LinkKey::from_bytes(buf);
    OPENSSL_cleanse(buf.data(), buf.size());
    return k;
}

Result<void> write_new_link_key(const std::string& path) {
    auto key = US_TRY(LinkKey::random());
    UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600));
    if (!fd.valid()) return sys_error("creating link key file " + path + (errno == EEXIST ? " (it exists; not overwritten)" : ""));
    auto fail = [&](Error e) {
        ::unlink(path.c_str());
        return e;
    };
    if (::fchmod(fd.get(), 0600) < 0) return fail(sys_error("chmod 600 " + path));
    auto b = key.bytes();
    for (size_t done = 0; done < b.size();) {
        ssize_t n = ::write(fd.get(), b.data() + done, b.size() - done);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return fail(sys_error("writing link key file " + path));
        done += static_cast<size_t>(n);
    }
    if (::fsync(fd.get()) < 0) return fail(sys_error("fsync " + path));
    return {};
}

// ---- modes ----

Result<LinkSecurityMode> parse_link_security_mode(const std::string& text) {
    if (text == "required") return LinkSecurityMode::required;
    if (text == "disabled") return LinkSecurityMode::disabled;
    return make_error(Errc::invalid_input, "link security mode \"" + text + "\": expected required or disabled");
}

const char* link_security_mode_name(LinkSecurityMode m) { return m == LinkSecurityMode::required ? "required" : "disabled"; }

Result<void> validate(const LinkSecurity& s) {
    if (s.enabled() && !s.key)
        return make_error(Errc::invalid_input, "link security is required but no link key was given "
                                               "(--link-key FILE, or --link-security disabled)");
    return {};
}

bool is_link_hello_magic(std::span<const uint8_t, 8> magic) { return std::memcmp(magic.data(), kHelloMagic, 8) == 0; }

// ---- handshake ----

Result<void> secure_client(Connection& conn, const LinkKey& key, LinkChannel channel) {
    auto client = US_TRY(make_hello(kRoleClient, channel));
    US_TRYV(send_bytes(conn, bytes_of(client)));
    auto server = US_TRY(read_server_hello(conn));
    US_TRYV(check_hello(server, kRoleServer, "the backup at " + conn.peer()));
    if (server.channel != client.channel) return handshake_error("the backup at " + conn.peer() + " answered for another channel");
    Proof server_proof;
    US_TRYV(conn.recv_exact(server_proof));
    Schedule s;
    US_TRYV(derive(key, client, server, s));
    auto expected = US_TRY(proof(s.server_proof_key, "understudy link v1 server proof", s, {}));
    if (CRYPTO_memcmp(expected.data(), server_proof.data(), expected.size()) != 0) {
        Proof none{}; // tells the backup at once; a zero proof never matches
        (void)send_bytes(conn, none);
        return handshake_error("link authentication failed: the backup at " + conn.peer() +
                               " does not hold the same key (its key proof does not match ours)");
    }
    auto mine = US_TRY(proof(s.client_proof_key, "understudy link v1 client proof", s, server_proof));
    US_TRYV(send_bytes(conn, mine));
    LinkVerdict v;
    US_TRYV(conn.recv_exact({reinterpret_cast<uint8_t*>(&v), sizeof v}));
    if (std::memcmp(v.magic, kVerdictMagic, 8) != 0 || v.reserved != 0 ||
        (v.status != kVerdictAccepted && v.status != kVerdictKeyMismatch))
        return handshake_error("the backup at " + conn.peer() + " sent a malformed link verdict");
    if (v.status == kVerdictKeyMismatch)
        return handshake_error("link authentication failed: the backup at " + conn.peer() +
                               " does not hold the same key (it refused our key proof)");
    auto tx = US_TRY(FrameCipher::create(s.c2s_key, s.c2s_iv, true));
    auto rx = US_TRY(FrameCipher::create(s.s2c_key, s.s2c_iv, false));
    return conn.start_encryption(std::move(tx), std::move(rx));
}

Result<LinkChannel> secure_server(Connection& conn, const LinkKey& key) {
    const std::string who = "the primary at " + conn.peer();
    LinkHello client;
    US_TRYV(conn.recv_exact({reinterpret_cast<uint8_t*>(&client), sizeof client}));
    auto refuse = [&](const std::string& reason, const std::string& error) {
        (void)conn.send_record(kReject, {reinterpret_cast<const uint8_t*>(reason.data()), reason.size()});
        return handshake_error(error);
    };
    if (std::memcmp(client.magic, "USREPL\r\n", 8) == 0 || std::memcmp(client.magic, "USCTRL\r\n", 8) == 0)
        return refuse(kMismatchBackupRequired, "link security mismatch: " + who +
                                                   " has link security disabled (it sent a plain stream) and this backup "
                                                   "requires it");
    if (std::memcmp(client.magic, kHelloMagic, 8) != 0)
        return refuse("not a link hello", who + " sent neither a link hello nor a stream header");
    if (auto ok = check_hello(client, kRoleClient, who); !ok) return refuse(ok.error().message, ok.error().message);
    auto server = US_TRY(make_hello(kRoleServer, static_cast<LinkChannel>(client.channel)));
    Schedule s;
    US_TRYV(derive(key, client, server, s));
    auto mine = US_TRY(proof(s.server_proof_key, "understudy link v1 server proof", s, {}));
    std::array<uint8_t, sizeof(LinkHello) + 32> msg;
    std::memcpy(msg.data(), &server, sizeof server);
    std::memcpy(msg.data() + sizeof server, mine.data(), mine.size());
    US_TRYV(send_bytes(conn, msg));
    Proof client_proof;
    US_TRYV(conn.recv_exact(client_proof));
    auto expected = US_TRY(proof(s.client_proof_key, "understudy link v1 client proof", s, mine));
    LinkVerdict v{};
    std::memcpy(v.magic, kVerdictMagic, 8);
    bool match = CRYPTO_memcmp(expected.data(), client_proof.data(), expected.size()) == 0;
    v.status = match ? kVerdictAccepted : kVerdictKeyMismatch;
    auto sent = send_bytes(conn, bytes_of(v));
    if (!match) return handshake_error("link authentication failed: " + who + " does not hold the same key (its key proof does not match ours)");
    US_TRYV(std::move(sent));
    auto tx = US_TRY(FrameCipher::create(s.s2c_key, s.s2c_iv, true));
    auto rx = US_TRY(FrameCipher::create(s.c2s_key, s.c2s_iv, false));
    US_TRYV(conn.start_encryption(std::move(tx), std::move(rx)));
    return static_cast<LinkChannel>(client.channel);
}

} // namespace understudy::replicator
