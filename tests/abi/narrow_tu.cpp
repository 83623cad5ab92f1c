#include "problem.hpp"
#include "run_in_tu.hpp"
std::vector<float> abi_test::run_narrow() { return solve(); }
