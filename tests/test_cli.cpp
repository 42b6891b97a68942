// The `understudy` command line and config files (docs/config.md, docs/cli.md).
// [config]: the config mechanism in-process, against a command made up for the test.
// [binary]: the built `understudy` binary with bad input: one line on stderr, exit 2.
#include <catch2/catch.hpp>

#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "cli/config.hpp"

using namespace understudy::cli;
namespace po = boost::program_options;

namespace {

// ---- a made-up command with one option of each kind ----
struct Fake {
    unsigned count = 3;
    int offset = 0;
    uint64_t big = 0;
    double ratio = 1.5;
    std::string name = "x";
    std::string partner;
    bool sw = false;
    std::vector<std::string> tags;
};
Fake g_fake;
std::vector<OptionRule> fake_rules() {
    return {
        {{"count"}, [](const po::variables_map& vm, const OptionNamer& n) -> std::optional<std::string> {
             if (vm["count"].as<unsigned>() > 10) return n("count") + " must be at most 10";
             return std::nullopt;
         }},
        {{"sw", "partner"}, [](const po::variables_map& vm, const OptionNamer& n) -> std::optional<std::string> {
             if (option_set(vm, "sw") && !option_set(vm, "partner")) return n("sw") + " needs " + n("partner");
             return std::nullopt;
         }},
    };
}
int fake_command(const std::vector<std::string>& args) {
    g_fake = Fake{};
    po::options_description desc("Options");
    desc.add_options()("count", po::value(&g_fake.count)->default_value(g_fake.count), "")
        ("offset", po::value(&g_fake.offset)->default_value(0), "")
        ("big", po::value(&g_fake.big), "")
        ("ratio", po::value(&g_fake.ratio)->default_value(g_fake.ratio), "")
        ("name", po::value(&g_fake.name)->default_value(g_fake.name), "")
        ("partner", po::value(&g_fake.partner), "")
        ("sw", po::bool_switch(&g_fake.sw), "")
        ("tags", po::value(&g_fake.tags)->multitoken(), "")
        ("memory", po::value<std::string>(), ""); // so that [vm] memory applies
    CommandSpec spec{"run", "usage: fake", desc, {}, fake_rules()};
    if (auto done = parse_command(args, spec)) return *done + 100;
    return 0;
}
int silent_command(const std::vector<std::string>&) { return 0; }

std::vector<ConfigProblem> check(const std::string& text) {
    static const std::pair<std::string_view, CommandFn> cmds[] = {{"run", fake_command}};
    return check_config(parse_config(text, "t.toml"), cmds);
}
// The one problem of a text, which must be at `line` and mention `what`.
void one_problem(const std::string& text, unsigned line, const std::string& what) {
    INFO(text);
    auto p = check(text);
    REQUIRE(p.size() == 1);
    CHECK(p[0].line == line);
    CHECK_THAT(p[0].message, Catch::Contains(what));
}

struct Scratch {
    std::filesystem::path dir;
    Scratch() {
        char tmpl[] = "/tmp/us-test-cli-XXXXXX";
        REQUIRE(::mkdtemp(tmpl));
        dir = tmpl;
    }
    ~Scratch() { std::filesystem::remove_all(dir); }
    std::string write(const std::string& name, const std::string& text) {
        std::ofstream(dir / name) << text;
        return (dir / name).string();
    }
};

} // namespace

TEST_CASE("config: TOML syntax and layout problems carry their line", "[config]") {
    auto f = parse_config("[run]\ncount = 3\ncount = 4\n", "t.toml");
    REQUIRE(f.problems.size() == 1);
    CHECK(f.problems[0].line == 3);
    CHECK_THAT(f.problems[0].message, Catch::StartsWith("not valid TOML"));
    CHECK(f.problems[0].str().starts_with("t.toml:3: "));

    one_problem("stray = 1\n[run]\n", 1, "outside any section");
    one_problem("[run]\ncount = 1\n\n[runn]\nx = 1\n", 4, "unknown section [runn]");
    one_problem("[run]\nname = \"unterminated\n", 2, "not valid TOML");
}

