// `--disk FILE[,readonly]` (repeatable; `disk = [...]` in a config file): the guest's
// virtio-blk disks (docs/disks.md).
#pragma once

#include <boost/program_options.hpp>

#include <string>
#include <vector>

#include "common/error.hpp"
#include "hv/vm.hpp"

namespace understudy::cli {

struct DiskOptions {
    std::vector<std::string> specs; // FILE or FILE,readonly, in the guest's order
};

void add_disk_options(boost::program_options::options_description& d, DiskOptions& o);

struct DiskSpec {
    std::string path;
    bool readonly = false;
};
Result<DiskSpec> parse_disk_spec(const std::string& text);

// Adds a virtio-blk device per disk to `vm`, in the device windows from `first_index` on
// (after the NIC's); returns their command-line tokens, through which the guest/ images
// find them (Linux finds them in the ACPI tables).
Result<std::vector<std::string>> attach_disks(hv::Vm& vm, const DiskOptions& o, unsigned first_index);

} // namespace understudy::cli
