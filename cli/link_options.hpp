// `--link-key FILE` and `--link-security required|disabled` (docs/security.md), shared by
// `run`/`restore` (with --backup) and `backup`, and the `keygen` command.
#pragma once

#include <boost/program_options.hpp>

#include <string>
#include <vector>

#include "common/error.hpp"
#include "replicator/link_security.hpp"

namespace understudy::cli {

struct LinkOptions {
    std::string key_file;
    std::string mode = "required";
};

void add_link_options(boost::program_options::options_description& d, LinkOptions& o);
// Reads and checks the key file (permissions, length) and the mode. Errc::invalid_input
// (a usage error) for required without a key, naming both options. `disabled` logs a
// warning that the link runs in clear.
Result<replicator::LinkSecurity> to_link_security(const LinkOptions& o, const char* role);

// `understudy keygen FILE`: writes a fresh 32-byte link key with mode 0600.
int keygen_command(const std::vector<std::string>& args);

} // namespace understudy::cli
