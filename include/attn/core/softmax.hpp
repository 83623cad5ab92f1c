// attn/core/softmax.hpp: the online softmax in log2 units and the
// log-sum-exp merge.
//
// A softmax over keys processed block by block keeps, per query row, the
// running maximum m and the running sum l = sum_j 2^(s_j - m), with scores
// s in log2 units (scale·log2(e)·q·k, so the exponentials are the cheap
// exp2). When a new block raises the maximum to m', everything accumulated
// so far is rescaled by 2^(m - m'). A finished partial result is (o = sum_j
// p_j v_j / l, lse = (m + log2 l)·ln 2, natural log as the API reports it);
// two partial results over disjoint key sets merge exactly by their LSEs.
// Split-KV decoding, thread reductions and distributed callers all merge
// through merge_partial(). The natural-log variant, for scores not in log2
// units, is core/softmax_natural.hpp.
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>

#include "attn/core/abi.hpp"
#include "attn/core/index.hpp"
#include "attn/core/math.hpp"
#include "attn/core/units.hpp"

/// Softmax building blocks shared by the kernels: the online (streaming)
/// softmax steps, the row results and the log-sum-exp merge of partials.
/// Internal, not part of the API (see attn/attn.hpp).
namespace attn::core::softmax {
inline namespace ATTN_ABI {

/// -inf: the score of a masked key, the LSE of a row that sees no key.
constexpr float neg_inf = -std::numeric_limits<float>::infinity();

// The kernels keep scores in log2 units: scale·log2(e)·q·k, so that the
// softmax's exponentials are the cheap simd::exp2_nonpositive. These convert.
using core::log2e;  ///< log2(e) (core/units.hpp)
using core::ln2;    ///< ln(2) (core/units.hpp)

/// An additive mask value in log2 units: -inf stays -inf (masked); finite
/// values saturate at +-FLT_MAX instead of overflowing to a mask (-FLT_MAX,
/// a common "masked" value in the wild, still weighs 2^-FLT_MAX = 0).
inline float additive_to_log2(float a) {
  const float big = std::numeric_limits<float>::max();
  const float x = a * log2e;
  if (a == neg_inf) return neg_inf;
  return x > big ? big : (x < -big ? -big : x);
}

/// Largest finite float: row maxima are clamped to it, so a score that
/// overflowed to +inf gives weight 1 (2^min(inf - max, 0)) instead of NaN.
constexpr float max_finite = std::numeric_limits<float>::max();

/// x clamped to [-max_finite, max_finite]; NaN stays NaN (std::max and
/// std::min return their first argument when a comparison is false).
/// Branch-free: it runs once per packed query element.
inline float clamp_finite(float x) { return std::min(std::max(x, -max_finite), max_finite); }

/// A computed score (log2 units) floored at -max_finite. To the softmax -inf
/// means "masked", but finite inputs can sum to -inf (d terms of -1e38): such
/// a key is visible and must stay so. Floored, it weighs 2^(-FLT_MAX - max)
/// = 0 next to any ordinary key, and a row whose every score overflowed
/// averages its values, as equal scores do. NaN stays NaN (std::max returns
/// its first argument when the comparison is false). Applied to every score
/// as it is computed, before the masks write their -inf.
inline float floor_score(float s) { return std::max(s, -max_finite); }

/// floor_score for a packet of scores (Eigen's pmax keeps a NaN first
/// argument, as std::max does); as a gemm_tile epilogue it costs one max per
/// accumulator register.
struct score_floor {
  /// s with every lane floored at -max_finite (NaN lanes kept).
  static simd::packet apply(const simd::packet& s) {
    return simd::max(s, simd::broadcast(-max_finite));
  }
};

/// A score (log2 units) with an additive mask value applied: -inf in the
/// mask masks whatever the score is (even a NaN or an overflowed +inf, so
/// the hidden key cannot turn the row NaN), and a score already masked (by a
/// bool mask or the band) stays masked whatever the mask holds. A sum that
/// overflows to -inf (both near -FLT_MAX) is floored: the key stays visible.
inline float apply_additive_log2(float score, float a) {
  if (a == neg_inf || score == neg_inf) return neg_inf;
  return floor_score(score + additive_to_log2(a));
}

/// Result of one finished row in log2 units (running max m, sum l): the
/// output scale 1/l and the natural-log LSE; an empty row (l = 0) gives
/// scale 0 (output 0) and LSE -inf.
struct row_result {
  float inv_sum;  ///< 1 / l, or 0 for an empty row
  float lse;      ///< natural-log log-sum-exp, or -inf for an empty row
};
/// The row_result of a row whose running max (log2 units) is m and whose
/// sum of 2^(s - m) is l.
/// A NaN sum (the row met a NaN score) gives NaN for both: the row's output
/// is NaN, never mistaken for an empty row's 0.
inline row_result finish_row_log2(float m, float l) {
  if (std::isnan(l)) return {l, l};
  if (!(l > 0.0f)) return {0.0f, neg_inf};
  return {1.0f / l, (m + std::log2(l)) * ln2};
}

/// Adds a sink to a row's softmax state (running max m, sum l = Σ 2^(s - m),
/// log2 units): a key of score sink_log2 and no value (GPT-OSS's sinks).
/// On return (m, l) count the sink too; the row's unnormalised output must
/// be multiplied by the returned factor 2^(m_old - m_new) (0 for a row that
/// had seen nothing: its output stays 0, and its LSE becomes the sink's).
/// A NaN row stays NaN (l stays NaN). A partial that is already normalised
/// with natural-log LSE x enters as m = x · log2 e, l = 1 (l = 0 when x is
/// -inf).
inline float fold_sink(float& m, float& l, float sink_log2) {
  if (std::isnan(l)) return 1.0f;
  const float m_new = m > sink_log2 ? m : sink_log2;
  const float factor = m == neg_inf ? 0.0f : simd::exp2_nonpositive_scalar(m - m_new);
  l = l * factor + simd::exp2_nonpositive_scalar(sink_log2 - m_new);
  m = m_new;
  return factor;
}

/// One online-softmax step for simd::width rows at once (one row per lane),
/// as the flash kernel needs it, with scores in log2 units (pre-multiplied
/// by log2 e, so exp2_nonpositive serves): the rows' running maxima and this
/// block's maxima give the new maxima, the factor that rescales what was
/// accumulated before (exactly 1 where the max did not move, 0 where nothing
/// was seen yet) and the pivot to subtract before exp2 (0 while a row has
/// seen only -inf, so 2^(-inf - pivot) = 0, never NaN). Maxima are clamped
/// to max_finite (see there).
struct packet_step {
  simd::packet max;     ///< the new running maxima
  simd::packet factor;  ///< 2^(old max - pivot): rescales what was accumulated
  simd::packet pivot;   ///< subtracted from this block's scores before exp2
};

/// The packet_step for rows with maxima `running_max` so far and
/// `block_max` in the new block (log2 units).
inline packet_step online_step(const simd::packet& running_max, const simd::packet& block_max) {
  using namespace simd;
  const packet m = simd::min(simd::max(running_max, block_max), broadcast(max_finite));
  const packet pivot = select(equal(m, broadcast(neg_inf)), zero(), m);
  return {m, simd::exp2_nonpositive(sub(running_max, pivot)), pivot};
}

/// Merges partial result b into a, over disjoint key sets: on return
/// (o_a, lse_a) is the result over both. o_* are normalised outputs of d
/// values. A side with LSE -inf contributes nothing: if b is empty, a is
/// left as it is; if only a is empty, a becomes b. (An empty partial's
/// output is 0 when it comes from the kernels, so two empty ones give 0.)
/// Finite outputs merge to finite ones: the result is a convex combination,
/// at most max(|o_a|, |o_b|) <= FLT_MAX, but the rounded weights may add up
/// to a little over 1, which could round a sum near FLT_MAX up to inf; such
/// a sum is clamped to ±FLT_MAX (an error below one ulp). Non-finite outputs
/// propagate as before.
inline void merge_partial(float* o_a, float& lse_a, const float* o_b, float lse_b, index d) {
  if (lse_b == neg_inf) return;
  if (lse_a == neg_inf) {
    for (index i = 0; i < d; ++i) o_a[i] = o_b[i];
    lse_a = lse_b;
    return;
  }
  const float m = lse_a > lse_b ? lse_a : lse_b;
  const float wa = simd::exp_scalar(lse_a - m), wb = simd::exp_scalar(lse_b - m);
  const float total = wa + wb;  // in [1, 2]
  const float ca = wa / total, cb = wb / total;
  for (index i = 0; i < d; ++i) {
    const float x = ca * o_a[i] + cb * o_b[i];
    // (|x| == inf with finite operands: the overflow described above)
    o_a[i] = std::fabs(x) == std::numeric_limits<float>::infinity() && std::isfinite(o_a[i]) &&
                     std::isfinite(o_b[i])
                 ? std::copysign(max_finite, x)
                 : x;
  }
  lse_a = m + std::log(total);
}

}  // namespace ATTN_ABI
}  // namespace attn::core::softmax
