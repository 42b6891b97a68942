#include "hv/io_bus.hpp"

#include <cstring>
#include <mutex>

#include "common/log.hpp"

namespace understudy::hv {

Result<void> IoBus::add(uint64_t base, uint64_t len, std::string owner, IoHandler h) {
    if (len == 0 || base + len < base) return make_error(Errc::invalid_input, name_ + " range for " + owner + " is empty or wraps");
    std::unique_lock lock(mu_);
    auto next = ranges_.lower_bound(base);
    if (next != ranges_.end() && next->first < base + len)
        return make_error(Errc::invalid_input, name_ + " range of " + owner + " overlaps " + next->second.owner);
    if (next != ranges_.begin()) {
        auto prev = std::prev(next);
        if (prev->first + prev->second.len > base)
            return make_error(Errc::invalid_input, name_ + " range of " + owner + " overlaps " + prev->second.owner);
    }
    ranges_.emplace(base, Range{len, std::move(owner), std::move(h)});
    return {};
}

Result<void> IoBus::dispatch(Vcpu* vcpu, uint64_t addr, std::span<uint8_t> data, bool is_write) {
    {
        std::shared_lock lock(mu_);
        auto it = ranges_.upper_bound(addr);
        if (it != ranges_.begin()) {
            --it;
            uint64_t off = addr - it->first;
            if (off < it->second.len && data.size() <= it->second.len - off) {
                IoAccess access{vcpu, addr, off, data, is_write};
                return it->second.handler(access);
            }
        }
    }
    uint64_t n = unclaimed_.fetch_add(1, std::memory_order_relaxed);
    if (n < 16 || (n & (n - 1)) == 0)
        log::warn("{}: unclaimed {} of {} bytes at 0x{:x} (#{}), {}", name_, is_write ? "write" : "read", data.size(), addr,
                  n + 1, is_write ? "dropped" : "reads as all ones");
    if (!is_write) std::memset(data.data(), 0xff, data.size());
    return {};
}

} // namespace understudy::hv
