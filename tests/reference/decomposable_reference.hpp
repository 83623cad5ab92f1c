// tests/reference/decomposable_reference.hpp: the decomposable attention
// model's alignments (Parikh et al. 2016) by their direct formulas in fp64,
// the reference tests/test_decomposable.cpp compares
// attn::decomposable_attention against.
//
// Written for clarity, not speed: the whole score matrix is formed, each
// softmax is taken over a row or a column of it, and β, α (or the intra
// output) are the weighted sums, all in double. Alongside the result it
// returns, per score, a bound on the fp32 kernel's score error (see
// score_error below), from which the tests derive their tolerances.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>
#include <vector>

namespace attn_ref {

using index = std::ptrdiff_t;

/// Rounding unit of fp32.
constexpr double eps32_decomp = 5.9604644775390625e-8;

/// The feed-forward function of the tests: F(x) = W x + c, then ReLU when
/// relu is set. Empty W = the identity.
struct decomp_ff {
  index df = 0, d = 0;
  std::vector<double> W;  // [df, d] row-major, or empty
  std::vector<double> c;  // [df] or empty
  bool relu = false;
};

/// One problem: a [B, La, d], b [B, Lb, d] row-major (for intra, b is
/// ignored and Lb = La). Lengths [B] or empty; masks [B, L] or empty.
struct decomp_problem {
  index B = 0, La = 0, Lb = 0, d = 0;
  std::vector<double> a, b;
  decomp_ff f;
  std::vector<index> a_len, b_len;
  std::vector<char> a_mask, b_mask;
  double scale = 1.0;
  // Intra only: distance bias (natural units), max distance, symmetric.
  std::vector<double> bias;
  index max_distance = 10;
  bool symmetric = false;
};

struct decomp_result {
  std::vector<double> e;        // [B, La, Lb] scores (natural units; -inf masked)
  std::vector<double> err;      // [B, La, Lb] bound on the fp32 score error
  std::vector<double> pr, pc;   // [B, La, Lb] row / column softmax
  std::vector<double> beta;     // [B, La, d] (intra: the output)
  std::vector<double> alpha;    // [B, Lb, d]
  std::vector<double> row_lse;  // [B, La]
  std::vector<double> col_lse;  // [B, Lb]
  std::vector<char> vis_a, vis_b;  // [B, La], [B, Lb]
};

/// F applied to one row x [d] in double, with a bound on the fp32 error of
/// each output, from the terms that fp32 rounds: a product of n terms errs
/// by ~ sqrt(n)·eps·Σ|terms| for rounding errors of random sign (the worst
/// case n·eps is never approached by random data); we take
/// 2·sqrt(n)·eps·Σ|terms|, plus eps·|y| for adding c. ReLU passes an error
/// through with slope <= 1.
inline void apply_ff(const decomp_ff& f, const double* x, index d, std::vector<double>& y,
                     std::vector<double>& dy) {
  if (f.W.empty()) {
    y.assign(x, x + d);
    dy.assign(static_cast<std::size_t>(d), 0.0);
    return;
  }
  y.assign(static_cast<std::size_t>(f.df), 0.0);
  dy.assign(static_cast<std::size_t>(f.df), 0.0);
  for (index k = 0; k < f.df; ++k) {
    double s = 0, abs_sum = 0;
    for (index m = 0; m < d; ++m) {
      const double t = f.W[static_cast<std::size_t>(k * d + m)] * x[m];
      s += t;
      abs_sum += std::abs(t);
    }
    double err = 2.0 * std::sqrt(double(d)) * eps32_decomp * abs_sum;
    if (!f.c.empty()) {
      s += f.c[static_cast<std::size_t>(k)];
      err += eps32_decomp * (std::abs(s) + abs_sum);
    }
    if (f.relu) s = std::max(s, 0.0);
    y[static_cast<std::size_t>(k)] = s;
    dy[static_cast<std::size_t>(k)] = err;
  }
}

/// Both alignments, or the intra-sentence output when intra is set.
///
/// score_error: a bound on |e_fp32 - e_exact| for each score, from the
/// F errors dy (first order: Σ_k dFa_k |Fb_k| + |Fa_k| dFb_k), the fp32 dot
/// product of d_f terms (2·sqrt(d_f)·eps·Σ_k |Fa_k Fb_k|), the scaling by
/// the rounded scale·log2(e) (2·eps·|e|), and for intra the bias' rounding
/// in log2 units and its addition (2·eps·(|bias| + |e + bias|)).
inline decomp_result decomposable(const decomp_problem& p, bool intra) {
  const double ninf = -std::numeric_limits<double>::infinity();
  const index B = p.B, La = p.La, Lb = intra ? p.La : p.Lb, d = p.d;
  const std::vector<double>& bv = intra ? p.a : p.b;
  decomp_result r;
  const std::size_t nE = static_cast<std::size_t>(B * La * Lb);
  r.e.assign(nE, ninf);
  r.err.assign(nE, 0.0);
  r.pr.assign(nE, 0.0);
  r.pc.assign(nE, 0.0);
  r.beta.assign(static_cast<std::size_t>(B * La * d), 0.0);
  r.alpha.assign(static_cast<std::size_t>(B * Lb * d), 0.0);
  r.row_lse.assign(static_cast<std::size_t>(B * La), ninf);
  r.col_lse.assign(static_cast<std::size_t>(B * Lb), ninf);
  r.vis_a.assign(static_cast<std::size_t>(B * La), 0);
  r.vis_b.assign(static_cast<std::size_t>(B * Lb), 0);
  auto visible = [&](index b, index i, bool side_a) {
    const std::vector<index>& len = side_a || intra ? p.a_len : p.b_len;
    const std::vector<char>& mask = side_a || intra ? p.a_mask : p.b_mask;
    const index L = side_a ? La : Lb;
    if (!len.empty() && i >= len[static_cast<std::size_t>(b)]) return false;
    if (!mask.empty() && !mask[static_cast<std::size_t>(b * L + i)]) return false;
    return true;
  };
  for (index b = 0; b < B; ++b) {
    std::vector<std::vector<double>> fa(static_cast<std::size_t>(La)), dfa(fa.size());
    std::vector<std::vector<double>> fb(static_cast<std::size_t>(Lb)), dfb(fb.size());
    for (index i = 0; i < La; ++i) {
      r.vis_a[static_cast<std::size_t>(b * La + i)] = visible(b, i, true);
      apply_ff(p.f, p.a.data() + (b * La + i) * d, d, fa[static_cast<std::size_t>(i)],
               dfa[static_cast<std::size_t>(i)]);
    }
    for (index j = 0; j < Lb; ++j) {
      r.vis_b[static_cast<std::size_t>(b * Lb + j)] = visible(b, j, false);
      apply_ff(p.f, bv.data() + (b * Lb + j) * d, d, fb[static_cast<std::size_t>(j)],
               dfb[static_cast<std::size_t>(j)]);
    }
    auto at = [&](index i, index j) { return static_cast<std::size_t>((b * La + i) * Lb + j); };
    for (index i = 0; i < La; ++i)
      for (index j = 0; j < Lb; ++j) {
        if (!r.vis_a[static_cast<std::size_t>(b * La + i)] ||
            !r.vis_b[static_cast<std::size_t>(b * Lb + j)])
          continue;
        const auto &x = fa[static_cast<std::size_t>(i)], &y = fb[static_cast<std::size_t>(j)];
        const auto &dx = dfa[static_cast<std::size_t>(i)], &dy = dfb[static_cast<std::size_t>(j)];
        double s = 0, abs_sum = 0, prop = 0;
        for (std::size_t k = 0; k < x.size(); ++k) {
          s += x[k] * y[k];
          abs_sum += std::abs(x[k] * y[k]);
          prop += dx[k] * std::abs(y[k]) + std::abs(x[k]) * dy[k];
        }
        const double n = static_cast<double>(x.size());
        double e = p.scale * s;
        double err = std::abs(p.scale) * (prop + 2.0 * std::sqrt(n) * eps32_decomp * abs_sum) +
                     2.0 * eps32_decomp * std::abs(e);
        if (intra && !p.bias.empty()) {
          const index D = p.max_distance, dist = i - j;
          const index k = p.symmetric ? std::min(dist < 0 ? -dist : dist, D)
                                      : std::min(std::max(dist, -D), D) + D;
          const double bias = p.bias[static_cast<std::size_t>(k)];
          if (bias == ninf) continue;  // never attended
          e += bias;
          err += 2.0 * eps32_decomp * (std::abs(bias) + std::abs(e));
        }
        r.e[at(i, j)] = e;
        r.err[at(i, j)] = err;
      }
    // Row softmax and β.
    for (index i = 0; i < La; ++i) {
      double m = ninf;
      for (index j = 0; j < Lb; ++j) m = std::max(m, r.e[at(i, j)]);
      if (m == ninf) continue;
      double s = 0;
      for (index j = 0; j < Lb; ++j) s += std::exp(r.e[at(i, j)] - m);
      r.row_lse[static_cast<std::size_t>(b * La + i)] = m + std::log(s);
      for (index j = 0; j < Lb; ++j) {
        const double w = std::exp(r.e[at(i, j)] - m) / s;
        r.pr[at(i, j)] = w;
        for (index k = 0; k < d; ++k)
          r.beta[static_cast<std::size_t>((b * La + i) * d + k)] +=
              w * bv[static_cast<std::size_t>((b * Lb + j) * d + k)];
      }
    }
    if (intra) continue;
    // Column softmax and α.
    for (index j = 0; j < Lb; ++j) {
      double m = ninf;
      for (index i = 0; i < La; ++i) m = std::max(m, r.e[at(i, j)]);
      if (m == ninf) continue;
      double s = 0;
      for (index i = 0; i < La; ++i) s += std::exp(r.e[at(i, j)] - m);
      r.col_lse[static_cast<std::size_t>(b * Lb + j)] = m + std::log(s);
      for (index i = 0; i < La; ++i) {
        const double w = std::exp(r.e[at(i, j)] - m) / s;
        r.pc[at(i, j)] = w;
        for (index k = 0; k < d; ++k)
          r.alpha[static_cast<std::size_t>((b * Lb + j) * d + k)] +=
              w * p.a[static_cast<std::size_t>((b * La + i) * d + k)];
      }
    }
  }
  return r;
}

}  // namespace attn_ref
