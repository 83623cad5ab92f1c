// attn/shared_prefix.hpp: attention of many sequences that share the first
// blocks of their paged caches (a system prompt, the prompt of parallel
// samples or beams), reading the shared blocks once (cascade attention).
//
// paged_attention reads a prefix shared by n sequences n times. Here the
// queries of all n attend to the prefix together, as one sequence of
// total_q queries (each K/V tile of the prefix is loaded once per query
// block and serves every sequence's queries), then each sequence attends to
// its own suffix, and the two partial results merge by their LSEs
// (attn/merge_states.hpp). The result equals paged_attention's up to fp32
// rounding (one more merge, in another order), not bit for bit.
//
// It applies when every query stands after the prefix (decoding and
// chunked prefill past a shared prompt), so that each one sees every prefix
// key, and the scores do not depend on the query's position: causal none or
// bottom-right, softcap and sinks, but no window, ALiBi or modifiers
// (use paged_attention for those).
#pragma once

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "attn/core/abi.hpp"
#include "attn/error.hpp"
#include "attn/merge_states.hpp"
#include "attn/overlap.hpp"
#include "attn/paged_attention.hpp"
#include "attn/sdpa_options.hpp"
#include "attn/view.hpp"

namespace attn {
inline namespace ATTN_ABI {

/// Attention of packed queries over a paged cache whose block tables all
/// begin with the same `prefix_blocks` blocks.
///
/// @param q             [total_q, heads_q, d_qk] float, as for paged_attention.
/// @param cu_seqlens_q  batch + 1 cumulative query counts.
/// @param kv            pools, tables and lengths; entries [0, prefix_blocks)
///                      of every table row are the same blocks, and every
///                      sequence holds at least prefix_blocks · block_size
///                      tokens before its queries.
/// @param prefix_blocks shared blocks, in [0, max_blocks].
/// @param out           [total_q, heads_q, d_v] float, written.
/// @param opt           scale, causal none or bottom_right, softcap, sinks,
///                      lse as [1, heads_q, total_q], threads.
/// @throws attn::error for everything paged_attention refuses, tables that
///         differ in the prefix, a sequence whose queries reach into the
///         prefix, or a window, ALiBi slopes or top-left causal; before
///         anything is written.
template <class KV>
void shared_prefix_attention(strided<const float, 3> q, const std::vector<index>& cu_seqlens_q,
                             const paged_kv_view<KV>& kv, index prefix_blocks,
                             strided<float, 3> out, const sdpa_options& opt = {}) {
  static_assert(detail::is_kv_scalar<KV>,
                "attn::shared_prefix_attention: the pools must hold float, Eigen::bfloat16 or "
                "Eigen::half");
  constexpr const char* fn = "shared_prefix_attention";
  const index B = detail::varlen::check_cu_seqlens(fn, "cu_seqlens_q", cu_seqlens_q, q.dims[0],
                                                   "total_q = q.dims[0]");
  const int block_shift = detail::paged::check_pool_and_tables(fn, kv, B);
  const index Hq = q.dims[1], Hkv = kv.key_pool.dims[2], d_qk = kv.key_pool.dims[3],
              d_v = kv.value_pool.dims[3], bs = kv.key_pool.dims[1], total_q = q.dims[0];
  detail::varlen::check_queries_and_output(fn, q, out, Hkv, d_qk, d_v);
  const float scale = detail::varlen::check_options(fn, opt, Hq, total_q, d_qk);
  detail::require(!opt.window && opt.alibi_slopes.empty() && opt.causal != causal::top_left, fn,
                  "opt", "no window, no ALiBi slopes and causal none or bottom_right (scores "
                  "that do not depend on the query's position)",
                  "a position-dependent option");
  const index max_blocks = kv.block_tables.dims[1];
  detail::require(prefix_blocks >= 0 && prefix_blocks <= max_blocks, fn, "prefix_blocks",
                  [&] { return "in [0, max_blocks = " + std::to_string(max_blocks) + "]"; },
                  prefix_blocks);
  const index P = prefix_blocks * bs;
  for (index b = 0; b < B; ++b) {
    const index L = cu_seqlens_q[b + 1] - cu_seqlens_q[b];
    detail::require(kv.seq_lens[b] - L >= P, fn, "kv.seq_lens",
                    [&] { return "every sequence's queries after the prefix of " +
                                 std::to_string(P) + " tokens"; },
                    [&] { return std::to_string(L) + " queries at length " +
                                 std::to_string(kv.seq_lens[b]) + " in sequence " +
                                 std::to_string(b); });
    for (index i = 0; i < prefix_blocks; ++i)
      detail::require(*kv.block_tables.at(b, i) == *kv.block_tables.at(0, i), fn,
                      "kv.block_tables", "the same prefix blocks in every row",
                      [&] { return "block " + std::to_string(*kv.block_tables.at(b, i)) +
                                   " at [" + std::to_string(b) + ", " + std::to_string(i) +
                                   "], " + std::to_string(*kv.block_tables.at(0, i)) +
                                   " in row 0"; });
  }
  detail::paged::check_outputs_disjoint(fn, q, cu_seqlens_q, kv, out, opt);
  if (total_q == 0) return;

  // Partial results [total_q, Hq, d_v] with their LSEs [1, Hq, total_q].
  std::vector<float> o_prefix(static_cast<std::size_t>(total_q * Hq * d_v)),
      o_suffix(o_prefix.size()), lse_prefix(static_cast<std::size_t>(Hq * total_q)),
      lse_suffix(lse_prefix.size());
  const auto packed = [&](std::vector<float>& o) {
    return strided<float, 3>{o.data(), {total_q, Hq, d_v}, {Hq * d_v, d_v, 1}};
  };
  const auto lse_view = [&](std::vector<float>& l) {
    return strided<float, 3>{l.data(), {1, Hq, total_q}, {Hq * total_q, total_q, 1}};
  };
  // As [rows, heads] for merge_states.
  const auto lse_rows = [&](const strided<float, 3>& l) {
    return strided<float, 2>{l.data, {total_q, Hq}, {l.strides[2], l.strides[1]}};
  };

  // 1. Every query against the prefix, as one sequence: all of them see all
  // of it, and no sink (the sink joins once, below). The heads_q / heads_kv
  // query heads of a group read the same K/V head and, with no per-head
  // option left (no sinks, ALiBi or window here), differ only in their
  // queries: they go in as rows of one head, so that each prefix tile is
  // loaded and widened once for group · total_q rows, a query block the
  // flash kernel fills, instead of once per head for total_q rows
  // (FlashAttention's "pack GQA").
  const index group = Hq / Hkv, rows = total_q * group;
  std::vector<float> q_rows(static_cast<std::size_t>(rows * Hkv * d_qk)),
      o_rows(static_cast<std::size_t>(rows * Hkv * d_v)),
      lse_rows_of_prefix(static_cast<std::size_t>(Hkv * rows));
  // Query head g·group + j of token t is row t·group + j of K/V head g.
  for (index t = 0; t < total_q; ++t)
    for (index g = 0; g < Hkv; ++g)
      for (index j = 0; j < group; ++j)
        std::copy_n(q.at(t, g * group + j, 0), d_qk,
                    q_rows.data() + ((t * group + j) * Hkv + g) * d_qk);
  paged_kv_view<KV> prefix{kv.key_pool, kv.value_pool, kv.block_tables, {P}};
  prefix.block_tables.dims = {1, prefix_blocks};
  sdpa_options o1 = opt;
  o1.causal = causal::none;
  o1.sinks.clear();
  o1.lse = strided<float, 3>{lse_rows_of_prefix.data(), {1, Hkv, rows}, {Hkv * rows, rows, 1}};
  detail::paged::run(
      strided<const float, 3>{q_rows.data(), {rows, Hkv, d_qk}, {Hkv * d_qk, d_qk, 1}},
      strided<float, 3>{o_rows.data(), {rows, Hkv, d_v}, {Hkv * d_v, d_v, 1}}, {0, rows}, prefix,
      block_shift, o1, scale, score_modifiers<>{});
  for (index t = 0; t < total_q; ++t)
    for (index g = 0; g < Hkv; ++g)
      for (index j = 0; j < group; ++j) {
        const index r = t * group + j, h = g * group + j;
        std::copy_n(o_rows.data() + (r * Hkv + g) * d_v, d_v,
                    o_prefix.data() + (t * Hq + h) * d_v);
        lse_prefix[static_cast<std::size_t>(h * total_q + t)] =
            lse_rows_of_prefix[static_cast<std::size_t>(g * rows + r)];
      }

  // 2. Each sequence against its own blocks past the prefix: the same
  // bottom-right alignment on the shorter lengths.
  paged_kv_view<KV> suffix = kv;
  suffix.block_tables.data = kv.block_tables.data + prefix_blocks * kv.block_tables.strides[1];
  suffix.block_tables.dims[1] = max_blocks - prefix_blocks;
  for (index& n : suffix.seq_lens) n -= P;
  sdpa_options o2 = opt;
  o2.lse = lse_view(lse_suffix);
  detail::paged::run(q, packed(o_suffix), cu_seqlens_q, suffix, block_shift, o2, scale,
                     score_modifiers<>{});

  // 3. Merged by LSE.
  const strided<float, 3> op = packed(o_prefix), os = packed(o_suffix);
  merge_states(op.as_const(), lse_rows(lse_view(lse_prefix)).as_const(), os.as_const(),
               lse_rows(lse_view(lse_suffix)).as_const(), out,
               opt.lse.empty() ? strided<float, 2>{} : lse_rows(opt.lse), opt.num_threads);
}

}  // namespace ATTN_ABI
}  // namespace attn
