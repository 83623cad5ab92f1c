// tests/reference/structured_reference.hpp: linear-chain CRF marginals over
// binary selections (the segmentation attention of Kim et al. 2017), the
// reference tests/test_structured.cpp compares attn::segmentation_attention
// against. Two independent fp64-or-better implementations:
//
//  * brute_force: enumerates all 2^n assignments z (n <= 16) in double,
//    scores each one, and sums exp(score - log Z) into the node marginals
//    p(z_j = 1) and the edge marginals p(z_j = z, z_{j+1} = z'). No
//    recursion at all: checks the CRF exactly, not an algorithm.
//  * forward_backward: the textbook unnormalised log-space recursion in
//    long double (80-bit on x86-64), for chains too long to enumerate; it
//    shares no code or formulation with the kernel (which renormalises its
//    messages at every step, in double). It is itself checked against
//    brute_force.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <vector>

namespace attn_ref {

/// One chain: n positions, unaries t0 / t1 [n], pairwise psi [n - 1][2][2]
/// flattened as psi[(j * 2 + z) * 2 + z'] (empty = all 0).
struct chain_problem {
  std::vector<double> t0, t1;
  std::vector<double> psi;
};

struct chain_result {
  std::vector<double> marginal;  // [n] p(z_j = 1)
  std::vector<double> edge;      // [n - 1][2][2] p(z_j = z, z_{j+1} = z') (brute force only)
  double log_z = 0;
};

inline double chain_psi(const chain_problem& c, std::size_t j, int z, int z2) {
  return c.psi.empty() ? 0.0 : c.psi[(j * 2 + static_cast<std::size_t>(z)) * 2 +
                                     static_cast<std::size_t>(z2)];
}

/// Exact marginals by enumeration, n <= 16. log Z = -inf (no allowed
/// assignment) gives marginals 0.
inline chain_result brute_force(const chain_problem& c) {
  const std::size_t n = c.t1.size();
  const double ninf = -std::numeric_limits<double>::infinity();
  chain_result r;
  r.marginal.assign(n, 0.0);
  r.edge.assign(n > 0 ? (n - 1) * 4 : 0, 0.0);
  std::vector<double> score(std::size_t{1} << n);
  double m = ninf;
  for (std::uint32_t z = 0; z < score.size(); ++z) {
    double s = 0;
    for (std::size_t j = 0; j < n; ++j) {
      const int zj = (z >> j) & 1;
      s += zj ? c.t1[j] : c.t0[j];
      if (j + 1 < n) s += chain_psi(c, j, zj, (z >> (j + 1)) & 1);
    }
    score[z] = s;
    m = std::max(m, s);
  }
  if (m == ninf) {
    r.log_z = ninf;
    return r;
  }
  double total = 0;
  for (double s : score) total += std::exp(s - m);
  r.log_z = m + std::log(total);
  for (std::uint32_t z = 0; z < score.size(); ++z) {
    const double w = std::exp(score[z] - r.log_z);
    for (std::size_t j = 0; j < n; ++j) {
      if ((z >> j) & 1) r.marginal[j] += w;
      if (j + 1 < n) r.edge[j * 4 + ((z >> j) & 1) * 2 + ((z >> (j + 1)) & 1)] += w;
    }
  }
  return r;
}

/// Unnormalised log-space forward-backward in long double.
inline chain_result forward_backward(const chain_problem& c) {
  using real = long double;
  const std::size_t n = c.t1.size();
  const real ninf = -std::numeric_limits<real>::infinity();
  auto lse = [&](real x, real y) {
    const real m = std::max(x, y);
    if (m == ninf) return ninf;
    return m + std::log(std::exp(x - m) + std::exp(y - m));
  };
  chain_result r;
  r.marginal.assign(n, 0.0);
  if (n == 0) return r;
  std::vector<real> a(2 * n), b(2 * n);
  a[0] = c.t0[0];
  a[1] = c.t1[0];
  for (std::size_t j = 1; j < n; ++j)
    for (int z = 0; z < 2; ++z)
      a[2 * j + static_cast<std::size_t>(z)] =
          (z ? c.t1[j] : c.t0[j]) + lse(a[2 * (j - 1)] + chain_psi(c, j - 1, 0, z),
                                        a[2 * (j - 1) + 1] + chain_psi(c, j - 1, 1, z));
  b[2 * (n - 1)] = b[2 * (n - 1) + 1] = 0;
  for (std::size_t j = n - 1; j-- > 0;)
    for (int z = 0; z < 2; ++z)
      b[2 * j + static_cast<std::size_t>(z)] =
          lse(chain_psi(c, j, z, 0) + c.t0[j + 1] + b[2 * (j + 1)],
              chain_psi(c, j, z, 1) + c.t1[j + 1] + b[2 * (j + 1) + 1]);
  const real log_z = lse(a[2 * (n - 1)], a[2 * (n - 1) + 1]);
  r.log_z = static_cast<double>(log_z);
  if (log_z == ninf) return r;
  for (std::size_t j = 0; j < n; ++j)
    r.marginal[j] = static_cast<double>(std::exp(a[2 * j + 1] + b[2 * j + 1] - log_z));
  return r;
}

}  // namespace attn_ref