TEST_CASE("config: keys are the flags' long names, checked per command", "[config]") {
    CHECK(check("[run]\ncount = 4\nname = \"n\"\nsw = true\npartner = \"p\"\n").empty());
    one_problem("[run]\n\ncoutn = 4\n", 3, "unknown setting for `understudy run` (did you mean 'count'?)");
    one_problem("[run]\nhelp = true\n", 2, "cannot be set in a config file");
    one_problem("[run]\nconfig = \"other.toml\"\n", 2, "cannot be set in a config file");
    // A shared section takes only its listed keys; memory is listed for [vm], count is not.
    CHECK(check("[vm]\nmemory = \"256M\"\n").empty());
    one_problem("[vm]\nmemory = \"256M\"\ncount = 2\n", 3, "not a setting of [vm]");
    // Another command's section is that command's business.
    CHECK(check("[backup]\nanything = 1\n").empty());
}

TEST_CASE("config: every value must have its flag's type", "[config]") {
    struct Case {
        const char* line;
        const char* what;
    } cases[] = {
        {"count = \"3\"", "expected an integer, got a string"},
        {"count = 3.0", "expected an integer, got a floating-point number"},
        {"count = true", "expected an integer, got a boolean"},
        {"count = [3]", "expected an integer, got an array"},
        {"count = { a = 1 }", "expected an integer, got a table"},
        {"count = 1979-05-27", "expected an integer, got a date or time"},
        {"count = -1", "-1 is outside 0 .. 4294967295"},
        {"count = 4294967296", "4294967296 is outside 0 .. 4294967295"},
        {"offset = 2147483648", "is outside -2147483648 .. 2147483647"},
        {"big = -5", "-5 is outside 0 .. 18446744073709551615"},
        {"ratio = \"1.5\"", "expected a number, got a string"},
        {"ratio = inf", "is not a finite number"},
        {"ratio = nan", "is not a finite number"},
        {"name = 5", "expected a string, got an integer"},
        {"sw = \"yes\"", "expected a boolean (true or false), got a string"},
        {"sw = 1", "expected a boolean (true or false), got an integer"},
        {"tags = \"a\"", "expected an array of strings, got a string"},
        {"tags = [\"a\", 2]", "array element: expected an array of strings, got an integer"},
    };
    for (const auto& c : cases) one_problem(std::string("[run]\n\n") + c.line + "\n", 3, c.what);
    // Integers are fine where a number is expected; the extremes of a type are in range.
    CHECK(check("[run]\nratio = 2\ncount = 4294967295\noffset = -2147483648\nbig = 9223372036854775807\n")
              .size() == 1); // only count > 10 (the rule)
    CHECK(check("[run]\ntags = [\"a\", \"b\"]\nsw = false\n").empty());
}

TEST_CASE("config: rules and combinations are reported at the line that set them", "[config]") {
    one_problem("[run]\nname = \"n\"\ncount = 11\n", 3, "count must be at most 10");
    one_problem("[run]\n\n\nsw = true\n", 4, "sw needs partner");
    // Every problem at once, in line order, each once.
    auto p = check("[vm]\nmemory = 5\n[run]\ncount = \"x\"\nsw = true\nname = 1\nbogus = 2\n");
    REQUIRE(p.size() == 5);
    CHECK(p[0].line == 2);
    CHECK(p[1].line == 4);
    CHECK(p[2].line == 5);
    CHECK(p[3].line == 6);
    CHECK(p[4].line == 7);
    CHECK_THAT(p[2].message, Catch::Contains("sw needs partner"));
}

TEST_CASE("config: a command that never declares its options is a problem, not silence", "[config]") {
    static const std::pair<std::string_view, CommandFn> cmds[] = {{"run", silent_command}};
    auto p = check_config(parse_config("[run]\nx = 1\n", "t.toml"), cmds);
    REQUIRE(p.size() == 1);
    CHECK_THAT(p[0].message, Catch::Contains("did not declare its options"));
}

