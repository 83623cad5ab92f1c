// attn/detail/flash_forward.hpp: the tiled forward pass behind
// attn::scaled_dot_product_attention. Arguments arrive validated.
//
// One task = one (batch, query head, tile of q_tile queries). The task packs
// its queries once, transposed and pre-scaled (Qᵀ), then walks the key tiles
// its rows can see (the band from attn/mask.hpp). For each key tile:
//   1.-2. Sᵀ = K · Qᵀ and the masks: the steps of flash_scores
//      (flash_scores.hpp), shared with attention_weights. Scores are kept
//      transposed, [keys][queries], so each query's softmax runs down a
//      column: maxima, exp and sums are plain vector ops across lanes, with
//      no horizontal reductions.
//   3. Column maxima, the online-softmax step, rescaling of O rows whose
//      max moved, P = exp(Sᵀ - max) and column sums. Scores are in log2
//      units (Q is pre-scaled by scale·log2 e), so exp is the cheap
//      exp2_nonpositive.
//   4. O += P · V, reading Pᵀ down its columns and V from a packed copy.
// Each finished row is normalised and checked (O(d_v)): a row whose fp32
// accumulation overflowed (values near FLT_MAX) is recomputed in double,
// recompute_sdpa_row; every other row keeps the fast path's bits.
// Tasks share nothing and each always runs the same operations in the same
// order, so the output is bit-identical for any thread count.
#pragma once

// Internal header (docs/design.md, "What is public"): reached only through a
// public header, which defines ATTN_DETAIL_ALLOWED first.
#ifndef ATTN_DETAIL_ALLOWED
#error "attn/detail/flash_forward.hpp is internal: include <attn/sdpa.hpp>"
#endif

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <vector>

#include "attn/core/abi.hpp"
#include "attn/core/assert.hpp"
#include "attn/core/fp64_row.hpp"
#include "attn/core/math.hpp"
#include "attn/core/microkernel.hpp"
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

/// One thread's working memory; sized once per call, reused by every task.
struct flash_scratch {
  flash_score_buffers tiles;  // Qᵀ, converted keys, scores (flash_scores.hpp)
  index v_ld;                 // row stride of v: core::scratch_stride(d_v_pad)
  std::vector<float> v;       // [kv_tile][v_ld]    converted / padded values
  std::vector<float> o;       // [q_tile][d_v_pad]  unnormalised output rows
  std::vector<float> max;     // [q_tile]           running max per query
  std::vector<float> sum;     // [q_tile]           running sum per query
  std::vector<float> factor;  // [q_tile]        this step's rescale factors
  engine::hidden_values hidden;  // non-finite V entries of keys some rows do not see

  flash_scratch(index d_qk, index d_v_pad)
      : tiles(d_qk),
        v_ld(core::scratch_stride(d_v_pad)),
        v(flash_tiles::kv_tile * v_ld),
        o(flash_tiles::q_tile * d_v_pad),
        max(flash_tiles::q_tile),
        sum(flash_tiles::q_tile),
        factor(flash_tiles::q_tile) {
    hidden.reserve(flash_tiles::kv_tile, d_v_pad);
  }
};

