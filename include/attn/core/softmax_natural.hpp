// attn/core/softmax_natural.hpp: the online softmax in natural-log units.
//
// For kernels whose scores are not pre-scaled into log2 units (additive
// attention, whose tanh scores come out of the kernel as they are): the
// running state exp(s - m) per row and the row softmax. The flash, split-KV
// and latent kernels keep their scores in log2 units and use
// core/softmax.hpp instead; both report natural-log LSEs.
#pragma once

#include <algorithm>
#include <cmath>

#include "attn/core/abi.hpp"
#include "attn/core/index.hpp"
#include "attn/core/math.hpp"
#include "attn/core/simd.hpp"
#include "attn/core/softmax.hpp"

namespace attn::core::softmax {
inline namespace ATTN_ABI {

/// Running state of one query row.
struct online_state {
  float max = neg_inf;  ///< largest score seen so far (-inf: none yet)
  float sum = 0.0f;     ///< sum of exp(score - max) over the scores seen

  /// Reference point for exp(): the max, or 0 while no key is visible, so a
  /// row of -inf scores gives exp(-inf - 0) = 0 rather than NaN.
  float pivot() const { return max == neg_inf ? 0.0f : max; }

  /// Moves to a new maximum m_new >= max and returns the factor
  /// exp(max - m_new) by which earlier accumulations must be multiplied
  /// (1 when the maximum did not move, so callers can skip the rescale).
  float raise_max(float m_new) {
    if (!(m_new > max)) return 1.0f;
    const float f = max == neg_inf ? 0.0f : simd::exp_scalar(max - m_new);
    sum *= f;
    max = m_new;
    return f;
  }

  /// Natural log of the total: max + log(sum); -inf for a row that saw
  /// nothing (sum == 0).
  float lse() const { return std::isnan(sum) ? sum : sum > 0.0f ? max + std::log(sum) : neg_inf; }

  /// 1 / sum, or 0 for a row that saw nothing (its output is 0).
  float inv_sum() const { return std::isnan(sum) ? sum : sum > 0.0f ? 1.0f / sum : 0.0f; }
};

/// Largest of x[0..n), NaN ignored; -inf for none (n = 0).
inline float max_of(const float* x, index n) {
  using namespace simd;
  packet vmax = broadcast(neg_inf);
  index j = 0;
  for (; j + width <= n; j += width) vmax = simd::max(vmax, load(x + j));  // a NaN x keeps vmax
  float m = reduce_max(vmax);
  for (; j < n; ++j) m = x[j] > m ? x[j] : m;
  return m;
}

/// x[j] <- exp(min(x[j] - pivot, 0)) for j < n; returns their sum. A NaN
/// score stays NaN (and so does the sum).
inline float exp_in_place(float* x, index n, float pivot) {
  using namespace simd;
  const packet pv = broadcast(pivot);
  packet vsum = zero();
  index j = 0;
  for (; j + width <= n; j += width) {
    const packet e = simd::exp(simd::min(sub(load(x + j), pv), zero()));
    store(x + j, e);
    vsum = add(vsum, e);
  }
  float s = reduce_add(vsum);
  for (; j < n; ++j) {
    x[j] = exp_scalar(std::min(x[j] - pivot, 0.0f));
    s += x[j];
  }
  return s;
}

/// Softmax of n scores in place (x[j] <- exp(x[j] - max) / sum); returns the
/// row's log-sum-exp. A row of only -inf becomes all 0 with LSE -inf.
inline float row_softmax(float* x, index n) {
  float m = max_of(x, n);
  // A score that overflowed to +inf: the max is clamped to max_finite and
  // every exponent to <= 0, so that score weighs 1 (as in the flash
  // kernels) instead of making the row inf / inf = NaN.
  if (m > max_finite) m = max_finite;
  online_state st;
  st.raise_max(m);
  st.sum = exp_in_place(x, n, st.pivot());
  const float inv = st.inv_sum();
  for (index j = 0; j < n; ++j) x[j] *= inv;
  return st.lse();
}

}  // namespace ATTN_ABI
}  // namespace attn::core::softmax
