// End to end: a real primary protecting a churn guest over loopback, a backup that
// captures what it receives, and the independent verifier reading the capture.
#include <catch2/catch.hpp>

#include <sys/stat.h>

#include <cstdio>
#include <thread>

#include "replicator/backup.hpp"
#include "replicator/primary.hpp"
#include "replicator/stream_verifier.hpp"
#include "tests/support/link_key.hpp"
#include "tests/support/ports.hpp"
#include "tests/support/test_vm.hpp"
#include "tests/support/time_scale.hpp"

using namespace understudy;
using namespace understudy::hv;
using namespace understudy::replicator;
using namespace std::chrono;

namespace {

// Protects a churn guest through `conn` until the backup has ACKed `epochs` checkpoints.
uint64_t protect(std::unique_ptr<Connection> conn, uint64_t epochs) {
    VmConfig cfg;
    cfg.memory_bytes = 64 * kMiB;
    cfg.vcpus = 2;
    auto vm = test::boot("churn", "pages=2048 rate=100000 content=pattern", cfg);
    REQUIRE(vm->start());
    PrimaryConfig pc;
    pc.security = test::link_security();
    pc.epoch = milliseconds(5);
    auto primary = Primary::start(*vm, std::move(conn), pc);
    REQUIRE(primary);
    // A verification pass, so that the capture holds VERIFY records.
    REQUIRE(test::wait_until([&] { return (*primary)->is_protected() || (*primary)->failure(); }, seconds(60)));
    REQUIRE((*primary)->verify());
    auto deadline = test::deadline_in(seconds(120));
    while ((*primary)->acked_epoch() < epochs && steady_clock::now() < deadline && !(*primary)->failure() && !vm->stop_reason())
        std::this_thread::sleep_for(milliseconds(10));
    UNSCOPED_INFO(test::describe_run(*vm, (*primary)->failure()));
    uint64_t acked = (*primary)->acked_epoch();
    (*primary)->stop();
    (void)(*primary)->wait();
    vm->stop();
    vm->resume_all();
    REQUIRE(acked >= epochs);
    return acked;
}

void check_capture(const std::string& path, uint64_t acked) {
    auto report = verify_stream_file(path);
    REQUIRE(report);
    INFO(format_report(*report));
    CHECK(report->valid());
    CHECK(report->checkpoints >= 20);
    CHECK(report->first_epoch == 1u);
    CHECK(report->first_initial);
    CHECK(report->last_epoch >= acked); // every ACKed checkpoint is in the capture
    CHECK(report->memory_bytes == 64 * kMiB);
    CHECK(report->vcpus == 2);
    CHECK(report->pages >= 64 * kMiB / 4096); // the initial synchronization sends every page
    CHECK(report->pages_by_encoding[2] > 0);  // XOR deltas
    CHECK(report->verify_slices > 0);
}

} // namespace

TEST_CASE("a captured session verifies against the spec", "[capture][kvm]") {
    std::string path = test::temp_path("session.capture");
    std::FILE* out = std::fopen(path.c_str(), "wb");
    REQUIRE(out);
    BackupHooks hooks;
    hooks.on_receive = [out](std::span<const uint8_t> b, bool) { std::fwrite(b.data(), 1, b.size(), out); };
    BackupConfig bc;
    bc.security = test::link_security();
    auto server = BackupServer::listen(*Endpoint::parse("127.0.0.1:0"), hooks, bc);
    REQUIRE(server);
    Result<SessionEnd> session;
    // A jthread: a failed REQUIRE below still joins it (the session ends with the primary).
    std::jthread t([&] { session = (*server)->serve_one(seconds(30)); });
    auto conn = Connection::connect((*server)->local(), seconds(5));
    REQUIRE(conn);
    uint64_t acked = protect(std::move(*conn), 30);
    t.join();
    std::fclose(out);
    check_capture(path, acked);
}

TEST_CASE("understudy backup --capture, then understudy verify-stream", "[capture][kvm][cli]") {
    std::string path = test::temp_path("cli.capture");
    std::string listen = "127.0.0.1:" + std::to_string(test::free_loopback_port());
    int backup_status = -1;
    std::string backup_output;
    // The process reads the key from a file; this process's primary uses the same key.
    std::string key = test::write_shared_link_key_file(test::temp_path("cli-link.key"));
    std::jthread t([&] {
        backup_status = test::run_shell(test::cli_path() + " backup --sessions 1 --listen " + listen + " --capture " + path +
                                            " --link-key " + key,
                                        &backup_output);
    });
    std::unique_ptr<Connection> conn;
    for (auto deadline = test::deadline_in(seconds(10)); !conn && steady_clock::now() < deadline;) {
        auto c = Connection::connect(*Endpoint::parse(listen), seconds(1));
        if (c) conn = std::move(*c);
        else std::this_thread::sleep_for(milliseconds(50));
    }
    if (!conn) t.join();
    INFO(backup_output);
    REQUIRE(conn);
    uint64_t acked = protect(std::move(conn), 25);
    t.join();
    CHECK(backup_status == 0);
    struct stat st{};
    REQUIRE(::stat(path.c_str(), &st) == 0);
    CHECK((st.st_mode & 0777) == 0600);
    check_capture(path, acked);

    std::string out;
    CHECK(test::run_shell(test::cli_path() + " verify-stream " + path, &out) == 0);
    CHECK_THAT(out, Catch::Contains("result: valid"));
    // A flipped byte is found and named.
    std::FILE* f = std::fopen(path.c_str(), "r+b");
    REQUIRE(f);
    std::fseek(f, 200, SEEK_SET);
    int c = std::fgetc(f);
    std::fseek(f, 200, SEEK_SET);
    std::fputc(c ^ 0x10, f);
    std::fclose(f);
    out.clear();
    CHECK(test::run_shell(test::cli_path() + " verify-stream " + path, &out) == 1);
    CHECK_THAT(out, Catch::Contains("INVALID at offset"));
    CHECK(test::run_shell(test::cli_path() + " verify-stream", nullptr) == 2);
}
