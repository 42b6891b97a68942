// Operating a protected pair (issue 6), in the namespace topology of docs/testing.md: the
// kv guest protected by a backup that promotes, each `understudy` process with a control
// socket and a metrics endpoint. `curl` scrapes /metrics, /healthz and /primary on both
// hosts, and `understudy status --json` is checked against docs/status.md, before and
// after the primary is killed; a planned switchover (`understudy failover`) loses nothing.
#include <catch2/catch.hpp>

#include <signal.h>
#include <sys/stat.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <set>
#include <sstream>
#include <thread>

#include "cli/control_socket.hpp"
#include "cli/status.hpp"
#include "common/json.hpp"
#include "hv/kvm.hpp"
#include "tests/support/catch_run.hpp"
#include "tests/support/topology.hpp"
#include "tests/support/time_scale.hpp"

using namespace understudy;
using namespace understudy::test;
using namespace std::chrono;
using namespace std::chrono_literals;

namespace {

std::string g_temp_dir;
const std::string kKv = std::string(US_GUEST_DIR) + "/kv.elf";

std::string read_file(const std::string& path) {
    std::ifstream in(path);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

void wait_for_log(Process& p, const std::string& path, const std::string& text, milliseconds limit) {
    auto deadline = test::deadline_in(limit);
    while (read_file(path).find(text) == std::string::npos) {
        INFO("waiting for '" << text << "' in " << path << ":\n" << read_file(path));
        REQUIRE(p.running());
        REQUIRE(steady_clock::now() < deadline);
        std::this_thread::sleep_for(50ms);
    }
}

// The top-level members of the status object and of its objects, as docs/status.md lists
// them: an implementation that adds or drops one without the document fails here.
const std::map<std::string, std::set<std::string>> kDocumented = {
    {"", {"format", "name", "pid", "uptime_s", "role", "promoted", "state", "reason", "state_age_s", "healthy",
          "active_primary", "epoch", "checkpoint", "sync", "replication", "lag", "output", "heartbeats", "failovers",
          "protection_lost", "sessions", "last_failover", "verification"}},
    {"epoch", {"captured", "acknowledged", "rate_per_s"}},
    {"checkpoint", {"pause_s", "ack_s", "dirty_pages", "initial_pause_s"}},
    {"sync", {"round", "bytes_sent", "bytes_total"}},
    {"replication", {"raw_bytes", "wire_bytes", "raw_bytes_per_s", "wire_bytes_per_s"}},
    {"lag", {"epochs", "seconds"}},
    {"output", {"held_packets", "held_bytes", "released_packets", "released_bytes", "stalls", "hold_p99_s"}},
    {"heartbeats", {"sent", "received", "max_gap_s"}},
    {"failovers", {"primary_silent", "primary_connection_lost", "handover"}},
    {"protection_lost", {"backup_silent", "backup_connection_lost", "error"}},
    {"last_failover", {"reason", "detected_unix_s", "running_unix_s"}},
    {"verification", {"match", "mismatch", "unanswered", "last"}},
};

std::set<std::string> keys(const Json& obj) {
    std::set<std::string> k;
    for (const auto& [name, v] : obj.members) k.insert(name);
    return k;
}

// `understudy status --json` against `socket`: the documented members exactly, read back.
cli::StatusSnapshot status_json(const std::string& socket) {
    auto r = run_command({US_CLI_PATH, "status", "--control-socket", socket, "--json"}, 10s);
    REQUIRE(r);
    INFO(r->describe() << r->out);
    REQUIRE(r->ok());
    REQUIRE(r->out.size() > 2);
    REQUIRE(r->out.back() == '\n');
    REQUIRE(std::count(r->out.begin(), r->out.end(), '\n') == 1);
    auto doc = parse_json(r->out);
    REQUIRE(doc);
    REQUIRE(doc->kind == Json::Kind::object);
    CHECK(keys(*doc) == kDocumented.at(""));
    for (const auto& [name, members] : kDocumented) {
        if (name.empty()) continue;
        const Json* o = doc->find(name);
        REQUIRE(o);
        if (o->kind == Json::Kind::null) continue; // output, heartbeats, last_failover: null where documented
        INFO(name);
        CHECK(keys(*o) == members);
    }
    auto s = cli::status_from_json(r->out);
    if (!s) FAIL(s.error().describe());
    return *s;
}

// The status once it shows `state`, or as it is after 5 s.
cli::StatusSnapshot status_reaching(const std::string& socket, cli::ProtectionState state) {
    cli::StatusSnapshot s;
    for (int i = 0; i < 50; ++i) {
        s = status_json(socket);
        if (s.state == state) break;
        std::this_thread::sleep_for(100ms);
    }
    return s;
}

// The verdict of verification pass `pass` as `socket`'s status shows it, once it does.
cli::VerifyPassFigures status_reaching_verdict(const std::string& socket, uint64_t pass) {
    std::optional<cli::VerifyPassFigures> last;
    const bool reached = test::wait_until(
        [&] {
            last = status_json(socket).verification.last;
            return last && last->pass >= pass;
        },
        5s);
    REQUIRE(reached);
    return *last;
}

struct Http {
    int status = 0; // 0: no answer (curl failed)
    std::string body;
};

// curl in host h's namespace.
Http curl(const Topology& t, Host h, const std::string& url) {
    auto r = t.run_in(h, {"curl", "-s", "--max-time", "5", "-w", "\n%{http_code}", url}, 15s);
    REQUIRE(r);
    Http out;
    if (!r->ok()) return out;
    auto nl = r->out.rfind('\n');
    REQUIRE(nl != std::string::npos);
    out.status = std::stoi(r->out.substr(nl + 1));
    out.body = r->out.substr(0, nl);
    return out;
}

// The value of one sample line `name{labels} value` (labels as written, "" for none).
std::optional<double> sample(const std::string& text, const std::string& series) {
    std::istringstream in(text);
    for (std::string line; std::getline(in, line);)
        if (line.rfind(series + " ", 0) == 0) return std::stod(line.substr(series.size() + 1));
    return std::nullopt;
}

} // namespace

TEST_CASE("a protected pair's status, metrics and health, before and after a failover", "[operations]") {
    auto t = Topology::create(topology_name("op"));
    REQUIRE(t);
    const std::string dir = g_temp_dir;
    const std::string psock = dir + "/primary.sock", bsock = dir + "/backup.sock";
    const std::string plog = dir + "/primary.log", blog = dir + "/backup.log";
    const std::string purl = "http://" + t->ip(Host::primary) + ":9470", burl = "http://" + t->ip(Host::backup) + ":9470";
    const std::vector<std::string> common{"--link-security", "disabled", "--failure-timeout-ms", std::to_string(scaled(1000ms).count())};

    std::vector<std::string> bargv{US_CLI_PATH, "backup", "--listen", t->ip(Host::backup) + ":7700", "--promote",
                                   "--net-tap", t->tap(), "--control-socket", bsock,
                                   "--metrics-listen", t->ip(Host::backup) + ":9470", "--instance-name", "kv"};
    bargv.insert(bargv.end(), common.begin(), common.end());
    auto backup = t->spawn_in(Host::backup, bargv, blog);
    REQUIRE(backup);
    wait_for_log(*backup, blog, "listening on", 10s);
    // Before a primary connects: waiting, healthy, not the primary.
    auto waiting = status_json(bsock);
    CHECK(waiting.role == cli::Role::backup);
    CHECK(waiting.state == cli::ProtectionState::waiting);
    CHECK(curl(*t, Host::backup, burl + "/primary").status == 503);

    std::vector<std::string> pargv{US_CLI_PATH, "run", kKv, "--memory", "128M", "--net-tap", t->tap(),
                                   "-c", "net.ip=" + t->guest_ip() + "/24", "--backup", t->ip(Host::backup) + ":7700",
                                   "--control-socket", psock, "--metrics-listen", t->ip(Host::primary) + ":9470",
                                   "--instance-name", "kv"};
    pargv.insert(pargv.end(), common.begin(), common.end());
    auto primary = t->spawn_in(Host::primary, pargv, plog);
    REQUIRE(primary);
    wait_for_log(*primary, plog, "kv: listening", 30s);
    wait_for_log(*primary, plog, "protected: initial checkpoint acknowledged", 60s);

    struct stat st {};
    REQUIRE(::stat(psock.c_str(), &st) == 0);
    CHECK((st.st_mode & 0777) == 0600);
    REQUIRE(::stat(bsock.c_str(), &st) == 0);
    CHECK((st.st_mode & 0777) == 0600);

    // Some output through the gate: replies that waited for their checkpoints.
    for (int i = 1; i <= 20; ++i) {
        auto r = t->run_in(Host::client, {"redis-cli", "-h", t->guest_ip(), "INCR", "n"}, 20s);
        REQUIRE(r);
        REQUIRE(r->ok());
        CHECK(r->out == std::to_string(i) + "\n");
    }
    std::this_thread::sleep_for(1500ms); // a few more checkpoints for the rates

    // --- before the failover
    auto p = status_json(psock);
    CHECK(p.name == "kv");
    CHECK(p.role == cli::Role::primary);
    CHECK(p.state == cli::ProtectionState::protected_);
    CHECK(p.active_primary);
    CHECK(p.healthy);
    CHECK(!p.promoted);
    CHECK(p.epoch_acknowledged > 2);
    CHECK(p.epoch_captured >= p.epoch_acknowledged);
    CHECK(p.epoch_rate_per_s > 0);
    CHECK(p.pause_s.count > 0);
    REQUIRE(p.pause_s.p99);
    CHECK(*p.pause_s.p99 > 0);
    CHECK(*p.pause_s.p99 < 5); // seconds: anything near this is broken, not slow
    REQUIRE(p.lag_s);
    CHECK(*p.lag_s < 30);
    REQUIRE(p.lag_epochs);
    CHECK(p.raw_bytes > 0);
    CHECK(p.wire_bytes > 0);
    CHECK(p.wire_bytes_per_s > 0);
    REQUIRE(p.output);
    CHECK(p.output->released_packets >= 20);
    REQUIRE(p.hold_p99_s);
    CHECK(*p.hold_p99_s > 0);
    REQUIRE(p.heartbeats);
    CHECK(p.heartbeats->received > 0);
    CHECK(p.failovers.at("primary_silent") + p.failovers.at("primary_connection_lost") == 0);
    auto b = status_json(bsock);
    CHECK(b.role == cli::Role::backup);
    CHECK(b.state == cli::ProtectionState::receiving);
    CHECK(b.epoch_acknowledged > 2);
    CHECK(b.sessions == 1);
    CHECK(!b.active_primary);

    auto text = run_command({US_CLI_PATH, "status", "--control-socket", psock}, 10s);
    REQUIRE(text);
    CHECK(text->ok());
    INFO(text->out);
    CHECK(text->out.find("state        protected") != std::string::npos);
    CHECK(text->out.find("backup lag") != std::string::npos);
    CHECK(text->out.find("output held") != std::string::npos);

    auto pm = curl(*t, Host::primary, purl + "/metrics");
    REQUIRE(pm.status == 200);
    INFO(pm.body.substr(0, 3000));
    CHECK(sample(pm.body, "understudy_role{role=\"primary\"}") == 1);
    CHECK(sample(pm.body, "understudy_protection_state{state=\"protected\"}") == 1);
    CHECK(sample(pm.body, "understudy_checkpoint_pause_seconds_count") > 0);
    CHECK(sample(pm.body, "understudy_checkpoint_ack_seconds_count") > 0);
    CHECK(sample(pm.body, "understudy_dirty_pages_per_epoch_count") > 0);
    CHECK(sample(pm.body, "understudy_output_hold_seconds_count") >= 20);
    CHECK(sample(pm.body, "understudy_output_held_packets").has_value());
    CHECK(sample(pm.body, "understudy_replication_bytes_total{kind=\"wire\"}") > 0);
    CHECK(sample(pm.body, "understudy_replication_bytes_total{kind=\"raw\"}") > 0);
    CHECK(sample(pm.body, "understudy_replication_lag_seconds").has_value());
    CHECK(sample(pm.body, "understudy_checkpoint_pause_seconds_bucket{le=\"+Inf\"}") ==
          sample(pm.body, "understudy_checkpoint_pause_seconds_count"));
    CHECK(curl(*t, Host::primary, purl + "/healthz").status == 200);
    CHECK(curl(*t, Host::primary, purl + "/primary").status == 200);
    auto bm = curl(*t, Host::backup, burl + "/metrics");
    REQUIRE(bm.status == 200);
    CHECK(sample(bm.body, "understudy_role{role=\"backup\"}") == 1);
    CHECK(sample(bm.body, "understudy_protection_state{state=\"receiving\"}") == 1);
    CHECK(sample(bm.body, "understudy_epoch_acknowledged") > 2);
    CHECK(curl(*t, Host::backup, burl + "/healthz").status == 200);
    CHECK(curl(*t, Host::backup, burl + "/primary").status == 503);

    // --- the primary dies; the backup promotes
    REQUIRE(::kill(primary->pid(), SIGKILL) == 0);
    (void)primary->stop(100ms);
    wait_for_log(*backup, blog, "PROMOTED", 30s);
    auto ping = t->run_in(Host::client, {"redis-cli", "-h", t->guest_ip(), "GET", "n"}, 20s);
    REQUIRE(ping);
    CHECK(ping->out == "20\n");
    // The promoted VM's supervision may take a moment to record its state.
    auto a = status_reaching(bsock, cli::ProtectionState::unprotected);
    CHECK(a.role == cli::Role::primary);
    CHECK(a.promoted);
    CHECK(a.state == cli::ProtectionState::unprotected);
    CHECK(a.reason == "no backup configured");
    CHECK(a.active_primary);
    CHECK(a.failovers.at("primary_silent") + a.failovers.at("primary_connection_lost") == 1);
    CHECK(curl(*t, Host::backup, burl + "/primary").status == 200);
    CHECK(curl(*t, Host::backup, burl + "/healthz").status == 200);
    bm = curl(*t, Host::backup, burl + "/metrics");
    REQUIRE(bm.status == 200);
    CHECK(sample(bm.body, "understudy_role{role=\"primary\"}") == 1);
    CHECK(sample(bm.body, "understudy_promoted") == 1);
    CHECK(sample(bm.body, "understudy_protection_state{state=\"unprotected\"}") == 1);
    CHECK(*sample(bm.body, "understudy_failovers_total{reason=\"primary_silent\"}") +
              *sample(bm.body, "understudy_failovers_total{reason=\"primary_connection_lost\"}") ==
          1);
    // The dead primary answers nothing; its socket file is left behind but refuses.
    CHECK(curl(*t, Host::primary, purl + "/healthz").status == 0);
    auto gone = run_command({US_CLI_PATH, "status", "--control-socket", psock}, 10s);
    REQUIRE(gone);
    CHECK(gone->exit_status == 3);
    CHECK(backup->running());
}

// The digest vCPU 0 reported in a run's output.
std::optional<uint64_t> reported_digest(const std::string& out) {
    auto at = out.find("vCPU 0 reported digest ");
    if (at == std::string::npos) return std::nullopt;
    return std::stoull(out.substr(at + 23, 16), nullptr, 16);
}

// `understudy snapshot` (docs/status.md, "Actions") against a running, unprotected
// counter: the instance carries on to the digest of an undisturbed run, and the file,
// restored in a fresh process, continues from where it was taken to that same digest.
TEST_CASE("understudy snapshot saves a running VM that restore continues", "[operations]") {
    const std::string dir = g_temp_dir;
    const std::string sock = dir + "/counter.sock", log = dir + "/counter.log", snap = dir + "/live.snap";
    const std::vector<std::string> run{US_CLI_PATH, "run", std::string(US_GUEST_DIR) + "/counter.elf", "--memory", "64M",
                                       "--dirty", "none", "-c", "mib=16 rounds=600"};
    auto straight = run_command(run, 300s);
    REQUIRE(straight);
    INFO(straight->out);
    REQUIRE(straight->ok());
    auto want = reported_digest(straight->out);
    REQUIRE(want);

    auto argv = run;
    argv.insert(argv.end(), {"--control-socket", sock});
    auto instance = Process::spawn(argv, log);
    REQUIRE(instance);
    wait_for_log(*instance, log, "control socket at", 30s);

    // Refusals, each with its reason, before anything is written.
    auto relative = cli::control_request(sock, R"({"cmd":"snapshot","path":"live.snap"})");
    REQUIRE(relative);
    CHECK(relative->find("must be an absolute path") != std::string::npos);
    auto no_path = cli::control_request(sock, R"({"cmd":"snapshot"})");
    REQUIRE(no_path);
    CHECK(no_path->find(R"(no \"path\" string)") != std::string::npos); // as the JSON answer escapes it
    auto too_long = cli::control_request(sock, R"({"cmd":"snapshot","path":"/)" + std::string(5000, 'a') + "\"}");
    REQUIRE(too_long);
    CHECK(too_long->find("too long") != std::string::npos);
    CHECK(!std::filesystem::exists(snap));

