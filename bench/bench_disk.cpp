// bench_disk: what protection costs a guest's disk writes (issue 18, item 7).
//
// The `disk` guest image writes a region of its virtio-blk disk pass after pass (8
// sectors a request, 32 requests a batch), flushes, reads the region back and checks
// every word. Rows, each on a fresh VM and files, for the same time:
//   unprotected           the limit, measured in this run
//   protected, written    a Primary over loopback to a BackupServer in this process with a
//                         copy of the disk, ACKs once the copy is written (the default)
//   protected, synced     the same with --disk-ack synced (fdatasync of the copy per ACK)
// Per row: passes per second and the guest's write throughput (region × passes / time),
// its ratio to the unprotected row, the time of one pass (write + flush + read back +
// check), the guest's flush (host-timed: the batch holding it, submission to completion),
// and for protected rows the ACK delay (how much longer the guest's output waits), the
// pause p50/p99, the disk blocks per checkpoint and the wire bytes per byte the guest
// wrote (memory pages included; a block written several times in an epoch travels once,
// so this can be below 1). Link security on.
// Needs /dev/kvm; --quick: 2 s rows. Overrides: --seconds=N, --sectors=N (a multiple of
// 256, at most 65536), --epoch-ms=N.

#include <fcntl.h>
#include <unistd.h>

#include <filesystem>
#include <mutex>
#include <thread>

#include <fmt/format.h>

#include "bench/bench_common.hpp"
#include "bench/bench_link.hpp"
#include "common/log.hpp"
#include "guest/abi/understudy_abi.h"
#include "hv/virtio/blk_device.hpp"
#include "replicator/backup.hpp"
#include "replicator/link_security.hpp"
#include "replicator/primary.hpp"
#include "replicator/transport.hpp"

using namespace understudy;
using namespace understudy::hv;
using namespace understudy::bench;
using namespace understudy::replicator;
using namespace std::chrono;

