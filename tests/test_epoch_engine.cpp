// The epoch engine (replicator::Primary) against a fake VM (tests/support/fake_vm.hpp),
// without KVM: initial synchronization, pause / harvest / capture, pipelined sending,
// ACKs, a requested checkpoint, a stopping guest and the planned handover, with exact
// checks: every committed replica equals the VM at that checkpoint's pause, byte for
// byte, memory and state.
#include <catch2/catch.hpp>

#include <xxhash.h>

#include <algorithm>
#include <cstring>
#include <future>
#include <map>
#include <thread>

#include <pthread.h>
#include <sched.h>
#include <sys/mman.h>
#include <unistd.h>

#include "common/prefault.hpp"
#include "common/thread_priority.hpp"
#include "replicator/primary.hpp"
#include "tests/support/backup_thread.hpp"
#include "tests/support/fake_vm.hpp"
#include "tests/support/link_key.hpp"
#include "tests/support/time_scale.hpp"

using namespace understudy;
using namespace understudy::replicator;
using namespace understudy::test;
using namespace std::chrono;

namespace {

// All of memory and every vCPU's encoded state: equal digests mean equal bytes.
uint64_t vm_digest(const hv::GuestMemory& mem, const hv::VmState& s) {
    XXH3_state_t* st = XXH3_createState();
    XXH3_64bits_reset(st);
    for (uint64_t p = 0; p < mem.page_count(); ++p) XXH3_64bits_update(st, mem.page_ptr(p), hv::kPageSize);
    for (const auto& v : s.vcpus) {
        std::vector<uint8_t> bytes;
        hv::encode_vcpu_state(v, bytes);
        XXH3_64bits_update(st, bytes.data(), bytes.size());
    }
    XXH3_64bits_update(st, &s.guest_time_ns, sizeof s.guest_time_ns);
    uint64_t d = XXH3_64bits_digest(st);
    XXH3_freeState(st);
    return d;
}

// What each side saw at each checkpoint.
struct Digests {
    std::mutex mu;
    std::map<uint64_t, uint64_t> primary, backup;
    std::vector<std::string> capture_errors; // the hooks run off the test thread: checked on it

    BackupHooks backup_hooks() {
        BackupHooks h;
        h.on_commit = [this](uint64_t epoch, const BackupReplica& r) {
            uint64_t d = vm_digest(r.memory(), r.state());
            std::lock_guard lock(mu);
            backup[epoch] = d;
        };
        return h;
    }
    PrimaryHooks primary_hooks() {
        PrimaryHooks h;
        h.on_capture = [this](uint64_t epoch, hv::Checkpointable& vm) { // in the pause, on the primary's thread
            auto s = vm.save_state();
            std::lock_guard lock(mu);
            if (!s) capture_errors.push_back(s.error().describe());
            else primary[epoch] = vm_digest(vm.memory(), *s);
        };
        return h;
    }
    // Every checkpoint the backup committed matches the VM at that pause; returns how many.
    size_t check_all_committed() {
        std::lock_guard lock(mu);
        CHECK(capture_errors.empty());
        for (auto [epoch, d] : backup) {
            INFO("checkpoint " << epoch);
            auto it = primary.find(epoch);
            REQUIRE(it != primary.end());
            CHECK(it->second == d);
        }
        return backup.size();
    }
};

PrimaryConfig config(milliseconds epoch) {
    PrimaryConfig pc;
    pc.security = link_security();
    pc.epoch = epoch;
    pc.heartbeat = {milliseconds(10), scaled(milliseconds(2000))};
    return pc;
}

// A fake VM whose vCPUs run.
std::unique_ptr<FakeVm> running_vm(FakeVmConfig fc = {}) {
    auto vm = FakeVm::create(fc);
    REQUIRE(vm);
    vm->start();
    vm->resume_all();
    return vm;
}

} // namespace

