#include "hv/snapshot.hpp"

#include <cstring>

#include "common/codec.hpp"
#include "common/records.hpp"

namespace understudy::hv {

namespace {

constexpr char kMagic[8] = {'U', 'S', 'S', 'N', 'A', 'P', '\r', '\n'};
constexpr uint32_t kMaxPagesPerRecord = 1024;
constexpr uint32_t kFlagPcPlatform = 1;

struct SnapshotHeader {
    char magic[8];         // 0: "USSNAP\r\n"
    uint32_t version;      // 8
    uint32_t page_size;    // 12
    uint64_t memory_bytes; // 16
    uint32_t vcpus;        // 24
    uint32_t flags;        // 28: version 1: 0; version 2: kFlagPcPlatform
    uint64_t layout_digest; // 32: xxh3 of the memory regions (gpa, size) in order
    uint64_t reserved;     // 40
};
static_assert(std::is_standard_layout_v<SnapshotHeader> && sizeof(SnapshotHeader) == 48);

enum RecordType : uint32_t {
    kRecVmState = 1,
    kRecVcpuState = 2,
    kRecDeviceState = 3,
    kRecPages = 4,
    kRecEnd = 5,
};

bool page_is_zero(const uint8_t* p) {
    const uint64_t* w = reinterpret_cast<const uint64_t*>(p);
    uint64_t acc = 0;
    for (size_t i = 0; i < kPageSize / 8; ++i) acc |= w[i];
    return acc == 0;
}

} // namespace

uint64_t memory_layout_digest(const GuestMemory& mem) {
    std::vector<uint8_t> b;
    Encoder e(b);
    for (const auto& r : mem.regions()) {
        e.u64(r.gpa.value);
        e.u64(r.size);
    }
    return checksum64(b);
}

Result<SnapshotInfo> save_snapshot(Vm& vm, const std::string& path, const ProgressFn& progress) {
    // A snapshot file holds memory and state only: restored without the disk as it was at
    // this instant, the guest would find its file system changed under it.
    if (auto disks = vm.disks(); !disks.empty())
        return make_error(Errc::unsupported, "snapshots do not carry disks, and this VM has the disk " + disks.front()->path() +
                                                 " (docs/disks.md)");
    auto state = US_TRY(vm.save_state());
    return write_snapshot(vm.memory(), state, path, progress);
}

Result<SnapshotInfo> write_snapshot(const GuestMemory& mem, const VmState& state, const std::string& path,
                                    const ProgressFn& progress) {
    auto out = US_TRY(FileWriter::create(path));

    SnapshotHeader h{};
    std::memcpy(h.magic, kMagic, 8);
    h.version = state.platform ? kSnapshotVersionPc : kSnapshotVersion;
    h.flags = state.platform ? kFlagPcPlatform : 0;
    h.page_size = kPageSize;
    h.memory_bytes = mem.size();
    h.vcpus = static_cast<uint32_t>(state.vcpus.size());
    h.layout_digest = memory_layout_digest(mem);
    US_TRYV(out.write({reinterpret_cast<const uint8_t*>(&h), sizeof h}));

    uint64_t records = 0;
    std::vector<uint8_t> body;
    encode_vm_clock(state, body);
    US_TRYV(out.record(kRecVmState, body));
    ++records;
    for (uint32_t i = 0; i < state.vcpus.size(); ++i) {
        body.clear();
        Encoder e(body);
        e.u32(i);
        e.u32(0);
        encode_vcpu_state(state.vcpus[i], body);
        US_TRYV(out.record(kRecVcpuState, body));
        ++records;
    }
    for (const auto& d : state.devices) {
        body.clear();
        encode_device_state(d, body);
        US_TRYV(out.record(kRecDeviceState, body));
        ++records;
    }

    // Memory: runs of non-zero pages, at most kMaxPagesPerRecord per record.
    uint64_t pages_written = 0;
    const uint64_t n = mem.page_count();
    for (uint64_t p = 0; p < n;) {
        if (page_is_zero(mem.page_ptr(p))) {
            ++p;
            continue;
        }
        uint64_t first = p;
        while (p < n && p - first < kMaxPagesPerRecord && !page_is_zero(mem.page_ptr(p))) ++p;
        body.clear();
        Encoder e(body);
        e.u64(first);
        e.u64(p - first);
        e.raw(mem.page_ptr(first), (p - first) * kPageSize);
        US_TRYV(out.record(kRecPages, body));
        ++records;
        pages_written += p - first;
        if (progress) progress(p * kPageSize, mem.size());
    }

    body.clear();
    Encoder e(body);
    e.u64(records);
    e.u64(pages_written);
    US_TRYV(out.record(kRecEnd, body));
    US_TRYV(out.commit());
    if (progress) progress(mem.size(), mem.size());
    return SnapshotInfo{mem.size(), static_cast<unsigned>(state.vcpus.size()), pages_written, 0};
}

namespace {
// Memory is in place: restore the state, and start dirty tracking from here, since what
// was copied in is the baseline, not something the guest changed.
Result<void> finish_restore(Vm& vm, const VmState& state) {
    US_TRYV(vm.restore_state(state));
    Bitmap discard(vm.memory().page_count());
    return vm.harvest_dirty(discard);
}
} // namespace

Result<std::unique_ptr<Vm>> restore_vm(GuestMemory mem, const VmState& state, VmConfig base,
                                       const AttachDevicesFn& attach) {
    base.memory_bytes = mem.size();
    base.vcpus = static_cast<unsigned>(state.vcpus.size());
    base.pc_platform = state.platform.has_value();
    auto vm = US_TRY(Vm::create(std::move(base), std::move(mem)));
    if (attach) US_TRYV(attach(*vm));
    US_TRYV(finish_restore(*vm, state));
    return vm;
}

Result<std::unique_ptr<Vm>> restore_snapshot(const std::string& path, VmConfig base, SnapshotInfo* info,
                                             const ProgressFn& progress, const AttachDevicesFn& attach) {
    auto in = US_TRY(FileReader::open(path));
    SnapshotHeader h;
    US_TRYV(in.read_exact({reinterpret_cast<uint8_t*>(&h), sizeof h}, "the snapshot header"));
    auto bad = [&](const std::string& why) { return make_error(Errc::invalid_input, path + ": " + why); };
    if (std::memcmp(h.magic, kMagic, 8) != 0) return bad("not an Understudy snapshot (bad magic)");
    if (h.version != kSnapshotVersion && h.version != kSnapshotVersionPc)
        return bad("snapshot format version " + std::to_string(h.version) + " is not supported (this build reads versions " +
                   std::to_string(kSnapshotVersion) + " and " + std::to_string(kSnapshotVersionPc) + ")");
    if (h.page_size != kPageSize) return bad("page size " + std::to_string(h.page_size) + " is not supported");
    if (h.flags != (h.version == kSnapshotVersionPc ? kFlagPcPlatform : 0))
        return bad("header flags " + std::to_string(h.flags) + " do not match format version " + std::to_string(h.version));

    base.memory_bytes = h.memory_bytes;
    base.pc_platform = h.flags & kFlagPcPlatform;
    base.vcpus = h.vcpus;
    if (auto r = validate_vm_config(base); !r) return bad(r.error().message);
    auto vm = US_TRY(Vm::create(std::move(base)));
    auto& mem = vm->memory();
    if (memory_layout_digest(mem) != h.layout_digest) return bad("guest memory layout differs from this VMM's");
    if (attach) US_TRYV(attach(*vm));

    VmState state;
    state.vcpus.resize(h.vcpus);
    std::vector<bool> have_vcpu(h.vcpus, false);
    bool have_vm = false;
    uint64_t records = 0, pages = 0;
    for (;;) {
        auto rec = US_TRY(in.record());
        Decoder d(rec.body, path);
        switch (rec.type) {
        case kRecVmState:
            US_TRYV(decode_vm_clock(rec.body, state));
            have_vm = true;
            break;
        case kRecVcpuState: {
            uint32_t idx = US_TRY(d.u32());
            US_TRYV(d.u32());
            if (idx >= h.vcpus || have_vcpu[idx]) return bad("vCPU state record for vCPU " + std::to_string(idx) + " is unexpected");
            state.vcpus[idx] = US_TRY(decode_vcpu_state(rec.body.size() > 8 ? std::span(rec.body).subspan(8) : std::span<const uint8_t>()));
            have_vcpu[idx] = true;
            break;
        }
        case kRecDeviceState: US_TRYV(add_device_state(state.devices, US_TRY(decode_device_state(rec.body)))); break;
        case kRecPages: {
            uint64_t first = US_TRY(d.u64());
            uint64_t count = US_TRY(d.u64());
            if (count == 0 || count > kMaxPagesPerRecord || first > mem.page_count() || count > mem.page_count() - first)
                return bad("page record [" + std::to_string(first) + ", +" + std::to_string(count) + ") lies outside guest memory");
            auto data = US_TRY(d.bytes(count * kPageSize));
            std::memcpy(mem.page_ptr(first), data.data(), data.size());
            pages += count;
            if (progress) progress((first + count) * kPageSize, mem.size());
            break;
        }
        case kRecEnd: {
            uint64_t want_records = US_TRY(d.u64());
            uint64_t want_pages = US_TRY(d.u64());
            if (want_records != records || want_pages != pages)
                return bad("END record counts " + std::to_string(want_records) + " records and " + std::to_string(want_pages) +
                           " pages, the file held " + std::to_string(records) + " and " + std::to_string(pages));
            if (!have_vm) return bad("no VM state record");
            for (uint32_t i = 0; i < h.vcpus; ++i)
                if (!have_vcpu[i]) return bad("no state for vCPU " + std::to_string(i));
            US_TRYV(finish_restore(*vm, state));
            if (progress) progress(mem.size(), mem.size()); // the zero pages after the last record are done too
            if (info) *info = SnapshotInfo{h.memory_bytes, h.vcpus, pages, in.offset()};
            return vm;
        }
        default:
            if (!(rec.type & kRecordOptional)) return bad("unknown mandatory record type " + std::to_string(rec.type));
            break;
        }
        ++records;
    }
}

} // namespace understudy::hv
