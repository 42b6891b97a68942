#include "cli/verify_command.hpp"

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "replicator/stream_verifier.hpp"

namespace understudy::cli {

int verify_stream_command(const std::vector<std::string>& args) {
    const char* usage =
        "usage: understudy verify-stream FILE\n"
        "  Checks a replication stream captured with `understudy backup --capture FILE` against\n"
        "  the wire format (docs/wire-format.md): header, record framing, checkpoint structure,\n"
        "  epochs, END counts and digests, page batch layout, disk records, state fields. Structure\n"
        "  only: page and disk block payloads are not decompressed and their checks are not verified.\n"
        "  Exit codes: 0 valid (a capture that ends inside a checkpoint is reported, not an error),\n"
        "  1 a violation (the first one is printed with its byte offset), 2 bad usage or input,\n"
        "  3 a read error.";
    if (args.size() == 1 && (args[0] == "--help" || args[0] == "-h")) {
        std::puts(usage);
        return 0;
    }
    if (args.size() != 1 || args[0].empty() || args[0][0] == '-') {
        std::fprintf(stderr, "understudy verify-stream: verify-stream takes exactly one FILE; see 'understudy verify-stream --help'\n");
        return 2;
    }
    auto report = replicator::verify_stream_file(args[0]);
    if (!report) {
        std::fprintf(stderr, "understudy: %s\n", report.error().describe().c_str());
        return report.error().sys_errno == ENOENT || report.error().sys_errno == EACCES ||
                       report.error().sys_errno == EISDIR
                   ? 2
                   : 3;
    }
    std::printf("stream: %s\n%s", args[0].c_str(), replicator::format_report(*report).c_str());
    return report->valid() ? 0 : 1;
}

} // namespace understudy::cli
