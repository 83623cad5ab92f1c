// attn/detail/score_policy.hpp: the engine's score and mask treatment as one
// compile-time policy type (docs/design.md, "Engine" and "Score modifiers"),
// shared by the flash walk, the split-KV walk, attention_weights and the
// fp64 repair path. Arguments arrive validated.
//
// Between the score product and the masks, each score s (log2 units) of
// query i and key j in head h goes through, in this order,
//   softcap    s ← c · tanh(s / c), c = softcap · log2 e
//   ALiBi      s ← s − slope_h · log2 e · |i + offset − j|, offset from the
//              causal alignment (bottom-right without one)
//   score_mod  s ← log2 e · score_mod(b, h, i, j, s · ln 2)
// and each result is floored at −FLT_MAX (a modifier never masks: that is
// the mask_mod's job, so the "who sees which key" rules stay in one place).
// Then the masks of SDPA hide keys, and a mask_mod hides the pairs it
// refuses. A sink joins the row's softmax at the end (fold_sink).
//
// score_policy<no_score_mod, no_mask_mod> is the policy of every sdpa call;
// with no built-in set, its steps are skipped by a branch per tile.
#pragma once

// Internal header (docs/design.md, "What is public"): reached only through a
// public header, which defines ATTN_DETAIL_ALLOWED first.
#ifndef ATTN_DETAIL_ALLOWED
#error "attn/detail/score_policy.hpp is internal: include <attn/sdpa.hpp>"
#endif

#include <cmath>
#include <limits>
#include <type_traits>
#include <utility>

#include "attn/core/abi.hpp"
#include "attn/core/assert.hpp"
#include "attn/core/inline.hpp"
#include "attn/core/math.hpp"
#include "attn/core/simd.hpp"
#include "attn/core/softmax.hpp"
#include "attn/mask.hpp"
#include "attn/score_mod.hpp"
#include "attn/sdpa_options.hpp"

