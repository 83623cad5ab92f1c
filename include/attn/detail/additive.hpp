// attn/detail/additive.hpp: the kernel behind attn::additive_attention
// (attn/additive.hpp): the key and query projections, the fused scores, the
// context sum and the merge of key chunks. Arguments arrive validated.
//
// Internal header. A public header defines ATTN_DETAIL_ALLOWED before it
// includes its detail headers and never undefines it, so public headers
// nest and combine in any order; a translation unit that reaches this file
// without going through one stops at the #error below (Eigen's scheme).
//
// The scores never form the [L, S, d_a] tensor of pre-activations: for
// each (query, key) pair the kernel adds the two projections a packet at a
// time, takes attn::core::simd::tanh in registers and folds it into the dot with
// v. When every projected feature of the query and of the key lies within
// ±exp_form_range (the usual case), it uses the exponential form instead:
// tanh(x + y) = 1 - 2 / (e^(2x) e^(2y) + 1), with e^(2y) made once per key
// by project_keys and e^(2x) once per query, two features sharing one
// division: a few FMAs and half a division per element instead of a tanh,
// at no more error (see exp_form_range and tests/test_additive.cpp
// AdditiveExpForm).
//
// Query rows go in tasks of task_rows (4 or 16); a task takes its keys in
// blocks of key_block: a block's scores, then the core's online softmax
// state (attn::core::softmax::online_state) and the block's weighted value rows,
// prefetched into L2 while its scores were computed, added to the output,
// which is divided by the row sum at the end. A call with few row tasks (a
// decoder step) also splits its keys into chunks on separate tasks, merged
// like key blocks (key_chunks). Attention weights, when asked for, go
// through the core's row softmax. The decomposition depends on the shapes
// alone and every task runs the same operations in the same order, so the
// output bits do not depend on the thread count. docs/performance.md has
// the measurements behind these choices.
#pragma once

#ifndef ATTN_DETAIL_ALLOWED
#error "attn/detail/additive.hpp is internal: include <attn/additive.hpp>"
#endif

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>
#include <vector>

#include "attn/core/abi.hpp"
#include "attn/core/aligned.hpp"
#include "attn/core/fp64_row.hpp"
#include "attn/core/index.hpp"
#include "attn/core/linear.hpp"
#include "attn/core/math.hpp"
#include "attn/core/parallel.hpp"
#include "attn/core/scratch.hpp"
#include "attn/core/simd.hpp"
#include "attn/core/softmax_natural.hpp"
#include "attn/view.hpp"

