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
// merged in chunk order. A sequence's chunking depends only on its own
// shape (new tokens, heads, length), never on the other sequences of the
// call or the thread count, so its output bits do not either. The rows are
// read from an mla_cache (one sequence's rows one after another) or from a
// block pool through block tables (paged_kv_cache). While
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
#include <cstdint>
#include <type_traits>
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

  /// How the two products of a key tile walk their operands through L1 on
  /// the 16-register ISAs (AVX2, SSE), where the score tile's Qᵀ panel
  /// (d_qk x 16 floats, 36 KiB) and the V rows (96 KiB) exceed the 32 KiB
  /// L1 (docs/performance.md, "MLA on AVX2"). The AVX-512 walk (Zen 5: 48
  /// KiB L1, 77-80% of the FMA peak) is kept as it was tuned: one pass of
  /// the whole depth, key rows outer; query rows outer.
  static constexpr bool l1_blocked = core::l1_blocked;
  /// Depth steps of Sᵀ = K · Qᵀ per pass: the Qᵀ micro-panel of one column
  /// tile (4 KiB) and the key tile's K slice (12 KiB) stay in L1 while the
  /// column tile meets every key row. A pass stores its partial sums into
  /// Sᵀ and the next loads them on, so each score is the same FMA chain in
  /// the same order as in one pass: the bits do not depend on it.
  static constexpr index score_depth_block = 64;
  /// Accumulate register tiles (of 6 query rows) per pass over V in
  /// O += P · V: the pass's P columns (9 KiB) and one V column panel (3 KiB)
  /// stay in L1, and V is read 3 times per key tile instead of 22.
  static constexpr index acc_row_tiles = 8;
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

/// The cached rows of sequences stored one after another (mla_cache): row j
/// of sequence b at base + (b · capacity + j) · width.
template <class Storage>
struct dense_latent_rows {
  using storage = Storage;
  const Storage* base;
  index capacity, width;

  /// One sequence's rows.
  struct sequence {
    using storage = Storage;
    using prefetcher = core::prefetch_stream;
    const Storage* first;
    index width;
    const Storage* row(index j) const { return first + j * width; }
    /// Rows [j0, j0 + n) into L2 over `steps` calls of step().
    prefetcher prefetch(index j0, index n, std::size_t steps) const {
      return prefetcher(row(j0), static_cast<std::size_t>(n * width) * sizeof(Storage), steps);
    }
  };
  sequence of(index b) const { return {base + b * capacity * width, width}; }
};

/// Prefetches rows [j, end) of a paged sequence a few rows per step() (the
/// rows are contiguous only within a block).
template <class Sequence>
class row_prefetch {
 public:
  row_prefetch(const Sequence& s, index j0, index n, std::size_t steps)
      : s_(s),
        j_(j0),
        end_(j0 + n),
        per_step_(
            std::max<index>(1, detail::ceil_div(n, static_cast<index>(steps > 0 ? steps : 1)))) {}
  void step() {
    for (index k = 0; k < per_step_ && j_ < end_; ++k, ++j_)
      core::simd::prefetch_l2(
          s_.row(j_), static_cast<std::size_t>(s_.width) * sizeof(typename Sequence::storage));
  }

 private:
  Sequence s_;
  index j_, end_, per_step_;
};

/// Rows in a block pool (paged_kv_cache with one head of width d_c + d_r,
/// [blocks, block_size, width] dense): row j of sequence b is slot
/// j % block_size of block tables[b][j / block_size].
template <class Storage>
struct paged_latent_rows {
  using storage = Storage;
  const Storage* pool;
  const std::int32_t* const* tables;
  int block_shift;  // log2 of the block size
  index width;

  /// One sequence's rows.
  struct sequence {
    using storage = Storage;
    using prefetcher = row_prefetch<sequence>;
    const Storage* pool;
    const std::int32_t* table;
    int block_shift;
    index width;
    const Storage* row(index j) const {
      const index slot =
          (index{table[j >> block_shift]} << block_shift) + (j & ((index{1} << block_shift) - 1));
      return pool + slot * width;
    }
    prefetcher prefetch(index j0, index n, std::size_t steps) const {
      return prefetcher(*this, j0, n, steps);
    }
  };
  sequence of(index b) const { return {pool, tables[b], block_shift, width}; }
};

