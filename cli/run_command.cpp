#include "cli/run_command.hpp"

#include <csignal>
#include <cstring>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <optional>
#include <thread>

#include "cli/fencing.hpp"
#include "cli/link_options.hpp"
#include "cli/config.hpp"
#include "cli/console_input.hpp"
#include "cli/disks.hpp"
#include "cli/control_socket.hpp"
#include "cli/option_rules.hpp"
#include "cli/operations.hpp"
#include "cli/progress.hpp"
#include "cli/protection.hpp"
#include "cli/status.hpp"
#include "cli/stop_signals.hpp"
#include "cli/vm_options.hpp"
#include "hv/linux_loader.hpp"
#include "hv/pvh_loader.hpp"
#include "hv/stall_watchdog.hpp"
#include "hv/snapshot.hpp"
#include "replicator/transport.hpp"

namespace understudy::cli {

namespace po = boost::program_options;
using namespace std::chrono;

namespace {

struct SuperviseOptions {
    double timeout_s = 0;      // 0: until the guest stops
    unsigned sample_ms = 100;  // dirty harvest period for the summary
    double snapshot_after_s = -1;
    std::string snapshot_to;
    bool stop_after_snapshot = false;
    std::string backup;        // HOST:PORT of `understudy backup`; empty: unprotected
    double epoch_ms = 25;
    unsigned max_in_flight = 3;
    unsigned heartbeat_ms = 10;
    unsigned failure_timeout_ms = 100;
    unsigned ack_timeout_ms = 10000;
    unsigned verify_interval_s = 600;
    unsigned verify_pages = 1024;
    std::string verify_mismatch = "resync";
    std::string epoch_priority = "realtime";
    bool run_on_without_backup = false; // a backup that cannot be reached leaves the VM running unprotected
    OpsOptions ops;                     // --control-socket, --metrics-listen (cli/operations.hpp)
    LinkOptions link;                   // turned into `security` by check_snapshot_options
    // Unset when the link options do not make one (a `run` without --backup and without
    // --link-key): `understudy reprotect` then says why.
    std::optional<replicator::LinkSecurity> security;
    std::string no_security_reason;
    FencingOptions fencing;
};

void add_supervise_options(po::options_description& d, SuperviseOptions& o) {
    d.add_options()
        ("timeout", po::value(&o.timeout_s)->default_value(0), "stop the VM after this many seconds (0: wait for the guest)")
        ("sample-ms", po::value(&o.sample_ms)->default_value(o.sample_ms), "dirty-page sampling period for the summary, in ms")
        ("snapshot-after", po::value(&o.snapshot_after_s), "after this many seconds, pause the VM and save a snapshot")
        ("snapshot-to", po::value(&o.snapshot_to), "file for --snapshot-after")
        ("stop-after-snapshot", po::bool_switch(&o.stop_after_snapshot), "stop the VM once the snapshot is saved")
        ("backup", po::value(&o.backup), "protect the VM: stream checkpoints to `understudy backup` at HOST:PORT")
        ("epoch-ms", po::value(&o.epoch_ms)->default_value(o.epoch_ms), "checkpoint epoch length with --backup, 1 to 10000 ms")
        ("max-in-flight", po::value(&o.max_in_flight)->default_value(o.max_in_flight), "unacknowledged checkpoints before the guest waits")
        ("heartbeat-ms", po::value(&o.heartbeat_ms)->default_value(o.heartbeat_ms), "heartbeat interval on the control connection with --backup")
        ("failure-timeout-ms", po::value(&o.failure_timeout_ms)->default_value(o.failure_timeout_ms),
         "declare the backup failed after this long without a heartbeat (at least 3 heartbeats)")
        ("ack-timeout-ms", po::value(&o.ack_timeout_ms)->default_value(o.ack_timeout_ms),
         "give the backup up when a checkpoint waits this long for its ACK and the backup takes no byte of the "
         "stream meanwhile, even if it heartbeats (100 to 3600000)")
        ("verify-interval-s", po::value(&o.verify_interval_s)->default_value(o.verify_interval_s),
         "start an online verification pass of the backup's replica this often, in seconds (0: only on request, "
         "`understudy verify`)")
        ("verify-pages-per-checkpoint", po::value(&o.verify_pages)->default_value(o.verify_pages),
         "pages a verification pass digests in each checkpoint's pause: the bound on what it adds to a pause (1 to 65536)")
        ("verify-mismatch", po::value(&o.verify_mismatch)->default_value(o.verify_mismatch),
         "when a pass finds the replica different: resync (the next checkpoint carries every page) or report (only "
         "report it)")
        ("epoch-priority", po::value(&o.epoch_priority)->default_value(o.epoch_priority),
         "the epoch thread's priority: realtime (SCHED_FIFO 5 where allowed: shorter pauses, its copy rounds taken "
         "from the guest on a host with no core to spare) or normal");
    add_ops_options(d, o.ops);
    add_link_options(d, o.link);
    add_fencing_options(d, o.fencing);
}

// Exit codes (docs/cli.md): 0 guest exited with status 0; 1 guest failed or exited non-zero;
// 2 bad usage or input; 3 host error.
int exit_code(const hv::VmStop& s) {
    switch (s.kind) {
    case hv::VmStopKind::exited: return s.status == 0 ? 0 : 1;
    case hv::VmStopKind::stopped: return 0;
    case hv::VmStopKind::aborted:
    case hv::VmStopKind::guest_fault: return 1;
    case hv::VmStopKind::host_error: return 3;
    }
    return 3;
}

int fail(const Error& e) {
    std::fprintf(stderr, "understudy: %s\n", e.describe().c_str());
    return e.code == Errc::invalid_input || e.code == Errc::unsupported ? 2 : 3;
}

// `understudy snapshot` (docs/status.md, "Actions"): pauses every vCPU, saves the VM as
// --snapshot-to does, resumes it, and answers with the file's size and the pause. A
// protected VM is saved inside a checkpoint's pause (the replicator's pauses do not nest
// with another), so the file holds exactly that checkpoint.
std::string snapshot_action(hv::Vm& vm, const std::string& path, Protection* protection) {
    Result<hv::SnapshotInfo> info = make_error(Errc::state, "not saved");
    double pause_s = 0;
    auto save = [&](hv::Checkpointable&) { // the replicator's view of `vm`, paused
        auto at = steady_clock::now();
        info = hv::save_snapshot(vm, path);
        pause_s = duration<double>(steady_clock::now() - at).count();
    };
    if (protection && !protection->failure()) {
        if (auto at = protection->while_paused(save); !at) return ControlSocket::error_json("snapshot: " + at.error().describe());
    } else {
        vm.pause_all();
        save(vm);
        vm.resume_all();
    }
    if (!info) return ControlSocket::error_json("snapshot: " + info.error().describe());
    std::error_code ec;
    auto bytes = std::filesystem::file_size(path, ec);
    if (ec) return ControlSocket::error_json("snapshot: " + path + " was written but cannot be read back: " + ec.message());
    std::printf("snapshot: %s (%llu non-zero pages, %llu bytes) for `understudy snapshot`; the guest paused %.3f s\n",
                path.c_str(), static_cast<unsigned long long>(info->pages_written), static_cast<unsigned long long>(bytes),
                pause_s);
    std::fflush(stdout);
    JsonWriter w;
    w.begin_object()
        .boolean("ok", true)
        .string("path", path)
        .integer("bytes", static_cast<uint64_t>(bytes))
        .integer("pages", static_cast<uint64_t>(info->pages_written))
        .number("pause_s", pause_s)
        .end_object();
    return w.str();
}

// `understudy verify` (docs/status.md, "Actions"): starts an online verification pass and
// answers with its number at once; the pass runs over the next checkpoints, and status
// shows its verdict (the command waits for it there).
std::string verify_action(Protection* protection) {
    if (!protection || protection->failure())
        return ControlSocket::error_json("verify: the VM is not protected: there is no replica to verify");
    auto pass = protection->verify();
    if (!pass) return ControlSocket::error_json("verify: " + pass.error().describe());
    JsonWriter w;
    w.begin_object().boolean("ok", true).integer("pass", *pass).end_object();
    return w.str();
}

replicator::PrimaryConfig primary_config(const SuperviseOptions& o, const replicator::LinkSecurity& security) {
    replicator::PrimaryConfig pc;
    pc.epoch = microseconds(static_cast<int64_t>(o.epoch_ms * 1000));
    pc.max_in_flight = o.max_in_flight;
    pc.heartbeat = {milliseconds(o.heartbeat_ms), milliseconds(o.failure_timeout_ms)};
    pc.ack_timeout = milliseconds(o.ack_timeout_ms);
    pc.verify_interval = seconds(o.verify_interval_s);
    pc.verify_pages_per_checkpoint = o.verify_pages;
    pc.resync_on_mismatch = o.verify_mismatch == "resync";
    pc.realtime_epoch = o.epoch_priority == "realtime";
    pc.security = security;
    return pc;
}

// `understudy reprotect` (docs/status.md, "Actions"): protection to a new backup for a VM
// that runs unprotected, started the way `--backup` starts it, while the guest runs.
// Returns the answer line; `protection` holds the new protection on success.
std::string reprotect_action(hv::Vm& vm, const std::string& backup, const SuperviseOptions& o, GuestNetwork* net,
                             PrimaryRole* role, std::unique_ptr<Protection>& protection) {
    if (protection && !protection->failure())
        return ControlSocket::error_json("reprotect: the VM is already protected by a backup");
    if (auto endpoint = replicator::Endpoint::parse(backup); !endpoint)
        return ControlSocket::error_json("reprotect: " + endpoint.error().describe());
    if (!o.security)
        return ControlSocket::error_json("reprotect: no link security for a backup: " + o.no_security_reason +
                                         " (start the VM with --link-key FILE or --link-security disabled)");
    if (protection) (void)protection->finish(); // the failed session's end was reported when it failed
    protection.reset();
    // The new session counts epochs from 1; the output path must hold again from its first
    // capture (after a lost backup it passes everything straight through).
    if (net) net->commit().new_session();
    auto p = Protection::start(vm, backup, primary_config(o, *o.security), net, role);
    if (!p) {
        instance_metrics().set_state(ProtectionState::unprotected, "reprotect to " + backup + " failed: " + p.error().describe());
        return ControlSocket::error_json("reprotect: " + p.error().describe());
    }
    protection = std::move(*p);
    std::printf("protected again: checkpoints go to %s (`understudy reprotect`)\n", backup.c_str());
    std::fflush(stdout);
    JsonWriter w;
    w.begin_object().boolean("ok", true).string("backup", backup).end_object();
    return w.str();
}

// A switchover the backup accepted, as it ended here.
struct HandedOver {
    uint64_t epoch;  // the checkpoint the backup took over from
    bool uncertain;  // this host cannot tell whether the backup runs the VM (exit 6)
};

// After a handover at checkpoint `epoch`, this host cannot tell whether the backup runs
// the VM (`why`): this VM, paused since then, stops, and the instance exits 6 for the
// operator to look before starting either again.
Result<void> stop_not_knowing(hv::Vm& vm, uint64_t epoch, const std::string& why, std::optional<HandedOver>& handed_over) {
    handed_over = HandedOver{epoch, true};
    instance_metrics().set_state(ProtectionState::stopped, "handed over to the backup at checkpoint " + std::to_string(epoch) +
                                                               ", not knowing whether it runs the VM");
    vm.stop(); // paused since that checkpoint: its vCPUs exit without running again
    std::printf("STOPPED: %s; this host cannot tell whether the backup runs the VM, so this VM stops (check the backup "
                "before starting either again)\n", why.c_str());
    std::fflush(stdout);
    return make_error(Errc::system, why + "; this VM stopped without knowing whether the backup runs it");
}

// The backup accepted checkpoint `epoch` (docs/failover.md, "Planned switchover"):
// replication ends and the VM is paused. With an arbiter, gives the role up and checks
// that the backup took it. Stops the VM and sets `handed_over` when it must not run here;
// otherwise nobody took the role, the VM runs on here unprotected, and the error says so.
Result<void> complete_handover(hv::Vm& vm, std::unique_ptr<Protection>& protection, const SuperviseOptions& o,
                               GuestNetwork* net, std::unique_ptr<PrimaryRole>& role, uint64_t epoch,
                               std::optional<HandedOver>& handed_over) {
    (void)protection->finish(); // a handed-over session ends without a GOODBYE: not a failure
    vm.pause_all();             // already paused after a handover in time; not after a late one
    // With an arbiter the backup runs the VM only once it holds the role: check that it does.
    // The role object goes away in there; nothing may reach it through the protection.
    if (role) protection->forget_role();
    auto taken = hand_role_over(role, o.fencing);
    if (taken) {
        handed_over = HandedOver{epoch, false};
        instance_metrics().set_state(ProtectionState::stopped, "handed over to the backup at checkpoint " +
                                                                   std::to_string(epoch));
        vm.stop(); // paused since that checkpoint: its vCPUs exit without running again
        std::printf("HANDED OVER: the backup runs the VM from checkpoint %llu; this VM stops\n",
                    static_cast<unsigned long long>(epoch));
        std::fflush(stdout);
        return {};
    }
    std::string why = taken.error().describe();
    if (taken.error().code == Errc::state) { // nobody took the role: the backup did not promote
        if (net) role->guard(net->commit());
        auto back = protection->take_back(role.get());
        if (back) {
            protection.reset();
            vm.resume_all();
            instance_metrics().set_state(ProtectionState::unprotected, "the backup accepted a handover but never took the role");
            std::printf("UNPROTECTED: %s: the backup did not take over; the VM runs on here\n", why.c_str());
            std::fflush(stdout);
            return make_error(Errc::state, why + ": the backup did not take over; the VM runs on here, unprotected");
        }
        why += ", but " + back.error().describe();
    }
    // The backup may run the VM: this one must not, and the operator must look.
    return stop_not_knowing(vm, epoch, "the backup accepted checkpoint " + std::to_string(epoch) + ", but " + why,
                            handed_over);
}

// `understudy failover`: the backup takes over from a last checkpoint taken now.
std::string failover_action(hv::Vm& vm, std::unique_ptr<Protection>& protection, const SuperviseOptions& o,
                            GuestNetwork* net, std::unique_ptr<PrimaryRole>& role, std::optional<HandedOver>& handed_over) {
    if (!protection || protection->failure())
        return ControlSocket::error_json("failover: the VM is not protected: there is no backup to hand over to");
    // The backup answers within a few round trips; give it at least half a second.
    auto limit = std::max(milliseconds(500), milliseconds(o.failure_timeout_ms));
    auto epoch = protection->hand_over(limit);
    if (auto unknown = !epoch ? protection->handover_uncertain() : std::nullopt) {
        (void)protection->finish();
        (void)stop_not_knowing(vm, *unknown, epoch.error().describe(), handed_over);
        return ControlSocket::error_json("failover: " + epoch.error().describe() + "; this VM stopped (exit 6)");
    }
    if (!epoch) return ControlSocket::error_json("failover: " + epoch.error().describe());
    if (auto done = complete_handover(vm, protection, o, net, role, *epoch, handed_over); !done)
        return ControlSocket::error_json("failover: " + done.error().describe());
    JsonWriter w;
    w.begin_object().boolean("ok", true).integer("epoch", *epoch).end_object();
    return w.str();
}

// Runs the VM until it stops: protected through a backup, or sampling dirty pages for
// the summary (never both: the primary owns every harvest while it runs).
int supervise(hv::Vm& vm, const SuperviseOptions& o, GuestNetwork* net, std::unique_ptr<PrimaryRole> role = nullptr) {
    const bool protect = !o.backup.empty();
    auto instance = PrimaryInstance::start(o.ops, protect); // status and metrics; "stopped" when it goes
    if (!instance) return fail(instance.error());
    bool tracking = vm.config().dirty.mode != hv::DirtyMode::none && !protect;
    std::vector<uint64_t> per_sample;
    Bitmap sample(vm.memory().page_count()), distinct(vm.memory().page_count());
    auto start = steady_clock::now();
    bool snapshot_done = o.snapshot_after_s < 0;
    // A protected VM's output goes out only while this host holds the primary role.
    if (!role && (protect || o.fencing.kind != "none")) {
        auto r = PrimaryRole::take(o.fencing);
        if (!r) return fail(std::move(r.error()).wrap("refusing to run as the primary"));
        role = std::move(*r);
    }
    if (role && net) role->guard(net->commit());
    bool fenced = false;
    if (net)
        if (auto r = net->start(); !r) return fail(r.error());
    // However supervision ends, frames stop before the caller can destroy the VM.
    struct StopNetwork {
        GuestNetwork* net;
        ~StopNetwork() {
            if (net) net->stop();
        }
    } stop_network{net};
    if (auto r = vm.start(); !r) return fail(r.error());
    std::unique_ptr<Protection> protection;
    if (protect) {
        auto p = Protection::start(vm, o.backup, primary_config(o, *o.security), net, role.get());
        if (p) {
            protection = std::move(*p);
        } else if (o.run_on_without_backup) {
            std::printf("UNPROTECTED: %s; the VM keeps running\n", p.error().describe().c_str());
            instance->backup_unreachable(p.error().describe());
            std::fflush(stdout);
        } else {
            vm.stop();
            vm.resume_all();
            return fail(p.error());
        }
    }
    bool reported_loss = false;
    std::optional<HandedOver> handed_over;
    auto last_print = steady_clock::now();

    hv::StallWatchdog watchdog;
    std::optional<hv::VmStop> stop;
    while (!(stop = vm.wait_for(milliseconds(o.sample_ms)))) {
        double elapsed = duration<double>(steady_clock::now() - start).count();
        if (net)
            if (auto stall = watchdog.observe(hv::sample_activity(vm, net->device()), steady_clock::now())) {
                std::printf("GUEST STALL: %s\n", stall->c_str());
                std::fflush(stdout);
            }
        if (protection && steady_clock::now() - last_print >= seconds(1)) {
            last_print = steady_clock::now();
            protection->print_window();
            if (net) std::printf("%s\n", net->summary().c_str());
            std::fflush(stdout);
        }
        if (auto f = protection ? protection->failure() : std::nullopt; f && !reported_loss) {
            reported_loss = true;
            std::printf("UNPROTECTED: replication failed: %s; the VM keeps running\n", f->describe().c_str());
            std::fflush(stdout);
        }
        if (tracking) {
            sample.clear_all();
            if (auto r = vm.harvest_dirty(sample); !r) {
                vm.stop();
                std::fprintf(stderr, "understudy: dirty harvest failed: %s\n", r.error().describe().c_str());
                return 3;
            }
            per_sample.push_back(sample.count());
            for (size_t w = 0; w < sample.words().size(); ++w) distinct.words()[w] |= sample.words()[w];
        }
        if (!snapshot_done && elapsed >= o.snapshot_after_s) {
            snapshot_done = true;
            vm.pause_all();
            Progress progress("writing snapshot " + o.snapshot_to);
            auto info = hv::save_snapshot(vm, o.snapshot_to, progress.callback());
            progress.finish();
            if (!info) {
                vm.stop();
                return fail(info.error());
            }
            std::printf("snapshot: %s (%llu non-zero pages) at %.3f s\n", o.snapshot_to.c_str(),
                        static_cast<unsigned long long>(info->pages_written), elapsed);
            if (o.stop_after_snapshot) {
                vm.stop();
                vm.resume_all();
                continue;
            }
            vm.resume_all();
        }
        while (auto action = take_control_action()) {
            if (action->cmd == "reprotect") {
                action->answer.set_value(reprotect_action(vm, action->target, o, net, role.get(), protection));
                if (protection) {
                    tracking = false; // the primary owns every harvest while it runs
                    reported_loss = false;
                }
            } else if (action->cmd == "verify") {
                action->answer.set_value(verify_action(protection.get()));
            } else if (action->cmd == "failover") {
                action->answer.set_value(failover_action(vm, protection, o, net, role, handed_over));
            } else {
                action->answer.set_value(snapshot_action(vm, action->target, protection.get()));
            }
        }
        // A handover the backup accepted after `understudy failover` stopped waiting: what
        // the guest did here since that checkpoint is dropped with its held output.
        if (auto late = protection && !handed_over ? protection->late_handover() : std::nullopt) {
            std::printf("HANDOVER ACCEPTED LATE: the backup took over from checkpoint %llu after `understudy failover` "
                        "stopped waiting; the guest's run here since then is dropped, its output was held\n",
                        static_cast<unsigned long long>(*late));
            std::fflush(stdout);
            (void)complete_handover(vm, protection, o, net, role, *late, handed_over);
        }
        if (role) instance_metrics().set_fenced_in(role->holds_now()); // /primary: 503 while fenced
        if (auto lost = role ? role->lost() : std::nullopt; lost && !fenced) {
            fenced = true;
            std::printf("FENCED: %s; stopping this VM: another host is the active primary\n", lost->c_str());
            std::fflush(stdout);
            vm.stop();
        }
        if (o.timeout_s > 0 && elapsed >= o.timeout_s) vm.stop();
        if (int sig = take_stop_signal()) {
            std::printf("== %s: stopping the VM\n", strsignal(sig));
            vm.stop();
        }
    }
    if (protection) {
        if (auto r = protection->finish(); !r && !reported_loss && !handed_over)
            std::printf("UNPROTECTED: replication failed: %s\n", r.error().describe().c_str());
    }
    double elapsed = duration<double>(steady_clock::now() - start).count();
    std::printf("\n== VM stopped: %s (status %llu) after %.2f s: %s\n", hv::vm_stop_kind_name(stop->kind),
                static_cast<unsigned long long>(stop->status), elapsed, stop->message.c_str());
    if (tracking && !per_sample.empty()) {
        auto sorted = per_sample;
        std::sort(sorted.begin(), sorted.end());
        uint64_t total = 0;
        for (auto v : per_sample) total += v;
        std::printf("== dirty pages (%s tracking, %zu samples every %u ms): per sample min %llu, p50 %llu, max %llu; "
                    "total %llu; distinct %zu of %llu pages (%.1f%%)\n",
                    vm.dirty_tracker().name(), per_sample.size(), o.sample_ms, (unsigned long long)sorted.front(),
                    (unsigned long long)sorted[sorted.size() / 2], (unsigned long long)sorted.back(), (unsigned long long)total,
                    distinct.count(), (unsigned long long)vm.memory().page_count(),
                    100.0 * double(distinct.count()) / double(vm.memory().page_count()));
    }
    for (unsigned i = 0; i < vm.vcpu_count(); ++i)
        if (auto d = vm.report(i, 1)) std::printf("== vCPU %u reported digest %016llx\n", i, (unsigned long long)*d);
    if (handed_over && handed_over->uncertain) return 6;
    return fenced ? 4 : exit_code(*stop);
}

// Parses args (and --config FILE, cli/config.hpp); false with the exit code in `code` on
// --help or a problem.
bool parse(const char* name, const std::vector<std::string>& args, po::options_description& desc,
           po::positional_options_description& pos, const char* usage, int& code) {
    CommandSpec spec{name, usage, desc, pos, option_rules()};
    auto done = parse_command(args, spec);
    code = done.value_or(0);
    return !done;
}

bool check_snapshot_options(SuperviseOptions& s, int& code) {
    if (!s.backup.empty() && (s.epoch_ms < 1 || s.epoch_ms > 10000)) {
        std::fprintf(stderr, "understudy: --epoch-ms must be between 1 and 10000\n");
        code = 2;
        return false;
    }
    if (s.snapshot_after_s >= 0 && s.snapshot_to.empty()) {
        std::fprintf(stderr, "understudy: --snapshot-after needs --snapshot-to FILE\n");
        code = 2;
        return false;
    }
    auto sec = to_link_security(s.link, "primary");
    if (sec) {
        s.security = std::move(*sec);
    } else if (!s.backup.empty()) {
        std::fprintf(stderr, "understudy: %s\n", sec.error().describe().c_str());
        code = 2;
        return false;
    } else {
        s.no_security_reason = sec.error().describe();
    }
    return true;
}

// The guest's NIC on --net-tap, or none without it.
Result<std::unique_ptr<GuestNetwork>> attach_tap(hv::Vm& vm, const NetOptions& no) {
    if (no.tap.empty()) return std::unique_ptr<GuestNetwork>();
    auto n = GuestNetwork::attach(vm, no);
    if (!n) return std::move(n.error()).wrap("the guest network on tap " + no.tap);
    return std::move(*n);
}

// ", disks a.img, b.img (read-only)" for the boot line, or nothing.
std::string disk_summary(const DiskOptions& d) {
    std::string out;
    for (const auto& spec : d.specs) {
        auto s = parse_disk_spec(spec);
        if (s) out += (out.empty() ? ", disks " : ", ") + s->path + (s->readonly ? " (read-only)" : "");
    }
    return out;
}

// Linux guests: the PC platform, the kernel and initrd read whole (each at most the
// guest's memory). The NIC is attached before the kernel is loaded: the ACPI tables
// written with it name the NIC's window and interrupt.
int run_linux(const VmOptions& vo, SuperviseOptions& so, const NetOptions& no, const DiskOptions& disks, const std::string& kernel,
              const std::string& initrd, const std::string& append) {
    auto cfg = to_vm_config(vo);
    if (!cfg) return fail(cfg.error());
    cfg->pc_platform = true;
    auto kernel_file = hv::read_file(kernel, cfg->memory_bytes);
    if (!kernel_file) return fail(kernel_file.error());
    std::vector<uint8_t> initrd_file;
    if (!initrd.empty()) {
        auto f = hv::read_file(initrd, cfg->memory_bytes);
        if (!f) return fail(f.error());
        initrd_file = std::move(*f);
    }
    // What can be checked without a VM is checked first, so a bad kernel is refused
    // on any machine, with or without /dev/kvm.
    auto parsed = hv::parse_bzimage(*kernel_file);
    if (!parsed) return fail(std::move(parsed.error()).wrap(kernel));
    if (auto r = hv::check_linux_cmdline(*parsed, append); !r) return fail(r.error());
    auto vm = hv::Vm::create(*cfg);
    if (!vm) return fail(vm.error());
    auto attached = attach_tap(**vm, no);
    if (!attached) return fail(attached.error());
    std::unique_ptr<GuestNetwork> net = std::move(*attached);
    if (auto d = attach_disks(**vm, disks, net ? 1 : 0); !d) return fail(d.error());
    auto k = hv::load_linux(**vm, *kernel_file, initrd_file, append);
    if (!k) return fail(std::move(k.error()).wrap(kernel));
    std::printf("== booting Linux %s (boot protocol %u.%02u)%s: %s RAM, %u vCPU(s), dirty tracking %s%s%s\n", kernel.c_str(),
                k->protocol >> 8, k->protocol & 0xff, initrd.empty() ? "" : (" with " + initrd).c_str(), vo.memory.c_str(), vo.vcpus,
                (*vm)->dirty_tracker().name(), net ? (", network on tap " + no.tap).c_str() : "", disk_summary(disks).c_str());
    ConsoleInput console((*vm)->uart());
    return supervise(**vm, so, net.get());
}

} // namespace

int run_command(const std::vector<std::string>& args) {
    VmOptions vo;
    SuperviseOptions so;
    NetOptions no;
    DiskOptions disks;
    std::string image, cmdline, kernel, initrd, append;
    po::options_description desc("Options");
    add_vm_options(desc, vo);
    add_supervise_options(desc, so);
    add_net_options(desc, no);
    add_disk_options(desc, disks);
    desc.add_options()("image", po::value(&image), "PVH guest image (ELF)")
        ("cmdline,c", po::value(&cmdline)->default_value(""), "guest command line (PVH image)")
        ("kernel", po::value(&kernel), "Linux kernel (bzImage) to boot instead of a PVH image")
        ("initrd", po::value(&initrd), "initial ramdisk for --kernel")
        ("append", po::value(&append)->default_value(""), "kernel command line for --kernel (e.g. \"console=ttyS0\")");
    po::positional_options_description pos;
    pos.add("image", 1);
    const char* usage = "usage: understudy run IMAGE [options]\n       understudy run --kernel BZIMAGE [--initrd FILE] [--append CMDLINE] [options]\n"
                        "  Boots a PVH guest image, or a Linux kernel, and runs it until it stops.";
    int code = 0;
    if (!parse("run", args, desc, pos, usage, code)) return code;
    for (const auto& spec : disks.specs)
        if (auto d = parse_disk_spec(spec); !d) {
            std::fprintf(stderr, "understudy: %s\n", d.error().describe().c_str());
            return 2;
        }
    if (!disks.specs.empty() && !so.snapshot_to.empty()) {
        // hv::save_snapshot() would refuse at the end of the run; say it now.
        std::fprintf(stderr, "understudy: --disk with --snapshot-to: snapshots do not carry disks (docs/disks.md)\n");
        return 2;
    }
    if (!check_snapshot_options(so, code)) return code;
    if (image.empty() == kernel.empty()) {
        std::fprintf(stderr, "understudy: %s (see understudy run --help)\n",
                     image.empty() ? "missing IMAGE: give a PVH guest image or --kernel BZIMAGE"
                                   : "IMAGE and --kernel BZIMAGE both given: boot one of them");
        return 2;
    }
    if (!kernel.empty()) return run_linux(vo, so, no, disks, kernel, initrd, append);
    if (!initrd.empty() || !append.empty()) {
        std::fprintf(stderr, "understudy: --initrd and --append go with --kernel; a PVH image takes --cmdline\n");
        return 2;
    }

    auto cfg = to_vm_config(vo);
    if (!cfg) return fail(cfg.error());
    auto file = hv::read_file(image, 64 << 20);
    if (!file) return fail(file.error());
    auto vm = hv::Vm::create(*cfg);
    if (!vm) return fail(vm.error());
    auto attached = attach_tap(**vm, no);
    if (!attached) return fail(attached.error());
    std::unique_ptr<GuestNetwork> net = std::move(*attached);
    if (net) cmdline += (cmdline.empty() ? "" : " ") + net->cmdline_token();
    auto disk_tokens = attach_disks(**vm, disks, net ? 1 : 0);
    if (!disk_tokens) return fail(disk_tokens.error());
    for (const auto& t : *disk_tokens) cmdline += (cmdline.empty() ? "" : " ") + t;
    auto img = hv::load_pvh_image(**vm, *file, cmdline);
    if (!img) return fail(std::move(img.error()).wrap(image));
    std::printf("== booting %s: %s RAM, %u vCPU(s), dirty tracking %s%s%s\n", image.c_str(), vo.memory.c_str(), vo.vcpus,
                (*vm)->dirty_tracker().name(), net ? (", network on tap " + no.tap).c_str() : "", disk_summary(disks).c_str());
    return supervise(**vm, so, net.get());
}

int run_vm(hv::Vm& vm, GuestNetwork* net, const std::string& backup, milliseconds heartbeat,
           milliseconds failure_timeout, const replicator::LinkSecurity& security, std::unique_ptr<PrimaryRole> role,
           const FencingOptions& fencing) {
    SuperviseOptions o;
    o.fencing = fencing;
    o.backup = backup;
    o.heartbeat_ms = static_cast<unsigned>(heartbeat.count());
    o.failure_timeout_ms = static_cast<unsigned>(failure_timeout.count());
    o.run_on_without_backup = true;
    o.security = security;
    return supervise(vm, o, net, std::move(role));
}

int restore_command(const std::vector<std::string>& args) {
    VmOptions vo;
    SuperviseOptions so;
    NetOptions no;
    std::string path;
    po::options_description desc("Options");
    add_vm_options(desc, vo);
    add_supervise_options(desc, so);
    add_net_options(desc, no);
    desc.add_options()("snapshot", po::value(&path)->required(), "snapshot file written by --snapshot-to");
    po::positional_options_description pos;
    pos.add("snapshot", 1);
    const char* usage = "usage: understudy restore SNAPSHOT [options]\n  Restores a VM from a snapshot and runs it until it stops.\n"
                        "  Memory size and vCPU count come from the snapshot; --memory and --vcpus are ignored.";
    int code = 0;
    if (!parse("restore", args, desc, pos, usage, code) || !check_snapshot_options(so, code)) return code;
    auto dirty = hv::parse_dirty_mode(vo.dirty);
    if (!dirty) return fail(dirty.error());
    hv::VmConfig base;
    base.dirty = {*dirty, vo.ring_entries};
    hv::SnapshotInfo info;
    std::unique_ptr<GuestNetwork> net;
    auto attach = GuestNetwork::attach_fn(no, net);
    Progress progress("restoring " + path);
    auto vm = hv::restore_snapshot(path, base, &info, progress.callback(), attach);
    progress.finish();
    if (!vm) return fail(vm.error());
    ConsoleInput console((*vm)->uart());
    std::printf("== restored %s: %llu MiB RAM, %u vCPU(s), %llu non-zero pages\n", path.c_str(),
                (unsigned long long)(info.memory_bytes >> 20), info.vcpus, (unsigned long long)info.pages_written);
    return supervise(**vm, so, net.get());
}

} // namespace understudy::cli