namespace {

enum class Mode { unprotected, written, synced };
const char* mode_name(Mode m) {
    return m == Mode::unprotected ? "unprotected" : m == Mode::written ? "protected, ack written" : "protected, ack synced";
}

struct Row {
    Mode mode;
    double passes_per_s = 0, write_mbps = 0, pass_ms = 0;
    double ratio = 0; // write throughput over the unprotected row's
    Summary pause_us, stop_us, copy_us; // the pause, and its parts: stopping the vCPUs, copying pages and blocks
    double blocks_per_ckpt = 0, wire_per_written = 0, ckpt_per_s = 0;
    double flush_ms = 0, flush_max_ms = 0; // a batch holding the guest's flush, submission to completion
    double ack_ms = 0;                      // p50, a checkpoint's resume to its ACK: how long output waits more
    uint64_t checkpoints = 0;
};

void make_file(const std::string& path, uint64_t bytes) {
    int fd = ::open(path.c_str(), O_CREAT | O_TRUNC | O_RDWR | O_CLOEXEC, 0600);
    if (fd < 0 || ::ftruncate(fd, off_t(bytes)) < 0) die("creating " + path);
    ::close(fd);
}

Row run(Mode mode, const std::string& dir, uint64_t sectors, milliseconds length, milliseconds epoch) {
    const std::string disk = dir + "/disk.img", copy = dir + "/copy.img";
    make_file(disk, sectors * 512);
    make_file(copy, sectors * 512);
    auto dev = virtio::VirtioBlk::create({.path = disk});
    if (!dev) die(dev.error().describe());
    const std::string token = (*dev)->cmdline_token();
    const virtio::VirtioBlk* blk = dev->get(); // owned by the VM from here
    VmConfig cfg;
    cfg.memory_bytes = 64 * kMiB;
    auto console = std::make_shared<std::string>();
    auto vm = boot("disk", token + " disk.sectors=" + std::to_string(sectors), cfg, console);
    if (auto r = vm->add_device(std::move(*dev)); !r) die(r.error().describe());
    if (auto r = vm->start(); !r) die(r.error().describe());
    if (!vm->wait_report(0, abi::US_REPORT_READY, seconds(20))) die("the disk guest did not start:\n" + *console);

    std::unique_ptr<BackupServer> server;
    std::thread serving;
    std::unique_ptr<Primary> primary;
    if (mode != Mode::unprotected) {
        BackupConfig bc;
        bc.security = link_security(true);
        bc.disks = {.paths = {copy}, .spill_dir = dir, .sync_before_ack = mode == Mode::synced};
        auto s = BackupServer::listen(*Endpoint::parse("127.0.0.1:0"), {}, bc);
        if (!s) die(s.error().describe());
        server = std::move(*s);
        serving = std::thread([&] { (void)server->serve_one(seconds(30)); });
        auto conn = Connection::connect(server->local(), seconds(5));
        auto control = Connection::connect(server->local(), seconds(5));
        if (!conn || !control) die("connecting to the backup");
        PrimaryConfig pc;
        pc.epoch = epoch;
        pc.security = link_security(true);
        auto p = Primary::start(*vm, std::move(*conn), pc, {}, std::move(*control));
        if (!p) die(p.error().describe());
        primary = std::move(*p);
        auto until = steady_clock::now() + seconds(120);
        while (!primary->is_protected() && !primary->failure() && steady_clock::now() < until) std::this_thread::sleep_for(10ms);
        if (!primary->is_protected()) die("not protected: " + (primary->failure() ? primary->failure()->describe() : "timeout"));
    }
    std::this_thread::sleep_for(200ms); // past the synchronization's last checkpoint
    const uint64_t acked0 = primary ? primary->acked_epoch() : 0;
    const uint64_t p0 = vm->report(0, abi::US_REPORT_PROGRESS).value_or(0);
    const auto f0 = blk->stats();
    const auto t0 = steady_clock::now();
    std::this_thread::sleep_for(length);
    const uint64_t p1 = vm->report(0, abi::US_REPORT_PROGRESS).value_or(0);
    const auto f1 = blk->stats();
    const double secs = duration<double>(steady_clock::now() - t0).count();
    if (vm->stop_reason()) die("the disk guest stopped: " + vm->stop_reason()->message + "\n" + *console);

    Row row{mode};
    row.passes_per_s = double(p1 - p0) / secs;
    row.write_mbps = row.passes_per_s * double(sectors * 512) / 1e6;
    row.pass_ms = p1 > p0 ? 1000.0 * secs / double(p1 - p0) : 0;
    if (f1.flush_batches > f0.flush_batches)
        row.flush_ms = double(f1.flush_batch_ns - f0.flush_batch_ns) / double(f1.flush_batches - f0.flush_batches) / 1e6;
    row.flush_max_ms = double(f1.flush_batch_max_ns) / 1e6;
    if (primary) {
        const uint64_t acked1 = primary->acked_epoch();
        std::vector<double> pauses, stops, copies, acks;
        uint64_t blocks = 0, wire = 0;
        for (const auto& f : primary->recent_epochs()) {
            if (f.epoch <= acked0 || f.epoch > acked1) continue;
            pauses.push_back(double(f.pause_ns) / 1e3);
            stops.push_back(double(f.stop_ns) / 1e3);
            copies.push_back(double(f.copy_ns) / 1e3);
            acks.push_back(double(f.ack_ns) / 1e6);
            blocks += f.disk_blocks;
            wire += f.wire_bytes;
        }
        row.checkpoints = pauses.size();
        row.pause_us = summarize(pauses);
        row.stop_us = summarize(stops);
        row.copy_us = summarize(copies);
        row.ack_ms = summarize(acks).p50;
        row.ckpt_per_s = double(row.checkpoints) / secs;
        row.blocks_per_ckpt = row.checkpoints ? double(blocks) / double(row.checkpoints) : 0;
        const double written = double(p1 - p0) * double(sectors * 512);
        row.wire_per_written = written > 0 ? double(wire) / written : 0;
        primary->stop();
        (void)primary->wait();
        server->stop();
        serving.join();
    }
    vm->stop();
    vm->resume_all();
    (void)vm->wait_for(seconds(10));
    return row;
}

} // namespace

