// attn/detail/latent_attention.hpp: attention of absorbed MLA queries over
// the latent cache (the decode path of attn/mla.hpp). Arguments arrive
// validated.
//
// Every head attends over the same cached rows [c (d_c) │ k_pe (d_r)]: the
// key is the whole row, the value its first d_c columns. So the query rows
// of all heads (and of all new tokens) of one sequence form one block that
// shares each key tile: this is MQA with d_qk = d_c + d_r and d_v = d_c.
//
// One task = one (sequence, block of up to max_rows query rows, chunk of
// keys). Its queries are packed transposed and pre-scaled by scale·log2 e
// (Qᵀ; once per row block, shared by the block's chunks), then for each
// tile of kv_tile keys:
//   1. converts the rows to float once (they serve as K and as V),
//   2. Sᵀ = K · Qᵀ with the score micro-kernel,
//   3. -inf past each query's causal limit (query token t of T new ones in a
//      sequence of n sees keys j <= n - T + t),
//   4. online softmax down each column (exp2 in log2 units),
//   5. O += P · V with the accumulate micro-kernel, V read from the same
//      converted rows.
// Long caches are cut into chunks of keys so that one sequence's decode step
// keeps every thread busy; chunk partials (normalised output and LSE) are
// merged in chunk order. The chunking depends only on the shapes of the
// call, never on the thread count, so the output bits do not either. While
// a tile is multiplied, the next tile's rows are prefetched into L2: they
// come from memory, and without huge pages the hardware prefetcher stops at
// every 4 KiB page (docs/performance.md, MLA).
#pragma once

// Internal header (docs/design.md, "What is public"): reached only through a
// public header, which defines ATTN_DETAIL_ALLOWED first.
#ifndef ATTN_DETAIL_ALLOWED
#error "attn/detail/latent_attention.hpp is internal: include <attn/mla.hpp>"
#endif

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <vector>

#include "attn/core/abi.hpp"
#include "attn/core/assert.hpp"
#include "attn/core/fp64_row.hpp"
#include "attn/core/math.hpp"
#include "attn/core/microkernel.hpp"
#include "attn/core/parallel.hpp"
#include "attn/core/simd.hpp"
#include "attn/core/softmax.hpp"
#include "attn/detail/attention_engine.hpp"

