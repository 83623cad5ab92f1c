// tests/dispatch/reference.cpp: the header-only SDPA compiled for one ISA
// level (CMake builds this file with -march=x86-64-v3, x86-64-v4 and native,
// ATTN_REFERENCE_NAME naming the entry point), as a private object
// (cmake/attn_private_object.cmake) so that its inline functions stay its
// own.
#include <attn/sdpa.hpp>

#include "problems.hpp"
#include "run_problem.hpp"

ATTN_DISPATCH_TEST_DECLARE(ATTN_REFERENCE_NAME) {
  dispatch_test::run_problem(p, out, [](auto q, auto k, auto v, auto o, const auto& opt) {
    attn::scaled_dot_product_attention(q, k, v, o, opt);
  });
}
