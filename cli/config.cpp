#include "cli/config.hpp"

// toml++ without exceptions: parse() returns a result that holds the table or the error.
#define TOML_EXCEPTIONS 0
// toml++ 3.3 trips its own internal assert() on some malformed input (found by
// test_cli's arbitrary-bytes case in a build without NDEBUG); release builds compile
// those asserts out. Compile them out everywhere, so every build parses alike.
#define TOML_ASSERT(expr) static_assert(true)
#include <toml++/toml.h>

#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <limits>
#include <map>
#include <optional>
#include <set>
#include <utility>
#include <variant>

#include "common/utf8.hpp"

namespace understudy::cli {

namespace po = boost::program_options;
using Kind = ConfigValue::Kind;

std::string ConfigProblem::str() const {
    return line ? fmt::format("{}:{}: {}", file, line, message) : fmt::format("{}: {}", file, message);
}

const char* kind_name(Kind k) {
    switch (k) {
    case Kind::string: return "a string";
    case Kind::integer: return "an integer";
    case Kind::floating: return "a floating-point number";
    case Kind::boolean: return "a boolean";
    case Kind::array: return "an array";
    case Kind::table: return "a table";
    case Kind::date_time: return "a date or time";
    }
    return "a value";
}

const std::vector<SharedSection>& shared_sections() {
    static const std::vector<SharedSection> s = {
        {"vm", {"memory", "vcpus", "dirty", "ring-entries"}},
        {"network", {"net-tap", "mac", "net-buffer", "output-gather-ms"}},
        {"protection", {"backup", "epoch-ms", "max-in-flight", "heartbeat-ms", "failure-timeout-ms", "ack-timeout-ms", "link-key", "link-security",
                        "verify-interval-s", "verify-pages-per-checkpoint", "verify-mismatch", "epoch-priority"}},
    };
    return s;
}

namespace {

const SharedSection* find_shared(std::string_view name) {
    for (const auto& s : shared_sections())
        if (s.name == name) return &s;
    return nullptr;
}

bool is_command_section(std::string_view name) {
    return std::find(std::begin(kCommandSections), std::end(kCommandSections), name) != std::end(kCommandSections);
}

std::string section_list() {
    std::string out;
    for (auto c : kCommandSections) out += (out.empty() ? "" : ", ") + std::string(c);
    for (const auto& s : shared_sections()) out += ", " + std::string(s.name);
    return out;
}

std::pair<Kind, std::string> classify(const toml::node& n) {
    switch (n.type()) {
    case toml::node_type::string: return {Kind::string, std::string(*n.as_string())};
    case toml::node_type::integer: return {Kind::integer, std::to_string(n.as_integer()->get())};
    case toml::node_type::floating_point: return {Kind::floating, fmt::format("{}", n.as_floating_point()->get())};
    case toml::node_type::boolean: return {Kind::boolean, n.as_boolean()->get() ? "true" : "false"};
    case toml::node_type::array: return {Kind::array, ""};
    case toml::node_type::table: return {Kind::table, ""};
    default: return {Kind::date_time, ""};
    }
}

unsigned line_of(const toml::node& n) { return static_cast<unsigned>(n.source().begin.line); }

// toml++ 3.3 (Debian 12) has a wrong whitespace table for U+00A1..U+0499, U+2D3E..U+3137
// and U+FB06..U+FEFE and reaches __builtin_unreachable (undefined behaviour) wherever its
// lexer meets one of them, in a string or out of it. Such characters are refused anywhere
// in the file (a string can still hold them written as \uXXXX), and so is text that is not
// UTF-8, which TOML requires. Returns the problem and its line, or nothing.
std::optional<std::pair<unsigned, std::string>> refused_text(std::string_view t) {
    unsigned line = 1;
    for (size_t i = 0; i < t.size();) {
        size_t n = utf8_sequence(t, i);
        if (n == 0) return std::pair{line, std::string("not valid TOML: the file is not UTF-8")};
        uint32_t cp = utf8_code_point(t, i, n);
        if ((cp >= 0xa1 && cp <= 0x499) || (cp >= 0x2d3e && cp <= 0x3137) || (cp >= 0xfb06 && cp <= 0xfefe))
            return std::pair{line, fmt::format("U+{:04X} is refused in config files: the TOML reader of Debian 12 "
                                               "mis-reads it; in a string, write it as \\u{:04X}", cp, cp)};
        if (cp == '\n') ++line;
        i += n;
    }
    return std::nullopt;
}

} // namespace

ConfigFile parse_config(std::string_view text, std::string path) {
    ConfigFile f;
    f.path = std::move(path);
    if (auto refused = refused_text(text)) {
        f.problems.push_back({f.path, refused->first, refused->second});
        return f;
    }
    auto parsed = toml::parse(text, std::string_view(f.path));
    if (!parsed) {
        const auto& e = parsed.error();
        f.problems.push_back({f.path, static_cast<unsigned>(e.source().begin.line),
                              "not valid TOML: " + std::string(e.description())});
        return f;
    }
    const toml::table& root = parsed.table();
    for (auto&& [k, node] : root) {
        std::string section(k.str());
        unsigned sline = line_of(node) ? line_of(node) : static_cast<unsigned>(k.source().begin.line);
        if (!node.is_table()) {
            f.problems.push_back({f.path, sline, "'" + section + "' is outside any section: settings go in a section (" +
                                                     section_list() + ")"});
            continue;
        }
        if (!is_command_section(section) && !find_shared(section)) {
            f.problems.push_back({f.path, sline, "unknown section [" + section + "] (sections: " + section_list() + ")"});
            continue;
        }
        for (auto&& [key, value] : *node.as_table()) {
            ConfigValue v;
            v.section = section;
            v.key = std::string(key.str());
            v.line = line_of(value) ? line_of(value) : static_cast<unsigned>(key.source().begin.line);
            auto [kind, textv] = classify(value);
            v.kind = kind;
            if (kind == Kind::array)
                for (const auto& item : *value.as_array()) v.items.push_back(classify(item));
            else
                v.items.push_back({kind, textv});
            f.values.push_back(std::move(v));
        }
    }
    return f;
}

Result<ConfigFile> load_config(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) return sys_error("opening config file " + path);
    // Bounded (docs/limits.md): a config file is a few KiB; a path like /dev/zero is refused.
    std::string text(kMaxConfigBytes + 1, '\0');
    in.read(text.data(), static_cast<std::streamsize>(text.size()));
    if (in.bad()) return sys_error("reading config file " + path);
    text.resize(static_cast<size_t>(in.gcount()));
    if (text.size() > kMaxConfigBytes)
        return make_error(Errc::invalid_input, path + ": config file larger than " + std::to_string(kMaxConfigBytes >> 10) + " KiB");
    return parse_config(text, path);
}

