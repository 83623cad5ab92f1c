// attn/core/fp64_row.hpp: the fp64 recomputation of one softmax-weighted row,
// the kernels' safety net for a row whose fp32 result came out non-finite.
//
// The fast kernels accumulate the unnormalised output O = Σ_j 2^(s_j - max) v_j
// in fp32. The exact output is a convex combination of the v_j, so it is at
// most max|v| <= FLT_MAX, but O itself is up to (keys seen) · max|v| and
// overflows to inf when the visible values sum past FLT_MAX (then NaN, inf · 0,
// when a later key raises the max). Checking every step would cost the hot
// loop; instead a kernel checks each finished row (all_finite, O(d_v)) and only
// for a non-finite one calls recompute_row_fp64, which redoes that row in
// double (scores, max, Σ 2^(s - max), Σ p·v: no overflow below 2^1024) with
// the fast path's own semantics (scores in log2 units; the max clamped to
// FLT_MAX, so an overflowed +inf score weighs 1 as in the fast path; masked
// keys never read), and replaces the row's non-finite features by their
// recomputed values where those are finite: a feature that is NaN or inf
// because the inputs hold NaN or inf (a NaN score, an inf value on a visible
// key) stays as the fast path left it. Rows that come out finite never reach
// this code, and finite features are never rewritten, so their bits are the
// fast path's.
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "attn/core/abi.hpp"
#include "attn/core/index.hpp"
#include "attn/core/simd.hpp"

