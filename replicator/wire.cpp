#include "replicator/wire.hpp"

#include <cstring>

#include "common/codec.hpp"

namespace understudy::replicator {

namespace {
constexpr char kMagic[8] = {'U', 'S', 'R', 'E', 'P', 'L', '\r', '\n'};
}

StreamHeader make_stream_header(uint64_t memory_bytes, uint32_t vcpus, uint64_t layout_digest, uint64_t config_digest,
                                uint64_t session_id, uint32_t flags, uint32_t disks) {
    StreamHeader h{};
    std::memcpy(h.magic, kMagic, 8);
    h.version = kWireVersion;
    h.page_size = 4096;
    h.memory_bytes = memory_bytes;
    h.vcpus = vcpus;
    h.flags = flags;
    h.layout_digest = layout_digest;
    h.session_id = session_id;
    h.config_digest = config_digest;
    h.disks = disks;
    return h;
}

Result<void> check_stream_header(const StreamHeader& h) {
    auto bad = [](const std::string& why) { return make_error(Errc::invalid_input, "replication stream header: " + why); };
    if (std::memcmp(h.magic, kMagic, 8) != 0) return bad("bad magic; the peer is not an Understudy primary");
    if (h.version != kWireVersion)
        return bad("format version " + std::to_string(h.version) + " is not supported (this build speaks " +
                   std::to_string(kWireVersion) + "; run the same Understudy release on both hosts)");
    if (h.page_size != 4096) return bad("page size " + std::to_string(h.page_size) + " is not supported");
    if (h.flags & ~kStreamFlagControl) return bad("unknown flags " + std::to_string(h.flags & ~kStreamFlagControl));
    if (h.reserved != 0) return bad("the reserved field is not zero");
    if (h.disks > kMaxDisks) return bad(std::to_string(h.disks) + " disks; at most " + std::to_string(kMaxDisks) + " are allowed");
    return {};
}

const char* record_type_name(uint32_t type) {
    switch (type) {
    case kCheckpointBegin: return "CHECKPOINT_BEGIN";
    case kPages: return "PAGES";
    case kVcpuState: return "VCPU_STATE";
    case kVmState: return "VM_STATE";
    case kDeviceState: return "DEVICE_STATE";
    case kCheckpointEnd: return "CHECKPOINT_END";
    case kAck: return "ACK";
    case kAccept: return "ACCEPT";
    case kReject: return "REJECT";
    case kHeartbeat: return "HEARTBEAT";
    case kGoodbye: return "GOODBYE";
    case kHandover: return "HANDOVER";
    case kHandoverAccept: return "HANDOVER_ACCEPT";
    case kVerify: return "VERIFY";
    case kVerifyResult: return "VERIFY_RESULT";
    case kDisks: return "DISKS";
    case kDiskBlocks: return "DISK_BLOCKS";
    case kDiskZero: return "DISK_ZERO";
    case kDiskDigests: return "DISK_DIGESTS";
    case kDiskWant: return "DISK_WANT";
    }
    return "unknown";
}

void CheckpointDigest::add(uint32_t type, std::span<const uint8_t> body) { add_checksum(type, checksum64(body)); }

uint64_t CheckpointDigest::value() const {
    return checksum64({reinterpret_cast<const uint8_t*>(checksums_.data()), checksums_.size() * 8});
}

std::vector<uint8_t> encode_u64s(std::initializer_list<uint64_t> v) {
    std::vector<uint8_t> out;
    Encoder e(out);
    for (uint64_t x : v) e.u64(x);
    return out;
}

} // namespace understudy::replicator
