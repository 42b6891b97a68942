// Link keys for tests (docs/security.md): one random key per test process for primaries
// and backups built in the process, and key files for the `understudy` processes a test
// starts.
#pragma once

#include <catch2/catch.hpp>

#include <sys/stat.h>

#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>

#include "replicator/link_security.hpp"

namespace understudy::test {

inline std::shared_ptr<const replicator::LinkKey> shared_link_key() {
    static auto key = std::make_shared<const replicator::LinkKey>(*replicator::LinkKey::random());
    return key;
}

// Link security as `understudy run --link-key` and `backup --link-key` set it up, with
// this process's key.
inline replicator::LinkSecurity link_security() { return {replicator::LinkSecurityMode::required, shared_link_key()}; }

// A fresh random key (another key than link_security()'s).
inline replicator::LinkSecurity other_link_security() {
    auto k = replicator::LinkKey::random();
    REQUIRE(k);
    return {replicator::LinkSecurityMode::required, std::make_shared<const replicator::LinkKey>(std::move(*k))};
}

// Writes a new key file (mode 0600) at `path`, replacing any file there.
inline std::string write_link_key_file(const std::string& path) {
    std::filesystem::remove(path);
    auto r = replicator::write_new_link_key(path);
    INFO((r ? std::string() : r.error().describe()));
    REQUIRE(r);
    return path;
}

// Writes shared_link_key() to a key file (mode 0600) at `path`: for a process that must
// share this test's link_security().
inline std::string write_shared_link_key_file(const std::string& path) {
    std::filesystem::remove(path);
    std::FILE* f = std::fopen(path.c_str(), "wb");
    REQUIRE(f);
    auto bytes = shared_link_key()->bytes();
    const bool written = std::fwrite(bytes.data(), 1, bytes.size(), f) == bytes.size();
    std::fclose(f);
    REQUIRE(written);
    REQUIRE(::chmod(path.c_str(), 0600) == 0);
    return path;
}

} // namespace understudy::test
