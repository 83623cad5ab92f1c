// attn/additive.hpp: additive (Bahdanau) attention, with Luong's `dot` and
// `general` scores behind the same interface.
//
//   additive (Bahdanau, Keras AdditiveAttention, TF-Addons BahdanauAttention):
//       e_ij = vᵀ tanh(W_q q_i + W_k k_j + b)
//   dot (Luong):      e_ij = q_iᵀ k_j
//   general (Luong):  e_ij = q_iᵀ W k_j
//   then a_ij = softmax_j(e_ij) over the visible keys, c_i = Σ_j a_ij v_j.
//
// Tensors are row-major [batch, seq, features]: queries [B, L, d_q], keys
// [B, S, d_k], values [B, S, d_v] (values default to the keys), output
// [B, L, d_v], attention weights [B, L, S]. Views (attn/view.hpp) may have
// any strides on batch and seq; the feature dim must be contiguous.
//
// The key side is projected once per source (additive_attention::
// project_keys, the "memory layer" of the NMT toolkits): W_k k_j for the
// additive score, W k_j for `general`. A decoder then runs any number of
// steps (L = 1 each) against that projection; a step costs O(d_a · d_q) for
// its own query projection plus O(S · d_a) for the scores, never
// O(S · d_a · d_k).
//
// The fused kernel never forms the [L, S, d_a] tensor of pre-activations:
// for each (query, key) pair it adds the two projections a packet at a time,
// takes attn::simd::tanh in registers and folds it into the dot with v. When
// every projected feature of the query and of the key lies within ±21.5 (the
// usual case), it uses the exponential form instead: tanh(x + y) =
// 1 - 2 / (e^(2x) e^(2y) + 1), with e^(2y) made once per key by project_keys
// and e^(2x) once per query, two features sharing one division, which costs
// a few FMAs and half a division per element instead of a tanh (about 4x
// the rate) at no more error (see kernel::exp_form_range and
// tests/test_additive.cpp AdditiveExpForm).
// Query rows go in tasks of 4 or 16 (kernel::task_rows); a task takes its
// keys in blocks of 64: a block's scores, then the core's online softmax
// state (attn::softmax::online_state) and the block's weighted value rows,
// prefetched into L2 while its scores were computed, added to the output,
// which is divided by the row sum at the end. A call with few row tasks (a
// decoder step) also splits its keys into chunks on separate tasks, merged
// like key blocks (kernel::key_chunks). Attention weights, when asked for,
// go through the core's row softmax. docs/performance.md has the
// measurements behind these choices.
//
// Conventions (as in the rest of attn, ../DESIGN.md):
//  * bool masks: true = may attend. key_lengths[b] hides keys j >= len.
//  * A query row with no visible key gets output 0 and weights 0, never NaN.
//  * A query whose query_mask entry is false gets output 0 (as Keras does);
//    its attention weights, when requested, are still computed (Keras
//    returns them unmasked too).
//  * fp32 accumulation; the same output bits for any thread count.
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <type_traits>
#include <unsupported/Eigen/CXX11/Tensor>
#include <utility>
#include <vector>

#include "attn/core/abi.hpp"
#include "attn/core/aligned.hpp"
#include "attn/core/linear.hpp"
#include "attn/core/math.hpp"
#include "attn/core/parallel.hpp"
#include "attn/core/scratch.hpp"
#include "attn/core/simd.hpp"
#include "attn/core/softmax.hpp"
#include "attn/error.hpp"
#include "attn/mask.hpp"
#include "attn/sdpa.hpp"  // detail::non_overlapping, has_zero_extent, dims_note
#include "attn/view.hpp"