namespace attn::detail::mla {
inline namespace ATTN_ABI {

/// Tile sizes and chunking of latent_attention.
struct latent_tiles {
  /// Query rows per task: Qᵀ (d_qk x max_rows floats, 288 KiB at d_qk = 576)
  /// and O (max_rows x d_c, 256 KiB) stay in L2 together.
  static constexpr index max_rows = 128;
  /// Keys per step.
  static constexpr index kv_tile = 8 * core::score_tile::rows;
  /// Chunks are never shorter than this many keys...
  static constexpr index min_chunk = 512;
  /// ...and a call is cut into at most this many chunked tasks: a row block
  /// is split only while the call has fewer row blocks than this (partials:
  /// at most max_chunks x max_rows x d_c floats, 4 MiB at d_c = 512; packed
  /// Qᵀ shared by a block's chunks: at most max_chunks / 2 blocks).
  static constexpr index max_chunks = 16;
};

/// The problem: B sequences, each with T new query tokens of H heads.
/// q: latent queries [B, T, H, d_qk] dense (d_qk = d_c + d_r).
/// rows: cache rows, row j of sequence b at rows + (b · capacity + j) · d_qk.
/// lengths[b]: tokens in sequence b, the T new ones included (>= T).
/// out: [B, T, H, d_c] dense.
template <class Storage>
struct latent_problem {
  const float* q;
  const Storage* rows;
  const index* lengths;
  float* out;
  index B, T, H, d_c, d_r, capacity;
  float scale;
};

// A task's share of the work.
struct latent_task {
  index b, r0, r1;  // sequence, query rows [r0, r1) of its T·H
  index j0, j1;     // keys [j0, j1)
  index slot;       // partial slot (chunked), or -1: write straight to out
  index shared_qt;  // packed Qᵀ shared by the block's chunks, or -1: pack it
};

struct latent_scratch {
  std::vector<float> qt;      // [d_qk][cols]   scaled queries, transposed
  std::vector<float> k;       // [kv_tile][d_qk] + slack: converted rows
  std::vector<float> st;      // [kv_tile][cols] scores, then probabilities
  std::vector<float> o;       // [acc_rows][d_c_pad] unnormalised output
  std::vector<float> max, sum, factor;  // [cols]
  std::vector<index> limit;             // [cols] last visible key per row
  engine::hidden_values hidden;         // non-finite V entries of keys some rows do not see
};

// The engine's walk for one task: query rows [r0, r1) of a sequence against
// its cache rows, which serve as K (all d_qk columns) and V (the first d_c).
template <class Storage, class Score>
struct latent_walk {
  using score = Score;
  using acc = core::accumulate_tile;
  static constexpr index key_tile = latent_tiles::kv_tile;

  latent_scratch& ws;
  const Storage* cache;  // the sequence's rows, row j at cache + j·d_qk
  const float* qt;       // packed Qᵀ [d_qk][cols]
  index rows, cols, acc_rows, sw, d_qk, d_c, d_c_pad;
  index lim_lo;  // the first row's causal limit: keys past it are hidden from some rows
  core::prefetch_stream ahead{nullptr, 0, 1};

  bool visible(index, index) const { return true; }  // the walk stops at the last row's limit

  // The next tile's rows are prefetched into L2 a few lines per register
  // tile of the two products (the rows come from memory; converting them
  // for the score step would otherwise wait on every line).
  ATTN_ALWAYS_INLINE void prefetch(index j0, index n, index j_end) {
    const index n_pad = detail::round_up(n, index{score::rows});
    const index next = std::max<index>(0, std::min(key_tile, j_end - j0 - n));
    const std::size_t tiles_per_step =
        static_cast<std::size_t>((n_pad / score::rows) * (cols / score::cols) +
                                 (acc_rows / acc::rows) * (d_c_pad / acc::cols));
    ahead = core::prefetch_stream(cache + (j0 + n) * d_qk,
                                  static_cast<std::size_t>(next * d_qk) * sizeof(Storage),
                                  tiles_per_step);
  }

  // 1. The rows as float (padding rows zero), once: they serve as K and V;
  // then Sᵀ = K · Qᵀ.
  ATTN_ALWAYS_INLINE void scores(index j0, index n) {
    using namespace core::simd;
    const index n_pad = detail::round_up(n, index{score::rows});
    float* const k = ws.k.data();
    float* const st = ws.st.data();
    const index d = d_qk, ld = sw, c_end = cols;
    for (index j = 0; j < n; ++j) {
      const Storage* src = cache + (j0 + j) * d;
      float* dst = k + j * d;
      index c = 0;
      for (; c + width <= d; c += width) store(dst + c, load_as_float(src + c));
      for (; c < d; ++c) dst[c] = static_cast<float>(src[c]);
    }
    std::fill(k + n * d, k + n_pad * d, 0.0f);
    core::prefetch_stream next = ahead;
    for (index k0 = 0; k0 < n_pad; k0 += score::rows)
      for (index c0 = 0; c0 < c_end; c0 += score::cols) {
        core::gemm_tile<score, false, core::softmax::score_floor>(
            core::lhs{k + k0 * d, d, 1}, core::rhs{qt + c0, c_end}, d, st + k0 * ld + c0, ld);
        next.step();
      }
    ahead = next;
  }

  // 2. Causal limits (only a tile reaching past the first row's limit needs
  // them) and padding keys.
  ATTN_ALWAYS_INLINE void mask(index j0, index n) {
    const index n_pad = detail::round_up(n, index{score::rows});
    if (j0 + n - 1 > lim_lo)
      for (index r = 0; r < cols; ++r) {
        const index from = std::max<index>(ws.limit[r] + 1 - j0, 0);
        for (index j = from; j < n; ++j) ws.st[j * sw + r] = core::softmax::neg_inf;
      }
    for (index j = n; j < n_pad; ++j)
      std::fill(ws.st.begin() + j * sw, ws.st.begin() + j * sw + cols, core::softmax::neg_inf);
  }

  // 3. Online softmax down each column.
  ATTN_ALWAYS_INLINE void online_softmax(index, index n) {
    const index n_pad = detail::round_up(n, index{score::rows});
    engine::softmax_columns(ws.st.data(), sw, n, n_pad, cols,
                            {ws.max.data(), ws.sum.data(), ws.factor.data()});
    engine::rescale_rows(ws.o.data(), d_c_pad, d_c_pad, ws.factor.data(), rows);
  }

  // 4. O += P · V, V the first d_c (padded: d_c_pad) columns of the rows.
  // Keys past the first row's limit are hidden from some rows (a later
  // token's NaN must not reach an earlier token's output; fuzz_mla_cache
  // found it).
  ATTN_ALWAYS_INLINE void accumulate(index j0, index n) {
    float* const k = ws.k.data();
    float* const st = ws.st.data();
    float* const o = ws.o.data();
    const index d = d_qk, ld = sw, o_ld = d_c_pad, r_end = acc_rows;
    ws.hidden.set_apart(k, d, std::max<index>(lim_lo + 1 - j0, 0), n);
    core::prefetch_stream next = ahead;
    for (index r0 = 0; r0 < r_end; r0 += acc::rows)
      for (index c0 = 0; c0 < o_ld; c0 += acc::cols) {
        core::gemm_tile<acc, true>(core::lhs{st + r0, 1, ld}, core::rhs{k + c0, d}, n,
                                   o + r0 * o_ld + c0, o_ld);
        next.step();
      }
    ahead = next;
    const index* limit = ws.limit.data();
    ws.hidden.add_back([limit, j0](index r, index j) { return limit[r] >= j0 + j; }, st, ld, o,
                       o_ld, rows, d_c);
  }
};

// The unnormalised accumulation O = Σ 2^(s - max) v of a row overflows fp32
// when its visible values sum past FLT_MAX (the exact output, a convex
// combination, is at most max|v|). Such rows, and only they, are redone in
// double by core::softmax::recompute_row_fp64 with the kernel's own scores (the
// clamped pre-scaled query, the causal limit); finite rows keep their bits.
// A row whose query, or whose sequence's cached rows, hold a NaN or an inf
// is non-finite by the NaN policy and is left alone: redoing it could not
// make it finite, and would cost O(n · d) in double on every later step of
// a cache that holds such a value.
template <class Storage>
void repair_nonfinite_rows(const latent_problem<Storage>& p) {
  const index d_qk = p.d_c + p.d_r, rows_all = p.T * p.H;
  const float scale_log2 = p.scale * core::softmax::log2e;
  std::vector<double> q_log2(static_cast<std::size_t>(d_qk));
  for (index b = 0; b < p.B; ++b) {
    int cache_finite = -1;  // checked on the sequence's first non-finite row
    for (index r = 0; r < rows_all; ++r) {
      float* dst = p.out + (b * rows_all + r) * p.d_c;
      if (core::softmax::all_finite(dst, p.d_c)) continue;
      const float* q = p.q + (b * rows_all + r) * d_qk;
      if (!core::softmax::all_finite(q, d_qk)) continue;
      if (cache_finite < 0) {
        const Storage* rows = p.rows + b * p.capacity * d_qk;
        cache_finite = 1;
        for (index i = 0; i < p.lengths[b] * d_qk && cache_finite; ++i)
          cache_finite = std::isfinite(static_cast<float>(rows[i])) ? 1 : 0;
      }
      if (cache_finite == 0) continue;
      for (index d = 0; d < d_qk; ++d)  // as the kernel packs it
        q_log2[static_cast<std::size_t>(d)] = engine::scaled_query(q[d], scale_log2);
      const index n = p.lengths[b], limit = n - p.T + r / p.H;
      const Storage* rows = p.rows + b * p.capacity * d_qk;
      core::softmax::recompute_row_fp64(
          n,
          [&](index j) {
            if (j > limit) return core::softmax::fp64_key{false, 0.0};
            double s = 0;
            for (index d = 0; d < d_qk; ++d)
              s += q_log2[static_cast<std::size_t>(d)] * static_cast<float>(rows[j * d_qk + d]);
            return core::softmax::fp64_key{true, s};
          },
          [&](index j) { return rows + j * d_qk; }, p.d_c, dst, nullptr);
    }
  }
}

// The kernel for one score register tile shape (see latent_attention).
template <class Storage, class Score>
void latent_attention_with(const latent_problem<Storage>& p, int num_threads) {
  using namespace core::simd;
  using tiles = latent_tiles;
  using score = Score;
  using acc = core::accumulate_tile;
  constexpr index kv_tile = tiles::kv_tile;
  const index d_qk = p.d_c + p.d_r, rows_all = p.T * p.H;
  const index d_c_pad = detail::round_up(p.d_c, acc::cols);
  const index block_rows = std::min(tiles::max_rows, rows_all);
  const index cols = detail::round_up(block_rows, score::cols);          // Qᵀ / Sᵀ width
  const index acc_rows = detail::round_up(block_rows, index{acc::rows});  // O rows computed
  const float scale_log2 = p.scale * core::softmax::log2e;

  // Work list: row blocks of each sequence, each cut into key chunks when
  // there are few row blocks and many keys. Keys past the last row's limit
  // (n - 1) are never visible.
  // The number of chunks depends on the shapes (B, rows, lengths) only.
  std::vector<latent_task> tasks;
  struct shared_block {
    index b, r0, r1;
  };
  std::vector<shared_block> shared;  // blocks whose Qᵀ is packed once for all chunks
  index slots = 0;
  const index row_blocks = detail::ceil_div(rows_all, block_rows);
  const index max_chunks = std::max<index>(1, tiles::max_chunks / (p.B * row_blocks));
  for (index b = 0; b < p.B; ++b) {
    const index n = p.lengths[b];
    const index chunks = std::min(max_chunks, std::max<index>(1, n / tiles::min_chunk));
    const index chunk = detail::round_up(detail::ceil_div(n, chunks), kv_tile);
    for (index rb = 0; rb < row_blocks; ++rb) {
      const index r0 = rb * block_rows, r1 = std::min(rows_all, r0 + block_rows);
      index qt = -1;
      if (chunks > 1) {
        qt = static_cast<index>(shared.size());
        shared.push_back({b, r0, r1});
      }
      for (index c = 0; c < chunks; ++c) {
        const index j0 = c * chunk, j1 = std::min(n, j0 + chunk);
        tasks.push_back({b, r0, r1, j0, j1, chunks > 1 ? slots++ : -1, qt});
      }
    }
  }
  std::vector<float> part_o(static_cast<std::size_t>(slots * block_rows * p.d_c));
  std::vector<float> part_lse(static_cast<std::size_t>(slots * block_rows));

  // Qᵀ of rows [r0, r1) of sequence b, pre-scaled by scale·log2 e, into
  // qt[d_qk][cols]; padding columns are zero.
  auto pack_qt = [&](index b, index r0, index r1, float* qt) {
    const float* qb = p.q + (b * rows_all + r0) * d_qk;
    engine::pack_queries_transposed([&](index r) { return qb + r * d_qk; }, r1 - r0, cols, d_qk,
                                    scale_log2, qt, cols);
  };
  std::vector<float> shared_qt(shared.size() * static_cast<std::size_t>(d_qk * cols));

  auto make_scratch = [&] {
    latent_scratch s;
    s.qt.resize(static_cast<std::size_t>(d_qk * cols));
    s.k.assign(static_cast<std::size_t>(kv_tile * d_qk + d_c_pad), 0.0f);
    s.st.assign(static_cast<std::size_t>(kv_tile * std::max(cols, acc_rows)), 0.0f);
    s.o.resize(static_cast<std::size_t>(acc_rows * d_c_pad));
    s.max.resize(static_cast<std::size_t>(cols));
    s.sum.resize(static_cast<std::size_t>(cols));
    s.factor.resize(static_cast<std::size_t>(cols));
    s.limit.resize(static_cast<std::size_t>(cols));
    s.hidden.reserve(kv_tile, p.d_c);
    return s;
  };

  auto run = [&](latent_scratch& ws, index ti) {
    const latent_task& tk = tasks[static_cast<std::size_t>(ti)];
    const index n = p.lengths[tk.b], rows = tk.r1 - tk.r0;
    const index sw = std::max(cols, acc_rows);  // row stride of Sᵀ
    const Storage* kb = p.rows + tk.b * p.capacity * d_qk;

    // Qᵀ and each row's causal limit; padding columns see no key.
    const float* qt = ws.qt.data();
    if (tk.shared_qt >= 0)
      qt = shared_qt.data() + tk.shared_qt * d_qk * cols;
    else
      pack_qt(tk.b, tk.r0, tk.r1, ws.qt.data());
    for (index r = 0; r < cols; ++r) ws.limit[r] = r < rows ? n - p.T + (tk.r0 + r) / p.H : -1;
    std::fill(ws.o.begin(), ws.o.end(), 0.0f);
    std::fill(ws.max.begin(), ws.max.end(), core::softmax::neg_inf);
    std::fill(ws.sum.begin(), ws.sum.end(), 0.0f);
    const index lim_lo = ws.limit[0], lim_hi = ws.limit[rows - 1];
    latent_walk<Storage, Score> walk{ws, kb,   qt,    rows,    cols,  acc_rows,
                                     sw, d_qk, p.d_c, d_c_pad, lim_lo};
    engine::run_chunk(walk, tk.j0, std::min(tk.j1, lim_hi + 1));

    // Normalised rows, straight out or into this chunk's partial slot.
    for (index r = 0; r < rows; ++r) {
      float* dst = tk.slot < 0 ? p.out + (tk.b * rows_all + tk.r0 + r) * p.d_c
                               : part_o.data() + (tk.slot * block_rows + r) * p.d_c;
      const core::softmax::row_result res =
          engine::finish_row(ws.max[r], ws.sum[r], ws.o.data() + r * d_c_pad, p.d_c, dst);
      if (tk.slot >= 0) part_lse[static_cast<std::size_t>(tk.slot * block_rows + r)] = res.lse;
    }
  };

  const double flops = 2.0 * static_cast<double>(rows_all) * p.B *
                       static_cast<double>(*std::max_element(p.lengths, p.lengths + p.B)) *
                       static_cast<double>(d_qk + p.d_c);
  const int threads = core::threads_for_work(num_threads, flops);
  core::parallel_for(static_cast<index>(shared.size()), threads, [&](index i) {
    const shared_block& sb = shared[static_cast<std::size_t>(i)];
    pack_qt(sb.b, sb.r0, sb.r1, shared_qt.data() + i * d_qk * cols);
  });
  core::parallel_for(static_cast<index>(tasks.size()), threads, make_scratch, run);
  if (slots > 0) {
    // Merge each chunked row block's partials in chunk order (tasks of one row
    // block are consecutive in the work list).
    std::vector<index> firsts;
    for (index t = 0; t < static_cast<index>(tasks.size()); ++t)
      if (tasks[t].slot >= 0 && (t == 0 || tasks[t - 1].b != tasks[t].b ||
                                 tasks[t - 1].r0 != tasks[t].r0 || tasks[t - 1].slot < 0))
        firsts.push_back(t);
    core::parallel_for(static_cast<index>(firsts.size()), threads, [&](index f) {
      const index t0 = firsts[static_cast<std::size_t>(f)];
      const latent_task& head = tasks[static_cast<std::size_t>(t0)];
      for (index r = 0; r < head.r1 - head.r0; ++r) {
        float* dst = p.out + (head.b * rows_all + head.r0 + r) * p.d_c;
        float lse = part_lse[static_cast<std::size_t>(head.slot * block_rows + r)];
        std::copy_n(part_o.data() + (head.slot * block_rows + r) * p.d_c, p.d_c, dst);
        for (index t = t0 + 1; t < static_cast<index>(tasks.size()) && tasks[t].b == head.b &&
                               tasks[t].r0 == head.r0;
             ++t) {
          const index s = tasks[static_cast<std::size_t>(t)].slot;
          core::softmax::merge_partial(dst, lse, part_o.data() + (s * block_rows + r) * p.d_c,
                                       part_lse[static_cast<std::size_t>(s * block_rows + r)],
                                       p.d_c);
        }
      }
    });
  }
  repair_nonfinite_rows(p);
}

/// Runs the problem on `num_threads` threads (0 = default); the output bits
/// do not depend on it.
template <class Storage>
void latent_attention(const latent_problem<Storage>& p, int num_threads) {
  // What the MLA layer has checked: every sequence holds its T new tokens
  // within the capacity, and the scale survives pre-scaling.
  ATTN_ASSERT(p.B >= 0 && p.T >= 0 && p.H >= 1 && p.d_c >= 1 && p.d_r >= 0);
  ATTN_ASSERT(std::isfinite(p.scale * core::softmax::log2e));
  for (index b = 0; b < p.B; ++b) ATTN_ASSERT(p.T <= p.lengths[b] && p.lengths[b] <= p.capacity);
  // Few query rows (a decode step of a model with at most one packet's worth
  // of heads, V2-Lite's 16): a one-packet-wide score tile, so no column of
  // the score product is padding.
  using narrow = core::tile_shape<core::score_tile::rows, 1>;
  if (p.T * p.H <= narrow::cols && narrow::cols < core::score_tile::cols)
    latent_attention_with<Storage, narrow>(p, num_threads);
  else
    latent_attention_with<Storage, core::score_tile>(p, num_threads);
}

}  // namespace ATTN_ABI
}  // namespace attn::detail::mla
