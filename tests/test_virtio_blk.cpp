// virtio-blk device tests, without KVM: a fake driver brings the device up through its
// MMIO handler, builds request chains in a GuestMemory, and checks each answer (status,
// used length, the data) against the disk file, read back with pread.
#include <catch2/catch.hpp>

#include <fcntl.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <string>

#include "common/bitmap.hpp"
#include "hv/guest_memory.hpp"
#include "hv/virtio/blk_device.hpp"
#include "tests/support/virtio_driver.hpp"

using namespace understudy;
using namespace understudy::hv;
using namespace understudy::hv::virtio;
using understudy::test::MmioDriver;
using understudy::test::Ring;

namespace {

constexpr uint64_t kMem = 16 * kMiB;
constexpr uint64_t kDiskBytes = 1 * kMiB;
constexpr uint64_t kDiskFeatures =
    kFeatureVersion1 | kBlkFeatureSizeMax | kBlkFeatureSegMax | kBlkFeatureBlkSize | kBlkFeatureFlush;

// A disk file in the test's temporary folder, filled with a known pattern.
struct DiskImage {
    std::string path;
    explicit DiskImage(uint64_t bytes = kDiskBytes) {
        static int made = 0;
        path = (std::filesystem::temp_directory_path() /
                ("understudy-blk-" + std::to_string(::getpid()) + "-" + std::to_string(made++) + ".img"))
                   .string();
        std::vector<uint8_t> b(bytes);
        for (uint64_t i = 0; i < bytes; ++i) b[i] = uint8_t(i * 13 + i / 512);
        int fd = ::open(path.c_str(), O_CREAT | O_TRUNC | O_WRONLY, 0600);
        REQUIRE(fd >= 0);
        REQUIRE(::pwrite(fd, b.data(), b.size(), 0) == ssize_t(b.size()));
        ::close(fd);
    }
    ~DiskImage() { std::filesystem::remove(path); }
    std::vector<uint8_t> read(uint64_t off, uint64_t len) const {
        std::vector<uint8_t> b(len);
        int fd = ::open(path.c_str(), O_RDONLY);
        REQUIRE(fd >= 0);
        REQUIRE(::pread(fd, b.data(), len, off) == ssize_t(len));
        ::close(fd);
        return b;
    }
};

std::vector<uint8_t> pattern(size_t n, uint8_t seed) {
    std::vector<uint8_t> b(n);
    for (size_t i = 0; i < n; ++i) b[i] = uint8_t(seed ^ (i * 31 + i / 7));
    return b;
}

// The guest's side: one queue of 128 at 0x10000.., request headers at 0x20000 + 0x100 * n,
// status bytes at 0x30000 + n, data where each test puts it (0x100000 and up).
struct Driver : MmioDriver {
    GuestMemory& mem;
    Ring q{mem, 128, Gpa{0x10000}, Gpa{0x11000}, Gpa{0x12000}};
    uint16_t next_desc = 0;
    uint16_t requests = 0;
    Driver(VirtioBlk& d, GuestMemory& m) : MmioDriver(MmioDriver::of(d)), mem(m) {}

