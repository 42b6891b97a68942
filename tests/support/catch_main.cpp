// main() for the suites that need nothing before Catch2 runs.
#include "tests/support/catch_run.hpp"

int main(int argc, char** argv) { return understudy::test::run_catch(argc, argv); }
