// attn/mla_cache.hpp: the latent KV cache of multi-head latent attention.
//
// DeepSeek-V2/V3 cache one row per token instead of per-head keys and
// values: [RMSNorm(c_kv) (kv_lora_rank) │ rotated k_pe (rope_dim)], 576
// values for the V2/V3 shapes, shared by every head. Rows are stored
// [batch, capacity, kv_lora_rank + rope_dim] row-major in float,
// Eigen::bfloat16 or Eigen::half. As in attn::kv_cache, the capacity is
// fixed at creation (appending never reallocates), each sequence has its
// own length, and a call that fails changes nothing.
//
// The cache is written by attn::multi_head_latent_attention::forward; user
// code creates it, reads its size and rows, and rolls it back or clears it.
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include "attn/core/abi.hpp"
#include "attn/core/aligned.hpp"
#include "attn/core/index.hpp"
#include "attn/error.hpp"
#include "attn/size_checks.hpp"
#include "attn/view.hpp"

namespace attn {

// The cache's own members call no per-ISA code, but only
// multi_head_latent_attention, which is per-ISA (packed weights, the latent
// kernel), writes and reads it. It lives in the ISA namespace with the layer,
// as kv_cache does: passing a cache between units built with different -m
// flags then fails to link instead of mixing two builds (attn/core/abi.hpp).
inline namespace ATTN_ABI {

/// Per-token latent rows for multi_head_latent_attention (see the file
/// comment). Storage: float, Eigen::bfloat16 or Eigen::half; rows are
/// rounded to it when written. Not thread-safe for concurrent writes; one
/// cache belongs to one caller at a time.
template <class Storage>
class mla_cache {
  static_assert(std::is_same<Storage, float>::value ||
                    std::is_same<Storage, Eigen::bfloat16>::value ||
                    std::is_same<Storage, Eigen::half>::value,
                "attn::mla_cache: storage must be float, Eigen::bfloat16 or Eigen::half");

 public:
  /// @param batch         sequences held (>= 0).
  /// @param capacity      tokens each sequence can hold (>= 0, fixed).
  /// @param kv_lora_rank  width of the normalised latent c_kv (>= 1; 512 in
  ///                      DeepSeek-V2/V3).
  /// @param rope_dim      width of the rotated key part k_pe (>= 0; 64).
  /// @throws attn::error naming the argument when a size is out of range.
  mla_cache(index batch, index capacity, index kv_lora_rank, index rope_dim)
      : batch_(batch), capacity_(capacity), rank_(kv_lora_rank), rope_(rope_dim) {
    constexpr const char* fn = "mla_cache";
    detail::require(batch >= 0, fn, "batch", ">= 0", batch);
    detail::require(capacity >= 0, fn, "capacity", ">= 0", capacity);
    detail::require(kv_lora_rank >= 1, fn, "kv_lora_rank", ">= 1", kv_lora_rank);
    detail::require(rope_dim >= 0, fn, "rope_dim", ">= 0", rope_dim);
    // Sizes this machine can hold, checked before any of them is formed: the
    // row width (a sum that could overflow itself), the lengths, the rows.
    index width = 0;
    detail::require(core::checked_add(kv_lora_rank, rope_dim, width) &&
                        width <= core::max_elements<Storage>(),
                    fn, "rope_dim", "kv_lora_rank + rope_dim within the address space", rope_dim);
    detail::check_size<index>(fn, "batch", {batch}, "batch (the lengths)", batch);
    detail::check_size<Storage>(fn, "capacity", {batch, capacity, width},
                                "batch · capacity · (kv_lora_rank + rope_dim)", capacity);
    rows_.resize(static_cast<std::size_t>(batch * capacity * row_width()));
    lengths_.assign(static_cast<std::size_t>(batch), 0);
  }

  /// Sequences held.
  index batch() const { return batch_; }
  /// Tokens each sequence can hold.
  index capacity() const { return capacity_; }
  /// Width of the cached latent c_kv.
  index kv_lora_rank() const { return rank_; }
  /// Width of the cached rotated key part k_pe.
  index rope_dim() const { return rope_; }
  /// Values cached per token: kv_lora_rank + rope_dim (576 for V2/V3).
  index row_width() const { return rank_ + rope_; }
  /// Tokens held by each sequence.
  const std::vector<index>& lengths() const { return lengths_; }
  /// Bytes of row storage (the whole capacity).
  std::size_t bytes() const { return rows_.size() * sizeof(Storage); }
  /// Bytes one cached token takes: row_width() · sizeof(Storage).
  std::size_t bytes_per_token() const {
    return static_cast<std::size_t>(row_width()) * sizeof(Storage);
  }

  /// All rows as [batch, capacity, row_width]; positions at or past
  /// lengths()[b] hold nothing meaningful.
  strided<const Storage, 3> rows() const {
    strided<const Storage, 3> v;
    v.data = rows_.data();
    v.dims = {batch_, capacity_, row_width()};
    v.strides = {capacity_ * row_width(), row_width(), 1};
    return v;
  }

  /// Forgets every sequence's tokens (capacity stays).
  void clear() { std::fill(lengths_.begin(), lengths_.end(), 0); }

  /// Forgets sequence b's tokens from position `length` on.
  /// @throws attn::error unless 0 <= b < batch and 0 <= length <= lengths()[b].
  void truncate(index b, index length) {
    detail::require(
        b >= 0 && b < batch_, "mla_cache::truncate", "b",
        [&] { return "in [0, " + std::to_string(batch_) + ")"; }, b);
    detail::require(
        length >= 0 && length <= lengths_[static_cast<std::size_t>(b)], "mla_cache::truncate",
        "length",
        [&] {
          return "in [0, lengths()[b] = " + std::to_string(lengths_[static_cast<std::size_t>(b)]) +
                 "]";
        },
        length);
    lengths_[static_cast<std::size_t>(b)] = length;
  }

  /// Checks that every sequence has room for `tokens` more, before anything
  /// is computed or written. `fn` names the caller in the message.
  /// @throws attn::error naming the first sequence that would overflow.
  void require_room(index tokens, const char* fn) const {
    for (index b = 0; b < batch_; ++b) {
      const index n = lengths_[static_cast<std::size_t>(b)];
      if (n + tokens > capacity_)
        detail::fail(fn, "cache",
                     "room for " + std::to_string(tokens) + " more tokens (capacity " +
                         std::to_string(capacity_) + ")",
                     "sequence " + std::to_string(b) + " already at " + std::to_string(n));
    }
  }

  /// Writes T new rows per sequence from float sources and advances the
  /// lengths: row t of sequence b is [latent(b, t) │ rope(b, t)], where
  /// latent(b, t) points at kv_lora_rank floats and rope(b, t) at rope_dim.
  /// The caller has checked require_room(T); nothing here throws.
  template <class Latent, class Rope>
  void append_rows(index T, Latent latent, Rope rope) {
    const index w = row_width();
    for (index b = 0; b < batch_; ++b) {
      const index n = lengths_[static_cast<std::size_t>(b)];
      for (index t = 0; t < T; ++t) {
        Storage* dst = rows_.data() + (b * capacity_ + n + t) * w;
        const float* c = latent(b, t);
        const float* r = rope(b, t);
        for (index i = 0; i < rank_; ++i) dst[i] = static_cast<Storage>(c[i]);
        for (index i = 0; i < rope_; ++i) dst[rank_ + i] = static_cast<Storage>(r[i]);
      }
      lengths_[static_cast<std::size_t>(b)] = n + T;
    }
  }

 private:
  index batch_, capacity_, rank_, rope_;
  core::huge_page_vector<Storage> rows_;  // streamed whole by every step
  std::vector<index> lengths_;
};

}  // namespace ATTN_ABI
}  // namespace attn