TEST_CASE("every committed checkpoint equals the VM at its pause, vCPU and VMM writes alike", "[epoch]") {
    Digests seen;
    BackupThread backup(seen.backup_hooks());
    FakeVmConfig fc;
    fc.memory_bytes = 16 * hv::kMiB;
    fc.vcpus = 3;
    fc.pages = 600;
    auto vm = running_vm(fc);
    // A "device" writing guest memory from outside the vCPUs, as virtio does.
    std::atomic<uint64_t> device_writes{0};
    std::jthread device([&](std::stop_token stop) { // stopped and joined even when a REQUIRE fails
        for (uint64_t i = 0; !stop.stop_requested(); ++i) {
            if (vm->vmm_write(vm->memory().page_count() - 1 - i % 64, uint8_t(i))) ++device_writes;
            std::this_thread::sleep_for(microseconds(300));
        }
    });
    auto data = connect_to(*backup.server); // the stream first: the backup takes the next one as control
    auto primary = Primary::start(*vm, std::move(data), config(milliseconds(5)), seen.primary_hooks(), connect_to(*backup.server));
    REQUIRE(primary);
    bool reached = wait_until([&] { return (*primary)->acked_epoch() >= 150 || (*primary)->failure(); }, seconds(60));
    device.request_stop();
    device.join();
    INFO(((*primary)->failure() ? (*primary)->failure()->describe() : std::string("no failure")));
    REQUIRE(reached);
    REQUIRE(!(*primary)->failure());
    auto figures = (*primary)->recent_epochs();
    (*primary)->stop();
    CHECK((*primary)->wait());
    backup.wait_sessions(1);
    CHECK(backup.session_errors.empty());

    CHECK(seen.check_all_committed() >= 150);
    CHECK(device_writes.load() > 100);
    uint64_t dirty = 0, xor_pages = 0;
    for (const auto& f : figures) {
        dirty += f.dirty_pages;
        xor_pages += f.codec.count(PageEncoding::xor_lz4);
    }
    CHECK(dirty > 1000);  // checkpoints carried pages...
    CHECK(xor_pages > 0); // ...and the codec sent deltas against the previous versions
}

TEST_CASE("a requested checkpoint ends a long epoch early, once", "[epoch]") {
    Digests seen;
    BackupThread backup(seen.backup_hooks());
    auto vm = running_vm();
    // The epoch (at most the 10 s allowed), the waits and the bound scale together.
    const milliseconds epoch = std::min<milliseconds>(scaled(milliseconds(3000)), seconds(10));
    auto primary = Primary::start(*vm, connect_to(*backup.server), config(epoch), seen.primary_hooks());
    REQUIRE(primary);
    REQUIRE(wait_until([&] { return (*primary)->is_protected(); }, seconds(30)));
    uint64_t before = (*primary)->acked_epoch();
    auto asked = steady_clock::now();
    (*primary)->request_checkpoint(asked + milliseconds(5));
    while ((*primary)->acked_epoch() == before && steady_clock::now() < asked + epoch) std::this_thread::sleep_for(milliseconds(1));
    CHECK((*primary)->acked_epoch() == before + 1);
    CHECK(steady_clock::now() - asked < epoch / 2); // long before the epoch's end
    std::this_thread::sleep_for(epoch / 3);
    CHECK((*primary)->acked_epoch() == before + 1); // consumed: the next epoch runs its length
    (*primary)->stop();
    CHECK((*primary)->wait());
    CHECK(seen.check_all_committed() >= 2);
}

