#include "cli/vm_options.hpp"

#include <charconv>

namespace understudy::cli {

namespace po = boost::program_options;

void add_vm_options(po::options_description& d, VmOptions& o) {
    d.add_options()
        ("memory,m", po::value(&o.memory)->default_value(o.memory), "guest RAM: a multiple of 2M from 16M to 12G (suffix K, M or G)")
        ("vcpus", po::value(&o.vcpus)->default_value(o.vcpus), "number of vCPUs (1 to 8)")
        ("dirty", po::value(&o.dirty)->default_value(o.dirty), "dirty tracking: auto, ring, bitmap or none")
        ("ring-entries", po::value(&o.ring_entries)->default_value(o.ring_entries), "dirty ring entries per vCPU (power of two)");
}

Result<uint64_t> parse_size(const std::string& s) {
    uint64_t v = 0;
    auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
    if (ec != std::errc() || p == s.data()) return make_error(Errc::invalid_input, "size '" + s + "' is not a number");
    std::string suffix(p, s.data() + s.size());
    uint64_t mult = 1;
    if (suffix == "K" || suffix == "k") mult = 1ull << 10;
    else if (suffix == "M" || suffix == "m") mult = 1ull << 20;
    else if (suffix == "G" || suffix == "g") mult = 1ull << 30;
    else if (!suffix.empty()) return make_error(Errc::invalid_input, "size '" + s + "' has an unknown suffix (use K, M or G)");
    if (v > (~0ull) / mult) return make_error(Errc::invalid_input, "size '" + s + "' is too large");
    return v * mult;
}

Result<hv::VmConfig> to_vm_config(const VmOptions& o) {
    hv::VmConfig c;
    c.memory_bytes = US_TRY(parse_size(o.memory));
    c.vcpus = o.vcpus;
    c.dirty.mode = US_TRY(hv::parse_dirty_mode(o.dirty));
    c.dirty.ring_entries = o.ring_entries;
    US_TRYV(hv::validate_vm_config(c));
    return c;
}

} // namespace understudy::cli
