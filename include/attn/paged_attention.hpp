// attn/paged_attention.hpp: attention of packed variable-length queries over
// a paged K/V cache the caller owns (FlashAttention's block_table, vLLM's
// and FlashInfer's paged layout).
//
// Keys and values live in a pool of fixed-size blocks, [num_blocks,
// block_size, heads_kv, dim]; sequence b's token j is in block
// block_tables[b][j / block_size] at slot j % block_size. A server with its
// own memory manager passes its pool and tables here; attn/paged_kv_cache.hpp
// is a pool attn manages itself, on the same kernels.
//
// The queries are packed as for attn::varlen_attention, [total_q, heads_q,
// d_qk] with cu_seqlens_q: sequence b's L_b queries are its last L_b of
// seq_lens[b] positions (the tokens just appended), with causal and window
// alignment measured on its own lengths. The batch may mix chunks of
// prefill and single-token decodes.
//
// Float K/V give the bits of varlen_attention (and of
// scaled_dot_product_attention on one sequence) over the same tokens: the
// kernels read the same values in the same order, only from other addresses.
// Batch invariance holds as for varlen (docs/design.md, "Batch invariance").
#pragma once

#include <Eigen/Core>
#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

#include "attn/core/abi.hpp"
#define ATTN_DETAIL_ALLOWED  // lets the detail headers in (docs/design.md)
#include "attn/detail/kv_rows.hpp"
#include "attn/error.hpp"
#include "attn/overlap.hpp"
#include "attn/score_mod.hpp"
#include "attn/sdpa_options.hpp"
#include "attn/varlen.hpp"
#include "attn/view.hpp"