TEST_CASE("config: the command line overrides the command section, which overrides shared sections", "[config]") {
    Scratch s;
    auto path = s.write("c.toml", "[vm]\nmemory = \"64M\"\n[run]\ncount = 7\nname = \"file\"\ntags = [\"f\"]\n");
    REQUIRE(fake_command({"--config", path}) == 0);
    CHECK(g_fake.count == 7);
    CHECK(g_fake.name == "file");
    CHECK(g_fake.tags == std::vector<std::string>{"f"});
    REQUIRE(fake_command({"--config", path, "--count", "9", "--ratio", "2.5"}) == 0);
    CHECK(g_fake.count == 9);
    CHECK(g_fake.ratio == 2.5);
    CHECK(g_fake.name == "file");
    // A rule broken by the file's value is reported even when the command line is fine.
    auto bad = s.write("b.toml", "[run]\ncount = 70\n");
    CHECK(fake_command({"--config", bad}) == 102);
    CHECK(fake_command({"--config", bad, "--count", "5"}) == 0); // the command line wins
    CHECK(fake_command({"--config", (s.dir / "missing.toml").string()}) == 102);
    CHECK(fake_command({"--count", "-1"}) == 102);
    CHECK(fake_command({"--ratio", "nan"}) == 102);
    CHECK(fake_command({"--help"}) == 100);
}

TEST_CASE("config: parse_config never throws on arbitrary bytes", "[config]") {
    const std::string inputs[] = {"", "\xff\xfe", "[[run]]\ncount = 1\n", "[run]\n[run]\n", "a.b.c = 1", "[run.sub]\nx = 1\n",
                                  "[run]\ncount = 0x10\n", std::string(100, '['), std::string(5000, '[') + "run" + std::string(5000, ']')};
    for (const auto& in : inputs) {
        auto f = parse_config(in, "t.toml");
        (void)check(in);
        SUCCEED();
    }
    one_problem("[run.sub]\nx = 1\n", 1, "[run] sub: unknown setting");
}

// ---- the binary ----
namespace {

struct Outcome {
    int code = -1;
    std::string out, err;
};

std::string slurp(const std::filesystem::path& p) {
    std::ifstream in(p);
    std::stringstream s;
    s << in.rdbuf();
    return s.str();
}

// Runs `understudy ARGS` (ARGS a shell word list) with stdout and stderr captured.
Outcome run_cli(const std::string& args) {
    static Scratch s;
    std::string cmd = std::string(US_CLI_PATH) + " " + args + " >" + (s.dir / "out").string() + " 2>" + (s.dir / "err").string() +
                      " </dev/null";
    int st = std::system(cmd.c_str());
    Outcome o;
    o.code = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
    o.out = slurp(s.dir / "out");
    o.err = slurp(s.dir / "err");
    return o;
}

size_t lines(const std::string& s) { return static_cast<size_t>(std::count(s.begin(), s.end(), '\n')); }

} // namespace

