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
#include "attn/sdpa_options.hpp"
#include "attn/view.hpp"

namespace attn {
inline namespace ATTN_ABI {

/// Attention probabilities softmax(Q Kᵀ · scale + masks) into probs
/// [B, Hq, L, S], and optionally their per-key sums over the queries.
///
/// @param q            [B, L, Hq, d_qk] float, as for
///                     scaled_dot_product_attention.
/// @param k            [B, S, Hkv, d_qk]: float, Eigen::bfloat16 or
///                     Eigen::half. Hkv must divide Hq (GQA; Hkv = 1 is MQA):
///                     query head h reads KV head h / (Hq / Hkv).
/// @param probs        [B, Hq, L, S] float, written (may not alias the
///                     inputs): row (b, h, i) holds the weights query i of
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
///                     num_threads); opt.lse is ignored. Results are
///                     bit-identical for any num_threads.
/// @param column_sums  optional [B, Hq, S] float, written when not empty
///                     (default: empty, not computed): column_sums(b, h, j)
///                     = Σ_i probs(b, h, i, j), the attention key j received
///                     from all L queries of head h (the score H2O-style KV
///                     eviction ranks keys by). Summed in double in query
///                     order, then rounded; NaN where a NaN row reaches it.
/// @throws attn::error on shape, stride or option mismatches (probs must be
///         [B, Hq, L, S], column_sums [B, Hq, S]), before anything is written.
template <class KT>
void attention_weights(strided<const float, 4> q, strided<KT, 4> k, strided<float, 4> probs,
                       const sdpa_options& opt = {}, strided<float, 3> column_sums = {}) {
  using KV = std::remove_const_t<KT>;
  constexpr const char* fn = "attention_weights";
  const index B = q.dims[0], L = q.dims[1], Hq = q.dims[2], D = q.dims[3];
  const index S = k.dims[1], Hkv = k.dims[2];
  detail::require(k.dims[0] == B && k.dims[3] == D, fn, "k", "dims [batch, S, heads_kv, d_qk]",
                  k.dims);
  detail::require(Hkv >= 1 && Hq % Hkv == 0, fn, "k.dims[2] (heads_kv)", "a divisor of heads_q",
                  Hkv);
  const std::array<index, 4> want{B, Hq, L, S};
  detail::require(probs.dims == want, fn, "probs", "dims [batch, heads_q, L, S]", probs.dims);
  // The option checks of scaled_dot_product_attention: this entry reads the
  // same masks and lengths.
  detail::require(!q.empty() || detail::has_zero_extent(q), fn, "q", "a non-null view", "null data");
  detail::require(!k.empty() || detail::has_zero_extent(k), fn, "k", "a non-null view", "null data");
  detail::require(!probs.empty() || detail::has_zero_extent(probs), fn, "probs", "a non-null view",
                  "null data");
  for (int r = 0; r < 4; ++r) {
    detail::require(q.dims[r] >= 0, fn, "q", "non-negative dims", q.dims);
    detail::require(k.dims[r] >= 0, fn, "k", "non-negative dims", k.dims);
  }
  detail::require(D >= 1, fn, "q.dims[3] (d_qk)", ">= 1", D);
  detail::require(q.strides[3] == 1 || D <= 1, fn, "q.strides[3]", "1 (contiguous head dim)",
                  q.strides[3]);
  detail::require(k.strides[3] == 1 || D <= 1, fn, "k.strides[3]", "1 (contiguous head dim)",
                  k.strides[3]);
  if (opt.scale)
    detail::require(std::isfinite(*opt.scale), fn, "scale", "a finite number", *opt.scale);
  if (opt.window) {
    detail::require(opt.window->left >= 0, fn, "window.left", ">= 0", opt.window->left);
    detail::require(opt.window->right >= 0, fn, "window.right", ">= 0", opt.window->right);
  }
  detail::check_key_lengths(fn, opt.key_lengths, B, S);
  detail::check_mask(opt.bool_mask, "bool_mask", B, Hq, L, S, fn);
  detail::check_mask(opt.additive_mask, "additive_mask", B, Hq, L, S, fn);
  detail::require(detail::non_overlapping(probs), fn, "probs.strides",
                  "strides under which no two elements overlap", probs.strides);
  detail::require(opt.num_threads >= 0, fn, "num_threads", ">= 0 (0 = default)", opt.num_threads);
  if (!column_sums.empty()) {
    const std::array<index, 3> sums_dims{B, Hq, S};
    detail::require(column_sums.dims == sums_dims, fn, "column_sums", "dims [batch, heads_q, S]",
                    column_sums.dims);
    detail::require(detail::non_overlapping(column_sums), fn, "column_sums.strides",
                    "strides under which no two elements overlap", column_sums.strides);
  }
  // L = 0 still writes column_sums (zeros: no query gives any weight).
  if (B == 0 || Hq == 0 || S == 0) return;
  const float scale = opt.scale ? *opt.scale : 1.0f / std::sqrt(static_cast<float>(D));
  detail::sdpa::attention_weights<KV>(q, strided<const KV, 4>(k), probs, column_sums, scale, opt);
}

}  // namespace ATTN_ABI
}  // namespace attn
