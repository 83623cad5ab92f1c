// attn/detail/attention_engine.hpp: the one attention engine under the flash,
// split-KV and latent kernels (docs/design.md, "Engine"). Arguments arrive
// validated.
//
// The engine is a chunk worker: for one block of query rows and one key range
// [j_begin, j_end) it walks the key tiles and, for each tile,
//   1. scores   S = Q·Kᵀ for the tile (log2 units: Q was packed pre-scaled
//               by scale·log2 e, scaled_query),
//   2. masks    -inf where a row does not see a key (the walk's mask policy:
//               the band and dense masks of SDPA, the causal limits of MLA),
//   3. softmax  one online-softmax step: block maxima, rescale of what was
//               accumulated, P = 2^(S - max), sums,
//   4. values   O += P·V, the non-finite V rows of keys that some rows do not
//               see set apart (hidden_values), since 0·inf = NaN would reach
//               rows that never attend to them,
// and leaves its rows unnormalised with their running max and sum, which the
// walk either finishes into output rows (finish_row) or keeps as a partial
// (normalised output and LSE) that core::softmax::merge_partial merges in a fixed
// order. A kernel is a walk order over (query block, key range) pairs plus a
// walk type that says how each of the four steps is done for its layout:
//
//   flash_forward      one task per (batch, head, query tile), the whole band;
//                      scores transposed [keys][queries] (column layout)
//   latent_attention   all heads of a sequence share each cache tile (K and V
//                      alias the same rows); key chunks merged by LSE
//   split_kv_decode    few rows, long caches: row layout [rows][keys], key
//                      chunks over all heads merged by LSE
//
// The column layout's softmax and value steps are written once below
// (softmax_columns, hidden_values); the row layout has softmax_row. A walk
// supplies its steps as member functions (scores, mask, online_softmax,
// accumulate); what happens to a score between its product and the softmax
// (softcap, ALiBi, a user score_mod, the mask_mod) is one compile-time
// policy type every walk takes, engine::score_policy (score_policy.hpp).
#pragma once

// Internal header (docs/design.md, "What is public"): reached only through a
// public header, which defines ATTN_DETAIL_ALLOWED first.
#ifndef ATTN_DETAIL_ALLOWED
#error "attn/detail/attention_engine.hpp is internal: include <attn/sdpa.hpp>"
#endif

#include <algorithm>
#include <cmath>
#include <vector>

#include "attn/core/abi.hpp"
#include "attn/core/assert.hpp"
#include "attn/core/fp64_row.hpp"
#include "attn/core/inline.hpp"
#include "attn/core/math.hpp"
#include "attn/core/simd.hpp"
#include "attn/core/softmax.hpp"