TEST_CASE("a checkpoint buffer's room is faulted in ahead: whole pages resident, no byte changed", "[epoch]") {
    const size_t page = size_t(::sysconf(_SC_PAGESIZE)), pages = 64;
    void* m = ::mmap(nullptr, pages * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    REQUIRE(m != MAP_FAILED);
    auto* p = static_cast<uint8_t*>(m);
    auto resident = [&] {
        std::vector<unsigned char> v(pages);
        REQUIRE(::mincore(m, pages * page, v.data()) == 0);
        std::vector<bool> r;
        for (unsigned char c : v) r.push_back(c & 1);
        return r;
    };
    // Pages 0-1 written (as a buffer's first pages are); the room asked for starts inside
    // page 1 and ends inside page 40.
    for (size_t i = 0; i < 2 * page; ++i) p[i] = uint8_t(i * 7 + 1);
    REQUIRE(resident()[2] == false);
    prefault_for_write(p + page + 100, 39 * page);
    const auto r = resident();
    for (size_t k = 0; k < pages; ++k) {
        INFO("page " << k);
        CHECK(r[k] == (k <= 39)); // 2..39 faulted in; 40, partly asked for, and beyond are not
    }
    for (size_t i = 0; i < 2 * page; ++i) REQUIRE(p[i] == uint8_t(i * 7 + 1));
    for (size_t i = 2 * page; i < pages * page; ++i) REQUIRE(p[i] == 0);
    ::munmap(m, pages * page);
}

TEST_CASE("a checkpoint buffer grows faulted in ahead, its contents kept", "[epoch]") {
    const size_t page = size_t(::sysconf(_SC_PAGESIZE));
    PrefaultedBuffer b;
    // Resident pages of [from, to) bytes of the buffer's allocation (page-aligned).
    auto resident = [&](size_t from, size_t to) {
        REQUIRE(uintptr_t(b.data()) % page == 0);
        std::vector<unsigned char> v((to - from + page - 1) / page);
        REQUIRE(::mincore(b.data() + from, to - from, v.data()) == 0);
        return size_t(std::count_if(v.begin(), v.end(), [](unsigned char c) { return c & 1; }));
    };
    std::vector<uint8_t> src(page);
    auto fill = [&](size_t k) {
        for (size_t i = 0; i < page; ++i) src[i] = uint8_t(k * 31 + i);
    };
    b.reserve_faulted(300 * page); // more than malloc's mmap threshold: fresh pages
    CHECK(b.capacity() == 512 * page);
    CHECK(b.size() == 0);
    CHECK(resident(0, 300 * page) == 300);
    for (size_t k = 0; k < 300; ++k) fill(k), b.append(src.data(), page);
    // Past the room faulted in: room up to the next power of two, faulted in before the copy.
    fill(300);
    b.append(src.data(), page);
    CHECK(b.faulted_bytes() == 512 * page);
    CHECK(resident(0, 512 * page) == 512);
    // A larger allocation: faulted in as far as asked, then the contents moved in.
    const uint8_t* before = b.data();
    b.reserve_faulted(700 * page);
    CHECK(b.data() != before);
    CHECK(b.capacity() == 1024 * page);
    CHECK(resident(0, 700 * page) == 700);
    REQUIRE(b.size() == 301 * page);
    for (size_t k = 0; k < 301; ++k) {
        fill(k);
        INFO("page " << k);
        REQUIRE(std::memcmp(b.data() + k * page, src.data(), page) == 0);
    }
    // Cleared, the allocation stays, faulted in; released, it is gone.
    b.clear();
    CHECK(b.size() == 0);
    CHECK(b.capacity() == 1024 * page);
    CHECK(b.faulted_bytes() == 700 * page);
    b.release();
    CHECK(b.capacity() == 0);
    CHECK(b.data() == nullptr);
}

TEST_CASE("the epoch thread runs at real-time priority where allowed, at normal priority when asked", "[epoch]") {
    // Whether this process may have SCHED_FIFO at that priority at all (root, CAP_SYS_NICE
    // or RLIMIT_RTPRIO), asked on a thread of its own.
    const bool may = std::async(std::launch::async, [] { return set_thread_realtime(kCheckpointPriority) == 0; }).get();
    for (bool realtime : {true, false}) {
        INFO("realtime_epoch " << realtime << ", allowed " << may);
        BackupThread backup;
        auto vm = running_vm();
        std::mutex mu;
        std::map<uint64_t, std::pair<int, int>> policy; // epoch -> (policy, priority) in its pause
        PrimaryHooks hooks;
        hooks.on_capture = [&](uint64_t epoch, hv::Checkpointable&) {
            int pol = -1;
            sched_param sp{};
            (void)pthread_getschedparam(pthread_self(), &pol, &sp);
            std::lock_guard lock(mu);
            policy[epoch] = {pol, sp.sched_priority};
        };
        auto pc = config(milliseconds(25));
        pc.realtime_epoch = realtime;
        auto primary = Primary::start(*vm, connect_to(*backup.server), pc, hooks);
        REQUIRE(primary);
        REQUIRE(wait_until([&] {
            std::lock_guard lock(mu);
            return policy.size() >= 4;
        }, scaled(seconds(30))));
        (*primary)->stop();
        CHECK((*primary)->wait());
        const std::pair<int, int> expected = realtime && may ? std::pair{SCHED_FIFO, kCheckpointPriority} : std::pair{SCHED_OTHER, 0};
        std::lock_guard lock(mu);
        for (const auto& [epoch, seen] : policy) {
            if (epoch < 2) continue; // the initial synchronization's, before the epoch loop
            INFO("checkpoint " << epoch);
            CHECK(seen == expected);
        }
    }
}

TEST_CASE("a guest that stops ends replication; what was committed stays exact", "[epoch]") {
    Digests seen;
    BackupThread backup(seen.backup_hooks());
    auto vm = running_vm();
    auto primary = Primary::start(*vm, connect_to(*backup.server), config(milliseconds(5)), seen.primary_hooks());
    REQUIRE(primary);
    REQUIRE(wait_until([&] { return (*primary)->acked_epoch() >= 20; }, seconds(30)));
    vm->stop_with({hv::VmStopKind::guest_fault, 0, "a test's guest fault"});
    auto ended = std::async(std::launch::async, [&] { return (*primary)->wait(); });
    bool finished = ended.wait_for(scaled(seconds(10))) == std::future_status::ready;
    if (!finished) (*primary)->stop();
    CHECK(finished); // replication ends by itself: there is nothing left to protect
    uint64_t acked = (*primary)->acked_epoch();
    std::this_thread::sleep_for(milliseconds(100));
    CHECK((*primary)->acked_epoch() == acked);
    CHECK(seen.check_all_committed() >= 20);
}

TEST_CASE("a planned handover: the last checkpoint is the VM as it stays paused, byte for byte", "[epoch]") {
    std::mutex mu;
    std::vector<uint8_t> replica_memory;
    hv::VmState replica_state;
    uint64_t committed = 0, handed_at = 0;
    BackupHooks bh;
    bh.on_commit = [&](uint64_t epoch, const BackupReplica& r) {
        std::lock_guard lock(mu);
        committed = epoch;
        replica_memory.assign(r.memory().page_ptr(0), r.memory().page_ptr(0) + r.memory().size());
        replica_state = r.state();
    };
    bh.on_handover = [&](uint64_t epoch) {
        std::lock_guard lock(mu);
        handed_at = epoch;
    };
    BackupThread backup(bh, /*accept_handover=*/true);
    auto vm = running_vm();
    auto data = connect_to(*backup.server);
    auto primary = Primary::start(*vm, std::move(data), config(milliseconds(20)), {}, connect_to(*backup.server));
    REQUIRE(primary);
    REQUIRE(wait_until([&] { return (*primary)->acked_epoch() >= 10; }, seconds(30)));
    auto last = (*primary)->hand_over(nullptr, scaled(milliseconds(5000)));
    INFO((last ? std::string("accepted") : last.error().describe()));
    REQUIRE(last);
    CHECK((*primary)->handed_over());
    // The VM stays paused after an accepted handover: nothing changes past the last checkpoint.
    auto state = vm->save_state();
    REQUIRE(state);
    std::lock_guard lock(mu);
    CHECK(handed_at == *last);
    CHECK(committed == *last);
    REQUIRE(replica_memory.size() == vm->memory().size());
    CHECK(std::memcmp(replica_memory.data(), vm->memory().page_ptr(0), replica_memory.size()) == 0);
    REQUIRE(replica_state.vcpus.size() == state->vcpus.size());
    for (size_t i = 0; i < state->vcpus.size(); ++i) CHECK(replica_state.vcpus[i].regs.rip == state->vcpus[i].regs.rip);
    CHECK(replica_state.guest_time_ns == state->guest_time_ns);
}
namespace {
// A protected VM whose backup answers a HANDOVER only after `answer_after`, and a primary
// that waits 200 ms for that answer: the answer comes late.
struct LateAnswer {
    std::atomic<int> failures{0};
    std::unique_ptr<BackupThread> backup;
    std::unique_ptr<FakeVm> vm;
    std::unique_ptr<Primary> primary;
    uint64_t asked = 0;

    LateAnswer(milliseconds epoch, milliseconds answer_after) {
        BackupHooks bh;
        bh.on_handover = [answer_after](uint64_t) { std::this_thread::sleep_for(answer_after); };
        backup = std::make_unique<BackupThread>(bh, true);
        vm = running_vm();
        PrimaryConfig pc;
        pc.security = link_security();
        pc.epoch = epoch;
        pc.heartbeat = {milliseconds(10), scaled(milliseconds(2000))};
        PrimaryHooks ph;
        ph.on_failure = [this](const Error&) { ++failures; };
        auto data = connect_to(*backup->server); // the stream first: the backup takes the next one as control
        auto p = Primary::start(*vm, std::move(data), pc, ph, connect_to(*backup->server));
        REQUIRE(p);
        primary = std::move(*p);
        auto deadline = deadline_in(seconds(60));
        while (!primary->is_protected() && steady_clock::now() < deadline) std::this_thread::sleep_for(milliseconds(5));
        REQUIRE(primary->is_protected());
        auto r = primary->hand_over(nullptr, milliseconds(200));
        REQUIRE(!r);
        CHECK(r.error().code == Errc::timeout);
        asked = primary->acked_epoch(); // every checkpoint was acknowledged before HANDOVER went
    }
    ~LateAnswer() {
        primary->stop();
        (void)primary->wait();
    }
    // Waits until the primary either learns of a late handover or fails.
    void wait_outcome(seconds limit) {
        auto deadline = deadline_in(limit);
        while (!primary->late_handover() && !primary->failure() && steady_clock::now() < deadline)
            std::this_thread::sleep_for(milliseconds(5));
    }
};
} // namespace

TEST_CASE("a backup that accepts a handover late takes over, and the primary stops instead of failing", "[epoch][handover]") {
    // Epochs of 3 s: the backup answers long before the next checkpoint could reach it.
    LateAnswer t(milliseconds(3000), milliseconds(800));
    t.wait_outcome(seconds(20));
    REQUIRE(t.primary->late_handover());
    CHECK(*t.primary->late_handover() == t.asked);
    CHECK(t.primary->handed_over());
    // No failure: a failure would release the output held since the resume, while the
    // backup runs the VM from the checkpoint before it.
    CHECK_FALSE(t.primary->failure());
    CHECK(t.failures == 0);
    t.backup->wait_sessions(1);
    std::lock_guard lock(t.backup->mu);
    CHECK(t.backup->session_errors.empty()); // the session ended as a handover
    CHECK(t.backup->server->replica()->committed_epoch() == t.asked);
}

TEST_CASE("a late handover request the backup finds overtaken by a later checkpoint is refused; the primary runs on unprotected",
          "[epoch][handover]") {
    // Epochs of 20 ms: the backup acknowledges the next checkpoint before it reads the request.
    LateAnswer t(milliseconds(20), milliseconds(800));
    t.wait_outcome(seconds(20));
    CHECK_FALSE(t.primary->late_handover());
    REQUIRE(t.primary->failure());
    // on_failure runs just after failure() is set, from the thread that found it.
    for (auto deadline = deadline_in(seconds(5)); t.failures == 0 && steady_clock::now() < deadline;)
        std::this_thread::sleep_for(milliseconds(5));
    CHECK(t.failures == 1);
    t.backup->wait_sessions(1);
    std::lock_guard lock(t.backup->mu);
    REQUIRE(t.backup->session_errors.size() == 1);
    CHECK_THAT(t.backup->session_errors[0], Catch::Contains("asked to hand over at checkpoint " + std::to_string(t.asked)));
}

TEST_CASE("a handover the backup did not answer blocks a new one only until it acknowledges a later checkpoint",
          "[epoch][handover]") {
    BackupThread backup({}, /*accept_handover=*/false); // a backup without --promote never answers
    auto vm = running_vm();
    // Epochs of 3 s: no later checkpoint is acknowledged right after the first request.
    auto data = connect_to(*backup.server); // the stream first: the backup takes the next one as control
    auto primary = Primary::start(*vm, std::move(data), config(milliseconds(3000)), {}, connect_to(*backup.server));
    REQUIRE(primary);
    REQUIRE(wait_until([&] { return (*primary)->is_protected(); }, seconds(60)));
    auto first = (*primary)->hand_over(nullptr, milliseconds(200));
    REQUIRE(!first);
    CHECK(first.error().code == Errc::timeout);
    const uint64_t asked = (*primary)->acked_epoch();
    auto again = (*primary)->hand_over(nullptr, milliseconds(200));
    REQUIRE(!again);
    CHECK(again.error().code == Errc::state);
    CHECK_THAT(again.error().message, Catch::Contains("may still accept the handover of checkpoint " + std::to_string(asked)));
    // The VM ran on, protected: the next checkpoint is acknowledged, and a new request goes out.
    REQUIRE(wait_until([&] { return (*primary)->acked_epoch() > asked; }, seconds(30)));
    auto third = (*primary)->hand_over(nullptr, milliseconds(200));
    REQUIRE(!third);
    CHECK(third.error().code == Errc::timeout);
    CHECK_FALSE((*primary)->failure());
    CHECK_FALSE((*primary)->handed_over());
    (*primary)->stop();
    CHECK((*primary)->wait());
}