    auto taken = run_command({US_CLI_PATH, "snapshot", "--control-socket", sock, snap}, 120s);
    REQUIRE(taken);
    INFO(taken->describe() << "\n" << read_file(log));
    REQUIRE(taken->ok());
    CHECK(taken->out.find("snapshot: " + snap + ": " + std::to_string(std::filesystem::file_size(snap)) + " bytes") !=
          std::string::npos);

    // The instance was resumed: it finishes the computation undisturbed.
    auto deadline = test::deadline_in(300s);
    while (instance->running() && steady_clock::now() < deadline) std::this_thread::sleep_for(100ms);
    REQUIRE(!instance->running());
    CHECK(reported_digest(read_file(log)) == want);

    auto restored = run_command({US_CLI_PATH, "restore", snap, "--dirty", "none"}, 300s);
    REQUIRE(restored);
    INFO(restored->describe() << "\n" << restored->out);
    REQUIRE(restored->ok());
    CHECK(reported_digest(restored->out) == want);

    // No instance behind the socket any more: the host-error exit code.
    auto gone = run_command({US_CLI_PATH, "snapshot", "--control-socket", sock, snap}, 10s);
    REQUIRE(gone);
    CHECK(gone->exit_status == 3);
}

// `understudy reprotect` against a counter started without a backup: refused while it has
// no backup to go to, then protected by a backup on this host while the guest runs; the
// backup commits checkpoints and a second reprotect is refused.
TEST_CASE("understudy reprotect protects a running, unprotected VM", "[operations]") {
    const std::string dir = g_temp_dir;
    const std::string psock = dir + "/unprotected.sock", bsock = dir + "/new-backup.sock";
    const std::string plog = dir + "/unprotected.log", blog = dir + "/new-backup.log";
    const std::string endpoint = "127.0.0.1:7791";
    auto primary = Process::spawn({US_CLI_PATH, "run", std::string(US_GUEST_DIR) + "/counter.elf", "--memory", "64M",
                                   "-c", "mib=16 rounds=100000", "--control-socket", psock, "--link-security",
                                   "disabled", "--failure-timeout-ms", std::to_string(scaled(1000ms).count())},
                                  plog);
    REQUIRE(primary);
    wait_for_log(*primary, plog, "control socket at", 30s);
    CHECK(status_json(psock).state == cli::ProtectionState::unprotected);

    auto bad = run_command({US_CLI_PATH, "reprotect", "--control-socket", psock, "--backup", "no-port"}, 10s);
    REQUIRE(bad);
    CHECK(bad->exit_status == 3);
    CHECK(bad->err.find("reprotect: ") != std::string::npos);
    auto nobody = run_command({US_CLI_PATH, "reprotect", "--control-socket", psock, "--backup", endpoint}, 90s);
    REQUIRE(nobody);
    CHECK(nobody->exit_status == 3);
    CHECK(status_json(psock).state == cli::ProtectionState::unprotected);

    auto backup = Process::spawn({US_CLI_PATH, "backup", "--listen", endpoint, "--control-socket", bsock,
                                  "--link-security", "disabled", "--failure-timeout-ms", std::to_string(scaled(1000ms).count())},
                                 blog);
    REQUIRE(backup);
    wait_for_log(*backup, blog, "listening on", 10s);
    auto done = run_command({US_CLI_PATH, "reprotect", "--control-socket", psock, "--backup", endpoint}, 90s);
    REQUIRE(done);
    INFO(done->describe() << "\n" << read_file(plog) << "\n" << read_file(blog));
    REQUIRE(done->ok());

    auto deadline = test::deadline_in(60s);
    cli::StatusSnapshot p, b;
    do {
        std::this_thread::sleep_for(100ms);
        p = status_json(psock);
        b = status_json(bsock);
    } while ((p.state != cli::ProtectionState::protected_ || b.epoch_acknowledged == 0) && steady_clock::now() < deadline);
    CHECK(p.state == cli::ProtectionState::protected_);
    CHECK(p.epoch_acknowledged > 0);
    CHECK(b.epoch_acknowledged > 0);

    auto again = run_command({US_CLI_PATH, "reprotect", "--control-socket", psock, "--backup", endpoint}, 90s);
    REQUIRE(again);
    CHECK(again->exit_status == 3);
    CHECK(again->err.find("already protected") != std::string::npos);
    CHECK(primary->running());
}