bool option_set(const po::variables_map& vm, const std::string& name) {
    auto it = vm.find(name);
    if (it == vm.end() || it->second.defaulted() || it->second.empty()) return false;
    if (const bool* b = boost::any_cast<bool>(&it->second.value())) return *b;
    return true;
}

namespace {

// What a flag takes, from the type its program_options value was declared with.
struct OptionType {
    enum class Want { string, integer, number, boolean, flag, anything } want = Want::anything;
    bool list = false;
    __int128 lo = 0, hi = 0; // integers
};

template <class T>
bool integral_type(const std::type_info& t, OptionType& o) {
    bool list = t == typeid(std::vector<T>);
    if (t != typeid(T) && !list) return false;
    o = {OptionType::Want::integer, list, std::numeric_limits<T>::min(), std::numeric_limits<T>::max()};
    return true;
}

OptionType option_type(const po::option_description& d) {
    using W = OptionType::Want;
    const auto& sem = *d.semantic();
    if (sem.max_tokens() == 0) return {W::flag};
    const auto* typed = dynamic_cast<const po::typed_value_base*>(&sem);
    if (!typed) return {W::anything};
    const std::type_info& t = typed->value_type();
    OptionType o;
    if (integral_type<short>(t, o) || integral_type<unsigned short>(t, o) || integral_type<int>(t, o) ||
        integral_type<unsigned>(t, o) || integral_type<long>(t, o) || integral_type<unsigned long>(t, o) ||
        integral_type<long long>(t, o) || integral_type<unsigned long long>(t, o))
        return o;
    if (t == typeid(double) || t == typeid(float)) return {W::number};
    if (t == typeid(std::vector<double>) || t == typeid(std::vector<float>)) return {W::number, true};
    if (t == typeid(std::string)) return {W::string};
    if (t == typeid(std::vector<std::string>)) return {W::string, true};
    if (t == typeid(bool)) return {W::boolean};
    return {W::anything};
}

const char* want_name(OptionType::Want w) {
    using W = OptionType::Want;
    switch (w) {
    case W::string: return "a string";
    case W::integer: return "an integer";
    case W::number: return "a number";
    case W::boolean:
    case W::flag: return "a boolean (true or false)";
    case W::anything: return "a string or a number";
    }
    return "a value";
}

std::string range_text(const OptionType& t) {
    return fmt::format("{} .. {}", static_cast<long long>(t.lo),
                       t.hi > std::numeric_limits<long long>::max() ? std::to_string(static_cast<unsigned long long>(t.hi))
                                                                     : std::to_string(static_cast<long long>(t.hi)));
}

// A command-line token for an integer or number flag, checked the same way as a config
// value: program_options reads "-1" into an unsigned as 4294967295 and takes "nan".
std::optional<std::string> check_token(const OptionType& t, const std::string& token) {
    using W = OptionType::Want;
    if (t.want == W::integer) {
        std::string_view s = token;
        if (!s.empty() && s[0] == '+') s.remove_prefix(1);
        bool ok = false;
        __int128 v = 0;
        if (!s.empty() && s[0] == '-') {
            long long x = 0;
            auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), x);
            ok = ec == std::errc() && p == s.data() + s.size();
            v = x;
        } else {
            unsigned long long x = 0;
            auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), x);
            ok = ec == std::errc() && p == s.data() + s.size();
            v = x;
        }
        if (!ok || v < t.lo || v > t.hi)
            return "'" + token + "' is not a whole number in " + range_text(t);
    } else if (t.want == W::number) {
        double x = 0;
        auto [p, ec] = std::from_chars(token.data(), token.data() + token.size(), x);
        if (ec != std::errc() || p != token.data() + token.size() || !std::isfinite(x))
            return "'" + token + "' is not a finite number";
    }
    return std::nullopt;
}

