#include "cli/action_command.hpp"

#include <boost/program_options.hpp>
#include <fmt/format.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <optional>
#include <charconv>
#include <thread>

#include "cli/control_socket.hpp"
#include "cli/operations.hpp"
#include "cli/status.hpp"
#include "cli/status_command.hpp"
#include "common/json.hpp"

namespace understudy::cli {

namespace po = boost::program_options;

namespace {

// Parses an action's options; nullopt to go on, else the exit code (--help: 0, bad usage: 2).
std::optional<int> parse_action(const char* name, const char* usage, const std::vector<std::string>& args,
                                const po::options_description& desc, const po::positional_options_description& pos) {
    po::variables_map vm;
    try {
        po::store(po::command_line_parser(args).options(desc).positional(pos).run(), vm);
        if (vm.count("help")) {
            std::cout << usage << "\n" << desc << "\n";
            return 0;
        }
        po::notify(vm);
    } catch (const po::error& e) {
        std::fprintf(stderr, "understudy %s: %s; see 'understudy %s --help'\n", name, e.what(), name);
        return 2;
    }
    return std::nullopt;
}

// Sends one action request and returns its successful answer, or prints why there is none
// (the instance cannot be reached, or it refused) and returns nullopt: exit code 3.
std::optional<Json> send_action(const std::string& socket, const std::string& request) {
    // A little longer than the instance waits for its VM, so that its own answer arrives.
    auto doc = control_action(socket, request, kActionTimeout + std::chrono::seconds(5));
    if (!doc) {
        std::fprintf(stderr, "understudy: %s\n", doc.error().describe().c_str());
        return std::nullopt;
    }
    return std::move(*doc);
}

} // namespace

int snapshot_command(const std::vector<std::string>& args) {
    std::string socket, file;
    po::options_description desc("Options");
    desc.add_options()("help,h", "show this help")
        ("control-socket", po::value(&socket)->required(), "the instance's control socket (its --control-socket)")
        ("file", po::value(&file)->required(), "the snapshot file to write (on the instance's host)");
    po::positional_options_description pos;
    pos.add("file", 1);
    const char* usage = "usage: understudy snapshot --control-socket PATH FILE\n"
                        "  Has a running VM save itself to FILE (as `run --snapshot-to` does; a protected VM inside a\n"
                        "  checkpoint's pause) and carry on; `understudy restore FILE` boots the copy.\n"
                        "  Exit codes: 0 saved, 2 bad usage,\n"
                        "  3 the instance could not be reached or did not save the snapshot.";
    if (auto code = parse_action("snapshot", usage, args, desc, pos)) return *code;
    // The instance may run in another directory: it is given an absolute path.
    std::error_code ec;
    auto absolute = std::filesystem::absolute(file, ec);
    if (ec || file.empty()) {
        std::fprintf(stderr, "understudy: snapshot file '%s' is not a usable path\n", file.c_str());
        return 2;
    }
    JsonWriter request;
    request.begin_object().string("cmd", "snapshot").string("path", absolute.string()).end_object();
    auto answer = send_action(socket, request.str());
    if (!answer) return 3;
    const Json* bytes = answer->find("bytes");
    const Json* pause = answer->find("pause_s");
    if (!bytes || bytes->kind != Json::Kind::number || !pause || pause->kind != Json::Kind::number) {
        std::fprintf(stderr, "understudy: the instance's answer has no \"bytes\" or \"pause_s\"\n");
        return 3;
    }
    std::printf("snapshot: %s: %s bytes; the guest paused %.1f ms\n", absolute.c_str(), bytes->text.c_str(),
                std::strtod(pause->text.c_str(), nullptr) * 1000);
    return 0;
}

int reprotect_command(const std::vector<std::string>& args) {
    std::string socket, backup;
    po::options_description desc("Options");
    desc.add_options()("help,h", "show this help")
        ("control-socket", po::value(&socket)->required(), "the instance's control socket (its --control-socket)")
        ("backup", po::value(&backup)->required(), "the new backup's HOST:PORT (`understudy backup --listen`)");
    const char* usage = "usage: understudy reprotect --control-socket PATH --backup HOST:PORT\n"
                        "  Has a VM that runs unprotected stream checkpoints to a new backup while the guest runs,\n"
                        "  with the instance's own link options. Exit codes: 0 protected again, 2 bad usage,\n"
                        "  3 the instance could not be reached, is already protected, or could not reach the backup.";
    if (auto code = parse_action("reprotect", usage, args, desc, {})) return *code;
    JsonWriter request;
    request.begin_object().string("cmd", "reprotect").string("backup", backup).end_object();
    if (!send_action(socket, request.str())) return 3;
    std::printf("reprotect: the VM is protected again by the backup at %s\n", backup.c_str());
    return 0;
}

int failover_command(const std::vector<std::string>& args) {
    std::string socket;
    po::options_description desc("Options");
    desc.add_options()("help,h", "show this help")
        ("control-socket", po::value(&socket)->required(), "the primary's control socket (its --control-socket)");
    const char* usage = "usage: understudy failover --control-socket PATH\n"
                        "  Planned switchover: the protected VM's backup takes over from a last checkpoint taken\n"
                        "  now, with nothing lost and no failure timeout to wait for; the primary then stops.\n"
                        "  Exit codes: 0 the backup runs the VM, 2 bad usage, 3 the instance could not be reached\n"
                        "  or did not hand over (the reason is printed; the VM runs on where it was).";
    if (auto code = parse_action("failover", usage, args, desc, {})) return *code;
    JsonWriter request;
    request.begin_object().string("cmd", "failover").end_object();
    auto answer = send_action(socket, request.str());
    if (!answer) return 3;
    const Json* epoch = answer->find("epoch");
    if (!epoch || epoch->kind != Json::Kind::number) {
        std::fprintf(stderr, "understudy: the instance's answer has no \"epoch\"\n");
        return 3;
    }
    std::printf("failover: the backup runs the VM from checkpoint %s; the old primary stops\n", epoch->text.c_str());
    return 0;
}

Result<VerifyPassFigures> run_verification(const std::string& socket, std::chrono::seconds limit) {
    auto answer = US_TRY(control_action(socket, R"({"cmd":"verify"})", kActionTimeout + std::chrono::seconds(5)));
    const Json* pass_field = answer.find("pass");
    uint64_t pass = 0;
    if (!pass_field || pass_field->kind != Json::Kind::number ||
        std::from_chars(pass_field->text.data(), pass_field->text.data() + pass_field->text.size(), pass).ec != std::errc())
        return make_error(Errc::invalid_input, "the instance's answer has no \"pass\"");
    // The pass runs over the next checkpoints; its verdict appears in status.
    const auto deadline = std::chrono::steady_clock::now() + limit;
    for (;;) {
        auto status = US_TRY(fetch_status(socket, std::chrono::seconds(5)));
        if (const auto& last = status.verification.last; last && last->pass >= pass) return *last;
        if (status.role != Role::primary || status.state != ProtectionState::protected_)
            return make_error(Errc::state, fmt::format("the VM is no longer protected ({}{}{}) and pass {} gave no verdict",
                                                       state_name(status.state), status.reason.empty() ? "" : ": ",
                                                       status.reason, pass));
        if (std::chrono::steady_clock::now() >= deadline)
            return make_error(Errc::timeout, fmt::format("pass {} gave no verdict within {} s; it may still complete (see "
                                                         "`understudy status`)", pass, limit.count()));
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
}

int verify_command(const std::vector<std::string>& args) {
    std::string socket;
    unsigned timeout_s = 600;
    po::options_description desc("Options");
    desc.add_options()("help,h", "show this help")
        ("control-socket", po::value(&socket)->required(), "the primary's control socket (its --control-socket)")
        ("timeout-s", po::value(&timeout_s)->default_value(timeout_s), "give up waiting for the pass's verdict after this long");
    const char* usage = "usage: understudy verify --control-socket PATH [--timeout-s SECONDS]\n"
                        "  Online verification: the protected VM's primary takes the digest of every page and of the\n"
                        "  state, a slice per checkpoint, and its backup compares them with its replica. Prints the\n"
                        "  verdict, naming the pages and the parts of the state that differ.\n"
                        "  Exit codes: 0 the replica matches the VM, 1 it differs, 2 bad usage, 3 the instance could\n"
                        "  not be reached, refused, or gave no verdict in time (the reason is printed).";
    if (auto code = parse_action("verify", usage, args, desc, {})) return *code;
    auto verdict = run_verification(socket, std::chrono::seconds(timeout_s));
    if (!verdict) {
        std::fprintf(stderr, "understudy: %s\n", verdict.error().describe().c_str());
        return 3;
    }
    const std::string text = "verify: " + verify_pass_text(*verdict);
    if (verdict->verdict == "unanswered") {
        std::fprintf(stderr, "understudy: %s\n", text.c_str());
        return 3;
    }
    std::printf("%s\n", text.c_str());
    return verdict->verdict == "match" ? 0 : 1;
}

} // namespace understudy::cli
