// `understudy drill KIND`: inject one fault into a running, protected pair while a
// verifying RESP client writes through the guest's service, then report what the
// clients saw (docs/cli.md). The measurements follow bench/drill.py: unique keys written
// one request at a time per connection, a key counts only once "+OK" arrived, the outage
// is the longest gap between successful replies, the survivor is watched serving for
// --after seconds, and every acknowledged key is read back from whoever serves at the end.
// The client (drill_client.hpp), the watch over both instances (drill_monitor.hpp) and
// the report (drill_report.hpp) live in their own units; this one runs the phases.

#include "cli/drill_command.hpp"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <boost/program_options.hpp>

#include <cerrno>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>

#include "cli/action_command.hpp"
#include "cli/control_socket.hpp"
#include "cli/drill_client.hpp"
#include "cli/drill_monitor.hpp"
#include "cli/drill_report.hpp"
#include "cli/status.hpp"
#include "cli/status_command.hpp"
#include "cli/stop_signals.hpp"
#include "common/json.hpp"

namespace understudy::cli {

namespace po = boost::program_options;
using Clock = std::chrono::steady_clock;
using replicator::Endpoint;
using std::chrono::duration;
using std::chrono::milliseconds;

namespace {

constexpr int kExitPass = 0, kExitUsage = 2, kExitUnreachable = 3, kExitFailed = 5;
constexpr auto kPollEvery = milliseconds(5);
constexpr auto kSurvivorStatusEvery = milliseconds(500);

// Steady-clock instants as Unix seconds, through one pair read at the start.
struct WallClock {
    Clock::time_point steady0 = Clock::now();
    double unix0 = unix_now();
    double at(Clock::time_point t) const { return unix0 + duration<double>(t - steady0).count(); }
    Clock::time_point steady(double unix_s) const {
        return steady0 + std::chrono::duration_cast<Clock::duration>(duration<double>(unix_s - unix0));
    }
};

// ---------------------------------------------------------------------------------------
// Fault injection.

// Runs CMD with /bin/sh -c, its output on our stderr (stdout may carry the JSON report),
// for at most `limit`; its exit status 0 or why not.
Result<void> run_shell(const std::string& cmd, std::chrono::seconds limit) {
    pid_t pid = ::fork();
    if (pid < 0) return sys_error("fork", errno);
    if (pid == 0) {
        ::dup2(STDERR_FILENO, STDOUT_FILENO);
        sigset_t none;
        sigemptyset(&none);
        ::sigprocmask(SIG_SETMASK, &none, nullptr); // the command must not inherit our blocked stop signals
        ::execl("/bin/sh", "sh", "-c", cmd.c_str(), static_cast<char*>(nullptr));
        ::_exit(127);
    }
    auto deadline = Clock::now() + limit;
    for (;;) {
        int status = 0;
        pid_t r = ::waitpid(pid, &status, WNOHANG);
        if (r == pid) {
            if (WIFEXITED(status) && WEXITSTATUS(status) == 0) return {};
            if (WIFEXITED(status)) return make_error(Errc::system, fmt::format("`{}` exited with status {}", cmd, WEXITSTATUS(status)));
            return make_error(Errc::system, fmt::format("`{}` ended by signal {}", cmd, WTERMSIG(status)));
        }
        if (r < 0 && errno != EINTR) return sys_error("waiting for `" + cmd + "`", errno);
        if (Clock::now() >= deadline) {
            ::kill(pid, SIGKILL);
            ::waitpid(pid, &status, 0);
            return make_error(Errc::timeout, fmt::format("`{}` did not finish within {} s (killed)", cmd, limit.count()));
        }
        std::this_thread::sleep_for(milliseconds(10));
    }
}

// Sends {"cmd":"drill","fault":"corrupt-link"} to the primary; the Unix time of the flip.
Result<double> corrupt_link(const std::string& primary_socket) {
    auto doc = US_TRY(control_action(primary_socket, R"({"cmd":"drill","fault":"corrupt-link"})", milliseconds(5000)));
    const Json* t = doc.find("flipped_unix_s");
    double v = 0;
    if (!t || t->kind != Json::Kind::number ||
        std::from_chars(t->text.data(), t->text.data() + t->text.size(), v).ec != std::errc() || !std::isfinite(v))
        return make_error(Errc::invalid_input, "the primary's answer has no \"flipped_unix_s\" number");
    return v;
}

// Waits `d`, or less when SIGINT/SIGTERM arrives (then `interrupted` is set): a drill
// stopped by the operator still cleans up (a stopped primary killed, a cut healed).
void wait_or_stop(duration<double> d, bool& interrupted) {
    const auto end = Clock::now() + std::chrono::duration_cast<Clock::duration>(d);
    while (!interrupted) {
        auto left = std::chrono::duration_cast<milliseconds>(end - Clock::now());
        if (left.count() <= 0) return;
        if (take_stop_signal(std::min(left, milliseconds(10))) != 0) interrupted = true;
    }
}

// Why the pair is not in the state a drill starts from, if it is not.
std::optional<std::string> not_ready(const StatusSnapshot& primary, const std::string& primary_socket,
                                     const StatusSnapshot& backup, const std::string& backup_socket) {
    if (primary.role != Role::primary || !primary.active_primary || primary.state != ProtectionState::protected_)
        return fmt::format("{} is not an active, protected primary ({}); a drill starts from a protected pair",
                           primary_socket, state_text(primary));
    if (backup.role != Role::backup) return fmt::format("{} is not a backup ({})", backup_socket, state_text(backup));
    if (backup.state != ProtectionState::receiving)
        return fmt::format("the backup {} receives no checkpoints ({})", backup_socket, state_text(backup));
    return std::nullopt;
}

std::string random_run_id() {
    std::random_device rd;
    return fmt::format("{:08x}{:08x}", rd(), rd());
}

// ---------------------------------------------------------------------------------------
// Watching the survivor serve.

// For `watch` after the service answered again: the clients' replies must keep coming
// (no gap longer than `max_stall`) and the survivor's status must stay reachable and
// active. Why it stopped serving, if it did; `watched_s` says for how long it served.
std::optional<std::string> watch_survivor(const DrillClient& client, const std::string& survivor_socket,
                                          duration<double> watch, duration<double> max_stall, double& watched_s,
                                          bool& interrupted) {
    const auto start = Clock::now(), end = start + std::chrono::duration_cast<Clock::duration>(watch);
    auto next_status = start;
    std::optional<std::string> stopped;
    while (!interrupted && !stopped && Clock::now() < end) {
        const auto now = Clock::now();
        const auto last = client.last_reply().value_or(start);
        if (now - std::max(last, start) > max_stall)
            stopped = fmt::format("the service answered no write for {:.1f} s", duration<double>(now - std::max(last, start)).count());
        else if (!survivor_socket.empty() && now >= next_status) {
            next_status = now + kSurvivorStatusEvery;
            auto s = fetch_status(survivor_socket, milliseconds(2000));
            if (!s) stopped = "the survivor's status is unreachable: " + s.error().describe();
            else if (!s->active_primary) stopped = "the survivor no longer runs the VM as the active primary (" + state_text(*s) + ")";
        }
        if (!stopped) wait_or_stop(milliseconds(20), interrupted);
    }
    watched_s = duration<double>(Clock::now() - start).count();
    return stopped;
}


// ---------------------------------------------------------------------------------------
// The phases of a drill that decide nothing on their own.

// Does what KIND says; `t_fault` becomes the instant of the fault, `rep.fault` says what.
Result<void> inject_fault(DrillKind kind, pid_t target_pid, const std::string& partition_cmd,
                          const std::string& primary_socket, const WallClock& wall, DrillReport& rep,
                          Clock::time_point& t_fault) {
    switch (kind) {
    case DrillKind::kill_primary:
    case DrillKind::hang_primary:
    case DrillKind::kill_backup: {
        int sig = kind == DrillKind::hang_primary ? SIGSTOP : SIGKILL;
        rep.fault = fmt::format("{} to the {} (pid {})", sig == SIGSTOP ? "SIGSTOP" : "SIGKILL",
                                primary_fails(kind) ? "primary" : "backup", target_pid);
        t_fault = Clock::now();
        if (::kill(target_pid, sig) != 0) return sys_error("signalling pid " + std::to_string(target_pid), errno);
        return {};
    }
    case DrillKind::partition:
        rep.fault = "--partition-command";
        t_fault = Clock::now();
        return run_shell(partition_cmd, std::chrono::seconds(60));
    case DrillKind::corrupt_link: {
        rep.fault = "one bit of the checkpoint stream flipped by the primary";
        t_fault = wall.steady(US_TRY(corrupt_link(primary_socket)));
        return {};
    }
    }
    return make_error(Errc::invalid_input, "unknown drill kind");
}

// Detection, promotion and the survivor, from what the monitor saw.
void judge_reaction(DrillReport& rep, const Observed& seen, Clock::time_point t_fault, const std::string& primary_socket,
                    const std::string& backup_socket) {
    auto since_fault = [&](std::optional<Clock::time_point> t) -> std::optional<double> {
        if (!t) return std::nullopt;
        return duration<double, std::milli>(*t - t_fault).count();
    };
    const auto& lf = seen.backup_last ? seen.backup_last->last_failover : std::nullopt;
    const bool promoted = seen.backup_last && seen.backup_last->promoted;
    if (promoted && lf && lf->detected_unix_s >= rep.fault_unix_s - 1.0) {
        rep.detection_ms = (lf->detected_unix_s - rep.fault_unix_s) * 1e3;
        if (lf->running_unix_s) rep.promotion_ms = (*lf->running_unix_s - lf->detected_unix_s) * 1e3;
        rep.detection_source = "fault -> the backup's session ended, status.last_failover";
    } else if (promoted) {
        rep.detection_ms = since_fault(seen.backup_promoting);
        if (seen.backup_promoting && seen.backup_active)
            rep.promotion_ms = duration<double, std::milli>(*seen.backup_active - *seen.backup_promoting).count();
        rep.detection_source = "fault -> the backup's state promoting, status polled every 5 ms";
    } else if (rep.kind == DrillKind::kill_backup || seen.primary_unprotected) {
        rep.detection_ms = since_fault(seen.primary_unprotected);
        rep.detection_source = "fault -> the primary's state unprotected, status polled every 5 ms";
    } else if (seen.backup_waiting) {
        rep.detection_ms = since_fault(seen.backup_waiting);
        rep.detection_source = "fault -> the backup's session ended, status polled every 5 ms";
    }

    // Survivor: who runs the VM for clients now.
    const bool backup_serves = promoted && seen.backup_last->active_primary;
    const bool primary_serves = !primary_fails(rep.kind) && seen.primary_last && seen.primary_last->active_primary;
    if (backup_serves) {
        rep.survivor = "backup";
        rep.survivor_socket = backup_socket;
        rep.survivor_state = state_text(*seen.backup_last);
    } else if (primary_serves) {
        rep.survivor = "primary";
        rep.survivor_socket = primary_socket;
        rep.survivor_state = state_text(*seen.primary_last);
    } else {
        rep.survivor = "none";
    }
    if (backup_serves && primary_serves)
        rep.notes.push_back("both instances run the VM (split brain without an arbiter); clients reach the one the network "
                            "last learned (the promoted backup announces itself)");
}

// The outage (the longest gap between successful replies) and the connections' fate.
void tally_clients(DrillReport& rep, const DrillClient& client) {
    auto replies = client.replies();
    for (size_t i = 1; i < replies.size(); ++i) {
        double gap = duration<double, std::milli>(replies[i] - replies[i - 1]).count();
        if (!rep.outage_ms || gap > *rep.outage_ms) rep.outage_ms = gap;
    }
    for (const auto& s : client.stats()) {
        rep.reconnects += s.reconnects;
        rep.broken += s.broken;
        rep.in_doubt += s.in_doubt;
        if (s.broken > 0 || s.reconnects > 0) rep.connections_survived = false;
    }
}

// Every reason the drill failed; a pass when there is none.
void judge_verdict(DrillReport& rep, bool interrupted, bool reacted, bool served, double wait_limit, bool promoted) {
    const DrillKind kind = rep.kind;
    if (interrupted) rep.reasons.push_back("interrupted (SIGINT or SIGTERM) before the drill finished");
    else if (!reacted) rep.reasons.push_back(fmt::format("the pair did not react within {:g} s", wait_limit));
    else if (!served) rep.reasons.push_back(fmt::format("the service did not answer again within {:g} s of the fault", wait_limit));
    if (rep.service_stopped)
        rep.reasons.push_back(fmt::format("the survivor stopped serving {:.1f} s into the watch: {}", rep.watched_s, *rep.service_stopped));
    if (rep.selfcheck && rep.selfcheck->front() != '+') rep.reasons.push_back("the service's self-check failed: " + *rep.selfcheck);
    if (rep.verification_verdict == "mismatch")
        rep.reasons.push_back("before the fault, the replica differed from the VM: " + *rep.verification);
    if (rep.readback_error) rep.reasons.push_back("the read-back failed: " + *rep.readback_error);
    else if (rep.lost) rep.reasons.push_back(fmt::format("{} acknowledged writes lost (e.g. {})", rep.lost, rep.lost_examples.front()));
    if (rep.survivor == "none") rep.reasons.push_back("nobody serves");
    if (primary_fails(kind) && rep.survivor != "backup") rep.reasons.push_back("the backup did not take over");
    if ((kind == DrillKind::kill_backup || kind == DrillKind::corrupt_link) && rep.survivor != "primary")
        rep.reasons.push_back("the primary does not serve on");
    if (kind == DrillKind::corrupt_link && promoted) rep.reasons.push_back("the backup promoted after a corrupt stream");
    if (primary_fails(kind) && !rep.connections_survived)
        rep.reasons.push_back(fmt::format("client connections did not survive ({} broken, {} reconnects)", rep.broken, rep.reconnects));
    if (rep.acknowledged == 0) rep.reasons.push_back("no write was acknowledged");
    rep.pass = rep.reasons.empty();
}

} // namespace

// ---------------------------------------------------------------------------------------

int drill_command(const std::vector<std::string>& args) {
    std::string kind_text, primary_socket, backup_socket, service_text, partition_cmd, heal_cmd;
    unsigned connections = 4, interval_ms = 5;
    double warmup = 2, after = 30, wait_limit = 30, max_stall = 5, reply_timeout = 6;
    bool json = false;
    po::options_description desc("Options");
    desc.add_options()("help,h", "show this help")
        ("kind", po::value(&kind_text)->required(), "kill-primary | hang-primary | kill-backup | partition | corrupt-link")
        ("primary-socket", po::value(&primary_socket)->required(), "the primary's --control-socket")
        ("backup-socket", po::value(&backup_socket)->required(), "the backup's --control-socket")
        ("service", po::value(&service_text)->required(), "the guest's RESP service, HOST:PORT, as clients reach it")
        ("connections", po::value(&connections)->default_value(4), "client connections writing (1..64)")
        ("interval-ms", po::value(&interval_ms)->default_value(5),
         "pause between a reply and the connection's next write (0..1000; 0: as fast as the service answers)")
        ("warmup", po::value(&warmup)->default_value(2), "seconds of writes before the fault (0..600)")
        ("after", po::value(&after)->default_value(30),
         "seconds to watch the survivor after it serves again (0..600): the writes must go on being answered")
        ("max-stall", po::value(&max_stall)->default_value(5),
         "while watching, the longest the service may answer no write before the drill fails (0.1..600 s)")
        ("reply-timeout", po::value(&reply_timeout)->default_value(6),
         "seconds a client connection waits for a reply before it gives up and reconnects (counted as a broken "
         "connection; 1..600): the patience of the clients whose connections must survive")
        ("timeout", po::value(&wait_limit)->default_value(30),
         "seconds to wait for the pair to react to the fault and serve again (1..600)")
        ("partition-command", po::value(&partition_cmd), "partition: the shell command that cuts primary <-> backup")
        ("heal-command", po::value(&heal_cmd), "partition: the shell command that heals the cut, run after the read-back")
        ("json", po::bool_switch(&json), "print one JSON object instead of the table");
    po::positional_options_description pos;
    pos.add("kind", 1);
    const char* usage =
        "usage: understudy drill KIND --primary-socket P --backup-socket B --service HOST:PORT [options]\n"
        "  KIND: kill-primary | hang-primary | kill-backup | partition | corrupt-link.\n"
        "  Injects one fault into a running, protected pair while a client writes unique keys through\n"
        "  the guest's RESP service, then reads every acknowledged key back and reports detection,\n"
        "  promotion, the client-observed outage, writes lost and whether connections survived; the\n"
        "  survivor is watched serving for --after seconds, and the service's SELFCHECK asked last.\n"
        "  The signal kinds need the process on this host; partition needs --partition-command.\n"
        "  Exit codes: 0 the drill passed, 2 bad usage or the pair is not ready for a drill,\n"
        "  3 a socket, the service or the fault could not be reached or injected, 5 the drill failed.";
    po::variables_map vm;
    try {
        po::store(po::command_line_parser(args).options(desc).positional(pos).run(), vm);
        if (vm.count("help")) {
            std::cout << usage << "\n" << desc << "\n";
            return kExitPass;
        }
        if (!vm.count("kind")) {
            std::fprintf(stderr, "understudy drill: missing KIND (one of kill-primary, hang-primary, kill-backup, partition, "
                                 "corrupt-link); see 'understudy drill --help'\n");
            return kExitUsage;
        }
        po::notify(vm);
    } catch (const po::error& e) {
        std::fprintf(stderr, "understudy drill: %s; see 'understudy drill --help'\n", e.what());
        return kExitUsage;
    }
    auto usage_error = [](const std::string& what) {
        std::fprintf(stderr, "understudy drill: %s\n", what.c_str());
        return kExitUsage;
    };
    std::optional<DrillKind> kind;
    for (auto [k, name] : kDrillKinds)
        if (kind_text == name) kind = k;
    if (!kind)
        return usage_error("unknown KIND '" + kind_text.substr(0, 64) +
                           "' (one of kill-primary, hang-primary, kill-backup, partition, corrupt-link)");
    if (*kind == DrillKind::partition && partition_cmd.empty())
        return usage_error("partition needs --partition-command CMD (the command that cuts primary <-> backup here)");
    if (*kind != DrillKind::partition && (!partition_cmd.empty() || !heal_cmd.empty()))
        return usage_error("--partition-command and --heal-command are for KIND partition only");
    if (connections < 1 || connections > 64) return usage_error("--connections must be between 1 and 64");
    if (interval_ms > 1000) return usage_error("--interval-ms must be between 0 and 1000");
    for (auto [name, v, lo] : {std::tuple{"--warmup", warmup, 0.0}, {"--after", after, 0.0}, {"--timeout", wait_limit, 1.0},
                               {"--max-stall", max_stall, 0.1}, {"--reply-timeout", reply_timeout, 1.0}})
        if (!std::isfinite(v) || v < lo || v > 600) return usage_error(fmt::format("{} must be between {:g} and 600 seconds", name, lo));
    auto service = Endpoint::parse(service_text);
    if (!service || service->port == 0) return usage_error("--service must be HOST:PORT (a port 1..65535), not '" + service_text.substr(0, 100) + "'");
    if (primary_socket == backup_socket) return usage_error("--primary-socket and --backup-socket are the same socket");

    // 1. Both instances answer, in the state a drill starts from: checked now, and again
    // after the warmup (a pair that lost protection meanwhile would fail the drill for a
    // reason that is not the fault's). An exit code if not.
    std::optional<StatusSnapshot> primary, backup;
    auto check_pair = [&](const std::string& when) -> std::optional<int> {
        for (auto [who, path, into] : {std::tuple{"primary", &primary_socket, &primary}, {"backup", &backup_socket, &backup}}) {
            auto s = fetch_status(*path, milliseconds(5000));
            if (!s) {
                std::fprintf(stderr, "understudy drill: %sthe %s (%s): %s\n", when.c_str(), who, path->c_str(),
                             s.error().describe().c_str());
                return kExitUnreachable;
            }
            *into = std::move(*s);
        }
        if (auto why = not_ready(*primary, primary_socket, *backup, backup_socket)) return usage_error(when + *why);
        return std::nullopt;
    };
    if (auto code = check_pair("")) return *code;
    // The signal kinds act on a process of this host.
    const bool signals_primary = primary_fails(*kind), signals_backup = *kind == DrillKind::kill_backup;
    const pid_t target_pid = pid_t(signals_primary ? primary->pid : backup->pid);
    if (signals_primary || signals_backup) {
        const char* who = signals_primary ? "primary" : "backup";
        if (target_pid <= 1) return usage_error(fmt::format("the {}'s status names no usable pid ({})", who, target_pid));
        if (::kill(target_pid, 0) != 0) {
            if (errno == ESRCH)
                return usage_error(fmt::format("the {} (pid {}) is not a process of this host: {} signals it, so run the "
                                               "drill on the {}'s host", who, target_pid, drill_kind_name(*kind), who));
            std::fprintf(stderr, "understudy drill: may not signal the %s (pid %d): %s\n", who, int(target_pid), std::strerror(errno));
            return kExitUnreachable;
        }
    }

    // 2. The verifying client.
    auto say = [json](const std::string& s) {
        if (!json) std::fprintf(stderr, "drill: %s\n", s.c_str());
    };
    WallClock wall;
    const std::string run_id = random_run_id();
    DrillClient client(*service, connections, run_id, milliseconds(interval_ms),
                       duration_cast<milliseconds>(duration<double>(reply_timeout)));
    say(fmt::format("writing drill:{}:* through {} on {} connections", run_id, service_text, connections));
    client.start();
    bool interrupted = false;
    auto stopped_before_fault = [&] {
        client.stop();
        std::fprintf(stderr, "understudy drill: interrupted before the fault; nothing was injected\n");
        return kExitFailed;
    };
    if (!client.wait_ready(Clock::now() + std::chrono::seconds(10), interrupted)) {
        if (interrupted) return stopped_before_fault();
        client.stop();
        std::fprintf(stderr, "understudy drill: the service at %s did not answer every connection within 10 s%s\n",
                     service_text.c_str(), client.stats().empty() || client.stats()[0].errors.empty() ? ""
                                                   : (" (" + client.stats()[0].errors[0] + ")").c_str());
        return kExitUnreachable;
    }
    wait_or_stop(duration<double>(warmup), interrupted);
    if (interrupted) return stopped_before_fault();
    if (auto code = check_pair("after the warmup, before any fault: ")) {
        client.stop();
        return *code;
    }
    // The replica is the VM before the fault (online verification): a failover onto a
    // replica that differs would prove nothing, and none is promoted (DESIGN.md invariant 7).
    DrillReport rep;
    say("verifying the backup's replica against the VM (`understudy verify`)");
    if (auto verified = run_verification(primary_socket, std::chrono::seconds(std::lround(wait_limit)))) {
        rep.verification = verify_pass_text(*verified);
        rep.verification_verdict = verified->verdict;
        if (verified->verdict == "unanswered") rep.notes.push_back("the backup does not verify (an older version)");
    } else if (verified.error().message.find("unknown command 'verify'") != std::string::npos) {
        rep.notes.push_back("the primary does not verify (an older version)");
    } else {
        client.stop();
        std::fprintf(stderr, "understudy drill: verifying the replica before the fault: %s\n", verified.error().describe().c_str());
        return kExitUnreachable;
    }

    // 3. The fault.
    rep.kind = *kind;
    rep.connections = connections;
    // Whom to watch: the backup when it may promote, the primary when it should live on.
    const bool watch_backup = *kind != DrillKind::kill_backup, watch_primary = !primary_fails(*kind);
    PairMonitor monitor(primary_socket, backup_socket, watch_primary, watch_backup);
    Clock::time_point t_fault = Clock::now();
    Result<void> injected = inject_fault(*kind, target_pid, partition_cmd, primary_socket, wall, rep, t_fault);
    monitor.start();
    rep.fault_unix_s = wall.at(t_fault);
    if (!injected) {
        monitor.stop();
        client.stop();
        std::fprintf(stderr, "understudy drill: the fault was not injected: %s\n", injected.error().describe().c_str());
        return kExitUnreachable;
    }
    say(rep.fault + " at " + iso_utc(rep.fault_unix_s));

    // 4. The pair's reaction, then --after seconds of service.
    const auto limit = t_fault + std::chrono::duration_cast<Clock::duration>(duration<double>(wait_limit));
    std::optional<Clock::time_point> reacted; // the survivor took over (or knew it was alone)
    while (Clock::now() < limit && !interrupted) {
        Observed o = monitor.observed();
        if (primary_fails(*kind)) reacted = o.backup_active;
        else if (*kind == DrillKind::kill_backup || *kind == DrillKind::corrupt_link) reacted = o.primary_unprotected;
        else reacted = o.backup_active ? o.backup_active : o.primary_unprotected;
        if (reacted) break;
        wait_or_stop(kPollEvery, interrupted);
    }
    std::optional<Clock::time_point> served;
    if (reacted) {
        say("the pair reacted; waiting for the service to answer again");
        while (Clock::now() < limit && !interrupted && !(served = client.reply_after(std::max(*reacted, t_fault))))
            wait_or_stop(milliseconds(10), interrupted);
    }
    if (served) {
        say(fmt::format("served again {:.1f} ms after the fault; watching the survivor serve for {:g} s",
                        duration<double, std::milli>(*served - t_fault).count(), after));
        Observed o = monitor.observed();
        const bool backup_took_over = primary_fails(*kind) || (*kind == DrillKind::partition && o.backup_active);
        rep.service_stopped = watch_survivor(client, backup_took_over ? backup_socket : primary_socket, duration<double>(after),
                                             duration<double>(max_stall), rep.watched_s, interrupted);
    }
    // For a partition, a promotion can follow the primary's loss of its backup: give the
    // backup its failure timeout before judging who serves.
    if (*kind == DrillKind::partition) wait_or_stop(milliseconds(500), interrupted);
    client.stop();
    monitor.stop();
    Observed seen = monitor.observed();

    judge_reaction(rep, seen, t_fault, primary_socket, backup_socket);
    const bool promoted = seen.backup_last && seen.backup_last->promoted;

    // 5. Read back every acknowledged key.
    auto acked = client.acknowledged();
    rep.acknowledged = acked.size();
    say(fmt::format("reading {} acknowledged keys back", acked.size()));
    Readback rb = read_back(*service, acked, Clock::now() + std::chrono::seconds(interrupted ? 5 : 30));
    rep.readback_error = rb.error;
    rep.missing = rb.missing;
    rep.wrong = rb.wrong;
    rep.lost = rb.error ? rep.acknowledged : rb.missing + rb.wrong; // nothing verified: every write counts as lost
    rep.lost_examples = rb.examples;
    tally_clients(rep, client);
    // The service's check of its own data structures, last: a stray write into guest
    // memory (a bad checkpoint, a VMM bug) shows there even where every key read back.
    if (auto sc = ask_selfcheck(*service, Clock::now() + std::chrono::seconds(10)); !sc)
        rep.notes.push_back("SELFCHECK could not be asked: " + sc.error().describe());
    else if (sc->rfind("-ERR unknown", 0) == 0)
        rep.notes.push_back("the service has no SELFCHECK (" + sc->substr(0, 60) + ")");
    else
        rep.selfcheck = sc->substr(0, 200);

    // After the drill: a stopped primary must not be left to resume; a cut is healed.
    if (*kind == DrillKind::hang_primary) {
        if (::kill(target_pid, SIGKILL) == 0)
            rep.notes.push_back(fmt::format("the stopped primary (pid {}) was killed: resumed, it would run a second copy "
                                            "of the VM", target_pid));
        else
            rep.notes.push_back(fmt::format("could not kill the stopped primary (pid {}): {}; kill it by hand", target_pid,
                                            std::strerror(errno)));
    }
    if (*kind == DrillKind::partition && !heal_cmd.empty()) {
        if (auto h = run_shell(heal_cmd, std::chrono::seconds(60)); !h)
            rep.notes.push_back("the heal command failed: " + h.error().describe());
        else
            rep.notes.push_back("the cut was healed (--heal-command) after the read-back");
    }

    judge_verdict(rep, interrupted, reacted.has_value(), served.has_value(), wait_limit, promoted);

    std::fputs(json ? (report_json(rep) + "\n").c_str() : report_text(rep).c_str(), stdout);
    std::fflush(stdout);
    return rep.pass ? kExitPass : kExitFailed;
}

} // namespace understudy::cli
