#include "replicator/link_cipher.hpp"

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>

#include <climits>
#include <cstring>

namespace understudy::replicator {

namespace {

Error openssl_error(const std::string& what) {
    unsigned long e = ERR_get_error();
    char buf[256] = "no detail";
    if (e) ERR_error_string_n(e, buf, sizeof buf);
    ERR_clear_error();
    return make_error(Errc::system, what + ": OpenSSL: " + buf);
}

constexpr char kKeyUpdateLabel[] = "understudy link v1 key update";

struct KdfDeleter {
    void operator()(EVP_KDF_CTX* c) const { EVP_KDF_CTX_free(c); }
};

Result<void> hkdf(int mode, std::span<const uint8_t> key, std::span<const uint8_t> salt, std::span<const uint8_t> info,
                  std::span<uint8_t> out) {
    static EVP_KDF* kdf = EVP_KDF_fetch(nullptr, "HKDF", nullptr); // lives as long as the process
    if (!kdf) return openssl_error("fetching HKDF");
    std::unique_ptr<EVP_KDF_CTX, KdfDeleter> ctx(EVP_KDF_CTX_new(kdf));
    if (!ctx) return openssl_error("creating an HKDF context");
    char digest[] = "SHA256";
    OSSL_PARAM params[6];
    size_t n = 0;
    params[n++] = OSSL_PARAM_construct_int(OSSL_KDF_PARAM_MODE, &mode);
    params[n++] = OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, digest, 0);
    params[n++] = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, const_cast<uint8_t*>(key.data()), key.size());
    if (!salt.empty())
        params[n++] = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SALT, const_cast<uint8_t*>(salt.data()), salt.size());
    params[n++] = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, const_cast<uint8_t*>(info.data()), info.size());
    params[n] = OSSL_PARAM_construct_end();
    if (EVP_KDF_derive(ctx.get(), out.data(), out.size(), params) != 1) return openssl_error("HKDF-SHA256");
    return {};
}

} // namespace

Result<void> hkdf_sha256(std::span<const uint8_t> ikm, std::span<const uint8_t> salt, std::span<const uint8_t> info,
                         std::span<uint8_t> out) {
    return hkdf(EVP_KDF_HKDF_MODE_EXTRACT_AND_EXPAND, ikm, salt, info, out);
}

Result<void> hkdf_expand_sha256(std::span<const uint8_t> prk, std::span<const uint8_t> info, std::span<uint8_t> out) {
    return hkdf(EVP_KDF_HKDF_MODE_EXPAND_ONLY, prk, {}, info, out);
}

struct FrameCipher::Ctx {
    EVP_CIPHER_CTX* c = EVP_CIPHER_CTX_new();
    ~Ctx() { EVP_CIPHER_CTX_free(c); }
};

FrameCipher::~FrameCipher() {
    OPENSSL_cleanse(key_.data(), key_.size());
    OPENSSL_cleanse(iv_.data(), iv_.size());
}

Result<std::unique_ptr<FrameCipher>> FrameCipher::create(const LinkSecret& key, const LinkIv& iv, bool sealing,
                                                         uint64_t rekey_bytes) {
    std::unique_ptr<FrameCipher> f(new FrameCipher);
    f->ctx_ = std::make_unique<Ctx>();
    if (!f->ctx_->c) return openssl_error("creating a cipher context");
    f->key_ = key;
    f->iv_ = iv;
    f->sealing_ = sealing;
    f->rekey_bytes_ = rekey_bytes ? rekey_bytes : kRekeyBytes;
    US_TRYV(f->set_key());
    return f;
}

Result<void> FrameCipher::set_key() {
    static EVP_CIPHER* aes = EVP_CIPHER_fetch(nullptr, "AES-256-GCM", nullptr);
    if (!aes) return openssl_error("fetching AES-256-GCM");
    if (EVP_CipherInit_ex(ctx_->c, aes, nullptr, key_.data(), nullptr, sealing_ ? 1 : 0) != 1)
        return openssl_error("keying AES-256-GCM");
    keyed_bytes_ = 0;
    return {};
}

std::array<uint8_t, 12> FrameCipher::nonce(uint64_t n) const {
    std::array<uint8_t, 12> out = iv_;
    for (int i = 0; i < 8; ++i) out[11 - i] ^= static_cast<uint8_t>(n >> (8 * i));
    return out;
}