namespace attn::detail::engine {
inline namespace ATTN_ABI {

// ---------------------------------------------------------------------------
// Queries

/// A query element as every kernel packs it: pre-scaled by scale·log2 e, so
/// scores come out in log2 units and the softmax can use exp2, and clamped:
/// |q| near FLT_MAX would overflow to inf and score inf · 0 = NaN against a
/// zero key (the exact score is finite).
inline float scaled_query(float x, float scale_log2) {
  return core::softmax::clamp_finite(x * scale_log2);
}

/// Qᵀ of `rows` query rows into qt[d][ld] (column r = row r, row(r) its d_qk
/// contiguous floats); columns rows..cols are zero (padding whose results
/// are dropped).
template <class RowPointer>
void pack_queries_transposed(RowPointer row, index rows, index cols, index d_qk, float scale_log2,
                             float* qt, index ld) {
  ATTN_ASSERT(0 <= rows && rows <= cols && cols <= ld);
  ATTN_ASSERT(d_qk >= 1 && std::isfinite(scale_log2));
  for (index r = 0; r < cols; ++r) {
    const float* src = r < rows ? row(r) : nullptr;
    for (index d = 0; d < d_qk; ++d) qt[d * ld + r] = src ? scaled_query(src[d], scale_log2) : 0.0f;
  }
}

/// One query row, packed for the row layout: dst[d] = scaled_query(src[d]).
inline void pack_query_row(const float* src, index d_qk, float scale_log2, float* dst) {
  ATTN_ASSERT(d_qk >= 1 && std::isfinite(scale_log2));
  for (index d = 0; d < d_qk; ++d) dst[d] = scaled_query(src[d], scale_log2);
}

// ---------------------------------------------------------------------------
// The chunk worker

/// Walks the key tiles of [j_begin, j_end) for one query block, running the
/// walk's four steps on every tile some row can see. Walk provides
///   key_tile                        keys per step
///   bool visible(j0, n)             false: no row sees any key of the tile
///   void prefetch(j0, n, j_end)     ask for the next tile's rows
///   void scores(j0, n), mask(j0, n), online_softmax(j0, n), accumulate(j0, n)
template <class Walk>
ATTN_ALWAYS_INLINE void run_chunk(Walk& walk, index j_begin, index j_end) {
  constexpr index key_tile = Walk::key_tile;
  ATTN_ASSERT(j_begin >= 0);
  for (index j0 = j_begin; j0 < j_end; j0 += key_tile) {
    const index n = std::min(key_tile, j_end - j0);
    if (!walk.visible(j0, n)) continue;
    walk.prefetch(j0, n, j_end);
    walk.scores(j0, n);
    walk.mask(j0, n);
    walk.online_softmax(j0, n);
    walk.accumulate(j0, n);
  }
}

// ---------------------------------------------------------------------------
// Column layout: scores transposed, st[key][query]

/// Running softmax state of a block of query columns (one entry per column).
struct column_state {
  float* max;     ///< running max (log2 units), -inf: nothing seen yet
  float* sum;     ///< running Σ 2^(s - max)
  float* factor;  ///< this step's rescale factors for O
};

/// The score rewrite of softmax_columns' max pass that changes nothing.
struct no_rewrite {
  /// x as it is.
  static constexpr bool active = false;
  /// Unused (active is false).
  core::simd::packet operator()(const core::simd::packet& x, index, index) const { return x; }
};

/// Step 3 for columns [0, cols) of a score tile st (row stride ld): n keys,
/// rows n..n_pad already -inf. Leaves P = 2^(S - max) in st and the factors
/// by which each column's earlier accumulation must be rescaled. A Rewrite
/// with active = true (score_policy::column_modifier) is applied to each
/// score in the max pass, while its column strip is in L1, rather than in a
/// pass of its own over the whole tile.
template <class Rewrite = no_rewrite>
ATTN_ALWAYS_INLINE void softmax_columns(float* st, index ld, index n, index n_pad, index cols,
                                        const column_state& state, const Rewrite& rewrite = {}) {
  using namespace core::simd;
  // Whole packets of columns, and padding rows that are already -inf.
  ATTN_ASSERT(0 <= n && n <= n_pad && cols % width == 0 && cols <= ld);
  for (index c0 = 0; c0 < cols; c0 += width) {
    float* s = st + c0;
    packet m = broadcast(core::softmax::neg_inf);
    if constexpr (Rewrite::active) {
      for (index j = 0; j < n; ++j) {
        const packet x = rewrite(load(s + j * ld), j, c0);
        store(s + j * ld, x);
        m = core::simd::max(m, x);
      }
    } else {
      for (index j = 0; j < n; ++j) m = core::simd::max(m, load(s + j * ld));
    }
    const core::softmax::packet_step step = core::softmax::online_step(load(state.max + c0), m);
    store(state.max + c0, step.max);
    store(state.factor + c0, step.factor);
    packet sum = zero();
    for (index j = 0; j < n_pad; ++j) {
      const packet e = exp2_nonpositive(sub(load(s + j * ld), step.pivot));
      store(s + j * ld, e);
      sum = add(sum, e);
    }
    store(state.sum + c0, fma(load(state.sum + c0), step.factor, sum));
  }
}

/// O rows [0, rows) (d_pad floats each, row stride ld_o) times their
/// column's factor; rows whose max did not move (factor 1) are skipped.
/// Padding columns are never rescaled: their rows are never written out.
ATTN_ALWAYS_INLINE void rescale_rows(float* o, index ld_o, index d_pad, const float* factor, index rows) {
  using namespace core::simd;
  ATTN_ASSERT(rows >= 0 && d_pad % width == 0 && d_pad <= ld_o);
  for (index r = 0; r < rows; ++r) {
    const float f = factor[r];
    if (f == 1.0f) continue;
    float* row = o + r * ld_o;
    const packet pf = broadcast(f);
    for (index d = 0; d < d_pad; d += width) store(row + d, mul(load(row + d), pf));
  }
}

/// The V rows of a tile that hold a non-finite value, set apart from the
/// P·V product. Where some rows do not see some keys, the product relies on
/// P = 0 for them, but 0 · inf = NaN: a NaN or inf in a hidden key's V would
/// reach rows that never attend to it. Such rows (rare: only non-finite
/// data) have their non-finite entries moved out before the product; the
/// finite entries stay in it, so every other output keeps its bits; after
/// the product, add_back adds the moved entries to exactly the rows that see
/// the key.
class hidden_values {
 public:
  /// Room for `keys` rows of `width` values.
  void reserve(index keys, index width) {
    keys_.reserve(static_cast<std::size_t>(keys));
    entries_.resize(static_cast<std::size_t>(keys * width));
    width_ = width;
  }

  /// Scans V rows [from, n) of the tile (row j at v + j·ld_v, the first
  /// `width` values of it) and moves their non-finite entries out.
  void set_apart(float* v, index ld_v, index from, index n) {
    keys_.clear();
    for (index j = from; j < n; ++j) {
      float* row = v + j * ld_v;
      if (core::softmax::all_finite(row, width_)) continue;
      float* kept = entries_.data() + static_cast<index>(keys_.size()) * width_;
      for (index d = 0; d < width_; ++d) {
        const bool bad = !std::isfinite(row[d]);
        kept[d] = bad ? row[d] : 0.0f;
        if (bad) row[d] = 0.0f;
      }
      keys_.push_back(j);
    }
  }

  /// O[r] += P[j][r] · (moved entries of key j), for each set-apart key j
  /// and each row r < rows that sees it (sees(r, j), j relative to the tile);
  /// P is the tile's probabilities (row stride ld_p), O has row stride ld_o
  /// and d values are added.
  template <class Sees>
  void add_back(Sees sees, const float* p, index ld_p, float* o, index ld_o, index rows,
                index d) const {
    for (std::size_t i = 0; i < keys_.size(); ++i) {
      const index j = keys_[i];
      const float* vj = entries_.data() + static_cast<index>(i) * width_;
      for (index r = 0; r < rows; ++r) {
        if (!sees(r, j)) continue;
        const float pj = p[j * ld_p + r];
        float* row = o + r * ld_o;
        for (index c = 0; c < d; ++c)
          if (vj[c] != 0.0f) row[c] += pj * vj[c];
      }
    }
  }

 private:
  std::vector<index> keys_;     // tile-relative keys set apart
  std::vector<float> entries_;  // [keys][width] their non-finite entries, 0 elsewhere
  index width_ = 0;
};

// ---------------------------------------------------------------------------
// Row layout: s[row][key]

/// Step 3 for one row of the row layout: n scores s[0, n) after the masks,
/// padded with -inf to n_vec (a multiple of the width); running max, sum and
/// the row's O (d_v floats). Leaves P in s.
inline void softmax_row(float* s, index n, index n_vec, float& max, float& sum, float* o,
                        index d_v) {
  using namespace core::simd;
  ATTN_ASSERT(0 <= n && n <= n_vec && n_vec % width == 0 && d_v >= 0);
  packet block_max = broadcast(core::softmax::neg_inf);
  for (index jj = 0; jj < n_vec; jj += width) block_max = core::simd::max(block_max, load(s + jj));
  const float m = std::min(reduce_max(block_max), core::softmax::max_finite);
  if (m == core::softmax::neg_inf) {  // nothing visible in this block...
    // ...unless the max skipped NaN scores (a NaN query or key): then the
    // row is NaN, never an empty row's 0.
    for (index jj = 0; jj < n; ++jj)
      if (std::isnan(s[jj])) sum = s[jj];
    std::fill(s, s + n, 0.0f);
    return;
  }
  if (m > max) {
    const float f = max == core::softmax::neg_inf ? 0.0f : exp2_nonpositive_scalar(max - m);
    sum *= f;
    for (index d = 0; d < d_v; ++d) o[d] *= f;
    max = m;
  }
  const packet pivot = broadcast(max);
  packet block_sum = zero();
  for (index jj = 0; jj < n_vec; jj += width) {
    const packet e = exp2_nonpositive(sub(load(s + jj), pivot));
    store(s + jj, e);
    block_sum = add(block_sum, e);
  }
  sum += reduce_add(block_sum);
}

// ---------------------------------------------------------------------------
// Finishing

/// A finished row: dst[d] = o[d] / sum for d < d_v; returns the row's result
/// (its natural-log LSE: -inf for a row that saw no key, whose output is 0).
/// o_factor rescales o first (core::softmax::fold_sink's factor; 1 without
/// a sink, and then the row's bits are those of o[d] · (1 / sum)).
inline core::softmax::row_result finish_row(float max, float sum, const float* o, index d_v,
                                            float* dst, float o_factor = 1.0f) {
  const core::softmax::row_result res = core::softmax::finish_row_log2(max, sum);
  const float scale = o_factor == 1.0f ? res.inv_sum : o_factor * res.inv_sum;
  for (index d = 0; d < d_v; ++d) dst[d] = o[d] * scale;
  return res;
}

}  // namespace ATTN_ABI
}  // namespace attn::detail::engine
