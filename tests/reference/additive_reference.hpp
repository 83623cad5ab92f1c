// tests/reference/additive_reference.hpp: naive fp64 additive (Bahdanau)
// attention and Luong's dot / general scores, the reference that
// tests/test_additive.cpp compares attn::additive_attention against.
//
// Written for clarity, not speed: every score is computed from the raw
// weights and inputs in double, with no cached projection, no padding, no
// SIMD. Alongside the result it returns, per query row, a bound on the
// fp32 kernel's score error derived from the magnitudes that enter each
// score (see score_error_bound below), from which the tests derive their
// tolerances.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>
#include <vector>

namespace attn_ref {

using index = std::ptrdiff_t;

enum class score { additive, dot, general };

/// Weights in double, row-major; an empty matrix is the identity.
struct additive_params {
  score kind = score::additive;
  index da = 0, dq = 0, dk = 0;
  std::vector<double> wq;    // [da, dq] or empty
  std::vector<double> wk;    // additive: [da, dk] or empty; general: [dq, dk]
  std::vector<double> bias;  // [da] or empty
  std::vector<double> v;     // [da]
  bool normalize = false;
  double g = 1.0;
};

struct additive_masks {
  std::vector<index> key_lengths;  // [B] or empty
  std::vector<char> key_mask;      // [B, S] or empty
  std::vector<char> query_mask;    // [B, L] or empty
};

struct additive_result {
  std::vector<double> out;      // [B, L, dv]
  std::vector<double> weights;  // [B, L, S]
  std::vector<double> score_err;  // [B, L]: bound on the fp32 score error of the row
  std::vector<char> empty_row;  // [B, L]: no visible key
};

/// Rounding unit of fp32.
constexpr double eps32 = 5.9604644775390625e-8;

/// q [B, L, dq], k [B, S, dk], v [B, S, dv], all row-major.
///
/// score_error_bound: a bound on |e_fp32 - e_exact| for each score,
/// maximised over the row, from the terms the kernel rounds:
///  * a dot product of n terms in fp32 (projection or score) errs by at most
///    ~ sqrt(n)·eps·Σ|terms| for rounding errors of random sign (the worst
///    case, n·eps, is never approached by random data); we take
///    2·sqrt(n)·eps·Σ|terms|;
///  * tanh adds tanh_abs (attn::core::simd::tanh_max_abs_error) per element, and
///    passes a pre-activation error through with slope <= 1;
///  * the score Σ_a v_a t_a then errs by Σ_a |v_a|·(element error) plus its
///    own accumulation 2·sqrt(d_a)·eps·Σ_a |v_a t_a|.
inline additive_result additive_attention(const additive_params& p, const std::vector<double>& q,
                                          const std::vector<double>& k,
                                          const std::vector<double>& v, index B, index L, index S,
                                          index dv, const additive_masks& m, double tanh_abs) {
  const index dq = p.dq, dk = p.dk, da = p.da;
  additive_result r;
  r.out.assign(static_cast<std::size_t>(B * L * dv), 0.0);
  r.weights.assign(static_cast<std::size_t>(B * L * S), 0.0);
  r.score_err.assign(static_cast<std::size_t>(B * L), 0.0);
  r.empty_row.assign(static_cast<std::size_t>(B * L), 0);
  std::vector<double> veff = p.v;
  if (p.kind == score::additive && p.normalize) {
    double n2 = 0;
    for (double x : p.v) n2 += x * x;
    for (double& x : veff) x = x * p.g / std::sqrt(n2);
  }
  const double ninf = -std::numeric_limits<double>::infinity();
  for (index b = 0; b < B; ++b) {
    for (index i = 0; i < L; ++i) {
      const double* qi = &q[static_cast<std::size_t>((b * L + i) * dq)];
      // Query side: projection and the sum of |terms| of each component.
      std::vector<double> qp, qabs;
      if (p.kind == score::additive) {
        qp.assign(static_cast<std::size_t>(da), 0.0);
        qabs.assign(static_cast<std::size_t>(da), 0.0);
        for (index a = 0; a < da; ++a) {
          double s = 0, sa = 0;
          if (p.wq.empty()) {
            s = qi[a];
            sa = 0;  // copied exactly
          } else {
            for (index c = 0; c < dq; ++c) {
              const double t = p.wq[static_cast<std::size_t>(a * dq + c)] * qi[c];
              s += t;
              sa += std::abs(t);
            }
            sa *= 2 * std::sqrt(double(dq)) * eps32;
          }
          if (!p.bias.empty()) {
            s += p.bias[static_cast<std::size_t>(a)];
            sa += eps32 * std::abs(s);
          }
          qp[static_cast<std::size_t>(a)] = s;
          qabs[static_cast<std::size_t>(a)] = sa;
        }
      }
      std::vector<double> e(static_cast<std::size_t>(S), ninf);
      const index len = m.key_lengths.empty() ? S : m.key_lengths[static_cast<std::size_t>(b)];
      double err = 0;
      bool any = false;
      for (index j = 0; j < S; ++j) {
        bool visible = j < len;
        if (!m.key_mask.empty()) visible = visible && m.key_mask[static_cast<std::size_t>(b * S + j)];
        if (!visible) continue;
        any = true;
        const double* kj = &k[static_cast<std::size_t>((b * S + j) * dk)];
        double s = 0, serr = 0;
        if (p.kind == score::additive) {
          double sabs = 0;
          for (index a = 0; a < da; ++a) {
            double kp = 0, kabs = 0;
            if (p.wk.empty()) {
              kp = kj[a];
            } else {
              for (index c = 0; c < dk; ++c) {
                const double t = p.wk[static_cast<std::size_t>(a * dk + c)] * kj[c];
                kp += t;
                kabs += std::abs(t);
              }
              kabs *= 2 * std::sqrt(double(dk)) * eps32;
            }
            const double x = qp[static_cast<std::size_t>(a)] + kp;
            const double th = std::tanh(x);
            const double va = veff[static_cast<std::size_t>(a)];
            s += va * th;
            sabs += std::abs(va * th);
            // element error: projections, the fp32 add, tanh
            const double xerr = qabs[static_cast<std::size_t>(a)] + kabs + eps32 * std::abs(x);
            serr += std::abs(va) * (xerr + tanh_abs + eps32);
          }
          serr += 2 * std::sqrt(double(da)) * eps32 * sabs;
        } else {
          // dot: q·k; general: q·(W k), W [dq, dk].
          double sabs = 0;
          for (index c = 0; c < dq; ++c) {
            double kp = 0, kabs = 0;
            if (p.kind == score::dot) {
              kp = kj[c];
            } else {
              for (index d = 0; d < dk; ++d) {
                const double t = p.wk[static_cast<std::size_t>(c * dk + d)] * kj[d];
                kp += t;
                kabs += std::abs(t);
              }
              kabs *= 2 * std::sqrt(double(dk)) * eps32;
            }
            s += qi[c] * kp;
            sabs += std::abs(qi[c] * kp);
            serr += std::abs(qi[c]) * kabs;
          }
          serr += 2 * std::sqrt(double(dq)) * eps32 * sabs;
        }
        e[static_cast<std::size_t>(j)] = s;
        err = std::max(err, serr);
      }
      r.score_err[static_cast<std::size_t>(b * L + i)] = err;
      r.empty_row[static_cast<std::size_t>(b * L + i)] = !any;
      if (!any) continue;
      double mx = ninf;
      for (double x : e) mx = std::max(mx, x);
      double sum = 0;
      for (double& x : e) {
        x = x == ninf ? 0.0 : std::exp(x - mx);
        sum += x;
      }
      for (index j = 0; j < S; ++j)
        r.weights[static_cast<std::size_t>((b * L + i) * S + j)] = e[static_cast<std::size_t>(j)] / sum;
      const bool query_on =
          m.query_mask.empty() || m.query_mask[static_cast<std::size_t>(b * L + i)];
      if (!query_on) continue;
      for (index j = 0; j < S; ++j) {
        const double a = e[static_cast<std::size_t>(j)] / sum;
        for (index d = 0; d < dv; ++d)
          r.out[static_cast<std::size_t>((b * L + i) * dv + d)] +=
              a * v[static_cast<std::size_t>((b * S + j) * dv + d)];
      }
    }
  }
  return r;
}

}  // namespace attn_ref
