// attn/kv_cache.hpp: a key/value cache for incremental decoding.
//
// Keys and values of the tokens seen so far, per batch entry, in
// [batch, capacity, kv_heads, dim] row-major storage of float,
// Eigen::bfloat16 or Eigen::half. The capacity is fixed at creation, so
// appending never reallocates and views handed out stay valid. Each batch
// entry has its own length: sequences of a batch may be at different
// positions.
//
// attend() runs attention of new queries over the cache with bottom-right
// causal alignment on each sequence's own length (query t of a chunk of T
// new tokens at length n sees cached keys j <= n - T + t), which is what
// prefill, token-by-token decoding and chunked prefill all need.
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include "attn/core/abi.hpp"
#include "attn/core/aligned.hpp"
#include "attn/error.hpp"
#include "attn/overlap.hpp"
#include "attn/score_mod.hpp"
#include "attn/sdpa.hpp"
#include "attn/sdpa_checks.hpp"
#include "attn/size_checks.hpp"
#include "attn/view.hpp"

namespace attn {

// attend() calls scaled_dot_product_attention, whose kernels differ per
// instruction set: outside the ISA namespace, two units built with different
// -m flags would share one attend() body, and one of them would run the
// other's kernels (see attn/core/abi.hpp).
inline namespace ATTN_ABI {

/// Growing K/V storage for incremental decoding (see the file comment).
/// Storage: the element type, float, Eigen::bfloat16 or Eigen::half; values are
/// rounded to it on append. Not thread-safe for concurrent appends; attend()
/// only reads.
template <class Storage>
class kv_cache {
  static_assert(std::is_same<Storage, float>::value ||
                    std::is_same<Storage, Eigen::bfloat16>::value ||
                    std::is_same<Storage, Eigen::half>::value,
                "attn::kv_cache: storage must be float, Eigen::bfloat16 or Eigen::half");

 public:
  /// @param batch     sequences held.
  /// @param capacity  tokens each sequence can hold (fixed).
  /// @param kv_heads  K/V heads.
  /// @param head_dim  key head dim d_qk.
  /// @param v_head_dim value head dim d_v; -1 = head_dim.
  /// @throws attn::error for negative sizes, head_dim < 1, or sizes whose
  ///         storage does not fit the address space.
  kv_cache(index batch, index capacity, index kv_heads, index head_dim, index v_head_dim = -1)
      : batch_(batch),
        capacity_(capacity),
        kv_heads_(kv_heads),
        head_dim_(head_dim),
        v_head_dim_(v_head_dim < 0 ? head_dim : v_head_dim) {
    constexpr const char* fn = "kv_cache";
    detail::require(batch >= 0, fn, "batch", ">= 0", batch);
    detail::require(capacity >= 0, fn, "capacity", ">= 0", capacity);
    detail::require(kv_heads >= 1, fn, "kv_heads", ">= 1", kv_heads);
    detail::require(head_dim >= 1, fn, "head_dim", ">= 1", head_dim);
    // Sizes this machine can hold, checked before any product is formed: a
    // token's row (the views' strides, even at capacity 0), the lengths,
    // and the whole storage.
    const index per_token = std::max(head_dim, v_head_dim_);
    detail::check_size<Storage>(fn, "kv_heads", {kv_heads, per_token},
                                "kv_heads · head_dim (one token's row)", kv_heads);
    detail::check_size<index>(fn, "batch", {batch}, "batch (the lengths)", batch);
    detail::check_size<Storage>(fn, "capacity", {batch, capacity, kv_heads, per_token},
                                "batch · capacity · kv_heads · head_dim", capacity);
    keys_.resize(static_cast<std::size_t>(batch * capacity * kv_heads * head_dim));
    values_.resize(static_cast<std::size_t>(batch * capacity * kv_heads * v_head_dim_));
    lengths_.assign(static_cast<std::size_t>(batch), 0);
  }

  index batch() const { return batch_; }            ///< sequences held
  index capacity() const { return capacity_; }      ///< tokens each sequence can hold
  index kv_heads() const { return kv_heads_; }      ///< K/V heads
  index head_dim() const { return head_dim_; }      ///< key head dim d_qk
  index v_head_dim() const { return v_head_dim_; }  ///< value head dim d_v
  /// Tokens held by each sequence.
  const std::vector<index>& lengths() const { return lengths_; }
  /// Bytes of K and V storage (the whole capacity).
  std::size_t bytes() const { return (keys_.size() + values_.size()) * sizeof(Storage); }

  /// All stored keys as a [batch, capacity, kv_heads, head_dim] view;
  /// positions at or past lengths()[b] hold nothing meaningful.
  strided<const Storage, 4> keys() const { return view_of(keys_.data(), head_dim_); }
  /// All stored values as a [batch, capacity, kv_heads, v_head_dim] view;
  /// positions at or past lengths()[b] hold nothing meaningful.
  strided<const Storage, 4> values() const { return view_of(values_.data(), v_head_dim_); }

  /// Forgets every sequence's tokens (capacity stays).
  void clear() { std::fill(lengths_.begin(), lengths_.end(), 0); }

  /// Forgets sequence b's tokens from position `length` on (speculative
  /// decoding rolls back this way).
  /// @throws attn::error unless 0 <= b < batch and 0 <= length <= lengths()[b].
  void truncate(index b, index length) {
    detail::require(
        b >= 0 && b < batch_, "kv_cache::truncate", "b",
        [&] { return "in [0, " + std::to_string(batch_) + ")"; }, b);
    detail::require(
        length >= 0 && length <= lengths_[b], "kv_cache::truncate", "length",
        [&] { return "in [0, lengths()[b] = " + std::to_string(lengths_[b]) + "]"; }, length);
    lengths_[b] = length;
  }

  /// Appends new tokens' keys and values: k_new [batch, T, kv_heads,
  /// head_dim], v_new [batch, T, kv_heads, v_head_dim]. counts[b] (<= T) of
  /// them are taken for sequence b; empty counts = T for every sequence.
  /// @throws attn::error on any shape mismatch, if a sequence would pass
  ///         the capacity, or if k_new or v_new points into the cache's own
  ///         storage; the cache is then left exactly as it was.
  void append(strided<const float, 4> k_new, strided<const float, 4> v_new,
              const std::vector<index>& counts = {}) {
    const std::vector<index> n = checked_counts(k_new, v_new, counts);
    for (index b = 0; b < batch_; ++b) {
      for (index t = 0; t < n[b]; ++t)
        for (index h = 0; h < kv_heads_; ++h) {
          copy_row(k_new.at(b, t, h, 0), key_row(b, lengths_[b] + t, h), head_dim_);
          copy_row(v_new.at(b, t, h, 0), value_row(b, lengths_[b] + t, h), v_head_dim_);
        }
      lengths_[b] += n[b];
    }
  }

  /// Attention of q [batch, T, heads_q, head_dim] over the cache into
  /// out [batch, T, heads_q, v_head_dim], after append() has added these T
  /// tokens (or counts[b] of them; rows past counts[b] are left untouched).
  /// Bottom-right causal on each sequence's own length; opt may add a
  /// scale, a sliding window (measured from that diagonal), softcap, ALiBi
  /// slopes (distances from that diagonal too), sinks, an LSE output and
  /// threads. Dense masks, key_lengths and opt.causal are set by the cache
  /// and must be left empty / none.
  /// @throws attn::error on shape mismatches or a mask option given, and
  ///         with the attention's own messages for each sequence's slice,
  ///         or when out or lse shares memory with q (in any sequence), the
  ///         cache or each other; all before any row of out or lse is
  ///         written.
  void attend(strided<const float, 4> q, strided<float, 4> out, const sdpa_options& opt = {},
              const std::vector<index>& counts = {}) const {
    attend(q, out, score_modifiers<>{}, opt, counts);
  }

  /// attend() with a score_mod and a mask_mod (attn/score_mod.hpp,
  /// attn/flex.hpp). The modifiers see b = the sequence, q_idx = the query's
  /// position in its sequence (cached tokens before it counted: query t of
  /// counts[b] new ones at length n is at n - counts[b] + t) and kv_idx =
  /// the key's position, so decoding and chunked prefill give the scores
  /// and masks of a full forward over the sequence.
  template <class ScoreMod, class MaskMod>
  void attend(strided<const float, 4> q, strided<float, 4> out,
              const score_modifiers<ScoreMod, MaskMod>& mods, const sdpa_options& opt = {},
              const std::vector<index>& counts = {}) const {
    constexpr const char* fn = "kv_cache::attend";
    detail::require(q.dims[0] == batch_, fn, "q.dims[0] (batch)", batch_, q.dims[0]);
    detail::require(q.dims[3] == head_dim_, fn, "q.dims[3] (head_dim)", head_dim_, q.dims[3]);
    detail::check_cache_options(fn, "opt", opt);
    // The sequences' slices below offset q, out and lse by batch entry.
    detail::check_span(fn, "q", q);
    detail::check_span(fn, "out", out);
    detail::check_span(fn, "opt.lse", opt.lse);
    const index T = q.dims[1];
    // out and lse are cut into per-sequence prefixes below, which the
    // attention checks only within themselves: their batch and length here.
    detail::require(out.dims[0] == batch_ && out.dims[1] == T, fn, "out",
                    [&] { return "[batch = " + std::to_string(batch_) + ", T = " +
                                 std::to_string(T) + ", heads_q, v_head_dim]"; },
                    out.dims);
    detail::require(opt.lse.empty() || (opt.lse.dims[0] == batch_ && opt.lse.dims[2] == T), fn,
                    "opt.lse",
                    [&] { return "[batch = " + std::to_string(batch_) + ", heads_q, T = " +
                                 std::to_string(T) + "]"; },
                    opt.lse.dims);
    detail::require(counts.empty() || static_cast<index>(counts.size()) == batch_, fn,
                    "counts.size()", [&] { return "0 or batch = " + std::to_string(batch_); },
                    counts.size());
    // Every sequence's call is checked before the first one writes its rows:
    // a failed attend leaves out and lse as they were.
    std::vector<float> scales(static_cast<std::size_t>(batch_));  // each sequence's, as checked
    for (index b = 0; b < batch_; ++b) {
      const index n = counts.empty() ? T : counts[static_cast<std::size_t>(b)];
      detail::require(n >= 0 && n <= T && n <= lengths_[b], fn, "counts",
                      "0 <= counts[b] <= min(T, lengths()[b])", n);
      const sequence_call c = sequence(q, out, opt, counts, b);
      if (c.rows > 0)
        scales[static_cast<std::size_t>(b)] = detail::check_sdpa_arguments(
            "scaled_dot_product_attention", c.q, c.k, c.v, c.out, c.opt);
    }
    // The slices are checked apart within each sequence; across sequences
    // too, one sequence's out rows must not be another's q rows.
    detail::check_disjoint(fn, {detail::region("out", out), detail::region("opt.lse", opt.lse)},
                           {detail::region("q", q), detail::region("keys()", keys()),
                            detail::region("values()", values())});
    for (index b = 0; b < batch_; ++b) {
      const sequence_call c = sequence(q, out, opt, counts, b);
      if (c.rows == 0) continue;
      detail::sdpa::run_attention<Storage>(
          c.q, c.k, c.v, c.out, scales[static_cast<std::size_t>(b)], c.opt,
          detail::engine::score_policy<ScoreMod, MaskMod>(c.opt, c.rows, lengths_[b],
                                                          &mods.score_mod, &mods.mask_mod, b,
                                                          lengths_[b] - c.rows));
    }
  }

 private:
  // The attention of sequence b's rows [0, rows) over its cached tokens.
  struct sequence_call {
    index rows;
    strided<const float, 4> q;
    strided<const Storage, 4> k, v;
    strided<float, 4> out;
    sdpa_options opt;
  };
  sequence_call sequence(const strided<const float, 4>& q, const strided<float, 4>& out,
                         const sdpa_options& opt, const std::vector<index>& counts,
                         index b) const {
    const index n = counts.empty() ? q.dims[1] : counts[static_cast<std::size_t>(b)];
    sequence_call c{n,   prefix(q, b, n), prefix(keys(), b, lengths_[b]),
                    prefix(values(), b, lengths_[b]), prefix(out, b, n), opt};
    c.opt.causal = causal::bottom_right;
    if (!opt.lse.empty()) c.opt.lse = lse_prefix(opt.lse, b, n);
    return c;
  }

  strided<const Storage, 4> view_of(const Storage* data, index dim) const {
    strided<const Storage, 4> v;
    v.data = data;
    v.dims = {batch_, capacity_, kv_heads_, dim};
    v.strides = detail::dense_strides(v.dims);
    return v;
  }
  Storage* key_row(index b, index t, index h) {
    return keys_.data() + ((b * capacity_ + t) * kv_heads_ + h) * head_dim_;
  }
  Storage* value_row(index b, index t, index h) {
    return values_.data() + ((b * capacity_ + t) * kv_heads_ + h) * v_head_dim_;
  }
  static void copy_row(const float* src, Storage* dst, index n) {
    for (index i = 0; i < n; ++i) dst[i] = static_cast<Storage>(src[i]);
  }

  // Batch entry b, first n positions of a [batch, seq, ...] view, as a
  // batch-1 view. A null view stays null (offsetting it would be undefined;
  // the slice's checks then report it), as in lse_prefix.
  template <class U>
  static strided<U, 4> prefix(strided<U, 4> v, index b, index n) {
    if (v.data) v.data = v.data + b * v.strides[0];
    v.dims[0] = 1;
    v.dims[1] = n;
    return v;
  }
  // LSE [batch, heads, T] -> batch entry b, first n positions.
  static strided<float, 3> lse_prefix(strided<float, 3> v, index b, index n) {
    if (v.data) v.data = v.data + b * v.strides[0];
    v.dims[0] = 1;
    v.dims[2] = n;
    return v;
  }

  // Validates an append completely before anything is written.
  std::vector<index> checked_counts(const strided<const float, 4>& k,
                                    const strided<const float, 4>& v,
                                    const std::vector<index>& counts) const {
    constexpr const char* fn = "kv_cache::append";
    const index T = k.dims[1];
    const std::array<index, 4> kd{batch_, T, kv_heads_, head_dim_},
        vd{batch_, T, kv_heads_, v_head_dim_};
    detail::require(
        k.dims == kd, fn, "k_new", [&] { return "dims " + dims_text(kd); }, k.dims);
    detail::require(
        v.dims == vd, fn, "v_new", [&] { return "dims " + dims_text(vd); }, v.dims);
    detail::check_span(fn, "k_new", k);
    detail::check_span(fn, "v_new", v);
    detail::check_unit_last_stride(fn, "k_new/v_new strides[3]", k);
    detail::check_unit_last_stride(fn, "k_new/v_new strides[3]", v);
    detail::require((k.data || detail::has_zero_extent(k)) && (v.data || detail::has_zero_extent(v)),
                    fn, "k_new/v_new", "non-null views (null only without elements)", "null data");
    detail::require(
        counts.empty() || static_cast<index>(counts.size()) == batch_, fn, "counts.size()",
        [&] { return "0 or batch = " + std::to_string(batch_); }, counts.size());
    std::vector<index> n(static_cast<std::size_t>(batch_), T);
    for (index b = 0; b < batch_; ++b) {
      if (!counts.empty()) n[b] = counts[static_cast<std::size_t>(b)];
      if (n[b] < 0 || n[b] > T)
        detail::fail(fn, ("counts[" + std::to_string(b) + "]").c_str(),
                     "a value in [0, T = " + std::to_string(T) + "]", n[b]);
      if (lengths_[b] + n[b] > capacity_)
        detail::fail(fn, ("sequence " + std::to_string(b)).c_str(),
                     "at most capacity = " + std::to_string(capacity_) + " tokens after append",
                     std::to_string(lengths_[b]) + " + " + std::to_string(n[b]));
    }
    // The cache's storage is what append writes: it may not be read from.
    detail::check_disjoint(fn, {detail::region("keys()", keys()), detail::region("values()", values())},
                           {detail::region("k_new", k), detail::region("v_new", v)});
    return n;
  }
  template <std::size_t N>
  static std::string dims_text(const std::array<index, N>& d) {
    std::ostringstream s;
    detail::write(s, d);
    return s.str();
  }

  index batch_, capacity_, kv_heads_, head_dim_, v_head_dim_;
  core::huge_page_vector<Storage> keys_, values_;  // streamed whole by every step
  std::vector<index> lengths_;
};

}  // namespace ATTN_ABI
}  // namespace attn
