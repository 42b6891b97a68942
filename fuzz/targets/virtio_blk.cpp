// The virtio-blk device (hv/virtio/blk_device.cpp: process_queue, parse, complete) as a
// hostile guest drives it: the target owns the guest memory, brings the device up
// through its MMIO handler like a driver (as tests/test_virtio_blk.cpp does, without KVM
// and without Catch2), lays out descriptors, avail ring entries, request headers and
// data as the input says, notifies the queue, and the device serves the requests
// against a small disk file (64 KiB, or a read-only one of the same size chosen by one
// input bit), both made once per process in a temporary directory (/dev/shm when it
// can, so that flushes and write-through writes cost nothing) and removed as soon as
// they are open.
//
// Guest memory is 16 MiB; the target's driver keeps its rings and buffers in the first
// 64 KiB (the window): descriptor table at 0x0, avail ring at 0x800, used ring at 0x1000,
// headers, data and status bytes from 0x2000 on. Raw descriptors and segments may point
// anywhere (other RAM, outside RAM), and register writes may move the queue.
//
// Input: u8 config (bit 0: the read-only disk; bit 1: the driver takes FLUSH, else its
// writes are write-through; bit 2: queue size 8, else 16), then steps {u8 op; ...}:
//   op % 8 = 0  a request chain in the next free descriptors, its head put in the avail
//               ring (not yet published): u8 type selector (% 6: IN, OUT, FLUSH, GET_ID,
//               then a u32 type, then type = selector >> 3), u16 sector (bit 15 set: a
//               u64 sector follows), u8 shape (bits 0-2: data segments; bit 3: a status
//               byte; bit 4: the header split 10 + 6; bit 5: an 8-byte header; bit 6: the
//               data in the wrong direction; bit 7: a zero-length writable descriptor
//               last), then per segment u16 (bits 0-13: length; bits 14-15: after the
//               previous buffer, at the previous buffer, at a u16 window offset that
//               follows, at a u64 address that follows);
//            1  publish (avail idx = chains offered) and notify;
//            2  a raw descriptor: u8 index, u64 address, u32 length, u16 flags, u16 next;
//            3  a raw avail entry: u16 head;
//            4  publish a raw avail idx (u16) and notify;
//            5  the guest writes 8 bytes at a u16 window offset;
//            6  u8: even, reset and bring up again; odd, a checkpoint and its restore
//               (suspend, save, restore into the same device, resume: resume serves
//               what was made available and not notified);
//            7  a register write: u8 (offset / 4, below the configuration space), u32
//               value, then a notify.
//
// After every notify (and the resume after a restore; the device's own saved state must
// restore) the target checks, against the device's queue state (read from its saved
// state) and its own walk of the rings:
//  - the device consumed at most the chains the avail idx made available, none when that
//    idx is more than the queue size ahead, and returned every chain it consumed; each
//    used entry names a head below the queue size and a length no larger than the
//    writable bytes of that head's chain;
//  - where the buffers of the pending chains do not overlap (the answers then do not
//    depend on the order of the device's writes), each chain's answer is the one the
//    rules of virtio 1.2, 5.2.6 and docs/disks.md give, computed here without the device's
//    code: the number of chains served, each used entry (head, length), each status byte
//    (OK, IOERR, UNSUPP), the bytes a read returned (the file's) and GET_ID's serial;
//  - it wrote no guest memory but the writable descriptors' buffers and the used ring:
//    the rest of RAM is mprotect'ed read-only meanwhile (a store faults: the handler
//    names it and aborts; a disk read into it fails, which the next check sees) and the
//    window is compared byte by byte;
//  - no host I/O failed (the disk is healthy: only a buffer the chain did not give fails).
// A chain whose buffers cover its own rings makes what the device may do unpredictable:
// only the counts are checked then. After every input: both disk files keep their size;
// the read-only disk its bytes; every 4 KiB block of the writable disk that changed is
// in harvest_written() (a block missing there would never reach the backup); and after
// a reset the device still serves a read with the disk's bytes. Guard pages around the
// guest mapping (where the address space is free) catch a store just outside RAM. The
// writable disk, the window and any other RAM written are restored after each input, so
// inputs do not depend on each other.
#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <optional>

#include "common/bitmap.hpp"
#include "common/codec.hpp"
#include "fuzz/fuzz_support.hpp"
#include "hv/guest_memory.hpp"
#include "hv/virtio/blk_device.hpp"

using namespace understudy;
using namespace understudy::hv;
using namespace understudy::hv::virtio;

