#include "cli/bench_command.hpp"

#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>

#include "cli/config.hpp"

#ifndef US_SOURCE_DIR
#define US_SOURCE_DIR ""
#endif

namespace understudy::cli {

namespace po = boost::program_options;
namespace fs = std::filesystem;

namespace {

// This binary's directory (/proc/self/exe), or empty.
fs::path self_dir() {
    std::error_code ec;
    auto p = fs::read_symlink("/proc/self/exe", ec);
    return ec ? fs::path() : p.parent_path();
}

// bench/report.py: $UNDERSTUDY_BENCH_DIR, else the source tree this binary was built from,
// else an installed layout (BIN/../share/understudy/bench).
fs::path find_report_script() {
    std::vector<fs::path> candidates;
    if (const char* d = std::getenv("UNDERSTUDY_BENCH_DIR"); d && *d) candidates.push_back(fs::path(d) / "report.py");
    if (*US_SOURCE_DIR) candidates.push_back(fs::path(US_SOURCE_DIR) / "bench" / "report.py");
    if (auto d = self_dir(); !d.empty()) candidates.push_back(d / ".." / "share" / "understudy" / "bench" / "report.py");
    for (const auto& c : candidates)
        if (std::error_code ec; fs::is_regular_file(c, ec)) return c;
    return {};
}

} // namespace

int bench_command(const std::vector<std::string>& args) {
    bool quick = false;
    std::string out = "bench-report", from, build, only, script;
    fs::path dir = self_dir();
    std::string default_build = dir.empty() ? "build" : dir.parent_path().string(); // BUILD/cli/understudy
    po::options_description desc("Options");
    desc.add_options()("quick", po::bool_switch(&quick), "the benchmarks' --quick runs (a few minutes in all)")
        ("out", po::value(&out)->default_value(out)->value_name("DIR"), "directory for report.md, the plots and data/")
        ("from", po::value(&from)->value_name("DATA"),
         "make the report from data recorded earlier in DATA (checkpoint.json, checkpoint_samples.tsv, net.json, "
         "net_latency.tsv, drill.json); run nothing")
        ("only", po::value(&only)->value_name("LIST"), "benchmarks to run: checkpoint,net,drill (default all three)")
        ("build", po::value(&build)->default_value(default_build)->value_name("DIR"),
         "build directory with bench/bench_checkpoint, cli/understudy and guest/ (default: this binary's)")
        ("script", po::value(&script)->value_name("FILE"), "the report generator (default: found as below)");
    std::string usage =
        "usage: understudy bench [--quick] [--out DIR] [--from DATA]\n"
        "  Runs the checkpoint benchmark (bench/bench_checkpoint), the network benchmark\n"
        "  (bench/bench_net.py) and the failover drills (bench/drill.py), then writes DIR/report.md\n"
        "  with tables and gnuplot plots: pause-time histogram, pause and checkpoint size over time,\n"
        "  request-latency CDF protected vs unprotected. The network benchmark and the drills need\n"
        "  root, /dev/kvm, network namespaces and redis-tools; a benchmark that fails is reported in\n"
        "  the report. The generator is bench/report.py, looked up as $UNDERSTUDY_BENCH_DIR/report.py,\n"
        "  then in the source tree this binary was built from (" US_SOURCE_DIR "/bench),\n"
        "  then BINDIR/../share/understudy/bench/report.py; it needs python3 and gnuplot.";
    CommandSpec spec{"bench", usage, desc, {}, {}, false};
    if (auto done = parse_command(args, spec)) return *done;
    fs::path report = script.empty() ? find_report_script() : fs::path(script);
    if (report.empty() || !fs::is_regular_file(report)) {
        std::fprintf(stderr, "understudy bench: %s; set UNDERSTUDY_BENCH_DIR to the bench/ directory or give --script\n",
                     script.empty() ? "bench/report.py not found" : ("no such file " + script).c_str());
        return 2;
    }
    std::vector<std::string> argv = {"python3", report.string(), "--out", out, "--build", build};
    if (quick) argv.push_back("--quick");
    if (!from.empty()) argv.insert(argv.end(), {"--from", from});
    if (!only.empty()) argv.insert(argv.end(), {"--only", only});
    std::vector<char*> cargv;
    for (auto& a : argv) cargv.push_back(a.data());
    cargv.push_back(nullptr);
    std::fflush(stdout);
    ::execvp("python3", cargv.data());
    std::fprintf(stderr, "understudy bench: running python3: %s\n", std::strerror(errno));
    return 3;
}

} // namespace understudy::cli
