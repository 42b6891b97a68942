// Logs (docs/cli.md, "Logs"): the JSON line formatter on hostile messages, the
// --log-format flag, and the built `understudy` binary's log lines with the flag and with
// the `log-format` key of a config file.
#include <catch2/catch.hpp>

#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>
#include <string>
#include <vector>

#include <spdlog/sinks/ostream_sink.h>
#include <spdlog/spdlog.h>

#include "cli/logging.hpp"
#include "common/json.hpp"

using namespace understudy;
using namespace understudy::cli;

TEST_CASE("json log lines are one valid JSON object each, whatever the message holds", "[logs]") {
    std::ostringstream out;
    auto logger = std::make_shared<spdlog::logger>("json-test", std::make_shared<spdlog::sinks::ostream_sink_st>(out));
    spdlog::register_logger(logger);
    set_log_format(LogFormat::json);
    const std::vector<std::string> messages = {
        "plain",
        "quotes \" and \\ backslashes",
        "two\nlines\r\n and a tab\t",
        std::string("every control byte: ") + std::string("\x01\x02\x03\x07\x08\x0b\x0c\x0e\x1b\x1f") + std::string(1, '\0'),
        "not UTF-8: \xff\xfe \xc0\xaf \xed\xa0\x80 \xf4\x90\x80\x80 truncated \xe2\x82",
        "UTF-8 kept: \xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80",
    };
    for (const auto& m : messages) logger->warn("{}", m);
    logger->flush();
    spdlog::drop("json-test");
    set_log_format(LogFormat::human);

    std::istringstream lines(out.str());
    std::string line;
    size_t n = 0;
    while (std::getline(lines, line)) {
        INFO(line);
        auto j = parse_json(line);
        REQUIRE(j);
        REQUIRE(j->kind == Json::Kind::object);
        REQUIRE(j->members.size() == 3);
        CHECK(j->members[0].first == "ts");
        CHECK(std::regex_match(j->members[0].second.text, std::regex(R"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z)")));
        CHECK(j->find("level")->text == "warning");
        const std::string& msg = j->find("msg")->text;
        REQUIRE(n < messages.size());
        if (n == 4) {
            CHECK(msg == "not UTF-8: \xef\xbf\xbd\xef\xbf\xbd \xef\xbf\xbd\xef\xbf\xbd \xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd "
                         "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd truncated \xef\xbf\xbd\xef\xbf\xbd");
        } else {
            CHECK(msg == messages[n]); // decoded back exactly
        }
        ++n;
    }
    CHECK(n == messages.size());
}

TEST_CASE("--log-format is taken from anywhere in the arguments and checked", "[logs]") {
    std::vector<std::string> a = {"run", "x.elf", "--log-format", "json", "-c", "k=v"};
    auto f = take_log_format(a);
    REQUIRE(f);
    CHECK(*f == LogFormat::json);
    CHECK(a == std::vector<std::string>{"run", "x.elf", "-c", "k=v"});
    std::vector<std::string> b = {"--log-format=human", "status"};
    auto g = take_log_format(b);
    REQUIRE(g);
    CHECK(*g == LogFormat::human);
    CHECK(b == std::vector<std::string>{"status"});
    std::vector<std::string> none = {"status", "--json"};
    auto h = take_log_format(none);
    REQUIRE(h);
    CHECK(!h->has_value()); // a config file may still choose
    CHECK(none.size() == 2);
    std::vector<std::string> c = {"run", "--log-format=yaml"};
    CHECK(take_log_format(c).error().message == "--log-format 'yaml': expected human or json");
    std::vector<std::string> d = {"run", "--log-format"};
    CHECK_THAT(take_log_format(d).error().message, Catch::Contains("needs a value"));
}