// Output row (b, i, query head h) of the attention recomputed in double
// (core::softmax::recompute_row_fp64) with the kernels' own visibility rules: the
// band (causal, window, key_lengths), a false bool-mask entry and an additive
// -inf hide a key; other additive values are added in log2 units as
// core::softmax::apply_additive_log2 adds them. q_log2 is the row's query as the
// kernels pre-scale it (clamp_finite(q · scale · log2 e)), element d at
// q_log2[d · q_log2_stride]. The non-finite features of dst (d_v contiguous floats)
// and a non-finite *lse (lse may be null) take their recomputed values where
// those are finite; finite ones keep their bits. The policy's modifiers
// (softcap, ALiBi, score_mod, mask_mod, sink) apply as in the fast path.
// Returns whether dst is finite afterwards. Both kernels call this for a
// finished row that came out non-finite.
template <class Rows, class Policy>
bool recompute_sdpa_row(const float* q_log2, index q_log2_stride, const Rows& k, const Rows& v, const sdpa_options& opt,
                        const detail::band_mask& band, const Policy& policy, index b, index i,
                        index h, index hk, float* dst, float* lse) {
  const index d_qk = k.dims[3], d_v = v.dims[3];
  const detail::key_band kb = band.row(i);
  const index first = std::max<index>(kb.first, 0);
  const index n = std::max<index>(kb.last + 1 - first, 0);
  auto key = [&](index jj) -> core::softmax::fp64_key {
    const index j = first + jj;
    if (!opt.bool_mask.empty() && !*opt.bool_mask.at(b, h, i, j)) return {false, 0.0};
    if (!policy.allows(b, h, i, j)) return {false, 0.0};
    float a = 0.0f;
    if (!opt.additive_mask.empty()) {
      a = *opt.additive_mask.at(b, h, i, j);
      if (a == core::softmax::neg_inf) return {false, 0.0};
    }
    const auto* kr = k.at(b, j, hk, 0);
    // Floored where the fast path floors: after the dot and after the
    // additive mask (core::softmax::floor_score_fp64).
    double s = 0.0;
    for (index d = 0; d < d_qk; ++d)
      s += static_cast<double>(q_log2[d * q_log2_stride]) *
           static_cast<double>(static_cast<float>(kr[d]));
    s = core::softmax::floor_score_fp64(s);
    if (policy.modifies() && !std::isnan(s)) s = policy.score_fp64(s, b, h, i, j);
    if (!opt.additive_mask.empty() && s != -std::numeric_limits<double>::infinity())
      s = core::softmax::floor_score_fp64(
          s + static_cast<double>(core::softmax::additive_to_log2(a)));
    return {true, s};
  };
  auto value = [&](index jj) { return v.at(b, first + jj, hk, 0); };
  const double sink = policy.has_sinks() ? static_cast<double>(policy.sink_log2(h))
                                         : -std::numeric_limits<double>::infinity();
  return core::softmax::recompute_row_fp64(n, key, value, d_v, dst, lse, sink);
}

// The engine's walk for one flash task: the score and mask steps of
// flash_scores, then the online softmax and O += P·V.
template <class Rows, class Policy>
struct flash_walk {
  static constexpr index q_tile = flash_tiles::q_tile;
  static constexpr index key_tile = flash_tiles::kv_tile;

  flash_scores<Rows, Policy> s;
  const Rows& v;
  flash_scratch& ws;
  index d_v, d_v_pad;

  bool visible(index j0, index n) { return s.visible(j0, n); }

  // The next tile's K and V start moving towards L2 while this one computes.
  void prefetch(index j0, index n, index j_end) const {
    if (j0 + n >= j_end) return;
    const index n_next = std::min(key_tile, j_end - (j0 + n));
    prefetch_rows(s.k, s.b, s.hk, j0 + n, n_next, s.d_qk);
    prefetch_rows(v, s.b, s.hk, j0 + n, n_next, d_v);
  }

  // 1. Sᵀ = K · Qᵀ.
  void scores(index j0, index n) { s.scores(j0, n); }

  // 2. Masks.
  void mask(index j0, index n) { s.mask(j0, n); }

  // 3. Online softmax down each column.
  void online_softmax(index j0, index n) {
    const index n_pad = detail::round_up(n, core::flash_score_tile::rows);
    const engine::column_state state{ws.max.data(), ws.sum.data(), ws.factor.data()};
    if (s.fuse_builtins)
      engine::softmax_columns(ws.tiles.st.data(), q_tile, n, n_pad, s.cols, state,
                              s.policy.columns_modifier(s.h, s.i0, j0));
    else
      engine::softmax_columns(ws.tiles.st.data(), q_tile, n, n_pad, s.cols, state);
    engine::rescale_rows(ws.o.data(), d_v_pad, d_v_pad, ws.factor.data(), s.rows);
  }