/// The general problem: B sequences, sequence b with the tokens[b] new
/// query tokens from token first[b] on of the packed q, each of H heads.
/// q: latent queries [total, H, d_qk] dense (d_qk = d_c + d_r).
/// rows: the cached rows (dense_latent_rows or paged_latent_rows).
/// lengths[b]: tokens in sequence b, its new ones included.
/// out: [total, H, d_c] dense, written at the same tokens as q.
template <class Rows>
struct latent_batch {
  const float* q;
  Rows rows;
  const index* lengths;
  const index* first;
  const index* tokens;
  float* out;
  index B, H, d_c, d_r;
  float scale;
};

// A task's share of the work.
struct latent_task {
  index b, r0, r1;  // sequence, query rows [r0, r1) of its T_b·H
  index j0, j1;     // keys [j0, j1)
  index slot;       // partial slot (chunked), or -1: write straight to out
  index shared_qt;  // packed Qᵀ shared by the block's chunks, or -1: pack it
};

struct latent_scratch {
  std::vector<float> qt;                // [d_qk][qt_ld]  scaled queries, transposed
  std::vector<float> k;                 // [kv_tile][d_qk] + slack: converted rows
  std::vector<float> st;                // [kv_tile][sw]  scores, then probabilities
  std::vector<float> o;                 // [acc_rows][o_ld] unnormalised output
  std::vector<float> max, sum, factor;  // [cols]
  std::vector<index> limit;             // [cols] last visible key per row
  engine::hidden_values hidden;         // non-finite V entries of keys some rows do not see
};

// The engine's walk for one task: query rows [r0, r1) of a sequence against
// its cache rows, which serve as K (all d_qk columns) and V (the first d_c).
template <class Sequence, class Score>
struct latent_walk {
  using score = Score;
  using acc = core::accumulate_tile;
  using Storage = typename Sequence::storage;
  static constexpr index key_tile = latent_tiles::kv_tile;

  latent_scratch& ws;
  Sequence cache;   // the sequence's rows, row j at cache.row(j)
  const float* qt;  // packed Qᵀ [d_qk][qt_ld]
  index rows, cols, acc_rows, sw, d_qk, d_c, d_c_pad;
  index qt_ld, o_ld;  // row strides of Qᵀ and O
  index lim_lo;       // the first row's causal limit: keys past it are hidden from some rows
  typename Sequence::prefetcher ahead = cache.prefetch(0, 0, 1);

  bool visible(index, index) const { return true; }  // the walk stops at the last row's limit

  // The next tile's rows are prefetched into L2 a few lines per register
  // tile of the two products (the rows come from memory; converting them
  // for the score step would otherwise wait on every line).
  ATTN_ALWAYS_INLINE void prefetch(index j0, index n, index j_end) {
    const index n_pad = detail::round_up(n, index{score::rows});
    const index next = std::max<index>(0, std::min(key_tile, j_end - j0 - n));
    const index score_passes =
        latent_tiles::l1_blocked ? detail::ceil_div(d_qk, latent_tiles::score_depth_block) : 1;
    const std::size_t tiles_per_step =
        static_cast<std::size_t>((n_pad / score::rows) * (cols / score::cols) * score_passes +
                                 (acc_rows / acc::rows) * (d_c_pad / acc::cols));
    ahead = cache.prefetch(j0 + n, next, tiles_per_step);
  }

