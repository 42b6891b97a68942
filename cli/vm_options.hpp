// Command-line options shared by the subcommands that create a VM.
#pragma once

#include <boost/program_options.hpp>
#include <string>

#include "common/error.hpp"
#include "hv/vm.hpp"

namespace understudy::cli {

struct VmOptions {
    std::string memory = "256M";
    unsigned vcpus = 1;
    std::string dirty = "auto";
    uint32_t ring_entries = 16384;
};

void add_vm_options(boost::program_options::options_description& d, VmOptions& o);
// Turns the options into a checked VmConfig.
Result<hv::VmConfig> to_vm_config(const VmOptions& o);
// "256M", "1G", "4096K" or plain bytes.
Result<uint64_t> parse_size(const std::string& s);

} // namespace understudy::cli
