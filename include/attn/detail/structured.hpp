// attn/detail/structured.hpp: the kernel behind attn::segmentation_attention
// (attn/structured.hpp): forward-backward over each batch entry's chain,
// then its marginals, log Z and context. Arguments arrive validated.
//
// Internal header. A public header defines ATTN_DETAIL_ALLOWED before it
// includes its detail headers and never undefines it, so public headers
// nest and combine in any order; a translation unit that reaches this file
// without going through one stops at the #error below (Eigen's scheme).
//
// One task per batch entry, each with its own scratch and a fixed order of
// operations: the same bits for any thread count. The recurrence runs in
// double with its messages renormalised at every position (the larger of
// the two states is 0); scores, context and outputs are fp32.
#pragma once

#ifndef ATTN_DETAIL_ALLOWED
#error "attn/detail/structured.hpp is internal: include <attn/structured.hpp>"
#endif

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>
#include <vector>

#include "attn/core/abi.hpp"
#include "attn/core/dot.hpp"
#include "attn/core/index.hpp"
#include "attn/core/parallel.hpp"
#include "attn/core/simd.hpp"
#include "attn/view.hpp"

namespace attn::detail::structured {
inline namespace ATTN_ABI {

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

/// θ_j(1) = scale · q · k_j of batch b: the fp32 dot product, or, when
/// that overflows (finite terms whose fp32 sum or product with scale passes
/// FLT_MAX: ±inf, inf of the wrong sign, NaN where +inf meets -inf), the
/// same in double, where finite inputs stay finite (|q_d k_d| <= FLT_MAX²)
/// and the recurrence, in double already, takes it as it is. NaN or inf
/// inputs stay non-finite. The fp32 path keeps its bits.
inline double query_key_score(const inputs& in, index b, index j) {
  const float* q = in.query.at(b, 0);
  const float* k = in.keys.at(b, j, 0);
  const index dk = in.query.dims[1];
  const float s = in.scale * core::dot(q, k, dk);
  if (std::isfinite(s)) return double(s);
  double d = 0.0;
  for (index c = 0; c < dk; ++c) d += double(q[c]) * double(k[c]);
  return double(in.scale) * d;
}

/// Forward-backward for batch b: marginals into s.p[0, n), returns log Z.
inline double chain(const inputs& in, index b, index n, scratch& s) {
  double* t1 = s.t1.data();
  double* t0 = s.t0.data();
  double* f = s.fwd.data();
  for (index j = 0; j < n; ++j) {
    t1[j] = in.scores.empty() ? query_key_score(in, b, j) : double(*in.scores.at(b, j));
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
  using namespace core::simd;
  const index S = in.S;
  const index n = in.key_lengths->empty() ? S : (*in.key_lengths)[static_cast<std::size_t>(b)];
  const double log_z = chain(in, b, n, s);
  const float* p = s.p.data();
  if (!in.marginals.empty())
    for (index j = 0; j < S; ++j) *in.marginals.at(b, j) = j < n ? p[j] : 0.0f;
  // log Z saturates at ±FLT_MAX (finite potentials past float range): -inf
  // is kept for a chain with no allowed assignment.
  constexpr double fmax = std::numeric_limits<float>::max();
  if (!in.log_partition.empty())
    *in.log_partition.at(b) =
        static_cast<float>(std::isfinite(log_z) ? std::min(std::max(log_z, -fmax), fmax) : log_z);
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
    for (; d + width <= dv; d += width)
      store(acc + d, core::simd::fma(pw, load(v + d), load(acc + d)));
    for (; d < dv; ++d) acc[d] = w * v[d] + acc[d];
  }
  // Σ_j p_j v_j is no convex combination (the marginals need not sum to 1):
  // finite values can sum past FLT_MAX. A feature that came out non-finite
  // is summed again in double and saturates at ±FLT_MAX; one that reads a
  // NaN or inf value stays non-finite.
  for (index d = 0; d < dv; ++d) {
    if (std::isfinite(acc[d])) continue;
    double x = 0.0;
    for (index j = 0; j < n; ++j)
      if (p[j] != 0.0f) x += double(p[j]) * double(*in.values.at(b, j, d));
    if (std::isfinite(x)) acc[d] = static_cast<float>(std::min(std::max(x, -fmax), fmax));
  }
  float* c = in.context.at(b, 0);
  for (index d = 0; d < dv; ++d) c[d * in.context.strides[1]] = acc[d];
}

// All batch entries of one call, one task each. (Each chain step costs ~5
// transcendental functions, about 100 flops' time, which sizes the thread
// count.)
inline void run(const inputs& in, index B, int threads) {
  const index S = in.S;
  const index dk = in.scores.empty() ? in.query.dims[1] : 0;
  const index dv = in.context.empty() ? 0 : in.context.dims[1];
  const double flops = double(B) * double(S) * (200.0 + 2 * dk + 2 * dv);
  core::parallel_for(
      B, core::threads_for_work(threads, flops),
      [&] {
        scratch s;
        s.t1.resize(static_cast<std::size_t>(S));
        s.t0.resize(static_cast<std::size_t>(S));
        s.fwd.resize(static_cast<std::size_t>(2 * S));
        s.p.resize(static_cast<std::size_t>(S));
        s.acc.resize(static_cast<std::size_t>(dv));
        return s;
      },
      [&](scratch& s, index b) { run_batch(in, b, s); });
}

}  // namespace ATTN_ABI
}  // namespace attn::detail::structured