    void bring_up(uint64_t features = kDiskFeatures) {
        REQUIRE(rd(reg::kDeviceId) == kBlkDeviceId);
        wr(reg::kStatus, 0);
        REQUIRE(negotiate(features));
        q.clear();
        setup_queue(0, q);
        driver_ok();
    }
    struct Part {
        uint64_t addr;
        uint32_t len;
        uint16_t flags; // kDescFWrite or 0; NEXT is added here
    };
    // Writes the parts as one chain in the next free descriptors; returns its head.
    uint16_t chain(const std::vector<Part>& parts) {
        const uint16_t head = next_desc % q.size;
        for (size_t i = 0; i < parts.size(); ++i) {
            const uint16_t d = next_desc++ % q.size;
            const bool more = i + 1 < parts.size();
            q.set_desc(d, parts[i].addr, parts[i].len, uint16_t(parts[i].flags | (more ? kDescFNext : 0)),
                       more ? uint16_t(next_desc % q.size) : 0);
        }
        return head;
    }
    struct Sent {
        uint16_t head;
        Gpa status;
    };
    // A request chain: header, then `data` (device-writable for a read), then the status
    // byte; offered, and notified unless told not to.
    Sent request(uint32_t type, uint64_t sector, const std::vector<Segment>& data, bool notify = true,
                 bool with_status = true) {
        const uint16_t n = requests++;
        const Gpa hdr{0x20000 + 0x100ull * n}, status{0x30000ull + n};
        REQUIRE(mem.write_obj(hdr, VirtioBlkReqHdr{type, 0, sector}));
        REQUIRE(mem.write_obj<uint8_t>(status, 0xee));
        const uint16_t data_flags = type == kBlkTypeIn || type == kBlkTypeGetId ? kDescFWrite : 0;
        std::vector<Part> parts{{hdr.value, sizeof(VirtioBlkReqHdr), 0}};
        for (const Segment& s : data) parts.push_back({s.addr.value, s.len, data_flags});
        if (with_status) parts.push_back({status.value, 1, kDescFWrite});
        const uint16_t head = chain(parts);
        q.offer(head);
        if (notify) wr(reg::kQueueNotify, 0);
        return {head, status};
    }
    uint8_t status_of(const Sent& s) { return *mem.read_obj<uint8_t>(s.status); }
};

struct Fixture {
    DiskImage disk;
    GuestMemory mem = *GuestMemory::create(kMem);
    std::unique_ptr<VirtioBlk> dev;
    int events = 0, interrupts = 0;
    explicit Fixture(BlkConfig cfg = {}, uint64_t disk_bytes = kDiskBytes) : disk(disk_bytes) {
        cfg.path = disk.path;
        dev = *VirtioBlk::create(cfg);
        REQUIRE(dev->bind(mem, [this] { ++events; }, [this] { ++interrupts; }));
    }
};

} // namespace

TEST_CASE("virtio-blk: configuration and disk files are checked", "[blk]") {
    DiskImage disk;
    CHECK(!VirtioBlk::create({.path = disk.path, .queue_max = 100}));
    CHECK(!VirtioBlk::create({.path = disk.path, .queue_max = 512}));
    CHECK(!VirtioBlk::create({.index = 0x30000, .path = disk.path}));
    CHECK(!VirtioBlk::create({.path = disk.path, .serial = std::string(21, 's')}));
    auto missing = VirtioBlk::create({.path = disk.path + ".missing"});
    REQUIRE(!missing);
    CHECK(missing.error().describe().find(".missing") != std::string::npos);
    DiskImage odd(1000), empty(0);
    auto r = VirtioBlk::create({.path = odd.path});
    REQUIRE(!r);
    CHECK(r.error().message.find("multiple of 512") != std::string::npos);
    CHECK(!VirtioBlk::create({.path = empty.path}));
    CHECK(!VirtioBlk::create({.path = "/dev/null"})); // neither a file nor a block device

    // One writer at a time; read-only users share.
    auto a = VirtioBlk::create({.path = disk.path});
    REQUIRE(a);
    auto b = VirtioBlk::create({.disk = 1, .path = disk.path});
    REQUIRE(!b);
    CHECK(b.error().message.find("in use by another process") != std::string::npos);
    a->reset();
    auto ro1 = VirtioBlk::create({.path = disk.path, .readonly = true});
    auto ro2 = VirtioBlk::create({.disk = 1, .path = disk.path, .readonly = true});
    CHECK(ro1);
    CHECK(ro2);
    CHECK(!VirtioBlk::create({.disk = 2, .path = disk.path}));

    auto d = *VirtioBlk::create({.index = 1, .disk = 3, .path = disk.path, .readonly = true});
    CHECK(d->name() == "virtio-blk3");
    CHECK(d->mmio_base() == 0xd0001000);
    CHECK(d->cmdline_token() == "virtio_mmio.device=0x1000@0xd0001000:6");
    CHECK(d->capacity_sectors() == kDiskBytes / 512);
}

TEST_CASE("virtio-blk: features and the configuration space", "[blk]") {
    Fixture fx;
    Driver drv{*fx.dev, fx.mem};
    CHECK(drv.device_features() == kDiskFeatures);
    CHECK(drv.rd(reg::kConfig + 0) == kDiskBytes / 512); // capacity, low half
    CHECK(drv.rd(reg::kConfig + 4) == 0);
    CHECK(drv.rd(reg::kConfig + 8) == kBlkSizeMax);       // size_max
    CHECK(drv.rd(reg::kConfig + 12) == kBlkQueueMax - 2); // seg_max
    CHECK(drv.rd(reg::kConfig + 20) == 512);              // blk_size
    CHECK(drv.rd(reg::kConfig + 64) == 0);                // past the fields

    Fixture ro({.readonly = true});
    Driver rdrv{*ro.dev, ro.mem};
    CHECK(rdrv.device_features() == (kDiskFeatures | kBlkFeatureRo));
}

