// The TOML config file parser (cli/config.hpp, parse_config): a file from the user.
// It must never throw or crash, and every value and problem it reports must point at a
// line of the text (or line 0, the file as a whole).
#include <algorithm>

#include "cli/config.hpp"
#include "fuzz/fuzz_support.hpp"

using namespace understudy;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    fuzz::quiet_logs();
    std::string_view text(reinterpret_cast<const char*>(data), size);
    auto f = cli::parse_config(text, "fuzz.toml");
    // toml++ counts lines at \n; a \r alone or other separators do not start one.
    unsigned lines = 1 + static_cast<unsigned>(std::count(text.begin(), text.end(), '\n'));
    for (const auto& v : f.values)
        if (v.line > lines || (v.kind != cli::ConfigValue::Kind::array && v.items.size() != 1)) {
            fuzz::fail("config: value " + v.section + "." + v.key + " at line " + std::to_string(v.line) + " of " +
                       std::to_string(lines));
        }
    for (const auto& p : f.problems)
        if (p.line > lines) {
            fuzz::fail("config: problem at line " + std::to_string(p.line) + " of " + std::to_string(lines));
        }
    return 0;
}
