// tests/dispatch/problems.hpp: the SDPA problems test_dispatch.cpp runs both
// through attn::dispatch and through the header-only function compiled for
// one ISA level (reference.cpp). Plain arrays only cross between the
// translation units: they are compiled with different -march flags.
#pragma once

#include <cstddef>

namespace dispatch_test {

/// Number of problems: prefill (full, causal GQA, half K/V) and decode
/// (split-KV: float, bf16 K/V).
constexpr int problem_count = 5;

}  // namespace dispatch_test

/// Runs problem p with the header-only kernels compiled for one ISA level,
/// writing output_size_of(p) floats (run_problem.hpp) to out: defined in
/// reference.cpp, built once per level as dispatch_reference_<level>.
#define ATTN_DISPATCH_TEST_DECLARE(name) \
  extern "C" __attribute__((visibility("default"))) void name(int p, float* out)
ATTN_DISPATCH_TEST_DECLARE(dispatch_reference_v3);
ATTN_DISPATCH_TEST_DECLARE(dispatch_reference_v4);
ATTN_DISPATCH_TEST_DECLARE(dispatch_reference_native);