namespace attn {

/// A paged K/V cache owned by the caller: the pools, the block tables and
/// each sequence's length. Nothing is copied; the views must stay valid for
/// the call.
template <class KV>
struct paged_kv_view {
  /// [num_blocks, block_size, heads_kv, d_qk]; block_size a power of two.
  strided<const KV, 4> key_pool;
  /// [num_blocks, block_size, heads_kv, d_v].
  strided<const KV, 4> value_pool;
  /// [batch, max_blocks]: sequence b's physical blocks in logical order;
  /// entries past its first ceil(seq_lens[b] / block_size) are not read.
  strided<const std::int32_t, 2> block_tables;
  /// [batch]: tokens in each sequence's cache, the new queries' own included.
  std::vector<index> seq_lens;
};

namespace detail::paged {
// (In the ISA namespace: run() calls the kernels, see attn/core/abi.hpp.)
inline namespace ATTN_ABI {

/// True for 1, 2, 4, ...
inline bool is_power_of_two(index n) { return n > 0 && (n & (n - 1)) == 0; }

inline int log2_of(index n) {
  int s = 0;
  while ((index{1} << s) < n) ++s;
  return s;
}

/// The checks of a pool and its tables for `batch` sequences, before any
/// write: pools of one shape, a power-of-two block size, lengths the
/// tables cover, every needed table entry inside the pool and no block
/// twice in one sequence. Returns log2(block_size). `arg` prefixes the
/// names in messages ("kv" for the view argument).
template <class KV>
int check_pool_and_tables(const char* fn, const paged_kv_view<KV>& kv, index batch) {
  const auto& kp = kv.key_pool;
  const auto& vp = kv.value_pool;
  varlen::check_packed(fn, "kv.key_pool", "kv.key_pool.strides[3]", kp);
  varlen::check_packed(fn, "kv.value_pool", "kv.value_pool.strides[3]", vp);
  const index blocks = kp.dims[0], bs = kp.dims[1], Hkv = kp.dims[2];
  require(is_power_of_two(bs), fn, "kv.key_pool.dims[1] (block_size)", "a power of two", bs);
  require(Hkv >= 1, fn, "kv.key_pool.dims[2] (heads_kv)", ">= 1", Hkv);
  require(kp.dims[3] >= 1, fn, "kv.key_pool.dims[3] (d_qk)", ">= 1", kp.dims[3]);
  require(vp.dims[0] == blocks && vp.dims[1] == bs && vp.dims[2] == Hkv && vp.dims[3] >= 1, fn,
          "kv.value_pool",
          [&] { return dims_note(std::array<index, 4>{blocks, bs, Hkv, vp.dims[3]},
                                 "[num_blocks, block_size, heads_kv, d_v >= 1]"); },
          vp.dims);

  const auto& t = kv.block_tables;
  check_non_null(fn, "kv.block_tables", t);
  check_non_negative_dims(fn, "kv.block_tables", t);
  check_span(fn, "kv.block_tables", t);
  check_unit_last_stride(fn, "kv.block_tables.strides[1]", t, short_rows::any_stride);
  require(t.dims[0] == batch, fn, "kv.block_tables.dims[0] (batch)", batch, t.dims[0]);
  require(static_cast<index>(kv.seq_lens.size()) == batch, fn, "kv.seq_lens.size()",
          [&] { return "batch = " + std::to_string(batch); }, kv.seq_lens.size());
  const index max_blocks = t.dims[1];
  std::vector<char> used(static_cast<std::size_t>(blocks), 0);
  for (index b = 0; b < batch; ++b) {
    const index n = kv.seq_lens[b];
    require(n >= 0 && n <= max_blocks * bs, fn, "kv.seq_lens",
            [&] { return "entries in [0, max_blocks * block_size = " +
                         std::to_string(max_blocks * bs) + "]"; },
            [&] { return std::to_string(n) + " at entry " + std::to_string(b); });
    const index needed = ceil_div(n, bs);
    for (index i = 0; i < needed; ++i) {
      const index block = *t.at(b, i);
      const auto at = [&] {
        return std::to_string(block) + " at [" + std::to_string(b) + ", " + std::to_string(i) +
               "]";
      };
      require(block >= 0 && block < blocks, fn, "kv.block_tables",
              [&] { return "entries in [0, num_blocks = " + std::to_string(blocks) + ")"; }, at);
      require(!used[block], fn, "kv.block_tables",
              "no block twice in one sequence's table", [&] { return at() + " (repeated)"; });
      used[block] = 1;
    }
    for (index i = 0; i < needed; ++i) used[*t.at(b, i)] = 0;
  }
  return log2_of(bs);
}

/// Sequence b's rows of one pool.
template <class KV>
paged_rows<KV> sequence_rows(const strided<const KV, 4>& pool,
                             const strided<const std::int32_t, 2>& tables, int block_shift,
                             index b, index n) {
  paged_rows<KV> r;
  r.pool = pool.data;
  r.pool_strides = pool.strides;
  r.tables = n > 0 ? tables.at(b, 0) : nullptr;
  r.table_stride = 0;  // a batch of one: b is always 0 in the kernels
  r.block_shift = block_shift;
  r.dims = {1, n, pool.dims[2], pool.dims[3]};
  return r;
}

/// The outputs (out, opt.lse) share no memory with the inputs.
template <class KV>
void check_outputs_disjoint(const char* fn, const strided<const float, 3>& q,
                            const std::vector<index>& cu_seqlens_q, const paged_kv_view<KV>& kv,
                            const strided<float, 3>& out, const sdpa_options& opt) {
  check_disjoint(fn, {region("out", out), region("opt.lse", opt.lse)},
                 {region("q", q), region("kv.key_pool", kv.key_pool),
                  region("kv.value_pool", kv.value_pool),
                  region("kv.block_tables", kv.block_tables), region("kv.seq_lens", kv.seq_lens),
                  region("cu_seqlens_q", cu_seqlens_q)});
}

/// The attention of the packed queries over checked pools and tables.
template <class KV, class ScoreMod, class MaskMod>
void run(const strided<const float, 3>& q, const strided<float, 3>& out,
         const std::vector<index>& cu_seqlens_q, const paged_kv_view<KV>& kv, int block_shift,
         const sdpa_options& opt, float scale, const score_modifiers<ScoreMod, MaskMod>& mods) {
  varlen::run<paged_rows<KV>>(q, out, cu_seqlens_q, kv.seq_lens, opt, scale, mods, [&](index b) {
    const index n = kv.seq_lens[b];
    return std::make_pair(sequence_rows(kv.key_pool, kv.block_tables, block_shift, b, n),
                          sequence_rows(kv.value_pool, kv.block_tables, block_shift, b, n));
  });
}

}  // namespace ATTN_ABI
}  // namespace detail::paged

inline namespace ATTN_ABI {

/// Attention of packed variable-length queries over a paged K/V cache.
///
/// @param q            [total_q, heads_q, d_qk] float: every sequence's new
///                     queries, packed.
/// @param cu_seqlens_q batch + 1 cumulative query counts: sequence b's
///                     queries are rows [cu_seqlens_q[b], cu_seqlens_q[b+1])
///                     and stand at its last positions.
/// @param kv           the pools, block tables and lengths (paged_kv_view).
/// @param out          [total_q, heads_q, d_v] float, written; shares no
///                     memory with the inputs or opt.lse.
/// @param opt          as for varlen_attention: scale, causal (bottom-right
///                     on each sequence's own lengths is what decoding
///                     needs), window, softcap, ALiBi, sinks, lse as
///                     [1, heads_q, total_q], threads; no key_lengths or
///                     dense masks.
/// @throws attn::error on any shape, stride or option mismatch, a table
///         entry outside the pool or repeated within a sequence, a length
///         past its table, or an output overlapping an input, before
///         anything is written.
template <class KV>
void paged_attention(strided<const float, 3> q, const std::vector<index>& cu_seqlens_q,
                     const paged_kv_view<KV>& kv, strided<float, 3> out,
                     const sdpa_options& opt = {}) {
  paged_attention(q, cu_seqlens_q, kv, out, score_modifiers<>{}, opt);
}

/// paged_attention with a score_mod and a mask_mod (attn/score_mod.hpp); they
/// see b, q_idx and kv_idx as for varlen_attention.
template <class KV, class ScoreMod, class MaskMod>
void paged_attention(strided<const float, 3> q, const std::vector<index>& cu_seqlens_q,
                     const paged_kv_view<KV>& kv, strided<float, 3> out,
                     const score_modifiers<ScoreMod, MaskMod>& mods,
                     const sdpa_options& opt = {}) {
  static_assert(detail::is_kv_scalar<KV>,
                "attn::paged_attention: the pools must hold float, Eigen::bfloat16 or Eigen::half");
  constexpr const char* fn = "paged_attention";
  const index B = detail::varlen::check_cu_seqlens(fn, "cu_seqlens_q", cu_seqlens_q, q.dims[0],
                                                   "total_q = q.dims[0]");
  const int block_shift = detail::paged::check_pool_and_tables(fn, kv, B);
  const index Hkv = kv.key_pool.dims[2], d_qk = kv.key_pool.dims[3], d_v = kv.value_pool.dims[3];
  detail::varlen::check_queries_and_output(fn, q, out, Hkv, d_qk, d_v);
  const float scale = detail::varlen::check_options(fn, opt, q.dims[1], q.dims[0], d_qk);
  detail::paged::check_outputs_disjoint(fn, q, cu_seqlens_q, kv, out, opt);
  detail::paged::run(q, out, cu_seqlens_q, kv, block_shift, opt, scale, mods);
}

}  // namespace ATTN_ABI
}  // namespace attn
