#include "replicator/primary.hpp"

#include <bit>

#include <algorithm>
#include <cstring>
#include <mutex>
#include <random>
#include <tuple>

#include "common/codec.hpp"
#include "common/clock.hpp"
#include "common/log.hpp"
#include "common/prefault.hpp"
#include "common/thread_priority.hpp"
#include "hv/snapshot.hpp"
#include "replicator/checkpoint_writer.hpp"

namespace understudy::replicator {

using namespace std::chrono;

namespace {
constexpr size_t kFiguresKept = 4096;
// A checkpoint buffer above this, or above twice the pages of the recent checkpoints (see
// kept_buffer_bytes()), is freed, not kept for reuse: a resync's, a burst of writes.
constexpr size_t kKeptBufferBytes = 64 * hv::kMiB;
// The checkpoint size that buffers are kept for falls by 1/kPeakDecay of itself per smaller
// checkpoint (halving in about 180 of them, 4.4 s at 25 ms epochs): a guest whose dirty set
// swings between checkpoints keeps its buffers instead of freeing and faulting them in again.
constexpr uint64_t kPeakDecay = 256;
// A pause that finds fewer dirty pages than this left to copy is short enough (about
// 0.2 ms of memcpy): a first in-epoch round that copied fewer ends the rounds, a later
// one starts the last rounds.
constexpr uint64_t kPauseCopyGoalPages = 256;
// The last rounds start at least epoch / kFinalRoundLeadDivisor (500 us at 25 ms) before
// the pause: more than the epoch thread's wake-up on a busy host.
constexpr int kFinalRoundLeadDivisor = 50;
// The last rounds run back to back until one copies fewer pages than this; the pause
// then finds only what the guest wrote during that short round.
constexpr uint64_t kLastRoundPages = kPauseCopyGoalPages / 4;
// Growing a checkpoint buffer in the pause (a reallocation, then page faults on fresh
// memory) took 25-38 ms at 3,750-6,750 pages in bench_pipeline. So a buffer gets room,
// allocated and faulted in (common/prefault.hpp) while the guest runs: at an epoch's first
// round for 5/4 of the last checkpoint, before the pause for twice the last round's copy;
// at least this.
constexpr uint64_t kMinRoomPages = kPauseCopyGoalPages;

// What the in-epoch rounds have seen of the guest: how fast it dirties pages it had not
// dirtied since the round before, and what a round costs per page. From these, when the
// last rounds should start for them to end at the pause.
class RoundModel {
public:
    explicit RoundModel(steady_clock::time_point last_harvest) : last_harvest_(last_harvest) {}

    // A round that harvested at `harvest`, copied `pages` and took `took`.
    void observe(steady_clock::time_point harvest, steady_clock::duration took, uint64_t pages) {
        const auto since = harvest - last_harvest_;
        last_harvest_ = harvest;
        if (pages < kLastRoundPages || since.count() <= 0) return; // fixed costs would dominate
        dirty_per_ns_ = double(pages) / double(since.count());
        ns_per_page_ = double(took.count()) / double(pages);
    }

