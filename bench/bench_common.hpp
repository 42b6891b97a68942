// Small helpers shared by the benchmarks: command-line flags, clocks, percentiles,
// a minimal JSON writer and booting a guest image. Header-only; benchmarks only.
#pragma once

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <sys/utsname.h>
#include <unistd.h>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "common/clock.hpp"
#include "hv/host_kvm.hpp"
#include "hv/pvh_loader.hpp"
#include "hv/vm.hpp"

namespace understudy::bench {

struct Options {
    bool quick = false;
    std::string json_file; // empty: stdout only
    // Benchmark-specific "--name value" overrides (for investigations), in order.
    std::vector<std::pair<std::string, std::string>> extra;
};

inline void usage(const char* prog, const char* what) {
    std::fprintf(stderr,
                 "usage: %s [--quick] [--json FILE] [--NAME=VALUE ...]\n"
                 "  %s\n"
                 "  --quick      small sizes and few iterations (smoke run, a few seconds)\n"
                 "  --json FILE  also write the one-line JSON summary to FILE\n"
                 "  --NAME=VALUE benchmark-specific overrides (see bench/README.md)\n",
                 prog, what);
}

inline Options parse_options(int argc, char** argv, const char* what) {
    Options o;
    for (int i = 1; i < argc; ++i) {
        std::string_view a = argv[i];
        if (a == "--quick") {
            o.quick = true;
        } else if (a == "--json" && i + 1 < argc) {
            o.json_file = argv[++i];
        } else if (a.starts_with("--json=")) {
            o.json_file = std::string(a.substr(7));
        } else if (a.starts_with("--") && a.find('=') != std::string_view::npos) {
            auto eq = a.find('=');
            o.extra.emplace_back(std::string(a.substr(2, eq - 2)), std::string(a.substr(eq + 1)));
        } else if (a == "-h" || a == "--help") {
            usage(argv[0], what);
            std::exit(0);
        } else {
            usage(argv[0], what);
            std::exit(2);
        }
    }
    return o;
}

// Comma-separated unsigned numbers, e.g. "1000,10000".
inline std::vector<uint64_t> parse_list(const std::string& s) {
    std::vector<uint64_t> v;
    size_t pos = 0;
    while (pos <= s.size()) {
        size_t end = s.find(',', pos);
        if (end == std::string::npos) end = s.size();
        std::string item = s.substr(pos, end - pos);
        char* e = nullptr;
        unsigned long long x = std::strtoull(item.c_str(), &e, 10);
        if (item.empty() || *e) {
            std::fprintf(stderr, "bench: '%s' is not a list of numbers\n", s.c_str());
            std::exit(2);
        }
        v.push_back(x);
        pos = end + 1;
    }
    return v;
}


inline std::string utc_timestamp() {
    std::time_t t = std::time(nullptr);
    std::tm tm{};
    gmtime_r(&t, &tm);
    char buf[32];
    std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
    return buf;
}

// The source tree's commit (with "-dirty" when it has changes), for the figures' record;
// "unknown" outside a git checkout.
inline std::string source_commit() {
    std::string out;
    if (FILE* p = ::popen("git -C '" US_SOURCE_DIR "' describe --always --dirty --abbrev=12 2>/dev/null", "r")) {
        char buf[128];
        while (std::fgets(buf, sizeof buf, p)) out += buf;
        ::pclose(p);
    }
    while (!out.empty() && (out.back() == '\n' || out.back() == ' ')) out.pop_back();
    return out.empty() ? "unknown" : out;
}

// Percentile by nearest rank over a sorted copy: p in [0, 100].
struct Summary {
    double p50 = 0, p99 = 0, max = 0, min = 0, mean = 0;
    size_t n = 0;
};

inline Summary summarize(std::vector<double> v) {
    Summary s;
    s.n = v.size();
    if (v.empty()) return s;
    std::sort(v.begin(), v.end());
    auto rank = [&](double p) {
        size_t r = static_cast<size_t>(std::ceil(p / 100.0 * static_cast<double>(v.size())));
        return v[std::clamp<size_t>(r, 1, v.size()) - 1];
    };
    s.p50 = rank(50);
    s.p99 = rank(99);
    s.min = v.front();
    s.max = v.back();
    double sum = 0;
    for (double x : v) sum += x;
    s.mean = sum / static_cast<double>(v.size());
    return s;
}

// A tiny JSON object builder: enough for flat records and arrays of them.
class Json {
public:
    Json& num(const std::string& k, double v) {
        char b[64];
        if (std::isfinite(v))
            std::snprintf(b, sizeof b, "%.6g", v);
        else
            std::snprintf(b, sizeof b, "null");
        return raw(k, b);
    }
    Json& integer(const std::string& k, uint64_t v) { return raw(k, std::to_string(v)); }
    Json& boolean(const std::string& k, bool v) { return raw(k, v ? "true" : "false"); }
    Json& str(const std::string& k, const std::string& v) { return raw(k, quote(v)); }
    Json& obj(const std::string& k, const Json& v) { return raw(k, v.text()); }
    Json& arr(const std::string& k, const std::vector<Json>& v) {
        std::string s = "[";
        for (size_t i = 0; i < v.size(); ++i) s += (i ? "," : "") + v[i].text();
        return raw(k, s + "]");
    }
    Json& nums(const std::string& k, const std::vector<double>& v) {
        std::string s = "[";
        for (size_t i = 0; i < v.size(); ++i) {
            char b[64];
            std::snprintf(b, sizeof b, "%.6g", v[i]);
            s += (i ? "," : "") + std::string(b);
        }
        return raw(k, s + "]");
    }
    std::string text() const { return "{" + body_ + "}"; }

private:
    Json& raw(const std::string& k, const std::string& v) {
        if (!body_.empty()) body_ += ",";
        body_ += quote(k) + ":" + v;
        return *this;
    }
    static std::string quote(const std::string& s) {
        std::string o = "\"";
        for (char c : s) {
            if (c == '"' || c == '\\') o += '\\';
            if (static_cast<unsigned char>(c) < 0x20) {
                char b[8];
                std::snprintf(b, sizeof b, "\\u%04x", c);
                o += b;
                continue;
            }
            o += c;
        }
        return o + "\"";
    }
    std::string body_;
};

// Where and how a figure was measured, for its JSON (docs: bench/README.md "Provenance"):
// date, commit, command line, host name, kernel, CPU model and count, and which KVM
// backend offers /dev/kvm ("none" without it).
inline void add_provenance(Json& j, int argc, char** argv) {
    struct utsname u{};
    ::uname(&u);
    const hv::HostKvm& host = hv::this_host_kvm();
    std::string command;
    for (int i = 0; i < argc; ++i) command += (i ? " " : "") + std::string(argv[i]);
    j.str("date", utc_timestamp()).str("commit", source_commit()).str("command", command).str("host", u.nodename)
        .str("kernel", u.release).str("cpu", host.cpu).integer("cpus", uint64_t(::sysconf(_SC_NPROCESSORS_ONLN))).str("kvm", host.backend);
}

// A Summary as a JSON object: p50, p99, max, min, mean, n.
inline Json summary_json(const Summary& s) {
    return Json().num("p50", s.p50).num("p99", s.p99).num("max", s.max).num("min", s.min).num("mean", s.mean).integer("n", s.n);
}

// Prints "JSON: {...}" as the last line of stdout and writes the object to opts.json_file.
inline bool emit_json(const Options& o, const Json& j) {
    std::string t = j.text();
    std::printf("JSON: %s\n", t.c_str());
    std::fflush(stdout);
    if (o.json_file.empty()) return true;
    FILE* f = std::fopen(o.json_file.c_str(), "w");
    if (!f) {
        std::fprintf(stderr, "cannot write %s: %s\n", o.json_file.c_str(), std::strerror(errno));
        return false;
    }
    std::fprintf(f, "%s\n", t.c_str());
    return std::fclose(f) == 0;
}

[[noreturn]] inline void die(const std::string& what) {
    std::fprintf(stderr, "bench: %s\n", what.c_str());
    std::exit(1);
}

inline std::string guest_image(const std::string& name) { return std::string(US_GUEST_DIR) + "/" + name + ".elf"; }

// A VM with `image` loaded and its console discarded (or kept in *console).
inline std::unique_ptr<hv::Vm> boot(const std::string& image, const std::string& cmdline, hv::VmConfig cfg,
                                    std::shared_ptr<std::string> console = nullptr) {
    if (console)
        cfg.console = [console](std::string_view line) { *console += std::string(line) + "\n"; };
    else
        cfg.console = [](std::string_view) {};
    auto vm = hv::Vm::create(cfg);
    if (!vm) die("creating the VM: " + vm.error().describe());
    auto file = hv::read_file(guest_image(image), 64 << 20);
    if (!file) die(file.error().describe());
    auto img = hv::load_pvh_image(**vm, *file, cmdline);
    if (!img) die(img.error().describe());
    return std::move(*vm);
}

} // namespace understudy::bench