// A config value as program_options tokens for flag `d`, or the problem with it.
struct Converted {
    bool present = true; // false: a switch set to false, which is left off
    std::vector<std::string> tokens;
};
std::variant<Converted, std::string> convert(const ConfigValue& v, const po::option_description& d) {
    using W = OptionType::Want;
    OptionType t = option_type(d);
    auto wrong = [&](Kind got) {
        return fmt::format("expected {}{}, got {}", t.list ? "an array of " : "",
                           t.list ? std::string(want_name(t.want)).substr(std::string(want_name(t.want)).find(' ') + 1) + "s"
                                  : want_name(t.want),
                           kind_name(got));
    };
    if (t.want == W::flag) {
        if (v.kind != Kind::boolean) return wrong(v.kind);
        return Converted{v.items[0].second == "true", {}};
    }
    if (t.list != (v.kind == Kind::array)) return wrong(v.kind);
    Converted c;
    for (const auto& [kind, text] : v.items) {
        bool ok = false;
        switch (t.want) {
        case W::string: ok = kind == Kind::string; break;
        case W::integer: ok = kind == Kind::integer; break;
        case W::number: ok = kind == Kind::integer || kind == Kind::floating; break;
        case W::boolean: ok = kind == Kind::boolean; break;
        case W::anything: ok = kind == Kind::string || kind == Kind::integer || kind == Kind::floating; break;
        case W::flag: break;
        }
        if (!ok) return t.list ? "array element: " + wrong(kind) : wrong(kind);
        if (t.want == W::integer || t.want == W::number)
            if (auto p = check_token(t, text)) return t.want == W::integer ? text + " is outside " + range_text(t) : *p;
        c.tokens.push_back(text);
    }
    return c;
}

