// attn/detail/batched_sequences.hpp: the attention of many sequences of
// different lengths in one parallel loop, behind attn::varlen_attention
// and attn::paged_attention. Arguments arrive validated.
//
// Each sequence is its own batch-1 attention call (a flash_call or a
// split_kv_call, chosen by its own shape as scaled_dot_product_attention
// would), so a sequence's work, chunking and arithmetic are those of the
// sequence alone: its output bits cannot depend on which other sequences
// share the batch, on their order or on the thread count (docs/design.md,
// "Batch invariance"). What the batch shares is the parallel loop: the tasks
// of every call are handed out together, so one long prefill and many
// single-token decodes keep every core busy, and the split-KV merges of
// every decoding sequence run in a second loop.
#pragma once

// Internal header (docs/design.md, "What is public"): reached only through a
// public header, which defines ATTN_DETAIL_ALLOWED first.
#ifndef ATTN_DETAIL_ALLOWED
#error "attn/detail/batched_sequences.hpp is internal: include <attn/varlen.hpp>"
#endif

#include <algorithm>
#include <optional>
#include <vector>

#include "attn/core/abi.hpp"
#include "attn/core/parallel.hpp"
#include "attn/detail/flash_forward.hpp"
#include "attn/detail/split_kv_decode.hpp"
#include "attn/sdpa_options.hpp"
#include "attn/view.hpp"

namespace attn::detail::sdpa {
inline namespace ATTN_ABI {

/// One sequence of a batch as a batch-1 attention call: its queries,
/// keys, values and output rows, its options (its own LSE slice) and score
/// policy, and the checked scale.
template <class Rows, class Policy>
struct sequence_call {
  strided<const float, 4> q;  ///< [1, L, Hq, d_qk]
  Rows k;                     ///< [1, S, Hkv, d_qk]
  Rows v;                     ///< [1, S, Hkv, d_v]
  strided<float, 4> out;      ///< [1, L, Hq, d_v]
  sdpa_options opt;           ///< the call's options, lse sliced to the sequence
  Policy policy;              ///< built from opt, L and S
  float scale;                ///< as checked
};

/// Runs every sequence's attention (d_v >= 1), the tasks of all of them in
/// one parallel loop on up to `requested_threads` threads.
template <class Rows, class Policy>
void run_sequences(const std::vector<sequence_call<Rows, Policy>>& seqs, int requested_threads) {
  std::vector<flash_call<Rows, Policy>> flash;
  std::vector<split_kv_call<Rows, Policy>> split;
  flash.reserve(seqs.size());
  split.reserve(seqs.size());
  double flops = 0.0;
  index d_qk = 0, d_v = 0, d_v_pad = 0, split_rows = 0;
  for (const sequence_call<Rows, Policy>& c : seqs) {
    const index L = c.q.dims[1], group = c.q.dims[2] / c.k.dims[2];
    if (L == 0) continue;
    d_qk = c.q.dims[3], d_v = c.v.dims[3];
    if (split_kv_policy::applies(L, group)) {
      split.emplace_back(c.q, c.k, c.v, c.out, c.scale, c.opt, c.policy);
      split_rows = std::max(split_rows, split.back().R);
      flops += split.back().flops();
    } else {
      flash.emplace_back(c.q, c.k, c.v, c.out, c.scale, c.opt, c.policy);
      d_v_pad = flash.back().d_v_pad;
      flops += flash.back().flops();
    }
  }
  // first[c]: the first task of call c (flash calls, then split calls).
  std::vector<index> first;
  first.reserve(flash.size() + split.size() + 1);
  index tasks = 0;
  for (const auto& c : flash) first.push_back(tasks), tasks += c.tasks;
  for (const auto& c : split) first.push_back(tasks), tasks += c.tasks;
  first.push_back(tasks);
  const index n_flash = static_cast<index>(flash.size());
  auto call_of = [&](const std::vector<index>& starts, index t) {
    return static_cast<index>(std::upper_bound(starts.begin(), starts.end(), t) - starts.begin()) -
           1;
  };

  // A thread's scratch for either kind of task, built on first use.
  struct scratch {
    std::optional<flash_scratch> flash;
    std::optional<split_kv_scratch> split;
  };
  const int threads = core::threads_for_work(requested_threads, flops);
  core::parallel_for(
      tasks, threads, [] { return scratch{}; },
      [&](scratch& ws, index t) {
        const index c = call_of(first, t);
        if (c < n_flash) {
          if (!ws.flash) ws.flash.emplace(d_qk, d_v_pad);
          flash[static_cast<std::size_t>(c)].run_task(*ws.flash, t - first[c]);
        } else {
          if (!ws.split) ws.split.emplace(split_rows, d_qk, d_v);
          // (a task writes only its own partials of its own call)
          split[static_cast<std::size_t>(c - n_flash)].run_task(*ws.split, t - first[c]);
        }
      });
  if (split.empty()) return;

  std::vector<index> first_row;
  first_row.reserve(split.size() + 1);
  index rows = 0;
  for (const auto& c : split) first_row.push_back(rows), rows += c.merge_rows();
  first_row.push_back(rows);
  core::parallel_for(rows, threads, [&](index row) {
    const index c = call_of(first_row, row);
    split[static_cast<std::size_t>(c)].merge_row(row - first_row[c]);
  });
}

}  // namespace ATTN_ABI
}  // namespace attn::detail::sdpa
