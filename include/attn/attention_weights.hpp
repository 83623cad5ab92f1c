// attn/attention_weights.hpp: the attention probabilities themselves,
// softmax(Q Kᵀ · scale + masks), materialised on request.
//
// The fast kernels never form this L x S matrix; this is for callers who ask
// for it (nn.MultiheadAttention's need_weights, plots). It applies exactly
// the masks and conventions of scaled_dot_product_attention: a fully masked
// row is all zeros. Cost O(B · Hq · L · S · d_qk), memory the output only.
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <vector>

#include "attn/core/abi.hpp"
#include "attn/core/parallel.hpp"
#include "attn/error.hpp"
#include "attn/mask.hpp"
#include "attn/sdpa_checks.hpp"
#include "attn/sdpa_options.hpp"
#include "attn/view.hpp"

namespace attn {
inline namespace ATTN_ABI {

/// Attention probabilities into probs [B, Hq, L, S] (float).
///
/// @param q      as for scaled_dot_product_attention: [B, L, Hq, d_qk] float.
/// @param k      [B, S, Hkv, d_qk]: float, Eigen::bfloat16 or Eigen::half.
/// @param probs  [B, Hq, L, S] float, written: softmax over each row's keys;
///               a row that sees no key is all zeros.
/// @param opt    the same options (scale, causal, window, key_lengths,
///              masks, threads); opt.lse is ignored.
/// @throws attn::error as scaled_dot_product_attention does for q, k and the
///         options, and when probs is null, not [B, Hq, L, S] or overlaps
///         itself.
template <class KT>
void attention_weights(strided<const float, 4> q, strided<KT, 4> k, strided<float, 4> probs,
                       const sdpa_options& opt = {}) {
  constexpr const char* fn = "attention_weights";
  detail::check_query_key(fn, q, k);
  const index B = q.dims[0], L = q.dims[1], Hq = q.dims[2], D = q.dims[3];
  const index S = k.dims[1], Hkv = k.dims[2];
  detail::check_non_null(fn, "probs", probs);
  const std::array<index, 4> want{B, Hq, L, S};
  detail::require(
      probs.dims == want, fn, "probs",
      [&] { return detail::dims_note(want, "[batch, heads_q, L, S]"); }, probs.dims);
  // This entry reads the masks and lengths of scaled_dot_product_attention,
  // under the same rules.
  const float scale = detail::check_sdpa_options(fn, "", opt, B, Hq, L, S, D);
  detail::check_non_overlapping(fn, "probs.strides", probs);
  if (B == 0 || L == 0 || S == 0) return;
  const sliding_window* window = opt.window ? &*opt.window : nullptr;
  const index group = Hq / Hkv;

  core::parallel_for(B * Hq * L, opt.num_threads, [&](index t) {
    const index i = t % L, h = (t / L) % Hq, b = t / (L * Hq);
    const index key_len = opt.key_lengths.empty() ? S : opt.key_lengths[b];
    const detail::key_band band = detail::band_mask(L, S, key_len, opt.causal, window).row(i);
    const float* qi = q.at(b, i, h, 0);
    float* row = probs.at(b, h, i, 0);
    const index ps = probs.strides[3];
    // Scores in double: this path is for inspection, not speed.
    std::vector<double> s(static_cast<std::size_t>(S));
    double m = -std::numeric_limits<double>::infinity();
    for (index j = 0; j < S; ++j) {
      bool visible = j >= band.first && j <= band.last;
      if (visible && !opt.bool_mask.empty()) visible = *opt.bool_mask.at(b, h, i, j);
      double x = -std::numeric_limits<double>::infinity();
      if (visible) {
        const auto* kj = k.at(b, j, h / group, 0);
        double dot = 0;
        for (index d = 0; d < D; ++d) dot += double(qi[d]) * double(static_cast<float>(kj[d]));
        x = dot * scale;
        if (!opt.additive_mask.empty()) x += *opt.additive_mask.at(b, h, i, j);
      }
      s[static_cast<std::size_t>(j)] = x;
      m = std::max(m, x);
    }
    double sum = 0;
    for (double& x : s) {
      x = std::isinf(m) && m < 0 ? 0.0 : std::exp(x - m);
      sum += x;
    }
    for (index j = 0; j < S; ++j)
      row[j * ps] = sum > 0 ? static_cast<float>(s[static_cast<std::size_t>(j)] / sum) : 0.0f;
  });
}

}  // namespace ATTN_ABI
}  // namespace attn