  // 1. The rows as float (padding rows zero), once: they serve as K and V;
  // then Sᵀ = K · Qᵀ (blocked by depth on the 16-register ISAs; see
  // latent_tiles::score_depth_block).
  ATTN_ALWAYS_INLINE void scores(index j0, index n) {
    using namespace core::simd;
    const index n_pad = detail::round_up(n, index{score::rows});
    float* const k = ws.k.data();
    float* const st = ws.st.data();
    const index d = d_qk, ld = sw, c_end = cols;
    for (index j = 0; j < n; ++j) {
      const Storage* src = cache.row(j0 + j);
      float* dst = k + j * d;
      index c = 0;
      for (; c + width <= d; c += width) store(dst + c, load_as_float(src + c));
      for (; c < d; ++c) dst[c] = static_cast<float>(src[c]);
    }
    std::fill(k + n * d, k + n_pad * d, 0.0f);
    auto next = ahead;
    if constexpr (!latent_tiles::l1_blocked) {
      for (index k0 = 0; k0 < n_pad; k0 += score::rows)
        for (index c0 = 0; c0 < c_end; c0 += score::cols) {
          core::gemm_tile<score, false, core::softmax::score_floor>(
              core::lhs{k + k0 * d, d, 1}, core::rhs{qt + c0, qt_ld}, d, st + k0 * ld + c0, ld);
          next.step();
        }
    } else {
      // Passes over depth [d0, d0 + depth): the first stores, the later ones
      // add on, the last floors the scores on their way out.
      auto pass = [&](auto first, auto last, index d0, index depth) {
        using epilogue = std::conditional_t<decltype(last)::value, core::softmax::score_floor,
                                            core::store_as_is>;
        for (index c0 = 0; c0 < c_end; c0 += score::cols)
          for (index k0 = 0; k0 < n_pad; k0 += score::rows) {
            core::gemm_tile<score, !decltype(first)::value, epilogue>(
                core::lhs{k + k0 * d + d0, d, 1}, core::rhs{qt + d0 * qt_ld + c0, qt_ld}, depth,
                st + k0 * ld + c0, ld);
            next.step();
          }
      };
      constexpr index block = latent_tiles::score_depth_block;
      using yes = std::true_type;
      using no = std::false_type;
      if (d <= block) {
        pass(yes{}, yes{}, 0, d);
      } else {
        pass(yes{}, no{}, 0, block);
        index d0 = block;
        for (; d0 + block < d; d0 += block) pass(no{}, no{}, d0, block);
        pass(no{}, yes{}, d0, d - d0);
      }
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
    engine::rescale_rows(ws.o.data(), o_ld, d_c_pad, ws.factor.data(), rows);
  }

  // 4. O += P · V, V the first d_c (padded: d_c_pad) columns of the rows.
  // Keys past the first row's limit are hidden from some rows (a later
  // token's NaN must not reach an earlier token's output; fuzz_mla_cache
  // found it).
  ATTN_ALWAYS_INLINE void accumulate(index j0, index n) {
    float* const k = ws.k.data();
    float* const st = ws.st.data();
    float* const o = ws.o.data();
    const index d = d_qk, ld = sw, r_end = acc_rows;
    ws.hidden.set_apart(k, d, std::max<index>(lim_lo + 1 - j0, 0), n);
    auto next = ahead;
    auto tile = [&](index r0, index c0) {
      core::gemm_tile<acc, true>(core::lhs{st + r0, 1, ld}, core::rhs{k + c0, d}, n,
                                 o + r0 * o_ld + c0, o_ld);
      next.step();
    };
    if constexpr (!latent_tiles::l1_blocked) {
      for (index r0 = 0; r0 < r_end; r0 += acc::rows)
        for (index c0 = 0; c0 < d_c_pad; c0 += acc::cols) tile(r0, c0);
    } else {
      constexpr index block = latent_tiles::acc_row_tiles * acc::rows;
      for (index b0 = 0; b0 < r_end; b0 += block)
        for (index c0 = 0; c0 < d_c_pad; c0 += acc::cols)
          for (index r0 = b0; r0 < std::min(r_end, b0 + block); r0 += acc::rows) tile(r0, c0);
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
// clamped pre-scaled query, the causal limit, the floor at -FLT_MAX of
// core::softmax::floor_score_fp64); finite rows keep their bits.
// A row whose query, or whose sequence's cached rows, hold a NaN or an inf
// is non-finite by the NaN policy and is left alone: redoing it could not
// make it finite, and would cost O(n · d) in double on every later step of
// a cache that holds such a value.
template <class Rows>
void repair_nonfinite_rows(const latent_batch<Rows>& p) {
  const index d_qk = p.d_c + p.d_r;
  const float scale_log2 = p.scale * core::softmax::log2e;
  std::vector<double> q_log2(static_cast<std::size_t>(d_qk));
  for (index b = 0; b < p.B; ++b) {
    const index T = p.tokens[b], n = p.lengths[b];
    const auto seq = p.rows.of(b);
    int cache_finite = -1;  // checked on the sequence's first non-finite row
    for (index r = 0; r < T * p.H; ++r) {
      float* dst = p.out + (p.first[b] * p.H + r) * p.d_c;
      if (core::softmax::all_finite(dst, p.d_c)) continue;
      const float* q = p.q + (p.first[b] * p.H + r) * d_qk;
      if (!core::softmax::all_finite(q, d_qk)) continue;
      if (cache_finite < 0) {
        cache_finite = 1;
        for (index j = 0; j < n && cache_finite; ++j)
          for (index i = 0; i < d_qk && cache_finite; ++i)
            cache_finite = std::isfinite(static_cast<float>(seq.row(j)[i])) ? 1 : 0;
      }
      if (cache_finite == 0) continue;
      for (index d = 0; d < d_qk; ++d)  // as the kernel packs it
        q_log2[static_cast<std::size_t>(d)] = engine::scaled_query(q[d], scale_log2);
      const index limit = n - T + r / p.H;
      core::softmax::recompute_row_fp64(
          n,
          [&](index j) {
            if (j > limit) return core::softmax::fp64_key{false, 0.0};
            const auto* row = seq.row(j);
            double s = 0;
            for (index d = 0; d < d_qk; ++d)
              s += q_log2[static_cast<std::size_t>(d)] * static_cast<float>(row[d]);
            return core::softmax::fp64_key{true, core::softmax::floor_score_fp64(s)};
          },
          [&](index j) { return seq.row(j); }, p.d_c, dst, nullptr);
    }
  }
}

// The kernel for one score register tile shape (see latent_attention).
template <class Rows, class Score>
void latent_attention_with(const latent_batch<Rows>& p, int num_threads) {
  using namespace core::simd;
  using tiles = latent_tiles;
  using score = Score;
  using acc = core::accumulate_tile;
  using Sequence = typename Rows::sequence;
  constexpr index kv_tile = tiles::kv_tile;
  const index d_qk = p.d_c + p.d_r;
  const index d_c_pad = detail::round_up(p.d_c, acc::cols);
  const index o_ld = core::scratch_stride(d_c_pad);
  auto tokens = [&](index b) { return p.tokens[b]; };
  index max_rows = 0;  // the widest row block of the call
  for (index b = 0; b < p.B; ++b)
    max_rows = std::max(max_rows, std::min(tiles::max_rows, tokens(b) * p.H));
  if (max_rows == 0) return;
  const index max_cols = detail::round_up(max_rows, score::cols);
  const index max_acc_rows = detail::round_up(max_rows, index{acc::rows});
  const index max_ld = core::scratch_stride(std::max(max_cols, max_acc_rows));  // Qᵀ, Sᵀ
  const index qt_floats = d_qk * max_ld;  // room for one row block's packed Qᵀ
  const float scale_log2 = p.scale * core::softmax::log2e;

  // Work list: each sequence's query rows in blocks of up to max_rows, each
  // block cut into key chunks when the sequence has few blocks and many keys.
  // Keys past the last row's limit (n - 1) are never visible. A sequence's
  // blocks and chunks depend on its own T_b, H and length only, never on the
  // other sequences of the call or the thread count: so do its output bits
  // (batch invariance, docs/design.md 2.4b).
  std::vector<latent_task> tasks;
  struct shared_block {
    index b, r0, r1;
  };
  std::vector<shared_block> shared;  // blocks whose Qᵀ is packed once for all chunks
  index slots = 0;
  for (index b = 0; b < p.B; ++b) {
    const index n = p.lengths[b], rows_b = tokens(b) * p.H;
    if (rows_b == 0) continue;
    const index block_rows = std::min(tiles::max_rows, rows_b);
    const index row_blocks = detail::ceil_div(rows_b, block_rows);
    const index max_chunks = std::max<index>(1, tiles::max_chunks / row_blocks);
    const index chunks = std::min(max_chunks, std::max<index>(1, n / tiles::min_chunk));
    const index chunk = detail::round_up(detail::ceil_div(n, chunks), kv_tile);
    for (index rb = 0; rb < row_blocks; ++rb) {
      const index r0 = rb * block_rows, r1 = std::min(rows_b, r0 + block_rows);
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
  std::vector<float> part_o(static_cast<std::size_t>(slots * max_rows * p.d_c));
  std::vector<float> part_lse(static_cast<std::size_t>(slots * max_rows));

  // Qᵀ of rows [r0, r1) of sequence b, pre-scaled by scale·log2 e, into
  // qt[d_qk][qt_ld]; padding columns are zero.
  auto cols_for = [&](index r0, index r1) { return detail::round_up(r1 - r0, score::cols); };
  auto qt_ld_for = [&](index cols) { return core::scratch_stride(cols); };
  auto pack_qt = [&](index b, index r0, index r1, float* qt) {
    const float* qb = p.q + (p.first[b] * p.H + r0) * d_qk;
    const index cols = cols_for(r0, r1);
    engine::pack_queries_transposed([&](index r) { return qb + r * d_qk; }, r1 - r0, cols, d_qk,
                                    scale_log2, qt, qt_ld_for(cols));
  };
  std::vector<float> shared_qt(shared.size() * static_cast<std::size_t>(qt_floats));

  auto make_scratch = [&] {
    latent_scratch s;
    s.qt.resize(static_cast<std::size_t>(qt_floats));
    s.k.assign(static_cast<std::size_t>(kv_tile * d_qk + d_c_pad), 0.0f);
    s.st.assign(static_cast<std::size_t>(kv_tile * max_ld), 0.0f);
    s.o.resize(static_cast<std::size_t>(max_acc_rows * o_ld));
    s.max.resize(static_cast<std::size_t>(max_cols));
    s.sum.resize(static_cast<std::size_t>(max_cols));
    s.factor.resize(static_cast<std::size_t>(max_cols));
    s.limit.resize(static_cast<std::size_t>(max_cols));
    s.hidden.reserve(kv_tile, p.d_c);
    return s;
  };

  auto run = [&](latent_scratch& ws, index ti) {
    const latent_task& tk = tasks[static_cast<std::size_t>(ti)];
    const index n = p.lengths[tk.b], rows = tk.r1 - tk.r0, T = tokens(tk.b);
    const index cols = cols_for(tk.r0, tk.r1), acc_rows = detail::round_up(rows, index{acc::rows});
    const index sw = core::scratch_stride(std::max(cols, acc_rows));  // row stride of Sᵀ

    // Qᵀ and each row's causal limit; padding columns see no key.
    const float* qt = ws.qt.data();
    if (tk.shared_qt >= 0)
      qt = shared_qt.data() + tk.shared_qt * qt_floats;
    else
      pack_qt(tk.b, tk.r0, tk.r1, ws.qt.data());
    for (index r = 0; r < cols; ++r) ws.limit[r] = r < rows ? n - T + (tk.r0 + r) / p.H : -1;
    std::fill_n(ws.o.begin(), acc_rows * o_ld, 0.0f);
    std::fill_n(ws.max.begin(), cols, core::softmax::neg_inf);
    std::fill_n(ws.sum.begin(), cols, 0.0f);
    const index lim_lo = ws.limit[0], lim_hi = ws.limit[rows - 1];
    const index qt_ld = qt_ld_for(cols);
    latent_walk<Sequence, Score> walk{ws,   p.rows.of(tk.b), qt,      rows,  cols, acc_rows, sw,
                                      d_qk, p.d_c,           d_c_pad, qt_ld, o_ld, lim_lo};
    engine::run_chunk(walk, tk.j0, std::min(tk.j1, lim_hi + 1));

    // Normalised rows, straight out or into this chunk's partial slot.
    for (index r = 0; r < rows; ++r) {
      float* dst = tk.slot < 0 ? p.out + (p.first[tk.b] * p.H + tk.r0 + r) * p.d_c
                               : part_o.data() + (tk.slot * max_rows + r) * p.d_c;
      const core::softmax::row_result res =
          engine::finish_row(ws.max[r], ws.sum[r], ws.o.data() + r * o_ld, p.d_c, dst);
      if (tk.slot >= 0) part_lse[static_cast<std::size_t>(tk.slot * max_rows + r)] = res.lse;
    }
  };

  double flops = 0;
  for (index b = 0; b < p.B; ++b)
    flops += 2.0 * static_cast<double>(tokens(b) * p.H) * static_cast<double>(p.lengths[b]) *
             static_cast<double>(d_qk + p.d_c);
  const int threads = core::threads_for_work(num_threads, flops);
  core::parallel_for(static_cast<index>(shared.size()), threads, [&](index i) {
    const shared_block& sb = shared[static_cast<std::size_t>(i)];
    pack_qt(sb.b, sb.r0, sb.r1, shared_qt.data() + i * qt_floats);
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
        float* dst = p.out + (p.first[head.b] * p.H + head.r0 + r) * p.d_c;
        float lse = part_lse[static_cast<std::size_t>(head.slot * max_rows + r)];
        std::copy_n(part_o.data() + (head.slot * max_rows + r) * p.d_c, p.d_c, dst);
        for (index t = t0 + 1;
             t < static_cast<index>(tasks.size()) && tasks[t].b == head.b && tasks[t].r0 == head.r0;
             ++t) {
          const index s = tasks[static_cast<std::size_t>(t)].slot;
          core::softmax::merge_partial(dst, lse, part_o.data() + (s * max_rows + r) * p.d_c,
                                       part_lse[static_cast<std::size_t>(s * max_rows + r)], p.d_c);
        }
      }
    });
  }
  repair_nonfinite_rows(p);
}

/// Runs the problem on `num_threads` threads (0 = default); the output bits
/// depend neither on it nor on the other sequences of the call.
template <class Rows>
void latent_attention(const latent_batch<Rows>& p, int num_threads) {
  // What the MLA layer has checked: every sequence holds its new tokens,
  // and the scale survives pre-scaling.
  ATTN_ASSERT(p.B >= 0 && p.H >= 1 && p.d_c >= 1 && p.d_r >= 0);
  ATTN_ASSERT(std::isfinite(p.scale * core::softmax::log2e));
  index most_rows = 0;
  for (index b = 0; b < p.B; ++b) {
    const index T = p.tokens[b];
    ATTN_ASSERT(0 <= T && T <= p.lengths[b]);
    most_rows = std::max(most_rows, T * p.H);
  }
  // Few query rows (a decode step of a model with at most one packet's worth
  // of heads, V2-Lite's 16): a one-packet-wide score tile, so no column of
  // the score product is padding. Each score is the same dot product in
  // the same order with either tile, so the choice does not change a bit.
  using narrow = core::tile_shape<core::score_tile::rows, 1>;
  if (most_rows <= narrow::cols && narrow::cols < core::score_tile::cols)
    latent_attention_with<Rows, narrow>(p, num_threads);
  else
    latent_attention_with<Rows, core::score_tile>(p, num_threads);
}

/// The mla_cache problem: B sequences of T new tokens each, their rows
/// capacity apart.
template <class Storage>
void latent_attention(const latent_problem<Storage>& p, int num_threads) {
  for (index b = 0; b < p.B; ++b) ATTN_ASSERT(p.T <= p.lengths[b] && p.lengths[b] <= p.capacity);
  std::vector<index> first(static_cast<std::size_t>(p.B)), tokens(first.size(), p.T);
  for (index b = 0; b < p.B; ++b) first[static_cast<std::size_t>(b)] = b * p.T;
  const index width = p.d_c + p.d_r;
  latent_attention(latent_batch<dense_latent_rows<Storage>>{p.q,
                                                            {p.rows, p.capacity, width},
                                                            p.lengths,
                                                            first.data(),
                                                            tokens.data(),
                                                            p.out,
                                                            p.B,
                                                            p.H,
                                                            p.d_c,
                                                            p.d_r,
                                                            p.scale},
                   num_threads);
}

}  // namespace ATTN_ABI
}  // namespace attn::detail::mla
