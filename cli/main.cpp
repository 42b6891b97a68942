// The `understudy` command: one binary, one subcommand per thing a user does.

#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "cli/action_command.hpp"
#include "cli/backup_command.hpp"
#include "cli/bench_command.hpp"
#include "cli/config.hpp"
#include "cli/config_command.hpp"
#include "cli/drill_command.hpp"
#include "cli/link_options.hpp"
#include "cli/logging.hpp"
#include "cli/run_command.hpp"
#include "cli/status_command.hpp"
#include "cli/stop_signals.hpp"
#include "cli/verify_command.hpp"

namespace {

const char* kUsage =
    "usage: understudy COMMAND [options]\n"
    "\n"
    "commands:\n"
    "  run IMAGE         boot a PVH guest image and run it until it stops\n"
    "  restore SNAPSHOT  restore a VM saved with `run --snapshot-to` and run it on\n"
    "  backup            receive checkpoints from a protected VM's primary\n"
    "  verify-stream FILE  check a stream captured with `backup --capture` against the spec\n"
    "  status            show a running instance's state and figures (--control-socket PATH)\n"
    "  snapshot FILE     have a running instance save its VM to FILE (--control-socket PATH)\n"
    "  reprotect         protect a running, unprotected VM with a new backup (--backup HOST:PORT)\n"
    "  failover          planned switchover: the VM's backup takes over, nothing lost (--control-socket PATH)\n"
    "  verify            check that the backup's replica is the VM, page by page (--control-socket PATH)\n"
    "  drill KIND        inject a fault into a running protected pair and report (exit 5: the drill failed)\n"
    "  config check FILE   check a config file for `run|restore|backup --config FILE`\n"
    "  bench [--quick]     run the benchmarks; write a report with plots (--out DIR)\n"
    "  keygen FILE       write a fresh link key (--link-key) for a primary and its backup\n"
    "\n"
    "`understudy COMMAND --help` describes each command's options.\n"
    "Every command takes --log-format human|json: log lines for people (the default) or one\n"
    "JSON object per line {\"ts\",\"level\",\"msg\"} for log collectors.\n"
    "Exit codes: 0 success, 1 the guest failed, 2 bad usage or input, 3 host error,\n"
    "4 fenced (another host holds the primary role), 5 a drill failed (`understudy drill`).\n";

} // namespace

int main(int argc, char** argv) {
    understudy::cli::block_stop_signals();
    std::vector<std::string> args(argv + 1, argv + argc);
    auto format = understudy::cli::take_log_format(args);
    if (!format) {
        std::fprintf(stderr, "understudy: %s\n", format.error().message.c_str());
        return 2;
    }
    understudy::cli::set_log_format(format->value_or(understudy::cli::LogFormat::human));
    if (!*format) // a command's --config file may choose; the value is checked by then
        understudy::cli::on_config_log_format([](const std::string& text) {
            if (auto chosen = understudy::cli::parse_log_format(text)) understudy::cli::set_log_format(*chosen);
        });
    if (args.empty()) {
        std::fputs("understudy: missing COMMAND; see 'understudy --help'\n", stderr);
        return 2;
    }
    std::string cmd = args.front();
    args.erase(args.begin());
    if (cmd == "--help" || cmd == "-h" || cmd == "help") {
        std::fputs(kUsage, stdout);
        return 0;
    }
    if (cmd == "run") return understudy::cli::run_command(args);
    if (cmd == "restore") return understudy::cli::restore_command(args);
    if (cmd == "backup") return understudy::cli::backup_command(args);
    if (cmd == "verify-stream") return understudy::cli::verify_stream_command(args);
    if (cmd == "status") return understudy::cli::status_command(args);
    if (cmd == "snapshot") return understudy::cli::snapshot_command(args);
    if (cmd == "reprotect") return understudy::cli::reprotect_command(args);
    if (cmd == "failover") return understudy::cli::failover_command(args);
    if (cmd == "verify") return understudy::cli::verify_command(args);
    if (cmd == "drill") return understudy::cli::drill_command(args);
    if (cmd == "config") return understudy::cli::config_command(args);
    if (cmd == "bench") return understudy::cli::bench_command(args);
    if (cmd == "keygen") return understudy::cli::keygen_command(args);
    std::fprintf(stderr, "understudy: unknown command '%s'; see 'understudy --help'\n", cmd.c_str());
    return 2;
}
