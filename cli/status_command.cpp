#include "cli/status_command.hpp"

#include <unistd.h>

#include <boost/program_options.hpp>

#include <cmath>
#include <cstdio>
#include <iostream>

#include "cli/control_socket.hpp"
#include "cli/status.hpp"
#include "cli/stop_signals.hpp"
#include "common/json.hpp"

namespace understudy::cli {

namespace po = boost::program_options;

Result<StatusSnapshot> fetch_status(const std::string& path, std::chrono::milliseconds timeout) {
    auto line = US_TRY(control_request(path, R"({"cmd":"status"})", timeout));
    auto doc = parse_json(line);
    if (!doc) return std::move(doc.error()).wrap("the control socket's answer");
    const Json* ok = doc->find("ok");
    if (!ok || ok->kind != Json::Kind::boolean) return make_error(Errc::invalid_input, "the control socket's answer has no \"ok\"");
    if (!ok->boolean) {
        const Json* e = doc->find("error");
        return make_error(Errc::invalid_input, "the instance refused: " + (e && e->kind == Json::Kind::string ? e->text : "?"));
    }
    // The status object's own text: the answer is {"ok":true,"status":{...}}.
    auto at = line.find("\"status\":");
    if (at == std::string::npos || line.empty() || line.back() != '}')
        return make_error(Errc::invalid_input, "the control socket's answer has no \"status\" object");
    return status_from_json(std::string_view(line).substr(at + 9, line.size() - at - 10));
}

int status_command(const std::vector<std::string>& raw_args) {
    std::string socket;
    bool json = false;
    double watch = 0;
    // `--watch` takes an optional number of seconds as the next word.
    std::vector<std::string> args;
    for (size_t i = 0; i < raw_args.size(); ++i) {
        if (raw_args[i] == "--watch") {
            std::string secs = "2";
            if (i + 1 < raw_args.size() && !raw_args[i + 1].empty() && raw_args[i + 1][0] != '-') secs = raw_args[++i];
            args.push_back("--watch=" + secs);
        } else {
            args.push_back(raw_args[i]);
        }
    }
    po::options_description desc("Options");
    desc.add_options()("help,h", "show this help")
        ("control-socket", po::value(&socket)->required(), "the instance's control socket (its --control-socket)")
        ("json", po::bool_switch(&json), "print the status object of docs/status.md (\"format\": 1) on one line")
        ("watch", po::value(&watch), "refresh every SECONDS (default 2) until interrupted");
    const char* usage = "usage: understudy status --control-socket PATH [--json] [--watch [SECONDS]]\n"
                        "  Shows a running instance's role, protection state and figures.";
    po::variables_map vm;
    try {
        po::store(po::command_line_parser(args).options(desc).run(), vm);
        if (vm.count("help")) {
            std::cout << usage << "\n" << desc << "\n";
            return 0;
        }
        po::notify(vm);
    } catch (const po::error& e) {
        std::fprintf(stderr, "understudy status: %s; see 'understudy status --help'\n", e.what());
        return 2;
    }
    if (vm.count("watch") && (!std::isfinite(watch) || watch < 0.1 || watch > 3600)) {
        std::fprintf(stderr, "understudy: --watch must be between 0.1 and 3600 seconds\n");
        return 2;
    }
    const bool tty = ::isatty(STDOUT_FILENO);
    for (;;) {
        auto s = fetch_status(socket);
        if (!s) {
            std::fprintf(stderr, "understudy: %s\n", s.error().describe().c_str());
            if (!vm.count("watch")) return 3;
        } else if (json) {
            std::printf("%s\n", status_to_json(*s).c_str());
        } else {
            if (vm.count("watch") && tty) std::fputs("\033[H\033[2J", stdout);
            std::fputs(status_to_text(*s).c_str(), stdout);
            if (vm.count("watch") && !tty) std::fputs("\n", stdout);
        }
        std::fflush(stdout);
        if (!vm.count("watch")) return 0;
        if (take_stop_signal(std::chrono::milliseconds(static_cast<long>(watch * 1000)))) return 0;
    }
}

} // namespace understudy::cli