namespace attn {

/// The score function e_ij of additive_attention.
enum class score_function {
  additive,  ///< Bahdanau / "concat": vᵀ tanh(W_q q + W_k k + b)
  dot,       ///< Luong: qᵀ k (d_q = d_k, no weights)
  general,   ///< Luong: qᵀ W k with W [d_q, d_k]
};

/// The learned parameters of additive_attention. Which fields apply depends
/// on `score`; the others must stay empty (the constructor checks).
///
///  * additive: v [d_a] (required); w_q [d_a, d_q] and w_k [d_a, d_k], each
///    optional: an empty projection is the identity (then d_q or d_k equals
///    d_a). Leaving both out and no bias is Keras' AdditiveAttention, with v
///    as its learned `scale`. bias [d_a] optional. With `normalize`, v is
///    replaced by g · v / ‖v‖ (TF-Addons' weight normalisation; ‖v‖ must
///    not be 0).
///  * dot: nothing.
///  * general: w_k = Luong's W_a, [d_q, d_k].
///
/// Matrices use nn.Linear's orientation [out_features, in_features].
struct additive_weights {
  /// Row-major float matrix, [out_features, in_features].
  using matrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  score_function score = score_function::additive;  ///< which e_ij (see score_function)
  matrix w_q;              ///< additive: W_q [d_a, d_q], or empty (identity)
  matrix w_k;              ///< additive: W_k [d_a, d_k] or empty; general: W [d_q, d_k]
  Eigen::VectorXf bias;    ///< additive: b [d_a], or empty (no bias)
  Eigen::VectorXf v;       ///< additive: v [d_a] (required)
  bool normalize = false;  ///< additive: use g · v / ‖v‖ instead of v
  float g = 1.0f;          ///< the scalar of weight normalisation (used when normalize)
};

/// Per-call options of additive_attention::forward.
struct additive_options {
  /// Per-batch number of valid keys: key j of batch b is visible only when
  /// j < key_lengths[b]. Empty = all S keys. Size B, values in [0, S].
  std::vector<index> key_lengths;
  /// [B, S] bool, true = may attend (stride 0 broadcasts). Empty = none.
  strided<const bool, 2> key_mask;
  /// [B, L] bool; false makes that query's output 0 (Keras' query mask).
  strided<const bool, 2> query_mask;
  /// [B, L, S] float, written with the attention weights when non-empty.
  strided<float, 3> weights;
  /// Threads (0 = OpenMP's default). Results do not depend on it.
  int num_threads = 0;
};

inline namespace ATTN_ABI {

class additive_attention;

/// The key-side projection of one source (a batch of key sequences):
/// W_k K (+ nothing else) for the additive score, W K for `general`, the keys
/// themselves for `dot`, stored [B, S, dim] with each row zero-padded to a
/// whole number of SIMD packets. Made by additive_attention::project_keys;
/// reusable for any number of forward calls (decoder steps) of the layer
/// that made it, from any number of threads at once.
class additive_keys {
 public:
  /// An empty projection (B = S = 0); made for real by project_keys.
  additive_keys() = default;
  index batch() const { return B_; }   ///< batch size B of the projected keys
  index length() const { return S_; }  ///< keys per batch entry, S
  /// Features per projected key: d_a (additive), d_q (general), d_k (dot).
  index dim() const { return D_; }
  /// Projected key j of batch b: dim() floats (padded with zeros to stride).
  const float* row(index b, index j) const { return data_.data() + (b * S_ + j) * stride_; }

 private:
  friend class additive_attention;
  index B_ = 0, S_ = 0, D_ = 0, stride_ = 0;
  score_function score_ = score_function::additive;
  core::aligned_vector<float> data_;  // (rows of stride_ floats start on cache lines)
  // Additive score only: e^(2·kp) per feature (the key's factor of the
  // exponential form, see kernel::exp_form_range) and, per key, whether all
  // its features are within that form's range.
  core::aligned_vector<float> exp2x_;
  std::vector<unsigned char> exp_form_;
};

namespace kernel {

// Score of one query against 4 keys for the additive form:
// out[k] = Σ_a v[a] tanh(qp[a] + kp_k[a]) over `n` floats (a multiple of the
// packet width, zero-padded). Each key has its own accumulator, so a key's
// score has the same bits whichever block it falls in.
inline void additive_scores4(const float* qp, const float* v, const float* k0, const float* k1,
                             const float* k2, const float* k3, index n, float* out) {
  using namespace simd;
  packet a0 = zero(), a1 = zero(), a2 = zero(), a3 = zero();
  for (index d = 0; d < n; d += width) {
    const packet q = load(qp + d), w = load(v + d);
    a0 = fma(w, simd::tanh(add(q, load(k0 + d))), a0);
    a1 = fma(w, simd::tanh(add(q, load(k1 + d))), a1);
    a2 = fma(w, simd::tanh(add(q, load(k2 + d))), a2);
    a3 = fma(w, simd::tanh(add(q, load(k3 + d))), a3);
  }
  out[0] = reduce_add(a0);
  out[1] = reduce_add(a1);
  out[2] = reduce_add(a2);
  out[3] = reduce_add(a3);
}

inline float additive_score1(const float* qp, const float* v, const float* k0, index n) {
  using namespace simd;
  packet a0 = zero();
  for (index d = 0; d < n; d += width)
    a0 = fma(load(v + d), simd::tanh(add(load(qp + d), load(k0 + d))), a0);
  return reduce_add(a0);
}

// Dot products of one (padded) query with 4 / 1 (padded) keys.
inline void dot_scores4(const float* q, const float* k0, const float* k1, const float* k2,
                        const float* k3, index n, float* out) {
  using namespace simd;
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
  using namespace simd;
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
  using namespace simd;
  packet worst = zero(), probe = zero();  // probe: x · 0 is NaN for a NaN or inf x
  for (index d = 0; d < n; d += width) {
    const packet xd = load(x + d);
    worst = simd::max(worst, simd::max(xd, sub(zero(), xd)));
    probe = add(probe, mul(xd, zero()));
    // (a lane out of range makes the row fail the test below, and then its
    // factors are never read: no range handling needed)
    store(out + d, simd::exp_in_range(add(xd, xd)));
  }
  return reduce_max(worst) <= exp_form_range && reduce_add(probe) == 0.0f;
}

// Σ v / d over the features [a, a + 2 width) of one (query, key) pair, d =
// min(E F + 1, cap), with one division. (|v| <= kernel_sum_v_limit keeps
// v1 d2 + v2 d1 finite.)
inline simd::packet exp_form_pair(const float* e, const float* v, const float* f, index a) {
  using namespace simd;
  const packet one = broadcast(1.0f), cap = broadcast(exp_form_denominator_cap);
  const index b = a + width;
  const packet d1 = simd::min(fma(load(e + a), load(f + a), one), cap);
  const packet d2 = simd::min(fma(load(e + b), load(f + b), one), cap);
  return ei::pdiv(fma(load(v + a), d2, mul(load(v + b), d1)), mul(d1, d2));
}

// The same for one packet of features (the last, when n / width is odd).
inline simd::packet exp_form_single(const float* e, const float* v, const float* f, index a) {
  using namespace simd;
  const packet one = broadcast(1.0f), cap = broadcast(exp_form_denominator_cap);
  return ei::pdiv(load(v + a), simd::min(fma(load(e + a), load(f + a), one), cap));
}

// Scores of Q queries against 4 keys in the exponential form: e[q] the
// queries' E, f[k] the keys' F, sum_v = Σ_a v_a; out[4 q + k]. Each key
// row loaded serves all Q queries, and each score has the same bits as
// additive_score_exp1's.
template <int Q>
inline void additive_scores_exp(const float* const* e, const float* v, const float* const* f,
                                index n, float sum_v, float* out) {
  using namespace simd;
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
  using namespace simd;
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
  using namespace simd;
  packet a0 = zero(), a1 = zero(), a2 = zero(), a3 = zero();
  packet b0 = zero(), b1 = zero(), b2 = zero(), b3 = zero();
  for (index d = 0; d < n; d += width) {
    const packet x = load(qa + d), y = load(qb + d), w = load(v + d);
    const packet k0 = load(k[0] + d), k1 = load(k[1] + d), k2 = load(k[2] + d), k3 = load(k[3] + d);
    a0 = fma(w, simd::tanh(add(x, k0)), a0);
    a1 = fma(w, simd::tanh(add(x, k1)), a1);
    a2 = fma(w, simd::tanh(add(x, k2)), a2);
    a3 = fma(w, simd::tanh(add(x, k3)), a3);
    b0 = fma(w, simd::tanh(add(y, k0)), b0);
    b1 = fma(w, simd::tanh(add(y, k1)), b1);
    b2 = fma(w, simd::tanh(add(y, k2)), b2);
    b3 = fma(w, simd::tanh(add(y, k3)), b3);
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
  using namespace simd;
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
        for (int c = 0; c < KC; ++c) acc[r][c] = simd::fma(pw, x[c], acc[r][c]);
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
// register strips below. (Measured at S = 50: 8% faster per call than
// strips, whose jumps between value rows defeat the prefetcher.)
inline void accumulate_row(const float* p, float f, float* o, const float* const* v, index nk,
                           index Dv) {
  using namespace simd;
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

}  // namespace kernel

/// Additive (Bahdanau) attention and Luong's dot / general scores; see the
/// file comment. Immutable after construction: one object may serve many
/// threads at once.
class additive_attention {
 public:
  using matrix = additive_weights::matrix;  ///< row-major float matrix
  /// Row-major float tensor [batch, seq, features].
  using tensor3 = Eigen::Tensor<float, 3, Eigen::RowMajor>;

  /// Checks the weights and keeps them (with v normalised when asked).
  /// @throws attn::error naming the field when a weight has the wrong shape,
  ///         a field is set that the score function does not use, v is
  ///         missing (additive), or normalize is asked with ‖v‖ = 0 or a
  ///         non-finite g.
  explicit additive_attention(additive_weights w) : w_(std::move(w)) {
    constexpr const char* fn = "additive_attention";
    using detail::require;
    const score_function sf = w_.score;
    require(sf == score_function::additive || sf == score_function::dot ||
                sf == score_function::general,
            fn, "weights.score", "additive, dot or general", static_cast<int>(sf));
    if (sf == score_function::additive) {
      Da_ = w_.v.size();
      require(Da_ >= 1, fn, "weights.v", "a vector of d_a >= 1 entries", "an empty vector");
      if (w_.w_q.size() != 0)
        require(
            w_.w_q.rows() == Da_ && w_.w_q.cols() >= 1, fn, "weights.w_q",
            [&] { return "[d_a = " + std::to_string(Da_) + ", d_q >= 1] or empty (identity)"; },
            [&] { return shape(w_.w_q); });
      if (w_.w_k.size() != 0)
        require(
            w_.w_k.rows() == Da_ && w_.w_k.cols() >= 1, fn, "weights.w_k",
            [&] { return "[d_a = " + std::to_string(Da_) + ", d_k >= 1] or empty (identity)"; },
            [&] { return shape(w_.w_k); });
      if (w_.bias.size() != 0)
        require(
            w_.bias.size() == Da_, fn, "weights.bias",
            [&] { return "[d_a = " + std::to_string(Da_) + "] or empty"; },
            [&] { return "[" + std::to_string(w_.bias.size()) + "]"; });
      Dq_ = w_.w_q.size() ? w_.w_q.cols() : Da_;
      Dk_ = w_.w_k.size() ? w_.w_k.cols() : Da_;
      D_ = Da_;
    } else {
      const char* kind = sf == score_function::dot ? "empty for score_function::dot"
                                                   : "empty for score_function::general";
      require(w_.w_q.size() == 0, fn, "weights.w_q", kind, [&] { return shape(w_.w_q); });
      require(w_.bias.size() == 0, fn, "weights.bias", kind, "a non-empty vector");
      require(w_.v.size() == 0, fn, "weights.v", kind, "a non-empty vector");
      require(!w_.normalize, fn, "weights.normalize", kind, "true");
      if (sf == score_function::dot) {
        require(w_.w_k.size() == 0, fn, "weights.w_k", kind, [&] { return shape(w_.w_k); });
        Dq_ = Dk_ = 0;  // any, equal; checked per call
      } else {
        require(w_.w_k.rows() >= 1 && w_.w_k.cols() >= 1, fn, "weights.w_k",
                "Luong's W, [d_q, d_k] with both >= 1", [&] { return shape(w_.w_k); });
        Dq_ = w_.w_k.rows();
        Dk_ = w_.w_k.cols();
        D_ = Dq_;
      }
    }
    if (sf == score_function::additive) {
      const index stride = detail::round_up(Da_, simd::width);
      v_.assign(static_cast<std::size_t>(stride), 0.0f);
      double norm2 = 0.0;
      for (index a = 0; a < Da_; ++a) norm2 += double(w_.v[a]) * double(w_.v[a]);
      // In double: g / ‖v‖ alone may pass FLT_MAX (tiny v) while every
      // g · v_a / ‖v‖ is at most |g|.
      double factor = 1.0;
      if (w_.normalize) {
        require(std::isfinite(w_.g), fn, "weights.g", "a finite number", w_.g);
        require(norm2 > 0.0 && std::isfinite(norm2), fn, "weights.v",
                "a finite vector of nonzero norm (normalize is on)", "norm 0 or non-finite");
        factor = double(w_.g) / std::sqrt(norm2);
      }
      for (index a = 0; a < Da_; ++a)
        v_[static_cast<std::size_t>(a)] = static_cast<float>(factor * double(w_.v[a]));
      double sum = 0.0, sum_abs = 0.0;
      for (const float x : v_) sum += x, sum_abs += std::fabs(double(x));
      sum_v_ = static_cast<float>(sum);
      sum_abs_v_ = sum_abs;
    }
    // The projections on the core's packed layer: threaded over output
    // features, with bits that do not depend on the thread count.
    if (w_.w_q.size() != 0) wq_ = core::packed_linear(w_.w_q, w_.bias);
    if (w_.w_k.size() != 0) wk_ = core::packed_linear(w_.w_k, Eigen::VectorXf());
  }

  /// The score function the layer was built with.
  score_function score() const { return w_.score; }
  /// Query features d_q (0 for `dot`: any, equal to the key features).
  index query_dim() const { return Dq_; }
  /// Key features d_k (0 for `dot`: any, equal to the query features).
  index key_dim() const { return Dk_; }
  /// d_a for the additive score, 0 for dot / general.
  index attention_dim() const { return Da_; }
  /// The v in use (g · v / ‖v‖ with normalize), [d_a]; empty unless additive.
  Eigen::Map<const Eigen::VectorXf> effective_v() const {
    return {v_.data(), w_.score == score_function::additive ? Da_ : 0};
  }

  /// Projects the keys [B, S, d_k] once (see additive_keys). Cost
  /// O(B · S · d_a · d_k) for the additive score with W_k (on all threads),
  /// a copy otherwise.
  /// @throws attn::error if keys has the wrong feature count or layout.
  additive_keys project_keys(strided<const float, 3> keys) const {
    check_keys("additive_attention::project_keys", keys);
    return project_keys_on(keys, 0);
  }

  /// Attention of queries [B, L, d_q] over projected keys (project_keys) and
  /// values [B, S, d_v], into out [B, L, d_v] (written; must not alias the
  /// inputs). One decoder step is L = 1. See additive_options for masks,
  /// attention weights and threads.
  /// @throws attn::error on any shape, stride or option mismatch.
  void forward(strided<const float, 3> query, const additive_keys& keys,
               strided<const float, 3> values, strided<float, 3> out,
               const additive_options& opt = {}) const {
    constexpr const char* fn = "additive_attention::forward";
    using detail::require;
    require(keys.score_ == w_.score && (w_.score == score_function::dot || keys.D_ == D_), fn,
            "keys", "a projection made by this layer's project_keys",
            "one of another score function or dimension");
    const index B = keys.B_, S = keys.S_;
    check_query(fn, query, B, w_.score == score_function::dot ? keys.D_ : Dq_);
    require(!values.empty() || detail::has_zero_extent(values), fn, "values", "a non-null view",
            "null data");
    const index Dv = values.dims[2];
    require(
        values.dims[0] == B && values.dims[1] == S && Dv >= 1, fn, "values",
        [&] {
          return detail::dims_note(std::array<index, 3>{B, S, Dv}, "[batch, S, d_v >= 1]");
        },
        values.dims);
    require(values.strides[2] == 1 || Dv <= 1, fn, "values.strides[2]", "1 (contiguous features)",
            values.strides[2]);
    const index L = query.dims[1];
    const std::array<index, 3> out_dims{B, L, Dv};
    require(!out.empty() || detail::has_zero_extent(out), fn, "out", "a non-null view",
            "null data");
    require(
        out.dims == out_dims, fn, "out",
        [&] { return detail::dims_note(out_dims, "[batch, L, d_v]"); }, out.dims);
    require(out.strides[2] == 1 || Dv <= 1, fn, "out.strides[2]", "1 (contiguous features)",
            out.strides[2]);
    require(detail::non_overlapping(out), fn, "out.strides",
            "strides under which no two elements overlap", out.strides);
    check_options(fn, opt, B, L, S);
    if (B == 0 || L == 0) return;
    run(query, keys, values, out, opt);
  }

  /// The same without a cached projection: projects `keys` [B, S, d_k]
  /// first. `values` [B, S, d_v] may be an empty view ({}): the keys are then
  /// the values (d_v = d_k).
  void forward(strided<const float, 3> query, strided<const float, 3> keys,
               strided<const float, 3> values, strided<float, 3> out,
               const additive_options& opt = {}) const {
    constexpr const char* fn = "additive_attention::forward";
    check_keys(fn, keys);
    check_query(fn, query, keys.dims[0], w_.score == score_function::dot ? keys.dims[2] : Dq_);
    // A default-constructed values view ({}) means "the keys".
    const bool absent = values.empty() && values.dims == std::array<index, 3>{0, 0, 0};
    check_options(fn, opt, keys.dims[0], query.dims[1], keys.dims[1]);
    const additive_keys c = project_keys_on(keys, opt.num_threads);
    forward(query, c, absent ? keys : values, out, opt);
  }

  /// Tensor convenience: queries [B, L, d_q], keys [B, S, d_k], values
  /// [B, S, d_v]; returns a new [B, L, d_v] tensor.
  tensor3 forward(const tensor3& query, const tensor3& keys, const tensor3& values,
                  const additive_options& opt = {}) const {
    tensor3 out(query.dimension(0), query.dimension(1), values.dimension(2));
    forward(view(query), view(keys), view(values), view(out), opt);
    return out;
  }

  /// Tensor convenience with the keys as values: returns [B, L, d_k].
  tensor3 forward(const tensor3& query, const tensor3& keys,
                  const additive_options& opt = {}) const {
    return forward(query, keys, keys, opt);
  }

  /// Tensor convenience over a cached projection: returns [B, L, d_v].
  tensor3 forward(const tensor3& query, const additive_keys& keys, const tensor3& values,
                  const additive_options& opt = {}) const {
    tensor3 out(query.dimension(0), query.dimension(1), values.dimension(2));
    forward(view(query), keys, view(values), view(out), opt);
    return out;
  }

 private:
  using const_rows = Eigen::Map<const matrix, 0, Eigen::OuterStride<>>;
  using rows = Eigen::Map<matrix, 0, Eigen::OuterStride<>>;

  static std::string shape(const matrix& m) {
    return "[" + std::to_string(m.rows()) + ", " + std::to_string(m.cols()) + "]";
  }

  void check_keys(const char* fn, const strided<const float, 3>& keys) const {
    using detail::require;
    require(!keys.empty() || detail::has_zero_extent(keys), fn, "keys", "a non-null view",
            "null data");
    require(keys.dims[0] >= 0 && keys.dims[1] >= 0, fn, "keys", "non-negative dims", keys.dims);
    if (Dk_ > 0)
      require(
          keys.dims[2] == Dk_, fn, "keys",
          [&] { return "dims [batch, S, d_k = " + std::to_string(Dk_) + "]"; }, keys.dims);
    else
      require(keys.dims[2] >= 1, fn, "keys", "dims [batch, S, d >= 1]", keys.dims);
    require(keys.strides[2] == 1 || keys.dims[2] <= 1, fn, "keys.strides[2]",
            "1 (contiguous features)", keys.strides[2]);
  }

  static void check_query(const char* fn, const strided<const float, 3>& q, index B, index Dq) {
    using detail::require;
    require(!q.empty() || detail::has_zero_extent(q), fn, "query", "a non-null view", "null data");
    require(
        q.dims[0] == B && q.dims[1] >= 0 && q.dims[2] == Dq, fn, "query",
        [&] {
          return "dims [batch = " + std::to_string(B) + ", L, d_q = " + std::to_string(Dq) + "]";
        },
        q.dims);
    require(q.strides[2] == 1 || Dq <= 1, fn, "query.strides[2]", "1 (contiguous features)",
            q.strides[2]);
  }

  static void check_options(const char* fn, const additive_options& opt, index B, index L,
                            index S) {
    using detail::require;
    detail::check_key_lengths(fn, opt.key_lengths, B, S);
    if (!opt.key_mask.empty()) {
      const std::array<index, 2> want{B, S};
      require(
          opt.key_mask.dims == want, fn, "key_mask",
          [&] { return detail::dims_note(want, "[batch, S]"); }, opt.key_mask.dims);
      require(opt.key_mask.strides[0] >= 0 && opt.key_mask.strides[1] >= 0, fn, "key_mask.strides",
              "non-negative strides", opt.key_mask.strides);
    }
    if (!opt.query_mask.empty()) {
      const std::array<index, 2> want{B, L};
      require(
          opt.query_mask.dims == want, fn, "query_mask",
          [&] { return detail::dims_note(want, "[batch, L]"); }, opt.query_mask.dims);
      require(opt.query_mask.strides[0] >= 0 && opt.query_mask.strides[1] >= 0, fn,
              "query_mask.strides", "non-negative strides", opt.query_mask.strides);
    }
    if (!opt.weights.empty()) {
      const std::array<index, 3> want{B, L, S};
      require(
          opt.weights.dims == want, fn, "weights",
          [&] { return detail::dims_note(want, "[batch, L, S]"); }, opt.weights.dims);
      require(detail::non_overlapping(opt.weights), fn, "weights.strides",
              "strides under which no two elements overlap", opt.weights.strides);
    }
    require(opt.num_threads >= 0, fn, "num_threads", ">= 0 (0 = default)", opt.num_threads);
  }

  // The keys j in [j0, j1) that batch entry b may attend (key_lengths and
  // key_mask), in order, into vis; returns how many.
  static index visible_keys(const additive_options& opt, index b, index S, index j0, index j1,
                            index* vis) {
    const index len = opt.key_lengths.empty() ? S : opt.key_lengths[static_cast<std::size_t>(b)];
    index nv = 0;
    for (index j = j0; j < std::min(len, j1); ++j)
      if (opt.key_mask.empty() || *opt.key_mask.at(b, j)) vis[nv++] = j;
    return nv;
  }

  // project_keys on `threads` threads (0: all); the bits do not depend on it.
  additive_keys project_keys_on(const strided<const float, 3>& keys, int threads) const {
    additive_keys c;
    c.B_ = keys.dims[0];
    c.S_ = keys.dims[1];
    c.D_ = w_.score == score_function::dot ? keys.dims[2] : D_;
    c.stride_ = detail::round_up(std::max<index>(c.D_, 1), simd::width);
    c.score_ = w_.score;
    c.data_.assign(static_cast<std::size_t>(c.B_ * c.S_ * c.stride_), 0.0f);
    for (index b = 0; b < c.B_; ++b) {
      if (c.S_ == 0) break;
      float* P = c.data_.data() + b * c.S_ * c.stride_;
      if (w_.w_k.size() != 0) {
        wk_.apply(keys.at(b, 0, 0), keys.strides[1], c.S_, P, c.stride_, threads);
      } else {
        const_rows K(keys.at(b, 0, 0), c.S_, keys.dims[2], Eigen::OuterStride<>(keys.strides[1]));
        rows(P, c.S_, c.D_, Eigen::OuterStride<>(c.stride_)) = K;
      }
    }
    if (w_.score == score_function::additive && sum_abs_v_ <= kernel_sum_v_limit) {
      c.exp2x_.resize(c.data_.size());
      c.exp_form_.resize(static_cast<std::size_t>(c.B_ * c.S_));
      constexpr index keys_per_task = 64;
      const index n = c.B_ * c.S_;
      core::parallel_for(
          detail::ceil_div(n, keys_per_task),
          core::threads_for_work(threads, 40.0 * static_cast<double>(n * c.stride_)), [&](index t) {
            for (index k = t * keys_per_task; k < std::min(n, (t + 1) * keys_per_task); ++k)
              c.exp_form_[static_cast<std::size_t>(k)] = kernel::exp_form_factors(
                  c.data_.data() + k * c.stride_, c.stride_, c.exp2x_.data() + k * c.stride_);
          });
    }
    return c;
  }

  // Query side [B·L, stride]: W_q q + b (additive), q itself (dot, general),
  // zero-padded. The packed layer's bits do not depend on `threads`.
  void project_queries(const strided<const float, 3>& q, index stride, float* qp,
                       int threads) const {
    const index B = q.dims[0], L = q.dims[1], Dq = q.dims[2];
    const index D = w_.score == score_function::additive ? Da_ : Dq;
    for (index b = 0; b < B; ++b) {
      if (L == 0) break;
      if (w_.w_q.size() != 0) {
        wq_.apply(q.at(b, 0, 0), q.strides[1], L, qp + b * L * stride, stride, threads);
      } else {
        const_rows Q(q.at(b, 0, 0), L, Dq, Eigen::OuterStride<>(q.strides[1]));
        rows P(qp + b * L * stride, L, D, Eigen::OuterStride<>(stride));
        P = Q;
        if (w_.bias.size() != 0) P.rowwise() += w_.bias.transpose();
      }
      for (index i = 0; i < L; ++i)
        std::fill(qp + (b * L + i) * stride + D, qp + (b * L + i + 1) * stride, 0.0f);
    }
  }

  // Rows of one batch are processed kernel::task_rows at a time: they
  // share the batch's visible keys, each key row loaded serves two queries,
  // and each value row serves the whole block.
  void run(const strided<const float, 3>& query, const additive_keys& keys,
           const strided<const float, 3>& values, const strided<float, 3>& out,
           const additive_options& opt) const {
    const index B = keys.B_, S = keys.S_, L = query.dims[1], Dv = values.dims[2];
    constexpr index Rmax = kernel::max_task_rows;
    const index R = kernel::task_rows(L);
    const index stride = keys.stride_;
    const bool additive = w_.score == score_function::additive;
    // (per-thread buffers reused across calls: no page faults per call)
    core::scratch_array<float, kernel::projected_queries_tag> qp(
        static_cast<std::size_t>(B * L * stride));
    project_queries(query, stride, qp.data(), opt.num_threads);
    // The exponential form's query factors E = e^(2 qp), and per query
    // whether it is in range; only when the keys carry theirs.
    // (keys projected by another layer carry factors too: this layer's v
    // must allow the form as well)
    const bool exp_form = additive && !keys.exp_form_.empty() && sum_abs_v_ <= kernel_sum_v_limit;
    core::scratch_array<float, kernel::query_factors_tag> qe(exp_form ? qp.size() : 0);
    core::scratch_array<unsigned char, kernel::query_in_range_tag> q_exp_form(
        exp_form ? static_cast<std::size_t>(B * L) : 0);
    for (index i = 0; exp_form && i < B * L; ++i)
      q_exp_form[static_cast<std::size_t>(i)] =
          kernel::exp_form_factors(qp.data() + i * stride, stride, qe.data() + i * stride);
    const float* vv = v_.data();
    const bool want_weights = !opt.weights.empty();
    const index blocks = detail::ceil_div(L, R);
    // Key chunks (kernel::key_chunks): chunk c of a row task takes keys
    // [c·K, (c+1)·K). With more than one, each task leaves its rows'
    // unnormalised partial sums with their running max and sum, merged
    // below; with weights requested, scores go to one buffer for the call.
    const index chunks = kernel::key_chunks(B * blocks, S);
    const index K = detail::ceil_div(S, chunks);
    const bool chunked = chunks > 1;
    // A partial: Dv sums, then the max and the sum of its online softmax.
    core::scratch_array<float, kernel::chunk_partials_tag> part(
        chunked ? static_cast<std::size_t>(B * blocks * chunks * R * (Dv + 2)) : 0);
    auto partial = [&](index task, index m) { return part.data() + (task * R + m) * (Dv + 2); };
    const bool call_scores_kept = chunked && want_weights;
    core::scratch_array<float, kernel::chunked_scores_tag> call_scores(
        call_scores_kept ? static_cast<std::size_t>(B * L * S) : 0);

    // Whether query row i of batch b, and with it key j, take the
    // exponential form (both in its range).
    auto query_in_exp_form = [&](index b, index i) {
      return exp_form && q_exp_form[static_cast<std::size_t>(b * L + i)];
    };
    auto pair_in_exp_form = [&](index b, index i, index j) {
      return query_in_exp_form(b, i) && keys.exp_form_[static_cast<std::size_t>(b * S + j)];
    };
    // The score of query row i of batch b against key j: additive in the
    // exponential form when the pair allows it, else with tanh; dot or
    // general as a dot product.
    auto score_of = [&](index b, index i, index j) {
      const float* q = qp.data() + (b * L + i) * stride;
      if (!additive) return kernel::dot_score1(q, keys.row(b, j), stride);
      if (pair_in_exp_form(b, i, j))
        return kernel::additive_score_exp1(qe.data() + (b * L + i) * stride, vv,
                                           keys.exp2x_.data() + (b * S + j) * stride, stride,
                                           sum_v_);
      return kernel::additive_score1(q, vv, keys.row(b, j), stride);
    };

    const double flops = static_cast<double>(B) * L * S *
                         (static_cast<double>(stride) * (additive ? 24 : 2) + 2 * Dv);
    const int threads = core::threads_for_work(opt.num_threads, flops);
    core::parallel_for(
        B * blocks * chunks, threads,
        [&] { return kernel::additive_scratch(R, call_scores_kept ? 0 : R, S); },
        [&](kernel::additive_scratch& s, index t) {
          const index chunk = t % chunks, row_task = t / chunks;
          const index b = row_task / blocks, i0 = (row_task % blocks) * R, i1 = std::min(L, i0 + R);
          const index os = out.strides[2];
          // Rows whose scores are needed, and rows whose output is.
          index rows[Rmax], live[Rmax];
          index nr = 0, nl = 0;
          for (index i = i0; i < i1; ++i) {
            const bool on = opt.query_mask.empty() || *opt.query_mask.at(b, i);
            if (on || want_weights) rows[nr++] = i;
            if (on) live[nl++] = i;
            if (!on && chunk == 0) {
              float* o = out.at(b, i, 0);
              for (index d = 0; d < Dv; ++d) o[d * os] = 0.0f;
            }
          }
          if (nr == 0) return;
          // The batch's visible keys in this chunk.
          const index j0 = chunk * K;
          index* vis = s.visible.data();
          const index nv = visible_keys(opt, b, S, j0, j0 + K, vis);
          auto scores_of = [&](index i) {
            return call_scores_kept ? call_scores.data() + (b * L + i) * S
                                    : s.scores.data() + (i - i0) * S;
          };
          auto query_of = [&](index i) { return qp.data() + (b * L + i) * stride; };
          for (index r = 0; r < nr; ++r) {
            float* sc = scores_of(rows[r]);
            for (index j = j0; j < std::min(S, j0 + K); ++j) sc[j] = softmax::neg_inf;
          }
          // Scores of visible keys [n0, n1) for every row: two queries x four
          // keys at a time, then the leftovers. A key's score has the same
          // bits whichever group it falls in. The block's value rows are
          // prefetched into L2 meanwhile (accumulate_block reads them next).
          auto score_block = [&](index n0, index n1) {
            auto prefetch_values = [&](index n) {
              simd::prefetch_l2(values.at(b, vis[n], 0),
                                static_cast<std::size_t>(Dv) * sizeof(float));
            };
            index r = 0;
            auto score1 = [&](index i, index j) { return score_of(b, i, j); };
            // Rows in the exponential form (erows): Q queries x four keys;
            // the other rows (trows) take the tanh form, two queries x four
            // keys.
            index erows[Rmax] = {}, trows[Rmax] = {};
            index ne = 0, nt = 0;
            for (index x = 0; x < nr; ++x) {
              const index i = rows[x];
              if (query_in_exp_form(b, i))
                erows[ne++] = i;
              else
                trows[nt++] = i;
            }
            bool first = true;  // the first rows scored prefetch the values
            auto exp_rows = [&](auto q_rows, const index* ir) {
              constexpr int Q = decltype(q_rows)::value;
              const bool pf = first;
              first = false;
              const float* e[Q];
              for (int q = 0; q < Q; ++q) e[q] = qe.data() + (b * L + ir[q]) * stride;
              index n = n0;
              for (; n + 4 <= n1; n += 4) {
                if (pf)
                  for (int c = 0; c < 4; ++c) prefetch_values(n + c);
                bool all = true;  // (the rows are in range: only the keys can fail)
                for (int c = 0; c < 4; ++c) all = all && pair_in_exp_form(b, ir[0], vis[n + c]);
                if (!all) {
                  for (int q = 0; q < Q; ++q)
                    for (int c = 0; c < 4; ++c)
                      scores_of(ir[q])[vis[n + c]] = score1(ir[q], vis[n + c]);
                  continue;
                }
                const float* f[4];
                for (int c = 0; c < 4; ++c)
                  f[c] = keys.exp2x_.data() + (b * S + vis[n + c]) * stride;
                float tmp[4 * Q];
                kernel::additive_scores_exp<Q>(e, vv, f, stride, sum_v_, tmp);
                for (int q = 0; q < Q; ++q)
                  for (int c = 0; c < 4; ++c) scores_of(ir[q])[vis[n + c]] = tmp[4 * q + c];
              }
              for (; n < n1; ++n) {
                if (pf) prefetch_values(n);
                for (int q = 0; q < Q; ++q) scores_of(ir[q])[vis[n]] = score1(ir[q], vis[n]);
              }
            };
            index x = 0;
            for (; x + kernel::exp_tile_rows <= ne; x += kernel::exp_tile_rows)
              exp_rows(std::integral_constant<int, kernel::exp_tile_rows>{}, erows + x);
            for (; x < ne; ++x) exp_rows(std::integral_constant<int, 1>{}, erows + x);
            const bool pf = first;  // no row was in the exponential form
            for (; r + 2 <= nt; r += 2) {
              const float *qa = query_of(trows[r]), *qb = query_of(trows[r + 1]);
              float *sa = scores_of(trows[r]), *sb = scores_of(trows[r + 1]);
              float tmp[8];
              index n = n0;
              for (; n + 4 <= n1; n += 4) {
                if (pf && r == 0)
                  for (int c = 0; c < 4; ++c) prefetch_values(n + c);
                const float* k[4] = {keys.row(b, vis[n]), keys.row(b, vis[n + 1]),
                                     keys.row(b, vis[n + 2]), keys.row(b, vis[n + 3])};
                if (additive)
                  kernel::additive_scores2x4(qa, qb, vv, k, stride, tmp);
                else
                  kernel::dot_scores2x4(qa, qb, k, stride, tmp);
                for (int c = 0; c < 4; ++c) {
                  sa[vis[n + c]] = tmp[c];
                  sb[vis[n + c]] = tmp[4 + c];
                }
              }
              for (; n < n1; ++n) {
                if (pf && r == 0) prefetch_values(n);
                sa[vis[n]] = score1(trows[r], vis[n]);
                sb[vis[n]] = score1(trows[r + 1], vis[n]);
              }
            }
            for (; r < nt; ++r) {
              const float* q = query_of(trows[r]);
              float* sc = scores_of(trows[r]);
              float tmp[4];
              index n = n0;
              for (; n + 4 <= n1; n += 4) {
                if (pf && r == 0)
                  for (int c = 0; c < 4; ++c) prefetch_values(n + c);
                const float* k0 = keys.row(b, vis[n]);
                const float* k1 = keys.row(b, vis[n + 1]);
                const float* k2 = keys.row(b, vis[n + 2]);
                const float* k3 = keys.row(b, vis[n + 3]);
                if (additive)
                  kernel::additive_scores4(q, vv, k0, k1, k2, k3, stride, tmp);
                else
                  kernel::dot_scores4(q, k0, k1, k2, k3, stride, tmp);
                for (int c = 0; c < 4; ++c) sc[vis[n + c]] = tmp[c];
              }
              for (; n < n1; ++n) {
                if (pf && r == 0) prefetch_values(n);
                sc[vis[n]] = score1(trows[r], vis[n]);
              }
            }
          };

          // c_i = Σ_j softmax(e_i)_j v_j for the live rows, one key block at
          // a time with the core's online softmax state: the block's value
          // rows are summed while still in L2, and the division by the row
          // sum comes last.
          float* o[Rmax] = {};
          const float* p[Rmax] = {};
          softmax::online_state st[Rmax];
          for (index m = 0; m < nl; ++m) {
            o[m] = chunked ? partial(t, m) : out.at(b, live[m], 0);
            p[m] = s.weights.data() + m * kernel::key_block;
          }
          for (index n0 = 0; n0 < nv; n0 += kernel::key_block) {
            const index n1 = std::min(nv, n0 + kernel::key_block), nk = n1 - n0;
            score_block(n0, n1);
            float factor[Rmax] = {};
            for (index m = 0; m < nl; ++m) {
              const float* sc = scores_of(live[m]);
              float* e = s.weights.data() + m * kernel::key_block;
              for (index n = 0; n < nk; ++n) e[n] = sc[vis[n0 + n]];
              // (an overflowed +inf score weighs 1, as in row_softmax)
              const float bmax = softmax::max_of(e, nk);
              factor[m] = st[m].raise_max(std::min(bmax, softmax::max_finite));
              if (n0 == 0) factor[m] = 0.0f;  // nothing accumulated yet
              st[m].sum += softmax::exp_in_place(e, nk, st[m].pivot());
            }
            for (index n = 0; n < nk; ++n)
              s.values[static_cast<std::size_t>(n)] = values.at(b, vis[n0 + n], 0);
            kernel::accumulate_block(p, factor, o, nl, s.values.data(), nk, Dv);
          }
          if (chunked) {  // finished after the merge
            for (index m = 0; m < nl; ++m) {
              if (nv == 0) std::fill(o[m], o[m] + Dv, 0.0f);
              o[m][Dv] = st[m].max;
              o[m][Dv + 1] = st[m].sum;  // (0: the chunk saw no key)
            }
            return;
          }
          for (index m = 0; m < nl; ++m) {
            const float inv = st[m].inv_sum();
            for (index d = 0; d < Dv; ++d) o[m][d * os] = nv == 0 ? 0.0f : o[m][d * os] * inv;
          }
          bool nonfinite = false;
          for (index m = 0; m < nl && !nonfinite; ++m)
            nonfinite = !softmax::all_finite(o[m], Dv);  // (Dv > 1: os == 1)
          if (!want_weights && !nonfinite) return;
          for (index r = 0; r < nr; ++r)
            finish_row(b, rows[r], scores_of(rows[r]), opt, values, out);
        });
    if (!chunked) return;
    // Each live row's partial sums merged in chunk order as the online
    // softmax merges key blocks: rescaled to the largest chunk max M by
    // e^(max_c - M) (a chunk whose factor underflows to 0 adds nothing, as
    // a key of weight 0), then divided by the rescaled sum. The maxima are
    // compared exactly, so keys at the same (clamped) max weigh the same
    // whichever chunk holds them.
    core::parallel_for(B * L, threads, [&](index row) {
      const index b = row / L, i = row % L;
      float* sc = call_scores_kept ? call_scores.data() + row * S : nullptr;
      if (!opt.query_mask.empty() && !*opt.query_mask.at(b, i)) {
        if (want_weights) finish_row(b, i, sc, opt, values, out);
        return;
      }
      // The row's slot m in its task: its rank among the task's live rows.
      const index i0 = i / R * R;
      index m = 0;
      for (index x = i0; x < i; ++x) m += opt.query_mask.empty() || *opt.query_mask.at(b, x);
      const index first = (b * blocks + i / R) * chunks;
      float top = softmax::neg_inf;
      for (index k = 0; k < chunks; ++k) {
        const float* pk = partial(first + k, m);
        if (pk[Dv + 1] != 0.0f) top = std::max(top, pk[Dv]);
      }
      float* dst = out.at(b, i, 0);
      const index os = out.strides[2];
      float sum = 0.0f;
      bool any = false;
      for (index k = 0; k < chunks; ++k) {
        const float* pk = partial(first + k, m);
        if (pk[Dv + 1] == 0.0f) continue;  // no visible key
        const float f = pk[Dv] == top ? 1.0f : simd::exp_scalar(pk[Dv] - top);
        if (f == 0.0f) continue;
        sum += f * pk[Dv + 1];
        for (index d = 0; d < Dv; ++d) dst[d * os] = any ? f * pk[d] + dst[d * os] : f * pk[d];
        any = true;
      }
      const float inv = softmax::online_state{top, sum}.inv_sum();
      for (index d = 0; d < Dv; ++d) dst[d * os] = any ? dst[d * os] * inv : 0.0f;
      if (!want_weights && softmax::all_finite(dst, Dv)) return;
      // Weights, or the fp64 repair of a non-finite row: the row's scores,
      // computed again when they were not kept (rare: such a row summed
      // values near FLT_MAX).
      std::vector<float> again;
      if (sc == nullptr) {
        again.assign(static_cast<std::size_t>(S), softmax::neg_inf);
        std::vector<index> vis(static_cast<std::size_t>(S));
        const index nv = visible_keys(opt, b, S, 0, S, vis.data());
        for (index n = 0; n < nv; ++n) again[vis[n]] = score_of(b, i, vis[n]);
        sc = again.data();
      }
      finish_row(b, i, sc, opt, values, out);
    });
  }

  // The end of row i of batch b once its context is in out: the attention
  // weights through the core's row softmax, on request, and the context
  // features that came out non-finite from finite values (the unnormalised
  // sum can pass FLT_MAX) summed again in double. sc holds the row's scores
  // (-inf where not visible) and is turned into its weights.
  void finish_row(index b, index i, float* sc, const additive_options& opt,
                  const strided<const float, 3>& values, const strided<float, 3>& out) const {
    const index S = values.dims[1], Dv = values.dims[2], os = out.strides[2];
    softmax::row_softmax(sc, S);
    if (!opt.weights.empty()) {
      float* w = opt.weights.at(b, i, 0);
      const index ws = opt.weights.strides[2];
      for (index j = 0; j < S; ++j) w[j * ws] = sc[j];
    }
    const bool live = opt.query_mask.empty() || *opt.query_mask.at(b, i);
    float* o = out.at(b, i, 0);
    if (!live || softmax::all_finite(o, Dv)) return;  // (Dv > 1: os == 1)
    std::vector<index> vis(static_cast<std::size_t>(S));
    const index nv = visible_keys(opt, b, S, 0, S, vis.data());
    kernel::weighted_sum_fp64_if_nonfinite(sc, o, vis.data(), nv, values, b, os, Dv);
  }

  additive_weights w_;
  core::packed_linear wq_, wk_;    // W_q (with the bias) and W_k, packed when given
  core::aligned_vector<float> v_;  // effective v, zero-padded to the packet stride
  // Σ_a v_a and Σ_a |v_a| (additive): the exponential form's score is
  // Σ v - 2 Σ v / (E F + 1), used only while Σ|v| is far from overflow
  // (the paired quotient forms |v| d with d up to 2^63).
  float sum_v_ = 0.0f;
  double sum_abs_v_ = 0.0;
  static constexpr double kernel_sum_v_limit = 1e18;
  index Da_ = 0, Dq_ = 0, Dk_ = 0, D_ = 0;
};

}  // namespace ATTN_ABI
}  // namespace attn
