#include "replicator/verification.hpp"

#include <xxhash.h>
#include <xxh_x86dispatch.h> // XXH3 on the widest vector unit the CPU has (same values)

#include "common/codec.hpp"

namespace understudy::replicator {

namespace {
Error verify_error(const char* record, const std::string& why) {
    return make_error(Errc::invalid_input, std::string("replication stream: ") + record + ": " + why);
}

uint64_t digest_bytes(const std::vector<uint8_t>& b) { return XXH3_64bits(b.data(), b.size()); }

// Answer status: the slice was compared, or the replica held another checkpoint.
constexpr uint32_t kCompared = 0;
constexpr uint32_t kOtherCheckpoint = 1;
} // namespace

uint64_t page_digest(const uint8_t* page) { return XXH3_64bits(page, hv::kPageSize); }

void digest_pages(const hv::GuestMemory& mem, uint64_t first, uint64_t count, std::vector<uint64_t>& out) {
    for (uint64_t p = first; p < first + count; ++p) out.push_back(page_digest(mem.page_ptr(p)));
}

std::vector<uint64_t> state_digests(const hv::VmState& s) {
    std::vector<uint64_t> out;
    std::vector<uint8_t> bytes;
    for (const auto& v : s.vcpus) {
        bytes.clear();
        hv::encode_vcpu_state(v, bytes);
        out.push_back(digest_bytes(bytes));
    }
    bytes.clear();
    hv::encode_vm_clock(s, bytes);
    out.push_back(digest_bytes(bytes));
    bytes.clear();
    for (const auto& d : s.devices) hv::encode_device_state(d, bytes);
    out.push_back(digest_bytes(bytes));
    return out;
}

std::vector<uint8_t> encode_verify(const VerifySlice& s) {
    std::vector<uint8_t> out;
    out.reserve(40 + 8 * (s.state.size() + s.pages.size()));
    Encoder e(out);
    e.u64(s.epoch);
    e.u64(s.pass);
    e.u64(s.first_page);
    e.u32(static_cast<uint32_t>(s.pages.size()));
    e.u32(s.flags);
    e.u32(static_cast<uint32_t>(s.state.size()));
    e.u32(0);
    for (uint64_t d : s.state) e.u64(d);
    for (uint64_t d : s.pages) e.u64(d);
    return out;
}

Result<VerifySlice> decode_verify(std::span<const uint8_t> body, uint64_t page_count, uint32_t vcpus) {
    Decoder d(body, "VERIFY record");
    VerifySlice s;
    s.epoch = US_TRY(d.u64());
    s.pass = US_TRY(d.u64());
    s.first_page = US_TRY(d.u64());
    const uint32_t pages = US_TRY(d.u32());
    s.flags = US_TRY(d.u32());
    const uint32_t states = US_TRY(d.u32());
    if (US_TRY(d.u32()) != 0) return verify_error("VERIFY", "reserved word is not zero");
    if (s.flags & ~kVerifyLastSlice) return verify_error("VERIFY", "unknown flags " + std::to_string(s.flags));
    if (s.pass == 0) return verify_error("VERIFY", "pass 0");
    if (pages == 0 || pages > kMaxVerifySlicePages)
        return verify_error("VERIFY", std::to_string(pages) + " pages in a slice (1 .. " + std::to_string(kMaxVerifySlicePages) + ")");
    if (s.first_page >= page_count || pages > page_count - s.first_page)
        return verify_error("VERIFY", "pages " + std::to_string(s.first_page) + " .. " + std::to_string(s.first_page + pages - 1) +
                                          " lie outside the guest's " + std::to_string(page_count) + " pages");
    if (states != vcpus + 2)
        return verify_error("VERIFY", std::to_string(states) + " state digests for " + std::to_string(vcpus) + " vCPUs (expected " +
                                          std::to_string(vcpus + 2) + ")");
    if (d.remaining() != 8 * (uint64_t(states) + pages))
        return verify_error("VERIFY", "body has " + std::to_string(body.size()) + " bytes, expected " +
                                          std::to_string(40 + 8 * (uint64_t(states) + pages)));
    s.state.resize(states);
    for (auto& v : s.state) v = US_TRY(d.u64());
    s.pages.resize(pages);
    for (auto& v : s.pages) v = US_TRY(d.u64());
    return s;
}

VerifyOutcome compare_slice(const VerifySlice& s, const hv::GuestMemory& mem, const hv::VmState& state,
                            uint64_t committed_epoch) {
    VerifyOutcome o;
    o.epoch = s.epoch;
    o.pass = s.pass;
    o.first_page = s.first_page;
    o.page_count = static_cast<uint32_t>(s.pages.size());
    o.flags = s.flags;
    if (committed_epoch != s.epoch) {
        o.other_checkpoint = true;
        return o;
    }
    for (size_t i = 0; i < s.pages.size(); ++i)
        if (page_digest(mem.page_ptr(s.first_page + i)) != s.pages[i]) o.differing_pages.push_back(s.first_page + i);
    const auto here = state_digests(state);
    const size_t vcpus = s.state.size() - 2; // decode_verify checked the count against the replica
    for (size_t i = 0; i < s.state.size(); ++i) {
        if (i < here.size() && here[i] == s.state[i]) continue;
        o.state_differs |= i < vcpus ? (1u << i) : i == vcpus ? kStateVmClock : kStateDevices;
    }
    return o;
}

std::vector<uint8_t> encode_verify_result(const VerifyOutcome& o) {
    std::vector<uint8_t> out;
    Encoder e(out);
    e.u64(o.epoch);
    e.u64(o.pass);
    e.u64(o.first_page);
    e.u32(o.page_count);
    e.u32(o.flags);
    e.u32(o.other_checkpoint ? kOtherCheckpoint : kCompared);
    e.u32(o.state_differs);
    e.u32(static_cast<uint32_t>(o.differing_pages.size()));
    e.u32(0);
    for (uint64_t p : o.differing_pages) e.u64(p);
    return out;
}

Result<VerifyOutcome> decode_verify_result(std::span<const uint8_t> body) {
    Decoder d(body, "VERIFY_RESULT record");
    VerifyOutcome o;
    o.epoch = US_TRY(d.u64());
    o.pass = US_TRY(d.u64());
    o.first_page = US_TRY(d.u64());
    o.page_count = US_TRY(d.u32());
    o.flags = US_TRY(d.u32());
    const uint32_t status = US_TRY(d.u32());
    o.state_differs = US_TRY(d.u32());
    const uint32_t differing = US_TRY(d.u32());
    if (US_TRY(d.u32()) != 0) return verify_error("VERIFY_RESULT", "reserved word is not zero");
    if (status != kCompared && status != kOtherCheckpoint)
        return verify_error("VERIFY_RESULT", "unknown status " + std::to_string(status));
    o.other_checkpoint = status == kOtherCheckpoint;
    if (o.state_differs & ~(0xffu | kStateVmClock | kStateDevices))
        return verify_error("VERIFY_RESULT", "unknown state parts " + std::to_string(o.state_differs));
    if (differing > o.page_count || d.remaining() != 8 * uint64_t(differing))
        return verify_error("VERIFY_RESULT", "lists " + std::to_string(differing) + " differing pages of " +
                                                 std::to_string(o.page_count) + " in " + std::to_string(body.size()) + " bytes");
    uint64_t previous = 0;
    for (uint32_t i = 0; i < differing; ++i) {
        uint64_t p = US_TRY(d.u64());
        if (p < o.first_page || p - o.first_page >= o.page_count || (i > 0 && p <= previous))
            return verify_error("VERIFY_RESULT", "differing page " + std::to_string(p) + " is not in the slice, in order");
        o.differing_pages.push_back(p);
        previous = p;
    }
    return o;
}

void VerifyReport::add(const VerifyOutcome& o) {
    if (first_epoch == 0) first_epoch = o.epoch;
    last_epoch = o.epoch;
    if (o.other_checkpoint) ++other_checkpoint;
    else pages_checked += o.page_count;
    differing_pages.insert(differing_pages.end(), o.differing_pages.begin(), o.differing_pages.end());
    state_differs |= o.state_differs;
    if (o.flags & kVerifyLastSlice) complete = true;
}

const char* VerifyReport::verdict() const {
    if (unanswered) return "unanswered";
    if (!complete) return "running";
    return matches() ? "match" : "mismatch";
}

std::string pages_text(uint64_t n) { return std::to_string(n) + (n == 1 ? " page" : " pages"); }

std::string state_parts(uint32_t mask) {
    std::string out;
    auto add = [&](const std::string& part) { out += (out.empty() ? "" : ", ") + part; };
    for (unsigned i = 0; i < 8; ++i)
        if (mask & (1u << i)) add("vCPU " + std::to_string(i));
    if (mask & kStateVmClock) add("the VM clock");
    if (mask & kStateDevices) add("the devices");
    return out;
}

std::string VerifyReport::describe() const {
    if (unanswered)
        return "verification pass " + std::to_string(pass) + ": the backup did not answer (it does not verify: an older version)";
    std::string s = "verification pass " + std::to_string(pass) + " (checkpoints " + std::to_string(first_epoch) + " .. " +
                    std::to_string(last_epoch) + ", " + std::to_string(pages_checked) + " pages): ";
    if (!complete) return s + "running";
    if (matches()) return s + "the replica matches the VM, every page and the state";
    s += "MISMATCH:";
    if (!differing_pages.empty()) {
        s += " " + pages_text(differing_pages.size()) + (differing_pages.size() == 1 ? " differs" : " differ") + " (page index";
        constexpr size_t kNamed = 16;
        for (size_t i = 0; i < differing_pages.size() && i < kNamed; ++i) s += (i ? ", " : " ") + std::to_string(differing_pages[i]);
        if (differing_pages.size() > kNamed) s += ", and " + std::to_string(differing_pages.size() - kNamed) + " more";
        s += ")";
    }
    if (state_differs) s += std::string(differing_pages.empty() ? "" : ";") + " the state of " + state_parts(state_differs) + " differs";
    if (other_checkpoint)
        s += std::string(differing_pages.empty() && !state_differs ? "" : ";") + " " + std::to_string(other_checkpoint) +
             " slices found the replica at another checkpoint";
    return s;
}

} // namespace understudy::replicator