  // 4. O += P · V (P read as the transpose of Sᵀ). V is always copied:
  // every query row block re-reads the tile's V rows, and in place they sit
  // heads·d_v floats apart, typically a multiple of 4 KiB, which maps them
  // all to one L1 set.
  void accumulate(index j0, index n) {
    const float* st = ws.tiles.st.data();
    const core::rhs vt =
        tile_rows_operand(v, s.b, s.hk, j0, n, n, d_v, ws.v_ld, ws.v.data(), false);
    if (s.full)
      ws.hidden.set_apart(ws.v.data(), ws.v_ld, n, n);  // every row sees every key: none
    else
      ws.hidden.set_apart(ws.v.data(), ws.v_ld, 0, n);
    bool whole_tile = s.in_band;  // (the plain kernels' code stays as it was)
    if constexpr (flash_scores<Rows, Policy>::sub_tiles_possible)
      whole_tile = whole_tile && !s.by_sub_tiles;
    if (whole_tile && core::l1_blocked) {
      // Blocks of 48 query rows, V column panel outer: the block's P columns
      // (18 KiB) and one V panel (6 KiB) stay in L1, and V (48 KiB) is read
      // 4 times per key tile instead of once per 6 query rows.
      using shape = core::accumulate_tile;
      constexpr index block = 8 * shape::rows;
      for (index b0 = 0; b0 < s.cols; b0 += block)
        for (index c0 = 0; c0 < d_v_pad; c0 += shape::cols)
          for (index r0 = b0; r0 < std::min(s.cols, b0 + block); r0 += shape::rows)
            core::gemm_tile<shape, true>(core::lhs{st + r0, 1, q_tile},
                                         core::rhs{vt.data + c0, vt.row_stride}, n,
                                         ws.o.data() + r0 * d_v_pad + c0, d_v_pad);
    } else if (whole_tile) {
      core::gemm_block<core::accumulate_tile, true>(core::lhs{st, 1, q_tile}, vt, n, ws.o.data(),
                                                    d_v_pad, s.cols, d_v_pad);
    } else {
      // Edge tile: each block of query rows only runs over the keys its
      // band (and the mask_mod's register tiles) reach; P is exactly 0
      // outside, so the sums are unchanged.
      using shape = core::accumulate_tile;
      for (index r0 = 0; r0 < s.rows; r0 += shape::rows) {
        const index ra = s.i0 + r0, rz = s.i0 + std::min<index>(r0 + shape::rows, s.rows) - 1;
        index lo = std::max<index>(s.band.row(ra).first - j0, 0);
        index hi = std::min<index>(s.band.row(rz).last - j0 + 1, n);
        if constexpr (flash_scores<Rows, Policy>::sub_tiles_possible)
          if (s.by_sub_tiles) s.clip_to_sub_tiles(r0, rz - s.i0, n, lo, hi);
        if (lo >= hi) continue;
        core::gemm_block<shape, true>(core::lhs{st + r0 + lo * q_tile, 1, q_tile},
                                      core::rhs{vt.data + lo * vt.row_stride, vt.row_stride},
                                      hi - lo, ws.o.data() + r0 * d_v_pad, d_v_pad, shape::rows,
                                      d_v_pad);
      }
    }
    ws.hidden.add_back([&](index r, index j) { return s.sees(r, j0 + j); }, st, q_tile, ws.o.data(),
                       d_v_pad, s.rows, d_v);
  }
};

// One flash_forward call as tasks: flash_forward runs them on its own, and
// the batched driver of packed and paged sequences (batched_sequences.hpp)
// runs the tasks of many calls in one parallel loop. The views, options and
// policy are held by reference and must outlive the call object.
template <class Rows, class Policy>
struct flash_call {
  static constexpr index q_tile = flash_tiles::q_tile, kv_tile = flash_tiles::kv_tile;

  const strided<const float, 4>& q;
  const Rows& k;
  const Rows& v;
  const strided<float, 4>& out;
  const sdpa_options& opt;
  const Policy& policy;
  index B, L, Hq, d_qk, S, Hkv, d_v, d_v_pad, group, q_tiles, tasks;
  const sliding_window* window;
  bool has_bool, has_add, fuse_builtins;
  float scale_log2;

  flash_call(const strided<const float, 4>& q_, const Rows& k_, const Rows& v_,
             const strided<float, 4>& out_, float scale, const sdpa_options& opt_,
             const Policy& policy_)
      : q(q_), k(k_), v(v_), out(out_), opt(opt_), policy(policy_) {
    B = q.dims[0], L = q.dims[1], Hq = q.dims[2], d_qk = q.dims[3];
    S = k.dims[1], Hkv = k.dims[2], d_v = v.dims[3];
    // What scaled_dot_product_attention has checked.
    ATTN_ASSERT(Hkv >= 1 && Hq % Hkv == 0 && d_qk >= 1 && std::isfinite(scale));
    ATTN_ASSERT(q.strides[3] == 1);
    ATTN_ASSERT(out.strides[3] == 1 || d_v <= 1);
    ATTN_ASSERT(opt.key_lengths.empty() || static_cast<index>(opt.key_lengths.size()) == B);
    d_v_pad = detail::round_up(d_v, core::accumulate_tile::cols);
    group = Hq / Hkv;
    q_tiles = detail::ceil_div(L, q_tile);
    tasks = B * Hq * q_tiles;
    window = opt.window ? &*opt.window : nullptr;
    has_bool = !opt.bool_mask.empty(), has_add = !opt.additive_mask.empty();
    scale_log2 = scale * core::softmax::log2e;
    fuse_builtins = policy.modifies() && policy.only_builtins() && !has_add;
  }

