// attn/detail/split_kv_decode.hpp: attention for few query rows against a
// long key sequence (token-by-token decoding), behind
// attn::scaled_dot_product_attention. Arguments arrive validated.
//
// Decoding reads every K and V element once and does O(1) work with it, so
// it is bound by memory bandwidth, and one (batch, head) is too little work
// to share between threads. So:
//  * the key axis is split into chunks; one task = (batch entry, chunk) over
//    all heads, key by key, every head of a key at once (in [batch, seq,
//    heads, dim] one head's consecutive keys sit heads·dim apart, a page or more: per-
//    head walks are TLB- and prefetch-bound, docs/performance.md). Each K/V row
//    serves every query head of its GQA group, so it is loaded once;
//  * K and V stay where they are: bf16/half values are widened to float in
//    registers as they are loaded (core::simd::load_as_float); accumulation is fp32;
//  * each task leaves a normalised partial output and its LSE, and the
//    partials of one row are merged in chunk order with
//    core::softmax::merge_partial; a merged row that came out non-finite from an
//    overflowing fp32 accumulation (values near FLT_MAX) is recomputed in
//    double (recompute_sdpa_row, detail/flash_forward.hpp).
// The chunking depends only on the shapes, never on the thread count, and
// the merge order is fixed, so results are bit-identical for any thread
// count.
#pragma once

// Internal header (docs/design.md, "What is public"): reached only through a
// public header, which defines ATTN_DETAIL_ALLOWED first.
#ifndef ATTN_DETAIL_ALLOWED
#error "attn/detail/split_kv_decode.hpp is internal: include <attn/sdpa.hpp>"
#endif

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "attn/core/abi.hpp"
#include "attn/core/assert.hpp"
#include "attn/core/dot.hpp"
#include "attn/core/inline.hpp"
#include "attn/core/math.hpp"
#include "attn/core/parallel.hpp"
#include "attn/core/simd.hpp"
#include "attn/core/softmax.hpp"
#include "attn/detail/attention_engine.hpp"
#include "attn/detail/flash_forward.hpp"  // recompute_sdpa_row
#include "attn/mask.hpp"
#include "attn/sdpa_options.hpp"
#include "attn/view.hpp"

