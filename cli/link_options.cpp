#include "cli/link_options.hpp"

#include <cstdio>
#include <cstring>
#include <memory>

#include "common/log.hpp"

namespace understudy::cli {

namespace po = boost::program_options;

void add_link_options(po::options_description& d, LinkOptions& o) {
    d.add_options()
        ("link-key", po::value(&o.key_file), "pre-shared key file of the replication link (make one with `understudy "
                                              "keygen FILE`; mode 0600, at least 32 bytes; the same file on both hosts)")
        ("link-security", po::value(&o.mode)->default_value(o.mode),
         "required: authenticate and encrypt the checkpoint stream and the control connection with --link-key; "
         "disabled: run them in clear (both hosts must agree)");
}

Result<replicator::LinkSecurity> to_link_security(const LinkOptions& o, const char* role) {
    replicator::LinkSecurity s;
    s.mode = US_TRY(replicator::parse_link_security_mode(o.mode));
    if (!s.enabled()) {
        log::warn("{}: --link-security disabled: checkpoints (guest memory) and heartbeats travel unauthenticated and "
                  "in clear; anyone on the path can read them or feed this host a forged stream{}",
                  role, o.key_file.empty() ? "" : " (--link-key is ignored)");
        return s;
    }
    if (o.key_file.empty())
        return make_error(Errc::invalid_input, "--link-security required (the default) needs --link-key FILE, the key "
                                               "shared with the other host (`understudy keygen FILE` makes one); "
                                               "or pass --link-security disabled to run the link in clear");
    auto key = US_TRY(replicator::load_link_key(o.key_file));
    s.key = std::make_shared<const replicator::LinkKey>(std::move(key));
    return s;
}

int keygen_command(const std::vector<std::string>& args) {
    const char* usage = "usage: understudy keygen FILE\n"
                        "  Writes a fresh random 32-byte link key to FILE (mode 0600; an existing file is not\n"
                        "  overwritten). Copy it to both hosts and pass it as --link-key FILE.";
    if (args.size() == 1 && (args[0] == "--help" || args[0] == "-h")) {
        std::puts(usage);
        return 0;
    }
    if (args.size() != 1 || args[0].empty() || args[0][0] == '-') {
        std::fprintf(stderr, "understudy: keygen takes exactly one FILE\n%s\n", usage);
        return 2;
    }
    if (auto r = replicator::write_new_link_key(args[0]); !r) {
        std::fprintf(stderr, "understudy: %s\n", r.error().describe().c_str());
        return r.error().sys_errno == EEXIST ? 2 : 3;
    }
    std::printf("link key written to %s (32 bytes, mode 0600)\n", args[0].c_str());
    return 0;
}

} // namespace understudy::cli