  /// Floating-point operations of the whole call (the thread-count rule).
  double flops() const { return 2.0 * B * Hq * static_cast<double>(L) * S * (d_qk + d_v); }

  /// A thread's working memory for any task of this call.
  flash_scratch make_scratch() const { return flash_scratch(d_qk, d_v_pad); }

  /// Task t: one (batch entry, query head, query tile).
  void run_task(flash_scratch& ws, index t) const {
    const index qt = t % q_tiles, h = (t / q_tiles) % Hq, b = t / (q_tiles * Hq);
    const index hk = h / group;
    const index i0 = qt * q_tile, rows = std::min(q_tile, L - i0);
    const index cols = detail::round_up(rows, flash_tiles::q_step);  // query columns computed
    const index key_len = opt.key_lengths.empty() ? S : opt.key_lengths[b];
    const detail::band_mask band(L, S, key_len, opt.causal, window);

    // The first key tile starts loading while Q is packed.
    const detail::key_band span = band.rows(i0, i0 + rows);
    index j_begin = std::max<index>(span.first, 0), j_end = span.last + 1;
    policy.narrow_keys(b, h, i0, i0 + rows, kv_tile, j_begin, j_end);
    if (j_begin < j_end) {
      const index n_first = std::min(kv_tile, j_end - j_begin);
      prefetch_rows(k, b, hk, j_begin, n_first, d_qk);
      prefetch_rows(v, b, hk, j_begin, n_first, d_v);
    }
    engine::pack_queries_transposed([&](index r) { return q.at(b, i0 + r, h, 0); }, rows, cols,
                                    d_qk, scale_log2, ws.tiles.qt.data(), flash_tiles::qt_ld);
    std::fill(ws.o.begin(), ws.o.begin() + cols * d_v_pad, 0.0f);
    std::fill(ws.max.begin(), ws.max.end(), core::softmax::neg_inf);
    std::fill(ws.sum.begin(), ws.sum.end(), 0.0f);

    flash_walk<Rows, Policy> walk{
        {k, opt, band, policy, ws.tiles, b, h, hk, i0, rows, cols, d_qk, has_bool, has_add,
         fuse_builtins},
        v, ws, d_v, d_v_pad};
    engine::run_chunk(walk, j_begin, j_end);

    for (index r = 0; r < rows; ++r) {
      float* dst = out.at(b, i0 + r, h, 0);
      const bool saw_nothing = ws.max[r] == core::softmax::neg_inf && ws.sum[r] == 0.0f;
      const float o_factor =
          policy.has_sinks() ? core::softmax::fold_sink(ws.max[r], ws.sum[r], policy.sink_log2(h))
                             : 1.0f;
      core::softmax::row_result res = engine::finish_row(
          ws.max[r], ws.sum[r], ws.o.data() + r * d_v_pad, d_v, dst, o_factor);
      if (saw_nothing && policy.has_sinks()) res.lse = policy.sink(h);  // exactly, not via log2
      float* lse = opt.lse.empty() ? nullptr : opt.lse.at(b, h, i0 + r);
      if (lse) *lse = res.lse;
      // The unnormalised O overflows fp32 when the visible |v| sum past
      // FLT_MAX (then inf, or NaN once a later key rescales it), and
      // overflowing scores can leave a NaN LSE beside a finite O: such a
      // row, and only such a row, is redone in double (recompute_sdpa_row).
      if (core::softmax::needs_fp64_repair(dst, d_v, res.lse))
        recompute_sdpa_row(ws.tiles.qt.data() + r, flash_tiles::qt_ld, k, v, opt, band, policy, b,
                           i0 + r, h, hk, dst, lse);
    }
  }
};

template <class Rows, class Policy>
void flash_forward(const strided<const float, 4>& q, const Rows& k, const Rows& v,
                   const strided<float, 4>& out, float scale, const sdpa_options& opt,
                   const Policy& policy) {
  const flash_call<Rows, Policy> call(q, k, v, out, scale, opt, policy);
  core::parallel_for(
      call.tasks, core::threads_for_work(opt.num_threads, call.flops()),
      [&] { return call.make_scratch(); },
      [&](flash_scratch& ws, index t) { call.run_task(ws, t); });
}

}  // namespace ATTN_ABI
}  // namespace attn::detail::sdpa
