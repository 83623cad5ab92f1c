// attn/core/assert.hpp: ATTN_ASSERT(cond), for the preconditions internal
// code assumes because the public entries have already checked them
// ("arguments arrive validated", docs/design.md section 5).
//
// Off by default: the condition is then an unevaluated operand, so it costs
// nothing, changes no bits and still counts as a use of its variables. With
// ATTN_ENABLE_ASSERTS defined (the test build does) a false condition prints
// where and what, then aborts. A program may define ATTN_ASSERT itself before
// including attn (as with Eigen's eigen_assert or fmt's FMT_ASSERT).
#pragma once

#ifndef ATTN_ASSERT
#ifdef ATTN_ENABLE_ASSERTS

#include <cstdio>
#include <cstdlib>

namespace attn::core {

// Out of line and cold, so a passing assert is one compare and branch.
[[noreturn]] inline void assert_failed(const char* cond, const char* file, int line) {
  std::fprintf(stderr, "%s:%d: attn: assertion failed: %s\n", file, line, cond);
  std::abort();
}

}  // namespace attn::core

#define ATTN_ASSERT(cond) \
  ((cond) ? static_cast<void>(0) : ::attn::core::assert_failed(#cond, __FILE__, __LINE__))

#else

#define ATTN_ASSERT(cond) static_cast<void>(sizeof(!(cond)))

#endif
#endif
