// Online verification of the replica (DESIGN.md invariant 7; docs/wire-format.md,
// "Online verification"). A pass walks guest memory one slice per checkpoint: in the
// checkpoint's pause the primary takes the digest of each page of the slice and of each
// part of the VM's state, and sends them (VERIFY) right after that checkpoint's END; the
// backup, which has just committed that checkpoint, takes the same digests over its
// replica and answers with what differs (VERIFY_RESULT). Digests per page, so that a
// mismatch names the exact pages; the state is compared at every slice.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "common/error.hpp"
#include "hv/guest_memory.hpp"
#include "hv/vcpu_state.hpp"

namespace understudy::replicator {

inline constexpr uint32_t kVerifyLastSlice = 1;            // VERIFY flag: the pass ends with this slice
inline constexpr uint32_t kMaxVerifySlicePages = 1u << 16; // 256 MiB of guest memory, 512 KiB of digests
// The parts of the state, as bits of VerifyOutcome::state_differs: vCPU i is bit i (a VM
// has at most 8), then the VM clock and the devices' states.
inline constexpr uint32_t kStateVmClock = 1u << 8;
inline constexpr uint32_t kStateDevices = 1u << 9;

// What the primary sends: digests of its VM as it was in checkpoint `epoch`'s pause.
struct VerifySlice {
    uint64_t epoch = 0;
    uint64_t pass = 0; // 1, 2, ... within a primary's run
    uint64_t first_page = 0;
    uint32_t flags = 0;
    std::vector<uint64_t> state; // state_digests()
    std::vector<uint64_t> pages; // page_digest() of first_page, first_page + 1, ...
};

uint64_t page_digest(const uint8_t* page);
// Appends the digests of pages [first, first + count).
void digest_pages(const hv::GuestMemory& mem, uint64_t first, uint64_t count, std::vector<uint64_t>& out);
// One digest per vCPU (its encoded state), then the VM clock, then the devices together:
// the encodings the checkpoint carries, so equal digests mean equal state.
std::vector<uint64_t> state_digests(const hv::VmState& s);

std::vector<uint8_t> encode_verify(const VerifySlice& s);
// Checks the slice against the replica's shape (pages inside memory, a digest per vCPU).
Result<VerifySlice> decode_verify(std::span<const uint8_t> body, uint64_t page_count, uint32_t vcpus);

// What the backup answers for one slice.
struct VerifyOutcome {
    uint64_t epoch = 0, pass = 0, first_page = 0;
    uint32_t page_count = 0;
    uint32_t flags = 0;            // the slice's
    bool other_checkpoint = false; // the replica did not hold checkpoint `epoch`: nothing was compared
    uint32_t state_differs = 0;    // kState* bits, vCPU i as bit i
    std::vector<uint64_t> differing_pages;
    bool matches() const { return !other_checkpoint && state_differs == 0 && differing_pages.empty(); }
};

// The backup's side: the slice against a replica that holds checkpoint `committed_epoch`.
VerifyOutcome compare_slice(const VerifySlice& s, const hv::GuestMemory& mem, const hv::VmState& state,
                            uint64_t committed_epoch);
std::vector<uint8_t> encode_verify_result(const VerifyOutcome& o);
Result<VerifyOutcome> decode_verify_result(std::span<const uint8_t> body);

// A whole pass, assembled from its slices' outcomes (by the primary from the answers, by
// the backup from its own comparisons).
struct VerifyReport {
    uint64_t pass = 0;
    uint64_t first_epoch = 0, last_epoch = 0;
    uint64_t pages_checked = 0;
    std::vector<uint64_t> differing_pages; // page indices, in order
    uint32_t state_differs = 0;            // ORed over the slices
    uint64_t other_checkpoint = 0;         // slices the replica could not compare
    bool unanswered = false;               // the backup did not answer: it does not verify (an older version)
    bool complete = false;                 // the last slice is in

    void add(const VerifyOutcome& o);
    bool matches() const { return complete && !unanswered && differing_pages.empty() && state_differs == 0 && other_checkpoint == 0; }
    const char* verdict() const; // "match", "mismatch", "unanswered", "running"
    // One line: the pass, its checkpoints, and what differs, naming pages and state parts.
    std::string describe() const;
};

// "1 page", "2 pages".
std::string pages_text(uint64_t n);
// "vCPU 0, the VM clock": the parts of the state a kState* mask names.
std::string state_parts(uint32_t mask);

} // namespace understudy::replicator
