// The snapshot file's reading side (docs/snapshot-format.md) that needs no KVM: the
// record framing of common/records.hpp as FileReader reads it from a file (length bound,
// padding, checksum, truncation), and the state decoders that restore_snapshot applies
// to the records' bodies (decode_vm_clock, decode_vcpu_state, decode_device_state; the
// same decoders read VCPU_STATE, VM_STATE and DEVICE_STATE from the replication stream).
// restore_snapshot itself builds a KVM VM before it reads the first record and hands
// the decoded state to KVM; feeding fuzzed vCPU state to the (nested) kernel is not done
// here. Re-encoding a decoded state must decode to the same bytes again.
//
// Input: byte 0 = fix-up flags (bit 0: recompute record checksums), then the file: the
// 48-byte header (read, not interpreted) and records {type 1 VM, 2 vCPU, 3 device, other}.

#include "common/records.hpp"
#include "fuzz/fuzz_support.hpp"
#include "hv/vcpu_state.hpp"

using namespace understudy;
using namespace understudy::hv;

namespace {

constexpr size_t kHeaderBytes = 48;

void vcpu_round_trip(const VcpuState& s) {
    std::vector<uint8_t> once, twice;
    encode_vcpu_state(s, once);
    auto again = decode_vcpu_state(once);
    if (!again) fuzz::fail("snapshot_records: a decoded vCPU state does not decode after re-encoding");
    encode_vcpu_state(*again, twice);
    if (once != twice) fuzz::fail("snapshot_records: vCPU state changes across a re-encode");
}

void device_round_trip(const DeviceState& d) {
    std::vector<uint8_t> once;
    encode_device_state(d, once);
    auto again = decode_device_state(once);
    if (!again || again->name != d.name || again->version != d.version || again->data != d.data)
        fuzz::fail("snapshot_records: device state changes across a re-encode");
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    fuzz::quiet_logs();
    static fuzz::MemFile file("fuzz-snapshot");
    fuzz::Input in(data, size);
    uint8_t flags = in.u8();
    auto rest = in.rest();
    std::vector<uint8_t> bytes(rest.begin(), rest.end());
    if (flags & 1) fuzz::fix_record_checksums(bytes, kHeaderBytes);
    if (!file.set(bytes)) fuzz::fail("snapshot_records: cannot fill the memfd");

    auto reader = FileReader::open(file.path());
    if (!reader) fuzz::fail("snapshot_records: cannot open the memfd");
    uint8_t header[kHeaderBytes];
    if (!reader->read_exact(header, "the snapshot header")) return 0;
    VmState state;
    for (int n = 0; n < 4096; ++n) {
        auto rec = reader->record();
        if (!rec) break;
        if (rec->body.size() > kMaxRecordLength) fuzz::fail("snapshot_records: a record over the length limit was accepted");
        switch (rec->type) {
        case 1: (void)decode_vm_clock(rec->body, state); break;
        case 2:
            if (rec->body.size() >= 8) {
                if (auto v = decode_vcpu_state(std::span(rec->body).subspan(8))) vcpu_round_trip(*v);
            }
            break;
        case 3:
            if (auto d = decode_device_state(rec->body)) device_round_trip(*d);
            break;
        default: break;
        }
    }
    return 0;
}
