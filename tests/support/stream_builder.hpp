// Valid replication streams for the unit suites: the records of checkpoints as a primary
// writes them (docs/wire-format.md), over a 16 MiB guest with one vCPU.
#pragma once

#include <catch2/catch.hpp>

#include <cstring>
#include <vector>

#include "common/codec.hpp"
#include "hv/guest_memory.hpp"
#include "hv/snapshot.hpp"
#include "replicator/page_codec.hpp"
#include "replicator/transport.hpp"
#include "replicator/wire.hpp"

namespace understudy::test {

using replicator::CheckpointDigest;
using replicator::encode_u64s;
using replicator::kCheckpointBegin;
using replicator::kCheckpointEnd;
using replicator::kVcpuState;
using replicator::kVmState;
using replicator::make_stream_header;
using replicator::PageEncoder;
using replicator::StreamHeader;

inline constexpr uint64_t kMem = 16 * hv::kMiB;
inline constexpr uint64_t kGuestPages = kMem / hv::kPageSize;

inline Record rec(uint32_t type, std::vector<uint8_t> body) { return Record{type, std::move(body)}; }

// Produces the records of valid checkpoints, as a primary would.
struct StreamBuilder {
    uint64_t session = 42;
    PageEncoder enc = *PageEncoder::create({kGuestPages, 64, 42});
    std::vector<uint8_t> memory = std::vector<uint8_t>(kMem, 0);

    StreamHeader header(uint32_t vcpus = 1, uint32_t flags = 0) const {
        auto mem = hv::GuestMemory::create(kMem);
        return make_stream_header(kMem, vcpus, hv::memory_layout_digest(*mem), 0x1234, session, flags);
    }

    // Changes `pages` pages (value-stamped) and returns the checkpoint's records.
    // With `rounds` > 1 the pages are sent that many times, each round in its own PAGES
    // record and stamped anew (stamp, stamp + 1, ...), as pre-copy rounds do.
    std::vector<Record> checkpoint(uint64_t epoch, uint32_t flags, std::vector<uint64_t> pages, uint64_t stamp,
                                   unsigned rounds = 1) {
        std::vector<Record> out;
        CheckpointDigest digest;
        auto add = [&](uint32_t type, std::vector<uint8_t> body) {
            digest.add(type, body);
            out.push_back(rec(type, std::move(body)));
        };
        out.push_back(rec(kCheckpointBegin, [&] {
            std::vector<uint8_t> b;
            Encoder e(b);
            e.u64(epoch);
            e.u32(flags);
            e.u32(0);
            return b;
        }()));
        std::vector<uint8_t> body;
        for (unsigned round = 0; round < rounds; ++round) {
            std::vector<uint8_t> data;
            for (uint64_t p : pages) {
                std::memset(memory.data() + p * 4096, static_cast<int>(stamp + round), 64);
                data.insert(data.end(), memory.begin() + long(p * 4096), memory.begin() + long((p + 1) * 4096));
            }
            body.clear();
            Encoder(body).u64(epoch);
            REQUIRE(enc.encode(pages, data, body));
            add(replicator::kPages, body);
        }
        body.clear();
        Encoder e(body);
        e.u64(epoch);
        e.u32(0);
        e.u32(0);
        hv::VcpuState vs;
        vs.regs.rip = epoch;
        vs.xsave.assign(4096, 0);
        hv::encode_vcpu_state(vs, body);
        add(kVcpuState, body);
        body.clear();
        Encoder(body).u64(epoch);
        hv::VmState vm;
        vm.guest_time_ns = epoch * 1000;
        hv::encode_vm_clock(vm, body);
        add(kVmState, body);
        out.push_back(rec(kCheckpointEnd, encode_u64s({epoch, digest.records(), digest.value()})));
        return out;
    }
};

} // namespace understudy::test
