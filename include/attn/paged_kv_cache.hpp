// attn/paged_kv_cache.hpp: a key/value cache of many sequences in a pool of
// fixed-size blocks, for serving (vLLM's block manager, in one class).
//
// The pool holds num_blocks blocks of block_size tokens, keys and values
// [num_blocks, block_size, kv_heads, dim] in float, Eigen::bfloat16 or
// Eigen::half, allocated once: memory is bounded by the pool, and a sequence
// takes blocks as it grows and returns them when it is truncated or freed,
// without moving anyone else's data. Each sequence has a block table, its
// blocks in logical order.
//
// fork() starts a sequence that shares another's blocks (a system prompt,
// beam search, parallel sampling) by reference count; the first append to a
// shared, partly filled last block copies that block first (copy-on-write),
// so neither side ever sees the other's new tokens.
//
// attend() runs attn::paged_attention over the listed sequences with
// bottom-right causal alignment on each one's own length. Every operation
// validates completely before it changes anything: after an attn::error the
// pool, the tables, the lengths and the free list are exactly as they were.
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <cstdint>
#include <limits>
#include <map>
#include <string>
#include <type_traits>
#include <vector>

#include "attn/core/abi.hpp"
#include "attn/core/aligned.hpp"
#include "attn/error.hpp"
#include "attn/overlap.hpp"
#include "attn/paged_attention.hpp"
#include "attn/score_mod.hpp"
#include "attn/sdpa_checks.hpp"
#include "attn/size_checks.hpp"
#include "attn/view.hpp"

