// Settings for the `understudy` subcommands, from the command line and from a TOML file
// (docs/config.md).
//
// A config file is another spelling of the command-line flags: each key is the long name
// of a flag, in a section named after the subcommand ([run], [restore], [backup]) or in
// one of the shared sections ([vm], [network], [protection]) that every subcommand with
// that flag reads. Values are checked against the flag's own type (the type the
// program_options value was declared with) and then by the same option rules
// (cli/option_rules.hpp) as the command line, so a flag added later is settable from the
// file, with the same checks, without touching this code. Command-line flags override
// the file; a command section overrides the shared sections.
#pragma once

#include <boost/program_options.hpp>

#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/error.hpp"

namespace understudy::cli {

// One problem with a config file: where (line 0: the file as a whole) and what.
struct ConfigProblem {
    std::string file;
    unsigned line = 0;
    std::string message;
    std::string str() const; // "FILE:LINE: message"
    bool operator==(const ConfigProblem&) const = default;
};

// One key of a config file, in a neutral form: its TOML type and the value as text.
struct ConfigValue {
    enum class Kind { string, integer, floating, boolean, array, table, date_time };
    std::string section, key;
    unsigned line = 0;
    Kind kind = Kind::string;
    std::vector<std::pair<Kind, std::string>> items; // a scalar: one item; an array: its elements
};
const char* kind_name(ConfigValue::Kind k); // "a string", "an integer", ...

struct ConfigFile {
    std::string path;
    std::vector<ConfigValue> values;     // in file order
    std::vector<ConfigProblem> problems; // syntax and layout problems found while parsing
};

// The sections a file may have. Command sections take any flag of their command; each
// shared section takes the keys listed for it (docs/config.md), for every command that
// has that flag.
inline constexpr std::string_view kCommandSections[] = {"run", "restore", "backup"};
struct SharedSection {
    std::string_view name;
    std::vector<std::string_view> keys;
};
const std::vector<SharedSection>& shared_sections();

// Parses TOML text (the entry point for fuzzing: it never throws). `path` names the file
// in problems.
ConfigFile parse_config(std::string_view text, std::string path);
inline constexpr size_t kMaxConfigBytes = 1 << 20;
// Reads and parses a file; an unreadable file, or one over kMaxConfigBytes, is an error
// (problems in it are not).
Result<ConfigFile> load_config(const std::string& path);

// How a rule names an option in its message: "--epoch-ms" on the command line, "epoch-ms"
// in a config file.
using OptionNamer = std::function<std::string(std::string_view option)>;
// A check on the parsed options of a command, applied when the command has every option in
// `options` (the first is the one a problem is reported at). `check` returns a message
// (without the option's name in front) when the values are wrong.
struct OptionRule {
    std::vector<std::string> options;
    std::function<std::optional<std::string>(const boost::program_options::variables_map&, const OptionNamer&)> check;
};
// True when `name` was given (not just defaulted) and, for a switch, set to true.
bool option_set(const boost::program_options::variables_map& vm, const std::string& name);

// What a subcommand accepts.
struct CommandSpec {
    std::string name;  // "run": its config section and the prefix of its messages
    std::string usage; // first lines of --help
    boost::program_options::options_description& desc;
    boost::program_options::positional_options_description pos{};
    std::vector<OptionRule> rules{};
    bool config = true; // take --config FILE (commands that have a config section)
};

// `log-format` (docs/cli.md, "Logs") is a key of every command section but not a flag that
// parse_command sees: main takes --log-format off the command line first. When the command
// line had none, main installs this to apply a config file's value once the file is checked.
void on_config_log_format(std::function<void(const std::string&)> apply);

// Parses a subcommand's arguments: the command line, then `--config FILE` (added to
// `desc`, with --help), then the rules, then program_options' notify (required options,
// storing into the bound variables). Returns the exit code to return now (0 after --help,
// 2 after a problem, each printed as one line on stderr), or nullopt to go on.
std::optional<int> parse_command(const std::vector<std::string>& args, CommandSpec& spec);

// Checks a config file as settings for each command: runs each command function with a
// check-only context in which parse_command() validates the file's settings for that
// command (types, ranges, rules; required options are not required) and returns 0 at once.
// Problems are collected, each once, in file order.
using CommandFn = int (*)(const std::vector<std::string>&);
std::vector<ConfigProblem> check_config(const ConfigFile& file,
                                        std::span<const std::pair<std::string_view, CommandFn>> commands);

} // namespace understudy::cli