TEST_CASE("cli: bad usage is one line on stderr and exit code 2", "[binary]") {
    struct Case {
        const char* args;
        const char* what;
    } cases[] = {
        {"", "missing COMMAND"},
        {"frobnicate", "unknown command 'frobnicate'"},
        {"run", "missing IMAGE"},
        {"run guest.elf --kernel vmlinuz", "IMAGE and --kernel BZIMAGE both given"},
        {"run guest.elf --initrd initrd.img", "--initrd and --append go with --kernel"},
        {"run guest.elf --no-such-flag", "unrecognised option '--no-such-flag'"},
        {"run guest.elf --memory", "the required argument for option '--memory' is missing"},
        {"run guest.elf --vcpus two", "--vcpus: 'two' is not a whole number"},
        {"run guest.elf --timeout soon", "--timeout: 'soon' is not a finite number"},
        {"run guest.elf --backup 127.0.0.1:1 --backup 127.0.0.1:2", "cannot be specified more than once"},
        {"run guest.elf --vcpus -1", "--vcpus: '-1' is not a whole number in 0 .. 4294967295"},
        {"run guest.elf --vcpus 9", "--vcpus must be between 1 and 8"},
        {"run guest.elf --memory 3M", "--memory: guest memory size"},
        {"run guest.elf --epoch-ms nan", "--epoch-ms: 'nan' is not a finite number"},
        {"run guest.elf --epoch-ms 0 --backup 127.0.0.1:1", "--epoch-ms must be between 1 and 10000"},
        {"run guest.elf --epoch-priority fast", "--epoch-priority: 'fast' is not realtime or normal"},
        {"run guest.elf --dirty sometimes", "dirty tracking mode 'sometimes'"},
        {"run guest.elf --snapshot-after 1", "--snapshot-after needs --snapshot-to"},
        {"run guest.elf --snapshot-to f", "--snapshot-to needs --snapshot-after"},
        {"run guest.elf --stop-after-snapshot", "--stop-after-snapshot needs --snapshot-after"},
        {"run guest.elf --heartbeat-ms 50", "--failure-timeout-ms 100 is shorter than three times --heartbeat-ms 50"},
        {"run guest.elf --backup nowhere", "--backup: "},
        {"run guest.elf --mac 01:00:00:00:00:01", "multicast"},
        {"run guest.elf --output-gather-ms 1", "--output-gather-ms needs --backup"},
        {"run guest.elf --disk d.img,writeback", "unknown option 'writeback' (the only one is readonly)"},
        {"run guest.elf --disk ,readonly", "names no file"},
        {"run guest.elf --disk d.img --snapshot-after 1 --snapshot-to f", "--disk with --snapshot-to: snapshots do not carry disks"},
        {"backup --listen 127.0.0.1:1 --link-security disabled --disk d.img --snapshot-to f", "--disk with --snapshot-to"},
        {"backup --listen 127.0.0.1:1 --link-security disabled --disk d.img --disk-ack always", "--disk-ack always: give 'written' or 'synced'"},
        {"backup --listen 127.0.0.1:1 --link-security disabled --disk-staging-memory-mib 0", "--disk-staging-memory-mib must be in"},
        {"run a.elf b.elf", "too many positional options"},
        {"run guest.elf --config /nonexistent/u.toml", "/nonexistent/u.toml"},
        {"restore", "missing SNAPSHOT"},
        {"restore s.snap --max-in-flight 0", "--max-in-flight must be between 1 and 64"},
        {"backup", "--listen is required"},
        {"backup --listen 127.0.0.1:1 --reprotect-to 127.0.0.1:2", "--reprotect-to needs --promote"},
        {"backup --listen 127.0.0.1:1 --sessions -2", "--sessions: '-2' is not a whole number"},
        {"backup --listen 127.0.0.1:1 --bogus", "unrecognised option '--bogus'"},
        {"verify-stream", "verify-stream takes exactly one FILE"},
        {"config", "missing subcommand 'check'"},
        {"config lint x", "unknown subcommand 'lint'"},
        {"config check", "missing FILE"},
        {"status", "'--control-socket' is required"},
        {"status --control-socket /x --bogus", "unrecognised option '--bogus'"},
        {"failover", "'--control-socket' is required"},
        {"failover --control-socket /x --now", "unrecognised option '--now'"},
        {"drill", "missing KIND"},
        {"drill meteor --primary-socket /p --backup-socket /b --service 10.0.0.1:6379", "unknown KIND 'meteor'"},
        {"drill kill-primary --backup-socket /b --service 10.0.0.1:6379", "'--primary-socket' is required"},
        {"drill kill-primary --primary-socket /p --service 10.0.0.1:6379", "'--backup-socket' is required"},
        {"drill partition --primary-socket /p --backup-socket /b --service 10.0.0.1:6379", "partition needs --partition-command"},
        {"drill kill-backup --primary-socket /p --backup-socket /b --service 10.0.0.1:6379 --heal-command true",
         "are for KIND partition only"},
        {"drill kill-primary --primary-socket /p --backup-socket /b --service 10.0.0.1", "--service must be HOST:PORT"},
        {"drill kill-primary --primary-socket /p --backup-socket /b --service h:1 --warmup -1", "--warmup must be between"},
        {"drill kill-primary --primary-socket /p --backup-socket /b --service h:1 --reply-timeout 0.5",
         "--reply-timeout must be between 1 and 600 seconds"},
        {"bench --bogus", "unrecognised option '--bogus'"},
        {"bench --from /x --script /nonexistent/report.py", "no such file /nonexistent/report.py"},
    };
    for (const auto& c : cases) {
        INFO("understudy " << c.args);
        auto o = run_cli(c.args);
        CHECK(o.code == 2);
        CHECK(lines(o.err) == 1);
        CHECK_THAT(o.err, Catch::Contains(c.what) && Catch::StartsWith("understudy"));
        CHECK(o.out.empty());
    }
}