TEST_CASE("virtio-blk: writes reach the file, reads return it, across descriptors; guest pages are marked dirty",
          "[blk]") {
    Fixture fx;
    Driver drv{*fx.dev, fx.mem};
    drv.bring_up();
    // Three sectors at sector 5, written from two buffers (1 and 2 sectors).
    auto data = pattern(1536, 0x5a);
    REQUIRE(fx.mem.write(Gpa{0x100000}, std::span(data).first(512)));
    REQUIRE(fx.mem.write(Gpa{0x180000}, std::span(data).subspan(512)));
    auto w = drv.request(kBlkTypeOut, 5, {{Gpa{0x100000}, 512}, {Gpa{0x180000}, 1024}});
    CHECK(drv.status_of(w) == kBlkStatusOk);
    REQUIRE(drv.q.used_idx() == 1);
    CHECK(drv.q.used_elem(0).id == w.head);
    CHECK(drv.q.used_elem(0).len == 1); // only the status was written
    CHECK(fx.disk.read(5 * 512, 1536) == data);
    CHECK(fx.disk.read(4 * 512, 512) == DiskImage(kDiskBytes).read(4 * 512, 512)); // neighbours untouched
    CHECK(fx.interrupts == 1);
    CHECK(fx.events == 1);

    Bitmap before(fx.mem.page_count());
    fx.mem.vmm_dirty().drain_into(before);
    // Read them back into three one-sector buffers in other pages.
    auto r = drv.request(kBlkTypeIn, 5, {{Gpa{0x200000}, 512}, {Gpa{0x201000}, 512}, {Gpa{0x280000}, 512}});
    CHECK(drv.status_of(r) == kBlkStatusOk);
    CHECK(drv.q.used_elem(1).len == 1536 + 1);
    std::vector<uint8_t> got(512);
    for (auto [gpa, i] : {std::pair{0x200000ull, 0}, {0x201000ull, 1}, {0x280000ull, 2}}) {
        REQUIRE(fx.mem.read(Gpa{gpa}, got));
        CHECK(std::equal(got.begin(), got.end(), data.begin() + 512 * i));
    }
    Bitmap dirty(fx.mem.page_count());
    fx.mem.vmm_dirty().drain_into(dirty);
    for (uint64_t p : {0x200000ull, 0x201000ull, 0x280000ull, 0x30000ull, 0x12000ull}) CHECK(dirty.test(p / kPageSize));
    CHECK(!dirty.test(0x100000 / kPageSize)); // a write's buffer is only read

    auto s = fx.dev->stats();
    CHECK(s.writes == 1);
    CHECK(s.write_bytes == 1536);
    CHECK(s.reads == 1);
    CHECK(s.read_bytes == 1536);
}

TEST_CASE("virtio-blk: flush, GET_ID, and other request types answered UNSUPP", "[blk]") {
    Fixture fx({.serial = "disk-serial-1"});
    Driver drv{*fx.dev, fx.mem};
    drv.bring_up();
    auto f = drv.request(kBlkTypeFlush, 0, {});
    CHECK(drv.status_of(f) == kBlkStatusOk);
    CHECK(fx.dev->stats().flushes == 1);

    std::vector<uint8_t> id(20, 0xcc);
    REQUIRE(fx.mem.write(Gpa{0x100000}, id));
    auto g = drv.request(kBlkTypeGetId, 0, {{Gpa{0x100000}, 20}});
    CHECK(drv.status_of(g) == kBlkStatusOk);
    REQUIRE(fx.mem.read(Gpa{0x100000}, id));
    CHECK(std::string(reinterpret_cast<char*>(id.data())) == "disk-serial-1");
    CHECK(id[13] == 0);
    CHECK(id[19] == 0);
    CHECK(drv.q.used_elem(1).len == 21);

    for (uint32_t type : {11u /* DISCARD */, 13u /* WRITE_ZEROES */, 7u, 0xffffffffu}) {
        auto u = drv.request(type, 0, {});
        CHECK(drv.status_of(u) == kBlkStatusUnsupp);
    }
    CHECK(fx.dev->stats().unsupported == 4);
    CHECK_FALSE(fx.dev->stats().broken);
}