    // Rounds run back to back shrink by a = (round time per page) x (dirty rate) each: a
    // first round started `lead` before `end` copies what was written since the last
    // harvest, a second what was written during the first, and so on. The lead makes the
    // first two end at `end`: lead = a (1 + a) / (1 + a (1 + a)) x (end - last harvest).
    steady_clock::duration lead(steady_clock::time_point end) const {
        const double a = std::min(ns_per_page_ * dirty_per_ns_, 0.9); // a >= 1 would never converge
        const double share = a * (1 + a) / (1 + a * (1 + a));
        return duration_cast<steady_clock::duration>((end - last_harvest_) * share);
    }

private:
    steady_clock::time_point last_harvest_;
    double dirty_per_ns_ = 0;
    double ns_per_page_ = 0;
};
} // namespace

struct Primary::Checkpoint {
    uint64_t epoch = 0;
    uint32_t flags = 0;
    std::vector<uint64_t> indices;
    PrefaultedBuffer pages; // faulted in ahead: the pause copies into it
    std::vector<DiskBlockSet> disks; // one per disk of the VM
    hv::VmState state;
    uint64_t pause_ns = 0, stop_ns = 0, harvest_ns = 0, state_ns = 0, copy_ns = 0, verify_ns = 0;
    uint64_t copied_at_pause = 0;
    std::optional<VerifySlice> verify; // sent after the checkpoint's END
    bool resync = false;               // carries every page, none encoded against the backup's copy
};

namespace {
template <class C>
void fill_pause(EpochFigures& f, const C& cp) {
    f.pause_ns = cp.pause_ns;
    f.stop_ns = cp.stop_ns;
    f.harvest_ns = cp.harvest_ns;
    f.state_ns = cp.state_ns;
    f.copy_ns = cp.copy_ns;
    f.verify_ns = cp.verify_ns;
    f.dirty_pages = cp.indices.size();
    for (const auto& d : cp.disks) f.disk_blocks += d.slot.size();
    f.copied_at_pause = cp.copied_at_pause;
}
} // namespace

Result<void> validate(const PrimaryConfig& c) {
    if (c.epoch < milliseconds(1) || c.epoch > seconds(10))
        return make_error(Errc::invalid_input, "epoch length " + std::to_string(c.epoch.count()) + " µs is outside 1 ms .. 10 s");
    if (c.max_in_flight < 1 || c.max_in_flight > 64)
        return make_error(Errc::invalid_input, "checkpoints in flight must be 1 .. 64");
    if (c.batch_pages < 1 || c.batch_pages > 8192) return make_error(Errc::invalid_input, "pages per record must be 1 .. 8192");
    if (c.verify_pages_per_checkpoint < 1 || c.verify_pages_per_checkpoint > kMaxVerifySlicePages)
        return make_error(Errc::invalid_input, "pages verified per checkpoint must be 1 .. " + std::to_string(kMaxVerifySlicePages));
    if (c.verify_interval < seconds(0)) return make_error(Errc::invalid_input, "the verification interval must not be negative");
    if (c.handshake_timeout < milliseconds(1) || c.ack_timeout < milliseconds(1))
        return make_error(Errc::invalid_input, "the handshake and ACK timeouts must be positive");
    US_TRYV(validate(c.security));
    return replicator::validate(c.heartbeat);
}

Result<std::unique_ptr<Primary>> Primary::start(hv::Checkpointable& vm, std::unique_ptr<Connection> conn, PrimaryConfig cfg,
                                                PrimaryHooks hooks, std::unique_ptr<Connection> control) {
    US_TRYV(validate(cfg));
    if (!vm.tracks_dirty())
        return make_error(Errc::invalid_input, "replication needs dirty tracking; the VM was created with --dirty none");
    uint64_t session = std::random_device{}() | (uint64_t(std::random_device{}()) << 32);
    auto enc = US_TRY(PageEncoder::create({vm.memory().page_count(), cfg.cache_pages, session}));
    std::unique_ptr<Primary> p(new Primary(vm, std::move(conn), cfg, std::move(hooks), std::move(enc)));
    p->session_id_ = session;
    p->control_conn_ = std::move(control);
    p->control_ = std::thread([raw = p.get()] { raw->control_main(); });
    return p;
}

Primary::Primary(hv::Checkpointable& vm, std::unique_ptr<Connection> conn, PrimaryConfig cfg, PrimaryHooks hooks, PageEncoder enc)
    : vm_(vm), conn_(std::move(conn)), cfg_(cfg), hooks_(std::move(hooks)), encoder_(std::move(enc)),
      dirty_(vm.memory().page_count()), disks_(vm.disks()), slot_of_page_(vm.memory().page_count(), -1) {
    for (auto* d : disks_) disk_written_.emplace_back(hv::disk_blocks(d->size_bytes()));
    verify_.next_scheduled = steady_clock::now() + cfg_.verify_interval;
}

Primary::~Primary() {
    stop();
    (void)wait();
}

void Primary::fail(Error e) {
    if (late_answer_decides()) return;
    bool first = false;
    {
        std::lock_guard lock(mu_);
        if (!error_ && !stopping_) {
            error_ = e;
            first = true;
        }
        stopping_ = true;
    }
    cv_.notify_all();
    conn_->shutdown();
    if (first && hooks_.on_failure) hooks_.on_failure(e);
}

void Primary::handover_step_locked(HandoverEvent e, uint64_t epoch, std::chrono::milliseconds grace) {
    if (auto r = handover_.on(e, epoch, grace); !r) log::error("replication: {}", r.error().describe());
}

bool Primary::late_answer_decides() {
    std::unique_lock lock(mu_);
    if (error_ || stopping_) return false;
    if (handover_.phase() == HandoverPhase::awaiting_verdict) { // another thread is asking already
        cv_.wait(lock, [&] { return handover_.phase() != HandoverPhase::awaiting_verdict; });
        return handover_.phase() == HandoverPhase::handed_over;
    }
    if (handover_.phase() != HandoverPhase::unanswered) return false;
    handover_step_locked(HandoverEvent::replication_failed);
    const uint64_t epoch = handover_.epoch();
    const auto grace = handover_.grace();
    lock.unlock();
    const bool accepted = heartbeat_->await_handover(epoch, grace) == HeartbeatLink::HandoverAnswer::accepted;
    lock.lock();
    handover_step_locked(accepted ? HandoverEvent::verdict_accepted : HandoverEvent::verdict_none);
    if (accepted) stopping_ = true; // no GOODBYE: the backup runs the VM
    lock.unlock();
    cv_.notify_all();
    if (accepted) conn_->shutdown();
    return accepted;
}

std::optional<uint64_t> Primary::late_handover() const {
    std::lock_guard lock(mu_);
    if (handover_.phase() != HandoverPhase::handed_over || !handover_.late()) return std::nullopt;
    return handover_.epoch();
}

void Primary::stop() {
    HeartbeatLink* link = nullptr;
    {
        std::lock_guard lock(mu_);
        // Stopping on purpose, not after a failure: tell the backup, so that it keeps its
        // checkpoint and does not take the closing connections for a dead primary.
        if (!error_ && !stopping_) link = heartbeat_.get();
        stopping_ = true;
    }
    cv_.notify_all();
    if (link) link->goodbye();
    conn_->shutdown();
}

void Primary::request_checkpoint(steady_clock::time_point deadline) {
    {
        std::lock_guard lock(mu_);
        if (early_end_ && *early_end_ <= deadline) return;
        early_end_ = deadline;
    }
    cv_.notify_all();
}

Result<void> Primary::wait() {
    for (auto* t : {&control_, &sender_, &receiver_})
        if (t->joinable()) t->join();
    // Only now: a heartbeat failure calls fail() from the link's thread until it stops.
    if (heartbeat_) heartbeat_->stop();
    std::lock_guard lock(mu_);
    if (error_) return *error_;
    return {};
}

std::optional<uint64_t> Primary::handover_uncertain() const {
    std::lock_guard lock(mu_);
    if (handover_.phase() != HandoverPhase::uncertain) return std::nullopt;
    return handover_.epoch();
}

std::optional<Error> Primary::failure() const {
    std::lock_guard lock(mu_);
    return error_;
}

HeartbeatStats Primary::heartbeats() const {
    std::lock_guard lock(mu_);
    return heartbeat_ ? heartbeat_->stats() : HeartbeatStats{};
}

std::vector<EpochFigures> Primary::recent_epochs() const {
    std::lock_guard lock(mu_);
    return {done_.begin(), done_.end()};
}

Result<void> Primary::handshake() {
    const auto established_by = std::chrono::steady_clock::now() + cfg_.handshake_timeout;
    conn_->set_receive_deadline(established_by);
    if (control_conn_) control_conn_->set_receive_deadline(established_by);
    auto r = handshake_steps();
    if (!r && r.error().code == Errc::timeout)
        return std::move(r.error()).wrap("the backup did not establish the session within the handshake timeout of " +
                                         std::to_string(cfg_.handshake_timeout.count()) + " ms");
    return r;
}

Result<void> Primary::handshake_steps() {
    // Mutual authentication before anything else: no stream header, no page leaves
    // before the backup proved that it holds the key.
    if (cfg_.security.enabled()) US_TRYV(secure_client(*conn_, *cfg_.security.key, LinkChannel::stream));
    auto& mem = vm_.memory();
    StreamHeader h = make_stream_header(mem.size(), vm_.vcpu_count(), hv::memory_layout_digest(mem), vm_.config_digest(),
                                        session_id_, control_conn_ ? kStreamFlagControl : 0, uint32_t(disks_.size()));
    std::span<const uint8_t> hb(reinterpret_cast<const uint8_t*>(&h), sizeof h);
    US_TRYV(conn_->send({&hb, 1}));
    if (!disks_.empty()) {
        std::vector<DiskInfo> info;
        for (auto* d : disks_) info.push_back({d->size_bytes(), d->readonly(), d->identity()});
        US_TRYV(conn_->send_record(kDisks, encode_disks(info)));
    }
    auto r = US_TRY(conn_->recv_record());
    if (r.type == kReject)
        return make_error(Errc::invalid_input, "the backup refused the stream: " + std::string(r.body.begin(), r.body.end()));
    if (r.type != kAccept) return make_error(Errc::invalid_input, std::string("the backup answered with ") + record_type_name(r.type));
    // Established: a silent backup is found by the heartbeats, or by the ACK limit.
    conn_->set_receive_deadline(std::nullopt);
    if (!control_conn_) return {};
    if (cfg_.security.enabled())
        if (auto r = secure_client(*control_conn_, *cfg_.security.key, LinkChannel::control); !r)
            return std::move(r.error()).wrap("control connection");
    ControlHello hello = make_control_hello(session_id_, cfg_.heartbeat);
    std::span<const uint8_t> hs(reinterpret_cast<const uint8_t*>(&hello), sizeof hello);
    if (auto sent = control_conn_->send({&hs, 1}); !sent) return std::move(sent.error()).wrap("control connection");
    control_conn_->set_receive_deadline(std::nullopt);
    auto link = US_TRY(HeartbeatLink::start(std::move(control_conn_), cfg_.heartbeat,
                                            [this](Error e) { fail(std::move(e).wrap("backup")); }));
    std::lock_guard lock(mu_);
    heartbeat_ = std::move(link);
    return {};
}

void Primary::copy_dirty(Checkpoint& cp, const Bitmap& dirty) {
    auto& mem = vm_.memory();
    dirty.for_each_set([&](size_t idx) {
        const uint8_t* page = mem.page_ptr(idx);
        int32_t slot = slot_of_page_[idx];
        if (slot < 0) {
            slot_of_page_[idx] = static_cast<int32_t>(cp.indices.size());
            cp.indices.push_back(idx);
            cp.pages.append(page, hv::kPageSize);
            return;
        }
        std::memcpy(cp.pages.data() + size_t(slot) * hv::kPageSize, page, hv::kPageSize);
    });
}

void Primary::make_room(Checkpoint& cp, uint64_t pages) {
    // Only pages not in cp yet are added: never more than the rest of the guest. Nor room
    // past what is kept, which would make the buffer one that is freed at its return.
    const size_t have = cp.pages.size(), kept = kept_buffer_bytes();
    const uint64_t below_kept = have < kept ? (kept - have) / hv::kPageSize : 0;
    pages = std::min({std::max(pages, kMinRoomPages), vm_.memory().page_count() - cp.indices.size(), below_kept});
    cp.pages.reserve_faulted(have + pages * hv::kPageSize);
    cp.indices.reserve(cp.indices.size() + pages);
}

Result<void> Primary::copy_disk_blocks(Checkpoint* cp) {
    constexpr uint64_t kBlock = hv::kDiskBlockBytes;
    constexpr uint64_t kRunBlocks = 256; // one read covers at most this many blocks
    if (cp) cp->disks.resize(disks_.size());
    for (size_t i = 0; i < disks_.size(); ++i) {
        Bitmap& written = disk_written_[i];
        written.clear_all();
        disks_[i]->harvest_written(written);
        if (!cp) continue;
        // Runs of consecutive blocks, each read at once.
        uint64_t first = 0, count = 0;
        auto flush = [&]() -> Result<void> {
            if (count == 0) return {};
            disk_read_.resize(count * kBlock);
            US_TRYV(disks_[i]->read_at(first * kBlock, disk_read_));
            for (uint64_t k = 0; k < count; ++k)
                std::memcpy(cp->disks[i].place(first + k), disk_read_.data() + k * kBlock, kBlock);
            count = 0;
            return {};
        };
        Result<void> r;
        written.for_each_set([&](size_t b) {
            if (!r) return;
            if (count > 0 && (b != first + count || count == kRunBlocks)) r = flush();
            if (count == 0) first = b;
            ++count;
        });
        US_TRYV(std::move(r));
        US_TRYV(flush());
    }
    return {};
}

std::unique_ptr<Primary::Checkpoint> Primary::take_buffer() {
    std::lock_guard lock(mu_);
    if (spare_.empty()) return std::make_unique<Checkpoint>();
    auto cp = std::move(spare_.back());
    spare_.pop_back();
    return cp;
}

size_t Primary::kept_buffer_bytes() const {
    // A guest that dirties more than 64 MiB an epoch keeps buffers its size: freeing them
    // would grow a fresh one, page faults and copies included, for every checkpoint.
    return std::max(kKeptBufferBytes, std::bit_ceil(2 * peak_checkpoint_pages_.load() * hv::kPageSize));
}

void Primary::return_buffer(std::unique_ptr<Checkpoint> cp) {
    const bool too_large = cp->pages.capacity() > (cp->resync ? kKeptBufferBytes : kept_buffer_bytes());
    cp->indices.clear();
    cp->pages.clear(); // keeps its allocation, already faulted in
    cp->state = {};
    cp->verify.reset();
    cp->resync = false;
    for (auto& d : cp->disks) {
        d.clear();
        if (d.data.capacity() > kKeptBufferBytes) std::vector<uint8_t>().swap(d.data);
    }
    // A resync's buffer holds all of guest memory: not kept for reuse at that size.
    if (too_large) {
        cp->pages.release();
        std::vector<uint64_t>().swap(cp->indices);
    }
    std::lock_guard lock(mu_);
    if (spare_.size() < cfg_.max_in_flight + 2) spare_.push_back(std::move(cp));
}

// Pause, take what changed since the last harvest and the whole state, resume.
Result<std::unique_ptr<Primary::Checkpoint>> Primary::capture(uint64_t epoch, bool resume,
                                                              const std::function<void(hv::Checkpointable&)>& paused,
                                                              std::optional<VerifySlice> verify) {
    auto cp = std::move(building_);
    if (!cp) cp = take_buffer();
    cp->epoch = epoch;
    make_room(*cp, 2 * last_round_pages_);
    uint64_t t0 = now_ns();
    vm_.pause_all();
    uint64_t t1 = now_ns();
    dirty_.clear_all();
    auto harvested = vm_.harvest_dirty(dirty_);
    uint64_t t2 = now_ns();
    Result<hv::VmState> state = harvested ? vm_.save_state() : Result<hv::VmState>(harvested.error());
    uint64_t t3 = now_ns(), t4 = t3, t5 = t3;
    if (state) {
        copy_dirty(*cp, dirty_);
        cp->copied_at_pause = dirty_.count();
        last_round_pages_ = cp->copied_at_pause;
        // Every write the guest's disks completed is in: no request is in flight at a pause.
        if (auto copied = copy_disk_blocks(cp.get()); !copied) state = std::move(copied.error());
    }
    if (state) {
        t4 = t5 = now_ns();
        if (verify) {
            // The VM as it is at this pause, which the backup holds once it commits this
            // checkpoint (the plan sized `pages`).
            verify->state = state_digests(*state);
            for (size_t i = 0; i < verify->pages.size(); ++i)
                verify->pages[i] = page_digest(vm_.memory().page_ptr(verify->first_page + i));
            cp->verify = std::move(verify);
            t5 = now_ns();
        }
        if (hooks_.on_capture) hooks_.on_capture(epoch, vm_);
        if (paused) paused(vm_);
    }
    if (resume || !state) vm_.resume_all();
    cp->pause_ns = now_ns() - t0;
    cp->stop_ns = t1 - t0;
    cp->harvest_ns = t2 - t1;
    cp->state_ns = t3 - t2;
    cp->copy_ns = t4 - t3;
    cp->verify_ns = t5 - t4;
    if (!state) return std::move(state.error()).wrap("capturing checkpoint " + std::to_string(epoch));
    cp->state = std::move(*state);
    for (uint64_t idx : cp->indices) slot_of_page_[idx] = -1;
    if (!cp->resync) {
        const uint64_t n = cp->indices.size(), peak = peak_checkpoint_pages_;
        last_checkpoint_pages_ = n;
        peak_checkpoint_pages_ = std::max(n, peak - peak / kPeakDecay);
    }
    return cp;
}

Result<void> Primary::initial_sync() {
    auto& mem = vm_.memory();
    const uint64_t n = mem.page_count();
    CheckpointWriter w(*conn_, encoder_, cfg_.batch_pages, session_id_);
    US_TRYV(w.begin(1, kCheckpointInitial));
    SyncProgress prog;
    prog.bytes_total = mem.size();
    auto t_start = steady_clock::now();
    std::vector<uint64_t> idx;
    std::vector<uint8_t> buf;
    // Reported after every batch, so that a long first round shows its progress.
    auto sent = [&](size_t pages) {
        prog.bytes_sent += pages * hv::kPageSize;
        prog.rate_bytes_per_s = double(prog.bytes_sent) / std::max(1e-9, duration<double>(steady_clock::now() - t_start).count());
        if (hooks_.on_sync_progress) hooks_.on_sync_progress(prog);
    };
    auto send_pages = [&](auto&& for_each_page) -> Result<void> {
        idx.clear();
        buf.clear();
        Result<void> r;
        for_each_page([&](uint64_t p) {
            if (!r) return;
            idx.push_back(p);
            buf.insert(buf.end(), mem.page_ptr(p), mem.page_ptr(p) + hv::kPageSize);
            if (idx.size() == 4096) {
                r = w.pages(idx, buf);
                if (r) sent(idx.size());
                idx.clear();
                buf.clear();
            }
        });
        US_TRYV(std::move(r));
        if (!idx.empty()) US_TRYV(w.pages(idx, buf));
        sent(idx.size());
        return {};
    };

    // Round 0: everything, while the guest runs. Tracking restarts first, so that every
    // page and block written from here on is sent again in a later round or at the pause.
    dirty_.clear_all();
    US_TRYV(vm_.harvest_dirty(dirty_));
    US_TRYV(copy_disk_blocks(nullptr));
    for (auto* d : disks_) prog.bytes_total += d->size_bytes(); // compared, then sent where it differs
    prog.pages_this_round = n;
    US_TRYV(send_pages([&](auto&& f) {
        for (uint64_t p = 0; p < n; ++p) f(p);
    }));
    US_TRYV(sync_disks(w, [&](uint64_t bytes) { sent(bytes / hv::kPageSize); }));
    uint64_t previous = n;
    for (unsigned round = 1; round <= cfg_.max_sync_rounds && !stopping_; ++round) {
        dirty_.clear_all();
        US_TRYV(vm_.harvest_dirty(dirty_));
        uint64_t count = dirty_.count();
        prog.round = round;
        prog.pages_this_round = count;
        US_TRYV(send_pages([&](auto&& f) { dirty_.for_each_set([&](size_t p) { f(p); }); }));
        // The blocks written meanwhile (the checkpoint buffer is a scratch here).
        if (!disks_.empty()) {
            auto scratch = take_buffer();
            US_TRYV(copy_disk_blocks(scratch.get()));
            for (size_t i = 0; i < disks_.size(); ++i) US_TRYV(w.disk_blocks(uint32_t(i), scratch->disks[i]));
            return_buffer(std::move(scratch));
        }
        // Stop when the dirty set no longer shrinks much, or is already small.
        if (count <= 1024 || count * 10 > previous * 9) break;
        previous = count;
    }
    // What the last round's sending let the guest dirty is copied before the pause, so
    // that the stop-and-copy pause only copies what changes after this.
    US_TRYV(copy_while_running());
    auto cp = US_TRY(capture(1));
    US_TRYV(w.pages(cp->indices, cp->pages.bytes()));
    for (size_t i = 0; i < cp->disks.size(); ++i) US_TRYV(w.disk_blocks(uint32_t(i), cp->disks[i]));
    US_TRYV(w.state(cp->state));
    {
        std::lock_guard lock(mu_);
        EpochFigures f;
        f.epoch = 1;
        fill_pause(f, *cp);
        f.ack_ns = now_ns();
        in_flight_.push_back({f});
    }
    auto ws = US_TRY(w.end());
    record_sent(1, ws);
    return {};
}

namespace {
// Whether [begin, end) holds any of the data extents (sorted, disjoint).
bool has_data(const std::vector<std::pair<uint64_t, uint64_t>>& extents, uint64_t begin, uint64_t end) {
    auto it = std::upper_bound(extents.begin(), extents.end(), begin, [](uint64_t b, const auto& e) { return b < e.second; });
    return it != extents.end() && it->first < end;
}
} // namespace

// Each disk is compared with the backup's copy chunk by chunk: the primary sends every
// chunk's digest, the backup answers which of its chunks differ, and only those are sent
// (a chunk that is a hole here as DISK_ZERO). Digests are taken while the guest runs,
// after tracking restarted: a chunk written since is sent again by the rounds or the pause.
Result<void> Primary::sync_disks(CheckpointWriter& w, const std::function<void(uint64_t)>& progress) {
    std::vector<std::vector<std::pair<uint64_t, uint64_t>>> extents;
    std::vector<uint8_t> chunk(kDiskChunkBytes, 0);
    const ChunkDigest zero = chunk_digest(chunk, session_id_);
    std::deque<std::tuple<uint32_t, uint64_t, size_t>> asked; // (disk, first chunk, count), in order
    {
        std::lock_guard lock(mu_);
        disk_sync_.assign(disks_.size(), {});
    }
    for (uint32_t i = 0; i < disks_.size(); ++i) {
        extents.push_back(US_TRY(disks_[i]->data_extents()));
        const uint64_t chunks = disk_chunks(disks_[i]->size_bytes());
        for (uint64_t first = 0; first < chunks; first += kMaxDigestsPerRecord) {
            DiskDigests d{i, first, std::vector<ChunkDigest>(std::min<uint64_t>(kMaxDigestsPerRecord, chunks - first))};
            for (size_t k = 0; k < d.digests.size(); ++k) {
                const uint64_t at = (first + k) * kDiskChunkBytes;
                if (!has_data(extents[i], at, at + kDiskChunkBytes)) {
                    d.digests[k] = zero;
                    continue;
                }
                US_TRYV(disks_[i]->read_at(at, chunk));
                d.digests[k] = chunk_digest(chunk, session_id_);
            }
            US_TRYV(w.disk_digests(d));
            US_TRYV(w.flush()); // the backup compares while this side goes on
            asked.emplace_back(i, first, d.digests.size());
            progress(d.digests.size() * kDiskChunkBytes);
        }
    }
    for (; !asked.empty(); asked.pop_front()) {
        DiskWant want;
        {
            std::unique_lock lock(mu_);
            cv_.wait(lock, [&] { return stopping_ || !disk_wants_.empty(); });
            if (stopping_) return make_error(Errc::state, "replication stopped during the disks' initial synchronization");
            want = std::move(disk_wants_.front());
            disk_wants_.pop_front();
        }
        if (std::make_tuple(want.disk, want.first_chunk, want.differs.size()) != asked.front())
            return make_error(Errc::invalid_input, "the backup's DISK_WANT does not answer the DISK_DIGESTS it follows");
        auto& ex = extents[want.disk];
        auto& fig = disk_sync_[want.disk];
        const uint64_t blocks = hv::disk_blocks(disks_[want.disk]->size_bytes());
        for (size_t k = 0; k < want.differs.size(); ++k) {
            ++fig.chunks;
            if (!want.differs[k]) continue;
            ++fig.chunks_differing;
            const uint64_t first_block = (want.first_chunk + k) * kDiskChunkBlocks;
            const uint64_t count = std::min(kDiskChunkBlocks, blocks - first_block);
            const uint64_t at = first_block * hv::kDiskBlockBytes;
            if (!has_data(ex, at, at + kDiskChunkBytes)) {
                US_TRYV(w.disk_zero({want.disk, first_block, count}));
                continue;
            }
            std::vector<uint64_t> idx(count);
            for (uint64_t b = 0; b < count; ++b) idx[b] = first_block + b;
            US_TRYV(disks_[want.disk]->read_at(at, std::span(chunk).first(count * hv::kDiskBlockBytes)));
            US_TRYV(w.disk_blocks(want.disk, idx, std::span<const uint8_t>(chunk).first(count * hv::kDiskBlockBytes)));
            fig.bytes_sent += count * hv::kDiskBlockBytes;
        }
    }
    for (uint32_t i = 0; i < disks_.size(); ++i)
        log::info("replication: disk {}: {} of {} chunks of 256 KiB differed from the backup's copy; {} KiB of blocks sent", i,
                  disk_sync_[i].chunks_differing, disk_sync_[i].chunks, disk_sync_[i].bytes_sent >> 10);
    return {};
}

std::vector<DiskSyncFigures> Primary::disk_sync() const {
    std::lock_guard lock(mu_);
    return disk_sync_;
}

Result<uint64_t> Primary::copy_while_running(bool everything) {
    if (!building_) {
        building_ = take_buffer();
        const uint64_t last = last_checkpoint_pages_;
        make_room(*building_, last + last / 4);
    }
    dirty_.clear_all();
    US_TRYV(vm_.harvest_dirty(dirty_)); // restarts tracking: later writes are copied again
    if (everything) {
        for (size_t p = 0; p < dirty_.size(); ++p) dirty_.set(p);
        building_->resync = true;
    }
    copy_dirty(*building_, dirty_);
    US_TRYV(copy_disk_blocks(building_.get()));
    const uint64_t copied = dirty_.count();
    if (!everything) last_round_pages_ = copied; // a resync's copy says nothing of the pause
    return copied;
}

Result<void> Primary::epoch_loop() {
    // The epoch thread runs at real-time priority where allowed, below the heartbeats: on
    // a host whose cores are busy with the guest, the stream and the backup, a copy round
    // that loses its core runs long and leaves its pages to the pause. bench_pipeline,
    // churn at 500,000 pages/s (about 11,000 pages a checkpoint) on 2 cores, pause less
    // the vCPUs' stop p99: 159-192 us, against 755-1,731 us at normal priority. The price
    // on those cores: the writers reached 4-8 % less of their rate (`--epoch-priority
    // normal` chooses the guest's throughput instead).
    if (int rc = cfg_.realtime_epoch ? set_thread_realtime(kCheckpointPriority) : 0; rc != 0) {
        static std::once_flag told;
        std::call_once(told, [rc] {
            log::warn("replication: the epoch thread at normal priority ({}): real-time priority needs CAP_SYS_NICE "
                      "or RLIMIT_RTPRIO; on a busy host the pause may be longer",
                      std::strerror(rc));
        });
    }
    for (uint64_t epoch = 2; !stopping_; ++epoch) {
        auto start = steady_clock::now();
        std::unique_lock lock(mu_);
        if (std::exchange(verify_.resync, false)) {
            ++verify_.totals.resyncs;
            lock.unlock();
            log::warn("replication: full resync: checkpoint {} carries every page of guest memory", epoch);
            US_TRYV(copy_while_running(true));
            lock.lock();
        }
        // The epoch ends at its full length or earlier when output asks for it.
        auto end = [&] { return early_end_ ? std::min(start + cfg_.epoch, *early_end_) : start + cfg_.epoch; };
        auto wait_until = [&](steady_clock::time_point t) {
            while (!stopping_ && steady_clock::now() < std::min(t, end()))
                cv_.wait_until(lock, std::min(t, end()));
        };
        bool pause_now = false; // the last in-epoch round has just run
        if (cfg_.in_epoch_copy) {
            wait_until(start + cfg_.epoch / 2);
            if (stopping_) break;
            // Copy what is dirty so far while the guest runs; whatever it writes after a
            // harvest is logged again and copied by the next round or at the pause. Near
            // the epoch's end the rounds run back to back, as pre-copy does, starting at
            // most twice the first round's time before the end (which bounds what a guest
            // rewriting a large hot set costs in copies). Once a later round finds fewer
            // than kPauseCopyGoalPages pages, the last rounds start when RoundModel says
            // they end at the pause (at least epoch / kFinalRoundLeadDivisor before it:
            // a shorter lead was less than the thread's wake-up, the last rounds were
            // skipped, and the pause copied all the guest wrote since the round before),
            // run back to back until one finds fewer than kLastRoundPages, and the pause
            // follows at once (the epoch may end a little early). A first round that finds
            // fewer than kPauseCopyGoalPages ends the rounds: the guest is quiet.
            RoundModel model(start);
            steady_clock::duration first_round{};
            bool converged = false, finishing = false, late_round = false;
            for (bool first = true; !stopping_; first = false) {
                if (!first && !finishing) {
                    const auto lead = converged ? std::clamp<steady_clock::duration>(model.lead(end()),
                                                                                     cfg_.epoch / kFinalRoundLeadDivisor,
                                                                                     cfg_.epoch / 4)
                                                : std::min<steady_clock::duration>(cfg_.epoch / 4, 2 * first_round);
                    wait_until(end() - lead);
                }
                if (stopping_) break;
                if (steady_clock::now() >= end()) {
                    // Past the end, a last round that still found many pages gets one more,
                    // shorter round: a slightly longer epoch for a much shorter pause. An
                    // epoch that output ended early goes straight to its pause.
                    if (!finishing || early_end_ || late_round) break;
                    late_round = true;
                }
                lock.unlock();
                const auto t0 = steady_clock::now();
                const uint64_t pages = US_TRY(copy_while_running());
                const auto took = steady_clock::now() - t0;
                model.observe(t0, took, pages);
                if (first) first_round = took;
                lock.lock();
                if (converged) {
                    finishing = true;
                    if (pages < kLastRoundPages) {
                        pause_now = true;
                        break;
                    }
                } else if (pages < kPauseCopyGoalPages) {
                    if (first) break; // a quiet guest: the pause is short anyway
                    converged = true;
                }
            }
        }
        if (!pause_now) wait_until(end());
        // Backpressure: no more than max_in_flight unacknowledged checkpoints. While
        // waiting, keep copying every half epoch so the pause stays short.
        for (;;) {
            if (auto stalled = backup_stalled_locked()) {
                // It still heartbeats, so it would hear a close as a dead primary and promote.
                const bool goodbye = heartbeat_ && handover_.phase() != HandoverPhase::unanswered &&
                                     handover_.phase() != HandoverPhase::awaiting_verdict;
                lock.unlock();
                if (goodbye) heartbeat_->goodbye();
                return *stalled;
            }
            if (stopping_ || unacked_locked() < cfg_.max_in_flight) break;
            if (cv_.wait_for(lock, cfg_.epoch / 2, [&] { return stopping_ || unacked_locked() < cfg_.max_in_flight; })) continue;
            if (!cfg_.in_epoch_copy) continue;
            lock.unlock();
            US_TRYV(copy_while_running());
            lock.lock();
        }
        if (stopping_) break;
        early_end_.reset(); // output from here on belongs to the next checkpoint
        const bool last = handover_.phase() == HandoverPhase::requested;
        std::function<void(hv::Checkpointable&)> paused;
        if (paused_request_ && !paused_request_->done_at) paused = paused_request_->fn;
        if (vm_.stop_reason()) break; // the guest is gone; nothing left to protect
        auto slice = plan_verify_slice_locked(epoch);
        lock.unlock();
        auto cp = US_TRY(capture(epoch, !last, paused, std::move(slice)));
        lock.lock();
        if (paused) paused_request_->done_at = epoch;
        if (last) handover_step_locked(HandoverEvent::captured, epoch);
        EpochFigures f;
        f.epoch = epoch;
        fill_pause(f, *cp);
        f.ack_ns = now_ns(); // resume time until the ACK replaces it with the delay
        in_flight_.push_back({f});
        to_send_.push_back(std::move(cp));
        cv_.notify_all();
        lock.unlock();
        if (last && finish_handover(epoch)) break;
    }
    return {};
}

Result<uint64_t> Primary::hand_over(std::function<Result<void>()> check, std::chrono::milliseconds answer_limit) {
    std::unique_lock lock(mu_);
    if (stopping_ || control_done_) return make_error(Errc::state, "replication has ended");
    if (!heartbeat_) return make_error(Errc::state, "a handover needs the control connection (heartbeats)");
    if (acked_ == 0) return make_error(Errc::state, "the backup holds no checkpoint yet (initial synchronization)");
    if (paused_request_) return make_error(Errc::state, "another action on the checkpoints is under way");
    US_TRYV(handover_.on(HandoverEvent::request));
    handover_request_ = HandoverRequest{std::move(check), answer_limit, std::nullopt};
    early_end_ = steady_clock::now(); // this epoch ends now
    cv_.notify_all();
    cv_.wait(lock, [&] { return handover_request_->outcome || control_done_; });
    Result<uint64_t> outcome = make_error(Errc::state, "replication ended");
    if (handover_request_->outcome) outcome = *handover_request_->outcome;
    else if (error_) outcome = Error(*error_).wrap("replication failed");
    // Replication ended before the last checkpoint was taken or acknowledged.
    if (handover_.phase() == HandoverPhase::requested || handover_.phase() == HandoverPhase::draining)
        handover_step_locked(HandoverEvent::abandoned);
    handover_request_.reset();
    return outcome;
}

Result<uint64_t> Primary::while_paused(std::function<void(hv::Checkpointable&)> fn) {
    std::unique_lock lock(mu_);
    if (stopping_ || control_done_) return make_error(Errc::state, "replication has ended");
    if (acked_ == 0) return make_error(Errc::state, "the initial synchronization is still running; try again once protected");
    if (paused_request_ || handover_request_) return make_error(Errc::state, "another action on the checkpoints is under way");
    paused_request_ = PausedRequest{std::move(fn), std::nullopt};
    early_end_ = steady_clock::now(); // this epoch ends now
    cv_.notify_all();
    cv_.wait(lock, [&] { return paused_request_->done_at || control_done_; });
    Result<uint64_t> outcome = make_error(Errc::state, "replication ended before the next checkpoint");
    if (paused_request_->done_at) outcome = *paused_request_->done_at;
    paused_request_.reset();
    return outcome;
}

bool Primary::handed_over() const {
    std::lock_guard lock(mu_);
    return handover_.phase() == HandoverPhase::handed_over;
}

namespace {
// How long a backup that has a handover's request may take to answer it, or to
// acknowledge the last checkpoint before it: at least 5 s, whatever the answer limit.
std::chrono::milliseconds answer_grace(std::chrono::milliseconds limit) {
    return std::max(limit, std::chrono::milliseconds(5000));
}
} // namespace

bool Primary::finish_handover(uint64_t epoch) {
    std::unique_lock lock(mu_);
    const auto check = handover_request_->check;
    const auto limit = handover_request_->answer_limit;
    // Every checkpoint acknowledged and its output released: the backup's copy is the
    // guest as it is now, paused, and nothing of it is still held here.
    // Bounded: a backup that heartbeats but does not acknowledge would otherwise keep the
    // guest paused for good. HANDOVER is not sent yet, so giving up is safe.
    const auto ack_limit = answer_grace(limit);
    const bool acked = cv_.wait_for(lock, ack_limit, [&] { return stopping_ || (in_flight_.empty() && reporting_ == 0); });
    Result<uint64_t> outcome = epoch;
    Result<void> ok;
    if (!stopping_ && acked) {
        lock.unlock();
        ok = check ? check() : Result<void>();
        lock.lock();
    }
    if (stopping_) {
        outcome = make_error(Errc::state, "replication failed before the handover was asked for: " +
                                              (error_ ? error_->describe() : std::string("stopped")));
        handover_step_locked(HandoverEvent::abandoned);
    } else if (!acked) {
        outcome = make_error(Errc::timeout, "the backup did not acknowledge the last checkpoint within " +
                                                std::to_string(ack_limit.count()) + " ms; the VM runs on, protected");
        handover_step_locked(HandoverEvent::abandoned);
    } else if (!ok) {
        outcome = std::move(ok.error()).wrap("handover refused");
        handover_step_locked(HandoverEvent::abandoned);
    } else {
        handover_step_locked(HandoverEvent::asked);
        lock.unlock();
        auto answer = heartbeat_->request_handover(epoch, limit);
        auto stream_ended = [&] {
            std::lock_guard relock(mu_);
            return stream_ended_;
        };
        // A backup that shut the stream has the request and answers it: HANDOVER_ACCEPT, or
        // GOODBYE for no. A late answer must not find the guest running here again.
        if (answer == HeartbeatLink::HandoverAnswer::unanswered && stream_ended())
            answer = heartbeat_->await_handover(epoch, answer_grace(limit));
        // The control connection failed first: the stream's end, if the backup shut it, may
        // still be on its way.
        if (answer == HeartbeatLink::HandoverAnswer::failed && !stream_ended()) {
            std::unique_lock relock(mu_);
            cv_.wait_for(relock, answer_grace(limit), [&] { return stream_ended_; });
        }
        bool uncertain = false;
        if (answer == HeartbeatLink::HandoverAnswer::refused) {
            fail(make_error(Errc::state, "the backup refused the handover and ended the session"));
            answer = HeartbeatLink::HandoverAnswer::failed;
        } else if (answer != HeartbeatLink::HandoverAnswer::accepted && stream_ended()) {
            // The backup had the request, and neither its yes nor its no arrived: it may run
            // the VM already. Running on here could make two; the VM stays paused.
            uncertain = true;
        }
        lock.lock();
        if (uncertain) {
            handover_step_locked(HandoverEvent::answer_lost);
            stopping_ = true; // no GOODBYE: the backup may run the VM
            outcome = make_error(Errc::state, "the backup had the handover request for checkpoint " + std::to_string(epoch) +
                                                  " but its answer never arrived: this host cannot tell whether the backup "
                                                  "runs the VM; the VM stays paused");
        } else if (answer == HeartbeatLink::HandoverAnswer::unanswered) {
            outcome = make_error(Errc::timeout, "the backup did not answer the handover within " + std::to_string(limit.count()) +
                                                    " ms (it runs without --promote, or an older version); the VM runs on, protected");
            // The backup may still answer: until it acknowledges a later checkpoint, a
            // failure waits for its verdict (late_answer_decides). A stream that ended
            // since the check above is found by the next send, which fails into it.
            handover_step_locked(HandoverEvent::no_answer, 0, answer_grace(limit));
        } else if (answer == HeartbeatLink::HandoverAnswer::failed) {
            outcome = make_error(Errc::state, "the backup failed during the handover: " +
                                                  (error_ ? error_->describe() : std::string("the control connection ended")) +
                                                  "; the VM runs on, unprotected");
            handover_step_locked(HandoverEvent::refused);
        } else {
            handover_step_locked(HandoverEvent::accepted);
            stopping_ = true; // no GOODBYE: the backup already runs the VM
        }
    }
    handover_request_->outcome = outcome;
    const HandoverPhase phase = handover_.phase();
    lock.unlock();
    cv_.notify_all();
    if (phase == HandoverPhase::uncertain) conn_->shutdown();
    const bool done = phase == HandoverPhase::handed_over || phase == HandoverPhase::uncertain;
    if (!done) vm_.resume_all();
    return done;
}

void Primary::control_main() {
    auto r = handshake();
    if (r) {
        receiver_ = std::thread([this] { receiver_main(); });
        r = initial_sync();
    }
    if (r) {
        sender_ = std::thread([this] { sender_main(); });
        r = epoch_loop();
    }
    if (!r) fail(std::move(r.error()));
    {
        std::lock_guard lock(mu_);
        if (r) finished_ = true;
        control_done_ = true;
    }
    cv_.notify_all();
    stop();
}

void Primary::sender_main() {
    CheckpointWriter w(*conn_, encoder_, cfg_.batch_pages, session_id_);
    for (;;) {
        std::unique_ptr<Checkpoint> cp;
        {
            std::unique_lock lock(mu_);
            cv_.wait(lock, [&] { return stopping_ || !to_send_.empty(); });
            if (stopping_) return;
            cp = std::move(to_send_.front());
            to_send_.pop_front();
        }
        if (hooks_.tamper) hooks_.tamper(cp->epoch, cp->indices, cp->pages, cp->state);
        // A resync puts right a replica whose pages may be wrong on the backup's side: no
        // page of it may be encoded against the backup's copy (SAME, XOR_LZ4).
        if (cp->resync) encoder_.reset();
        auto r = [&]() -> Result<WriterStats> {
            US_TRYV(w.begin(cp->epoch, 0));
            US_TRYV(w.pages(cp->indices, cp->pages.bytes()));
            for (size_t i = 0; i < cp->disks.size(); ++i) US_TRYV(w.disk_blocks(uint32_t(i), cp->disks[i]));
            US_TRYV(w.state(cp->state));
            auto ws = US_TRY(w.end());
            // Between checkpoints: the backup compares it with the checkpoint it just committed.
            if (cp->verify) US_TRYV(conn_->send_record(kVerify, encode_verify(*cp->verify)));
            return ws;
        }();
        if (!r) {
            fail(std::move(r.error()).wrap("sending checkpoint " + std::to_string(cp->epoch)));
            return;
        }
        uint64_t epoch = cp->epoch;
        return_buffer(std::move(cp));
        record_sent(epoch, *r);
    }
}

std::optional<Error> Primary::backup_stalled_locked() {
    const auto now = steady_clock::now();
    const std::pair<uint64_t, uint64_t> seen{acked_.load(), conn_->bytes_sent()};
    if (seen != progress_seen_ || unacked_locked() == 0) {
        progress_seen_ = seen;
        progress_at_ = now;
        return std::nullopt;
    }
    if (now - progress_at_ < cfg_.ack_timeout) return std::nullopt;
    uint64_t waiting = 0;
    for (const auto& e : in_flight_)
        if (!e.acked) {
            waiting = e.f.epoch;
            break;
        }
    return make_error(Errc::timeout, "the backup acknowledged no checkpoint and took no byte of the stream for " +
                                         std::to_string(cfg_.ack_timeout.count()) + " ms (checkpoint " +
                                         std::to_string(waiting) + " waits for its ACK); it is given up");
}

size_t Primary::unacked_locked() const {
    size_t n = 0;
    for (const auto& e : in_flight_) n += !e.acked;
    return n;
}

std::vector<EpochFigures> Primary::retire_locked() {
    std::vector<EpochFigures> out;
    while (!in_flight_.empty() && in_flight_.front().sent && in_flight_.front().acked) {
        out.push_back(in_flight_.front().f);
        done_.push_back(in_flight_.front().f);
        if (done_.size() > kFiguresKept) done_.pop_front();
        in_flight_.pop_front();
    }
    return out;
}

void Primary::record_sent(uint64_t epoch, const WriterStats& ws) {
    std::vector<EpochFigures> finished;
    {
        std::lock_guard lock(mu_);
        for (auto& e : in_flight_)
            if (e.f.epoch == epoch) {
                e.f.raw_bytes = ws.raw_bytes;
                e.f.wire_bytes = ws.wire_bytes;
                e.f.encode_ns = ws.encode_ns;
                e.f.transmit_ns = ws.transmit_ns;
                e.f.codec = ws.codec;
                e.sent = true;
            }
        finished = retire_locked(); // the ACK may have beaten us here
        reporting_ += !finished.empty();
    }
    report_acked(finished);
}

void Primary::report_acked(const std::vector<EpochFigures>& figures) {
    if (figures.empty()) return;
    if (hooks_.on_acked)
        for (const auto& f : figures) hooks_.on_acked(f);
    {
        std::lock_guard lock(mu_);
        --reporting_;
    }
    cv_.notify_all();
}

void Primary::receiver_main() {
    for (;;) {
        auto r = conn_->recv_record();
        if (!r) {
            bool expected;
            {
                std::lock_guard lock(mu_);
                expected = stopping_ || handover_.phase() == HandoverPhase::asking; // a backup taking over closes the stream
                stream_ended_ = true;
            }
            cv_.notify_all(); // finish_handover may be waiting to see the backup shut the stream
            if (!expected) fail(std::move(r.error()).wrap("the backup connection"));
            return;
        }
        if (r->type == kHeartbeat) continue;
        if (r->type == kVerifyResult) {
            if (auto taken = take_verify_result(*r); !taken) {
                fail(std::move(taken.error()));
                return;
            }
            continue;
        }
        if (r->type == kDiskWant) {
            auto want = decode_disk_want(r->body);
            if (!want) {
                fail(std::move(want.error()));
                return;
            }
            {
                std::lock_guard lock(mu_);
                disk_wants_.push_back(std::move(*want));
            }
            cv_.notify_all();
            continue;
        }
        if (r->type == kReject) {
            fail(make_error(Errc::invalid_input, "the backup rejected the stream: " + std::string(r->body.begin(), r->body.end())));
            return;
        }
        if (r->type != kAck) {
            fail(make_error(Errc::invalid_input, std::string("unexpected ") + record_type_name(r->type) + " from the backup"));
            return;
        }
        Decoder d(r->body, "ACK");
        auto epoch = d.u64();
        if (!epoch) {
            fail(std::move(epoch.error()));
            return;
        }
        std::vector<EpochFigures> acked;
        std::vector<VerifyReport> unanswered;
        bool bogus = false;
        {
            std::lock_guard lock(mu_);
            bool known = false;
            for (const auto& e : in_flight_) known |= e.f.epoch == *epoch && !e.acked;
            if (!known) {
                bogus = true;
            } else {
                uint64_t now = now_ns();
                for (auto& e : in_flight_)
                    if (e.f.epoch <= *epoch && !e.acked) {
                        e.acked = true;
                        e.f.ack_ns = now - e.f.ack_ns;
                    }
                acked_ = *epoch;
                verify_acked_locked(*epoch, unanswered);
                handover_step_locked(HandoverEvent::acked, *epoch);
                acked = retire_locked();
                reporting_ += !acked.empty();
            }
        }
        cv_.notify_all();
        if (bogus) {
            fail(make_error(Errc::invalid_input, "the backup acknowledged epoch " + std::to_string(*epoch) + ", which is not in flight"));
            return;
        }
        report_verified(unanswered);
        report_acked(acked);
    }
}

Result<uint64_t> Primary::verify() {
    std::lock_guard lock(mu_);
    if (stopping_ || control_done_) return make_error(Errc::state, "replication has ended");
    if (!verify_.totals.backup_verifies)
        return make_error(Errc::state, "the backup does not verify (an older version): an earlier pass went unanswered");
    if (verify_.running) return *verify_.running;
    verify_.requested = true;
    return verify_.next_pass; // plan_verify_slice_locked starts it at the next checkpoint
}

VerifyTotals Primary::verification() const {
    std::lock_guard lock(mu_);
    return verify_.totals;
}

std::optional<VerifySlice> Primary::plan_verify_slice_locked(uint64_t epoch) {
    auto& v = verify_;
    const auto now = steady_clock::now();
    if (!v.running) {
        const bool scheduled = cfg_.verify_interval.count() > 0 && now >= v.next_scheduled;
        if (!v.totals.backup_verifies || !(v.requested || scheduled)) return std::nullopt;
        v.running = v.next_pass++;
        v.next_page = 0;
        v.requested = false;
        v.next_scheduled = now + cfg_.verify_interval;
        v.assembling[*v.running].pass = *v.running;
    }
    const uint64_t pages = vm_.memory().page_count();
    VerifySlice s;
    s.epoch = epoch;
    s.pass = *v.running;
    s.first_page = v.next_page;
    s.pages.resize(std::min<uint64_t>(cfg_.verify_pages_per_checkpoint, pages - v.next_page)); // digests: capture()
    v.next_page += s.pages.size();
    if (v.next_page == pages) {
        s.flags |= kVerifyLastSlice;
        v.running.reset();
    }
    v.awaiting.push_back({epoch, s.pass, s.first_page, static_cast<uint32_t>(s.pages.size()), s.flags});
    return s;
}

Result<void> Primary::take_verify_result(const Record& r) {
    auto o = US_TRY(decode_verify_result(r.body));
    std::vector<VerifyReport> done;
    {
        std::lock_guard lock(mu_);
        auto& v = verify_;
        const auto* asked = v.awaiting.empty() ? nullptr : &v.awaiting.front();
        if (!asked || asked->epoch != o.epoch || asked->pass != o.pass || asked->first_page != o.first_page ||
            asked->page_count != o.page_count || asked->flags != o.flags)
            return make_error(Errc::invalid_input, "the backup answered verification pass " + std::to_string(o.pass) +
                                                       " at checkpoint " + std::to_string(o.epoch) + " with a slice that was not asked");
        v.awaiting.pop_front();
        auto it = v.assembling.find(o.pass);
        if (it == v.assembling.end()) return {}; // the pass was given up as unanswered
        it->second.add(o);
        if (it->second.complete) {
            finish_pass_locked(std::move(it->second), done);
            v.assembling.erase(it);
        }
    }
    report_verified(done);
    return {};
}

void Primary::verify_acked_locked(uint64_t epoch, std::vector<VerifyReport>& to_report) {
    auto& v = verify_;
    if (v.awaiting.empty() || v.awaiting.front().epoch >= epoch) return;
    // The backup skipped VERIFY as an optional record: it does not verify. No more passes.
    v.totals.backup_verifies = false;
    v.running.reset();
    v.requested = false;
    v.awaiting.clear();
    for (auto& [pass, report] : v.assembling) {
        report.unanswered = true;
        finish_pass_locked(std::move(report), to_report);
    }
    v.assembling.clear();
}

void Primary::finish_pass_locked(VerifyReport report, std::vector<VerifyReport>& to_report) {
    auto& t = verify_.totals;
    ++t.passes;
    const bool mismatch = !report.unanswered && !report.matches();
    if (mismatch) {
        ++t.mismatches;
        // Pages only: the state goes whole into every checkpoint, a resync would not change it.
        const bool resync = cfg_.resync_on_mismatch && !report.differing_pages.empty();
        if (resync) verify_.resync = true;
        log::error("replication: {}{}", report.describe(), resync ? "; a full resync follows" : "");
    } else if (report.unanswered) {
        log::warn("replication: {}", report.describe());
    } else {
        log::info("replication: {}", report.describe());
    }
    t.last = report;
    to_report.push_back(std::move(report));
}

void Primary::report_verified(const std::vector<VerifyReport>& reports) {
    if (hooks_.on_verified)
        for (const auto& r : reports) hooks_.on_verified(r);
}

} // namespace understudy::replicator