namespace attn::detail::sdpa {
inline namespace ATTN_ABI {

/// When the split-KV path runs instead of the tiled one: few query rows per
/// KV head (L · group), where the tiled kernel would mostly compute padding.
struct split_kv_policy {
  static constexpr index max_rows = 32;   // L · (Hq / Hkv) per KV head
  static constexpr index key_block = 64;  // keys per online-softmax step
  static_assert(key_block % core::simd::width == 0, "key_block must hold whole packets");
  static constexpr index min_chunk = 512;     // keys per task, at least
  static constexpr index target_tasks = 128;  // enough to balance 2+ threads

  static bool applies(index L, index group) { return L * group <= max_rows; }

  static constexpr index max_partial_floats = 1 << 21;  // 8 MiB of partial results

  // Keys per pass of the GQA walk (4 query rows per K/V row): 4 · gqa_keys
  // accumulators plus gqa_keys key packets must stay in registers.
  static constexpr int gqa_keys = core::simd::registers >= 32 ? 4 : 2;

  // Chunks per batch entry: enough tasks overall, each chunk not tiny, and
  // the partial results (B · chunks · row_floats) bounded.
  static index chunks(index B, index S, index row_floats) {
    const index by_tasks = detail::ceil_div(target_tasks, B);
    const index by_size = detail::ceil_div(S, min_chunk);
    const index by_memory = max_partial_floats / std::max<index>(B * row_floats, 1);
    return std::max<index>(std::min({by_tasks, by_size, by_memory}), 1);
  }
};

// out[u][r · ldo] = sum_d q[r][d] · k[u][d] for 4 query rows (row stride
// ldq) that share Keys key rows (1, 2 or 4): each key packet is loaded and
// widened once for all four rows, and the 4 · Keys sums are independent FMA
// chains (4 chains, one key at a time, keep the FMA units half idle). Each
// sum is one chain over the packets, then reduce_add and the scalar tail,
// whatever Keys is, so the bits do not depend on it. Scores are floored at
// -FLT_MAX (core::softmax::floor_score).
template <int Keys, class KV>
inline void dot_rows4(const float* q, index ldq, const KV* const k[Keys], index d,
                      float* const out[Keys], index ldo) {
  using namespace core::simd;
  packet acc[Keys][4];
  for (int u = 0; u < Keys; ++u)
    for (int r = 0; r < 4; ++r) acc[u][r] = zero();
  index i = 0;
  for (; i + width <= d; i += width) {
    // One load per packet, kept in a register for its Keys (or 4) FMAs.
    packet kp[Keys];
    for (int u = 0; u < Keys; ++u) {
      kp[u] = load_as_float(k[u] + i);
      keep_in_register(kp[u]);
    }
    for (int r = 0; r < 4; ++r) {
      packet qp = load(q + r * ldq + i);
      keep_in_register(qp);
      for (int u = 0; u < Keys; ++u) acc[u][r] = fma(qp, kp[u], acc[u][r]);
    }
  }
  // Reduced in unrolled loops of their own: with the scalar tail in the
  // same loop, g++ indexed acc in memory and spilled every accumulator.
  float sums[Keys][4];
  ATTN_UNROLL for (int u = 0; u < Keys; ++u)
    ATTN_UNROLL for (int r = 0; r < 4; ++r) sums[u][r] = reduce_add(acc[u][r]);
  for (int u = 0; u < Keys; ++u)
    for (int r = 0; r < 4; ++r) {
      float s = sums[u][r];
      for (index j = i; j < d; ++j) s += q[r * ldq + j] * static_cast<float>(k[u][j]);
      out[u][r * ldo] = core::softmax::floor_score(s);
    }
}

// o[r][d] += p[u][r · ldp] · v[u][d] for 4 output rows (row stride ldo) and
// Keys value rows (1, 2 or 4), keys in order u = 0, 1, ...: the same chain of fused
// multiply-adds per element as 4 · Keys axpy_row calls, so the same bits,
// with one load and store of each o packet for all Keys keys.
template <int Keys, class KV>
inline void axpy_rows4(float* o, index ldo, const float* const p[Keys], index ldp,
                       const KV* const v[Keys], index n) {
  using namespace core::simd;
  packet pp[Keys][4];
  for (int u = 0; u < Keys; ++u)
    for (int r = 0; r < 4; ++r) pp[u][r] = broadcast(p[u][r * ldp]);
  index i = 0;
  for (; i + width <= n; i += width) {
    packet vp[Keys];
    for (int u = 0; u < Keys; ++u) {
      vp[u] = load_as_float(v[u] + i);
      keep_in_register(vp[u]);  // one load for its 4 FMAs
    }
    for (int r = 0; r < 4; ++r) {
      packet acc = load(o + r * ldo + i);
      for (int u = 0; u < Keys; ++u) acc = fma(pp[u][r], vp[u], acc);
      store(o + r * ldo + i, acc);
    }
  }
  for (; i < n; ++i)
    for (int r = 0; r < 4; ++r)
      for (int u = 0; u < Keys; ++u) o[r * ldo + i] += p[u][r * ldp] * static_cast<float>(v[u][i]);
}

// out[u] = q · k[u] for 4 key rows that share one query row: each query
// packet is loaded once for all four, and the eight accumulators are eight
// independent FMA chains (a single dot has two). Every key's sum is formed
// exactly as core::dot forms it (even and odd packets in two chains, the
// lone packet into the first, reduce_add, the scalar tail), so the scores
// equal core::dot's bit for bit. Floored at -FLT_MAX like dot_rows4.
template <class KV>
inline void dot_keys4(const float* q, const KV* const k[4], index d, float* out) {
  using namespace core::simd;
  packet even[4] = {zero(), zero(), zero(), zero()};
  packet odd[4] = {zero(), zero(), zero(), zero()};
  index i = 0;
  for (; i + 2 * width <= d; i += 2 * width) {
    packet q0 = load(q + i), q1 = load(q + i + width);
    keep_in_register(q0);  // one load for its 4 FMAs
    keep_in_register(q1);
    for (int u = 0; u < 4; ++u) {
      even[u] = fma(q0, load_as_float(k[u] + i), even[u]);
      odd[u] = fma(q1, load_as_float(k[u] + i + width), odd[u]);
    }
  }
  if (i + width <= d) {
    const packet q0 = load(q + i);
    for (int u = 0; u < 4; ++u) even[u] = fma(q0, load_as_float(k[u] + i), even[u]);
    i += width;
  }
  float sums[4];  // unrolled, as in dot_rows4: the accumulators stay in registers
  ATTN_UNROLL for (int u = 0; u < 4; ++u) sums[u] = reduce_add(add(even[u], odd[u]));
  for (int u = 0; u < 4; ++u) {
    float s = sums[u];
    for (index j = i; j < d; ++j) s += q[j] * static_cast<float>(k[u][j]);
    out[u] = core::softmax::floor_score(s);
  }
}

// o[d] += p[u] * v[u][d] for 4 value rows in order u = 0..3, one load and
// store of o per packet instead of four: the same chain of fused
// multiply-adds per element as four axpy_row calls, so the same bits.
template <class KV>
inline void axpy_keys4(float* o, const float p[4], const KV* const v[4], index n) {
  using namespace core::simd;
  const packet pp[4] = {broadcast(p[0]), broadcast(p[1]), broadcast(p[2]), broadcast(p[3])};
  index i = 0;
  for (; i + width <= n; i += width) {
    packet acc = load(o + i);
    for (int u = 0; u < 4; ++u) acc = fma(pp[u], load_as_float(v[u] + i), acc);
    store(o + i, acc);
  }
  for (; i < n; ++i)
    for (int u = 0; u < 4; ++u) o[i] += p[u] * static_cast<float>(v[u][i]);
}

// o[d] += p * v[d] for d < n.
template <class KV>
inline void axpy_row(float* o, float p, const KV* v, index n) {
  using namespace core::simd;
  const packet pp = broadcast(p);
  index i = 0;
  for (; i + width <= n; i += width) store(o + i, fma(pp, load_as_float(v + i), load(o + i)));
  for (; i < n; ++i) o[i] += p * static_cast<float>(v[i]);
}

// The engine's walk for one split-KV task: every (query head, position) row
// of batch entry b — row r = h·L + i — against the keys of one chunk, in the
// row layout (scores s[r][key], key_tile keys per row).
template <class Rows, class Policy>
struct split_kv_walk {
  static constexpr index key_tile = split_kv_policy::key_block;
  // Pointer to one K or V row: what Rows::at returns (const float*, ...).
  using row_ptr = typename Rows::value_type*;

  const Rows& k;
  const Rows& v;
  const sdpa_options& opt;
  const detail::band_mask& band;
  const Policy& policy;
  index b, L, Hkv, R, rows_per_kv, d_qk, d_v;
  bool has_bool, has_add;
  const float* q;  // packed queries [R][d_qk]
  float* s;        // scores, then probabilities [R][key_tile]
  float* o;        // unnormalised output [R][d_v]
  float* max;      // [R]
  float* sum;      // [R]

  // The chunk is inside the band's span; a mask_mod's block predicate may
  // still refuse the whole tile for every head. (Without a predicate the
  // mask_mod is evaluated per element in mask(): a decode tile is a few rows.)
  bool visible(index j0, index n) const {
    if constexpr (Policy::has_mask_mod && engine::has_block_predicate<typename Policy::mask_type>::value) {
      const index Hq = R / L;
      for (index h = 0; h < Hq; ++h)
        if (policy.classify(b, h, 0, L, j0, j0 + n) != block_kind::empty) return true;
      return false;
    }
    return true;
  }
  void prefetch(index, index, index) const {}  // keys are read key by key (key_at)

  // The t-th key the walk visits in a tile of n keys: the first 4 · (n / 4)
  // as 4-key groups t / 4 + {0, 1, 2, 3} · (n / 4), the rest in order. In key
  // order, the 4-key groups of MHA (keys j .. j + 3, heads·d apart) are four
  // streams through one stretch of memory that move on every few KiB, and
  // the walk of GQA is a single stream; a quarter tile apart they are four
  // long streams, as the read probe walks them (bf16 MHA at 32k cached keys
  // 12% faster on Zen 3, 3-15% on Zen 4 for f32 and bf16; docs/performance.md,
  // "Decode: the key order"). MHA's groups and GQA's runs both use it.
  static index key_at(index t, index n) {
    const index quarter = n / 4;
    if (t >= 4 * quarter) return t;
    return t / 4 + (t % 4) * quarter;
  }

  // The keys of 4-key group g: their offsets key_at(4g .. 4g + 3) in the tile.
  static void group_keys(index g, index n, index jj[4]) {
    for (int u = 0; u < 4; ++u) jj[u] = key_at(4 * g + u, n);
  }

  // The rows of keys j0 + jj[u], u < Keys, of KV head hk (of K or of V) in
  // batch entry b.
  template <int Keys>
  void rows(const Rows& x, index j0, const index jj[Keys], index hk, row_ptr out[Keys]) const {
    for (int u = 0; u < Keys; ++u) out[u] = x.at(b, j0 + jj[u], hk, 0);
  }

  // 1. Scores, walking the tile key by key in key_at order (a key: every
  // head's row); each K row serves every query row of its GQA group.
  void scores(index j0, index n) {
    // Few rows per K row: four keys per query load.
    const index groups = rows_per_kv < 4 ? n / 4 : 0;
    for (index g = 0; g < groups; ++g) {
      index jj[4];
      group_keys(g, n, jj);
      for (index hk = 0; hk < Hkv; ++hk) {
        row_ptr kr[4];
        rows<4>(k, j0, jj, hk, kr);
        float s4[4];
        for (index r = hk * rows_per_kv; r < (hk + 1) * rows_per_kv; ++r) {
          dot_keys4(q + r * d_qk, kr, d_qk, s4);
          for (int u = 0; u < 4; ++u) s[r * key_tile + jj[u]] = s4[u];
        }
      }
    }
    // The rest (all of GQA's keys), split_kv_policy::gqa_keys at a time.
    in_runs(4 * groups, n, [&](const index* jj, auto keys) {
      score_keys<decltype(keys)::value>(j0, jj);
    });
  }

  // f(jj, keys) for the keys key_at(t0 .. n - 1), Keys at a time, then what
  // is left in runs of Keys / 2, Keys / 4, ..., 1: jj holds a run's offsets
  // in the tile, keys is std::integral_constant<int, run length>.
  template <int Keys = split_kv_policy::gqa_keys, class F>
  static void in_runs(index t0, index n, F f) {
    index t = t0;
    for (; t + Keys <= n; t += Keys) {
      index jj[Keys];
      for (int u = 0; u < Keys; ++u) jj[u] = key_at(t + u, n);
      f(static_cast<const index*>(jj), std::integral_constant<int, Keys>{});
    }
    if constexpr (Keys > 1) in_runs<Keys / 2>(t, n, f);
  }

  // For each KV head hk, the rows x (K or V) holds for keys j0 + jj[u], then
  // its GQA group's query rows: block4(r, rows) for each 4 rows from r,
  // row(r, rows) for the 1-3 left.
  template <int Keys, class Block4, class Row>
  void for_group_rows(const Rows& x, index j0, const index jj[Keys], Block4 block4,
                      Row row) const {
    for (index hk = 0; hk < Hkv; ++hk) {
      row_ptr xr[Keys];
      rows<Keys>(x, j0, jj, hk, xr);
      index r = hk * rows_per_kv;
      const index r_end = r + rows_per_kv;
      for (; r + 4 <= r_end; r += 4) block4(r, xr);
      for (; r < r_end; ++r) row(r, xr);
    }
  }

  // Scores of keys j0 + jj[u] for every query row; each K row serves the
  // query rows of its GQA group, four at a time.
  template <int Keys>
  void score_keys(index j0, const index jj[Keys]) {
    for_group_rows<Keys>(
        k, j0, jj,
        [&](index r, const row_ptr* kr) {
          float* out[Keys];
          for (int u = 0; u < Keys; ++u) out[u] = s + r * key_tile + jj[u];
          dot_rows4<Keys>(q + r * d_qk, d_qk, kr, d_qk, out, key_tile);
        },
        [&](index r, const row_ptr* kr) {
          for (int u = 0; u < Keys; ++u)
            s[r * key_tile + jj[u]] =
                core::softmax::floor_score(core::dot(q + r * d_qk, kr[u], d_qk));
        });
  }

  // 2. The score modifiers, then the masks; rows are padded with -inf to
  // whole packets (key_block is a multiple of the width) so that the
  // softmax is a vector loop.
  void mask(index j0, index n) {
    const index n_vec = detail::round_up(n, core::simd::width);
    for (index r = 0; r < R; ++r) {
      float* sr = s + r * key_tile;
      const index i = r % L, h = r / L;
      if (policy.modifies()) policy.row(sr, n, n_vec, b, h, i, j0);
      const detail::key_band kb = band.row(i);
      const index lo = std::min(std::max<index>(kb.first - j0, 0), n);  // visible: [lo, hi)
      const index hi = std::max(std::min<index>(kb.last - j0 + 1, n), lo);
      std::fill(sr, sr + lo, core::softmax::neg_inf);
      std::fill(sr + hi, sr + n_vec, core::softmax::neg_inf);
      if (has_bool) {
        const bool* m = opt.bool_mask.at(b, h, i, j0);
        const index ms = opt.bool_mask.strides[3];
        for (index jj = lo; jj < hi; ++jj)
          if (!m[jj * ms]) sr[jj] = core::softmax::neg_inf;
      }
      if (has_add) {
        const float* a = opt.additive_mask.at(b, h, i, j0);
        const index as = opt.additive_mask.strides[3];
        for (index jj = lo; jj < hi; ++jj)
          sr[jj] = core::softmax::apply_additive_log2(sr[jj], a[jj * as]);
      }
      if constexpr (Policy::has_mask_mod)
        for (index jj = lo; jj < hi; ++jj)
          if (!policy.allows(b, h, i, j0 + jj)) sr[jj] = core::softmax::neg_inf;
    }
  }

  // 3. One online-softmax step per row.
  void online_softmax(index, index n) {
    const index n_vec = detail::round_up(n, core::simd::width);
    for (index r = 0; r < R; ++r)
      engine::softmax_row(s + r * key_tile, n, n_vec, max[r], sum[r], o + r * d_v, d_v);
  }

  // 4. O += P · V in the order of scores; each V row serves every query row
  // of its GQA group. A key with P = 0 for a row (masked) is never read for
  // it, so a non-finite V of a hidden key cannot reach that row.
  void accumulate(index j0, index n) {
    // As in scores: four V rows per load and store of O.
    const index groups = rows_per_kv < 4 ? n / 4 : 0;
    for (index g = 0; g < groups; ++g) {
      index jj[4];
      group_keys(g, n, jj);
      for (index hk = 0; hk < Hkv; ++hk) {
        row_ptr vr[4];
        rows<4>(v, j0, jj, hk, vr);
        for (index r = hk * rows_per_kv; r < (hk + 1) * rows_per_kv; ++r) {
          const float* pr = s + r * key_tile;
          const float p4[4] = {pr[jj[0]], pr[jj[1]], pr[jj[2]], pr[jj[3]]};
          if (p4[0] != 0.0f && p4[1] != 0.0f && p4[2] != 0.0f && p4[3] != 0.0f) {
            axpy_keys4(o + r * d_v, p4, vr, d_v);
          } else {  // a key masked for this row: never read it for the row
            for (int u = 0; u < 4; ++u)
              if (p4[u] != 0.0f) axpy_row(o + r * d_v, p4[u], vr[u], d_v);
          }
        }
      }
    }
    in_runs(4 * groups, n, [&](const index* jj, auto keys) {  // as in scores
      accumulate_keys<decltype(keys)::value>(j0, jj);
    });
  }

  // O += P · V for keys j0 + jj[u], in order u = 0, 1, ...; each V row serves the
  // query rows of its GQA group, four at a time.
  template <int Keys>
  void accumulate_keys(index j0, const index jj[Keys]) {
    for_group_rows<Keys>(
        v, j0, jj,
        [&](index r, const row_ptr* vr) {
          const float* p[Keys];
          bool visible = true;
          for (int u = 0; u < Keys; ++u) {
            p[u] = s + r * key_tile + jj[u];
            for (index q4 = 0; q4 < 4; ++q4) visible = visible && p[u][q4 * key_tile] != 0.0f;
          }
          if (visible) {
            axpy_rows4<Keys>(o + r * d_v, d_v, p, key_tile, vr, d_v);
          } else {  // a key masked for some rows: never read it for them
            for (int u = 0; u < Keys; ++u)
              for (index q4 = 0; q4 < 4; ++q4)
                if (p[u][q4 * key_tile] != 0.0f)
                  axpy_row(o + (r + q4) * d_v, p[u][q4 * key_tile], vr[u], d_v);
          }
        },
        [&](index r, const row_ptr* vr) {
          for (int u = 0; u < Keys; ++u) {
            const float pr = s[r * key_tile + jj[u]];
            if (pr != 0.0f) axpy_row(o + r * d_v, pr, vr[u], d_v);
          }
        });
  }
};

/// One split-KV task's working memory.
struct split_kv_scratch {
  std::vector<float> q, s, o, max, sum;

  /// Room for R rows of d_qk query and d_v output floats.
  split_kv_scratch(index R, index d_qk, index d_v)
      : q(R * d_qk), s(R * split_kv_policy::key_block), o(R * d_v), max(R), sum(R) {}
};

// One split_kv_decode call in two phases of independent work items: the
// tasks (batch entry, key chunk), then the merge of each output row's
// partials, which needs every task of its batch entry done. split_kv_decode
// runs the phases itself; the batched driver of packed and paged sequences
// (batched_sequences.hpp) runs the phases of many calls together. The
// views, options and policy are held by reference.
template <class Rows, class Policy>
struct split_kv_call {
  const strided<const float, 4>& q;
  const Rows& k;
  const Rows& v;
  const strided<float, 4>& out;
  const sdpa_options& opt;
  const Policy& policy;
  index B, L, Hq, d_qk, S, Hkv, d_v, group, R, rows_per_kv, n_chunks, chunk, tasks;
  const sliding_window* window;
  bool has_bool, has_add;
  float scale_log2;
  // Partial results of every task: R rows of d_v outputs and R LSEs.
  std::vector<float> part_o, part_lse;

  split_kv_call(const strided<const float, 4>& q_, const Rows& k_, const Rows& v_,
                const strided<float, 4>& out_, float scale, const sdpa_options& opt_,
                const Policy& policy_)
      : q(q_), k(k_), v(v_), out(out_), opt(opt_), policy(policy_) {
    B = q.dims[0], L = q.dims[1], Hq = q.dims[2], d_qk = q.dims[3];
    S = k.dims[1], Hkv = k.dims[2], d_v = v.dims[3];
    // What scaled_dot_product_attention has checked.
    ATTN_ASSERT(Hkv >= 1 && Hq % Hkv == 0 && d_qk >= 1 && std::isfinite(scale));
    ATTN_ASSERT(q.strides[3] == 1);
    ATTN_ASSERT(out.strides[3] == 1 || d_v <= 1);
    ATTN_ASSERT(opt.key_lengths.empty() || static_cast<index>(opt.key_lengths.size()) == B);
    // Rows of one task: every (query head, position) of the batch entry, row
    // r = h * L + i, so the rows of KV head hk are [hk·group·L, (hk+1)·group·L).
    group = Hq / Hkv, R = Hq * L, rows_per_kv = group * L;
    n_chunks = split_kv_policy::chunks(B, S, R * (d_v + 1));
    chunk = detail::ceil_div(S, n_chunks);
    tasks = B * n_chunks;
    window = opt.window ? &*opt.window : nullptr;
    has_bool = !opt.bool_mask.empty(), has_add = !opt.additive_mask.empty();
    scale_log2 = scale * core::softmax::log2e;
    part_o.resize(static_cast<std::size_t>(tasks * R * d_v));
    part_lse.resize(static_cast<std::size_t>(tasks * R));
  }

  /// Floating-point operations of the whole call (the thread-count rule).
  double flops() const { return 2.0 * B * Hq * static_cast<double>(L) * S * (d_qk + d_v); }

  /// Output rows the merge phase finishes.
  index merge_rows() const { return B * R; }

  /// A thread's working memory for any task of this call.
  split_kv_scratch make_scratch() const { return split_kv_scratch(R, d_qk, d_v); }

  /// Task t: batch entry t / n_chunks, key chunk t % n_chunks. Scratch may
  /// be larger than this call's (the batched driver sizes it for several).
  void run_task(split_kv_scratch& ws, index t) {
    const index c = t % n_chunks, b = t / n_chunks;
    const index key_len = opt.key_lengths.empty() ? S : opt.key_lengths[b];
    const detail::band_mask band(L, S, key_len, opt.causal, window);
    for (index r = 0; r < R; ++r)
      engine::pack_query_row(q.at(b, r % L, r / L, 0), d_qk, scale_log2, ws.q.data() + r * d_qk);
    std::fill(ws.o.begin(), ws.o.begin() + R * d_v, 0.0f);
    std::fill(ws.max.begin(), ws.max.begin() + R, core::softmax::neg_inf);
    std::fill(ws.sum.begin(), ws.sum.begin() + R, 0.0f);

    const detail::key_band span = band.rows(0, L);
    split_kv_walk<Rows, Policy> walk{k,           v,           opt,         band,
                                     policy,      b,           L,           Hkv,
                                     R,           rows_per_kv, d_qk,        d_v,
                                     has_bool,    has_add,     ws.q.data(), ws.s.data(),
                                     ws.o.data(), ws.max.data(), ws.sum.data()};
    engine::run_chunk(walk, std::max(c * chunk, span.first), std::min((c + 1) * chunk, span.last + 1));

    for (index r = 0; r < R; ++r)
      part_lse[t * R + r] = engine::finish_row(ws.max[r], ws.sum[r], ws.o.data() + r * d_v, d_v,
                                               part_o.data() + (t * R + r) * d_v)
                                .lse;
  }

  /// Merges the chunks of output row `row` (batch entry row / R) in chunk
  /// order and writes it out; every task of its batch entry has run.
  void merge_row(index row) {
    const index r = row % R, b = row / R;
    const index first = b * n_chunks;
    float* o = part_o.data() + (first * R + r) * d_v;
    float lse = part_lse[first * R + r];
    for (index c = 1; c < n_chunks; ++c)
      core::softmax::merge_partial(o, lse, part_o.data() + ((first + c) * R + r) * d_v,
                                   part_lse[(first + c) * R + r], d_v);
    const index i = r % L, h = r / L;
    if (policy.has_sinks()) {
      // The merged partial (normalised, LSE) as a softmax state, the sink
      // folded in (core::softmax::fold_sink).
      float m = lse * core::log2e, l = lse == core::softmax::neg_inf ? 0.0f : 1.0f;
      if (std::isnan(lse)) l = lse;
      const float f = core::softmax::fold_sink(m, l, policy.sink_log2(h));
      const core::softmax::row_result res = core::softmax::finish_row_log2(m, l);
      for (index d = 0; d < d_v; ++d) o[d] *= f * res.inv_sum;
      // A row that saw nothing has the sink's LSE exactly, not via log2.
      lse = lse == core::softmax::neg_inf ? policy.sink(h) : res.lse;
    }
    float* dst = out.at(b, i, h, 0);
    for (index d = 0; d < d_v; ++d) dst[d] = lse == core::softmax::neg_inf ? 0.0f : o[d];
    float* lse_out = opt.lse.empty() ? nullptr : opt.lse.at(b, h, i);
    if (lse_out) *lse_out = lse;
    // A chunk's unnormalised O overflows fp32 when its visible |v| sum past
    // FLT_MAX (inf, or NaN once rescaled), and the merged row inherits it;
    // overflowing scores can leave a NaN LSE beside a finite O: such a row,
    // and only such a row, is redone in double.
    if (core::softmax::needs_fp64_repair(dst, d_v, lse)) {
      std::vector<float> q_log2(static_cast<std::size_t>(d_qk));
      engine::pack_query_row(q.at(b, i, h, 0), d_qk, scale_log2, q_log2.data());
      const index key_len = opt.key_lengths.empty() ? S : opt.key_lengths[b];
      const detail::band_mask band(L, S, key_len, opt.causal, window);
      recompute_sdpa_row(q_log2.data(), 1, k, v, opt, band, policy, b, i, h, h / group, dst,
                         lse_out);
    }
  }
};

template <class Rows, class Policy>
void split_kv_decode(const strided<const float, 4>& q, const Rows& k, const Rows& v,
                     const strided<float, 4>& out, float scale, const sdpa_options& opt,
                     const Policy& policy) {
  split_kv_call<Rows, Policy> call(q, k, v, out, scale, opt, policy);
  const int threads = core::threads_for_work(opt.num_threads, call.flops());
  core::parallel_for(
      call.tasks, threads, [&] { return call.make_scratch(); },
      [&](split_kv_scratch& ws, index t) { call.run_task(ws, t); });
  core::parallel_for(call.merge_rows(), threads, [&](index row) { call.merge_row(row); });
}

}  // namespace ATTN_ABI
}  // namespace attn::detail::sdpa
