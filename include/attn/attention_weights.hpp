// attn/attention_weights.hpp: the attention probabilities themselves,
// softmax(Q Kᵀ · scale + masks), materialised on request.
//
// The fast kernels never form this L x S matrix; this is for callers who ask
// for it (nn.MultiheadAttention's need_weights, plots, H2O-style KV eviction
// through the per-key column sums). It runs the flash forward pass's own
// score and mask steps (detail/attention_weights.hpp), so the weights are the
// probabilities scaled_dot_product_attention applies, with its masks,
// conventions and NaN / inf policy. Cost: two score passes, about
// 4 · B · Hq · L · S · d_qk flops on the flash kernel's tiles, plus one read
// of the output for the column sums; memory the outputs plus the flash
// kernel's per-thread tiles.
#pragma once

#include <array>
#include <cmath>
#include <type_traits>

#include "attn/core/abi.hpp"
#define ATTN_DETAIL_ALLOWED  // lets the detail headers in (docs/design.md)
#include "attn/detail/attention_weights.hpp"
#include "attn/error.hpp"
#include "attn/mask.hpp"
#include "attn/sdpa_checks.hpp"
#include "attn/sdpa_options.hpp"
#include "attn/view.hpp"

namespace attn {

/// The options of attention_weights: those of scaled_dot_product_attention
/// (opt.lse is ignored) and the one extra output it can write.
struct attention_weights_options : sdpa_options {
  /// Optional [B, Hq, S] float, written when not empty (default: empty, not
  /// computed): column_sums(b, h, j) = Σ_i probs(b, h, i, j), the attention
  /// key j received from all L queries of head h (the score H2O-style KV
  /// eviction ranks keys by). Summed in double in query order, then rounded;
  /// NaN where a NaN row reaches it; 0 when L = 0.
  strided<float, 3> column_sums;
};

inline namespace ATTN_ABI {

/// Attention probabilities softmax(Q Kᵀ · scale + masks) into probs
/// [B, Hq, L, S], and optionally their per-key sums over the queries.
///
/// @param q            [B, L, Hq, d_qk] float, as for
///                     scaled_dot_product_attention.
/// @param k            [B, S, Hkv, d_qk]: float, Eigen::bfloat16 or
///                     Eigen::half. Hkv must divide Hq (GQA; Hkv = 1 is MQA):
///                     query head h reads KV head h / (Hq / Hkv).
/// @param probs        [B, Hq, L, S] float, written (shares no memory with
///                     the inputs or column_sums, attn/overlap.hpp): row (b, h, i) holds the weights query i of
///                     head h gives each key, the probabilities SDPA applies
///                     to V, equal to them up to fp32 rounding:
///                     - a row that sees no key is all 0;
///                     - a row whose visible keys include k > 0 with an
///                       additive +inf (or scores that overflow fp32) gives
///                       each of those 1/k and every other key 0;
///                     - a row that reads a NaN (in its q, in the k row of a
///                       key it sees, or an additive NaN on a key it sees) is
///                       all NaN.
/// @param opt          the options of scaled_dot_product_attention (scale,
///                     causal, window, key_lengths, bool_mask, additive_mask,
///                     softcap, alibi_slopes, sinks, num_threads; opt.lse is
///                     ignored; with sinks a row's weights sum to less than 1,
///                     the sink's share being left out) and the optional
///                     opt.column_sums output. Results are bit-identical for
///                     any num_threads.
/// @throws attn::error on shape, stride or option mismatches (probs must be
///         [B, Hq, L, S], column_sums [B, Hq, S]), before anything is written.
template <class KT>
void attention_weights(strided<const float, 4> q, strided<KT, 4> k, strided<float, 4> probs,
                       const attention_weights_options& opt = {}) {
  const strided<float, 3>& column_sums = opt.column_sums;
  using KV = std::remove_const_t<KT>;
  constexpr const char* fn = "attention_weights";
  detail::check_query_key(fn, q, k);
  const index B = q.dims[0], L = q.dims[1], Hq = q.dims[2], D = q.dims[3];
  const index S = k.dims[1];
  detail::check_non_null(fn, "probs", probs);
  const std::array<index, 4> want{B, Hq, L, S};
  detail::require(
      probs.dims == want, fn, "probs",
      [&] { return detail::dims_note(want, "[batch, heads_q, L, S]"); }, probs.dims);
  detail::check_span(fn, "probs", probs);
  // This entry reads the masks and lengths of scaled_dot_product_attention,
  // under the same rules.
  const float scale = detail::check_sdpa_options(fn, "", opt, B, Hq, L, S, D);
  detail::check_non_overlapping(fn, "probs.strides", probs);
  if (!column_sums.empty()) {
    const std::array<index, 3> sums_dims{B, Hq, S};
    detail::require(column_sums.dims == sums_dims, fn, "column_sums", "dims [batch, heads_q, S]",
                    column_sums.dims);
    detail::check_span(fn, "column_sums", column_sums);
    detail::check_non_overlapping(fn, "column_sums.strides", column_sums);
  }
  detail::check_sdpa_disjoint(fn, "", q, k, strided<const KV, 4>{},
                              detail::region("probs", probs),
                              detail::region("column_sums", column_sums), opt);
  // L = 0 still writes column_sums (zeros: no query gives any weight).
  if (B == 0 || Hq == 0 || S == 0) return;
  detail::sdpa::attention_weights<KV>(q, strided<const KV, 4>(k), probs, column_sums, scale, opt);
}

/// attention_weights with the options of scaled_dot_product_attention, as
/// they are (no column sums).
template <class KT>
void attention_weights(strided<const float, 4> q, strided<KT, 4> k, strided<float, 4> probs,
                       const sdpa_options& opt) {
  attention_weights(q, k, probs, attention_weights_options{opt, {}});
}

}  // namespace ATTN_ABI
}  // namespace attn
