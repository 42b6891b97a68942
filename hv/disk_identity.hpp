// Who a disk is and which generation of it a file holds, DRBD-style, kept next to the disk
// in FILE.understudy (docs/disks.md, "Identity"): a random disk id made the first time a VM
// writes the disk, and a new random generation each time a VM starts writing it (a run, a
// promotion), with the generations it continued from. A backup's copy records the
// primary's identity once it holds a whole checkpoint, so that a sync between unrelated
// disks, or from an older disk onto a newer one, is refused instead of overwriting data.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>

#include "common/error.hpp"

namespace understudy::hv {

inline constexpr size_t kDiskHistory = 8;

struct DiskIdentity {
    std::array<uint8_t, 16> disk_id{};          // all zero: unknown
    uint64_t generation = 0;                     // 0: unknown
    std::array<uint64_t, kDiskHistory> history{}; // earlier generations, most recent first; 0: none
    // The file holds a whole disk of `generation` (a copy being synchronized does not).
    bool consistent = false;

    bool known() const { return generation != 0; }
    bool descends_from(uint64_t g) const;
    bool operator==(const DiskIdentity&) const = default;
};

std::string identity_path(const std::string& disk_path); // disk_path + ".understudy"
// The identity kept next to the disk, or nullopt when there is none. A file that is not a
// valid identity is an error.
Result<std::optional<DiskIdentity>> read_identity(const std::string& disk_path);
// Replaces it atomically and durably (a temporary file, fsync, rename, fsync of the directory).
Result<void> write_identity(const std::string& disk_path, const DiskIdentity& id);
// A VM starts writing the disk: a new generation continuing the recorded one (a fresh
// identity for a disk that has none, or whose file was left inconsistent).
Result<DiskIdentity> begin_generation(const std::string& disk_path);
// Whether the primary's disk `source` may be synchronized onto a copy `target` (nullopt:
// yes), and if not, why, for the operator.
std::optional<std::string> sync_refusal(const DiskIdentity& source, const std::optional<DiskIdentity>& target,
                                        const std::string& target_path);
std::string describe(const DiskIdentity& id);

} // namespace understudy::hv