namespace attn::detail::additive {
inline namespace ATTN_ABI {

// Score of one query against 4 keys for the additive form:
// out[k] = Σ_a v[a] tanh(qp[a] + kp_k[a]) over `n` floats (a multiple of the
// packet width, zero-padded). Each key has its own accumulator, so a key's
// score has the same bits whichever block it falls in.
inline void additive_scores4(const float* qp, const float* v, const float* k0, const float* k1,
                             const float* k2, const float* k3, index n, float* out) {
  using namespace core::simd;
  packet a0 = zero(), a1 = zero(), a2 = zero(), a3 = zero();
  for (index d = 0; d < n; d += width) {
    const packet q = load(qp + d), w = load(v + d);
    a0 = fma(w, core::simd::tanh(add(q, load(k0 + d))), a0);
    a1 = fma(w, core::simd::tanh(add(q, load(k1 + d))), a1);
    a2 = fma(w, core::simd::tanh(add(q, load(k2 + d))), a2);
    a3 = fma(w, core::simd::tanh(add(q, load(k3 + d))), a3);
  }
  out[0] = reduce_add(a0);
  out[1] = reduce_add(a1);
  out[2] = reduce_add(a2);
  out[3] = reduce_add(a3);
}

inline float additive_score1(const float* qp, const float* v, const float* k0, index n) {
  using namespace core::simd;
  packet a0 = zero();
  for (index d = 0; d < n; d += width)
    a0 = fma(load(v + d), core::simd::tanh(add(load(qp + d), load(k0 + d))), a0);
  return reduce_add(a0);
}

// Dot products of one (padded) query with 4 / 1 (padded) keys, one packet
// chain per key in both, so a key's score does not depend on whether it was
// scored in a group of 4 (which depends on the mask); core::dot, with two
// chains, would break that.
inline void dot_scores4(const float* q, const float* k0, const float* k1, const float* k2,
                        const float* k3, index n, float* out) {
  using namespace core::simd;
  packet a0 = zero(), a1 = zero(), a2 = zero(), a3 = zero();
  for (index d = 0; d < n; d += width) {
    const packet x = load(q + d);
    a0 = fma(x, load(k0 + d), a0);
    a1 = fma(x, load(k1 + d), a1);
    a2 = fma(x, load(k2 + d), a2);
    a3 = fma(x, load(k3 + d), a3);
  }
  out[0] = reduce_add(a0);
  out[1] = reduce_add(a1);
  out[2] = reduce_add(a2);
  out[3] = reduce_add(a3);
}

inline float dot_score1(const float* q, const float* k0, index n) {
  using namespace core::simd;
  packet a0 = zero();
  for (index d = 0; d < n; d += width) a0 = fma(load(q + d), load(k0 + d), a0);
  return reduce_add(a0);
}

// The exponential form of the additive score. With x = qp_a, y = kp_a:
//   tanh(x + y) = 1 - 2 / (e^(2x) e^(2y) + 1),
// so with E_a = e^(2x) per query and F_a = e^(2y) per key, both computed
// once, the score is Σ_a v_a - 2 Σ_a v_a / (E_a F_a + 1), and two features
// share one division: v1 / d1 + v2 / d2 = (v1 d2 + v2 d1) / (d1 d2). Per
// pair of packets that is two FMAs for the d, three multiplies or FMAs, one
// division and an add, instead of two tanh. The product E_a F_a =
// e^(2(x + y)) carries no cancellation, so the element error stays below
// tanh's (AdditiveExpForm.ElementErrorWithinTheTanhBound). It holds while
// |x|, |y| <= exp_form_range (E, F and 1 / d stay normal floats); a query or
// key with a feature outside (or non-finite) takes the tanh form. d is capped
// at exp_form_denominator_cap so that d1 d2 cannot overflow; past the cap
// v / d is below 2^-63 |v|, far under one rounding of the score. The error
// is absolute, within tanh's bound per element times |v_a| like the tanh
// form's; a score near 0 does not keep the relative accuracy the tanh form
// has there.
constexpr float exp_form_range = 21.5f;
constexpr float exp_form_denominator_cap = 0x1p63f;

// e^(2x) of n floats (a multiple of the packet width) into out; returns
// whether every |x| <= exp_form_range (false for NaN).
inline bool exp_form_factors(const float* x, index n, float* out) {
  using namespace core::simd;
  packet worst = zero(), probe = zero();  // probe: x · 0 is NaN for a NaN or inf x
  for (index d = 0; d < n; d += width) {
    const packet xd = load(x + d);
    worst = core::simd::max(worst, core::simd::max(xd, sub(zero(), xd)));
    probe = add(probe, mul(xd, zero()));
    // (a lane out of range makes the row fail the test below, and then its
    // factors are never read: no range handling needed)
    store(out + d, core::simd::exp_in_range(add(xd, xd)));
  }
  return reduce_max(worst) <= exp_form_range && reduce_add(probe) == 0.0f;
}

// Σ v / d over the features [a, a + 2 width) of one (query, key) pair, d =
// min(E F + 1, cap), with one division. (Σ|v| <= sum_abs_v_limit keeps
// v1 d2 + v2 d1 finite.)
inline core::simd::packet exp_form_pair(const float* e, const float* v, const float* f, index a) {
  using namespace core::simd;
  const packet one = broadcast(1.0f), cap = broadcast(exp_form_denominator_cap);
  const index b = a + width;
  const packet d1 = core::simd::min(fma(load(e + a), load(f + a), one), cap);
  const packet d2 = core::simd::min(fma(load(e + b), load(f + b), one), cap);
  return ei::pdiv(fma(load(v + a), d2, mul(load(v + b), d1)), mul(d1, d2));
}

// The same for one packet of features (the last, when n / width is odd).
inline core::simd::packet exp_form_single(const float* e, const float* v, const float* f, index a) {
  using namespace core::simd;
  const packet one = broadcast(1.0f), cap = broadcast(exp_form_denominator_cap);
  return ei::pdiv(load(v + a), core::simd::min(fma(load(e + a), load(f + a), one), cap));
}

// Scores of Q queries against 4 keys in the exponential form: e[q] the
// queries' E, f[k] the keys' F, sum_v = Σ_a v_a; out[4 q + k]. Each key
// row loaded serves all Q queries, and each score has the same bits as
// additive_score_exp1's.
template <int Q>
inline void additive_scores_exp(const float* const* e, const float* v, const float* const* f,
                                index n, float sum_v, float* out) {
  using namespace core::simd;
  packet acc[Q][4];
  for (int q = 0; q < Q; ++q)
    for (int k = 0; k < 4; ++k) acc[q][k] = zero();
  index d = 0;
  for (; d + 2 * width <= n; d += 2 * width)
    for (int q = 0; q < Q; ++q)
      for (int k = 0; k < 4; ++k) acc[q][k] = add(acc[q][k], exp_form_pair(e[q], v, f[k], d));
  if (d < n)
    for (int q = 0; q < Q; ++q)
      for (int k = 0; k < 4; ++k) acc[q][k] = add(acc[q][k], exp_form_single(e[q], v, f[k], d));
  for (int q = 0; q < Q; ++q)
    for (int k = 0; k < 4; ++k) out[4 * q + k] = sum_v - 2.0f * reduce_add(acc[q][k]);
}

inline float additive_score_exp1(const float* e, const float* v, const float* f, index n,
                                 float sum_v) {
  using namespace core::simd;
  packet a0 = zero();
  index d = 0;
  for (; d + 2 * width <= n; d += 2 * width) a0 = add(a0, exp_form_pair(e, v, f, d));
  if (d < n) a0 = add(a0, exp_form_single(e, v, f, d));
  return sum_v - 2.0f * reduce_add(a0);
}

/// Query rows per register tile of the exponential form.
constexpr int exp_tile_rows = 2;

/// Query rows per register tile of the context sum.
constexpr int value_tile_rows = 4;

/// Query rows per parallel task: they share the key mask and lengths, and
/// each key block's e^(2y) (or projected keys) and value rows, read into L2
/// once for all of them. Long query runs take max_task_rows, so a source
/// longer than L2 holds is read from L3 once per 16 rows instead of 4;
/// shorter ones take min_task_rows, keeping enough tasks to share between
/// threads. The choice depends on the shape alone, and a row's bits do not
/// depend on which rows share its task.
constexpr index min_task_rows = 4, max_task_rows = 16;
inline index task_rows(index L) { return L >= 8 * max_task_rows ? max_task_rows : min_task_rows; }

/// Key chunks per row task. A call with fewer than 8 row tasks (a decoder
/// step: one query row per source) also splits its keys, about chunk_keys
/// each, into tasks of their own, which leave unnormalised partial sums
/// with their online-softmax max and sum; the partials of a row merge in
/// chunk order like key blocks. This puts both cores on one step, and each
/// reads half the source from L3. The count depends on the shape alone, so
/// the bits do not depend on the thread count (but a step's bits can differ
/// with the batch size or L, which change the count).
constexpr index chunk_keys = 512, max_key_chunks = 8;
inline index key_chunks(index row_tasks, index S) {
  if (row_tasks >= 8 || S <= chunk_keys) return 1;
  return std::min(max_key_chunks, (S + chunk_keys - 1) / chunk_keys);
}

// Scores of two queries against four keys (8 tanh per packet step; each
// key row loaded once serves both queries). out[0..3]: query a,
// out[4..7]: query b. The same per-score arithmetic as additive_scores4.
inline void additive_scores2x4(const float* qa, const float* qb, const float* v,
                               const float* const* k, index n, float* out) {
  using namespace core::simd;
  packet a0 = zero(), a1 = zero(), a2 = zero(), a3 = zero();
  packet b0 = zero(), b1 = zero(), b2 = zero(), b3 = zero();
  for (index d = 0; d < n; d += width) {
    const packet x = load(qa + d), y = load(qb + d), w = load(v + d);
    const packet k0 = load(k[0] + d), k1 = load(k[1] + d), k2 = load(k[2] + d), k3 = load(k[3] + d);
    a0 = fma(w, core::simd::tanh(add(x, k0)), a0);
    a1 = fma(w, core::simd::tanh(add(x, k1)), a1);
    a2 = fma(w, core::simd::tanh(add(x, k2)), a2);
    a3 = fma(w, core::simd::tanh(add(x, k3)), a3);
    b0 = fma(w, core::simd::tanh(add(y, k0)), b0);
    b1 = fma(w, core::simd::tanh(add(y, k1)), b1);
    b2 = fma(w, core::simd::tanh(add(y, k2)), b2);
    b3 = fma(w, core::simd::tanh(add(y, k3)), b3);
  }
  out[0] = reduce_add(a0);
  out[1] = reduce_add(a1);
  out[2] = reduce_add(a2);
  out[3] = reduce_add(a3);
  out[4] = reduce_add(b0);
  out[5] = reduce_add(b1);
  out[6] = reduce_add(b2);
  out[7] = reduce_add(b3);
}

inline void dot_scores2x4(const float* qa, const float* qb, const float* const* k, index n,
                          float* out) {
  dot_scores4(qa, k[0], k[1], k[2], k[3], n, out);
  dot_scores4(qb, k[0], k[1], k[2], k[3], n, out + 4);
}

// Strips of KC packets of accumulate_block for KR rows (nr <= KR): returns
// the first feature not done.
template <int KR, int KC>
inline index accumulate_strips(const float* const* p, const float* f, float* const* o, index nr,
                               const float* const* v, index nk, index Dv, index d) {
  using namespace core::simd;
  auto start = [&](int r, const float* src) {
    return f[r] == 0.0f ? zero() : f[r] == 1.0f ? load(src) : mul(load(src), broadcast(f[r]));
  };
  for (; d + KC * width <= Dv; d += KC * width) {
    packet acc[KR][KC];
    for (int r = 0; r < KR; ++r)  // (rows past nr: zero, never stored)
      for (int c = 0; c < KC; ++c) acc[r][c] = r < nr ? start(r, o[r] + d + c * width) : zero();
    for (index m = 0; m < nk; ++m) {
      packet x[KC];
      for (int c = 0; c < KC; ++c) x[c] = load(v[m] + d + c * width);
      for (int r = 0; r < KR && r < nr; ++r) {
        const float w = p[r][m];
        if (w == 0.0f) continue;
        const packet pw = broadcast(w);
        for (int c = 0; c < KC; ++c) acc[r][c] = core::simd::fma(pw, x[c], acc[r][c]);
      }
    }
    for (int r = 0; r < KR && r < nr; ++r)
      for (int c = 0; c < KC; ++c) store(o[r] + d + c * width, acc[r][c]);
  }
  return d;
}

// accumulate_block for one row (a decoder step): value rows four at a time
// stream past the row's output, which stays in L1. Each feature still sums
// its keys in key order with one FMA per key, so the bits are those of the
// register strips below. (Faster than the strips for one row: their jumps
// between value rows defeat the prefetcher; docs/performance.md.)
inline void accumulate_row(const float* p, float f, float* o, const float* const* v, index nk,
                           index Dv) {
  using namespace core::simd;
  for (index d = 0; d < Dv; ++d) o[d] = f == 0.0f ? 0.0f : f == 1.0f ? o[d] : o[d] * f;
  const index vec = Dv / width * width;
  index m = 0;
  while (m < nk) {
    if (m + 4 <= nk && p[m] != 0.0f && p[m + 1] != 0.0f && p[m + 2] != 0.0f && p[m + 3] != 0.0f) {
      const packet w0 = broadcast(p[m]), w1 = broadcast(p[m + 1]), w2 = broadcast(p[m + 2]),
                   w3 = broadcast(p[m + 3]);
      const float *v0 = v[m], *v1 = v[m + 1], *v2 = v[m + 2], *v3 = v[m + 3];
      for (index d = 0; d < vec; d += width) {
        packet a = fma(w0, load(v0 + d), load(o + d));
        a = fma(w1, load(v1 + d), a);
        a = fma(w2, load(v2 + d), a);
        store(o + d, fma(w3, load(v3 + d), a));
      }
      for (index d = vec; d < Dv; ++d)
        o[d] = p[m + 3] * v3[d] + (p[m + 2] * v2[d] + (p[m + 1] * v1[d] + (p[m] * v0[d] + o[d])));
      m += 4;
      continue;
    }
    if (p[m] != 0.0f) {  // (weight 0 adds nothing, as in the strips)
      const packet w0 = broadcast(p[m]);
      for (index d = 0; d < vec; d += width) store(o + d, fma(w0, load(v[m] + d), load(o + d)));
      for (index d = vec; d < Dv; ++d) o[d] = p[m] * v[m][d] + o[d];
    }
    ++m;
  }
}

// One key block of the context sum, for nr (<= max_task_rows) rows:
// o_r[d] <- o_r[d] · f_r + Σ_m p_r[m] · v_m[d] over the block's nk value rows
// (contiguous, d < Dv), summed in key order. f_r rescales what earlier
// blocks accumulated when the row's running max moved; f_r = 0 (the row had
// seen nothing) clears o_r instead, so an inf there cannot make NaN. Keys of
// weight 0 add nothing to a row (an inf in such a value cannot make NaN
// either). Outputs stay in registers while the block's value rows, hot in
// L2, stream past, each loaded once for all rows.
inline void accumulate_block(const float* const* p, const float* f, float* const* o, index nr,
                             const float* const* v, index nk, index Dv) {
  constexpr int kr = value_tile_rows;
  if (nr > kr) {  // register tiles of kr rows, the block's values hot in L2
    for (index r = 0; r < nr; r += kr)
      accumulate_block(p + r, f + r, o + r, std::min<index>(kr, nr - r), v, nk, Dv);
    return;
  }
  if (nr == 1) return accumulate_row(p[0], f[0], o[0], v, nk, Dv);
  index d = accumulate_strips<kr, 4>(p, f, o, nr, v, nk, Dv, 0);
  d = accumulate_strips<kr, 1>(p, f, o, nr, v, nk, Dv, d);
  if (d == Dv) return;
  // The last Dv % width features, keys outer so each value row is read once.
  for (index r = 0; r < nr; ++r)
    for (index e = d; e < Dv; ++e) o[r][e] = f[r] == 0.0f ? 0.0f : o[r][e] * f[r];
  for (index m = 0; m < nk; ++m)
    for (index r = 0; r < nr; ++r) {
      const float w = p[r][m];
      if (w == 0.0f) continue;
      for (index e = d; e < Dv; ++e) o[r][e] = w * v[m][e] + o[r][e];
    }
}

// Features of the context row o (stride os) that came out non-finite,
// summed again in double: Σ_j a_j v_j is a convex combination of the values,
// at most max|v|, but with values near FLT_MAX the rounded weights and sums
// can pass FLT_MAX (inf). A feature takes the double sum (clamped to
// ±FLT_MAX, a difference below one ulp) when that is finite; an inf or NaN
// value of a key the row weighs stays in its feature. Finite features are
// never rewritten.
inline void weighted_sum_fp64_if_nonfinite(const float* a, float* o, const index* vis, index nv,
                                           const strided<const float, 3>& values, index b, index os,
                                           index Dv) {
  constexpr double big = std::numeric_limits<float>::max();
  for (index d = 0; d < Dv; ++d) {
    if (std::isfinite(o[d * os])) continue;
    double acc = 0.0;
    for (index m = 0; m < nv; ++m) {
      const double w = a[vis[m]];
      if (w == 0.0) continue;  // as accumulate_block: a key of weight 0 adds nothing
      acc += w * static_cast<double>(*values.at(b, vis[m], d));
    }
    if (std::isfinite(acc)) o[d * os] = static_cast<float>(std::min(std::max(acc, -big), big));
  }
}

/// Visible keys per block of the context sum: their value rows (256 KiB at
/// d_v = 1000) are prefetched into L2 while the block's scores are computed,
/// then summed from there.
constexpr index key_block = 64;

// Per-thread working memory: the rows' scores and the visible key indices,
// borrowed from the thread's buffers (no allocation per call).
struct additive_scratch {
  // (score_rows: 0 when the call keeps the scores elsewhere)
  additive_scratch(index rows, index score_rows, index S)
      : scores(static_cast<std::size_t>(score_rows * S)),
        visible(static_cast<std::size_t>(S)),
        weights(static_cast<std::size_t>(rows * key_block)),
        values(static_cast<std::size_t>(key_block)) {}
  struct scores_tag;
  struct visible_tag;
  struct weights_tag;
  struct values_tag;
  core::scratch_array<float, scores_tag> scores;         // [task_rows][S]
  core::scratch_array<index, visible_tag> visible;       // [S]
  core::scratch_array<float, weights_tag> weights;       // [task_rows][key_block]: exp
  core::scratch_array<const float*, values_tag> values;  // [key_block]: value rows
};

// Tags of the per-thread buffers a call borrows (core::scratch_array):
// projected queries, their exponential-form factors, whether each query row
// is in the form's range, the key chunks' partial sums, and the scores of a
// chunked call that returns its weights.
struct projected_queries_tag;
struct query_factors_tag;
struct query_in_range_tag;
struct chunk_partials_tag;
struct chunked_scores_tag;

// The exponential form's score is Σ v - 2 Σ v / (E F + 1); it is used only
// while Σ_a |v_a| is at most this, far from overflow (the paired quotient
// forms |v| d with d up to 2^63).
constexpr double sum_abs_v_limit = 1e18;

using matrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using const_row_block = Eigen::Map<const matrix, 0, Eigen::OuterStride<>>;
using row_block = Eigen::Map<matrix, 0, Eigen::OuterStride<>>;

// Projected rows (queries or keys) whose fp32 projection came out non-finite
// from finite inputs: a sum of finite terms W_a·x (+ b_a) that overflowed,
// possibly to the wrong sign (inf stays inf however large the negative terms
// that follow), or to +inf on one side and -inf on the other, where
// tanh(inf - inf) would be NaN. Such a row's projection is computed again in
// double (no overflow below 2^1024) and kept here; its non-finite fp32
// features are replaced by the double values, rounded, or by ±inf with the
// right sign when out of float range. A pair whose fp32 score still comes
// out non-finite is then scored in double from these (context::score_fp64).
// Empty, and never allocated, while no row is wide (the usual case).
struct wide_rows {
  index dim = 0;
  std::vector<index> slot;     // per row: -1, or its row of `values`; empty: none wide
  std::vector<double> values;  // [wide rows][dim]

  const double* row(index r) const {
    if (slot.empty()) return nullptr;
    const index k = slot[static_cast<std::size_t>(r)];
    return k < 0 ? nullptr : values.data() + k * dim;
  }
  // Row r of n (dim features at p) when it is non-finite from finite inputs
  // (`finite_input`): `wide(out)` fills the double projection into out.
  template <class Wide>
  void repair(index r, index n, float* p, bool finite_input, const Wide& wide) {
    if (core::softmax::all_finite(p, dim) || !finite_input) return;
    if (slot.empty()) slot.assign(static_cast<std::size_t>(n), -1);
    slot[static_cast<std::size_t>(r)] = static_cast<index>(values.size()) / std::max<index>(dim, 1);
    values.resize(values.size() + static_cast<std::size_t>(dim));
    double* d = values.data() + values.size() - static_cast<std::size_t>(dim);
    wide(d);
    constexpr double fmax = std::numeric_limits<float>::max();
    constexpr double inf = std::numeric_limits<double>::infinity();
    for (index a = 0; a < dim; ++a)
      if (!std::isfinite(p[a]))  // (finite features did not overflow: kept)
        p[a] = static_cast<float>(std::fabs(d[a]) <= fmax || std::isnan(d[a])
                                      ? d[a]
                                      : std::copysign(inf, d[a]));
  }
};

// Σ_c w[c]·x[c] in double, then plus b (as the fp32 projection adds it:
// b first would be lost next to huge terms that then cancel).
inline double dot_fp64(const float* w, const float* x, index n, double b) {
  double s = 0.0;
  for (index c = 0; c < n; ++c) s += double(w[c]) * double(x[c]);
  return s + b;
}

// The storage of attn::additive_keys: the projected keys [B, S] as rows of
// `stride` floats (dim of them used, the rest zero), each starting on a
// cache line. For the additive score also e^(2·kp) per feature (the key's
// factor of the exponential form) and, per key, whether all its features
// are within that form's range; both empty when the layer rules it out.
struct key_projection {
  index B = 0, S = 0, dim = 0, stride = 0;
  core::aligned_vector<float> data;
  core::aligned_vector<float> exp_factor;  // e^(2·kp) per feature: the key factor
  std::vector<unsigned char> exp_form;
  wide_rows wide;  // rows [B·S] whose projection overflowed (see wide_rows)

  const float* row(index b, index j) const { return data.data() + (b * S + j) * stride; }
};

// What the kernel reads of one additive_attention layer; made per call by
// the layer, pointing into its members.
struct layer {
  bool additive = false;  // e = vᵀ tanh(...); false: a dot product (Luong's dot, general)
  index dim = 0;          // features of a projected query and key; 0 (dot): the inputs' own
  const core::packed_linear* wq = nullptr;  // W_q with the bias; null: the identity
  const core::packed_linear* wk = nullptr;  // W_k (additive) or W (general); null: identity
  const Eigen::VectorXf* bias = nullptr;    // b [d_a] or empty; added here when wq is null
  // The same W_q and W_k as given, row-major [out, in] (in: the columns),
  // for the double projection of a wide row (null with wq / wk).
  const float* wq_raw = nullptr;
  const float* wk_raw = nullptr;
  index wq_in = 0, wk_in = 0;
  const float* v = nullptr;                 // the effective v, zero-padded to the stride
  float sum_v = 0.0f;                       // Σ_a v_a
  bool exp_form = false;  // additive, and Σ|v| <= sum_abs_v_limit: the form may be used
};

// The per-call arguments besides the tensors (attn::additive_options).
struct call {
  const std::vector<index>& key_lengths;  // [B]; empty: all S keys
  strided<const bool, 2> key_mask;        // [B, S]; empty: every key
  strided<const bool, 2> query_mask;      // [B, L]; empty: every query
  strided<float, 3> weights;              // [B, L, S] out; empty: not wanted
  int num_threads;                        // 0: OpenMP's default
};

// Whether query i of batch entry b produces output (query_mask).
inline bool live_query(const call& c, index b, index i) {
  return c.query_mask.empty() || *c.query_mask.at(b, i);
}

// The keys j in [j0, j1) that batch entry b may attend (key_lengths and
// key_mask), in order, into vis; returns how many.
inline index visible_keys(const call& c, index b, index S, index j0, index j1, index* vis) {
  const index len = c.key_lengths.empty() ? S : c.key_lengths[static_cast<std::size_t>(b)];
  index nv = 0;
  for (index j = j0; j < std::min(len, j1); ++j)
    if (c.key_mask.empty() || *c.key_mask.at(b, j)) vis[nv++] = j;
  return nv;
}

// The key side of one source, [B, S, d_k] -> key_projection: W_k k (additive
// with W_k), W k (general) or k itself, and the exponential form's factors
// when the layer allows the form. On `threads` threads (0: all); the bits
// do not depend on it.
inline key_projection project_keys(const layer& l, const strided<const float, 3>& keys,
                                   int threads) {
  key_projection c;
  c.B = keys.dims[0];
  c.S = keys.dims[1];
  c.dim = l.dim > 0 ? l.dim : keys.dims[2];
  c.stride = detail::round_up(std::max<index>(c.dim, 1), core::simd::width);
  c.data.assign(static_cast<std::size_t>(c.B * c.S * c.stride), 0.0f);
  for (index b = 0; b < c.B; ++b) {
    if (c.S == 0) break;
    float* P = c.data.data() + b * c.S * c.stride;
    if (l.wk) {
      l.wk->apply(keys.at(b, 0, 0), keys.strides[1], c.S, P, c.stride, threads);
    } else {
      const_row_block K(keys.at(b, 0, 0), c.S, keys.dims[2], Eigen::OuterStride<>(keys.strides[1]));
      row_block(P, c.S, c.dim, Eigen::OuterStride<>(c.stride)) = K;
    }
  }
  // (a copy of finite keys is finite: only W k can overflow)
  c.wide.dim = c.dim;
  if (l.wk)
    for (index k = 0; k < c.B * c.S; ++k) {
      const float* in = keys.at(k / std::max<index>(c.S, 1), k % std::max<index>(c.S, 1), 0);
      const index din = keys.dims[2];
      c.wide.repair(k, c.B * c.S, c.data.data() + k * c.stride,
                    core::softmax::all_finite(in, din), [&](double* d) {
                      for (index a = 0; a < c.dim; ++a)
                        d[a] = dot_fp64(l.wk_raw + a * l.wk_in, in, din, 0.0);
                    });
    }
  if (l.exp_form) {
    c.exp_factor.resize(c.data.size());
    c.exp_form.resize(static_cast<std::size_t>(c.B * c.S));
    constexpr index keys_per_task = 64;
    const index n = c.B * c.S;
    core::parallel_for(
        detail::ceil_div(n, keys_per_task),
        core::threads_for_work(threads, 40.0 * static_cast<double>(n * c.stride)), [&](index t) {
          for (index k = t * keys_per_task; k < std::min(n, (t + 1) * keys_per_task); ++k)
            c.exp_form[static_cast<std::size_t>(k)] = exp_form_factors(
                c.data.data() + k * c.stride, c.stride, c.exp_factor.data() + k * c.stride);
        });
  }
  return c;
}

// Query side [B·L, stride]: W_q q + b (additive), q itself (dot, general),
// zero-padded. The packed layer's bits do not depend on `threads`.
inline void project_queries(const layer& l, const strided<const float, 3>& q, index stride,
                            float* qp, wide_rows& wide, int threads) {
  const index B = q.dims[0], L = q.dims[1], Dq = q.dims[2];
  const index D = l.additive ? l.dim : Dq;
  for (index b = 0; b < B; ++b) {
    if (L == 0) break;
    if (l.wq) {
      l.wq->apply(q.at(b, 0, 0), q.strides[1], L, qp + b * L * stride, stride, threads);
    } else {
      const_row_block Q(q.at(b, 0, 0), L, Dq, Eigen::OuterStride<>(q.strides[1]));
      row_block P(qp + b * L * stride, L, D, Eigen::OuterStride<>(stride));
      P = Q;
      if (l.bias->size() != 0) P.rowwise() += l.bias->transpose();
    }
    for (index i = 0; i < L; ++i)
      std::fill(qp + (b * L + i) * stride + D, qp + (b * L + i + 1) * stride, 0.0f);
  }
  // W_q q + b (additive) can overflow; the queries of dot and general are
  // copied as they are.
  const bool has_bias = l.bias->size() != 0;
  wide.dim = D;
  if (!l.additive || (!l.wq && !has_bias)) return;
  for (index r = 0; r < B * L; ++r) {
    const float* in = q.at(r / L, r % L, 0);
    wide.repair(r, B * L, qp + r * stride, core::softmax::all_finite(in, Dq), [&](double* d) {
      for (index a = 0; a < D; ++a) {
        const double b = has_bias ? double((*l.bias)[a]) : 0.0;
        d[a] = l.wq ? dot_fp64(l.wq_raw + a * l.wq_in, in, Dq, b) : double(in[a]) + b;
      }
    });
  }
}

// The exponential form's factors E = e^(2 qp) of n projected queries, and
// per query whether all its features are in the form's range.
inline void query_factors(const float* qp, index n, index stride, float* qe,
                          unsigned char* in_range) {
  for (index i = 0; i < n; ++i)
    in_range[i] = exp_form_factors(qp + i * stride, stride, qe + i * stride);
}

// How one call is cut into tasks, from the shapes alone (so the bits never
// depend on the thread count): R query rows per row task, `blocks` row
// tasks per batch entry, and each row task's keys in `chunks` chunks of K
// (chunk c takes keys [c·K, (c+1)·K)).
struct plan {
  index B = 0, L = 0, S = 0, Dv = 0, stride = 0;
  index R = 0, blocks = 0, chunks = 0, K = 0;
  // chunks > 1: each task leaves its rows' unnormalised partial sums with
  // their running max and sum, merged by a second pass (merge_row).
  bool chunked = false;
  bool want_weights = false;      // the call returns its attention weights
  bool call_scores_kept = false;  // chunked with weights: scores kept for the call
};

inline plan make_plan(index B, index L, index S, index Dv, index stride, bool want_weights) {
  plan p;
  p.B = B;
  p.L = L;
  p.S = S;
  p.Dv = Dv;
  p.stride = stride;
  p.R = task_rows(L);
  p.blocks = detail::ceil_div(L, p.R);
  p.chunks = key_chunks(B * p.blocks, S);
  p.K = detail::ceil_div(S, p.chunks);
  p.chunked = p.chunks > 1;
  p.want_weights = want_weights;
  p.call_scores_kept = p.chunked && want_weights;
  return p;
}

// What every task of one call reads: the inputs, the plan and the projected
// queries; tasks write disjoint parts of out, partials and call_scores.
struct context {
  const layer& l;
  const key_projection& keys;
  const strided<const float, 3>& values;
  const strided<float, 3>& out;
  const call& c;
  plan p;
  bool exp_form;                    // queries and keys carry the exponential form's factors
  const float* qp;                  // projected queries [B·L, stride]
  const float* qe;                  // their factors E (exp_form)
  const unsigned char* q_exp_form;  // per query: in the form's range (exp_form)
  float* partials;                  // chunked: [row task · chunks][R][Dv + 2]
  float* call_scores;               // call_scores_kept: [B·L, S]
  const wide_rows& qwide;           // query rows [B·L] whose projection overflowed

  const float* query(index b, index i) const { return qp + (b * p.L + i) * p.stride; }

  // Whether query row i of batch b, and with it key j, take the
  // exponential form (both in its range).
  bool query_in_exp_form(index b, index i) const {
    return exp_form && q_exp_form[static_cast<std::size_t>(b * p.L + i)];
  }
  bool pair_in_exp_form(index b, index i, index j) const {
    return query_in_exp_form(b, i) && keys.exp_form[static_cast<std::size_t>(b * p.S + j)];
  }

  // The score of query row i of batch b against key j: additive in the
  // exponential form when the pair allows it, else with tanh; dot or
  // general as a dot product.
  // A score that comes out non-finite is taken again in double
  // (score_fp64).
  float score(index b, index i, index j) const {
    const float* q = query(b, i);
    float s;
    if (!l.additive)
      s = dot_score1(q, keys.row(b, j), p.stride);
    else if (pair_in_exp_form(b, i, j))
      s = additive_score_exp1(qe + (b * p.L + i) * p.stride, l.v,
                              keys.exp_factor.data() + (b * p.S + j) * p.stride, p.stride, l.sum_v);
    else
      s = additive_score1(q, l.v, keys.row(b, j), p.stride);
    return std::isfinite(s) ? s : score_fp64(b, i, j);
  }

  // The score of (b, i, j) in double, for one whose fp32 sum overflowed
  // (finite terms whose sum passes FLT_MAX: ±inf, or NaN where a +inf and a
  // -inf partial meet, or inf of the wrong sign): from the double
  // projections of wide rows, else the fp32 ones. Finite results saturate
  // at ±FLT_MAX, so an overflowing score weighs as a saturated one (a
  // +FLT_MAX key takes the weight, shared with the others there; keys all
  // below -FLT_MAX share the row, which stays non-empty). NaN or ±inf
  // inputs keep their NaN or ±inf. O(dim) in double; only for non-finite
  // fp32 scores.
  float score_fp64(index b, index i, index j) const {
    const double* qd = qwide.row(b * p.L + i);
    const double* kd = keys.wide.row(b * p.S + j);
    const float *qf = query(b, i), *kf = keys.row(b, j);
    double s = 0.0;
    for (index a = 0; a < keys.dim; ++a) {
      const double x = qd ? qd[a] : double(qf[a]), y = kd ? kd[a] : double(kf[a]);
      s += l.additive ? double(l.v[a]) * std::tanh(x + y) : x * y;
    }
    constexpr double fmax = std::numeric_limits<float>::max();
    return std::isfinite(s) ? static_cast<float>(std::min(std::max(s, -fmax), fmax))
                            : static_cast<float>(s);
  }

  // Partial m of row task·chunk `task`: Dv sums, then the max and the sum
  // of its online softmax.
  float* partial(index task, index m) const { return partials + (task * p.R + m) * (p.Dv + 2); }
};

// The end of row i of batch b once its context is in out: the attention
// weights through the core's row softmax, on request, and the context
// features that came out non-finite from finite values (the unnormalised
// sum can pass FLT_MAX) summed again in double. sc holds the row's scores
// (-inf where not visible) and is turned into its weights.
inline void finish_row(const call& c, const strided<const float, 3>& values,
                       const strided<float, 3>& out, index b, index i, float* sc) {
  const index S = values.dims[1], Dv = values.dims[2], os = out.strides[2];
  core::softmax::row_softmax(sc, S);
  if (!c.weights.empty()) {
    float* w = c.weights.at(b, i, 0);
    const index ws = c.weights.strides[2];
    for (index j = 0; j < S; ++j) w[j * ws] = sc[j];
  }
  float* o = out.at(b, i, 0);
  if (!live_query(c, b, i) || core::softmax::all_finite(o, Dv)) return;  // (Dv > 1: os == 1)
  std::vector<index> vis(static_cast<std::size_t>(S));
  const index nv = visible_keys(c, b, S, 0, S, vis.data());
  weighted_sum_fp64_if_nonfinite(sc, o, vis.data(), nv, values, b, os, Dv);
}

// One task of the first pass: query rows [i0, i1) of batch entry b (one row
// task) against the keys of one chunk. The rows share the batch entry's
// visible keys, each key row loaded serves two (or exp_tile_rows) queries,
// and each value row serves the whole block.
class row_task {
 public:
  row_task(const context& x, additive_scratch& s, index t)
      : x_(x), s_(s), t_(t), chunk_(t % x.p.chunks) {
    const index rt = t / x.p.chunks;
    b_ = rt / x.p.blocks;
    i0_ = (rt % x.p.blocks) * x.p.R;
    i1_ = std::min(x.p.L, i0_ + x.p.R);
  }

  void run() {
    sort_rows();
    if (nr_ == 0) return;
    const index j0 = chunk_ * x_.p.K;
    vis_ = s_.visible.data();
    nv_ = visible_keys(x_.c, b_, x_.p.S, j0, j0 + x_.p.K, vis_);
    for (index r = 0; r < nr_; ++r) {
      float* sc = scores_of(rows_[r]);
      for (index j = j0; j < std::min(x_.p.S, j0 + x_.p.K); ++j) sc[j] = core::softmax::neg_inf;
    }
    sum_values();
    if (x_.p.chunked)
      store_partials();  // finished after the merge
    else
      finish_rows();
  }

 private:
  // Rows whose scores are needed (live ones, all with weights requested)
  // and rows whose output is (live); chunk 0 writes 0 to the others.
  void sort_rows() {
    const index Dv = x_.p.Dv, os = x_.out.strides[2];
    for (index i = i0_; i < i1_; ++i) {
      const bool on = live_query(x_.c, b_, i);
      if (on || x_.p.want_weights) rows_[nr_++] = i;
      if (on) live_[nl_++] = i;
      if (!on && chunk_ == 0) {
        float* o = x_.out.at(b_, i, 0);
        for (index d = 0; d < Dv; ++d) o[d * os] = 0.0f;
      }
    }
  }

  float* scores_of(index i) const {
    return x_.p.call_scores_kept ? x_.call_scores + (b_ * x_.p.L + i) * x_.p.S
                                 : s_.scores.data() + (i - i0_) * x_.p.S;
  }

  void prefetch_values(index n) const {
    core::simd::prefetch_l2(x_.values.at(b_, vis_[n], 0),
                            static_cast<std::size_t>(x_.p.Dv) * sizeof(float));
  }

  // c_i = Σ_j softmax(e_i)_j v_j for the live rows, one key block at a
  // time with the core's online softmax state: the block's value rows are
  // summed while still in L2, and the division by the row sum comes last.
  void sum_values() {
    for (index m = 0; m < nl_; ++m) {
      o_[m] = x_.p.chunked ? x_.partial(t_, m) : x_.out.at(b_, live_[m], 0);
      p_[m] = s_.weights.data() + m * key_block;
    }
    for (index n0 = 0; n0 < nv_; n0 += key_block) {
      const index n1 = std::min(nv_, n0 + key_block), nk = n1 - n0;
      score_block(n0, n1);
      float factor[max_task_rows] = {};
      block_weights(n0, nk, factor);
      for (index n = 0; n < nk; ++n)
        s_.values[static_cast<std::size_t>(n)] = x_.values.at(b_, vis_[n0 + n], 0);
      accumulate_block(p_, factor, o_, nl_, s_.values.data(), nk, x_.p.Dv);
    }
  }

  // The exp weights of the block's nk keys from n0 for each live row, against
  // its raised running max, and the factor that rescales what the row summed
  // before (0 for the first block: nothing accumulated yet).
  void block_weights(index n0, index nk, float* factor) {
    for (index m = 0; m < nl_; ++m) {
      const float* sc = scores_of(live_[m]);
      float* e = s_.weights.data() + m * key_block;
      for (index n = 0; n < nk; ++n) e[n] = sc[vis_[n0 + n]];
      if (!core::softmax::all_finite(e, nk)) repair_scores(live_[m], n0, nk, e);
      // (a +inf score, from an inf input, weighs 1, as in row_softmax)
      const float bmax = core::softmax::max_of(e, nk);
      factor[m] = st_[m].raise_max(std::min(bmax, core::softmax::max_finite));
      if (n0 == 0) factor[m] = 0.0f;
      st_[m].sum += core::softmax::exp_in_place(e, nk, st_[m].pivot());
    }
  }

  // Row i's non-finite scores of visible keys [n0, n0 + nk) taken again in
  // double (context::score_fp64), in its scores and in e (their copy).
  void repair_scores(index i, index n0, index nk, float* e) const {
    float* sc = scores_of(i);
    for (index n = 0; n < nk; ++n)
      if (!std::isfinite(e[n])) e[n] = sc[vis_[n0 + n]] = x_.score_fp64(b_, i, vis_[n0 + n]);
  }

  // Scores of visible keys [n0, n1) for every scored row: rows in the
  // exponential form exp_tile_rows at a time against four keys, the others
  // (tanh form, dot products) two queries x four keys, then the leftovers.
  // A key's score has the same bits whichever group it falls in. The first
  // group scored prefetches the block's value rows into L2
  // (accumulate_block reads them next).
  void score_block(index n0, index n1) {
    index erows[max_task_rows] = {}, trows[max_task_rows] = {};
    index ne = 0, nt = 0;
    for (index r = 0; r < nr_; ++r) {
      const index i = rows_[r];
      if (x_.query_in_exp_form(b_, i))
        erows[ne++] = i;
      else
        trows[nt++] = i;
    }
    bool prefetch = true;
    index r = 0;
    for (; r + exp_tile_rows <= ne; r += exp_tile_rows, prefetch = false)
      score_exp_rows<exp_tile_rows>(erows + r, n0, n1, prefetch);
    for (; r < ne; ++r, prefetch = false) score_exp_rows<1>(erows + r, n0, n1, prefetch);
    for (r = 0; r + 2 <= nt; r += 2, prefetch = false)
      score_pair(trows[r], trows[r + 1], n0, n1, prefetch);
    for (; r < nt; ++r, prefetch = false) score_row(trows[r], n0, n1, prefetch);
  }

  // Q rows in the exponential form (ir) against keys [n0, n1), four at a
  // time; a group of four with a key out of the form's range, and the
  // leftover keys, go one score at a time.
  template <int Q>
  void score_exp_rows(const index* ir, index n0, index n1, bool prefetch) const {
    const float* e[Q];
    for (int q = 0; q < Q; ++q) e[q] = x_.qe + (b_ * x_.p.L + ir[q]) * x_.p.stride;
    index n = n0;
    for (; n + 4 <= n1; n += 4) {
      if (prefetch)
        for (int c = 0; c < 4; ++c) prefetch_values(n + c);
      bool all = true;  // (the rows are in range: only the keys can fail)
      for (int c = 0; c < 4; ++c) all = all && x_.pair_in_exp_form(b_, ir[0], vis_[n + c]);
      if (!all) {
        for (int q = 0; q < Q; ++q)
          for (int c = 0; c < 4; ++c)
            scores_of(ir[q])[vis_[n + c]] = x_.score(b_, ir[q], vis_[n + c]);
        continue;
      }
      const float* f[4];
      for (int c = 0; c < 4; ++c)
        f[c] = x_.keys.exp_factor.data() + (b_ * x_.p.S + vis_[n + c]) * x_.p.stride;
      float tmp[4 * Q];
      additive_scores_exp<Q>(e, x_.l.v, f, x_.p.stride, x_.l.sum_v, tmp);
      for (int q = 0; q < Q; ++q)
        for (int c = 0; c < 4; ++c) scores_of(ir[q])[vis_[n + c]] = tmp[4 * q + c];
    }
    for (; n < n1; ++n) {
      if (prefetch) prefetch_values(n);
      for (int q = 0; q < Q; ++q) scores_of(ir[q])[vis_[n]] = x_.score(b_, ir[q], vis_[n]);
    }
  }

  // Rows ia and ib (tanh form or dot products) against keys [n0, n1): two
  // queries x four keys, then the leftover keys.
  void score_pair(index ia, index ib, index n0, index n1, bool prefetch) const {
    const float *qa = x_.query(b_, ia), *qb = x_.query(b_, ib);
    float *sa = scores_of(ia), *sb = scores_of(ib);
    float tmp[8];
    index n = n0;
    for (; n + 4 <= n1; n += 4) {
      if (prefetch)
        for (int c = 0; c < 4; ++c) prefetch_values(n + c);
      const float* k[4] = {x_.keys.row(b_, vis_[n]), x_.keys.row(b_, vis_[n + 1]),
                           x_.keys.row(b_, vis_[n + 2]), x_.keys.row(b_, vis_[n + 3])};
      if (x_.l.additive)
        additive_scores2x4(qa, qb, x_.l.v, k, x_.p.stride, tmp);
      else
        dot_scores2x4(qa, qb, k, x_.p.stride, tmp);
      for (int c = 0; c < 4; ++c) {
        sa[vis_[n + c]] = tmp[c];
        sb[vis_[n + c]] = tmp[4 + c];
      }
    }
    for (; n < n1; ++n) {
      if (prefetch) prefetch_values(n);
      sa[vis_[n]] = x_.score(b_, ia, vis_[n]);
      sb[vis_[n]] = x_.score(b_, ib, vis_[n]);
    }
  }

  // Row i alone (tanh form or dot products) against keys [n0, n1).
  void score_row(index i, index n0, index n1, bool prefetch) const {
    const float* q = x_.query(b_, i);
    float* sc = scores_of(i);
    float tmp[4];
    index n = n0;
    for (; n + 4 <= n1; n += 4) {
      if (prefetch)
        for (int c = 0; c < 4; ++c) prefetch_values(n + c);
      const float* k0 = x_.keys.row(b_, vis_[n]);
      const float* k1 = x_.keys.row(b_, vis_[n + 1]);
      const float* k2 = x_.keys.row(b_, vis_[n + 2]);
      const float* k3 = x_.keys.row(b_, vis_[n + 3]);
      if (x_.l.additive)
        additive_scores4(q, x_.l.v, k0, k1, k2, k3, x_.p.stride, tmp);
      else
        dot_scores4(q, k0, k1, k2, k3, x_.p.stride, tmp);
      for (int c = 0; c < 4; ++c) sc[vis_[n + c]] = tmp[c];
    }
    for (; n < n1; ++n) {
      if (prefetch) prefetch_values(n);
      sc[vis_[n]] = x_.score(b_, i, vis_[n]);
    }
  }

  // Chunked: the live rows' partials keep their online-softmax max and sum
  // (sum 0: the chunk saw no key) for merge_row.
  void store_partials() {
    const index Dv = x_.p.Dv;
    for (index m = 0; m < nl_; ++m) {
      if (nv_ == 0) std::fill(o_[m], o_[m] + Dv, 0.0f);
      o_[m][Dv] = st_[m].max;
      o_[m][Dv + 1] = st_[m].sum;
    }
  }

  // Not chunked: the live rows divided by their sums; then, for weights or
  // for a row that came out non-finite, finish_row on every scored row.
  void finish_rows() {
    const index Dv = x_.p.Dv, os = x_.out.strides[2];
    for (index m = 0; m < nl_; ++m) {
      const float inv = st_[m].inv_sum();
      for (index d = 0; d < Dv; ++d) o_[m][d * os] = nv_ == 0 ? 0.0f : o_[m][d * os] * inv;
    }
    bool nonfinite = false;
    for (index m = 0; m < nl_ && !nonfinite; ++m)
      nonfinite = !core::softmax::all_finite(o_[m], Dv);  // (Dv > 1: os == 1)
    if (!x_.p.want_weights && !nonfinite) return;
    for (index r = 0; r < nr_; ++r) {
      // (a live row's scores were repaired in block_weights; the others
      // only give weights)
      float* sc = scores_of(rows_[r]);
      if (!live_query(x_.c, b_, rows_[r]))
        for (index n = 0; n < nv_; ++n)
          if (!std::isfinite(sc[vis_[n]])) sc[vis_[n]] = x_.score_fp64(b_, rows_[r], vis_[n]);
      finish_row(x_.c, x_.values, x_.out, b_, rows_[r], sc);
    }
  }

  const context& x_;
  additive_scratch& s_;
  const index t_, chunk_;
  index b_ = 0, i0_ = 0, i1_ = 0;
  index rows_[max_task_rows] = {}, live_[max_task_rows] = {};  // scored rows, live rows
  index nr_ = 0, nl_ = 0;
  index* vis_ = nullptr;  // the chunk's visible keys
  index nv_ = 0;
  float* o_[max_task_rows] = {};        // each live row's output (or partial)
  const float* p_[max_task_rows] = {};  // and its block weights
  core::softmax::online_state st_[max_task_rows];
};

// Row i of batch b from its chunks' partials (the task of its rows, slot
// m among their live rows), merged in chunk order as the online softmax
// merges key blocks: rescaled to the largest chunk max M by e^(max_c - M)
// (a chunk whose factor underflows to 0 adds nothing, as a key of weight
// 0), then divided by the rescaled sum. The maxima are compared exactly, so
// keys at the same (clamped) max weigh the same whichever chunk holds them.
inline void merge_partials(const context& x, index b, index i, index m) {
  const index Dv = x.p.Dv, chunks = x.p.chunks;
  const index first = (b * x.p.blocks + i / x.p.R) * chunks;
  float top = core::softmax::neg_inf;
  for (index k = 0; k < chunks; ++k) {
    const float* pk = x.partial(first + k, m);
    if (pk[Dv + 1] != 0.0f) top = std::max(top, pk[Dv]);
  }
  float* dst = x.out.at(b, i, 0);
  const index os = x.out.strides[2];
  float sum = 0.0f;
  bool any = false;
  for (index k = 0; k < chunks; ++k) {
    const float* pk = x.partial(first + k, m);
    if (pk[Dv + 1] == 0.0f) continue;  // no visible key
    const float f = pk[Dv] == top ? 1.0f : core::simd::exp_scalar(pk[Dv] - top);
    if (f == 0.0f) continue;
    sum += f * pk[Dv + 1];
    for (index d = 0; d < Dv; ++d) dst[d * os] = any ? f * pk[d] + dst[d * os] : f * pk[d];
    any = true;
  }
  const float inv = core::softmax::online_state{top, sum}.inv_sum();
  for (index d = 0; d < Dv; ++d) dst[d * os] = any ? dst[d * os] * inv : 0.0f;
}

// The second pass of a chunked call, for row `row` of the B·L query rows:
// its merged output, then its weights or the fp64 repair of a non-finite
// row. The scores come from the call's buffer, or are computed again when
// they were not kept (rare: such a row summed values near FLT_MAX).
inline void merge_row(const context& x, index row) {
  const index L = x.p.L, S = x.p.S, R = x.p.R;
  const index b = row / L, i = row % L;
  float* sc = x.p.call_scores_kept ? x.call_scores + row * S : nullptr;
  if (!live_query(x.c, b, i)) {
    if (!x.p.want_weights) return;
    // (only live rows pass block_weights, which repairs their scores)
    std::vector<index> vis(static_cast<std::size_t>(S));
    const index nv = visible_keys(x.c, b, S, 0, S, vis.data());
    for (index n = 0; n < nv; ++n)
      if (!std::isfinite(sc[vis[n]])) sc[vis[n]] = x.score_fp64(b, i, vis[n]);
    finish_row(x.c, x.values, x.out, b, i, sc);
    return;
  }
  // The row's slot m in its task: its rank among the task's live rows.
  index m = 0;
  for (index k = i / R * R; k < i; ++k) m += live_query(x.c, b, k);
  merge_partials(x, b, i, m);
  if (!x.p.want_weights && core::softmax::all_finite(x.out.at(b, i, 0), x.p.Dv)) return;
  std::vector<float> again;
  if (sc == nullptr) {
    again.assign(static_cast<std::size_t>(S), core::softmax::neg_inf);
    std::vector<index> vis(static_cast<std::size_t>(S));
    const index nv = visible_keys(x.c, b, S, 0, S, vis.data());
    for (index n = 0; n < nv; ++n) again[vis[n]] = x.score(b, i, vis[n]);
    sc = again.data();
  }
  finish_row(x.c, x.values, x.out, b, i, sc);
}

// attn::additive_attention::forward after its checks (B, L >= 1): queries
// [B, L, d_q] against projected keys and values [B, S, d_v], into out
// [B, L, d_v].
inline void run(const layer& l, const strided<const float, 3>& query, const key_projection& keys,
                const strided<const float, 3>& values, const strided<float, 3>& out,
                const call& c) {
  const plan p =
      make_plan(keys.B, query.dims[1], keys.S, values.dims[2], keys.stride, !c.weights.empty());
  const index B = p.B, L = p.L, S = p.S, Dv = p.Dv, R = p.R, stride = p.stride;
  // (per-thread buffers reused across calls: no page faults per call)
  core::scratch_array<float, projected_queries_tag> qp(static_cast<std::size_t>(B * L * stride));
  wide_rows qwide;
  project_queries(l, query, stride, qp.data(), qwide, c.num_threads);
  // The exponential form's query factors, only when the keys carry theirs.
  // (keys projected by another layer carry factors too: this layer's v
  // must allow the form as well)
  const bool exp_form = l.exp_form && !keys.exp_form.empty();
  core::scratch_array<float, query_factors_tag> qe(exp_form ? qp.size() : 0);
  core::scratch_array<unsigned char, query_in_range_tag> q_exp_form(
      exp_form ? static_cast<std::size_t>(B * L) : 0);
  if (exp_form) query_factors(qp.data(), B * L, stride, qe.data(), q_exp_form.data());
  core::scratch_array<float, chunk_partials_tag> partials(
      p.chunked ? static_cast<std::size_t>(B * p.blocks * p.chunks * R * (Dv + 2)) : 0);
  core::scratch_array<float, chunked_scores_tag> call_scores(
      p.call_scores_kept ? static_cast<std::size_t>(B * L * S) : 0);
  const context x{l,
                  keys,
                  values,
                  out,
                  c,
                  p,
                  exp_form,
                  qp.data(),
                  qe.data(),
                  q_exp_form.data(),
                  partials.data(),
                  call_scores.data(),
                  qwide};

  const double flops = static_cast<double>(B) * L * S *
                       (static_cast<double>(stride) * (l.additive ? 24 : 2) + 2 * Dv);
  const int threads = core::threads_for_work(c.num_threads, flops);
  core::parallel_for(
      B * p.blocks * p.chunks, threads,
      [&] { return additive_scratch(R, p.call_scores_kept ? 0 : R, S); },
      [&](additive_scratch& s, index t) { row_task(x, s, t).run(); });
  if (!p.chunked) return;
  core::parallel_for(B * L, threads, [&](index row) { merge_row(x, row); });
}

}  // namespace ATTN_ABI
}  // namespace attn::detail::additive
