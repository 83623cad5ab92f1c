// src/dispatch/level.cpp: one ISA level of attn::dispatch. CMake compiles
// this file once per level, each time with that level's -march flags and
// ATTN_DISPATCH_LEVEL = baseline, avx2 or avx512. The header-only kernels
// included here land in that level's ATTN_ABI namespace (attn/core/abi.hpp),
// and CMake links each level's object on its own (ld -r), turns every symbol
// but this file's entry point into a local one and drops the COMDAT groups,
// so that no inline function compiled for one level (attn's, Eigen's or the
// standard library's) can stand in for another level's or the program's
// copy at link time: a baseline caller must never run an AVX-512 body.
#include <attn/sdpa.hpp>

#include "level.hpp"

#ifndef ATTN_DISPATCH_LEVEL
#error "src/dispatch/level.cpp needs ATTN_DISPATCH_LEVEL (baseline, avx2 or avx512)"
#endif

#define ATTN_DISPATCH_CAT2(a, b) a##b
#define ATTN_DISPATCH_CAT(a, b) ATTN_DISPATCH_CAT2(a, b)

namespace attn {
namespace dispatch {
namespace level {
namespace {

template <class KV>
void sdpa(strided<const float, 4> q, strided<const KV, 4> k, strided<const KV, 4> v,
          strided<float, 4> out, const sdpa_options& opt) {
  attn::scaled_dot_product_attention(q, k, v, out, opt);
}

}  // namespace

// The one symbol a level exports (the file is compiled with hidden
// visibility).
__attribute__((visibility("default"))) entry_points ATTN_DISPATCH_CAT(ATTN_DISPATCH_LEVEL,
                                                                       _entry_points)() {
  return {&sdpa<float>, &sdpa<Eigen::bfloat16>, &sdpa<Eigen::half>};
}

}  // namespace level
}  // namespace dispatch
}  // namespace attn