size_t edit_distance(std::string_view a, std::string_view b) {
    std::vector<size_t> row(b.size() + 1);
    for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
    for (size_t i = 1; i <= a.size(); ++i) {
        size_t diag = row[0];
        row[0] = i;
        for (size_t j = 1; j <= b.size(); ++j) {
            size_t up = row[j];
            row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + (a[i - 1] != b[j - 1])});
            diag = up;
        }
    }
    return row[b.size()];
}

std::string suggestion(std::string_view key, const po::options_description& desc) {
    std::string best;
    size_t best_d = 3;
    for (const auto& o : desc.options()) {
        size_t d = edit_distance(key, o->long_name());
        if (d < best_d && o->long_name() != "help" && o->long_name() != "config") best = o->long_name(), best_d = d;
    }
    return best.empty() ? "" : " (did you mean '" + best + "'?)";
}

const po::option_description* find_long(const po::options_description& desc, const std::string& key) {
    const auto* d = desc.find_nothrow(key, false);
    return d && d->long_name() == key ? d : nullptr;
}

// The settings a config file gives one command: parsed options ready for po::store, where
// each came from, and the problems (unknown keys, wrong types, values po refuses).
struct Applied {
    explicit Applied(const po::options_description& desc) : parsed(&desc) {}
    po::parsed_options parsed;
    std::map<std::string, const ConfigValue*> where;
    std::vector<ConfigProblem> problems;
};

Applied apply_config(const ConfigFile& f, const std::string& command, const po::options_description& desc) {
    Applied a(desc);
    auto problem = [&](const ConfigValue& v, const std::string& msg) {
        a.problems.push_back({f.path, v.line, "[" + v.section + "] " + v.key + ": " + msg});
    };
    // Shared sections first, the command's own section over them.
    std::map<std::string, std::pair<const ConfigValue*, const po::option_description*>> chosen;
    for (int pass = 0; pass < 2; ++pass)
        for (const auto& v : f.values) {
            bool own = v.section == command;
            if (pass == 0 && !own) {
                const SharedSection* s = find_shared(v.section);
                if (!s) continue; // another command's section
                if (std::find(s->keys.begin(), s->keys.end(), v.key) == s->keys.end()) {
                    std::string keys;
                    for (auto k : s->keys) keys += (keys.empty() ? "" : ", ") + std::string(k);
                    problem(v, "not a setting of [" + v.section + "] (it takes " + keys +
                                   "); other settings go in a command section such as [run]");
                    continue;
                }
                if (const auto* d = find_long(desc, v.key)) chosen[v.key] = {&v, d};
            } else if (pass == 1 && own) {
                if (v.key == "help" || v.key == "config") {
                    problem(v, "cannot be set in a config file");
                    continue;
                }
                const auto* d = find_long(desc, v.key);
                if (!d) {
                    problem(v, "unknown setting for `understudy " + command + "`" + suggestion(v.key, desc));
                    continue;
                }
                chosen[v.key] = {&v, d};
            }
        }
    // Each value alone against a scratch map first, so that one bad value neither hides
    // the others nor leaves the real map half-written.
    std::vector<const std::pair<const ConfigValue*, const po::option_description*>*> order;
    for (const auto& [key, vd] : chosen) order.push_back(&vd);
    std::sort(order.begin(), order.end(), [](auto* x, auto* y) { return x->first->line < y->first->line; });
    for (const auto* vd : order) {
        const auto& [v, d] = *vd;
        auto c = convert(*v, *d);
        if (auto* msg = std::get_if<std::string>(&c)) {
            problem(*v, *msg);
            continue;
        }
        auto& conv = std::get<Converted>(c);
        if (!conv.present) continue;
        po::option opt(v->key, conv.tokens);
        po::parsed_options one(&desc);
        one.options.push_back(opt);
        try {
            po::variables_map scratch;
            po::store(one, scratch);
        } catch (const po::error& e) {
            problem(*v, e.what());
            continue;
        }
        a.parsed.options.push_back(std::move(opt));
        a.where[v->key] = v;
    }
    return a;
}

