#include "cli/console_input.hpp"
#include "cli/backup_command.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <iostream>
#include <atomic>
#include <csignal>
#include <cstring>
#include <functional>
#include <memory>
#include <thread>

#include <boost/program_options.hpp>

#include "cli/config.hpp"
#include "cli/disks.hpp"
#include "cli/fencing.hpp"
#include "cli/instrument.hpp"
#include "cli/link_options.hpp"
#include "cli/network.hpp"
#include "cli/operations.hpp"
#include "cli/option_rules.hpp"
#include "cli/progress.hpp"
#include "cli/run_command.hpp"
#include "cli/stop_signals.hpp"
#include "common/log.hpp"
#include "common/unique_fd.hpp"
#include "failover/promotion.hpp"
#include "hv/snapshot.hpp"
#include "replicator/backup.hpp"

namespace understudy::cli {

namespace po = boost::program_options;

namespace {
// `--capture FILE`: the bytes of each session as received, one file per session: FILE,
// then FILE.1, FILE.2, ... (created 0600; an existing file is overwritten). A write
// error stops capturing until the next session; the backup itself carries on.
class Capture {
public:
    explicit Capture(std::string path) : path_(std::move(path)) {}
    void receive(std::span<const uint8_t> bytes, bool session_start) {
        if (session_start) {
            std::string p = sessions_ == 0 ? path_ : path_ + "." + std::to_string(sessions_);
            ++sessions_;
            fd_ = UniqueFd(::open(p.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
            if (!fd_.valid() || ::fchmod(fd_.get(), 0600) < 0) return stop(sys_error("creating capture " + p));
            current_ = p;
            log::info("backup: capturing this session's stream to {}", p);
        }
        for (size_t done = 0; fd_.valid() && done < bytes.size();) {
            ssize_t n = ::write(fd_.get(), bytes.data() + done, bytes.size() - done);
            if (n < 0 && errno == EINTR) continue;
            if (n < 0) return stop(sys_error("writing capture " + current_));
            done += static_cast<size_t>(n);
        }
    }

private:
    void stop(const Error& e) {
        log::warn("backup: {}; not capturing the rest of this session", e.describe());
        fd_ = UniqueFd();
    }
    std::string path_, current_;
    unsigned sessions_ = 0;
    UniqueFd fd_;
};
// The primary failed: run the committed checkpoint here, unprotected, until it stops.
int promote_and_run(std::unique_ptr<replicator::BackupReplica> replica, const NetOptions& no,
                    const std::string& reprotect_to, const replicator::DetectorConfig& heartbeat,
                    const replicator::LinkSecurity& security,
                    std::unique_ptr<PrimaryRole> role, const FencingOptions& fencing) {
    std::unique_ptr<GuestNetwork> net;
    // The primary's devices in its order: the NIC, then its disks on this backup's copies,
    // read-only where the primary's were.
    DiskOptions disks;
    const auto paths = replica->disk_paths();
    for (size_t i = 0; i < paths.size(); ++i)
        disks.specs.push_back(paths[i] + (replica->committed_disks()[i].readonly ? ",readonly" : ""));
    auto attach = [net_attach = GuestNetwork::attach_fn(no, net), &disks, &no](hv::Vm& v) -> Result<void> {
        if (net_attach) US_TRYV(net_attach(v));
        US_TRYV(attach_disks(v, disks, no.tap.empty() ? 0 : 1));
        return {};
    };
    uint64_t epoch = replica->committed_epoch();
    auto t0 = std::chrono::steady_clock::now();
    auto vm = failover::promote(std::move(replica), hv::VmConfig{}, attach);
    double build_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    if (!vm) {
        std::fprintf(stderr, "understudy: promotion failed: %s\n", vm.error().describe().c_str());
        return 3;
    }
    if (net) {
        auto frame = failover::announce_frame(net->mac());
        for (int i = 0; i < 3; ++i) net->send_from_host(frame);
    }
    log::warn("backup: PROMOTED: running checkpoint {} as the primary ({} MiB, VM built in {:.1f} ms), {}", epoch,
              (*vm)->memory().size() >> 20, build_ms, reprotect_to.empty() ? "unprotected" : "re-protecting it to " + reprotect_to);
    ConsoleInput console((*vm)->uart());
    return run_vm(**vm, net.get(), reprotect_to, heartbeat.heartbeat_interval, heartbeat.timeout, security, std::move(role),
                  fencing);
}

} // namespace

int backup_command(const std::vector<std::string>& args) {
    std::string listen, snapshot_to, capture;
    std::vector<std::string> disk_paths;
    uint64_t staging_mib = 256;
    std::string disk_ack = "written";
    unsigned sessions = 0;
    replicator::BackupConfig cfg;
    unsigned heartbeat_ms = 10, failure_timeout_ms = 100, ack_delay_ms = 0;
    std::string ack_log;
    bool promote = false;
    std::string reprotect_to;
    NetOptions no;
    OpsOptions ops; // --control-socket, --metrics-listen (cli/operations.hpp)
    LinkOptions link;
    FencingOptions fencing;
    po::options_description desc("Options");
    desc.add_options()("help,h", "show this help")
        ("listen", po::value(&listen)->required(), "address to accept the primary on, HOST:PORT")
        ("snapshot-to", po::value(&snapshot_to), "after each session, write the committed replica to this snapshot file")
        ("capture", po::value(&capture), "write every byte received from the primary to this file, for "
                                          "`understudy verify-stream` (one file per session: FILE, FILE.1, ...)")
        ("sessions", po::value(&sessions)->default_value(0), "exit after this many sessions (0: serve forever)")
        ("disk", po::value(&disk_paths)->composing(), "this backup's copy of the primary's next disk (repeatable, in the "
                                                        "primary's --disk order; same size): checkpoints write it")
        ("disk-staging-memory-mib", po::value(&staging_mib)->default_value(staging_mib),
         "a checkpoint's disk blocks are held in this much memory until it commits; beyond it, in a spill file")
        ("disk-staging-dir", po::value(&cfg.disks.spill_dir)->default_value(cfg.disks.spill_dir),
         "directory of the spill file (unlinked; it needs room for the largest checkpoint's disk writes)")
        ("disk-ack", po::value(&disk_ack)->default_value(disk_ack),
         "when a checkpoint with disk writes is acknowledged: 'written' (in this host's page cache) or 'synced' "
         "(after fdatasync of the disks; docs/disks.md)")
        ("promote", po::bool_switch(&promote), "when the primary fails (silent, or gone without a goodbye), run the "
                                               "last committed checkpoint here; give it the primary's --net-tap")
        ("reprotect-to", po::value(&reprotect_to), "after a promotion, protect the VM with the backup at HOST:PORT "
                                                   "(synchronized while the guest runs)")
        ("ack-log", po::value(&ack_log), "append one line per committed checkpoint, 'EPOCH UNIX_NS', written just "
                                          "before its ACK is sent (tests check output commit against it)")
        ("ack-delay-ms", po::value(&ack_delay_ms)->default_value(0), "test hook: hold each ACK this long after the commit")
        ("heartbeat-ms", po::value(&heartbeat_ms)->default_value(heartbeat_ms), "heartbeat interval on the control connection")
        ("failure-timeout-ms", po::value(&failure_timeout_ms)->default_value(failure_timeout_ms),
         "declare the primary failed after this long without a heartbeat (at least 3 heartbeats)");
    const char* usage = "usage: understudy backup --listen HOST:PORT [options]\n"
                        "  Receives checkpoints from a primary and keeps the last committed one.";
    add_net_options(desc, no);
    add_ops_options(desc, ops);
    add_link_options(desc, link);
    add_fencing_options(desc, fencing);
    CommandSpec spec{"backup", usage, desc, {}, option_rules()}; // with --config FILE (cli/config.hpp)
    if (auto done = parse_command(args, spec)) return *done;
    if (disk_ack != "written" && disk_ack != "synced") {
        std::fprintf(stderr, "understudy: --disk-ack %s: give 'written' or 'synced'\n", disk_ack.c_str());
        return 2;
    }
    if (!disk_paths.empty() && !snapshot_to.empty()) {
        std::fprintf(stderr, "understudy: --disk with --snapshot-to: snapshots do not carry disks (docs/disks.md)\n");
        return 2;
    }
    if (staging_mib == 0 || staging_mib > (uint64_t(1) << 20)) {
        std::fprintf(stderr, "understudy: --disk-staging-memory-mib must be in [1, 1048576]\n");
        return 2;
    }
    cfg.disks.paths = disk_paths;
    cfg.disks.staging_memory = staging_mib << 20;
    cfg.disks.sync_before_ack = disk_ack == "synced";
    auto ep = replicator::Endpoint::parse(listen);
    if (!ep) {
        std::fprintf(stderr, "understudy: %s\n", ep.error().describe().c_str());
        return 2;
    }
    auto security = to_link_security(link, "backup");
    if (!security) {
        std::fprintf(stderr, "understudy: %s\n", security.error().describe().c_str());
        return 2;
    }
    cfg.security = *security; // the same key protects a promoted VM's link to --reprotect-to
    replicator::BackupHooks hooks;
    auto cap = std::make_shared<Capture>(capture);
    if (!capture.empty()) hooks.on_receive = [cap](std::span<const uint8_t> b, bool start) { cap->receive(b, start); };
    std::FILE* ack_file = nullptr;
    if (!ack_log.empty() && !(ack_file = std::fopen(ack_log.c_str(), "a"))) {
        std::fprintf(stderr, "understudy: %s\n", sys_error("opening " + ack_log).describe().c_str());
        return 2;
    }
    if (ack_file || ack_delay_ms > 0)
        hooks.on_commit = [ack_file, ack_delay_ms](uint64_t epoch, const replicator::BackupReplica&) {
            if (ack_delay_ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(ack_delay_ms));
            if (!ack_file) return;
            auto now = std::chrono::system_clock::now().time_since_epoch();
            std::fprintf(ack_file, "%llu %lld\n", (unsigned long long)epoch,
                         (long long)std::chrono::duration_cast<std::chrono::nanoseconds>(now).count());
            std::fflush(ack_file);
        };
    hooks.on_handover = [](uint64_t epoch) {
        log::info("backup: the primary asks to hand over at checkpoint {}; answering", epoch);
    };
    instrument(hooks, instance_metrics());
    cfg.heartbeat = {std::chrono::milliseconds(heartbeat_ms), std::chrono::milliseconds(failure_timeout_ms)};
    cfg.accept_handover = promote; // `understudy failover`: only a backup that can take over says yes
    auto server = replicator::BackupServer::listen(*ep, std::move(hooks), cfg);
    if (!server) {
        std::fprintf(stderr, "understudy: %s\n", server.error().describe().c_str());
        return 3;
    }
    log::info("backup: listening on {}", (*server)->local().str());
    if (auto started = start_operations(ops, Role::backup); !started) {
        std::fprintf(stderr, "understudy: %s\n", started.error().describe().c_str());
        return started.error().code == Errc::invalid_input ? 2 : 3;
    }
    auto watched = watch_backup(instance_metrics(), **server); // declared after server: goes first
    // Sessions block in the network; a stop signal ends the current one from here.
    std::atomic<bool> watching{true};
    std::atomic<int> stop_signal{0};
    std::thread watcher([&] {
        while (watching)
            if (int sig = take_stop_signal(std::chrono::milliseconds(5))) { // short: promotion waits for this thread
                stop_signal = sig;
                (*server)->stop();
                return;
            }
    });
    auto stop_watching = [&] {
        watching = false;
        if (watcher.joinable()) watcher.join();
    };
    struct Joiner {
        std::function<void()> f;
        ~Joiner() { f(); }
    } joiner{stop_watching};
    for (unsigned done = 0; sessions == 0 || done < sessions;) {
        uint64_t started = (*server)->sessions_started();
        auto r = (*server)->serve_one(std::chrono::seconds(1));
        if (stop_signal) {
            log::info("backup: {}: stopping", strsignal(stop_signal));
            break;
        }
        if ((*server)->sessions_started() == started) continue; // nobody connected yet
        ++done;
        const auto* replica = (*server)->replica();
        uint64_t epoch = replica && replica->has_committed() ? replica->committed_epoch() : 0;
        const bool handover = r && *r == replicator::SessionEnd::handover;
        instance_metrics().on_session_end(handover ? "the primary handed over"
                                          : r      ? "the primary ended its session"
                                                   : "session ended: " + r.error().describe());
        if (handover)
            log::warn("backup: HANDOVER: the primary handed the VM over at checkpoint {} (`understudy failover`)", epoch);
        else if (r)
            log::info("backup: session ended; committed checkpoint {}", epoch);
        else
            log::warn("backup: session ended: {}; committed checkpoint {} kept", r.error().describe(), epoch);
        // A primary that fell silent or vanished without a goodbye has failed; a stream it
        // corrupted (invalid input) is reported and waited out, not taken over.
        bool primary_failed = !r && (r.error().code == Errc::timeout || r.error().code == Errc::system);
        if (primary_failed && promote && epoch > 0 && !(*server)->replica_current()) {
            // The session broke before its first checkpoint: the one kept here is an
            // earlier session's, and that primary ran on past it.
            log::error("backup: NOT PROMOTING: the session ended before its first checkpoint; checkpoint {} is from an "
                       "earlier session, waiting for a primary to connect", epoch);
            primary_failed = false;
        }
        if (auto differs = replica ? replica->known_difference() : std::nullopt; primary_failed && promote && epoch > 0 && differs) {
            // DESIGN.md invariant 7: a replica known to differ is no copy of the VM.
            log::error("backup: NOT PROMOTING: {}; waiting for a primary to connect and resync it", *differs);
            primary_failed = false;
        }
        if ((primary_failed || handover) && promote && epoch > 0) {
            // Fencing: promote only as the holder of the primary role. A failed primary's
            // lease expires within its TTL; one still renewing after that is alive, merely
            // cut off from us, and keeps the role.
            auto role = PrimaryRole::take(fencing, promotion_patience(fencing));
            if (role) {
                // A primary that ran on without us released output this replica lacks.
                auto retired = (*role)->session_retired(replica->committed_session_id());
                if (!retired || *retired)
                    role = retired ? make_error(Errc::state, "the primary retired this backup's session: it ran on "
                                                             "unprotected and released output this checkpoint lacks")
                                   : std::move(retired.error()).wrap("checking whether this backup was retired");
            }
            if (role) {
                // status and metrics: promoting
                instance_metrics().on_failover(handover ? FailoverReason::handover : failover_reason(r.error()));
                stop_watching(); // from here the promoted VM's supervision takes the stop signals
                return promote_and_run((*server)->take_replica(), no, reprotect_to, cfg.heartbeat, cfg.security, std::move(*role),
                                       fencing);
            }
            log::error("backup: NOT PROMOTING: {}; checkpoint {} kept, waiting for a primary to connect",
                       role.error().describe(), epoch);
        }
        if (!snapshot_to.empty() && epoch > 0) {
            if (auto differs = replica->known_difference())
                log::warn("backup: writing {} from a replica that is not the VM: {}", snapshot_to, *differs);
            Progress progress("writing snapshot " + snapshot_to);
            auto info = hv::write_snapshot(replica->memory(), replica->state(), snapshot_to, progress.callback());
            progress.finish();
            if (!info) {
                std::fprintf(stderr, "understudy: %s\n", info.error().describe().c_str());
                return 3;
            }
            log::info("backup: checkpoint {} written to {}", epoch, snapshot_to);
        }
    }
    return 0;
}

} // namespace understudy::cli
