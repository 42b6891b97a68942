#include "cli/backup_command.hpp"

#include <spdlog/spdlog.h>

#include <cstdio>
#include <iostream>

#include <boost/program_options.hpp>

#include "hv/snapshot.hpp"
#include "replicator/backup.hpp"

namespace understudy::cli {

namespace po = boost::program_options;

int backup_command(const std::vector<std::string>& args) {
    std::string listen, snapshot_to;
    unsigned sessions = 0;
    po::options_description desc("Options");
    desc.add_options()("help,h", "show this help")
        ("listen", po::value(&listen)->required(), "address to accept the primary on, HOST:PORT")
        ("snapshot-to", po::value(&snapshot_to), "after each session, write the committed replica to this snapshot file")
        ("sessions", po::value(&sessions)->default_value(0), "exit after this many sessions (0: serve forever)");
    const char* usage = "usage: understudy backup --listen HOST:PORT [options]\n"
                        "  Receives checkpoints from a primary and keeps the last committed one.";
    po::variables_map vm;
    try {
        po::store(po::command_line_parser(args).options(desc).run(), vm);
        if (vm.count("help")) {
            std::cout << usage << "\n" << desc << "\n";
            return 0;
        }
        po::notify(vm);
    } catch (const po::error& e) {
        std::fprintf(stderr, "understudy: %s\n%s\n", e.what(), usage);
        return 2;
    }
    auto ep = replicator::Endpoint::parse(listen);
    if (!ep) {
        std::fprintf(stderr, "understudy: %s\n", ep.error().describe().c_str());
        return 2;
    }
    auto server = replicator::BackupServer::listen(*ep);
    if (!server) {
        std::fprintf(stderr, "understudy: %s\n", server.error().describe().c_str());
        return 3;
    }
    spdlog::info("backup: listening on {}", (*server)->local().str());
    for (unsigned done = 0; sessions == 0 || done < sessions;) {
        auto r = (*server)->serve_one(std::chrono::seconds(1));
        if (!r && r.error().code == Errc::timeout) continue;
        ++done;
        const auto* replica = (*server)->replica();
        uint64_t epoch = replica && replica->has_committed() ? replica->committed_epoch() : 0;
        if (r)
            spdlog::info("backup: session ended; committed checkpoint {}", epoch);
        else
            spdlog::warn("backup: session ended: {}; committed checkpoint {} kept", r.error().describe(), epoch);
        if (!snapshot_to.empty() && epoch > 0) {
            auto info = hv::write_snapshot(replica->memory(), replica->state(), snapshot_to);
            if (!info) {
                std::fprintf(stderr, "understudy: %s\n", info.error().describe().c_str());
                return 3;
            }
            spdlog::info("backup: checkpoint {} written to {}", epoch, snapshot_to);
        }
    }
    return 0;
}

} // namespace understudy::cli