// ---- the binary ----
namespace {

struct Logged {
    int code = -1;
    std::vector<std::string> lines; // stdout, where the log goes
    std::string err;
};

// Runs `understudy ARGS` (a shell word list); stdout split in lines, stderr kept whole.
Logged run_understudy(const std::string& args) {
    char dir[] = "/tmp/us-logging-XXXXXX";
    REQUIRE(mkdtemp(dir));
    std::filesystem::path d(dir);
    std::string cmd = std::string(US_CLI_PATH) + " " + args + " >" + (d / "out").string() + " 2>" + (d / "err").string() +
                      " </dev/null";
    int st = std::system(cmd.c_str());
    Logged o;
    o.code = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
    std::ifstream out(d / "out");
    for (std::string line; std::getline(out, line);) o.lines.push_back(line);
    std::ifstream err(d / "err");
    o.err.assign(std::istreambuf_iterator<char>(err), {});
    std::filesystem::remove_all(d);
    return o;
}

// Each line parses as {"ts","level","msg"}; returns the messages.
std::vector<std::string> json_messages(const std::vector<std::string>& lines) {
    std::vector<std::string> msgs;
    for (const auto& line : lines) {
        INFO(line);
        auto j = parse_json(line);
        REQUIRE(j);
        REQUIRE(j->kind == Json::Kind::object);
        REQUIRE(j->members.size() == 3);
        REQUIRE(j->find("ts"));
        REQUIRE(j->find("level"));
        REQUIRE(j->find("msg"));
        msgs.push_back(j->find("msg")->text);
    }
    return msgs;
}

std::filesystem::path write_config(const std::string& name, const std::string& text) {
    auto p = std::filesystem::temp_directory_path() / (name + "-" + std::to_string(getpid()) + ".toml");
    std::ofstream(p) << text;
    return p;
}

// A backup with the link in clear logs a warning, then cannot bind an address this host lacks (exit 3).
const std::string kBackupArgs = "--listen 192.0.2.1:7400 --link-security disabled";

} // namespace

TEST_CASE("understudy --log-format json: every line it logs parses as a JSON object", "[binary]") {
    auto o = run_understudy("backup --log-format json " + kBackupArgs);
    CHECK(o.code == 3);
    auto msgs = json_messages(o.lines);
    REQUIRE(!msgs.empty());
    CHECK_THAT(msgs.front(), Catch::StartsWith("backup: --link-security disabled"));

    auto human = run_understudy("backup " + kBackupArgs);
    REQUIRE(!human.lines.empty());
    CHECK(!parse_json(human.lines.front()));
    CHECK(std::regex_search(human.lines.front(), std::regex(R"(^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3} )")));
}

TEST_CASE("understudy: log-format in a config file, overridden by the flag", "[binary]") {
    auto json = write_config("log-json", "[backup]\nlog-format = \"json\"\n");
    auto o = run_understudy("backup --config " + json.string() + " " + kBackupArgs);
    CHECK(o.code == 3);
    REQUIRE(!o.lines.empty());
    CHECK_THAT(json_messages(o.lines).front(), Catch::StartsWith("backup: --link-security disabled"));

    auto flag = run_understudy("--log-format human backup --config " + json.string() + " " + kBackupArgs);
    REQUIRE(!flag.lines.empty());
    for (const auto& line : flag.lines) CHECK(!parse_json(line));

    auto bad = write_config("log-bad", "[backup]\nlog-format = \"xml\"\n");
    auto b = run_understudy("backup --config " + bad.string() + " " + kBackupArgs);
    CHECK(b.code == 2);
    CHECK_THAT(b.err, Catch::Contains(bad.string() + ":2: [backup] log-format") && Catch::Contains("expected human or json"));
    CHECK(b.lines.empty()); // refused before anything ran
    auto check = run_understudy("config check " + bad.string());
    CHECK(check.code == 2);
    CHECK_THAT(check.err, Catch::Contains(":2: [backup] log-format"));
    std::filesystem::remove(json);
    std::filesystem::remove(bad);
}
