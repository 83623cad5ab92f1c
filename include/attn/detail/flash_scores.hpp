// attn/detail/flash_scores.hpp: the engine's score and mask steps for the
// column layout under SDPA's masks (docs/design.md, "Engine"), shared by the
// flash forward pass and attention_weights. Arguments arrive validated.
//
// One query tile (rows [i0, i0 + rows) of head h in batch entry b, KV head
// hk) is packed once, transposed and pre-scaled (Qᵀ). For each key tile,
//   scores  Sᵀ = K · Qᵀ with the register-blocked micro-kernel, scores kept
//           transposed, [keys][queries], so each query's softmax runs down
//           a column; K rows are read in place when they are float, bf16 /
//           half and a ragged last tile are converted into a small buffer;
//   mask    the policy's score modifiers first (score_policy.hpp: softcap,
//           ALiBi, a score_mod); whole tiles inside the band and refused by
//           no mask need no masking; edge tiles get -inf outside each
//           column's band, then the dense bool / additive masks and the
//           mask_mod.
// Both kernels run these same steps on the same tiles, so the weights that
// attention_weights writes are the probabilities the forward pass applies,
// NaN / inf policy included.
#pragma once

// Internal header (docs/design.md, "What is public"): reached only through a
// public header, which defines ATTN_DETAIL_ALLOWED first.
#ifndef ATTN_DETAIL_ALLOWED
#error "attn/detail/flash_scores.hpp is internal: include <attn/sdpa.hpp>"
#endif

#include <algorithm>
#include <array>
#include <numeric>
#include <type_traits>
#include <vector>

#include "attn/core/abi.hpp"
#include "attn/core/microkernel.hpp"
#include "attn/core/softmax.hpp"
#include "attn/detail/score_policy.hpp"
#include "attn/detail/kv_rows.hpp"
#include "attn/mask.hpp"
#include "attn/sdpa_options.hpp"
#include "attn/view.hpp"