TEST_CASE("virtio-blk: bad requests get an I/O error, touch nothing, and the device goes on", "[blk]") {
    Fixture fx;
    Driver drv{*fx.dev, fx.mem};
    drv.bring_up();
    const auto original = fx.disk.read(0, kDiskBytes);
    const uint64_t last = kDiskBytes / 512 - 1;
    REQUIRE(fx.mem.write(Gpa{0x100000}, pattern(4096, 1)));
    struct Case {
        const char* what;
        uint32_t type;
        uint64_t sector;
        std::vector<Segment> data;
    };
    const std::vector<Case> cases = {
        {"past the end", kBlkTypeOut, last, {{Gpa{0x100000}, 1024}}},
        {"starting past the end", kBlkTypeIn, last + 1, {{Gpa{0x100000}, 512}}},
        {"sector overflow", kBlkTypeOut, ~0ull - 1, {{Gpa{0x100000}, 1024}}},
        {"not whole sectors", kBlkTypeOut, 0, {{Gpa{0x100000}, 700}}},
        {"no data", kBlkTypeIn, 0, {}},
    };
    for (const auto& c : cases) {
        INFO(c.what);
        auto s = drv.request(c.type, c.sector, c.data);
        CHECK(drv.status_of(s) == kBlkStatusIoErr);
    }
    // A header shorter than 16 bytes, with room for the status.
    {
        drv.q.offer(drv.chain({{0x20000, 8, 0}, {0x30100, 1, kDescFWrite}}));
        drv.wr(reg::kQueueNotify, 0);
        CHECK(*fx.mem.read_obj<uint8_t>(Gpa{0x30100}) == kBlkStatusIoErr);
    }
    // No byte for the status: returned with nothing written.
    drv.request(kBlkTypeIn, 0, {}, true, false);
    CHECK(drv.q.used_elem(uint16_t(drv.q.used_idx() - 1)).len == 0);
    CHECK(fx.dev->stats().bad_requests == cases.size() + 2);
    CHECK(fx.disk.read(0, kDiskBytes) == original);
    CHECK_FALSE(fx.dev->stats().broken);

    // The device still serves a good request.
    auto ok = drv.request(kBlkTypeOut, last, {{Gpa{0x100000}, 512}});
    CHECK(drv.status_of(ok) == kBlkStatusOk);
}

TEST_CASE("virtio-blk: a read-only disk refuses writes and flushes without I/O", "[blk]") {
    Fixture fx({.readonly = true});
    Driver drv{*fx.dev, fx.mem};
    drv.bring_up(kDiskFeatures | kBlkFeatureRo);
    const auto original = fx.disk.read(0, 4096);
    REQUIRE(fx.mem.write(Gpa{0x100000}, pattern(512, 9)));
    auto w = drv.request(kBlkTypeOut, 0, {{Gpa{0x100000}, 512}});
    CHECK(drv.status_of(w) == kBlkStatusIoErr);
    CHECK(fx.disk.read(0, 4096) == original);
    auto f = drv.request(kBlkTypeFlush, 0, {});
    CHECK(drv.status_of(f) == kBlkStatusOk);
    auto r = drv.request(kBlkTypeIn, 0, {{Gpa{0x200000}, 512}});
    CHECK(drv.status_of(r) == kBlkStatusOk);
}

TEST_CASE("virtio-blk: a host I/O error is answered IOERR (the file shrank under the disk)", "[blk]") {
    Fixture fx;
    Driver drv{*fx.dev, fx.mem};
    drv.bring_up();
    REQUIRE(::truncate(fx.disk.path.c_str(), kDiskBytes / 2) == 0);
    auto r = drv.request(kBlkTypeIn, kDiskBytes / 512 - 1, {{Gpa{0x200000}, 512}});
    CHECK(drv.status_of(r) == kBlkStatusIoErr);
    CHECK(fx.dev->stats().io_errors == 1);
    auto ok = drv.request(kBlkTypeIn, 0, {{Gpa{0x200000}, 512}});
    CHECK(drv.status_of(ok) == kBlkStatusOk);
}

