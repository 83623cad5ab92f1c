// attn/structured.hpp: structured attention as linear-chain CRF marginals —
// the segmentation attention of Kim, Denton, Hoang and Rush (2017,
// arXiv 1702.00887, section 3.2).
//
// Each key position j carries a binary selection variable z_j. A
// linear-chain CRF over z_0 .. z_{n-1} (n = the batch's key length) scores
// an assignment z by
//     score(z) = Σ_j θ_j(z_j) + Σ_{j < n-1} ψ_j(z_j, z_{j+1})
// with unary log-potentials θ_j(1) = the attention score s_j, θ_j(0) = 0
// unless given, and pairwise log-potentials ψ [2, 2] per batch or per
// position. The attention weights are the marginals
//     p_j = p(z_j = 1) = Σ_{z: z_j = 1} exp(score(z)) / Z,
// computed by the forward-backward algorithm in log space, and the context
// is c = Σ_j p_j v_j (the weights need not sum to 1: they select a set of
// keys, not one key). log Z is returned too; its gradient with respect to
// θ_j(1) is p_j (and with respect to θ_j(0), 1 − p_j), the identity the
// paper's backward pass relies on.
//
// Numerics: the forward and backward messages are renormalised at every
// position (the larger of the two states is 0), so nothing grows with n;
// log Z is the sum of the normalisers. The recurrence runs in double (it
// is O(n) per sequence against the O(n · d) of the scores and the context,
// and double keeps marginals to ~1e-12 even for n = 10,000 and potentials
// of ±1e4); scores, context and outputs are fp32. Potentials may be -inf
// (a forbidden state or transition); a chain with no allowed assignment
// gets marginals 0, context 0 and log Z = -inf. +inf and NaN potentials are
// not allowed (not checked: they are data). An empty chain (length 0) has
// one assignment: marginals none, context 0, log Z = 0.
//
// Two entries: one takes the scores s [B, S], the other computes them as
// s_j = scale · q · k_j from a query [B, d_k] and keys [B, S, d_k] (the
// dot-product score; scale defaults to 1/sqrt(d_k)). Values are
// [B, S, d_v]. Tensors are row-major; views may have any strides except
// that feature dims must be contiguous. Work is split over the batch; the
// same output bits for any thread count.
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <optional>
#include <string>
#include <unsupported/Eigen/CXX11/Tensor>
#include <vector>

#include "attn/core/abi.hpp"
#include "attn/core/parallel.hpp"
#include "attn/core/simd.hpp"
#include "attn/error.hpp"
#include "attn/mask.hpp"  // detail::check_key_lengths
#include "attn/sdpa.hpp"  // detail::dims_note
#include "attn/view.hpp"

