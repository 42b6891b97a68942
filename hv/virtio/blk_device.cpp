// virtio-blk device model (see blk_device.hpp): request parsing, the batch through the
// disk file, completions, and the saved state.
#include "hv/virtio/blk_device.hpp"

#include <algorithm>
#include <bit>
#include <cstring>
#include <optional>

#include <fmt/format.h>

#include "common/clock.hpp"
#include "common/codec.hpp"
#include "common/file_io.hpp"
#include "common/log.hpp"
#include "hv/vm.hpp"

namespace understudy::hv::virtio {

namespace {

// One request's chain: the header, at most this much data, the status byte. A driver
// that keeps to SIZE_MAX and SEG_MAX stays within it; a longer chain marks the device
// broken, as any chain over the queue's bound does.
constexpr uint64_t kMaxDataBytes = 64 * kMiB;
static_assert(uint64_t(kBlkQueueMax - 2) * kBlkSizeMax <= kMaxDataBytes);
constexpr uint64_t kMaxChainBytes = sizeof(VirtioBlkReqHdr) + kMaxDataBytes + 1;

// Saved state (docs/disks.md): the transport's fields, then the disk's identity.
constexpr uint32_t kTagDisk = kFirstDeviceTag;
struct DiskWire {
    uint64_t capacity_sectors; // 0
    uint32_t readonly;         // 8: 0 or 1
    uint32_t reserved;         // 12: zero
};
static_assert(std::is_standard_layout_v<DiskWire> && sizeof(DiskWire) == 16);

// `len` bytes of the chain's segments from byte `skip` on, as host iovecs into guest memory.
Result<void> gather(GuestMemory& mem, const std::vector<Segment>& segs, uint64_t skip, uint64_t len,
                    std::vector<iovec>& out) {
    for (const Segment& s : segs) {
        if (len == 0) break;
        if (skip >= s.len) {
            skip -= s.len;
            continue;
        }
        const uint64_t take = std::min<uint64_t>(s.len - skip, len);
        auto span = US_TRY(mem.span(s.addr + skip, take));
        out.push_back({span.data(), span.size()});
        len -= take;
        skip = 0;
    }
    if (len) return make_error(Errc::invalid_input, "the chain is shorter than its request");
    return {};
}

} // namespace

struct VirtioBlk::Request {
    Chain chain;
    VirtioBlkReqHdr hdr{};
    std::optional<Gpa> status_at; // the chain's last writable byte
    uint8_t status = kBlkStatusOk;
    int op = -1;          // index into ops_, or -1: answered without I/O
    uint32_t written = 0; // bytes written into the chain's writable part, the status included
};

Result<std::unique_ptr<VirtioBlk>> VirtioBlk::create(const BlkConfig& cfg) {
    US_TRYV(check_index(cfg.index));
    if (cfg.queue_max < 4 || cfg.queue_max > kBlkQueueMax || !std::has_single_bit(cfg.queue_max))
        return make_error(Errc::invalid_input,
                          fmt::format("queue size {} is not a power of two in [4, {}]", cfg.queue_max, kBlkQueueMax));
    if (cfg.serial.size() > kBlkIdBytes)
        return make_error(Errc::invalid_input,
                          fmt::format("the disk serial '{}' is longer than {} bytes", cfg.serial, kBlkIdBytes));
    auto file = US_TRY(DiskFile::open(cfg.path, cfg.readonly, cfg.queue_max));
    // Writing starts a new generation of the disk (docs/disks.md, "Identity"). Without one
    // the disk still works; a backup then treats it as unknown and checks every chunk.
    DiskIdentity id;
    std::optional<Error> failed;
    if (cfg.readonly) {
        auto read = read_identity(cfg.path);
        if (read && *read) id = **read;
        else if (!read) failed = read.error();
    } else if (auto begun = begin_generation(cfg.path)) {
        id = *begun;
    } else {
        failed = begun.error();
    }
    if (failed)
        log::warn("disk {}: its identity could not be {} ({}); a backup cannot refuse an unrelated or newer copy of it",
                  cfg.path, cfg.readonly ? "read" : "recorded", failed->describe());
    return std::unique_ptr<VirtioBlk>(new VirtioBlk(cfg, std::move(file), id));
}

VirtioBlk::VirtioBlk(const BlkConfig& cfg, std::unique_ptr<DiskFile> file, DiskIdentity identity)
    : MmioDevice("virtio-blk" + std::to_string(cfg.disk), cfg.index, {QueueSpec{cfg.queue_max, kMaxChainBytes}}),
      queue_max_(cfg.queue_max),
      serial_(cfg.serial.empty() ? "understudy-disk" + std::to_string(cfg.disk) : cfg.serial), file_(std::move(file)),
      identity_(identity),
      written_(disk_blocks(file_->size_bytes())) {}

VirtioBlk::~VirtioBlk() = default;

// ---- VirtioModel ----

uint64_t VirtioBlk::device_features() const {
    return kFeatureVersion1 | kBlkFeatureSizeMax | kBlkFeatureSegMax | kBlkFeatureBlkSize | kBlkFeatureFlush |
           (file_->readonly() ? kBlkFeatureRo : 0);
}

void VirtioBlk::read_config(uint64_t offset, std::span<uint8_t> out) const {
    // struct virtio_blk_config up to blk_size: capacity @0, size_max @8, seg_max @12,
    // geometry @16 (not offered), blk_size @20.
    uint8_t cfg[24] = {};
    const uint64_t capacity = capacity_sectors();
    const uint32_t size_max = kBlkSizeMax;
    const uint32_t seg_max = queue_max_ - 2u; // the header and the status take a descriptor each
    const uint32_t blk_size = kSectorBytes;
    std::memcpy(cfg + 0, &capacity, 8);
    std::memcpy(cfg + 8, &size_max, 4);
    std::memcpy(cfg + 12, &seg_max, 4);
    std::memcpy(cfg + 20, &blk_size, 4);
    for (size_t i = 0; i < out.size(); ++i) out[i] = offset + i < sizeof cfg ? cfg[offset + i] : 0;
}

void VirtioBlk::queue_notify(unsigned) { process_queue(); }

// ---- requests (lock held) ----

void VirtioBlk::process_queue() {
    if (!can_touch_guest()) return;
    Virtqueue& q = transport_->queue(0);
    bool completed = false;
    while (!transport_->broken()) {
        batch_.clear();
        ops_.clear();
        while (batch_.size() < queue_max_) {
            Request r;
            auto got = q.peek(r.chain);
            if (!got) {
                transport_->fail("request queue: " + got.error().message);
                break;
            }
            if (!*got) break;
            q.pop();
            parse(r);
            batch_.push_back(std::move(r));
        }
        if (batch_.empty()) break;
        if (!ops_.empty()) {
            const bool flush = std::any_of(ops_.begin(), ops_.end(), [](const DiskOp& o) { return o.kind == DiskOp::Kind::flush; });
            const uint64_t t0 = flush ? now_ns() : 0;
            // A failure of io_uring itself leaves its ops' errors in them: answered IOERR.
            if (auto rc = file_->run(ops_); !rc && log_worthy(stats_.io_errors))
                log::warn("{}: {}", name_, rc.error().describe());
            if (flush) {
                const uint64_t took = now_ns() - t0;
                ++stats_.flush_batches;
                stats_.flush_batch_ns += took;
                stats_.flush_batch_max_ns = std::max(stats_.flush_batch_max_ns, took);
            }
        }
        for (Request& r : batch_) complete(r);
        completed = true;
    }
    if (completed) used_buffers();
}

void VirtioBlk::bad_request(Request& r, const std::string& why) {
    r.status = kBlkStatusIoErr;
    if (log_worthy(stats_.bad_requests++))
        log::warn("{}: the request at descriptor {} refused: {} (answered with an I/O error; {} so far)", name_, r.chain.head, why,
                  stats_.bad_requests);
}

void VirtioBlk::parse(Request& r) {
    const Chain& c = r.chain;
    // The status is the last device-writable byte: in the last writable descriptor that
    // has any (a zero-length one after it holds none).
    for (auto it = c.writable.rbegin(); it != c.writable.rend(); ++it)
        if (it->len > 0) {
            r.status_at = it->addr + (it->len - 1);
            break;
        }
    if (c.readable_bytes < sizeof(VirtioBlkReqHdr)) return bad_request(r, "shorter than its 16-byte header");
    if (!r.status_at) return bad_request(r, "no device-writable byte for its status");
    std::vector<iovec> hdr_iov;
    if (auto g = gather(*mem_, c.readable, 0, sizeof r.hdr, hdr_iov); !g) return bad_request(r, g.error().message);
    uint8_t* dst = reinterpret_cast<uint8_t*>(&r.hdr);
    for (const iovec& v : hdr_iov) dst = std::copy_n(static_cast<const uint8_t*>(v.iov_base), v.iov_len, dst);

    const bool is_read = r.hdr.type == kBlkTypeIn;
    switch (r.hdr.type) {
    case kBlkTypeIn:
    case kBlkTypeOut: {
        const uint64_t data = is_read ? c.writable_bytes - 1 : c.readable_bytes - sizeof r.hdr;
        if (is_read && c.readable_bytes != sizeof r.hdr) return bad_request(r, "a read carries data to the device");
        if (!is_read && c.writable_bytes != 1) return bad_request(r, "a write has writable bytes besides its status");
        if (data == 0 || data % kSectorBytes)
            return bad_request(r, fmt::format("{} bytes of data is not a positive multiple of {}", data, kSectorBytes));
        const uint64_t sectors = data / kSectorBytes;
        if (r.hdr.sector > capacity_sectors() || sectors > capacity_sectors() - r.hdr.sector)
            return bad_request(r, fmt::format("sectors {}+{} are outside the disk ({} sectors)", r.hdr.sector, sectors,
                                              capacity_sectors()));
        if (!is_read && file_->readonly()) return bad_request(r, "a write to a read-only disk");
        DiskOp op;
        op.kind = is_read ? DiskOp::Kind::read : DiskOp::Kind::write;
        op.offset = r.hdr.sector * kSectorBytes;
        op.bytes = data;
        // A driver that did not take FLUSH may assume a write-through cache (virtio 1.2,
        // 5.2.5.1): its writes are durable before they complete.
        op.write_through = !is_read && !(transport_->driver_features() & kBlkFeatureFlush);
        auto g = is_read ? gather(*mem_, c.writable, 0, data, op.iov) : gather(*mem_, c.readable, sizeof r.hdr, data, op.iov);
        if (!g) return bad_request(r, g.error().message);
        r.op = int(ops_.size());
        ops_.push_back(std::move(op));
        return;
    }
    case kBlkTypeFlush:
        if (file_->readonly()) return; // nothing to make durable
        r.op = int(ops_.size());
        ops_.push_back(DiskOp{});
        return;
    case kBlkTypeGetId: {
        // The serial, NUL-padded to 20 bytes, or as much of it as the buffer holds.
        const uint64_t n = std::min<uint64_t>(kBlkIdBytes, c.writable_bytes - 1);
        uint8_t id[kBlkIdBytes] = {};
        std::memcpy(id, serial_.data(), serial_.size());
        std::vector<iovec> out;
        if (auto g = gather(*mem_, c.writable, 0, n, out); !g) return bad_request(r, g.error().message);
        const uint8_t* src = id;
        for (const iovec& v : out) {
            std::memcpy(v.iov_base, src, v.iov_len);
            src += v.iov_len;
        }
        r.written = uint32_t(n);
        ++stats_.get_ids;
        return;
    }
    default:
        r.status = kBlkStatusUnsupp;
        ++stats_.unsupported;
        return;
    }
}

void VirtioBlk::complete(Request& r) {
    if (r.op >= 0) {
        const DiskOp& op = ops_[size_t(r.op)];
        // Completed, so a harvest from here on finds it (a failed write may have changed some).
        if (op.kind == DiskOp::Kind::write && op.result != -ECANCELED)
            for (uint64_t b = op.offset / kDiskBlockBytes; b < disk_blocks(op.offset + op.bytes); ++b) written_.set(b);
        if (!op.ok()) {
            r.status = kBlkStatusIoErr;
            if (log_worthy(stats_.io_errors++))
                log::warn("{}: {} at byte {} of {}: {} (answered with an I/O error; {} so far)", name_,
                          op.kind == DiskOp::Kind::read ? "read" : op.kind == DiskOp::Kind::write ? "write" : "flush",
                          op.offset, file_->path(),
                          op.result < 0 ? std::strerror(int(-op.result))
                                        : fmt::format("{} of {} bytes transferred", op.result, op.bytes),
                          stats_.io_errors);
        } else if (op.kind == DiskOp::Kind::read) {
            ++stats_.reads;
            stats_.read_bytes += op.bytes;
            r.written = uint32_t(op.bytes);
        } else if (op.kind == DiskOp::Kind::write) {
            ++stats_.writes;
            stats_.write_bytes += op.bytes;
        } else {
            ++stats_.flushes;
        }
    }
    // io_uring wrote into guest memory behind the VMM's back: record every writable byte.
    for (const Segment& s : r.chain.writable) mem_->mark_dirty(s.addr, s.len);
    if (r.status_at) {
        if (auto w = mem_->write_obj(*r.status_at, r.status); !w) return transport_->fail("status: " + w.error().message);
        ++r.written;
    }
    if (auto u = transport_->queue(0).push_used(r.chain.head, r.written); !u) transport_->fail("used ring: " + u.error().message);
}

// ---- checkpoints ----

void VirtioBlk::suspend() {
    std::lock_guard lock(mu_);
    suspended_ = true;
}

void VirtioBlk::resume() {
    std::lock_guard lock(mu_);
    suspended_ = false;
    // Restored (a promotion, a snapshot): requests the guest made available but had not
    // notified yet are served now, and the interrupt pending at the capture, which is
    // not in the saved state, is raised again.
    if (!std::exchange(rescan_, false) || !can_touch_guest()) return;
    process_queue();
    used_buffers();
}

// ---- replication (hv/replicated_disk.hpp) ----

void VirtioBlk::harvest_written(Bitmap& out) {
    std::lock_guard lock(mu_); // a batch in progress completes first
    auto& ow = out.words();
    auto& ww = written_.words();
    for (size_t i = 0; i < ww.size() && i < ow.size(); ++i) ow[i] |= std::exchange(ww[i], 0);
}

Result<void> VirtioBlk::read_at(uint64_t offset, std::span<uint8_t> out) const {
    if (auto r = pread_full(file_->fd(), offset, out); !r) return std::move(r.error()).wrap(file_->path());
    return {};
}

Result<std::vector<std::pair<uint64_t, uint64_t>>> VirtioBlk::data_extents() const {
    auto r = understudy::data_extents(file_->fd(), file_->size_bytes());
    if (!r) return std::move(r.error()).wrap(file_->path());
    return r;
}

BlkStats VirtioBlk::stats() const {
    std::lock_guard lock(mu_);
    BlkStats s = stats_;
    if (transport_) {
        s.bad_register_accesses = transport_->bad_accesses();
        s.errors = transport_->failures();
        s.broken = transport_->broken();
    }
    return s;
}

DeviceState VirtioBlk::save() const {
    std::lock_guard lock(mu_);
    DeviceState ds{name_, kBlkStateVersion, {}};
    if (!transport_) return ds; // never attached: nothing a guest could have set up
    Encoder e(ds.data);
    encode_transport_state(e, transport_->save());
    e.field_pod(kTagDisk, DiskWire{capacity_sectors(), file_->readonly() ? 1u : 0u, 0});
    return ds;
}

Result<void> VirtioBlk::restore(const DeviceState& s) {
    std::lock_guard lock(mu_);
    US_TRYV(check_saved(s, kBlkStateVersion));
    const std::string what = name_ + " state";
    Decoder d(s.data, what);
    TransportStateReader transport(transport_->queue_count());
    std::optional<DiskWire> disk;
    while (!d.done()) {
        auto f = US_TRY(d.field());
        if (US_TRY(transport.take(f, d, what))) continue;
        if (f.tag == kTagDisk) disk = US_TRY(Decoder::as_pod<DiskWire>(f, what));
        // other tags: fields from a newer writer
    }
    if (!disk) return d.error("disk field missing");
    if (disk->capacity_sectors != capacity_sectors())
        return d.error(fmt::format("it was saved with a disk of {} sectors; {} has {}", disk->capacity_sectors,
                                   file_->path(), capacity_sectors()));
    TransportState ts = US_TRY(transport.finish(d));
    US_TRYV(transport_->restore(ts)); // validates before changing anything; a read-only
                                      // mismatch shows as different offered features
    rescan_ = true;
    return {};
}

} // namespace understudy::hv::virtio
