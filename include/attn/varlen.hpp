// attn/varlen.hpp: attention over a packed batch of variable-length
// sequences (FlashAttention's varlen interface).
//
// No padding: the queries of every sequence are packed one after another as
// q [total_q, heads_q, d_qk], sequence b owning rows [cu_seqlens_q[b],
// cu_seqlens_q[b + 1]), and its keys and values the same way with
// cu_seqlens_k. Each sequence attends only to its own keys, with the causal
// and window alignment measured on its own lengths (bottom-right: its last
// query sees its last key), which is what chunked prefill and decoding of
// a mixed batch need. attn/paged_attention.hpp reads the keys from a paged
// cache instead.
//
// Batch invariance: a sequence's output and LSE bits are those of the
// sequence alone, whatever else is in the batch, in any order, at any
// thread count (docs/design.md, "Batch invariance"); for float K/V they are
// also the bits of scaled_dot_product_attention on that sequence as a
// batch of one.
#pragma once

#include <Eigen/Core>
#include <string>
#include <type_traits>
#include <vector>

#include "attn/core/abi.hpp"
#define ATTN_DETAIL_ALLOWED  // lets the detail headers in (docs/design.md)
#include "attn/detail/batched_sequences.hpp"
#include "attn/detail/score_policy.hpp"
#include "attn/error.hpp"
#include "attn/overlap.hpp"
#include "attn/score_mod.hpp"
#include "attn/sdpa.hpp"
#include "attn/sdpa_checks.hpp"
#include "attn/sdpa_options.hpp"
#include "attn/size_checks.hpp"
#include "attn/view.hpp"

