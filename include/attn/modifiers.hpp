// attn/modifiers.hpp: ready score_mods and mask_mods for attn::flex_attention
// and kv_cache::attend (attn/score_mod.hpp), written with the public API
// only. Each mask_mod has an exact block predicate, so the kernels skip the
// tiles it hides and mask nothing in the tiles it shows whole.
//
//   causal_mask           = the built-in causal mask
//   sliding_window_mask   = the built-in sliding_window
//   document_mask         packed sequences: a query sees the keys of its
//                         own document (segment ids)
//   prefix_lm_mask        a bidirectional prefix, causal after it
//   and_masks             both of two mask_mods
//   softcap_score         = sdpa_options::softcap
//   alibi_score           = sdpa_options::alibi_slopes (scalar and
//                         vectorised forms)
//   relative_position_bias  T5's bucketed, learned per-head bias
#pragma once

#include <algorithm>
#include <cmath>
#include <vector>

#include "attn/error.hpp"
#include "attn/mask.hpp"
#include "attn/score_mod.hpp"
#include "attn/view.hpp"

namespace attn {

/// Query q_idx sees keys kv_idx <= q_idx + offset: offset 0 is top-left
/// causal, S - L bottom-right (causal_mask::bottom_right(L, S)).
struct causal_mask {
  index offset = 0;  ///< the diagonal: q_idx + offset

  /// Bottom-right causal for L queries against S keys.
  static causal_mask bottom_right(index L, index S) { return {S - L}; }

  /// The mask.
  bool operator()(index, index, index q_idx, index kv_idx) const {
    return kv_idx <= q_idx + offset;
  }
  /// Its block predicate.
  block_kind block(index, index, index q_begin, index q_end, index kv_begin,
                   index kv_end) const {
    if (kv_begin > q_end - 1 + offset) return block_kind::empty;
    if (kv_end - 1 <= q_begin + offset) return block_kind::full;
    return block_kind::partial;
  }
};

/// Query q_idx sees keys with q_idx + offset - left <= kv_idx <= q_idx +
/// offset + right (attn::sliding_window with its alignment as offset).
struct sliding_window_mask {
  index left = 0;    ///< keys before the diagonal, >= 0
  index right = 0;   ///< keys after the diagonal, >= 0
  index offset = 0;  ///< the diagonal: q_idx + offset

  /// The mask.
  bool operator()(index, index, index q_idx, index kv_idx) const {
    const index diag = q_idx + offset;
    return diag - left <= kv_idx && kv_idx <= diag + right;
  }
  /// Its block predicate.
  block_kind block(index, index, index q_begin, index q_end, index kv_begin,
                   index kv_end) const {
    const index first = q_begin + offset, last = q_end - 1 + offset;
    if (kv_end - 1 < first - left || kv_begin > last + right) return block_kind::empty;
    if (kv_begin >= last - left && kv_end - 1 <= first + right) return block_kind::full;
    return block_kind::partial;
  }
};

/// Packed documents: query q_idx sees key kv_idx exactly when both belong to
/// the same document. The ids (one per query row, one per key row) must be
/// non-decreasing, as for sequences packed one after another; they are
/// copied.
class document_mask {
 public:
  /// @throws attn::error when an id list is not non-decreasing.
  document_mask(std::vector<index> query_ids, std::vector<index> key_ids)
      : q_(std::move(query_ids)), kv_(std::move(key_ids)) {
    detail::require(std::is_sorted(q_.begin(), q_.end()), "document_mask", "query_ids",
                    "non-decreasing ids", "a decrease");
    detail::require(std::is_sorted(kv_.begin(), kv_.end()), "document_mask", "key_ids",
                    "non-decreasing ids", "a decrease");
  }
  /// Self-attention over one packed sequence: the same ids for both.
  explicit document_mask(std::vector<index> ids) : document_mask(ids, ids) {}

  /// The mask.
  bool operator()(index, index, index q_idx, index kv_idx) const {
    return q_[static_cast<std::size_t>(q_idx)] == kv_[static_cast<std::size_t>(kv_idx)];
  }
  /// Its block predicate: ids are sorted, so each block spans an id range.
  block_kind block(index, index, index q_begin, index q_end, index kv_begin,
                   index kv_end) const {
    const index q_lo = q_[static_cast<std::size_t>(q_begin)];
    const index q_hi = q_[static_cast<std::size_t>(q_end - 1)];
    const index k_lo = kv_[static_cast<std::size_t>(kv_begin)];
    const index k_hi = kv_[static_cast<std::size_t>(kv_end - 1)];
    if (q_hi < k_lo || k_hi < q_lo) return block_kind::empty;
    if (q_lo == q_hi && k_lo == k_hi) return block_kind::full;  // and q_lo == k_lo
    return block_kind::partial;
  }

 private:
  std::vector<index> q_, kv_;
};

/// Prefix-LM: every query sees the first `prefix` keys, and keys up to its
/// own position after them (top-left causal outside the prefix).
struct prefix_lm_mask {
  index prefix = 0;  ///< keys [0, prefix) are seen by every query