TEST_CASE("virtio-blk: a batch of requests completes within one notify, in the used ring", "[blk]") {
    Fixture fx;
    Driver drv{*fx.dev, fx.mem};
    drv.bring_up();
    std::vector<Driver::Sent> sent;
    for (uint16_t i = 0; i < 40; ++i) {
        REQUIRE(fx.mem.write(Gpa{0x100000 + 0x1000ull * i}, pattern(4096, uint8_t(i))));
        sent.push_back(drv.request(kBlkTypeOut, 8ull * i, {{Gpa{0x100000 + 0x1000ull * i}, 4096}}, false));
    }
    sent.push_back(drv.request(kBlkTypeFlush, 0, {}, false));
    CHECK(drv.q.used_idx() == 0);
    drv.wr(reg::kQueueNotify, 0);
    CHECK(drv.q.used_idx() == 41);
    for (const auto& s : sent) CHECK(drv.status_of(s) == kBlkStatusOk);
    for (uint16_t i = 0; i < 40; ++i) CHECK(fx.disk.read(4096ull * i, 4096) == pattern(4096, uint8_t(i)));
    CHECK(fx.interrupts == 1);
}

TEST_CASE("virtio-blk: a bad descriptor chain marks the device broken until reset", "[blk]") {
    Fixture fx;
    Driver drv{*fx.dev, fx.mem};
    drv.bring_up();
    drv.q.set_desc(0, 0x20000, 16, kDescFNext, 0); // a loop
    drv.q.offer(0);
    drv.wr(reg::kQueueNotify, 0);
    CHECK((drv.status() & kStatusNeedsReset));
    CHECK(fx.dev->stats().broken);
    drv.next_desc = 0;
    drv.bring_up();
    auto ok = drv.request(kBlkTypeFlush, 0, {});
    CHECK(drv.status_of(ok) == kBlkStatusOk);
}

TEST_CASE("virtio-blk: saved state restores the queue; requests offered before the capture are served on resume; "
          "bad state is refused",
          "[blk]") {
    DiskImage disk;
    GuestMemory mem = *GuestMemory::create(kMem);
    DeviceState saved;
    {
        auto dev = *VirtioBlk::create({.path = disk.path});
        REQUIRE(dev->bind(mem, {}));
        Driver drv{*dev, mem};
        drv.bring_up();
        REQUIRE(mem.write(Gpa{0x100000}, pattern(512, 3)));
        drv.request(kBlkTypeOut, 1, {{Gpa{0x100000}, 512}});
        REQUIRE(mem.write(Gpa{0x101000}, pattern(512, 4)));
        drv.request(kBlkTypeOut, 2, {{Gpa{0x101000}, 512}}, false); // offered, not notified
        dev->suspend();
        saved = dev->save();
        dev->resume();
    }
    CHECK(disk.read(2 * 512, 512) != pattern(512, 4));
    auto dev = *VirtioBlk::create({.path = disk.path});
    int interrupts = 0;
    REQUIRE(dev->bind(mem, {}, [&] { ++interrupts; }));
    REQUIRE(dev->restore(saved));
    dev->resume();
    CHECK(disk.read(2 * 512, 512) == pattern(512, 4));
    CHECK(*mem.read_obj<uint16_t>(Gpa{0x12002}) == 2); // used idx
    CHECK(interrupts >= 1);

    DeviceState wrong = saved;
    wrong.name = "virtio-blk9";
    CHECK(!dev->restore(wrong));
    wrong = saved;
    wrong.version = 2;
    CHECK(!dev->restore(wrong));
    wrong = saved;
    wrong.data.resize(wrong.data.size() - 8);
    CHECK(!dev->restore(wrong));
    dev.reset();
    DiskImage bigger(2 * kDiskBytes);
    auto other = *VirtioBlk::create({.path = bigger.path});
    REQUIRE(other->bind(mem, {}));
    auto r = other->restore(saved);
    REQUIRE(!r);
    CHECK(r.error().message.find("2048 sectors") != std::string::npos);
    auto ro = *VirtioBlk::create({.disk = 0, .path = disk.path, .readonly = true});
    REQUIRE(ro->bind(mem, {}));
    CHECK(!ro->restore(saved)); // offered features differ
}