TEST_CASE("cli: an action on an instance that is not there fails with its reason and exit code 3", "[binary]") {
    auto o = run_cli("failover --control-socket /nonexistent/understudy.sock");
    CHECK(o.code == 3);
    CHECK(lines(o.err) == 1);
    CHECK_THAT(o.err, Catch::StartsWith("understudy: ") && Catch::Contains("/nonexistent/understudy.sock"));
    CHECK(o.out.empty());
}

TEST_CASE("cli: a drill whose sockets do not answer refuses with exit code 3", "[binary]") {
    auto o = run_cli("drill kill-primary --primary-socket /nonexistent/p.sock --backup-socket /nonexistent/b.sock "
                     "--service 127.0.0.1:1 --json");
    CHECK(o.code == 3);
    CHECK(lines(o.err) == 1);
    CHECK_THAT(o.err, Catch::StartsWith("understudy drill: the primary") && Catch::Contains("/nonexistent/p.sock"));
    CHECK(o.out.empty());
}

TEST_CASE("cli: --log-format json makes every log line a JSON object", "[binary]") {
    // A backup with the link in clear logs a warning, then cannot bind an address this host lacks.
    for (const char* where : {"--log-format json backup", "backup --log-format=json"}) {
        auto o = run_cli(std::string(where) + " --listen 192.0.2.1:7400 --link-security disabled");
        CHECK(o.code == 3);
        INFO(o.out);
        std::istringstream lines(o.out);
        std::string line;
        int logged = 0;
        while (std::getline(lines, line)) {
            CHECK_THAT(line, Catch::StartsWith("{\"ts\":\"") && Catch::EndsWith("}"));
            CHECK_THAT(line, Catch::Contains("\"level\":\"warning\",\"msg\":\"backup: --link-security disabled"));
            ++logged;
        }
        CHECK(logged == 1);
    }
    auto bad = run_cli("--log-format xml status");
    CHECK(bad.code == 2);
    CHECK(bad.err == "understudy: --log-format 'xml': expected human or json\n");
}

TEST_CASE("cli: every subcommand has --help", "[binary]") {
    for (const char* cmd : {"run", "restore", "backup", "verify-stream", "config", "config check", "bench", "status",
                            "snapshot", "reprotect", "failover", "drill"}) {
        INFO(cmd);
        auto o = run_cli(std::string(cmd) + " --help");
        CHECK(o.code == 0);
        CHECK_THAT(o.out, Catch::Contains(std::string("usage: understudy ") + cmd));
    }
    auto top = run_cli("--help");
    CHECK(top.code == 0);
    CHECK_THAT(top.out, Catch::Contains("config check FILE"));
    // --config is an option of each command that creates or keeps a VM.
    for (const char* cmd : {"run", "restore", "backup"}) CHECK_THAT(run_cli(std::string(cmd) + " --help").out, Catch::Contains("--config FILE"));
}