namespace attn {

/// Options of segmentation_attention. Shapes use B = batch, S = keys.
struct segmentation_options {
  /// Per-batch chain length: only keys j < key_lengths[b] take part (their
  /// marginals are the CRF's, the others' 0). Empty = all S. Size B, values
  /// in [0, S]. (To force z_j = 0 at one key inside a chain, give it the
  /// score -inf.)
  std::vector<index> key_lengths;
  /// [B, S] unary log-potentials θ_j(0) of "not selected". Empty = 0.
  strided<const float, 2> unary0;
  /// [B, P, 2, 2] pairwise log-potentials: ψ_j(z, z') = pairwise(b, j, z, z')
  /// scores z_j = z, z_{j+1} = z'. P = 1 shares one [2, 2] matrix across
  /// the chain (per batch; give batch stride 0 to share it across the
  /// batch too), P = S − 1 gives one per edge. Empty = 0 (independent
  /// selections: p_j = sigmoid(θ_j(1) − θ_j(0))).
  strided<const float, 4> pairwise;
  /// Query-key entry only: multiplies q · k_j. Default 1/sqrt(d_k). Must be
  /// left unset for the scores entry.
  std::optional<float> scale;
  /// Threads (0 = OpenMP's default). Results do not depend on it.
  int num_threads = 0;
};

/// The outputs of segmentation_attention (tensor form).
struct segmentation_result {
  Eigen::Tensor<float, 2, Eigen::RowMajor> marginals;      ///< [B, S]: p(z_j = 1)
  Eigen::Tensor<float, 2, Eigen::RowMajor> context;        ///< [B, d_v]: Σ_j p_j v_j
  Eigen::Tensor<float, 1, Eigen::RowMajor> log_partition;  ///< [B]: log Z
};

inline namespace ATTN_ABI {
namespace structured_kernel {

constexpr double ninf = -std::numeric_limits<double>::infinity();

/// log(e^x + e^y) without overflow; -inf when both are -inf.
inline double log_add(double x, double y) {
  const double m = x > y ? x : y;
  if (m == ninf) return ninf;
  return m + std::log1p(std::exp(-std::fabs(x - y)));
}

/// p(z = 1) from the two unnormalised log-probabilities u0, u1.
inline double sigmoid_of(double u0, double u1) {
  if (u1 == ninf) return 0.0;
  if (u0 == ninf) return 1.0;
  const double t = u1 - u0;
  if (t >= 0) return 1.0 / (1.0 + std::exp(-t));
  const double e = std::exp(t);
  return e / (1.0 + e);
}

/// Dot product of n floats (packets, then the tail), in a fixed order.
inline float dot(const float* x, const float* y, index n) {
  using namespace simd;
  packet acc = zero();
  index k = 0;
  for (; k + width <= n; k += width) acc = simd::fma(load(x + k), load(y + k), acc);
  float s = reduce_add(acc);
  for (; k < n; ++k) s = x[k] * y[k] + s;
  return s;
}

/// One batch element's problem, read through views.
struct inputs {
  strided<const float, 2> scores;  // [B, S], or empty (query-key entry)
  strided<const float, 2> query;   // [B, d_k]
  strided<const float, 3> keys;    // [B, S, d_k]
  float scale = 1.0f;
  index S = 0;                     // keys per chain
  strided<const float, 3> values;  // [B, S, d_v] or empty
  strided<const float, 2> unary0;
  strided<const float, 4> pairwise;
  const std::vector<index>* key_lengths = nullptr;
  strided<float, 2> marginals;
  strided<float, 2> context;
  strided<float, 1> log_partition;
};

struct scratch {
  std::vector<double> t1, t0, fwd;  // θ(1), θ(0) [n]; forward messages [n, 2]
  std::vector<float> p, acc;        // marginals [S]; context accumulator [d_v]
};

/// Forward-backward for batch b: marginals into s.p[0, n), returns log Z.
inline double chain(const inputs& in, index b, index n, scratch& s) {
  double* t1 = s.t1.data();
  double* t0 = s.t0.data();
  double* f = s.fwd.data();
  for (index j = 0; j < n; ++j) {
    t1[j] = in.scores.empty()
                ? double(in.scale *
                         dot(in.query.at(b, 0), in.keys.at(b, j, 0), in.query.dims[1]))
                : double(*in.scores.at(b, j));
    t0[j] = in.unary0.empty() ? 0.0 : double(*in.unary0.at(b, j));
  }
  const bool per_edge = !in.pairwise.empty() && in.pairwise.dims[1] != 1;
  auto psi = [&](index j, int z, int z2) {  // edge (j, j + 1)
    return in.pairwise.empty() ? 0.0 : double(*in.pairwise.at(b, per_edge ? j : 0, z, z2));
  };
  float* p = s.p.data();
  if (n == 0) return 0.0;
  auto infeasible = [&] {
    for (index j = 0; j < n; ++j) p[j] = 0.0f;
    return ninf;
  };
  // Forward: f[j](z) = log Σ over z_0..z_{j-1} of exp(partial score with
  // z_j = z), minus the running normaliser log_z.
  double log_z = 0.0;
  for (index j = 0; j < n; ++j) {
    double g0, g1;
    if (j == 0) {
      g0 = t0[0];
      g1 = t1[0];
    } else {
      const double a0 = f[2 * (j - 1)], a1 = f[2 * (j - 1) + 1];
      g0 = t0[j] + log_add(a0 + psi(j - 1, 0, 0), a1 + psi(j - 1, 1, 0));
      g1 = t1[j] + log_add(a0 + psi(j - 1, 0, 1), a1 + psi(j - 1, 1, 1));
    }
    const double m = g0 > g1 ? g0 : g1;
    if (!(m > ninf)) return infeasible();
    f[2 * j] = g0 - m;
    f[2 * j + 1] = g1 - m;
    log_z += m;
  }
  log_z += log_add(f[2 * (n - 1)], f[2 * (n - 1) + 1]);
  // Backward: r(z) = log Σ over z_{j+1}.. given z_j = z, renormalised;
  // marginals from f + r, normalised over the two states.
  double r0 = 0.0, r1 = 0.0;
  for (index j = n - 1; j >= 0; --j) {
    p[j] = static_cast<float>(sigmoid_of(f[2 * j] + r0, f[2 * j + 1] + r1));
    if (j == 0) break;
    const double h0 = log_add(psi(j - 1, 0, 0) + t0[j] + r0, psi(j - 1, 0, 1) + t1[j] + r1);
    const double h1 = log_add(psi(j - 1, 1, 0) + t0[j] + r0, psi(j - 1, 1, 1) + t1[j] + r1);
    const double m = h0 > h1 ? h0 : h1;
    if (!(m > ninf)) return infeasible();
    r0 = h0 - m;
    r1 = h1 - m;
  }
  return log_z;
}

/// All of batch b: chain, then outputs.
inline void run_batch(const inputs& in, index b, scratch& s) {
  using namespace simd;
  const index S = in.S;
  const index n = in.key_lengths->empty() ? S : (*in.key_lengths)[static_cast<std::size_t>(b)];
  const double log_z = chain(in, b, n, s);
  const float* p = s.p.data();
  if (!in.marginals.empty())
    for (index j = 0; j < S; ++j) *in.marginals.at(b, j) = j < n ? p[j] : 0.0f;
  if (!in.log_partition.empty()) *in.log_partition.at(b) = static_cast<float>(log_z);
  if (in.context.empty()) return;
  const index dv = in.context.dims[1];
  float* acc = s.acc.data();
  for (index d = 0; d < dv; ++d) acc[d] = 0.0f;
  for (index j = 0; j < n; ++j) {
    const float w = p[j];
    if (w == 0.0f) continue;  // adds nothing (and an inf value cannot make NaN)
    const float* v = in.values.at(b, j, 0);
    const packet pw = broadcast(w);
    index d = 0;
    for (; d + width <= dv; d += width) store(acc + d, simd::fma(pw, load(v + d), load(acc + d)));
    for (; d < dv; ++d) acc[d] = w * v[d] + acc[d];
  }
  float* c = in.context.at(b, 0);
  for (index d = 0; d < dv; ++d) c[d * in.context.strides[1]] = acc[d];
}

}  // namespace structured_kernel

namespace structured_detail {

// Checks everything but the score source; S = keys, returns nothing.
inline void check_common(const char* fn, index B, index S, const strided<const float, 3>& values,
                         const strided<float, 2>& marginals, const strided<float, 2>& context,
                         const strided<float, 1>& log_partition,
                         const segmentation_options& opt) {
  using detail::require;
  auto absent3 = [](const strided<const float, 3>& v) {
    return v.empty() && v.dims == std::array<index, 3>{};
  };
  if (!absent3(values)) {
    require(!values.empty() || detail::has_zero_extent(values), fn, "values", "a non-null view",
            "null data");
    require(
        values.dims[0] == B && values.dims[1] == S && values.dims[2] >= 1, fn, "values",
        [&] {
          return "dims [batch = " + std::to_string(B) + ", S = " + std::to_string(S) +
                 ", d_v >= 1]";
        },
        values.dims);
    require(values.strides[2] == 1 || values.dims[2] <= 1, fn, "values.strides[2]",
            "1 (contiguous features)", values.strides[2]);
  }
  const bool has_context = !(context.empty() && context.dims == std::array<index, 2>{});
  if (has_context) {
    require(!absent3(values), fn, "values", "a view of [batch, S, d_v] (context is wanted)",
            "an absent view");
    const std::array<index, 2> want{B, values.dims[2]};
    require(!context.empty() || detail::has_zero_extent(context), fn, "context",
            "a non-null view", "null data");
    require(
        context.dims == want, fn, "context", [&] { return detail::dims_note(want, "[batch, d_v]"); },
        context.dims);
    require(context.strides[1] == 1 || want[1] <= 1, fn, "context.strides[1]",
            "1 (contiguous features)", context.strides[1]);
    require(detail::non_overlapping(context), fn, "context.strides",
            "strides under which no two elements overlap", context.strides);
  }
  if (!(marginals.empty() && marginals.dims == std::array<index, 2>{})) {
    const std::array<index, 2> want{B, S};
    require(!marginals.empty() || detail::has_zero_extent(marginals), fn, "marginals",
            "a non-null view", "null data");
    require(
        marginals.dims == want, fn, "marginals",
        [&] { return detail::dims_note(want, "[batch, S]"); }, marginals.dims);
    require(detail::non_overlapping(marginals), fn, "marginals.strides",
            "strides under which no two elements overlap", marginals.strides);
  }
  if (!(log_partition.empty() && log_partition.dims == std::array<index, 1>{})) {
    require(!log_partition.empty() || B == 0, fn, "log_partition", "a non-null view",
            "null data");
    require(
        log_partition.dims[0] == B, fn, "log_partition",
        [&] { return "dims [batch = " + std::to_string(B) + "]"; }, log_partition.dims);
    require(detail::non_overlapping(log_partition), fn, "log_partition.strides",
            "strides under which no two elements overlap", log_partition.strides);
  }
  detail::check_key_lengths(fn, opt.key_lengths, B, S);
  if (!opt.unary0.empty()) {
    const std::array<index, 2> want{B, S};
    require(
        opt.unary0.dims == want, fn, "unary0",
        [&] { return detail::dims_note(want, "[batch, S]"); }, opt.unary0.dims);
  }
  if (!opt.pairwise.empty() || !detail::has_zero_extent(opt.pairwise)) {
    require(!opt.pairwise.empty(), fn, "pairwise", "a non-null view", "null data");
    const auto& d = opt.pairwise.dims;
    require(
        d[0] == B && (d[1] == 1 || d[1] == S - 1) && d[2] == 2 && d[3] == 2, fn, "pairwise",
        [&] {
          return "dims [batch = " + std::to_string(B) + ", 1 or S - 1 = " +
                 std::to_string(S - 1) + ", 2, 2]";
        },
        d);
  }
  require(opt.num_threads >= 0, fn, "num_threads", ">= 0 (0 = default)", opt.num_threads);
}

inline void run(structured_kernel::inputs& in, index B, index S, index dv, int threads,
                double flops) {
  core::parallel_for(
      B, core::threads_for_work(threads, flops),
      [&] {
        structured_kernel::scratch s;
        s.t1.resize(static_cast<std::size_t>(S));
        s.t0.resize(static_cast<std::size_t>(S));
        s.fwd.resize(static_cast<std::size_t>(2 * S));
        s.p.resize(static_cast<std::size_t>(S));
        s.acc.resize(static_cast<std::size_t>(dv));
        return s;
      },
      [&](structured_kernel::scratch& s, index b) { structured_kernel::run_batch(in, b, s); });
}

}  // namespace structured_detail

/// Segmentation attention from given scores (see the file comment).
///
/// @param scores        [B, S]: θ_j(1), the attention scores (any strides).
/// @param values        [B, S, d_v], or absent ({}) when context is absent.
/// @param marginals     out [B, S]: p(z_j = 1); 0 beyond a key length. May
///                      be absent ({}).
/// @param context       out [B, d_v]: Σ_j p_j v_j. May be absent ({}).
/// @param log_partition out [B]: log Z (natural log). May be absent ({}).
/// @param opt           key lengths, θ(0), pairwise potentials, threads;
///                      opt.scale must be unset.
/// @throws attn::error on any shape, stride or option mismatch.
inline void segmentation_attention(strided<const float, 2> scores, strided<const float, 3> values,
                                   strided<float, 2> marginals, strided<float, 2> context,
                                   strided<float, 1> log_partition,
                                   const segmentation_options& opt = {}) {
  constexpr const char* fn = "segmentation_attention";
  using detail::require;
  require(!scores.empty() || detail::has_zero_extent(scores), fn, "scores", "a non-null view",
          "null data");
  require(scores.dims[0] >= 0 && scores.dims[1] >= 0, fn, "scores",
          "dims [batch, S] (non-negative)", scores.dims);
  const index B = scores.dims[0], S = scores.dims[1];
  require(!opt.scale.has_value(), fn, "scale",
          "unset (it applies to the query-key entry only)", opt.scale.value_or(0.0f));
  structured_detail::check_common(fn, B, S, values, marginals, context, log_partition, opt);
  if (B == 0) return;
  structured_kernel::inputs in;
  in.scores = scores;
  in.S = S;
  in.values = values;
  in.unary0 = opt.unary0;
  in.pairwise = opt.pairwise;
  in.key_lengths = &opt.key_lengths;
  in.marginals = marginals;
  in.context = context;
  in.log_partition = log_partition;
  const index dv = context.empty() ? 0 : context.dims[1];
  // Each chain step costs ~5 transcendental functions (~100 flops' time).
  structured_detail::run(in, B, S, dv, opt.num_threads, double(B) * double(S) * (200.0 + 2 * dv));
}

/// Segmentation attention with dot-product scores θ_j(1) = scale · q · k_j.
///
/// @param query  [B, d_k], features contiguous.
/// @param keys   [B, S, d_k], features contiguous.
/// @param values, marginals, context, log_partition, opt  as in the scores
///        entry; opt.scale defaults to 1/sqrt(d_k) and must be finite.
/// @throws attn::error on any shape, stride or option mismatch.
inline void segmentation_attention(strided<const float, 2> query, strided<const float, 3> keys,
                                   strided<const float, 3> values, strided<float, 2> marginals,
                                   strided<float, 2> context, strided<float, 1> log_partition,
                                   const segmentation_options& opt = {}) {
  constexpr const char* fn = "segmentation_attention";
  using detail::require;
  require(!query.empty() || detail::has_zero_extent(query), fn, "query", "a non-null view",
          "null data");
  require(query.dims[0] >= 0 && query.dims[1] >= 1, fn, "query", "dims [batch, d_k >= 1]",
          query.dims);
  require(query.strides[1] == 1 || query.dims[1] <= 1, fn, "query.strides[1]",
          "1 (contiguous features)", query.strides[1]);
  const index B = query.dims[0], dk = query.dims[1];
  require(!keys.empty() || detail::has_zero_extent(keys), fn, "keys", "a non-null view",
          "null data");
  require(
      keys.dims[0] == B && keys.dims[1] >= 0 && keys.dims[2] == dk, fn, "keys",
      [&] {
        return "dims [batch = " + std::to_string(B) + ", S, d_k = " + std::to_string(dk) + "]";
      },
      keys.dims);
  require(keys.strides[2] == 1 || dk <= 1, fn, "keys.strides[2]", "1 (contiguous features)",
          keys.strides[2]);
  const index S = keys.dims[1];
  const float scale = opt.scale ? *opt.scale : 1.0f / std::sqrt(static_cast<float>(dk));
  require(std::isfinite(scale), fn, "scale", "a finite number", scale);
  structured_detail::check_common(fn, B, S, values, marginals, context, log_partition, opt);
  if (B == 0) return;
  structured_kernel::inputs in;
  in.query = query;
  in.keys = keys;
  in.S = S;
  in.scale = scale;
  in.values = values;
  in.unary0 = opt.unary0;
  in.pairwise = opt.pairwise;
  in.key_lengths = &opt.key_lengths;
  in.marginals = marginals;
  in.context = context;
  in.log_partition = log_partition;
  const index dv = context.empty() ? 0 : context.dims[1];
  structured_detail::run(in, B, S, dv, opt.num_threads,
                         double(B) * double(S) * (200.0 + 2 * dk + 2 * dv));
}

/// Tensor convenience of the scores entry: scores [B, S], values
/// [B, S, d_v]; returns marginals [B, S], context [B, d_v], log Z [B].
inline segmentation_result segmentation_attention(
    const Eigen::Tensor<float, 2, Eigen::RowMajor>& scores,
    const Eigen::Tensor<float, 3, Eigen::RowMajor>& values, const segmentation_options& opt = {}) {
  segmentation_result r;
  r.marginals.resize(scores.dimension(0), scores.dimension(1));
  r.context.resize(scores.dimension(0), values.dimension(2));
  r.log_partition.resize(scores.dimension(0));
  segmentation_attention(view(scores), view(values), view(r.marginals), view(r.context),
                         view(r.log_partition), opt);
  return r;
}

/// Tensor convenience of the query-key entry: query [B, d_k], keys
/// [B, S, d_k], values [B, S, d_v].
inline segmentation_result segmentation_attention(
    const Eigen::Tensor<float, 2, Eigen::RowMajor>& query,
    const Eigen::Tensor<float, 3, Eigen::RowMajor>& keys,
    const Eigen::Tensor<float, 3, Eigen::RowMajor>& values, const segmentation_options& opt = {}) {
  segmentation_result r;
  r.marginals.resize(query.dimension(0), keys.dimension(1));
  r.context.resize(query.dimension(0), values.dimension(2));
  r.log_partition.resize(query.dimension(0));
  segmentation_attention(view(query), view(keys), view(values), view(r.marginals),
                         view(r.context), view(r.log_partition), opt);
  return r;
}

}  // namespace ATTN_ABI
}  // namespace attn