TEST_CASE("virtio-blk: chains in other shapes: a split header, a zero-length last descriptor, a short ID buffer, "
          "extra bytes the request may not have",
          "[blk]") {
    Fixture fx({.serial = "0123456789abcdefghij"});
    Driver drv{*fx.dev, fx.mem};
    drv.bring_up();
    // The header in two descriptors (10 + 6 bytes), one sector of data, the status.
    REQUIRE(fx.mem.write_obj(Gpa{0x20000}, VirtioBlkReqHdr{kBlkTypeOut, 0, 7}));
    REQUIRE(fx.mem.write(Gpa{0x100000}, pattern(512, 0x33)));
    drv.q.offer(drv.chain({{0x20000, 10, 0}, {0x2000a, 6, 0}, {0x100000, 512, 0}, {0x30200, 1, kDescFWrite}}));
    drv.wr(reg::kQueueNotify, 0);
    CHECK(*fx.mem.read_obj<uint8_t>(Gpa{0x30200}) == kBlkStatusOk);
    CHECK(fx.disk.read(7 * 512, 512) == pattern(512, 0x33));

    // A zero-length writable descriptor after the status: the status is still the last
    // writable byte, and nothing lands at address - 1 of the empty one.
    REQUIRE(fx.mem.write_obj<uint8_t>(Gpa{0x40000 - 1}, 0x77));
    drv.q.offer(drv.chain({{0x20000, 16, 0}, {0x100000, 512, 0}, {0x30201, 1, kDescFWrite}, {0x40000, 0, kDescFWrite}}));
    drv.wr(reg::kQueueNotify, 0);
    CHECK(*fx.mem.read_obj<uint8_t>(Gpa{0x30201}) == kBlkStatusOk);
    CHECK(*fx.mem.read_obj<uint8_t>(Gpa{0x40000 - 1}) == 0x77);

    // GET_ID into 8 bytes: the first 8 of the serial.
    std::vector<uint8_t> id(8, 0);
    REQUIRE(fx.mem.write(Gpa{0x100000}, id));
    auto g = drv.request(kBlkTypeGetId, 0, {{Gpa{0x100000}, 8}});
    CHECK(drv.status_of(g) == kBlkStatusOk);
    REQUIRE(fx.mem.read(Gpa{0x100000}, id));
    CHECK(std::string(id.begin(), id.end()) == "01234567");
    CHECK(drv.q.used_elem(uint16_t(drv.q.used_idx() - 1)).len == 9);

    // A read with data after its header; a write with a writable buffer before its status.
    REQUIRE(fx.mem.write_obj(Gpa{0x20100}, VirtioBlkReqHdr{kBlkTypeIn, 0, 0}));
    drv.q.offer(drv.chain({{0x20100, 16, 0}, {0x100000, 512, 0}, {0x200000, 512, kDescFWrite}, {0x30202, 1, kDescFWrite}}));
    REQUIRE(fx.mem.write_obj(Gpa{0x20200}, VirtioBlkReqHdr{kBlkTypeOut, 0, 0}));
    drv.q.offer(drv.chain({{0x20200, 16, 0}, {0x100000, 512, 0}, {0x200000, 512, kDescFWrite}, {0x30203, 1, kDescFWrite}}));
    drv.wr(reg::kQueueNotify, 0);
    CHECK(*fx.mem.read_obj<uint8_t>(Gpa{0x30202}) == kBlkStatusIoErr);
    CHECK(*fx.mem.read_obj<uint8_t>(Gpa{0x30203}) == kBlkStatusIoErr);
    CHECK(fx.dev->stats().bad_requests == 2);
}

TEST_CASE("virtio-blk: a driver without FLUSH gets its writes through (write-through cache)", "[blk]") {
    Fixture fx;
    Driver drv{*fx.dev, fx.mem};
    drv.bring_up(kDiskFeatures & ~kBlkFeatureFlush);
    REQUIRE(fx.mem.write(Gpa{0x100000}, pattern(4096, 0x44)));
    auto w = drv.request(kBlkTypeOut, 16, {{Gpa{0x100000}, 4096}});
    CHECK(drv.status_of(w) == kBlkStatusOk);
    CHECK(fx.disk.read(16 * 512, 4096) == pattern(4096, 0x44));
}
