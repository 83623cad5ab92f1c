// One attention call, compiled into each translation unit of the ABI test
// with that unit's own instruction-set flags.
#pragma once

#include <vector>

namespace abi_test {
// Runs a fixed causal attention problem; returns the output.
std::vector<float> run_wide();    // compiled with the widest flags available
std::vector<float> run_narrow();  // compiled with the project's default flags
}  // namespace abi_test
