// Catch2's implementation, compiled once for every suite (see catch_run.hpp).
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>

#include "tests/support/catch_run.hpp"

namespace understudy::test {

int run_catch(int argc, char** argv) { return Catch::Session().run(argc, argv); }

}  // namespace understudy::test