namespace attn {
namespace detail::varlen {
// (In the ISA namespace: run() calls the kernels, see attn/core/abi.hpp.)
inline namespace ATTN_ABI {

// cu [batch + 1] cumulative lengths: starts at 0, never decreases, ends at
// `total` (the packed extent). Returns the batch.
inline index check_cu_seqlens(const char* fn, const char* arg, const std::vector<index>& cu,
                              index total, const char* total_name) {
  require(!cu.empty() && cu.front() == 0, fn, arg, "a first entry 0 (batch + 1 entries)",
          cu.empty() ? std::string("no entries") : std::to_string(cu.front()));
  for (std::size_t b = 1; b < cu.size(); ++b)
    require(cu[b] >= cu[b - 1], fn, arg, "non-decreasing entries",
            [&] { return std::to_string(cu[b]) + " after " + std::to_string(cu[b - 1]) +
                         " at entry " + std::to_string(b); });
  require(cu.back() == total, fn, arg,
          [&] { return std::string("a last entry equal to ") + total_name + " = " +
                       std::to_string(total); },
          cu.back());
  return static_cast<index>(cu.size()) - 1;
}

// A packed [total, heads, dim] tensor (or a [blocks, block_size, heads, dim]
// pool) as the kernels take it: non-null, dims non-negative, addressable,
// contiguous rows.
template <class T, int R>
void check_packed(const char* fn, const char* arg, const char* strides_arg,
                  const strided<T, R>& t, short_rows rule = short_rows::unit_stride) {
  check_non_null(fn, arg, t);
  check_non_negative_dims(fn, arg, t);
  check_span(fn, arg, t);
  check_unit_last_stride(fn, strides_arg, t, rule);
}

// What the packed entries take from sdpa_options: sequences bring their own
// lengths, so key_lengths and the [B, Hq, L, S] dense masks are left unset;
// lse is [1, heads_q, total_q]. Returns the scale in use.
inline float check_options(const char* fn, const sdpa_options& opt, index Hq, index total_q,
                           index d_qk) {
  require(opt.key_lengths.empty() && opt.bool_mask.empty() && opt.additive_mask.empty(), fn,
          "opt", "no key_lengths or dense masks (each sequence's lengths come from the "
          "cumulative lengths; use a mask_mod for per-sequence masks)", "some given");
  const float scale = check_sdpa_options(fn, "opt", opt, 1, Hq, total_q, 0, d_qk);
  if (!opt.lse.empty()) {
    const std::array<index, 3> want{1, Hq, total_q};
    require(opt.lse.dims == want, fn, "opt.lse",
            [&] { return dims_note(want, "[1, heads_q, total_q]"); }, opt.lse.dims);
    check_span(fn, "opt.lse", opt.lse);
    check_non_overlapping(fn, "opt.lse.strides", opt.lse);
  }
  return scale;
}

// q and out: [total_q, heads_q, d_qk] and [total_q, heads_q, d_v].
inline void check_queries_and_output(const char* fn, const strided<const float, 3>& q,
                                     const strided<float, 3>& out, index Hkv, index d_qk,
                                     index d_v) {
  check_packed(fn, "q", "q.strides[2]", q);
  require(q.dims[2] == d_qk, fn, "q.dims[2] (d_qk)", d_qk, q.dims[2]);
  require(q.dims[1] >= 1 && q.dims[1] % Hkv == 0, fn, "q.dims[1] (heads_q)",
          [&] { return "a multiple of heads_kv = " + std::to_string(Hkv); }, q.dims[1]);
  require(d_v >= 1, fn, "d_v (value head dim)", ">= 1", d_v);
  check_packed(fn, "out", "out.strides[2]", out);
  const std::array<index, 3> want{q.dims[0], q.dims[1], d_v};
  require(out.dims == want, fn, "out", [&] { return dims_note(want, "[total_q, heads_q, d_v]"); },
          out.dims);
  check_non_overlapping(fn, "out.strides", out);
}

// Rows [first, first + n) of a packed [total, heads, dim] view as the batch-1
// view [1, n, heads, dim] the kernels take.
template <class T>
strided<T, 4> sequence_rows(const strided<T, 3>& t, index first, index n) {
  strided<T, 4> r;
  r.data = t.data && n > 0 ? t.data + first * t.strides[0] : t.data;
  r.dims = {1, n, t.dims[1], t.dims[2]};
  r.strides = {0, t.strides[0], t.strides[1], t.strides[2]};
  return r;
}

// The LSE [1, heads_q, total_q] entries of query rows [first, first + n).
inline strided<float, 3> sequence_lse(const strided<float, 3>& lse, index first, index n) {
  strided<float, 3> r = lse;
  if (r.data && n > 0) r.data += first * lse.strides[2];
  r.dims[2] = n;
  return r;
}

// Every sequence's batch-1 call over the packed queries and outputs: the
// keys of sequence b are rows_of(b) (a pair of K and V rows, S_b = its
// length), its queries the last L_b of its S_b positions. The modifiers see
// b, q_idx = the query's position in its sequence (S_b - L_b + i; i under
// top-left causal alignment) and kv_idx = the key's position.
template <class Rows, class ScoreMod, class MaskMod, class RowsOf>
void run(const strided<const float, 3>& q, const strided<float, 3>& out,
         const std::vector<index>& cu_seqlens_q, const std::vector<index>& seq_lens_k,
         const sdpa_options& opt, float scale, const score_modifiers<ScoreMod, MaskMod>& mods,
         RowsOf rows_of) {
  using policy = engine::score_policy<ScoreMod, MaskMod>;
  const index B = static_cast<index>(seq_lens_k.size());
  std::vector<sdpa::sequence_call<Rows, policy>> calls;
  calls.reserve(static_cast<std::size_t>(B));
  for (index b = 0; b < B; ++b) {
    const index first = cu_seqlens_q[b], L = cu_seqlens_q[b + 1] - first, S = seq_lens_k[b];
    sdpa_options o = opt;
    if (!opt.lse.empty()) o.lse = sequence_lse(opt.lse, first, L);
    const index q_offset = opt.causal == causal::top_left ? 0 : S - L;
    const auto kv = rows_of(b);
    calls.push_back({sequence_rows(q, first, L), kv.first, kv.second,
                     sequence_rows(out, first, L), std::move(o),
                     policy(opt, L, S, &mods.score_mod, &mods.mask_mod, b, q_offset), scale});
  }
  // The policies point at opt's per-head vectors, which outlive the calls;
  // each call's own options differ from opt only in lse.
  sdpa::run_sequences(calls, opt.num_threads);
}

}  // namespace ATTN_ABI
}  // namespace detail::varlen

inline namespace ATTN_ABI {

/// Attention over a packed batch of variable-length sequences.
///
/// @param q            [total_q, heads_q, d_qk] float: every sequence's
///                     queries, packed.
/// @param k            [total_k, heads_kv, d_qk] float, Eigen::bfloat16 or
///                     Eigen::half: every sequence's keys, packed.
/// @param v            [total_k, heads_kv, d_v], k's element type.
/// @param out          [total_q, heads_q, d_v] float, written; shares no
///                     memory with the inputs or opt.lse.
/// @param cu_seqlens_q batch + 1 cumulative query counts: sequence b's
///                     queries are rows [cu_seqlens_q[b], cu_seqlens_q[b+1]).
/// @param cu_seqlens_k the same for keys and values, batch + 1 entries.
/// @param opt          scale, causal (aligned on each sequence's own lengths),
///                     window, softcap, ALiBi slopes, sinks, lse as
///                     [1, heads_q, total_q], threads. key_lengths and dense
///                     masks stay unset: per-sequence masks are mask_mods.
///
/// A query row with no visible key gets output 0 and LSE -inf (the sink's
/// LSE when sinks are set). heads_kv divides heads_q (GQA).
/// @throws attn::error on any shape, stride, length or option mismatch, or
///         when an output overlaps an input or the other output, before
///         anything is written.
template <class KT, class VT>
void varlen_attention(strided<const float, 3> q, strided<KT, 3> k, strided<VT, 3> v,
                      strided<float, 3> out, const std::vector<index>& cu_seqlens_q,
                      const std::vector<index>& cu_seqlens_k, const sdpa_options& opt = {}) {
  varlen_attention(q, k, v, out, cu_seqlens_q, cu_seqlens_k, score_modifiers<>{}, opt);
}

/// varlen_attention with a score_mod and a mask_mod (attn/score_mod.hpp).
/// They see b = the sequence, q_idx = the query's position in its sequence
/// (S_b - L_b + i for query i of L_b against S_b keys, or i under top-left
/// causal alignment) and kv_idx = the key's position in its sequence.
template <class KT, class VT, class ScoreMod, class MaskMod>
void varlen_attention(strided<const float, 3> q, strided<KT, 3> k, strided<VT, 3> v,
                      strided<float, 3> out, const std::vector<index>& cu_seqlens_q,
                      const std::vector<index>& cu_seqlens_k,
                      const score_modifiers<ScoreMod, MaskMod>& mods,
                      const sdpa_options& opt = {}) {
  using KV = std::remove_const_t<KT>;
  static_assert(std::is_same<KV, std::remove_const_t<VT>>::value,
                "attn::varlen_attention: k and v must have the same element type");
  static_assert(detail::is_kv_scalar<KV>,
                "attn::varlen_attention: k/v must be float, Eigen::bfloat16 or Eigen::half");
  constexpr const char* fn = "varlen_attention";
  detail::varlen::check_packed(fn, "k", "k.strides[2]", k);
  detail::varlen::check_packed(fn, "v", "v.strides[2]", v);
  const index Hkv = k.dims[1], d_qk = k.dims[2], d_v = v.dims[2];
  detail::require(Hkv >= 1, fn, "k.dims[1] (heads_kv)", ">= 1", Hkv);
  detail::require(d_qk >= 1, fn, "k.dims[2] (d_qk)", ">= 1", d_qk);
  detail::require(v.dims[0] == k.dims[0] && v.dims[1] == Hkv, fn, "v",
                  [&] { return detail::dims_note(std::array<index, 3>{k.dims[0], Hkv, d_v},
                                                 "[total_k, heads_kv, d_v]"); },
                  v.dims);
  detail::varlen::check_queries_and_output(fn, q, out, Hkv, d_qk, d_v);
  const index B = detail::varlen::check_cu_seqlens(fn, "cu_seqlens_q", cu_seqlens_q, q.dims[0],
                                                   "total_q = q.dims[0]");
  detail::require(static_cast<index>(cu_seqlens_k.size()) == B + 1, fn, "cu_seqlens_k.size()",
                  [&] { return "batch + 1 = " + std::to_string(B + 1); }, cu_seqlens_k.size());
  detail::varlen::check_cu_seqlens(fn, "cu_seqlens_k", cu_seqlens_k, k.dims[0],
                                   "total_k = k.dims[0]");
  const float scale = detail::varlen::check_options(fn, opt, q.dims[1], q.dims[0], d_qk);
  detail::check_disjoint(fn, {detail::region("out", out), detail::region("opt.lse", opt.lse)},
                         {detail::region("q", q), detail::region("k", k), detail::region("v", v),
                          detail::region("cu_seqlens_q", cu_seqlens_q),
                          detail::region("cu_seqlens_k", cu_seqlens_k)});

  std::vector<index> seq_lens_k(static_cast<std::size_t>(B));
  for (index b = 0; b < B; ++b) seq_lens_k[b] = cu_seqlens_k[b + 1] - cu_seqlens_k[b];
  using rows = strided<const KV, 4>;
  const strided<const KV, 3> kc = k, vc = v;
  detail::varlen::run<rows>(q, out, cu_seqlens_q, seq_lens_k, opt, scale, mods, [&](index b) {
    const index first = cu_seqlens_k[b], n = seq_lens_k[b];
    return std::make_pair(detail::varlen::sequence_rows(kc, first, n),
                          detail::varlen::sequence_rows(vc, first, n));
  });
}

}  // namespace ATTN_ABI
}  // namespace attn
