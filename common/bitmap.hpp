// A fixed-size bitmap of page indices. AtomicBitmap is safe to set from many threads
// at once (vCPU threads and device threads marking pages the VMM wrote).
#pragma once

#include <atomic>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

namespace understudy {

class Bitmap {
public:
    Bitmap() = default;
    explicit Bitmap(size_t bits) : bits_(bits), words_((bits + 63) / 64, 0) {}

    size_t size() const { return bits_; }
    void set(size_t i) { words_[i / 64] |= 1ull << (i % 64); }
    void clear(size_t i) { words_[i / 64] &= ~(1ull << (i % 64)); }
    bool test(size_t i) const { return (words_[i / 64] >> (i % 64)) & 1; }
    void clear_all() { std::fill(words_.begin(), words_.end(), 0); }
    size_t count() const {
        size_t n = 0;
        for (uint64_t w : words_) n += std::popcount(w);
        return n;
    }
    std::vector<uint64_t>& words() { return words_; }
    const std::vector<uint64_t>& words() const { return words_; }

    // Calls f(index) for every set bit, in increasing order.
    template <class F>
    void for_each_set(F&& f) const {
        for (size_t w = 0; w < words_.size(); ++w) {
            uint64_t word = words_[w];
            while (word) {
                f(w * 64 + std::countr_zero(word));
                word &= word - 1;
            }
        }
    }

    bool operator==(const Bitmap&) const = default;

private:
    size_t bits_ = 0;
    std::vector<uint64_t> words_;
};

class AtomicBitmap {
public:
    explicit AtomicBitmap(size_t bits)
        : bits_(bits), nwords_((bits + 63) / 64), words_(new std::atomic<uint64_t>[nwords_]) {
        for (size_t i = 0; i < nwords_; ++i) words_[i].store(0, std::memory_order_relaxed);
    }

    size_t size() const { return bits_; }
    void set(size_t i) { words_[i / 64].fetch_or(1ull << (i % 64), std::memory_order_release); }
    void set_range(size_t first, size_t count) {
        for (size_t i = first; i < first + count; ++i) set(i);
    }
    // Moves every set bit into out (OR) and clears it here, word by word.
    void drain_into(Bitmap& out) {
        auto& ow = out.words();
        for (size_t i = 0; i < nwords_; ++i) {
            if (words_[i].load(std::memory_order_relaxed) == 0) continue;
            ow[i] |= words_[i].exchange(0, std::memory_order_acq_rel);
        }
    }

private:
    size_t bits_;
    size_t nwords_;
    std::unique_ptr<std::atomic<uint64_t>[]> words_;
};

} // namespace understudy