  /// The mask.
  bool operator()(index, index, index q_idx, index kv_idx) const {
    return kv_idx < prefix || kv_idx <= q_idx;
  }
  /// Its block predicate.
  block_kind block(index, index, index q_begin, index q_end, index kv_begin,
                   index kv_end) const {
    const index last_key = kv_end - 1;
    if (last_key < prefix || last_key <= q_begin) return block_kind::full;
    if (kv_begin >= prefix && kv_begin > q_end - 1) return block_kind::empty;
    return block_kind::partial;
  }
};

/// Both masks: a pair is visible when a and b allow it. Its block predicate
/// combines theirs (empty if either is, full if both are), so give it
/// masks that have one.
template <class A, class B>
struct and_masks {
  A a;  ///< the first mask_mod
  B b;  ///< the second mask_mod

  /// The mask.
  bool operator()(index bi, index h, index q_idx, index kv_idx) const {
    return a(bi, h, q_idx, kv_idx) && b(bi, h, q_idx, kv_idx);
  }
  /// Its block predicate.
  block_kind block(index bi, index h, index q_begin, index q_end, index kv_begin,
                   index kv_end) const {
    const block_kind ka = a.block(bi, h, q_begin, q_end, kv_begin, kv_end);
    const block_kind kb = b.block(bi, h, q_begin, q_end, kv_begin, kv_end);
    if (ka == block_kind::empty || kb == block_kind::empty) return block_kind::empty;
    if (ka == block_kind::full && kb == block_kind::full) return block_kind::full;
    return block_kind::partial;
  }
};

/// and_masks from two mask_mods.
template <class A, class B>
and_masks<A, B> both(A a, B b) {
  return {a, b};
}

/// Logit soft-capping as a score_mod: cap · tanh(score / cap).
struct softcap_score {
  float cap = 1.0f;  ///< > 0

  /// The score_mod.
  float operator()(index, index, index, index, float score) const {
    return cap * std::tanh(score / cap);
  }
};

/// ALiBi as a score_mod: score - slopes[h] · |q_idx + offset - kv_idx|. It
/// has the vectorised form too (a tile of scores at once), which the
/// kernels prefer.
struct alibi_score {
  std::vector<float> slopes;  ///< per query head
  index offset = 0;           ///< the diagonal: q_idx + offset

  /// The scalar form.
  float operator()(index, index h, index q_idx, index kv_idx, float score) const {
    return score - slopes[static_cast<std::size_t>(h)] *
                       static_cast<float>(std::abs(q_idx + offset - kv_idx));
  }
  /// The vectorised form: the inner loop runs along the unit stride.
  void operator()(const score_block& t) const {
    const float slope = slopes[static_cast<std::size_t>(t.h)];
    for (index r = 0; r < t.rows; ++r)
      for (index c = 0; c < t.keys; ++c) {
        float& s = t.scores[r * t.q_stride + c * t.kv_stride];
        s -= slope * static_cast<float>(std::abs(t.q_begin + r + offset - (t.kv_begin + c)));
      }
  }
};

/// T5's relative position bias: a learned bias per (head, bucket) added to
/// the score, the bucket of kv_idx - q_idx being exact for small distances
/// and logarithmic up to max_distance (Raffel et al., 2020).
class relative_position_bias {
 public:
  /// @param table  [heads][buckets] row-major biases (copied).
  /// @param heads, buckets  its shape; buckets >= 2 (>= 4 bidirectional).
  /// @param max_distance  distance where the last bucket starts, > buckets / 2.
  /// @param bidirectional  keys after the query get buckets of their own.
  /// @throws attn::error on a table or parameters that do not match.
  relative_position_bias(std::vector<float> table, index heads, index buckets,
                         index max_distance, bool bidirectional)
      : table_(std::move(table)),
        buckets_(buckets),
        max_distance_(max_distance),
        bidirectional_(bidirectional) {
    constexpr const char* fn = "relative_position_bias";
    detail::require(heads >= 1 && buckets >= (bidirectional ? 4 : 2), fn, "heads, buckets",
                    "heads >= 1, buckets >= 2 (4 when bidirectional)", buckets);
    detail::require(static_cast<index>(table_.size()) == heads * buckets, fn, "table.size()",
                    heads * buckets, table_.size());
    const index exact = (bidirectional ? buckets / 2 : buckets) / 2;
    detail::require(max_distance > exact, fn, "max_distance", "> the exact buckets",
                    max_distance);
  }

  /// The bucket of a relative position kv_idx - q_idx.
  index bucket(index relative) const {
    index n = buckets_, base = 0, dist;
    if (bidirectional_) {
      n /= 2;
      if (relative > 0) base = n;
      dist = relative < 0 ? -relative : relative;
    } else {
      dist = relative < 0 ? -relative : 0;
    }
    const index exact = n / 2;
    if (dist < exact) return base + dist;
    const double logs = std::log(static_cast<double>(dist) / static_cast<double>(exact)) /
                        std::log(static_cast<double>(max_distance_) / static_cast<double>(exact));
    const index large = exact + static_cast<index>(logs * static_cast<double>(n - exact));
    return base + std::min(large, n - 1);
  }

  /// The score_mod.
  float operator()(index, index h, index q_idx, index kv_idx, float score) const {
    return score + table_[static_cast<std::size_t>(h * buckets_ + bucket(kv_idx - q_idx))];
  }

 private:
  std::vector<float> table_;
  index buckets_, max_distance_;
  bool bidirectional_;
};

}  // namespace attn