TEST_CASE("cli: config check reports every problem of the real commands with its line", "[binary]") {
    Scratch s;
    // One bad setting per line; the comment says what must be reported for it.
    const char* text =
        "[vm]\n"
        "memory = \"3M\"\n"                     // 2: size rule
        "vcpus = \"2\"\n"                       // 3: type
        "dirty = \"sometimes\"\n"               // 4: format
        "ring-entries = 100\n"                  // 5: power of two
        "listen = \"x:1\"\n"                    // 6: not a [vm] key
        "[network]\n"
        "mac = \"01:00:00:00:00:00\"\n"         // 8: multicast
        "net-buffer = 12\n"                     // 9: type (a size is a string)
        "[protection]\n"
        "epoch-ms = 0\n"                        // 11: range
        "heartbeat-ms = 50\n"
        "failure-timeout-ms = 100\n"            // 13: combination
        "max-in-flight = -3\n"                  // 14: unsigned
        "link-security = \"disabled\"\n"        // 15: fine (ignored where the commands lack the flag)
        "[run]\n"
        "vcpu = 2\n"                            // 17: unknown, suggestion
        "snapshot-after = 5.0\n"                // 18: needs snapshot-to
        "timeout = true\n"                      // 19: type
        "cmdline = [\"a\"]\n"                   // 20: type
        "[backup]\n"
        "listen = \"nowhere\"\n"                // 22: endpoint
        "reprotect-to = \"127.0.0.1:5\"\n"      // 23: needs promote
        "sessions = 5000000000\n"               // 24: out of range
        "promote = \"yes\"\n"                   // 25: type
        "[restore]\n"
        "stop-after-snapshot = true\n"          // 27: needs snapshot-after
        "[frobnicate]\n";                       // 28: unknown section
    auto path = s.write("bad.toml", text);
    auto o = run_cli("config check " + path);
    CHECK(o.code == 2);
    std::vector<std::pair<unsigned, std::string>> want = {
        {2, "[vm] memory: guest memory size"},
        {3, "[vm] vcpus: expected an integer, got a string"},
        {4, "[vm] dirty: dirty tracking mode 'sometimes'"},
        {5, "[vm] ring-entries must be a power of two"},
        {6, "[vm] listen: not a setting of [vm]"},
        {8, "[network] mac: MAC address '01:00:00:00:00:00' is a multicast address"},
        {9, "[network] net-buffer: expected a string, got an integer"},
        {11, "[protection] epoch-ms must be between 1 and 10000"},
        {13, "[protection] failure-timeout-ms 100 is shorter than three times heartbeat-ms 50"},
        {14, "[protection] max-in-flight: -3 is outside 0 .. 4294967295"},
        {17, "[run] vcpu: unknown setting for `understudy run` (did you mean 'vcpus'?)"},
        {18, "[run] snapshot-after needs snapshot-to"},
        {19, "[run] timeout: expected a number, got a boolean"},
        {20, "[run] cmdline: expected a string, got an array"},
        {22, "[backup] listen: "},
        {23, "[backup] reprotect-to needs promote"},
        {24, "[backup] sessions: 5000000000 is outside 0 .. 4294967295"},
        {25, "[backup] promote: expected a boolean (true or false), got a string"},
        {27, "[restore] stop-after-snapshot needs snapshot-after"},
        {28, "unknown section [frobnicate]"},
    };
    CHECK(lines(o.err) == want.size());
    for (const auto& [line, what] : want) {
        INFO("line " << line);
        CHECK_THAT(o.err, Catch::Contains(path + ":" + std::to_string(line) + ": " + what));
    }
    // The same file given to a command: its problems, and the command does not run.
    auto r = run_cli("run --config " + path);
    CHECK(r.code == 2);
    CHECK_THAT(r.err, Catch::Contains(path + ":3: [vm] vcpus"));
    CHECK_THAT(r.err, Catch::Contains(path + ":17: [run] vcpu"));
    CHECK_THAT(r.err, !Catch::Contains("[backup]"));

    // A good file: exit 0; a command-line flag overrides a bad value's rule.
    auto good = s.write("good.toml", "[vm]\nvcpus = 2\n[protection]\nepoch-ms = 20.5\nlink-security = \"disabled\"\n[run]\nsnapshot-after = 1\n"
                                     "snapshot-to = \"x.snap\"\n[backup]\nlisten = \"127.0.0.1:7400\"\npromote = true\n");
    auto g = run_cli("config check " + good);
    CHECK(g.code == 0);
    CHECK(g.err.empty());
    CHECK_THAT(g.out, Catch::Contains("ok"));
    auto limit = s.write("limit.toml", "[run]\nvcpus = 9\n");
    CHECK(run_cli("run --config " + limit + " --vcpus 20").code == 2);
    auto syntax = s.write("syntax.toml", "[run]\nvcpus = \n");
    auto sy = run_cli("config check " + syntax);
    CHECK(sy.code == 2);
    CHECK_THAT(sy.err, Catch::StartsWith(syntax + ":2: not valid TOML"));
    CHECK(run_cli("config check " + (s.dir / "none.toml").string()).code == 3);
    // Bounded: a file (or a device) larger than 1 MiB is refused without reading it all.
    auto huge = s.write("huge.toml", "# " + std::string(1 << 20, 'x') + "\n");
    auto h = run_cli("config check " + huge);
    CHECK(h.code == 2);
    CHECK_THAT(h.err, Catch::Contains("config file larger than 1024 KiB"));
    auto z = run_cli("config check /dev/zero");
    CHECK(z.code == 2);
    CHECK_THAT(z.err, Catch::Contains("config file larger than 1024 KiB"));
}