namespace {

constexpr uint64_t kWindow = 64 * 1024;
constexpr uint64_t kDescAt = 0x0, kAvailAt = 0x800, kUsedAt = 0x1000, kDataAt = 0x2000;
constexpr uint64_t kDiskBytes = 64 * 1024;
constexpr uint16_t kQueueMax = 16;
constexpr size_t kMaxSteps = 64;

// ---- the process's fixtures ----

uint8_t disk_byte(uint64_t i) { return uint8_t(i * 13 + i / 512); }

struct Disk {
    std::string path;
    int fd = -1; // ours, for checks and restores
    std::vector<uint8_t> original;
    std::string serial;
    std::unique_ptr<VirtioBlk> dev;
};

struct World {
    GuestMemory mem;
    Disk disks[2]; // writable, read-only
};

void write_file(const std::string& path, std::span<const uint8_t> b) {
    int fd = ::open(path.c_str(), O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0600);
    if (fd < 0 || ::pwrite(fd, b.data(), b.size(), 0) != ssize_t(b.size())) fuzz::fail("virtio_blk: writing " + path);
    ::close(fd);
}

// Guest RAM's host mapping, for the fault handler.
uint8_t* g_ram = nullptr;
uint64_t g_ram_bytes = 0;
struct sigaction g_old_segv;

void on_segv(int sig, siginfo_t* si, void* ctx) {
    auto* a = static_cast<uint8_t*>(si->si_addr);
    if (g_ram && a >= g_ram - 65536 && a < g_ram + g_ram_bytes + 65536) {
        static const char msg[] = "fuzz target: virtio_blk: the device stored to guest memory that no writable "
                                  "descriptor or used ring covers, or just outside guest RAM\n";
        (void)!::write(2, msg, sizeof msg - 1);
        std::abort();
    }
    // Not ours: the previous handler (a sanitizer's, libFuzzer's) takes it.
    if (g_old_segv.sa_flags & SA_SIGINFO) return g_old_segv.sa_sigaction(sig, si, ctx);
    ::sigaction(SIGSEGV, &g_old_segv, nullptr); // the fault repeats under it
}

// PROT_NONE pages right before and after the mapping, where nothing else is mapped.
void guard(uint8_t* at) {
    void* p = ::mmap(at, 65536, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
    if (p != MAP_FAILED && p != at) ::munmap(p, 65536);
}

// Guest RAM beyond the window stays read-only except while a notify may write part of
// it (mprotect of only what changes: the whole 16 MiB twice per notify cost more than
// everything else together).
void protect(GuestMemory& mem, uint64_t at, uint64_t len, int prot) {
    if (len && ::mprotect(mem.host_base() + at, len, prot) != 0) fuzz::fail("virtio_blk: mprotect");
}

World* make_world() {
    auto mem = GuestMemory::create(kMinMemory);
    if (!mem) fuzz::fail("virtio_blk: " + mem.error().describe());
    if (mem->regions().size() != 1 || mem->regions()[0].gpa.value != 0)
        fuzz::fail("virtio_blk: guest RAM is not one region at 0");
    std::error_code ec;
    std::filesystem::path base = "/dev/shm";
    if (!std::filesystem::is_directory(base, ec) || ::access(base.c_str(), W_OK) != 0)
        base = std::filesystem::temp_directory_path();
    std::string dir = (base / "us-fuzz-blk-XXXXXX").string();
    if (!::mkdtemp(dir.data())) fuzz::fail("virtio_blk: mkdtemp");
    auto* w = new World{std::move(*mem), {}};
    for (int i = 0; i < 2; ++i) {
        Disk& d = w->disks[i];
        d.path = dir + (i ? "/disk-ro.img" : "/disk.img");
        d.original.resize(kDiskBytes);
        for (uint64_t k = 0; k < kDiskBytes; ++k) d.original[k] = disk_byte(k) ^ uint8_t(i * 0x5a);
        write_file(d.path, d.original);
        d.fd = ::open(d.path.c_str(), O_RDWR | O_CLOEXEC);
        if (d.fd < 0) fuzz::fail("virtio_blk: opening " + d.path);
        d.serial = i ? "fuzz-ro" : "fuzz-disk-serial-20c"; // 20 bytes: GET_ID's answer has no NUL
        auto dev = VirtioBlk::create(
            {.disk = unsigned(i), .path = d.path, .readonly = i == 1, .queue_max = kQueueMax, .serial = d.serial});
        if (!dev) { // no io_uring here, say
            std::fprintf(stderr, "virtio_blk: no disk device (%s); its inputs are skipped\n", dev.error().describe().c_str());
            continue;
        }
        d.dev = std::move(*dev);
        if (auto b = d.dev->bind(w->mem, {}, [] {}); !b) fuzz::fail("virtio_blk: bind: " + b.error().describe());
    }
    // The devices and the target hold the files open (the devices use their paths only in
    // log lines): gone now, so that not even an input that aborts leaves them behind.
    std::filesystem::remove_all(dir, ec);
    g_ram = w->mem.host_base();
    g_ram_bytes = w->mem.size();
    protect(w->mem, kWindow, g_ram_bytes - kWindow, PROT_READ);
    guard(g_ram - 65536);
    guard(g_ram + g_ram_bytes);
    struct sigaction sa{};
    sa.sa_sigaction = on_segv;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigemptyset(&sa.sa_mask);
    ::sigaction(SIGSEGV, &sa, &g_old_segv);
    return w;
}

World& world() {
    static World* w = make_world();
    return *w;
}

// ---- the device's side, as its saved state shows it ----

struct DevView {
    uint32_t status = 0;
    uint64_t driver_features = 0;
    QueueState q;
    bool live() const { return (status & kStatusDriverOk) && !(status & kStatusNeedsReset) && q.ready; }
};

DevView view(const VirtioBlk& dev) {
    DeviceState s = dev.save();
    Decoder d(s.data, "virtio_blk state");
    TransportStateReader tr(1);
    while (!d.done()) {
        auto f = d.field();
        if (!f) fuzz::fail("virtio_blk: the device's own state does not decode: " + f.error().message);
        if (auto t = tr.take(*f, d, "virtio_blk state"); !t) fuzz::fail("virtio_blk: " + t.error().message);
    }
    auto ts = tr.finish(d);
    if (!ts) fuzz::fail("virtio_blk: " + ts.error().message);
    return {ts->status, ts->driver_features, ts->queues[0]};
}

// ---- the driver ----

struct Range {
    uint64_t at, len;
    bool overlaps(uint64_t a, uint64_t n) const { return n && len && a < at + len && at < a + n; }
    bool has(uint64_t a) const { return a >= at && a - at < len; }
};

// What a correct device answers to one chain, from the rules of virtio 1.2, 5.2.6 and
// docs/disks.md rather than from the device's code: the status byte (the chain's last
// writable byte), the used length, and for a read the data it must return.
struct Expect {
    uint16_t head = 0;
    std::optional<uint64_t> status_at;
    uint8_t status = kBlkStatusIoErr;
    uint32_t len = 0;
    uint32_t type = 0;
    uint64_t offset = 0;                 // IN and OUT answered OK: the disk offset
    std::vector<Range> data;             // IN answered OK: its data, in order; GET_ID: the ID's bytes
};

// The answers to the `pending` chains after `next_avail`, in the order the device must
// return them; the list ends at the first chain the device must refuse (bad index,
// loop, indirect, outside RAM, readable after writable), where the device stops. None
// where the answers depend on the order of the device's writes (buffers that overlap
// each other, chains that share descriptors) or on its bound on a chain's bytes.
std::optional<std::vector<Expect>> expect(const GuestMemory& mem, const QueueState& q, uint16_t pending,
                                          uint64_t capacity, bool readonly) {
    const uint16_t num = uint16_t(q.num);
    std::vector<Expect> out;
    std::vector<int> owner(num, -1); // the head of the chain that holds each descriptor
    struct Seg {
        Range r;
        bool writable;
    };
    std::vector<Seg> segs; // every descriptor once
    for (uint16_t k = 0; k < pending; ++k) {
        const uint16_t head = *mem.read_obj<uint16_t>(Gpa{q.driver + 4 + 2ull * (uint16_t(q.next_avail + k) % num)});
        if (head >= num) break;
        std::vector<Range> readable, writable;
        std::vector<uint16_t> descs;
        bool valid = true;
        uint64_t total = 0;
        for (uint16_t i = head, n = 0;; ++n) {
            if (n == num) {
                valid = false;
                break;
            }
            const auto d = *mem.read_obj<VirtqDesc>(Gpa{q.desc + 16ull * i});
            if ((d.flags & kDescFIndirect) || !mem.contains(Gpa{d.addr}, d.len) ||
                (!(d.flags & kDescFWrite) && !writable.empty())) {
                valid = false;
                break;
            }
            total += d.len;
            (d.flags & kDescFWrite ? writable : readable).push_back({d.addr, d.len});
            descs.push_back(i);
            if (!(d.flags & kDescFNext)) break;
            if (d.next >= num) {
                valid = false;
                break;
            }
            i = d.next;
        }
        if (!valid) break;
        if (total > 64 * kMiB) return std::nullopt;
        for (size_t j = 0; j < descs.size(); ++j) {
            const uint16_t i = descs[j];
            if (owner[i] == head) continue; // the same chain again
            if (owner[i] >= 0) return std::nullopt;
            owner[i] = head;
            segs.push_back({j < readable.size() ? readable[j] : writable[j - readable.size()], j >= readable.size()});
        }
        Expect e;
        e.head = head;
        uint64_t r = 0, w = 0;
        for (const Range& x : readable) r += x.len;
        for (const Range& x : writable) w += x.len;
        for (auto it = writable.rbegin(); it != writable.rend(); ++it)
            if (it->len) {
                e.status_at = it->at + it->len - 1;
                break;
            }
        e.len = e.status_at ? 1 : 0;
        if (r >= sizeof(VirtioBlkReqHdr) && e.status_at) {
            VirtioBlkReqHdr h;
            auto* dst = reinterpret_cast<uint8_t*>(&h);
            uint64_t got = 0;
            for (const Range& x : readable)
                for (uint64_t b = 0; b < x.len && got < sizeof h; ++b) dst[got++] = *mem.read_obj<uint8_t>(Gpa{x.at + b});
            e.type = h.type;
            const uint64_t data = h.type == kBlkTypeIn ? w - 1 : r - sizeof h;
            const bool in_disk = data > 0 && data % kSectorBytes == 0 && h.sector <= capacity &&
                                 data / kSectorBytes <= capacity - h.sector;
            auto first = [&](uint64_t n) { // the first n writable bytes
                for (const Range& x : writable) {
                    if (!n) break;
                    e.data.push_back({x.at, std::min<uint64_t>(x.len, n)});
                    n -= e.data.back().len;
                }
            };
            switch (h.type) {
            case kBlkTypeIn:
                if (r == sizeof h && in_disk) {
                    e.status = kBlkStatusOk;
                    e.len = uint32_t(data + 1);
                    e.offset = h.sector * kSectorBytes;
                    first(data);
                }
                break;
            case kBlkTypeOut:
                if (w == 1 && in_disk && !readonly) {
                    e.status = kBlkStatusOk;
                    e.offset = h.sector * kSectorBytes;
                }
                break;
            case kBlkTypeFlush: e.status = kBlkStatusOk; break;
            case kBlkTypeGetId:
                e.status = kBlkStatusOk;
                e.len = uint32_t(std::min<uint64_t>(kBlkIdBytes, w - 1) + 1);
                first(e.len - 1);
                break;
            default: e.status = kBlkStatusUnsupp; break;
            }
        }
        out.push_back(std::move(e));
    }
    // Writable buffers that overlap anything else: which write lands last is up to the device.
    for (size_t a = 0; a < segs.size(); ++a)
        for (size_t b = 0; b < segs.size(); ++b)
            if (a != b && (segs[a].writable || segs[b].writable) && segs[a].r.overlaps(segs[b].r.at, segs[b].r.len))
                return std::nullopt;
    return out;
}

struct Driver {
    World& w;
    VirtioBlk& dev;
    int disk_fd;
    std::string serial;
    bool flush, readonly;
    uint16_t qsize;
    uint16_t next_desc = 0, offered = 0;
    uint64_t cursor = kDataAt;
    uint64_t prev_at = kDataAt;
    bool zero_all_ram = false;
    std::vector<std::pair<uint64_t, uint64_t>> written_outside; // RAM beyond the window a notify could write
    uint64_t io_errors;

    Driver(World& world, const Disk& disk, bool fl, uint16_t n)
        : w(world), dev(*disk.dev), disk_fd(disk.fd), serial(disk.serial), flush(fl), readonly(disk.dev->readonly()),
          qsize(n), io_errors(dev.stats().io_errors) {}

    uint8_t* host(uint64_t gpa) { return w.mem.host_base() + gpa; } // window offsets only
    void wr(uint64_t off, uint32_t v) { dev.mmio_access(off, {reinterpret_cast<uint8_t*>(&v), 4}, true); }
    uint32_t rd(uint64_t off) {
        uint32_t v = 0;
        dev.mmio_access(off, {reinterpret_cast<uint8_t*>(&v), 4}, false);
        return v;
    }

    // Reset, features, the queue, DRIVER_OK (virtio 1.2, 3.1.1), on zeroed rings.
    void bring_up() {
        std::memset(host(0), 0, kDataAt);
        next_desc = offered = 0;
        wr(reg::kStatus, 0);
        wr(reg::kStatus, kStatusAcknowledge);
        wr(reg::kStatus, kStatusAcknowledge | kStatusDriver);
        const uint64_t f = kFeatureVersion1 | kBlkFeatureSizeMax | kBlkFeatureSegMax | kBlkFeatureBlkSize |
                           (flush ? kBlkFeatureFlush : 0) | (readonly ? kBlkFeatureRo : 0);
        wr(reg::kDriverFeaturesSel, 0);
        wr(reg::kDriverFeatures, uint32_t(f));
        wr(reg::kDriverFeaturesSel, 1);
        wr(reg::kDriverFeatures, uint32_t(f >> 32));
        wr(reg::kStatus, kStatusAcknowledge | kStatusDriver | kStatusFeaturesOk);
        wr(reg::kQueueSel, 0);
        wr(reg::kQueueNum, qsize);
        wr(reg::kQueueDescLow, kDescAt);
        wr(reg::kQueueDescHigh, 0);
        wr(reg::kQueueDriverLow, kAvailAt);
        wr(reg::kQueueDriverHigh, 0);
        wr(reg::kQueueDeviceLow, kUsedAt);
        wr(reg::kQueueDeviceHigh, 0);
        wr(reg::kQueueReady, 1);
        wr(reg::kStatus, kStatusAcknowledge | kStatusDriver | kStatusFeaturesOk | kStatusDriverOk);
        if (!view(dev).live()) fuzz::fail("virtio_blk: the device refused a correct bring-up");
    }

    void set_desc(uint16_t i, uint64_t addr, uint32_t len, uint16_t flags, uint16_t next) {
        VirtqDesc d{addr, len, flags, next};
        std::memcpy(host(kDescAt + 16ull * (i % qsize)), &d, 16);
    }
    void offer(uint16_t head) {
        std::memcpy(host(kAvailAt + 4 + 2ull * (offered % qsize)), &head, 2);
        ++offered;
    }
    void publish(uint16_t idx) { std::memcpy(host(kAvailAt + 2), &idx, 2); }

    // `len` bytes in the data area after the previous buffer (wrapping to its start).
    uint64_t alloc(uint64_t len) {
        if (cursor + len > kWindow) cursor = kDataAt;
        uint64_t at = cursor;
        cursor = (cursor + len + 7) & ~7ull;
        return at;
    }

    void request(fuzz::Input& in) {
        const uint8_t sel = in.u8();
        uint32_t type;
        switch (sel % 6) {
        case 0: type = kBlkTypeIn; break;
        case 1: type = kBlkTypeOut; break;
        case 2: type = kBlkTypeFlush; break;
        case 3: type = kBlkTypeGetId; break;
        case 4: type = in.u32(); break;
        default: type = sel >> 3; break;
        }
        const uint16_t s = in.u16();
        const uint64_t sector = s & 0x8000 ? in.u64() : s;
        const uint8_t shape = in.u8();
        struct Part {
            uint64_t addr;
            uint32_t len;
            uint16_t flags;
        };
        std::vector<Part> parts;
        const uint64_t hdr = alloc(16);
        VirtioBlkReqHdr h{type, 0, sector};
        std::memcpy(host(hdr), &h, 16);
        prev_at = hdr;
        if (shape & 0x10) {
            parts.push_back({hdr, 10, 0});
            parts.push_back({hdr + 10, 6, 0});
        } else {
            parts.push_back({hdr, shape & 0x20 ? 8u : 16u, 0});
        }
        const bool device_writes = type == kBlkTypeIn || type == kBlkTypeGetId;
        const uint16_t data_flags = uint16_t((device_writes != bool(shape & 0x40)) ? kDescFWrite : 0);
        for (int k = 0; k < (shape & 7); ++k) {
            const uint16_t v = in.u16();
            const uint32_t len = v & 0x3fff;
            uint64_t at;
            switch (v >> 14) {
            case 0: at = alloc(len); break;
            case 1: at = prev_at; break;
            case 2: at = in.u16(); break;
            default: at = in.u64(); break;
            }
            if (at >= kDataAt && at <= kWindow && len <= kWindow - at && !data_flags) // what a write carries
                for (uint32_t i = 0; i < len; ++i) host(at)[i] = uint8_t(sector * 7 + k * 31 + i);
            prev_at = at;
            parts.push_back({at, len, data_flags});
        }
        if (shape & 8) {
            const uint64_t st = alloc(1);
            *host(st) = 0xee;
            parts.push_back({st, 1, kDescFWrite});
        }
        if (shape & 0x80) parts.push_back({alloc(0), 0, kDescFWrite});
        const uint16_t head = next_desc % qsize;
        for (size_t i = 0; i < parts.size(); ++i) {
            const uint16_t d = next_desc++ % qsize;
            const bool more = i + 1 < parts.size();
            set_desc(d, parts[i].addr, parts[i].len, uint16_t(parts[i].flags | (more ? kDescFNext : 0)),
                     more ? uint16_t(next_desc % qsize) : 0);
        }
        offer(head);
    }

    // ---- the notify and its checks ----

    // The writable bytes of the chain from `head`, walked independently of the device
    // (at most `num` descriptors; a bad chain just ends the walk).
    static uint64_t chain_writable(const GuestMemory& mem, const QueueState& q, uint16_t head) {
        uint64_t sum = 0;
        uint16_t i = head;
        for (uint32_t n = 0; n < q.num && i < q.num; ++n) {
            auto d = mem.read_obj<VirtqDesc>(Gpa{q.desc + 16ull * i});
            if (!d) break;
            if (d->flags & kDescFWrite) sum += d->len;
            if (!(d->flags & kDescFNext)) break;
            i = d->next;
        }
        return sum;
    }


    // Sets `prot` on the runs of window pages not marked in `skip`.
    void window_pages(const bool (&skip)[kWindow / kPageSize], int prot) {
        for (uint64_t p = 0; p < kWindow / kPageSize;) {
            if (skip[p]) {
                ++p;
                continue;
            }
            uint64_t q = p;
            while (q < kWindow / kPageSize && !skip[q]) ++q;
            protect(w.mem, p * kPageSize, (q - p) * kPageSize, prot);
            p = q;
        }
    }

    // Runs `action` (a notify, a restore's resume), the only times the device touches
    // guest memory, and checks what it did there.
    template <class Action>
    void checked(Action&& action) {
        GuestMemory& mem = w.mem;
        const DevView v0 = view(dev);
        const QueueState& q = v0.q;
        std::vector<Range> allowed; // what the device may write: writable buffers, the used ring
        bool rings_writable = false, used_writable = false;
        uint16_t avail_idx = 0;
        if (v0.live()) {
            const uint16_t num = uint16_t(q.num);
            allowed.push_back({q.device + 2, 2 + 8ull * num}); // used idx and entries
            for (uint16_t i = 0; i < num; ++i) {
                auto d = mem.read_obj<VirtqDesc>(Gpa{q.desc + 16ull * i});
                if (!d) fuzz::fail("virtio_blk: a validated descriptor table is not in RAM");
                if (!(d->flags & kDescFWrite) || d->addr >= mem.size()) continue;
                const Range r{d->addr, std::min<uint64_t>(d->len, mem.size() - d->addr)};
                if (r.overlaps(q.device, used_ring_bytes(num))) used_writable = true;
                allowed.push_back(r);
            }
            for (const Range& r : allowed)
                if (r.overlaps(q.desc, desc_table_bytes(num)) || r.overlaps(q.driver, avail_ring_bytes(num)))
                    rings_writable = true;
            avail_idx = *mem.read_obj<uint16_t>(Gpa{q.driver + 2});
        }
        std::optional<std::vector<Expect>> expected;
        if (v0.live() && !rings_writable && !used_writable && uint16_t(avail_idx - q.next_avail) <= q.num)
            expected = expect(mem, q, uint16_t(avail_idx - q.next_avail), dev.capacity_sectors(), readonly);
        // With a buffer over its own rings the device may find chains its I/O wrote, so
        // what it may write is not known beforehand: only the counts are checked then.
        static std::vector<uint8_t> before(kWindow);
        std::memcpy(before.data(), host(0), kWindow);
        bool window_writable[kWindow / kPageSize] = {};
        std::vector<std::pair<uint64_t, uint64_t>> outside; // pages beyond the window opened for this notify
        if (!rings_writable) {
            for (const Range& r : allowed) {
                if (!r.len) continue;
                const uint64_t first = r.at & ~(kPageSize - 1), end = (r.at + r.len + kPageSize - 1) & ~(kPageSize - 1);
                for (uint64_t p = first; p < std::min(end, kWindow); p += kPageSize) window_writable[p / kPageSize] = true;
                if (end > kWindow) outside.push_back({std::max(first, kWindow), end - std::max(first, kWindow)});
            }
            window_pages(window_writable, PROT_READ);
            for (auto [at, len] : outside) protect(mem, at, len, PROT_READ | PROT_WRITE);
        } else {
            zero_all_ram = true;
            protect(mem, kWindow, mem.size() - kWindow, PROT_READ | PROT_WRITE);
        }
        action();
        if (!rings_writable) {
            window_pages(window_writable, PROT_READ | PROT_WRITE);
            for (auto [at, len] : outside) protect(mem, at, len, PROT_READ);
            written_outside.insert(written_outside.end(), outside.begin(), outside.end());
        } else {
            protect(mem, kWindow, mem.size() - kWindow, PROT_READ);
        }

        if (const uint64_t e = dev.stats().io_errors; e != io_errors)
            fuzz::fail("virtio_blk: a disk I/O failed (a buffer outside the chain's writable descriptors?)");
        const DevView v1 = view(dev);
        if (!v0.live()) {
            if (v1.q.next_used != v0.q.next_used || v1.q.next_avail != v0.q.next_avail)
                fuzz::fail("virtio_blk: a device that is not live moved its queue");
        } else {
            if (!v1.q.ready) fuzz::fail("virtio_blk: the queue stopped being ready");
            const uint16_t num = uint16_t(q.num);
            const uint16_t consumed = uint16_t(v1.q.next_avail - q.next_avail);
            const uint16_t returned = uint16_t(v1.q.next_used - q.next_used);
            if (consumed != returned)
                fuzz::fail("virtio_blk: the device consumed " + std::to_string(consumed) + " chains and returned " +
                           std::to_string(returned));
            if (!rings_writable) {
                const uint16_t pending = uint16_t(avail_idx - q.next_avail);
                if (consumed > pending)
                    fuzz::fail("virtio_blk: the device consumed " + std::to_string(consumed) + " chains; " +
                               std::to_string(pending) + " were made available");
                if (pending > num && (consumed || !(v1.status & kStatusNeedsReset)))
                    fuzz::fail("virtio_blk: an avail idx more than the queue size ahead was not refused");
                if (expected) check_answers(q, *expected, consumed, pending, v1);
                if (!used_writable && returned) { // (the guest may have scribbled on the used ring before)
                    const uint16_t idx = *mem.read_obj<uint16_t>(Gpa{q.device + 2});
                    if (idx != v1.q.next_used) fuzz::fail("virtio_blk: the used idx is not the device's");
                    for (uint16_t k = 0; k < std::min(returned, num); ++k) {
                        const uint16_t at = uint16_t(v1.q.next_used - 1 - k) % num;
                        const auto e = *mem.read_obj<VirtqUsedElem>(Gpa{q.device + 4 + 8ull * at});
                        if (e.id >= num) fuzz::fail("virtio_blk: a used entry names a head beyond the queue");
                        if (e.len > chain_writable(mem, q, uint16_t(e.id)))
                            fuzz::fail("virtio_blk: a used length " + std::to_string(e.len) +
                                       " exceeds the chain's writable bytes");
                    }
                }
            }
        }
        if (!rings_writable && std::memcmp(before.data(), host(0), kWindow) != 0)
            for (uint64_t i = 0; i < kWindow; ++i) {
                if (before[i] == *host(i)) continue;
                bool ok = false;
                for (const Range& r : allowed) ok = ok || r.has(i);
                if (!ok) fuzz::fail("virtio_blk: the device wrote guest byte " + std::to_string(i) +
                                    ", which no writable descriptor or used ring covers");
            }
    }

    // The device's answers against expect()'s.
    void check_answers(const QueueState& q, const std::vector<Expect>& want, uint16_t consumed, uint16_t pending,
                       const DevView& v1) {
        GuestMemory& mem = w.mem;
        const uint16_t num = uint16_t(q.num);
        if (consumed != want.size())
            fuzz::fail("virtio_blk: the device returned " + std::to_string(consumed) + " chains; " +
                       std::to_string(want.size()) + " were valid");
        if (want.size() < pending && !(v1.status & kStatusNeedsReset))
            fuzz::fail("virtio_blk: the device did not refuse a bad chain");
        bool writes = false;
        for (const Expect& e : want) writes = writes || (e.type == kBlkTypeOut && e.status == kBlkStatusOk);
        for (size_t k = 0; k < want.size(); ++k) {
            const Expect& e = want[k];
            const std::string what = "virtio_blk: chain " + std::to_string(k) + " (head " + std::to_string(e.head) +
                                     ", type " + std::to_string(e.type) + ")";
            const auto u = *mem.read_obj<VirtqUsedElem>(Gpa{q.device + 4 + 8ull * (uint16_t(q.next_used + k) % num)});
            if (u.id != e.head || u.len != e.len)
                fuzz::fail(what + ": used entry {" + std::to_string(u.id) + ", " + std::to_string(u.len) + "}, expected {" +
                           std::to_string(e.head) + ", " + std::to_string(e.len) + "}");
            if (e.status_at) {
                const uint8_t st = *mem.read_obj<uint8_t>(Gpa{*e.status_at});
                if (st != e.status)
                    fuzz::fail(what + ": status " + std::to_string(st) + ", expected " + std::to_string(e.status));
            }
            if (e.status != kBlkStatusOk) continue;
            // What a read returned (unless a write of the same batch may have raced it), and GET_ID's serial.
            std::vector<uint8_t> want_bytes;
            if (e.type == kBlkTypeGetId) {
                want_bytes.assign(kBlkIdBytes, 0);
                std::memcpy(want_bytes.data(), serial.data(), serial.size());
            } else if (e.type == kBlkTypeIn && !writes) {
                uint64_t n = 0;
                for (const Range& r : e.data) n += r.len;
                want_bytes.resize(n);
                if (::pread(disk_fd, want_bytes.data(), n, off_t(e.offset)) != ssize_t(n))
                    fuzz::fail("virtio_blk: reading the disk back");
            } else {
                continue;
            }
            uint64_t at = 0;
            for (const Range& r : e.data) {
                auto b = mem.span(Gpa{r.at}, r.len);
                if (!b || std::memcmp(b->data(), want_bytes.data() + at, r.len) != 0)
                    fuzz::fail(what + ": the data in guest memory is not the " +
                               (e.type == kBlkTypeGetId ? "serial" : "disk's"));
                at += r.len;
            }
        }
    }

    void notify(uint32_t queue = 0) {
        checked([&] { wr(reg::kQueueNotify, queue); });
    }

    // A checkpoint and its restore into the same device: suspend, save, restore, resume
    // (which serves the chains made available and not yet notified).
    void save_restore() {
        dev.suspend();
        DeviceState s = dev.save();
        if (auto r = dev.restore(s); !r) fuzz::fail("virtio_blk: the device refused its own state: " + r.error().describe());
        checked([&] { dev.resume(); });
    }

    void step(fuzz::Input& in) {
        switch (in.u8() % 8) {
        case 0: return request(in);
        case 1: publish(offered); return notify();
        case 2: {
            const uint8_t i = in.u8();
            const uint64_t addr = in.u64();
            const uint32_t len = in.u32();
            const uint16_t flags = in.u16(), next = in.u16();
            return set_desc(i, addr, len, flags, next);
        }
        case 3: return offer(in.u16());
        case 4: publish(in.u16()); return notify();
        case 5: {
            const uint16_t off = in.u16() % (kWindow - 8);
            const auto b = in.bytes(8);
            std::memcpy(host(off), b.data(), b.size());
            return;
        }
        case 6:
            if (in.u8() & 1) return save_restore();
            return bring_up();
        default: {
            const uint64_t off = 4ull * (in.u8() % 64);
            const uint32_t v = in.u32();
            if (off == reg::kQueueNotify) return notify(v);
            wr(off, v);
            return notify();
        }
        }
    }

    // A read of sectors 3-4 after a reset: the device still serves, with the disk's bytes.
    void check_serves(const std::vector<uint8_t>& disk) {
        bring_up();
        cursor = kDataAt;
        const uint64_t hdr = alloc(16), data = alloc(1024), st = alloc(1);
        VirtioBlkReqHdr h{kBlkTypeIn, 0, 3};
        std::memcpy(host(hdr), &h, 16);
        *host(st) = 0xee;
        set_desc(0, hdr, 16, kDescFNext, 1);
        set_desc(1, data, 1024, kDescFWrite | kDescFNext, 2);
        set_desc(2, st, 1, kDescFWrite, 0);
        offer(0);
        publish(offered);
        notify();
        if (*host(st) != kBlkStatusOk || std::memcmp(host(data), disk.data() + 3 * 512, 1024) != 0)
            fuzz::fail("virtio_blk: after a reset the device no longer serves a correct read");
    }
};

void check_size(const Disk& d) {
    struct stat st{};
    if (::fstat(d.fd, &st) != 0 || uint64_t(st.st_size) != kDiskBytes)
        fuzz::fail("virtio_blk: the disk file " + d.path + " changed its size to " + std::to_string(st.st_size));
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    fuzz::quiet_logs();
    World& w = world();
    fuzz::Input in(data, size);
    const uint8_t config = in.u8();
    Disk& disk = w.disks[config & 1];
    if (!disk.dev) return 0;
    Bitmap written(disk_blocks(kDiskBytes));
    disk.dev->harvest_written(written); // what earlier inputs wrote (restored since)
    written.clear_all();

    Driver drv(w, disk, config & 2, config & 4 ? 8 : kQueueMax);
    drv.bring_up();
    for (size_t n = 0; n < kMaxSteps && in.remaining() > 0; ++n) drv.step(in);

    for (const Disk& d : w.disks) check_size(d);
    disk.dev->harvest_written(written);
    static std::vector<uint8_t> now(kDiskBytes);
    if (::pread(disk.fd, now.data(), kDiskBytes, 0) != ssize_t(kDiskBytes)) fuzz::fail("virtio_blk: reading the disk back");
    if (now != disk.original) {
        if (disk.dev->readonly()) fuzz::fail("virtio_blk: the read-only disk changed");
        for (uint64_t b = 0; b < disk_blocks(kDiskBytes); ++b)
            if (std::memcmp(&now[b * kDiskBlockBytes], &disk.original[b * kDiskBlockBytes], kDiskBlockBytes) != 0 &&
                !written.test(b))
                fuzz::fail("virtio_blk: block " + std::to_string(b) + " changed but harvest_written() misses it");
        if (::pwrite(disk.fd, disk.original.data(), kDiskBytes, 0) != ssize_t(kDiskBytes))
            fuzz::fail("virtio_blk: restoring the disk");
    }
    drv.check_serves(disk.original);
    drv.wr(reg::kStatus, 0);

    // Guest memory as it was: the window, and whatever else a notify could have written.
    std::memset(w.mem.host_base(), 0, kWindow);
    if (drv.zero_all_ram) drv.written_outside = {{kWindow, w.mem.size() - kWindow}};
    for (auto [at, len] : drv.written_outside) {
        protect(w.mem, at, len, PROT_READ | PROT_WRITE);
        std::memset(w.mem.host_base() + at, 0, len);
        protect(w.mem, at, len, PROT_READ);
    }
    return 0;
}
