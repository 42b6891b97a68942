// Running Catch2 from a suite's own main(). Catch2's implementation is compiled once, in
// catch_runner.cpp (library understudy_catch_runner), because it is by far the slowest
// file to compile (minutes under the sanitizers): a suite that needs its own main
// includes this header instead of defining CATCH_CONFIG_RUNNER, and calls run_catch.
#pragma once

namespace understudy::test {

// Catch::Session().run(argc, argv): runs the test cases the command line selects and
// returns the process's exit status.
int run_catch(int argc, char** argv);

}  // namespace understudy::test
