// virtio-blk over virtio-mmio: device id 2, one request queue, features VERSION_1,
// SIZE_MAX, SEG_MAX, BLK_SIZE, FLUSH and RO (read-only disks); requests IN, OUT, FLUSH and GET_ID,
// every other type answered UNSUPP. The disk is a DiskFile (raw file or block device).
// Spec as the guest sees it, the checks and the saved state: docs/disks.md.
//
// Requests run on the vCPU thread that notifies the queue: the whole batch it finds goes
// to io_uring at once and completes before the notify returns. So a pause, which parks
// every vCPU outside its MMIO exit, never finds a request in flight: the state a
// checkpoint captures holds every request either completed (in the used ring, on the
// disk) or not yet started (in the avail ring). One mutex serialises the vCPUs.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "hv/replicated_disk.hpp"
#include "hv/virtio/disk_file.hpp"
#include "hv/virtio/mmio_device.hpp"

namespace understudy::hv::virtio {

inline constexpr uint32_t kBlkDeviceId = 2;
inline constexpr uint64_t kBlkFeatureSizeMax = 1ull << 1;
inline constexpr uint64_t kBlkFeatureSegMax = 1ull << 2;
inline constexpr uint64_t kBlkFeatureRo = 1ull << 5;
inline constexpr uint64_t kBlkFeatureBlkSize = 1ull << 6;
inline constexpr uint64_t kBlkFeatureFlush = 1ull << 9;
inline constexpr uint16_t kBlkQueueMax = 256;
// Largest data segment a driver may use (SIZE_MAX): with seg_max segments a request stays
// within the device's bound on a chain.
inline constexpr uint32_t kBlkSizeMax = 256 * 1024;
inline constexpr uint32_t kBlkStateVersion = 1;

// Request types and status values (virtio 1.2, 5.2.6).
inline constexpr uint32_t kBlkTypeIn = 0, kBlkTypeOut = 1, kBlkTypeFlush = 4, kBlkTypeGetId = 8;
inline constexpr uint8_t kBlkStatusOk = 0, kBlkStatusIoErr = 1, kBlkStatusUnsupp = 2;
inline constexpr size_t kBlkIdBytes = 20;

struct VirtioBlkReqHdr {
    uint32_t type;     // 0
    uint32_t reserved; // 4
    uint64_t sector;   // 8: in 512-byte units, whatever the block size
};
static_assert(sizeof(VirtioBlkReqHdr) == 16);

struct BlkConfig {
    unsigned index = 0;   // MMIO window kMmioBase + index * kMmioSize (shared with virtio-net)
    unsigned disk = 0;    // the disk's number: name "virtio-blk<disk>", default serial
    std::string path;
    bool readonly = false;
    uint16_t queue_max = kBlkQueueMax; // a power of two
    std::string serial;   // GET_ID's answer, at most 20 bytes; default "understudy-disk<disk>"
};

struct BlkStats {
    uint64_t reads = 0, read_bytes = 0;
    uint64_t writes = 0, write_bytes = 0;
    uint64_t flushes = 0, get_ids = 0;
    // Batches that held a FLUSH, and their time from submission to completion (the host's
    // fdatasync, after the batch's earlier requests): what a guest's flush waits for.
    uint64_t flush_batches = 0, flush_batch_ns = 0, flush_batch_max_ns = 0;
    uint64_t unsupported = 0;  // requests of another type, answered UNSUPP
    uint64_t bad_requests = 0; // malformed or outside the disk, answered IOERR (or with no status)
    uint64_t io_errors = 0;    // the host's I/O failed, answered IOERR
    uint64_t errors = 0;       // times the device was marked broken
    uint64_t bad_register_accesses = 0;
    bool broken = false;
};

class VirtioBlk final : public MmioDevice, public ReplicatedDisk {
public:
    static Result<std::unique_ptr<VirtioBlk>> create(const BlkConfig& cfg);
    ~VirtioBlk() override;

    // --- Device ---
    DeviceState save() const override;
    Result<void> restore(const DeviceState& s) override;
    void suspend() override;
    void resume() override;
    ReplicatedDisk* replicated_disk() override { return this; }

    // --- ReplicatedDisk ---
    const std::string& path() const override { return file_->path(); }
    uint64_t size_bytes() const override { return file_->size_bytes(); }
    bool readonly() const override { return file_->readonly(); }
    const DiskIdentity& identity() const override { return identity_; }
    void harvest_written(Bitmap& out) override;
    Result<void> read_at(uint64_t offset, std::span<uint8_t> out) const override;
    Result<std::vector<std::pair<uint64_t, uint64_t>>> data_extents() const override;

    uint64_t capacity_sectors() const { return file_->size_bytes() / kSectorBytes; }
    const DiskFile& file() const { return *file_; }
    BlkStats stats() const;

private:
    VirtioBlk(const BlkConfig& cfg, std::unique_ptr<DiskFile> file, DiskIdentity identity);

    // VirtioModel (called by the transport, lock held)
    uint32_t device_id() const override { return kBlkDeviceId; }
    uint64_t device_features() const override;
    void read_config(uint64_t offset, std::span<uint8_t> out) const override;
    void queue_notify(unsigned index) override;
    void driver_ok() override {}
    void device_reset() override {}

    struct Request; // one parsed chain (blk_device.cpp)
    bool can_touch_guest() const { return transport_ && transport_->live() && !suspended_; }
    void process_queue();
    void parse(Request& r);
    void complete(Request& r);
    void bad_request(Request& r, const std::string& why);

    const uint16_t queue_max_;
    const std::string serial_;
    const std::unique_ptr<DiskFile> file_;
    const DiskIdentity identity_;

    bool rescan_ = false; // restored: look at the queue and interrupt the guest on resume
    bool suspended_ = false;
    std::vector<Request> batch_; // scratch, reused
    std::vector<DiskOp> ops_;    // scratch, reused
    BlkStats stats_;
    Bitmap written_; // blocks written since the last harvest_written()
};

} // namespace understudy::hv::virtio
