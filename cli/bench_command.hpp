#pragma once

#include <string>
#include <vector>

namespace understudy::cli {

// `understudy bench [--quick] [--out DIR]`: runs bench/report.py, which runs the
// benchmarks and writes DIR/report.md with plots.
int bench_command(const std::vector<std::string>& args);

} // namespace understudy::cli
