#include "cli/option_rules.hpp"

#include <bit>
#include <chrono>

#include <fmt/format.h>

#include "cli/logging.hpp"
#include "cli/network.hpp"
#include "cli/vm_options.hpp"
#include "replicator/failure_detector.hpp"
#include "hv/dirty_tracker.hpp"
#include "hv/guest_memory.hpp"
#include "hv/vm.hpp"
#include "replicator/transport.hpp"

namespace understudy::cli {

namespace po = boost::program_options;

namespace {

using Check = std::optional<std::string>;

template <class T>
const T* get(const po::variables_map& vm, const char* name) {
    auto it = vm.find(name);
    return it == vm.end() || it->second.empty() ? nullptr : boost::any_cast<T>(&it->second.value());
}

// A value that a Result-returning parser must accept.
template <class T, class F>
OptionRule valid(const char* name, F parse) {
    return {{name}, [name, parse](const po::variables_map& vm, const OptionNamer& n) -> Check {
                const T* v = get<T>(vm, name);
                if (!v) return std::nullopt;
                if (auto r = parse(*v); !r) return n(name) + ": " + r.error().describe();
                return std::nullopt;
            }};
}

template <class T>
OptionRule range(const char* name, T lo, T hi, const char* unit = "") {
    return {{name}, [=](const po::variables_map& vm, const OptionNamer& n) -> Check {
                const T* v = get<T>(vm, name);
                if (!v || (*v >= lo && *v <= hi)) return std::nullopt;
                return n(name) + " must be between " + fmt::format("{}", lo) + " and " + fmt::format("{}", hi) + unit +
                       " (got " + fmt::format("{}", *v) + ")";
            }};
}

// `a` is meaningless without `b`.
OptionRule needs(const char* a, const char* b) {
    return {{a, b}, [=](const po::variables_map& vm, const OptionNamer& n) -> Check {
                if (option_set(vm, a) && !option_set(vm, b)) return n(a) + " needs " + n(b);
                return std::nullopt;
            }};
}

Result<void> endpoint(const std::string& s) {
    US_TRYV(replicator::Endpoint::parse(s));
    return {};
}

} // namespace

const std::vector<OptionRule>& option_rules() {
    static const std::vector<OptionRule> rules = {
        // The VM (vm_options.hpp).
        valid<std::string>("memory", [](const std::string& s) -> Result<void> {
            return hv::validate_memory_size(US_TRY(parse_size(s)));
        }),
        range<unsigned>("vcpus", 1, hv::kMaxVcpus),
        valid<std::string>("dirty", [](const std::string& s) -> Result<void> {
            US_TRYV(hv::parse_dirty_mode(s));
            return {};
        }),
        {{"ring-entries"}, [](const po::variables_map& vm, const OptionNamer& n) -> Check {
             const uint32_t* v = get<uint32_t>(vm, "ring-entries");
             if (!v || (*v >= 64 && *v <= 65536 && std::has_single_bit(*v))) return std::nullopt;
             return n("ring-entries") + " must be a power of two from 64 to 65536 (got " + std::to_string(*v) + ")";
         }},
        // Supervision (run, restore).
        range<double>("timeout", 0, 1e9, " s"),
        range<unsigned>("sample-ms", 1, 3600000, " ms"),
        range<double>("snapshot-after", 0, 1e9, " s"),
        needs("snapshot-after", "snapshot-to"),
        needs("stop-after-snapshot", "snapshot-after"),
        {{"snapshot-to", "snapshot-after"}, [](const po::variables_map& vm, const OptionNamer& n) -> Check {
             if (option_set(vm, "snapshot-to") && !option_set(vm, "snapshot-after"))
                 return n("snapshot-to") + " needs " + n("snapshot-after") + " (when to take the snapshot)";
             return std::nullopt;
         }},
        // Protection (run, restore) and the backup's address (backup).
        valid<std::string>("backup", endpoint),
        valid<std::string>("listen", endpoint),
        valid<std::string>("reprotect-to", endpoint),
        range<double>("epoch-ms", 1, 10000, " ms"),
        range<unsigned>("max-in-flight", 1, 64),
        range<unsigned>("ack-timeout-ms", 100, 3600000, " ms"),
        range<unsigned>("verify-interval-s", 0, 604800, " s"),
        range<unsigned>("verify-pages-per-checkpoint", 1, 65536),
        valid<std::string>("verify-mismatch", [](const std::string& s) -> Result<void> {
            if (s == "resync" || s == "report") return {};
            return make_error(Errc::invalid_input, "'" + s + "' is not resync or report");
        }),
        valid<std::string>("epoch-priority", [](const std::string& s) -> Result<void> {
            if (s == "realtime" || s == "normal") return {};
            return make_error(Errc::invalid_input, "'" + s + "' is not realtime or normal");
        }),
        range<unsigned>("heartbeat-ms", 1, 60000, " ms"),
        {{"failure-timeout-ms", "heartbeat-ms"}, [](const po::variables_map& vm, const OptionNamer& n) -> Check {
             const unsigned* t = get<unsigned>(vm, "failure-timeout-ms");
             const unsigned* h = get<unsigned>(vm, "heartbeat-ms");
             if (!t || !h) return std::nullopt;
             if (auto r = replicator::validate({std::chrono::milliseconds(*h), std::chrono::milliseconds(*t)}); !r)
                 return n("failure-timeout-ms") + " " + std::to_string(*t) + " is shorter than three times " + n("heartbeat-ms") +
                        " " + std::to_string(*h);
             return std::nullopt;
         }},
        // Failover (backup).
        needs("reprotect-to", "promote"),
        // Logs (cli/logging.hpp).
        valid<std::string>("log-format", [](const std::string& s) -> Result<void> {
            US_TRYV(parse_log_format(s));
            return {};
        }),
        // The guest network (network.hpp).
        valid<std::string>("mac", [](const std::string& s) -> Result<void> {
            US_TRYV(parse_mac(s));
            return {};
        }),
        valid<std::string>("net-buffer", [](const std::string& s) -> Result<void> {
            uint64_t v = US_TRY(parse_size(s));
            if (v < 64 * 1024) return make_error(Errc::invalid_input, "at least 64K is needed to hold one frame");
            return {};
        }),
        needs("output-gather-ms", "backup"),
        // Link security (cli/link_options.hpp): the default, required, needs the key wherever
        // there is a link: on `backup`, and on `run`/`restore` with --backup.
        {{"link-security", "link-key"}, [](const po::variables_map& vm, const OptionNamer& n) -> Check {
             const std::string* mode = get<std::string>(vm, "link-security");
             bool linked = vm.count("listen") || option_set(vm, "backup");
             if (!mode || *mode != "required" || !linked || option_set(vm, "link-key")) return std::nullopt;
             return n("link-security") + " required (the default) needs " + n("link-key") +
                    " (the key file shared with the other host; `understudy keygen FILE` makes one)";
         }},
    };
    return rules;
}

} // namespace understudy::cli