// Counts a frame; after rekey_bytes_ of plaintext under one key, derives the next.
Result<void> FrameCipher::account(size_t bytes) {
    ++counter_;
    keyed_bytes_ += bytes;
    if (keyed_bytes_ < rekey_bytes_) return {};
    LinkSecret next;
    US_TRYV(hkdf_expand_sha256(key_, {reinterpret_cast<const uint8_t*>(kKeyUpdateLabel), sizeof kKeyUpdateLabel - 1}, next));
    key_ = next;
    OPENSSL_cleanse(next.data(), next.size());
    return set_key();
}

Result<void> FrameCipher::seal(std::span<const std::span<const uint8_t>> pieces, size_t total, uint8_t* out) {
    if (!sealing_) return make_error(Errc::state, "sealing with a cipher made for opening");
    if (total == 0 || total > kMaxFramePlain)
        return make_error(Errc::invalid_input, "a frame of " + std::to_string(total) + " bytes is outside 1 .. " +
                                                   std::to_string(kMaxFramePlain));
    EVP_CIPHER_CTX* c = ctx_->c;
    auto iv = nonce(counter_);
    uint32_t len = static_cast<uint32_t>(total);
    std::memcpy(out, &len, 4); // little-endian hosts only (the project's wire structs assume it)
    int outl = 0;
    if (EVP_EncryptInit_ex(c, nullptr, nullptr, nullptr, iv.data()) != 1 || EVP_EncryptUpdate(c, nullptr, &outl, out, 4) != 1)
        return openssl_error("sealing a frame");
    uint8_t* p = out + kFrameHeaderBytes;
    size_t done = 0;
    for (auto piece : pieces) {
        if (piece.empty()) continue;
        if (done + piece.size() > total) return make_error(Errc::invalid_input, "frame pieces exceed the frame length");
        if (EVP_EncryptUpdate(c, p, &outl, piece.data(), static_cast<int>(piece.size())) != 1)
            return openssl_error("sealing a frame");
        p += outl;
        done += piece.size();
    }
    if (done != total) return make_error(Errc::invalid_input, "frame pieces fall short of the frame length");
    if (EVP_EncryptFinal_ex(c, p, &outl) != 1) return openssl_error("sealing a frame");
    p += outl;
    if (EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_GET_TAG, kFrameTagBytes, p) != 1) return openssl_error("sealing a frame");
    return account(total);
}

Result<void> FrameCipher::open(std::span<const uint8_t> frame, uint8_t* plain) {
    if (sealing_) return make_error(Errc::state, "opening with a cipher made for sealing");
    if (frame.size() <= kFrameOverhead || frame.size() - kFrameOverhead > kMaxFramePlain)
        return make_error(Errc::invalid_input, "a frame of " + std::to_string(frame.size()) + " bytes is malformed");
    size_t len = frame.size() - kFrameOverhead;
    uint32_t declared;
    std::memcpy(&declared, frame.data(), 4);
    if (declared != len) return make_error(Errc::invalid_input, "a frame's length does not match its header");
    EVP_CIPHER_CTX* c = ctx_->c;
    auto iv = nonce(counter_);
    int outl = 0;
    if (EVP_DecryptInit_ex(c, nullptr, nullptr, nullptr, iv.data()) != 1 ||
        EVP_DecryptUpdate(c, nullptr, &outl, frame.data(), 4) != 1 ||
        EVP_DecryptUpdate(c, plain, &outl, frame.data() + kFrameHeaderBytes, static_cast<int>(len)) != 1)
        return openssl_error("opening a frame");
    std::array<uint8_t, kFrameTagBytes> tag;
    std::memcpy(tag.data(), frame.data() + kFrameHeaderBytes + len, kFrameTagBytes);
    if (EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_TAG, kFrameTagBytes, tag.data()) != 1) return openssl_error("opening a frame");
    int fin = 0;
    if (EVP_DecryptFinal_ex(c, plain + outl, &fin) != 1) {
        ERR_clear_error();
        return make_error(Errc::invalid_input, "frame " + std::to_string(counter_) +
                                                   " fails its authentication tag: the stream was altered, replayed, "
                                                   "reordered or cut on the way");
    }
    return account(len);
}

} // namespace understudy::replicator
