// Checks on the subcommands' flags beyond their types: ranges, formats and combinations
// (docs/config.md lists them). The same rules run on the command line and on a config
// file; a rule applies to every command that has all of its options, so one table
// serves run, restore and backup. Add a rule here when you add a flag that has one.
#pragma once

#include <vector>

#include "cli/config.hpp"

namespace understudy::cli {

const std::vector<OptionRule>& option_rules();

} // namespace understudy::cli
