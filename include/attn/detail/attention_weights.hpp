// attn/detail/attention_weights.hpp: the kernel behind attn::attention_weights,
// the probabilities softmax(Q Kᵀ · scale + masks) written out. Arguments
// arrive validated.
//
// One task = one (batch, query head, tile of q_tile queries), as in the flash
// forward pass, and with its score and mask steps (flash_scores.hpp):
//   pass 1  the engine's chunk worker over the band with no value step: each
//           row's running max m (clamped to FLT_MAX) and sum l, the state the
//           forward pass normalises its output with;
//   pass 2  the same score tiles again, written out as 2^(s - m) / l.
// Normalising by (m, l) rather than by the LSE keeps the forward pass's
// saturation rule: a row whose max is FLT_MAX (a +inf additive entry, an
// overflowed score) has LSE m + log2 l = m, which would give every such key
// weight 1; 2^(s - m) / l gives the k saturated keys 1/k each, as SDPA's
// output weighs them. The policy follows from the shared steps: a row that
// met a NaN score (NaN in q, in a key it sees, or a NaN mask entry on a key it
// sees) has l = NaN and comes out all NaN; a row that sees no key has l = 0
// and comes out all 0.
// Column sums (Σ over queries) are a pass over the written probabilities, one
// task per (batch, head, key block), summing rows in order, so they too are
// bit-identical for any thread count.
#pragma once

// Internal header (docs/design.md, "What is public"): reached only through a
// public header, which defines ATTN_DETAIL_ALLOWED first.
#ifndef ATTN_DETAIL_ALLOWED
#error "attn/detail/attention_weights.hpp is internal: include <attn/attention_weights.hpp>"
#endif

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "attn/core/abi.hpp"
#include "attn/core/math.hpp"
#include "attn/core/parallel.hpp"
#include "attn/core/simd.hpp"
#include "attn/core/softmax.hpp"
#include "attn/detail/attention_engine.hpp"
#include "attn/detail/flash_scores.hpp"
#include "attn/mask.hpp"
#include "attn/sdpa_options.hpp"
#include "attn/view.hpp"