namespace attn::detail::engine {

// What a user modifier type offers (outside the ABI namespace: these are
// properties of user types, the same in every ISA).
template <class M, class = void>
struct has_block_predicate : std::false_type {};
template <class M>
struct has_block_predicate<
    M, std::void_t<decltype(std::declval<const M&>().block(index{}, index{}, index{}, index{},
                                                           index{}, index{}))>> : std::true_type {};

template <class M>
constexpr bool is_vector_score_mod = std::is_invocable<const M&, const score_block&>::value;
template <class M>
constexpr bool is_scalar_score_mod =
    std::is_invocable_r<float, const M&, index, index, index, index, float>::value;

inline namespace ATTN_ABI {

/// The call's score and mask treatment. ScoreMod / MaskMod are the user's
/// modifiers (no_score_mod / no_mask_mod: none); b_offset and q_offset turn
/// the kernel's (batch entry, query row) into the indices the modifiers see
/// (kv_cache::attend calls one sequence at a time, and its queries are the
/// last of their sequence).
template <class ScoreMod = no_score_mod, class MaskMod = no_mask_mod>
class score_policy {
 public:
  using mask_type = MaskMod;  ///< the user's mask_mod type
  static constexpr bool has_score_mod = !std::is_same<ScoreMod, no_score_mod>::value;
  static constexpr bool has_mask_mod = !std::is_same<MaskMod, no_mask_mod>::value;
  static_assert(!has_score_mod || is_vector_score_mod<ScoreMod> || is_scalar_score_mod<ScoreMod>,
                "attn: a score_mod must be callable as float(index b, index h, index q_idx, "
                "index kv_idx, float score) or with one attn::score_block");
  static_assert(!has_mask_mod || std::is_invocable_r<bool, const MaskMod&, index, index, index,
                                                     index>::value,
                "attn: a mask_mod must be callable as bool(index b, index h, index q_idx, "
                "index kv_idx)");

  /// The built-ins of opt for queries of length L against S keys, and the
  /// user's modifiers (null when the type is no_score_mod / no_mask_mod).
  score_policy(const sdpa_options& opt, index L, index S, const ScoreMod* score_mod = nullptr,
               const MaskMod* mask_mod = nullptr, index b_offset = 0, index q_offset = 0)
      : score_mod_(score_mod), mask_mod_(mask_mod), b_offset_(b_offset), q_offset_(q_offset) {
    if (opt.softcap > 0.0f) {
      softcap_log2_ = opt.softcap * core::log2e;
      inv_softcap_log2_ = 1.0f / softcap_log2_;
    }
    if (!opt.alibi_slopes.empty()) {
      alibi_ = opt.alibi_slopes.data();
      alibi_offset_ = opt.causal == causal::top_left ? 0 : S - L;
    }
    if (!opt.sinks.empty()) sinks_ = opt.sinks.data();
    ATTN_ASSERT(!has_score_mod || score_mod_);
    ATTN_ASSERT(!has_mask_mod || mask_mod_);
  }

  /// True when some score is rewritten (a tile pass is needed).
  bool modifies() const { return softcap_log2_ > 0.0f || alibi_ || has_score_mod; }

  /// True when rows end with a sink (fold_sink).
  bool has_sinks() const { return sinks_ != nullptr; }

  /// Head h's sink logit (natural-log units, as given).
  float sink(index h) const { return sinks_[h]; }

  /// Head h's sink in log2 units.
  float sink_log2(index h) const { return sinks_[h] * core::log2e; }

  /// True when every rewrite is a built-in (softcap, ALiBi), which the flash
  /// walk may fuse into its softmax's max pass (column_modifier) instead of
  /// a pass of its own over the tile.
  bool only_builtins() const { return !has_score_mod; }

  /// The built-in rewrites of one column-layout tile as a packet function,
  /// for the softmax's max pass: (scores of key j0 + j, query columns
  /// c0 .. c0 + width - 1 of a tile whose first row is i0) -> rewritten
  /// scores. Masked scores (-inf) stay -inf, since the masks have already run:
  /// the result is the one `columns` gives before masking.
  struct column_modifier {
    static constexpr bool active = true;  ///< softmax_columns applies it
    core::simd::packet cap;        ///< softcap · log2 e in every lane
    core::simd::packet inv_cap;    ///< its inverse
    core::simd::packet neg_slope;  ///< -slope · log2 e of the head
    index base;                    ///< distance of column 0 from key row 0 (i0 + offset - j0)
    bool softcap;                  ///< softcap on
    bool alibi;                    ///< ALiBi on

    /// The rewritten scores.
    ATTN_ALWAYS_INLINE core::simd::packet operator()(const core::simd::packet& x, index j,
                                                     index c0) const {
      using namespace core::simd;
      packet s = x;
      if (softcap) s = mul(cap, core::simd::tanh(mul(s, inv_cap)));
      if (alibi) {
        const packet dist = ei::pabs(ei::plset<packet>(static_cast<float>(base + c0 - j)));
        s = core::simd::max(fma(neg_slope, dist, s), broadcast(-core::softmax::max_finite));
      }
      return select(equal(x, broadcast(core::softmax::neg_inf)), x, s);
    }
  };

  /// The column_modifier of head h for the tile of query rows from i0 and
  /// keys from j0.
  column_modifier columns_modifier(index h, index i0, index j0) const {
    using namespace core::simd;
    return {broadcast(softcap_log2_), broadcast(inv_softcap_log2_),
            broadcast(alibi_ ? -alibi_[h] * core::log2e : 0.0f), i0 + alibi_offset_ - j0,
            softcap_log2_ > 0.0f, alibi_ != nullptr};
  }

  /// Column layout: rewrites the scores st[j·ld + c] of keys j0 + j (j < n)
  /// and query rows i0 + c (c < cols, a whole number of packets; columns
  /// rows..cols are padding whose results are dropped) of head h.
  void columns(float* st, index ld, index n, index rows, index cols, index b, index h, index i0,
               index j0) const {
    using namespace core::simd;
    ATTN_ASSERT(cols % width == 0 && rows <= cols && cols <= ld);
    if (softcap_log2_ > 0.0f || alibi_) {
      const packet cap = broadcast(softcap_log2_), inv_cap = broadcast(inv_softcap_log2_);
      const packet neg_slope = broadcast(alibi_ ? -alibi_[h] * core::log2e : 0.0f);
      const packet floor = broadcast(-core::softmax::max_finite);
      for (index j = 0; j < n; ++j) {
        float* row = st + j * ld;
        // Distance of column c0 from key j0 + j, exact below 2^24 positions.
        const index first = i0 + alibi_offset_ - (j0 + j);
        for (index c0 = 0; c0 < cols; c0 += width) {
          packet s = load(row + c0);
          if (softcap_log2_ > 0.0f) s = mul(cap, core::simd::tanh(mul(s, inv_cap)));
          if (alibi_) {
            const packet dist = ei::pabs(ei::plset<packet>(static_cast<float>(first + c0)));
            s = core::simd::max(fma(neg_slope, dist, s), floor);
          }
          store(row + c0, s);
        }
      }
    }
    if constexpr (has_score_mod) {
      if constexpr (is_vector_score_mod<ScoreMod>) {
        to_natural(st, ld, n, cols);
        (*score_mod_)(score_block{b + b_offset_, h, i0 + q_offset_, j0, rows, n, st, 1, ld});
        to_log2(st, ld, n, cols);
      } else {
        for (index j = 0; j < n; ++j)
          for (index c = 0; c < rows; ++c) {
            float& s = st[j * ld + c];
            s = user_score(b, h, i0 + c, j0 + j, s);
          }
      }
    }
  }

  /// Row layout: rewrites s[0, n), the scores of query row i against keys
  /// j0 .. j0 + n - 1 in head h; s has room for n_vec floats (n rounded up
  /// to whole packets; the padding is overwritten by the masks after).
  void row(float* s, index n, index n_vec, index b, index h, index i, index j0) const {
    using namespace core::simd;
    ATTN_ASSERT(n <= n_vec && n_vec % width == 0);
    if (softcap_log2_ > 0.0f || alibi_) {
      const packet cap = broadcast(softcap_log2_), inv_cap = broadcast(inv_softcap_log2_);
      const packet neg_slope = broadcast(alibi_ ? -alibi_[h] * core::log2e : 0.0f);
      const packet floor = broadcast(-core::softmax::max_finite);
      // Key j0 + j is at distance |i + offset - j0 - j|: lanes count down.
      const index first = i + alibi_offset_ - j0;
      for (index j = 0; j < n_vec; j += width) {
        packet x = load(s + j);
        if (softcap_log2_ > 0.0f) x = mul(cap, core::simd::tanh(mul(x, inv_cap)));
        if (alibi_) {
          const packet dist = ei::pabs(ei::psub(broadcast(static_cast<float>(first - j)),
                                                ei::plset<packet>(0.0f)));
          x = core::simd::max(fma(neg_slope, dist, x), floor);
        }
        store(s + j, x);
      }
    }
    if constexpr (has_score_mod) {
      if constexpr (is_vector_score_mod<ScoreMod>) {
        for (index j = 0; j < n; ++j) s[j] *= core::ln2;
        (*score_mod_)(score_block{b + b_offset_, h, i + q_offset_, j0, 1, n, s, 0, 1});
        for (index j = 0; j < n; ++j) s[j] = core::softmax::floor_score(s[j] * core::log2e);
      } else {
        for (index j = 0; j < n; ++j) s[j] = user_score(b, h, i, j0 + j, s[j]);
      }
    }
  }

  /// The same treatment in double, for the repair path (recompute_sdpa_row):
  /// score s (log2 units) of query row i and key j in head h.
  double score_fp64(double s, index b, index h, index i, index j) const {
    if (softcap_log2_ > 0.0f) {
      const double cap = static_cast<double>(softcap_log2_);
      s = cap * std::tanh(s / cap);
    }
    if (alibi_)
      s -= static_cast<double>(alibi_[h]) * static_cast<double>(core::log2e) *
           std::fabs(static_cast<double>(i + alibi_offset_ - j));
    if constexpr (has_score_mod) {
      if constexpr (is_scalar_score_mod<ScoreMod>) {
        s = static_cast<double>(user_score(b, h, i, j, static_cast<float>(s)));
      } else {
        float x = static_cast<float>(s * core::ln2);
        (*score_mod_)(score_block{b + b_offset_, h, i + q_offset_, j, 1, 1, &x, 0, 1});
        s = static_cast<double>(core::softmax::floor_score(x * core::log2e));
      }
    }
    return std::max(s, -static_cast<double>(core::softmax::max_finite));
  }

  /// What the mask_mod says about queries [i0, i1) against keys [j0, j1)
  /// of head h: its block predicate when it has one, else every pair
  /// evaluated. Without a mask_mod: full.
  block_kind classify(index b, index h, index i0, index i1, index j0, index j1) const {
    if constexpr (!has_mask_mod) {
      return block_kind::full;
    } else if constexpr (has_block_predicate<MaskMod>::value) {
      return mask_mod_->block(b + b_offset_, h, i0 + q_offset_, i1 + q_offset_, j0, j1);
    } else {
      bool any = false, all = true;
      for (index i = i0; i < i1; ++i)
        for (index j = j0; j < j1; ++j) {
          const bool a = allows(b, h, i, j);
          any = any || a;
          all = all && a;
        }
      return !any ? block_kind::empty : (all ? block_kind::full : block_kind::partial);
    }
  }

  /// Narrows keys [j_begin, j_end) for queries [i0, i1) of head h by
  /// dropping the leading and trailing tiles (of `tile` keys, on the grid
  /// from j_begin) that the block predicate calls empty, so that a walk
  /// over them neither visits nor prefetches them. The tiles that remain
  /// are the same tiles, so no sum changes its order. Without a block
  /// predicate (classify would evaluate every pair) the range stays.
  void narrow_keys(index b, index h, index i0, index i1, index tile, index& j_begin,
                   index& j_end) const {
    if constexpr (has_block_predicate<MaskMod>::value) {
      auto empty = [&](index j0) {
        return classify(b, h, i0, i1, j0, std::min(j0 + tile, j_end)) == block_kind::empty;
      };
      while (j_begin < j_end && empty(j_begin)) j_begin += tile;
      if (j_begin >= j_end) return;  // every tile hidden: the walk sees none
      for (index last = j_begin + (j_end - 1 - j_begin) / tile * tile;
           last > j_begin && empty(last); last -= tile)
        j_end = last;
    } else {
      (void)b, (void)h, (void)i0, (void)i1, (void)tile, (void)j_begin, (void)j_end;
    }
  }

  /// Whether the mask_mod lets query row i see key j in head h (true
  /// without one).
  bool allows(index b, index h, index i, index j) const {
    if constexpr (has_mask_mod)
      return static_cast<bool>((*mask_mod_)(b + b_offset_, h, i + q_offset_, j));
    else
      return true;
  }

 private:
  // A scalar score_mod on a log2-units score.
  float user_score(index b, index h, index i, index j, float s_log2) const {
    const float s = (*score_mod_)(b + b_offset_, h, i + q_offset_, j, s_log2 * core::ln2);
    return core::softmax::floor_score(s * core::log2e);
  }
  static void to_natural(float* st, index ld, index n, index cols) {
    using namespace core::simd;
    for (index j = 0; j < n; ++j)
      for (index c = 0; c < cols; c += width)
        store(st + j * ld + c, mul(load(st + j * ld + c), broadcast(core::ln2)));
  }
  static void to_log2(float* st, index ld, index n, index cols) {
    using namespace core::simd;
    const packet floor = broadcast(-core::softmax::max_finite);
    for (index j = 0; j < n; ++j)
      for (index c = 0; c < cols; c += width)
        store(st + j * ld + c,
              core::simd::max(mul(load(st + j * ld + c), broadcast(core::log2e)), floor));
  }

  const ScoreMod* score_mod_;
  const MaskMod* mask_mod_;
  index b_offset_, q_offset_;
  float softcap_log2_ = 0.0f, inv_softcap_log2_ = 0.0f;
  const float* alibi_ = nullptr;  // [Hq] slopes, natural units
  index alibi_offset_ = 0;        // query i's diagonal is i + alibi_offset_
  const float* sinks_ = nullptr;  // [Hq] sink logits, natural units
};

}  // namespace ATTN_ABI
}  // namespace attn::detail::engine
