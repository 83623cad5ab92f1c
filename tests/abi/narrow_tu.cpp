#include "problem.hpp"
#include "run_in_tu.hpp"
std::vector<float> abi_test::run_narrow() { return solve(); }
abi_test::cache_run abi_test::run_caches_narrow() { return solve_caches(); }