// Evaluates the rules that apply to this command. A problem is reported at the config
// line of the first of its options that the file set (and the command line did not), or
// in command-line form when none was.
struct RuleProblem {
    const ConfigValue* at = nullptr; // null: a command-line problem
    std::string message;
};
std::vector<RuleProblem> check_rules(const CommandSpec& spec, const po::variables_map& vm,
                                     const std::set<std::string>& from_cli,
                                     const std::map<std::string, const ConfigValue*>& where) {
    std::vector<RuleProblem> out;
    for (const auto& rule : spec.rules) {
        bool applies = !rule.options.empty();
        for (const auto& o : rule.options) applies = applies && find_long(spec.desc, o);
        if (!applies) continue;
        const ConfigValue* at = nullptr;
        for (const auto& o : rule.options)
            if (auto it = where.find(o); it != where.end() && !from_cli.count(o)) {
                at = it->second;
                break;
            }
        OptionNamer name = at ? OptionNamer([](std::string_view o) { return std::string(o); })
                              : OptionNamer([](std::string_view o) { return "--" + std::string(o); });
        if (auto msg = rule.check(vm, name)) out.push_back({at, *msg});
    }
    return out;
}

struct CheckContext {
    const ConfigFile* file;
    std::vector<ConfigProblem>* out;
    bool visited = false;
};
thread_local CheckContext* t_check = nullptr;

void say(const CommandSpec& spec, const std::string& msg) {
    std::fprintf(stderr, "understudy %s: %s\n", spec.name.c_str(), msg.c_str());
}

std::string see_help(const CommandSpec& spec) { return "; see 'understudy " + spec.name + " --help'"; }

std::function<void(const std::string&)>& config_log_format_hook() {
    static std::function<void(const std::string&)> hook;
    return hook;
}

} // namespace

void on_config_log_format(std::function<void(const std::string&)> apply) { config_log_format_hook() = std::move(apply); }