namespace attn::detail::sdpa {
inline namespace ATTN_ABI {

/// Tile sizes of the column layout: queries per task (a multiple of the
/// micro-kernel's tile width) and keys per step (a multiple of its rows).
struct flash_tiles {
  // Queries computed together: a whole number of score-tile columns and of
  // accumulate-tile rows.
  static constexpr index q_step =
      std::lcm(core::flash_score_tile::cols, static_cast<index>(core::accumulate_tile::rows));
  static constexpr index q_tile = detail::round_up(192, q_step);
  static constexpr index kv_tile = 16 * core::flash_score_tile::rows;
  // Row stride of the packed Qᵀ (core::scratch_stride: 208 on AVX2, where
  // 192 floats would put a column panel's rows into 16 of L1's 64 sets).
  static constexpr index qt_ld = core::scratch_stride(q_tile);
};

/// The score step's working memory for one thread.
struct flash_score_buffers {
  std::vector<float> qt;  // [d_qk][qt_ld]      scaled queries, transposed
  std::vector<float> k;   // [kv_tile][d_qk]    converted / padded keys
  std::vector<float> st;  // [kv_tile][q_tile]  scores, then probabilities

  explicit flash_score_buffers(index d_qk)
      : qt(d_qk * flash_tiles::qt_ld),
        k(flash_tiles::kv_tile * d_qk),
        st(flash_tiles::kv_tile * flash_tiles::q_tile) {}
};

// Copies rows [j0, j0 + n) of one head into dst as float, row stride `cols`;
// rows n..rows_pad and columns width..cols are zero.
template <class Rows>
void pack_rows(const Rows& t, index b, index h, index j0, index n, index rows_pad,
               index width, index cols, float* dst) {
  for (index r = 0; r < rows_pad; ++r) {
    float* row = dst + r * cols;
    index c = 0;
    if (r < n) {
      const auto* src = t.at(b, j0 + r, h, 0);
      for (; c < width; ++c) row[c] = static_cast<float>(src[c]);
    }
    for (; c < cols; ++c) row[c] = 0.0f;
  }
}

// Asks the cache for rows [j0, j0 + n) of one head ahead of use. In
// [batch, seq, heads, dim] one head's rows sit heads·dim apart, often a page
// or more, where hardware prefetchers stop following the stream.
template <class Rows>
void prefetch_rows(const Rows& t, index b, index h, index j0, index n,
                   index width) {
#if defined(__GNUC__)
  const index bytes = width * static_cast<index>(sizeof(rows_scalar_t<Rows>));
  for (index r = 0; r < n; ++r) {
    const char* row = reinterpret_cast<const char*>(t.at(b, j0 + r, h, 0));
    for (index off = 0; off < bytes; off += 64) __builtin_prefetch(row + off, 0, 2);
  }
#else
  (void)t, (void)b, (void)h, (void)j0, (void)n, (void)width;
#endif
}

// Rows [j0, j0 + n) of one head as a micro-kernel operand: in place when the
// storage is already float and shaped as the kernel needs (and in_place is
// allowed), else converted and zero-padded into `buffer`.
template <class Rows>
core::rhs tile_rows_operand(const Rows& t, index b, index h, index j0, index n,
                            index rows_pad, index width, index cols, float* buffer, bool in_place) {
  if constexpr (std::is_same<rows_scalar_t<Rows>, float>::value) {
    if (in_place && n == rows_pad && width == cols) {
      const index stride = uniform_row_stride(t, b, j0, n);
      if (stride != 0) return {t.at(b, j0, h, 0), stride};
    }
  }
  pack_rows(t, b, h, j0, n, rows_pad, width, cols, buffer);
  return {buffer, cols};
}

/// The score and mask steps of one query tile: query rows [i0, i0 + rows)
/// of head h in batch entry b (KV head hk), cols (rows rounded up to
/// q_step) columns computed, Qᵀ already packed in buf.qt. Policy is the
/// call's engine::score_policy.
template <class Rows, class Policy>
struct flash_scores {
  static constexpr index q_tile = flash_tiles::q_tile;

  const Rows& k;
  const sdpa_options& opt;
  const detail::band_mask& band;
  const Policy& policy;
  flash_score_buffers& buf;
  index b, h, hk, i0, rows, cols, d_qk;
  bool has_bool, has_add;
  // The built-in rewrites (softcap, ALiBi) are left to the softmax's max
  // pass (score_policy::column_modifier), not done in mask(). Only for a
  // walk that runs softmax_columns with them, and without an additive mask
  // (which must be added after them).
  bool fuse_builtins = false;
  // Per tile: inside the band (no per-element band mask, whole GEMMs), and
  // free of any mask (no -inf to write, no hidden key).
  bool in_band = false, full = false;
  // Per tile: what the mask_mod says about it (full without one).
  block_kind mod_kind = block_kind::full;
  // Per partial tile, when the mask_mod has a block predicate: what it says
  // about each register tile (key rows kb, query columns c0), so that
  // hidden register tiles are neither computed nor evaluated element-wise.
  static constexpr index sub_rows = flash_tiles::kv_tile / core::flash_score_tile::rows;
  static constexpr index sub_cols = flash_tiles::q_tile / core::flash_score_tile::cols;
  // Whether by_sub_tiles can ever be true: the code and the kinds exist
  // only then, so that the plain kernels stay exactly as they were.
  static constexpr bool sub_tiles_possible =
      engine::has_block_predicate<typename Policy::mask_type>::value;
  struct no_sub_kinds {};
  std::conditional_t<sub_tiles_possible, std::array<block_kind, sub_rows * sub_cols>, no_sub_kinds>
      sub_kind{};
  bool by_sub_tiles = false;

  /// The band reaches the tile for some row, and neither the bool mask nor
  /// the mask_mod (if any) hides every key it reaches. Sets mod_kind.
  bool visible(index j0, index n) {
    if constexpr (Policy::has_mask_mod) {
      mod_kind = policy.classify(b, h, i0, i0 + rows, j0, j0 + n);
      if (mod_kind == block_kind::empty) return false;
    }
    for (index r = 0; r < rows; ++r) {
      const detail::key_band kb = band.row(i0 + r);
      const index lo = std::max(kb.first, j0), hi = std::min(kb.last, j0 + n - 1);
      if (lo > hi) continue;
      if (!has_bool) return true;
      const bool* m = opt.bool_mask.at(b, h, i0 + r, 0);
      const index ms = opt.bool_mask.strides[3];
      for (index j = lo; j <= hi; ++j)
        if (m[j * ms]) return true;
    }
    return false;
  }

  /// Sᵀ = K · Qᵀ for keys [j0, j0 + n) into buf.st (row stride q_tile),
  /// floored at -FLT_MAX (core::softmax::floor_score).
  void scores(index j0, index n) {
    const index n_pad = detail::round_up(n, core::flash_score_tile::rows);
    // The L1-blocked order (16 registers) meets each Qᵀ panel with all the
    // tile's key rows while the panel sits in L1. Read in place, K rows lie
    // heads·d_qk floats apart (4 KiB at 8 x 128) and map to one L1 set with
    // the panel's lines, so there K is packed into contiguous rows (-13% L1
    // misses; docs/performance.md, "L1 blocking on AVX2"). Same sums.
    const core::rhs kt = tile_rows_operand(k, b, hk, j0, n, n_pad, d_qk, d_qk, buf.k.data(),
                                           !core::l1_blocked);
    in_band = band.tile_full(i0, i0 + rows, j0, j0 + n);
    full = !has_bool && !has_add && in_band && mod_kind == block_kind::full;
    by_sub_tiles = false;
    if constexpr (sub_tiles_possible) {
      if (mod_kind == block_kind::partial) {
        by_sub_tiles = true;
        classify_sub_tiles(j0, n);
      }
    }
    if (in_band && !by_sub_tiles) {
      if constexpr (core::l1_blocked) {
        // Column tile outer: its Qᵀ panel (d_qk x 16 floats, 8 KiB at d_qk =
        // 128) meets every key row while it is in L1, where key rows outer
        // streamed all of Qᵀ (96 KiB) from L2 once per 6 keys.
        using shape = core::flash_score_tile;
        for (index c0 = 0; c0 < cols; c0 += shape::cols)
          for (index kb = 0; kb < n_pad; kb += shape::rows)
            core::gemm_tile<shape, false, core::softmax::score_floor>(
                core::lhs{kt.data + kb * kt.row_stride, kt.row_stride, 1},
                core::rhs{buf.qt.data() + c0, flash_tiles::qt_ld}, d_qk,
                buf.st.data() + kb * q_tile + c0, q_tile);
      } else {
        core::gemm_block<core::flash_score_tile, false, core::softmax::score_floor>(
            core::lhs{kt.data, kt.row_stride, 1}, core::rhs{buf.qt.data(), flash_tiles::qt_ld},
            d_qk, buf.st.data(), q_tile, n_pad, cols);
      }
      return;
    }
    // An edge tile: skip register tiles whose keys no query of theirs can
    // see (the mask step writes -inf there).
    using shape = core::flash_score_tile;
    for (index kb = 0; kb < n_pad; kb += shape::rows)
      for (index c0 = 0; c0 < cols; c0 += shape::cols) {
        if (!band.block_visible(i0 + c0, std::min(c0 + shape::cols, rows) - c0, j0 + kb,
                                shape::rows))
          continue;
        if constexpr (sub_tiles_possible)
          if (by_sub_tiles && sub(kb, c0) == block_kind::empty) continue;
        core::gemm_tile<shape, false, core::softmax::score_floor>(
            core::lhs{kt.data + kb * kt.row_stride, kt.row_stride, 1},
            core::rhs{buf.qt.data() + c0, flash_tiles::qt_ld}, d_qk,
            buf.st.data() + kb * q_tile + c0, q_tile);
      }
  }

  /// The score modifiers, then the masks: -inf outside each column's band,
  /// then the dense masks and the mask_mod. Padding key rows (n..n_pad)
  /// never count.
  void mask(index j0, index n) {
    const index n_pad = detail::round_up(n, core::flash_score_tile::rows);
    if (policy.modifies() && !fuse_builtins) policy.columns(buf.st.data(), q_tile, n, rows, cols, b, h, i0, j0);
    for (index j = n; j < n_pad; ++j)
      std::fill(buf.st.begin() + j * q_tile, buf.st.begin() + (j + 1) * q_tile,
                core::softmax::neg_inf);
    if (full) return;
    for (index r = 0; r < rows; ++r) {
      float* col = buf.st.data() + r;
      const detail::key_band kb = band.row(i0 + r);
      const index lo = std::max<index>(kb.first - j0, 0);
      const index hi = std::min<index>(kb.last - j0, n - 1);  // inclusive
      for (index j = 0; j < std::min(lo, n); ++j) col[j * q_tile] = core::softmax::neg_inf;
      for (index j = std::max(hi + 1, lo); j < n; ++j) col[j * q_tile] = core::softmax::neg_inf;
      if (has_bool) {
        const bool* m = opt.bool_mask.at(b, h, i0 + r, j0);
        const index ms = opt.bool_mask.strides[3];
        for (index j = lo; j <= hi; ++j)
          if (!m[j * ms]) col[j * q_tile] = core::softmax::neg_inf;
      }
      if (has_add) {
        const float* a = opt.additive_mask.at(b, h, i0 + r, j0);
        const index as = opt.additive_mask.strides[3];
        for (index j = lo; j <= hi; ++j)
          col[j * q_tile] = core::softmax::apply_additive_log2(col[j * q_tile], a[j * as]);
      }
      if (mod_kind == block_kind::partial && !by_sub_tiles)
        for (index j = lo; j <= hi; ++j)
          if (!policy.allows(b, h, i0 + r, j0 + j)) col[j * q_tile] = core::softmax::neg_inf;
    }
    if constexpr (sub_tiles_possible)
      if (by_sub_tiles) mask_sub_tiles(j0, n);
  }

  /// The kind of register tile (key rows kb.., query columns c0..).
  block_kind& sub(index kb, index c0) {
    return sub_kind[static_cast<std::size_t>((kb / core::flash_score_tile::rows) * sub_cols +
                                             c0 / core::flash_score_tile::cols)];
  }

  /// sub_kind of every register tile of keys [j0, j0 + n): padding columns
  /// and rows are empty (their results are dropped).
  void classify_sub_tiles(index j0, index n) {
    using shape = core::flash_score_tile;
    for (index kb = 0; kb < sub_rows * shape::rows; kb += shape::rows)
      for (index c0 = 0; c0 < sub_cols * shape::cols; c0 += shape::cols)
        sub(kb, c0) = kb >= n || c0 >= rows
                          ? block_kind::empty
                          : policy.classify(b, h, i0 + c0, i0 + std::min(c0 + shape::cols, rows),
                                            j0 + kb, j0 + std::min<index>(kb + shape::rows, n));
  }

  /// Narrows the keys [lo, hi) (tile-relative) of query rows [r0, r1]
  /// (tile-relative, inclusive) to the register tiles some of them see.
  void clip_to_sub_tiles(index r0, index r1, index n, index& lo, index& hi) {
    using shape = core::flash_score_tile;
    index first = n, last = 0;
    for (index c0 = (r0 / shape::cols) * shape::cols; c0 <= r1; c0 += shape::cols)
      for (index kb = 0; kb < n; kb += shape::rows)
        if (sub(kb, c0) != block_kind::empty) {
          first = std::min(first, kb);
          last = std::max(last, std::min<index>(kb + shape::rows, n));
        }
    lo = std::max(lo, first);
    hi = std::min(hi, last);
  }

  /// The mask_mod by register tiles: hidden ones -inf, partial ones per
  /// element, full ones untouched.
  void mask_sub_tiles(index j0, index n) {
    using shape = core::flash_score_tile;
    for (index kb = 0; kb < n; kb += shape::rows)
      for (index c0 = 0; c0 < cols; c0 += shape::cols) {
        const block_kind kind = sub(kb, c0);
        if (kind == block_kind::full) continue;
        for (index j = kb; j < std::min<index>(kb + shape::rows, n); ++j) {
          float* row = buf.st.data() + j * q_tile;
          for (index c = c0; c < c0 + shape::cols; ++c)
            if (kind == block_kind::empty || (c < rows && !policy.allows(b, h, i0 + c, j0 + j)))
              row[c] = core::softmax::neg_inf;
        }
      }
  }

  /// Whether row r (of the tile) sees key `key` through the band and masks.
  bool sees(index r, index key) const {
    const detail::key_band kb = band.row(i0 + r);
    if (key < kb.first || key > kb.last) return false;
    if (has_bool && !*opt.bool_mask.at(b, h, i0 + r, key)) return false;
    if (has_add && *opt.additive_mask.at(b, h, i0 + r, key) == core::softmax::neg_inf) return false;
    return policy.allows(b, h, i0 + r, key);
  }
};

}  // namespace ATTN_ABI
}  // namespace attn::detail::sdpa