int main(int argc, char** argv) {
    Options o = parse_options(argc, argv, "what protection costs a guest's disk writes (virtio-blk, the disk image)");
    uint64_t sectors = 65536; // 32 MiB
    milliseconds length = o.quick ? 2000ms : 10000ms, epoch = 25ms;
    for (auto& [k, v] : o.extra) {
        if (k == "seconds") length = milliseconds(std::stoull(v) * 1000);
        else if (k == "sectors") sectors = std::stoull(v);
        else if (k == "epoch-ms") epoch = milliseconds(std::stoull(v));
        else die("unknown option --" + k);
    }
    if (sectors == 0 || sectors % 256 || sectors > 65536) die("--sectors must be a multiple of 256 in [256, 65536]");
    log::set_level(log::Level::warn);
    std::string dir = (std::filesystem::temp_directory_path() / "bench-disk-XXXXXX").string();
    if (!::mkdtemp(dir.data())) die("mkdtemp");

    std::vector<Row> rows;
    for (Mode m : {Mode::unprotected, Mode::written, Mode::synced}) rows.push_back(run(m, dir, sectors, length, epoch));
    std::filesystem::remove_all(dir);
    for (auto& r : rows) r.ratio = rows[0].write_mbps > 0 ? r.write_mbps / rows[0].write_mbps : 0;

    std::printf("bench_disk: the disk image writing %llu MiB a pass, %lld ms epochs, %.0f s a row\n",
                (unsigned long long)(sectors * 512 >> 20), (long long)epoch.count(), duration<double>(length).count());
    std::printf("%-24s %9s %10s %8s %8s %10s %7s %10s %10s %10s %11s %12s\n", "row", "passes/s", "write MB/s", "vs unpr",
                "pass ms", "flush ms", "ack ms", "pause us", "stop us", "copy us", "blocks/ckpt", "wire/written");
    std::printf("%-24s %9s %10s %8s %8s %10s %7s %10s %10s %10s %11s %12s\n", "", "", "", "", "", "mean/max", "p50",
                "p50/p99", "p50/p99", "p50/p99", "", "");
    auto pair = [](const Summary& x) { return fmt::format("{:.0f}/{:.0f}", x.p50, x.p99); };
    for (const auto& r : rows)
        std::printf("%-24s %9.1f %10.1f %8.2f %8.1f %10s %7.1f %10s %10s %10s %11.0f %12.3f\n", mode_name(r.mode),
                    r.passes_per_s, r.write_mbps, r.ratio, r.pass_ms, fmt::format("{:.1f}/{:.1f}", r.flush_ms, r.flush_max_ms).c_str(),
                    r.ack_ms, pair(r.pause_us).c_str(), pair(r.stop_us).c_str(), pair(r.copy_us).c_str(), r.blocks_per_ckpt,
                    r.wire_per_written);

    Json j;
    j.str("benchmark", "bench_disk");
    add_provenance(j, argc, argv);
    j.integer("region_bytes", sectors * 512).integer("epoch_ms", uint64_t(epoch.count())).num("row_seconds", duration<double>(length).count());
    std::vector<Json> rj;
    for (const auto& r : rows) {
        Json x;
        x.str("row", mode_name(r.mode)).num("passes_per_s", r.passes_per_s).num("write_mbps", r.write_mbps).num("ratio", r.ratio)
            .num("pass_ms", r.pass_ms).num("flush_ms", r.flush_ms).num("flush_max_ms", r.flush_max_ms);
        if (r.mode != Mode::unprotected)
            x.integer("checkpoints", r.checkpoints).num("ckpt_per_s", r.ckpt_per_s).num("pause_p50_us", r.pause_us.p50)
                .num("pause_p99_us", r.pause_us.p99).num("stop_p50_us", r.stop_us.p50).num("stop_p99_us", r.stop_us.p99)
                .num("copy_p50_us", r.copy_us.p50).num("copy_p99_us", r.copy_us.p99).num("disk_blocks_per_ckpt", r.blocks_per_ckpt)
                .num("wire_per_written", r.wire_per_written).num("ack_p50_ms", r.ack_ms);
        rj.push_back(x);
    }
    j.arr("rows", rj);
    return emit_json(o, j) ? 0 : 1;
}
