// Catch2 main for suites that need /dev/kvm: without it the suite exits 77, which ctest
// reports as skipped (SKIP_RETURN_CODE), naming the reason, never as passed. A run
// filtered to the cases that need none ("~[kvm]", a suite's native half) runs anywhere.
#include <cstdio>
#include <string>

#include "hv/kvm.hpp"
#include "tests/support/catch_run.hpp"

int main(int argc, char** argv) {
    std::string why;
    bool needs_kvm = !(argc == 2 && std::string(argv[1]) == "~[kvm]");
    if (needs_kvm && !understudy::hv::kvm_available(&why)) {
        std::printf("SKIPPED: %s\n", why.c_str());
        return 77;
    }
    return understudy::test::run_catch(argc, argv);
}
