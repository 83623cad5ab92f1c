// attn/core/dot.hpp: the dot product of one float row with one row of K, in
// one fixed order.
//
// The kernels that score one query against one key at a time (split-KV
// decode, the structured and additive Luong dot scores) share it, so that a
// change of accumulation order is made once. The multi-row forms (4 query
// rows sharing a key row, 4 keys sharing a query) stay with their kernels:
// their point is the loads they share.
#pragma once

#include "attn/core/abi.hpp"
#include "attn/core/index.hpp"
#include "attn/core/simd.hpp"

namespace attn::core {
inline namespace ATTN_ABI {

/// sum_d x[d] · y[d] over n elements, y widened from its storage type (float,
/// bf16 or half). Two packet chains hide the FMA latency, then one packet,
/// then the scalar tail; the order depends only on n, never on the caller.
/// split_kv_decode's dot_keys4 (4 keys per query row) forms each key's sum
/// in this same order, so that both give the same bits: change both together.
template <class Y>
inline float dot(const float* x, const Y* y, index n) {
  using namespace simd;
  packet acc0 = zero(), acc1 = zero();
  index i = 0;
  for (; i + 2 * width <= n; i += 2 * width) {
    acc0 = fma(load(x + i), load_as_float(y + i), acc0);
    acc1 = fma(load(x + i + width), load_as_float(y + i + width), acc1);
  }
  for (; i + width <= n; i += width) acc0 = fma(load(x + i), load_as_float(y + i), acc0);
  float s = reduce_add(add(acc0, acc1));
  for (; i < n; ++i) s += x[i] * static_cast<float>(y[i]);
  return s;
}

}  // namespace ATTN_ABI
}  // namespace attn::core