TEST_CASE("understudy failover hands a protected VM to its backup with nothing lost", "[operations][handover]") {
    auto t = Topology::create(topology_name("ho"));
    REQUIRE(t);
    const std::string dir = g_temp_dir;
    const std::string psock = dir + "/handover-primary.sock", bsock = dir + "/handover-backup.sock";
    const std::string plog = dir + "/handover-primary.log", blog = dir + "/handover-backup.log";
    const std::vector<std::string> link{"--link-security", "disabled", "--failure-timeout-ms", std::to_string(scaled(1000ms).count())};
    std::vector<std::string> bargv{US_CLI_PATH, "backup", "--listen", t->ip(Host::backup) + ":7700", "--promote",
                                   "--net-tap", t->tap(), "--control-socket", bsock};
    bargv.insert(bargv.end(), link.begin(), link.end());
    auto backup = t->spawn_in(Host::backup, bargv, blog);
    REQUIRE(backup);
    wait_for_log(*backup, blog, "listening on", 10s);
    std::vector<std::string> pargv{US_CLI_PATH, "run", kKv, "--memory", "128M", "--net-tap", t->tap(),
                                   "-c", "net.ip=" + t->guest_ip() + "/24", "--backup", t->ip(Host::backup) + ":7700",
                                   "--control-socket", psock};
    pargv.insert(pargv.end(), link.begin(), link.end());
    auto primary = t->spawn_in(Host::primary, pargv, plog);
    REQUIRE(primary);
    wait_for_log(*primary, plog, "protected: initial checkpoint acknowledged", 60s);
    auto incr = [&](int expect) {
        auto r = t->run_in(Host::client, {"redis-cli", "-h", t->guest_ip(), "INCR", "n"}, 20s);
        REQUIRE(r);
        REQUIRE(r->ok());
        CHECK(r->out == std::to_string(expect) + "\n");
    };
    for (int i = 1; i <= 10; ++i) incr(i);

    // A protected VM saves a snapshot inside a checkpoint's pause and stays protected.
    const std::string snap = dir + "/protected.snap";
    auto saved = run_command({US_CLI_PATH, "snapshot", "--control-socket", psock, snap}, 90s);
    REQUIRE(saved);
    INFO(saved->describe());
    CHECK(saved->ok());
    CHECK(std::filesystem::file_size(snap) > 0);
    CHECK(status_json(psock).state == cli::ProtectionState::protected_);
    incr(11);

    // Online verification: the backup's replica is the VM, page by page, on both sides.
    auto verified = run_command({US_CLI_PATH, "verify", "--control-socket", psock}, 120s);
    REQUIRE(verified);
    INFO(verified->describe() << verified->out << verified->err);
    CHECK(verified->ok());
    CHECK(verified->out.find("the replica matches the VM, every page and the state") != std::string::npos);
    const auto pv = status_json(psock).verification;
    REQUIRE(pv.last);
    CHECK(pv.last->verdict == "match");
    CHECK(pv.last->pages == 128 * 256); // 128 MiB of 4 KiB pages
    auto bv = status_reaching_verdict(bsock, pv.last->pass);
    CHECK(bv.verdict == "match");
    CHECK(bv.pages == pv.last->pages);

    auto done = run_command({US_CLI_PATH, "failover", "--control-socket", psock}, 90s);
    REQUIRE(done);
    INFO(done->describe() << "\nprimary:\n" << read_file(plog) << "\nbackup:\n" << read_file(blog));
    REQUIRE(done->ok());
    CHECK(done->out.find("the backup runs the VM from checkpoint") != std::string::npos);
    wait_for_log(*backup, blog, "PROMOTED", 30s);
    // The old primary stops by itself, successfully, and says why.
    auto deadline = test::deadline_in(20s);
    while (primary->running() && steady_clock::now() < deadline) std::this_thread::sleep_for(50ms);
    REQUIRE(!primary->running());
    auto ended = primary->stop(100ms);
    REQUIRE(ended);
    CHECK(ended->exit_status == 0);
    CHECK(read_file(plog).find("HANDED OVER") != std::string::npos);
    CHECK(read_file(blog).find("HANDOVER") != std::string::npos);

    // Every acknowledged write is there, and the guest goes on from it on the backup.
    incr(12);
    auto a = status_reaching(bsock, cli::ProtectionState::unprotected);
    CHECK(a.role == cli::Role::primary);
    CHECK(a.promoted);
    CHECK(a.active_primary);
    CHECK(a.failovers.at("handover") == 1);
    CHECK(a.failovers.at("primary_silent") + a.failovers.at("primary_connection_lost") == 0);

    // A VM that has no backup refuses, and runs on.
    auto alone = run_command({US_CLI_PATH, "failover", "--control-socket", bsock}, 90s);
    REQUIRE(alone);
    CHECK(alone->exit_status == 3);
    CHECK(alone->err.find("not protected") != std::string::npos);
    CHECK(backup->running());
    incr(13);
}

int main(int argc, char** argv) {
    std::string why;
    if (!understudy::hv::kvm_available(&why) || !(why = topology_skip_reason()).empty()) {
        std::printf("SKIPPED: %s\n", why.c_str());
        return 77;
    }
    for (const char* tool : {"redis-cli", "curl"})
        if (std::system(("command -v " + std::string(tool) + " >/dev/null 2>&1").c_str()) != 0) {
            std::printf("SKIPPED: %s is not installed (scripts/install-deps.sh installs it)\n", tool);
            return 77;
        }
    return run_with_scratch_dir("understudy-operations", g_temp_dir, [&] { return understudy::test::run_catch(argc, argv); });
}
