#include "problem.hpp"
#include "run_in_tu.hpp"
std::vector<float> abi_test::run_wide() { return solve(); }
abi_test::cache_run abi_test::run_caches_wide() { return solve_caches(); }
