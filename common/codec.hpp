// Byte-level encoding for formats written down in docs/: little-endian integers and
// length-prefixed blobs appended to a buffer, and a reader that checks every length
// against what is left, so malformed input becomes an Error, never an overread.
#pragma once

#include <bit>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <vector>

#include "common/error.hpp"

namespace understudy {

static_assert(std::endian::native == std::endian::little, "formats are little-endian; so is every host we run on");

class Encoder {
public:
    explicit Encoder(std::vector<uint8_t>& out) : out_(out) {}
    void u32(uint32_t v) { raw(&v, 4); }
    void u64(uint64_t v) { raw(&v, 8); }
    void bytes(std::span<const uint8_t> b) { raw(b.data(), b.size()); }
    void raw(const void* p, size_t n) {
        auto* b = static_cast<const uint8_t*>(p);
        out_.insert(out_.end(), b, b + n);
    }
    template <class T>
    void pod(const T& v) { raw(&v, sizeof v); }
    // A tagged field: {u32 tag; u32 length; bytes; zero padding to a multiple of 8 bytes}.
    // Readers skip unknown tags.
    void field(uint32_t tag, std::span<const uint8_t> body);
    template <class T>
    void field_pod(uint32_t tag, const T& v) { field(tag, {reinterpret_cast<const uint8_t*>(&v), sizeof v}); }

private:
    std::vector<uint8_t>& out_;
};

class Decoder {
public:
    Decoder(std::span<const uint8_t> in, std::string what) : in_(in), what_(std::move(what)) {}
    size_t remaining() const { return in_.size() - pos_; }
    bool done() const { return pos_ == in_.size(); }
    Result<uint32_t> u32() { return get<uint32_t>(); }
    Result<uint64_t> u64() { return get<uint64_t>(); }
    Result<std::span<const uint8_t>> bytes(size_t n);
    template <class T>
    Result<T> get() {
        auto b = US_TRY(bytes(sizeof(T)));
        T v;
        std::memcpy(&v, b.data(), sizeof v);
        return v;
    }
    struct Field {
        uint32_t tag;
        std::span<const uint8_t> body;
    };
    Result<Field> field();
    // Copies a field body into a fixed-size struct, insisting on the exact size.
    template <class T>
    static Result<T> as_pod(const Field& f, const std::string& what) {
        if (f.body.size() != sizeof(T))
            return make_error(Errc::invalid_input, what + ": field " + std::to_string(f.tag) + " has " +
                                                       std::to_string(f.body.size()) + " bytes, expected " +
                                                       std::to_string(sizeof(T)));
        T v;
        std::memcpy(&v, f.body.data(), sizeof v);
        return v;
    }
    Error error(const std::string& msg) const { return make_error(Errc::invalid_input, what_ + ": " + msg); }

private:
    std::span<const uint8_t> in_;
    size_t pos_ = 0;
    std::string what_;
};

} // namespace understudy