std::optional<int> parse_command(const std::vector<std::string>& args, CommandSpec& spec) {
    auto& desc = spec.desc;
    if (!desc.find_nothrow("help", false)) desc.add_options()("help,h", "show this help");
    if (spec.config && !desc.find_nothrow("config", false))
        desc.add_options()("config", po::value<std::string>()->value_name("FILE"),
                           ("read settings from this TOML file (docs/config.md): these options' long names as keys, in [" +
                            spec.name + "] or a shared section; flags given here override it")
                               .c_str());
    if (spec.config && !desc.find_nothrow("log-format", false))
        desc.add_options()("log-format", po::value<std::string>()->value_name("FORMAT"),
                           "log lines: human (the default) or json, one JSON object per line (docs/cli.md, \"Logs\")");
    po::variables_map vm;
    if (t_check) { // `understudy config check`: the file's settings for this command only
        t_check->visited = true;
        Applied a = apply_config(*t_check->file, spec.name, desc);
        po::store(a.parsed, vm); // each option was stored alone before: this cannot throw
        for (const auto& r : check_rules(spec, vm, {}, a.where))
            a.problems.push_back({t_check->file->path, r.at ? r.at->line : 0,
                                  r.at ? "[" + r.at->section + "] " + r.message : r.message});
        t_check->out->insert(t_check->out->end(), a.problems.begin(), a.problems.end());
        return 0;
    }
    po::parsed_options given(&desc);
    try {
        given = po::command_line_parser(args).options(desc).positional(spec.pos).run();
    } catch (const po::error& e) {
        say(spec, e.what() + see_help(spec));
        return 2;
    }
    std::set<std::string> from_cli;
    for (const auto& o : given.options) {
        from_cli.insert(o.string_key);
        if (const auto* d = find_long(desc, o.string_key))
            for (const auto& token : o.value)
                if (auto p = check_token(option_type(*d), token)) {
                    say(spec, "--" + o.string_key + ": " + *p);
                    return 2;
                }
    }
    try {
        po::store(given, vm);
    } catch (const po::error& e) {
        say(spec, e.what() + see_help(spec));
        return 2;
    }
    if (vm.count("help")) {
        std::cout << spec.usage << "\n\n" << desc << "\n";
        return 0;
    }
    std::map<std::string, const ConfigValue*> where;
    std::optional<ConfigFile> file;
    std::optional<Applied> applied;
    if (vm.count("config")) {
        auto f = load_config(vm["config"].as<std::string>());
        if (!f) {
            say(spec, f.error().describe());
            return 2;
        }
        file = std::move(*f);
        applied.emplace(apply_config(*file, spec.name, desc));
        auto problems = file->problems;
        problems.insert(problems.end(), applied->problems.begin(), applied->problems.end());
        for (const auto& p : problems) std::fprintf(stderr, "%s\n", p.str().c_str());
        if (!problems.empty()) return 2;
        po::store(applied->parsed, vm); // options already on the command line keep their value
        where = applied->where;
    }
    // Every problem of the file, one line each; of the command line's, the first.
    auto broken = check_rules(spec, vm, from_cli, where);
    bool said = false;
    for (const auto& r : broken) {
        if (r.at)
            std::fprintf(stderr, "%s\n", ConfigProblem{file->path, r.at->line, "[" + r.at->section + "] " + r.message}.str().c_str());
        else if (!std::exchange(said, true))
            say(spec, r.message);
    }
    if (!broken.empty()) return 2;
    if (auto it = where.find("log-format"); it != where.end() && config_log_format_hook())
        config_log_format_hook()(vm["log-format"].as<std::string>());
    try {
        po::notify(vm);
    } catch (const po::required_option& e) {
        std::string name = e.get_option_name();
        if (name.starts_with("--")) name = name.substr(2);
        bool positional = spec.pos.max_total_count() > 0 && spec.pos.name_for_position(0) == name;
        std::string upper = name;
        for (auto& ch : upper) ch = static_cast<char>(std::toupper(static_cast<unsigned char>(ch)));
        say(spec, (positional ? "missing " + upper : "--" + name + " is required") + " (on the command line or as '" + name +
                      "' in [" + spec.name + "] of a --config file)" + see_help(spec));
        return 2;
    } catch (const po::error& e) {
        say(spec, e.what() + see_help(spec));
        return 2;
    }
    return std::nullopt;
}

std::vector<ConfigProblem> check_config(const ConfigFile& file,
                                        std::span<const std::pair<std::string_view, CommandFn>> commands) {
    std::vector<ConfigProblem> all = file.problems;
    for (const auto& [name, fn] : commands) {
        std::vector<ConfigProblem> out;
        CheckContext ctx{&file, &out};
        t_check = &ctx;
        fn({});
        t_check = nullptr;
        if (!ctx.visited)
            all.push_back({file.path, 0, "internal: `understudy " + std::string(name) + "` did not declare its options"});
        all.insert(all.end(), out.begin(), out.end());
    }
    std::stable_sort(all.begin(), all.end(), [](const auto& a, const auto& b) { return a.line < b.line; });
    std::vector<ConfigProblem> unique;
    for (auto& p : all)
        if (std::find(unique.begin(), unique.end(), p) == unique.end()) unique.push_back(std::move(p));
    return unique;
}

} // namespace understudy::cli
