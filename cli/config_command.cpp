#include "cli/config_command.hpp"

#include <algorithm>
#include <cstdio>
#include <utility>

#include "cli/backup_command.hpp"
#include "cli/config.hpp"
#include "cli/run_command.hpp"

namespace understudy::cli {

namespace {

const char* kUsage =
    "usage: understudy config check FILE...\n"
    "  Checks config files (docs/config.md) for `understudy run|restore|backup --config FILE`:\n"
    "  TOML syntax, sections, every key against the flags of the commands that read it, each\n"
    "  value's type and range, and combinations of settings. Prints every problem as\n"
    "  FILE:LINE: message on stderr.\n"
    "  Exit codes: 0 no problems, 2 a problem in a file or bad usage, 3 a file could not be read.";

} // namespace

int config_command(const std::vector<std::string>& args) {
    if (args.size() == 1 && (args[0] == "--help" || args[0] == "-h")) {
        std::puts(kUsage);
        return 0;
    }
    if (args.empty() || args[0] != "check") {
        std::fprintf(stderr, "understudy config: %s; see 'understudy config --help'\n",
                     args.empty() ? "missing subcommand 'check'" : ("unknown subcommand '" + args[0] + "'").c_str());
        return 2;
    }
    if (args.size() == 2 && (args[1] == "--help" || args[1] == "-h")) {
        std::puts(kUsage);
        return 0;
    }
    if (args.size() < 2) {
        std::fprintf(stderr, "understudy config check: missing FILE; see 'understudy config --help'\n");
        return 2;
    }
    static const std::pair<std::string_view, CommandFn> commands[] = {
        {"run", run_command}, {"restore", restore_command}, {"backup", backup_command}};
    int code = 0;
    for (size_t i = 1; i < args.size(); ++i) {
        if (args[i].starts_with("-")) {
            std::fprintf(stderr, "understudy config check: unknown option '%s'; see 'understudy config --help'\n",
                         args[i].c_str());
            return 2;
        }
        auto file = load_config(args[i]);
        if (!file) {
            std::fprintf(stderr, "understudy config check: %s\n", file.error().describe().c_str());
            code = std::max(code, file.error().code == Errc::invalid_input ? 2 : 3); // too large: bad input
            continue;
        }
        auto problems = check_config(*file, commands);
        for (const auto& p : problems) std::fprintf(stderr, "%s\n", p.str().c_str());
        if (problems.empty())
            std::printf("%s: ok (%zu settings)\n", args[i].c_str(), file->values.size());
        else if (code == 0)
            code = 2;
    }
    return code;
}

} // namespace understudy::cli
