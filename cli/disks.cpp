#include "cli/disks.hpp"

#include "hv/virtio/blk_device.hpp"

namespace understudy::cli {

namespace po = boost::program_options;

void add_disk_options(po::options_description& d, DiskOptions& o) {
    d.add_options()("disk", po::value(&o.specs)->composing(),
                    "give the guest a virtio-blk disk backed by this raw file or block device; FILE,readonly for a "
                    "read-only one (repeatable: vda, vdb, ... in this order)");
}

Result<DiskSpec> parse_disk_spec(const std::string& text) {
    DiskSpec s;
    const auto comma = text.rfind(',');
    s.path = text.substr(0, comma);
    if (comma != std::string::npos) {
        const std::string opt = text.substr(comma + 1);
        if (opt != "readonly")
            return make_error(Errc::invalid_input, "--disk " + text + ": unknown option '" + opt + "' (the only one is readonly)");
        s.readonly = true;
    }
    if (s.path.empty()) return make_error(Errc::invalid_input, "--disk '" + text + "' names no file");
    return s;
}

Result<std::vector<std::string>> attach_disks(hv::Vm& vm, const DiskOptions& o, unsigned first_index) {
    std::vector<std::string> tokens;
    for (unsigned i = 0; i < o.specs.size(); ++i) {
        const DiskSpec spec = US_TRY(parse_disk_spec(o.specs[i]));
        hv::virtio::BlkConfig bc;
        bc.index = first_index + i;
        bc.disk = i;
        bc.path = spec.path;
        bc.readonly = spec.readonly;
        auto dev = hv::virtio::VirtioBlk::create(bc);
        if (!dev) return std::move(dev.error()).wrap("disk " + std::to_string(i));
        tokens.push_back((*dev)->cmdline_token());
        US_TRYV(vm.add_device(std::move(*dev)));
    }
    return tokens;
}

} // namespace understudy::cli