namespace attn::core::softmax {
inline namespace ATTN_ABI {

/// True when the n floats at p (contiguous) are all finite: no NaN, no ±inf.
/// O(n) with packets; meant for one finished output row.
inline bool all_finite(const float* p, index n) {
  using namespace simd;
  // x · 0 is NaN exactly for x = NaN or ±inf; four probes, so the adds
  // do not wait on each other.
  packet probe[4] = {zero(), zero(), zero(), zero()};
  index i = 0;
  for (; i + 4 * width <= n; i += 4 * width)
    for (int k = 0; k < 4; ++k) probe[k] = add(probe[k], mul(load(p + i + k * width), zero()));
  for (; i + width <= n; i += width) probe[0] = add(probe[0], mul(load(p + i), zero()));
  float s = reduce_add(add(add(probe[0], probe[1]), add(probe[2], probe[3])));
  for (; i < n; ++i) s += p[i] * 0.0f;
  return s == 0.0f;
}

/// Whether a finished fp32 row (output o[0..n), log-sum-exp lse) must be
/// redone in double: its output is not all finite, or its LSE is NaN or +inf.
/// A row that saw no key has LSE -inf and is fine. The LSE test matters on
/// its own: scores of a query near FLT_MAX can overflow to inf - inf = NaN
/// while the output they weight stays finite (found by fuzz_paged_cache).
inline bool needs_fp64_repair(const float* o, index n, float lse) {
  return !all_finite(o, n) || std::isnan(lse) || lse == std::numeric_limits<float>::infinity();
}

/// A score in double (log2 units) floored at -FLT_MAX, as the fast kernels
/// floor every computed score (core::softmax::floor_score): a row whose
/// scores all lie below -FLT_MAX averages its values there, so the repair
/// must see them equal too (unfloored, such a row's LSE fell below -FLT_MAX
/// and stayed NaN: a fuzz_paged_cache finding). NaN stays NaN.
inline double floor_score_fp64(double s) {
  constexpr double floor = -static_cast<double>(std::numeric_limits<float>::max());
  return s < floor ? floor : s;
}

/// One key of a row as recompute_row_fp64 sees it.
struct fp64_key {
  bool visible;  ///< false: masked (its value is never read, its score ignored)
  double score;  ///< when visible: the score in log2 units, as the fast path
                 ///< would form it (scale·log2 e·q·k plus any additive mask
                 ///< in log2 units); may be ±inf or NaN
};

/// Recomputes one attention row in double and repairs the features the fast
/// path left non-finite: over keys j in [0, n_keys) with key(j) visible,
/// weights p_j = 2^min(s_j - m, 0) where m is the largest visible score
/// clamped to FLT_MAX (the fast kernels' rule: a +inf score weighs 1, shared
/// with other saturated keys), l = Σ p_j, and x_d = Σ p_j v_j[d] / l. Each
/// feature is its own sum, so each is repaired on its own: out[d] is
/// replaced by x_d exactly when out[d] is not finite and x_d is. Finite
/// features keep the fast path's bits; a feature that reads a NaN or inf
/// value of a visible key stays as it was (NaN policy: it is non-finite).
///
/// @param n_keys keys of the row, j in [0, n_keys).
/// @param key    callable index -> fp64_key.
/// @param value  callable index -> const T* to d_v contiguous values of key j
///               (T = float, Eigen::bfloat16 or Eigen::half: anything
///               static_cast to float); called only for visible keys.
/// @param d_v    features per row (value width).
/// @param out    the fast path's row, d_v contiguous floats, repaired in place.
/// @param lse    optional (may be null): the row's natural-log LSE, replaced
///               by the recomputed one (m + log2 l)·ln 2 only when the
///               current value is not finite and the recomputed one is.
/// @param sink_log2 a sink (attn::sdpa_options::sinks) in log2 units: it
///               joins m and l with no value; -inf (the default) for none.
/// @return true when every out[d] is finite on return. Nothing is written
///         when a visible score is NaN (the row reads a NaN: it is NaN), no
///         key is visible, or every visible score is -inf (the fast path's
///         empty row: 0 and LSE -inf).
///
/// Cost O(n_keys · (score + d_v)) in double, plus a d_v-double buffer: only
/// for rows that came out non-finite (see the file comment).
template <class KeyFn, class ValueFn>
bool recompute_row_fp64(index n_keys, const KeyFn& key, const ValueFn& value, index d_v,
                        float* out, float* lse,
                        double sink_log2 = -std::numeric_limits<double>::infinity()) {
  constexpr double fmax = std::numeric_limits<float>::max();
  constexpr double dinf = std::numeric_limits<double>::infinity();
  double m = -dinf;
  bool any = false;
  for (index j = 0; j < n_keys; ++j) {
    const fp64_key kj = key(j);
    if (!kj.visible) continue;
    if (std::isnan(kj.score)) return false;  // the row reads a NaN: it is NaN
    any = true;
    m = std::max(m, kj.score);
  }
  if (!any || m == -dinf) return false;  // an empty row: 0 and LSE -inf already
  m = std::min(std::max(m, sink_log2), fmax);
  std::vector<double> acc(static_cast<std::size_t>(d_v), 0.0);
  double l = 0.0;
  for (index j = 0; j < n_keys; ++j) {
    const fp64_key kj = key(j);
    if (!kj.visible) continue;
    const double p = std::exp2(std::min(kj.score - m, 0.0));
    l += p;
    // Every visible key's value enters (also with p = 0), so an inf or NaN
    // value on a visible key keeps the row non-finite, as the fast path has it.
    const auto* v = value(j);
    for (index d = 0; d < d_v; ++d) acc[d] += p * static_cast<double>(static_cast<float>(v[d]));
  }
  if (sink_log2 > -dinf) l += std::exp2(std::min(sink_log2 - m, 0.0));  // no value
  if (!(l > 0.0)) return false;
  bool finite = true;
  for (index d = 0; d < d_v; ++d) {
    if (std::isfinite(out[d])) continue;  // this feature did not overflow: kept
    const double x = acc[d] / l;
    if (!std::isfinite(x)) {  // a non-finite value in this feature: kept
      finite = false;
      continue;
    }
    // A convex combination of floats: |x| <= max|v| <= FLT_MAX up to double
    // rounding; the clamp only guards the conversion.
    out[d] = static_cast<float>(std::min(std::max(x, -fmax), fmax));
  }
  if (lse && !std::isfinite(*lse)) {
    const double x = (m + std::log2(l)) * 0.693147180559945309;
    if (std::fabs(x) <= fmax) *lse = static_cast<float>(x);
  }
  return finite;
}

}  // namespace ATTN_ABI
}  // namespace attn::core::softmax