namespace attn::detail::sdpa {
inline namespace ATTN_ABI {

/// One thread's working memory for attention_weights.
struct weights_scratch {
  flash_score_buffers tiles;  // Qᵀ, converted keys, scores
  std::vector<float> max;     // [q_tile] running max per query (pass 1)
  std::vector<float> sum;     // [q_tile] running sum per query (pass 1)
  std::vector<float> factor;  // [q_tile] pass 1's rescale factors (unused: no O)
  std::vector<float> pivot;   // [q_tile] subtracted before exp2 in pass 2
  std::vector<float> inv_sum; // [q_tile] 1 / l, 0 for an empty row, NaN for a NaN row

  explicit weights_scratch(index d_qk)
      : tiles(d_qk),
        max(flash_tiles::q_tile),
        sum(flash_tiles::q_tile),
        factor(flash_tiles::q_tile),
        pivot(flash_tiles::q_tile),
        inv_sum(flash_tiles::q_tile) {}
};

// Pass 1 as an engine walk: flash_scores' steps and the column softmax,
// with no values to accumulate.
template <class KV, class Policy>
struct row_normaliser_walk {
  static constexpr index q_tile = flash_tiles::q_tile;
  static constexpr index key_tile = flash_tiles::kv_tile;

  flash_scores<strided<const KV, 4>, Policy>& s;
  weights_scratch& ws;

  bool visible(index j0, index n) { return s.visible(j0, n); }
  void prefetch(index j0, index n, index j_end) const {
    if (j0 + n < j_end)
      prefetch_rows(s.k, s.b, s.hk, j0 + n, std::min(key_tile, j_end - (j0 + n)), s.d_qk);
  }
  void scores(index j0, index n) { s.scores(j0, n); }
  void mask(index j0, index n) { s.mask(j0, n); }
  void online_softmax(index, index n) {
    engine::softmax_columns(ws.tiles.st.data(), q_tile, n,
                            detail::round_up(n, core::flash_score_tile::rows), s.cols,
                            {ws.max.data(), ws.sum.data(), ws.factor.data()});
  }
  void accumulate(index, index) {}
};

// Columns [0, cols) of the score tile st (n keys, row stride q_tile) become
// probabilities 2^(s - pivot) · inv_sum per column.
inline void normalise_columns(float* st, index ld, index n, index cols, const float* pivot,
                              const float* inv_sum) {
  using namespace core::simd;
  for (index c0 = 0; c0 < cols; c0 += width) {
    const packet pv = load(pivot + c0), inv = load(inv_sum + c0);
    for (index j = 0; j < n; ++j) {
      float* s = st + j * ld + c0;
      store(s, mul(exp2_nonpositive(sub(load(s), pv)), inv));
    }
  }
}

/// probs [B, Hq, L, S] for q [B, L, Hq, d_qk] and k [B, S, Hkv, d_qk];
/// column_sums [B, Hq, S] (Σ_i probs) when not empty.
template <class KV>
void attention_weights(const strided<const float, 4>& q, const strided<const KV, 4>& k,
                       const strided<float, 4>& probs, const strided<float, 3>& column_sums,
                       float scale, const sdpa_options& opt) {
  constexpr index q_tile = flash_tiles::q_tile, kv_tile = flash_tiles::kv_tile;
  constexpr float nan = std::numeric_limits<float>::quiet_NaN();
  const index B = q.dims[0], L = q.dims[1], Hq = q.dims[2], d_qk = q.dims[3];
  const index S = k.dims[1], Hkv = k.dims[2];
  const index group = Hq / Hkv;
  const index q_tiles = detail::ceil_div(L, q_tile);
  const sliding_window* window = opt.window ? &*opt.window : nullptr;
  const bool has_bool = !opt.bool_mask.empty(), has_add = !opt.additive_mask.empty();
  // This entry accepts any finite scale: one whose log2 units overflow
  // saturates (as an overflowed score does) instead of making inf · 0 = NaN.
  const float scale_log2 = core::softmax::clamp_finite(scale * core::softmax::log2e);
  const index ps = probs.strides[3];
  const engine::score_policy<> policy(opt, L, S);

  auto run_task = [&](weights_scratch& ws, index t) {
    const index qt = t % q_tiles, h = (t / q_tiles) % Hq, b = t / (q_tiles * Hq);
    const index hk = h / group;
    const index i0 = qt * q_tile, rows = std::min(q_tile, L - i0);
    const index cols = detail::round_up(rows, flash_tiles::q_step);
    const index key_len = opt.key_lengths.empty() ? S : opt.key_lengths[b];
    const detail::band_mask band(L, S, key_len, opt.causal, window);
    const detail::key_band span = band.rows(i0, i0 + rows);
    const index j_begin = std::clamp<index>(span.first, 0, S);
    const index j_end = std::max(j_begin, std::min(span.last + 1, S));

    engine::pack_queries_transposed([&](index r) { return q.at(b, i0 + r, h, 0); }, rows, cols,
                                    d_qk, scale_log2, ws.tiles.qt.data(), flash_tiles::qt_ld);
    std::fill(ws.max.begin(), ws.max.end(), core::softmax::neg_inf);
    std::fill(ws.sum.begin(), ws.sum.end(), 0.0f);
    flash_scores<strided<const KV, 4>, engine::score_policy<>> s{k,    opt,  band, policy,   ws.tiles,
                                               b,    h,    hk,   i0,       rows,
                                               cols, d_qk, has_bool, has_add};

    row_normaliser_walk<KV, engine::score_policy<>> normaliser{s, ws};
    engine::run_chunk(normaliser, j_begin, j_end);

    // Keys no tile computes hold the row's "nothing seen" value: 0, or NaN
    // for a NaN row (finish_row_log2 returns NaN for both of its fields).
    for (index r = 0; r < cols; ++r) {
      // A sink joins each row's (m, l); its weight is not written.
      if (r < rows && policy.has_sinks())
        core::softmax::fold_sink(ws.max[r], ws.sum[r], policy.sink_log2(h));
      const core::softmax::row_result res =
          r < rows ? core::softmax::finish_row_log2(ws.max[r], ws.sum[r])
                   : core::softmax::row_result{0.0f, core::softmax::neg_inf};
      ws.inv_sum[r] = res.inv_sum;
      ws.pivot[r] = ws.max[r] == core::softmax::neg_inf ? 0.0f : ws.max[r];
    }
    auto fill = [&](index r, index j0, index j1) {
      float* dst = probs.at(b, h, i0 + r, 0);
      const float x = std::isnan(ws.inv_sum[r]) ? nan : 0.0f;
      for (index j = j0; j < j1; ++j) dst[j * ps] = x;
    };
    for (index r = 0; r < rows; ++r) {
      fill(r, 0, j_begin);
      fill(r, j_end, S);
    }

    float* st = ws.tiles.st.data();
    for (index j0 = j_begin; j0 < j_end; j0 += kv_tile) {
      const index n = std::min(kv_tile, j_end - j0);
      if (!s.visible(j0, n)) {
        for (index r = 0; r < rows; ++r) fill(r, j0, j0 + n);
        continue;
      }
      s.scores(j0, n);
      s.mask(j0, n);
      normalise_columns(st, q_tile, n, cols, ws.pivot.data(), ws.inv_sum.data());
      // Sᵀ back to rows: each output row is written along its keys.
      for (index r = 0; r < rows; ++r) {
        float* dst = probs.at(b, h, i0 + r, j0);
        for (index j = 0; j < n; ++j) dst[j * ps] = st[j * q_tile + r];
      }
    }
  };

  const double flops = 4.0 * B * Hq * static_cast<double>(L) * S * d_qk;  // two score passes
  if (L > 0)
    core::parallel_for(
        B * Hq * q_tiles, core::threads_for_work(opt.num_threads, flops),
        [&] { return weights_scratch(d_qk); }, run_task);

  if (column_sums.empty()) return;
  // Σ_i probs[b, h, i, j] in double, rows in order: one task per (b, h,
  // block of keys), so no sum is ever split between threads.
  constexpr index key_block = 256;
  const index blocks = detail::ceil_div(S, key_block);
  core::parallel_for(
      B * Hq * blocks, core::threads_for_work(opt.num_threads, double(B) * Hq * L * S),
      [] { return std::vector<double>(key_block); },
      [&](std::vector<double>& acc, index t) {
        const index kb = t % blocks, h = (t / blocks) % Hq, b = t / (blocks * Hq);
        const index j0 = kb * key_block, n = std::min(key_block, S - j0);
        std::fill(acc.begin(), acc.begin() + n, 0.0);
        for (index i = 0; i < L; ++i) {
          const float* row = probs.at(b, h, i, j0);
          for (index j = 0; j < n; ++j) acc[j] += static_cast<double>(row[j * ps]);
        }
        float* dst = column_sums.at(b, h, j0);
        for (index j = 0; j < n; ++j) dst[j * column_sums.strides[2]] = static_cast<float>(acc[j]);
      });
}

}  // namespace ATTN_ABI
}  // namespace attn::detail::sdpa