namespace attn {

// attend() runs the ISA-specific kernels: see attn/core/abi.hpp.
inline namespace ATTN_ABI {

/// A pool of K/V blocks shared by many sequences (see the file comment).
/// Storage: float, Eigen::bfloat16 or Eigen::half; values are rounded to it
/// on append. Not thread-safe for concurrent changes; attend() only reads.
template <class Storage>
class paged_kv_cache {
  static_assert(detail::is_kv_scalar<Storage>,
                "attn::paged_kv_cache: Storage must be float, Eigen::bfloat16 or Eigen::half");

 public:
  /// A sequence's handle. Handles are never reused, so a freed one stays
  /// invalid.
  using sequence_id = index;

  /// @param num_blocks blocks in the pool (< 2^31).
  /// @param block_size tokens per block, a power of two (16, 32, 64, ...).
  /// @param kv_heads   K/V heads.
  /// @param head_dim   key head dim d_qk.
  /// @param v_head_dim value head dim d_v; -1 = head_dim.
  /// @throws attn::error for sizes out of range or a pool that does not fit
  ///         the address space.
  paged_kv_cache(index num_blocks, index block_size, index kv_heads, index head_dim,
                 index v_head_dim = -1)
      : num_blocks_(num_blocks),
        block_size_(block_size),
        kv_heads_(kv_heads),
        head_dim_(head_dim),
        v_head_dim_(v_head_dim < 0 ? head_dim : v_head_dim) {
    constexpr const char* fn = "paged_kv_cache";
    detail::require(num_blocks >= 0 && num_blocks <= std::numeric_limits<std::int32_t>::max(),
                    fn, "num_blocks", "in [0, 2^31)", num_blocks);
    detail::require(detail::paged::is_power_of_two(block_size), fn, "block_size",
                    "a power of two", block_size);
    detail::require(kv_heads >= 1, fn, "kv_heads", ">= 1", kv_heads);
    detail::require(head_dim >= 1, fn, "head_dim", ">= 1", head_dim);
    const index per_token = std::max(head_dim_, v_head_dim_);
    detail::check_size<Storage>(fn, "block_size", {block_size, kv_heads, per_token},
                                "block_size · kv_heads · head_dim (one block)", block_size);
    detail::check_size<Storage>(fn, "num_blocks", {num_blocks, block_size, kv_heads, per_token},
                                "num_blocks · block_size · kv_heads · head_dim", num_blocks);
    keys_.resize(static_cast<std::size_t>(num_blocks * block_size * kv_heads * head_dim_));
    values_.resize(static_cast<std::size_t>(num_blocks * block_size * kv_heads * v_head_dim_));
    refs_.assign(static_cast<std::size_t>(num_blocks), 0);
    // A stack: block 0 is handed out first.
    for (index i = num_blocks - 1; i >= 0; --i) free_.push_back(static_cast<std::int32_t>(i));
  }

  index num_blocks() const { return num_blocks_; }   ///< blocks in the pool
  index block_size() const { return block_size_; }   ///< tokens per block
  index kv_heads() const { return kv_heads_; }       ///< K/V heads
  index head_dim() const { return head_dim_; }       ///< key head dim d_qk
  index v_head_dim() const { return v_head_dim_; }   ///< value head dim d_v
  /// Blocks no sequence holds.
  index free_blocks() const { return static_cast<index>(free_.size()); }
  /// Blocks held by at least one sequence (a shared block counts once).
  index used_blocks() const { return num_blocks_ - free_blocks(); }
  /// Bytes of the pool's K and V storage.
  std::size_t bytes() const { return (keys_.size() + values_.size()) * sizeof(Storage); }

  /// The whole key pool, [num_blocks, block_size, kv_heads, head_dim].
  strided<const Storage, 4> key_pool() const { return pool_view(keys_.data(), head_dim_); }
  /// The whole value pool, [num_blocks, block_size, kv_heads, v_head_dim].
  strided<const Storage, 4> value_pool() const { return pool_view(values_.data(), v_head_dim_); }

  /// True while `s` is a live sequence.
  bool contains(sequence_id s) const { return seqs_.count(s) != 0; }
  /// Live sequences, in the order they were added.
  std::vector<sequence_id> sequences() const {
    std::vector<sequence_id> ids;
    for (const auto& e : seqs_) ids.push_back(e.first);
    return ids;
  }
  /// Tokens held by sequence s.
  index length(sequence_id s) const { return get("paged_kv_cache::length", s).length; }
  /// Sequence s's blocks in logical order.
  const std::vector<std::int32_t>& block_table(sequence_id s) const {
    return get("paged_kv_cache::block_table", s).blocks;
  }
  /// Sequences holding block `block` (0 for a free block).
  index references(index block) const {
    detail::require(block >= 0 && block < num_blocks_, "paged_kv_cache::references", "block",
                    [&] { return "in [0, num_blocks = " + std::to_string(num_blocks_) + ")"; },
                    block);
    return refs_[static_cast<std::size_t>(block)];
  }

  /// A new, empty sequence (it takes no block until it is appended to).
  sequence_id add_sequence() {
    seqs_.emplace(next_id_, sequence{});
    return next_id_++;
  }

  /// A new sequence holding src's tokens, sharing all of src's blocks.
  /// @throws attn::error if src is not a live sequence.
  sequence_id fork(sequence_id src) {
    const sequence copy = get("paged_kv_cache::fork", src);
    for (std::int32_t block : copy.blocks) ++refs_[static_cast<std::size_t>(block)];
    seqs_.emplace(next_id_, copy);
    return next_id_++;
  }

  /// Ends sequence s; blocks no other sequence holds return to the pool.
  /// @throws attn::error if s is not a live sequence.
  void free(sequence_id s) {
    get("paged_kv_cache::free", s);
    release_from(seqs_.at(s), 0);
    seqs_.erase(s);
  }

  /// Forgets sequence s's tokens from position `length` on (speculative
  /// decoding rolls back this way); blocks past the new length are released.
  /// @throws attn::error unless s is live and 0 <= length <= length(s).
  void truncate(sequence_id s, index length) {
    constexpr const char* fn = "paged_kv_cache::truncate";
    const sequence& q = get(fn, s);
    detail::require(length >= 0 && length <= q.length, fn, "length",
                    [&] { return "in [0, length(s) = " + std::to_string(q.length) + "]"; },
                    length);
    sequence& w = seqs_.at(s);
    release_from(w, detail::ceil_div(length, block_size_));
    w.length = length;
  }

  /// Appends T tokens to sequence s: k_new [T, kv_heads, head_dim],
  /// v_new [T, kv_heads, v_head_dim].
  /// @throws attn::error on a shape mismatch, a dead sequence, too few free
  ///         blocks, or k_new/v_new inside the pool; nothing changes then.
  void append(sequence_id s, strided<const float, 3> k_new, strided<const float, 3> v_new) {
    append(std::vector<sequence_id>{s}, k_new, v_new, std::vector<index>{0, k_new.dims[0]});
  }

  /// Appends to several sequences at once: sequence seqs[i] takes rows
  /// [cu_seqlens[i], cu_seqlens[i + 1]) of k_new [total, kv_heads, head_dim]
  /// and v_new [total, kv_heads, v_head_dim]. The sequences are distinct.
  /// @throws attn::error as the single append, for cumulative lengths that
  ///         do not fit k_new, or for a sequence listed twice; nothing
  ///         changes then (all sequences are checked, and the free blocks
  ///         counted, before the first row is written).
  void append(const std::vector<sequence_id>& seqs, strided<const float, 3> k_new,
              strided<const float, 3> v_new, const std::vector<index>& cu_seqlens) {
    constexpr const char* fn = "paged_kv_cache::append";
    check_new_rows(fn, "k_new", k_new, head_dim_);
    check_new_rows(fn, "v_new", v_new, v_head_dim_);
    detail::require(v_new.dims[0] == k_new.dims[0], fn, "v_new.dims[0]", k_new.dims[0],
                    v_new.dims[0]);
    const index B = detail::varlen::check_cu_seqlens(fn, "cu_seqlens", cu_seqlens,
                                                     k_new.dims[0], "k_new.dims[0]");
    detail::require(static_cast<index>(seqs.size()) == B, fn, "seqs.size()",
                    [&] { return "cu_seqlens.size() - 1 = " + std::to_string(B); }, seqs.size());
    index blocks_wanted = 0;
    // Copies of shared partial blocks, counted in the order the appends make
    // them: a copy drops the block's count, so of two listed holders of a
    // block no one else holds, only the first copies it.
    std::map<std::int32_t, index> copied;
    for (index i = 0; i < B; ++i) {
      const sequence& q = get(fn, seqs[i]);
      for (index j = 0; j < i; ++j)
        detail::require(seqs[j] != seqs[i], fn, "seqs", "distinct sequences",
                        [&] { return std::to_string(seqs[i]) + " twice"; });
      const index n = cu_seqlens[i + 1] - cu_seqlens[i];
      if (n == 0) continue;
      blocks_wanted += blocks_past_last(q, n);
      if (q.length % block_size_ != 0) {
        const std::int32_t b = q.blocks[static_cast<std::size_t>(q.length / block_size_)];
        index& done = copied[b];
        if (refs_[static_cast<std::size_t>(b)] - done > 1) {
          ++done;
          ++blocks_wanted;
        }
      }
    }
    detail::require(blocks_wanted <= free_blocks(), fn, "the pool",
                    [&] { return std::to_string(blocks_wanted) + " free blocks for this append"; },
                    [&] { return std::to_string(free_blocks()) + " free"; });
    detail::check_disjoint(fn, {detail::region("key_pool()", key_pool()),
                                detail::region("value_pool()", value_pool())},
                           {detail::region("k_new", k_new), detail::region("v_new", v_new)});

    for (index i = 0; i < B; ++i) {
      sequence& q = seqs_.at(seqs[i]);
      const index n = cu_seqlens[i + 1] - cu_seqlens[i];
      if (n == 0) continue;
      copy_shared_partial_block(q);
      while (static_cast<index>(q.blocks.size()) * block_size_ < q.length + n)
        q.blocks.push_back(take_block());
      for (index t = 0; t < n; ++t, ++q.length)
        for (index h = 0; h < kv_heads_; ++h) {
          const index row = cu_seqlens[i] + t;
          copy_row(k_new.data + row * k_new.strides[0] + h * k_new.strides[1],
                   slot(keys_, q, q.length, h, head_dim_), head_dim_);
          // v_head_dim 0: v_new may have null data, and null + offset is UB.
          if (v_head_dim_ > 0)
            copy_row(v_new.data + row * v_new.strides[0] + h * v_new.strides[1],
                     slot(values_, q, q.length, h, v_head_dim_), v_head_dim_);
        }
    }
  }

  /// Attention of the new queries of the listed sequences over their
  /// cached tokens: q [total_q, heads_q, head_dim] packed by cu_seqlens_q
  /// (sequence seqs[i]'s rows are its last cu_seqlens_q[i+1] -
  /// cu_seqlens_q[i] tokens, already appended), out [total_q, heads_q,
  /// v_head_dim]. Bottom-right causal on each sequence's length; opt as for
  /// kv_cache::attend (scale, window, softcap, ALiBi, sinks, lse as
  /// [1, heads_q, total_q], threads; causal, key_lengths and dense masks
  /// unset). A sequence may be listed more than once.
  /// @throws attn::error on a dead sequence, more queries than its tokens,
  ///         shape or option mismatches, or out/lse overlapping an input,
  ///         before anything is written.
  void attend(const std::vector<sequence_id>& seqs, strided<const float, 3> q,
              const std::vector<index>& cu_seqlens_q, strided<float, 3> out,
              const sdpa_options& opt = {}) const {
    attend(seqs, q, cu_seqlens_q, out, score_modifiers<>{}, opt);
  }

  /// attend() with a score_mod and a mask_mod; they see b = the index into
  /// seqs, q_idx = the query's position in its sequence and kv_idx = the
  /// key's position, so decoding gives the scores of a full forward.
  template <class ScoreMod, class MaskMod>
  void attend(const std::vector<sequence_id>& seqs, strided<const float, 3> q,
              const std::vector<index>& cu_seqlens_q, strided<float, 3> out,
              const score_modifiers<ScoreMod, MaskMod>& mods, const sdpa_options& opt = {}) const {
    constexpr const char* fn = "paged_kv_cache::attend";
    detail::check_cache_options(fn, "opt", opt);
    const index B = detail::varlen::check_cu_seqlens(fn, "cu_seqlens_q", cu_seqlens_q, q.dims[0],
                                                     "total_q = q.dims[0]");
    detail::require(static_cast<index>(seqs.size()) == B, fn, "seqs.size()",
                    [&] { return "cu_seqlens_q.size() - 1 = " + std::to_string(B); },
                    seqs.size());
    paged_kv_view<Storage> kv;
    kv.key_pool = key_pool();
    kv.value_pool = value_pool();
    kv.seq_lens.resize(static_cast<std::size_t>(B));
    index max_blocks = 0;
    for (index i = 0; i < B; ++i) {
      const sequence& s = get(fn, seqs[i]);
      const index L = cu_seqlens_q[i + 1] - cu_seqlens_q[i];
      detail::require(L <= s.length, fn, "cu_seqlens_q",
                      [&] { return "at most length(seqs[" + std::to_string(i) + "]) = " +
                                   std::to_string(s.length) + " queries"; },
                      L);
      kv.seq_lens[i] = s.length;
      max_blocks = std::max(max_blocks, static_cast<index>(s.blocks.size()));
    }
    // The tables of this call, [B, max_blocks]; the cache's own tables are
    // valid by construction, so only the queries' side is checked below.
    std::vector<std::int32_t> tables(static_cast<std::size_t>(B * max_blocks), 0);
    for (index i = 0; i < B; ++i) {
      const auto& blocks = seqs_.at(seqs[i]).blocks;
      std::copy(blocks.begin(), blocks.end(), tables.begin() + i * max_blocks);
    }
    kv.block_tables = {tables.data(), {B, max_blocks}, {max_blocks, 1}};
    sdpa_options o = opt;
    o.causal = causal::bottom_right;
    detail::varlen::check_queries_and_output(fn, q, out, kv_heads_, head_dim_, v_head_dim_);
    const float scale = detail::varlen::check_options(fn, o, q.dims[1], q.dims[0], head_dim_);
    detail::check_disjoint(fn, {detail::region("out", out), detail::region("opt.lse", opt.lse)},
                           {detail::region("q", q), detail::region("key_pool()", kv.key_pool),
                            detail::region("value_pool()", kv.value_pool),
                            detail::region("seqs", seqs),
                            detail::region("cu_seqlens_q", cu_seqlens_q)});
    detail::paged::run(q, out, cu_seqlens_q, kv, detail::paged::log2_of(block_size_), o, scale,
                       mods);
  }

 private:
  struct sequence {
    std::vector<std::int32_t> blocks;  // physical blocks in logical order
    index length = 0;                  // tokens held
  };

  const sequence& get(const char* fn, sequence_id s) const {
    const auto it = seqs_.find(s);
    if (it == seqs_.end())
      detail::fail(fn, "sequence", "a live sequence (added or forked, not freed)",
                   std::to_string(s));
    return it->second;
  }

  strided<const Storage, 4> pool_view(const Storage* data, index dim) const {
    strided<const Storage, 4> v;
    v.data = data;
    v.dims = {num_blocks_, block_size_, kv_heads_, dim};
    v.strides = detail::dense_strides(v.dims);
    return v;
  }

  void check_new_rows(const char* fn, const char* arg, const strided<const float, 3>& t,
                      index dim) const {
    detail::varlen::check_packed(fn, arg, arg, t);
    const std::array<index, 3> want{t.dims[0], kv_heads_, dim};
    detail::require(t.dims == want, fn, arg,
                    [&] { return detail::dims_note(want, "[tokens, kv_heads, dim]"); }, t.dims);
  }

  // New blocks an append of n tokens takes past the sequence's last block
  // (a copy of a shared partial block is counted by the caller).
  index blocks_past_last(const sequence& s, index n) const {
    const index have = static_cast<index>(s.blocks.size());
    return std::max<index>(detail::ceil_div(s.length + n, block_size_) - have, 0);
  }
  bool shares_partial_block(const sequence& s) const {
    return s.length % block_size_ != 0 &&
           refs_[static_cast<std::size_t>(s.blocks[static_cast<std::size_t>(
               s.length / block_size_)])] > 1;
  }

  // Copy-on-write: before appending into a partly filled block that another
  // sequence also holds, give this sequence its own copy of it.
  void copy_shared_partial_block(sequence& s) {
    if (!shares_partial_block(s)) return;
    const std::size_t at = static_cast<std::size_t>(s.length / block_size_);
    const std::int32_t old_block = s.blocks[at], new_block = take_block();
    const index used = s.length % block_size_;
    copy_slots(keys_, old_block, new_block, used, head_dim_);
    copy_slots(values_, old_block, new_block, used, v_head_dim_);
    --refs_[static_cast<std::size_t>(old_block)];
    s.blocks[at] = new_block;
  }
  void copy_slots(core::huge_page_vector<Storage>& pool, std::int32_t from, std::int32_t to,
                  index slots, index dim) {
    const index per_block = block_size_ * kv_heads_ * dim;
    std::copy_n(pool.begin() + from * per_block, slots * kv_heads_ * dim,
                pool.begin() + to * per_block);
  }

  std::int32_t take_block() {
    const std::int32_t b = free_.back();
    free_.pop_back();
    refs_[static_cast<std::size_t>(b)] = 1;
    return b;
  }
  // Releases s's blocks from logical block `keep` on.
  void release_from(sequence& s, index keep) {
    while (static_cast<index>(s.blocks.size()) > keep) {
      const std::int32_t b = s.blocks.back();
      s.blocks.pop_back();
      if (--refs_[static_cast<std::size_t>(b)] == 0) free_.push_back(b);
    }
  }

  Storage* slot(core::huge_page_vector<Storage>& pool, const sequence& s, index j, index h,
                index dim) {
    const index block = s.blocks[static_cast<std::size_t>(j / block_size_)];
    return pool.data() + ((block * block_size_ + j % block_size_) * kv_heads_ + h) * dim;
  }
  static void copy_row(const float* src, Storage* dst, index n) {
    for (index i = 0; i < n; ++i) dst[i] = static_cast<Storage>(src[i]);
  }

  index num_blocks_, block_size_, kv_heads_, head_dim_, v_head_dim_;
  core::huge_page_vector<Storage> keys_, values_;  // streamed by every step
  std::vector<index> refs_;            // sequences holding each block
  std::vector<std::int32_t> free_;     // free blocks, a stack
  std::map<sequence_id, sequence> seqs_;
  sequence_id next_id_ = 0;
};

}  // namespace ATTN_ABI
}  // namespace attn
