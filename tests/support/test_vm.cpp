#include "tests/support/test_vm.hpp"

#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <thread>

#include "hv/snapshot.hpp"
#include "tests/support/time_scale.hpp"

namespace understudy::test {

std::string guest_image(const std::string& name) { return std::string(US_GUEST_DIR) + "/" + name + ".elf"; }
std::string cli_path() { return US_CLI_PATH; }

std::string temp_path(const std::string& name) {
    static std::string dir = [] {
        char tmpl[] = "/tmp/understudy-test-XXXXXX";
        const char* d = ::mkdtemp(tmpl);
        return std::string(d ? d : "/tmp");
    }();
    return dir + "/" + name;
}

std::unique_ptr<hv::Vm> boot(const std::string& image, const std::string& cmdline, hv::VmConfig cfg,
                             std::shared_ptr<std::string> console) {
    if (console) cfg.console = [console](std::string_view line) { *console += std::string(line) + "\n"; };
    else cfg.console = [](std::string_view) {};
    auto vm = hv::Vm::create(cfg);
    if (!vm) FAIL("creating the VM: " << vm.error().describe());
    auto file = hv::read_file(guest_image(image), 64 << 20);
    if (!file) FAIL(file.error().describe());
    auto img = hv::load_pvh_image(**vm, *file, cmdline);
    if (!img) FAIL(img.error().describe());
    return std::move(*vm);
}

std::string check_churn(const hv::GuestMemory& mem, uint64_t header_gpa, ChurnProgress* progress) {
    auto h = mem.read_obj<abi::us_churn_header>(hv::Gpa{header_gpa});
    if (!h) return h.error().describe();
    if (h->magic != US_CHURN_MAGIC) return "churn header has a bad magic";
    if (h->nr_vcpus > US_CHURN_MAX_VCPUS) return "churn header names too many vCPUs";
    ChurnProgress p;
    // Each vCPU fills the slot of its own index, and they may finish setting them up in any order: a
    // slot counts once its first pass has begun (iteration >= 1); before that its pages
    // are still being cleared.
    for (unsigned v = 0; v < US_CHURN_MAX_VCPUS; ++v) {
        const auto& slot = h->vcpu[v];
        if (slot.ws_pages == 0 || slot.iteration == 0) continue;
        ++p.vcpus;
        if (slot.cursor > slot.ws_pages) return "vCPU slot " + std::to_string(v) + " has a cursor beyond its working set";
        for (uint64_t j = 0; j < slot.ws_pages; ++j) {
            uint64_t gpa = slot.ws_gpa + j * hv::kPageSize;
            auto st = mem.read_obj<abi::us_churn_stamp>(hv::Gpa{gpa});
            if (!st) return st.error().describe();
            if (j == slot.cursor) continue; // may be mid-write at the moment of the pause
            uint64_t want = j < slot.cursor ? slot.iteration : slot.iteration - 1;
            char where[160];
            std::snprintf(where, sizeof where, "vCPU %u page %llu (gpa %#llx) at iteration %llu cursor %llu: ", v,
                          (unsigned long long)j, (unsigned long long)gpa, (unsigned long long)slot.iteration,
                          (unsigned long long)slot.cursor);
            if (st->iteration != want)
                return std::string(where) + "stamp says iteration " + std::to_string(st->iteration) + ", expected " +
                       std::to_string(want);
            if (want == 0) continue;
            if (st->gpa != gpa || st->check != (st->iteration ^ gpa ^ US_CHURN_MAGIC))
                return std::string(where) + "stamp is corrupt";
        }
        p.pages_stamped += (slot.iteration - 1) * slot.ws_pages + slot.cursor;
    }
    if (progress) *progress = p;
    return {};
}

std::optional<uint64_t> churn_header_gpa(const hv::GuestMemory& mem) {
    for (uint64_t gpa = 1 * hv::kMiB; gpa < 4 * hv::kMiB; gpa += hv::kPageSize) {
        auto magic = mem.read_obj<uint64_t>(hv::Gpa{gpa});
        if (magic && *magic == US_CHURN_MAGIC) return gpa;
    }
    return std::nullopt;
}

std::optional<uint64_t> wait_churn_header(hv::Vm& vm, std::chrono::milliseconds limit) {
    auto deadline = test::deadline_in(limit);
    do {
        for (unsigned v = 0; v < vm.vcpu_count(); ++v)
            if (auto g = vm.report(v, abi::US_REPORT_LAYOUT)) return g;
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    } while (std::chrono::steady_clock::now() < deadline && !vm.stop_reason());
    return std::nullopt;
}

std::string wait_churn(hv::Vm& vm, uint64_t header_gpa, std::string_view what, std::chrono::milliseconds limit,
                       const std::function<bool(const ChurnProgress&)>& done, ChurnProgress* progress) {
    auto deadline = test::deadline_in(limit);
    ChurnProgress p{};
    for (;;) {
        vm.pause_all();
        std::string err = check_churn(vm.memory(), header_gpa, &p);
        vm.resume_all();
        if (!err.empty()) return err;
        if (progress) *progress = p;
        if (done(p)) return {};
        if (auto stop = vm.stop_reason()) return "the VM stopped before " + std::string(what) + ": " + stop->message;
        if (std::chrono::steady_clock::now() >= deadline)
            return "churn: no " + std::string(what) + " within the deadline (" + std::to_string(p.vcpus) +
                   " vCPUs churning, " + std::to_string(p.pages_stamped) + " pages stamped)";
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
}

std::string describe_run(const hv::Vm& vm, const std::optional<Error>& replication_failure) {
    auto stop = vm.stop_reason();
    std::string out = stop ? "the VM stopped (" + std::string(hv::vm_stop_kind_name(stop->kind)) + "): " + stop->message
                           : std::string("the VM is still running");
    if (replication_failure) out += "; replication failed: " + replication_failure->describe();
    return out;
}

void check_churn_snapshot_continues(const std::string& snapshot) {
    hv::VmConfig quiet;
    quiet.console = [](std::string_view) {};
    auto restored = hv::restore_snapshot(snapshot, quiet);
    REQUIRE(restored);
    hv::Vm& vm = **restored;
    auto header = churn_header_gpa(vm.memory());
    REQUIRE(header.has_value());
    ChurnProgress before{}, after{};
    REQUIRE(check_churn(vm.memory(), *header, &before) == "");
    REQUIRE(vm.start());
    auto grew = [&](const ChurnProgress& p) { return p.pages_stamped > before.pages_stamped; };
    CHECK(wait_churn(vm, *header, "progress after the restore", std::chrono::seconds(20), grew, &after) == "");
    vm.pause_all();
    REQUIRE(check_churn(vm.memory(), *header, &after) == "");
    CHECK(after.pages_stamped > before.pages_stamped);
    vm.stop();
    vm.resume_all();
}

int run_shell(const std::string& cmd, std::string* output) {
    FILE* f = ::popen((cmd + " 2>&1").c_str(), "r");
    if (!f) return -1;
    char buf[4096];
    size_t n;
    while ((n = std::fread(buf, 1, sizeof buf, f)) > 0)
        if (output) output->append(buf, n);
    int st = ::pclose(f);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

} // namespace understudy::test
