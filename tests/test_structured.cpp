// tests/test_structured.cpp: attn::segmentation_attention (structured
// attention as linear-chain CRF marginals, Kim et al. 2017) against the
// fp64 references of tests/reference/structured_reference.hpp: exact
// enumeration of all 2^n assignments for n <= 12, and an independent
// long-double forward-backward for long chains; plus the gradient identity
// d log Z / d θ = marginals by finite differences, extreme and -inf
// potentials, n = 10,000, threads, layouts and every error path.
//
// Tolerances
// ----------
// Scores entry (the kernel reads the same fp32 potentials as the
// reference). With M = 1 + the largest |finite potential| of the chain:
//  * marginals: |p - p_ref| <= eps32·p_ref + (64·n + 2^n)·eps64·M. The
//    kernel's recursion runs in double; each step's log_add / renormalise
//    rounds at ~16 ulp of magnitudes <= M, and log-space message passing
//    does not amplify errors (each step is 1-Lipschitz in the max norm of
//    the log-odds), so the log-odds err by <= 16·n·eps64·M and p (slope
//    <= 1/4) by less; the output is then rounded to fp32 (eps32·p). The
//    brute-force reference sums 2^n exponentials (2^n·eps64 relative) and n
//    potentials per score. Against the long-double forward-backward
//    (unnormalised, magnitudes up to n·M) the reference term is
//    16·n·eps80·n·M instead.
//  * log Z: eps32·|ref| (fp32 output) + 16·n²·eps64·M (the double sum of n
//    normalisers, each <= n·M in magnitude at worst) + the reference's term.
//  * context: Σ_j tol(p_j)·|v_j| + 2·sqrt(n)·eps32·Σ_j p_j·|v_j| + 1e-30: the
//    marginal errors, then the fp32 accumulation of n products (random-sign
//    rounding, 2x margin).
// Query-key entry: each score s_j = scale·q·k_j is an fp32 dot product of
// d_k terms, off by E_j <= 2·sqrt(d_k)·eps32·|scale|·Σ|q k| + eps32·|s_j|
// (random-sign rounding, 2x margin; then the product with scale). Every
// assignment's score then moves by at most Δ = Σ_j E_j, so every
// probability by a factor within e^{±2Δ}: marginals get expm1(2Δ) more,
// log Z gets Δ more.
// Finite differences (gradient identity): see GradientIdentity below.
// The worst ratio error / tolerance is printed at the end. For marginals
// and log Z it sits near 1 by construction: the kernel computes them in
// double and rounds to fp32, an error of up to eps32·|x| that the bound
// states exactly (and that the rounding attains for values just above a
// power of 2); everything else the tolerances allow is ~1e-12 and below. A
// real bug (a wrong edge, an off-by-one in the recursion, a missed
// normaliser) moves marginals by O(0.01..1), far above these tolerances.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <attn/attn.hpp>
#include <attn/structured.hpp>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "expect_error.hpp"
#include "reference/structured_reference.hpp"

namespace test_structured {

using attn::index;
using tensor1 = Eigen::Tensor<float, 1, Eigen::RowMajor>;
using tensor2 = Eigen::Tensor<float, 2, Eigen::RowMajor>;
using tensor3 = Eigen::Tensor<float, 3, Eigen::RowMajor>;
using tensor4 = Eigen::Tensor<float, 4, Eigen::RowMajor>;
constexpr double eps32 = 5.9604644775390625e-8;
constexpr double eps64 = 1.1102230246251565e-16;
const double eps80 = std::numeric_limits<long double>::epsilon() / 2;
constexpr float kInf = std::numeric_limits<float>::infinity();

double g_worst_p = 0, g_worst_z = 0, g_worst_c = 0, g_worst_grad = 0;

tensor2 randt2(index a, index b, std::mt19937& g, float sd = 1.0f) {
  std::normal_distribution<float> n(0.0f, sd);
  tensor2 t(a, b);
  for (index i = 0; i < t.size(); ++i) t.data()[i] = n(g);
  return t;
}
tensor3 randt3(index a, index b, index c, std::mt19937& g, float sd = 1.0f) {
  std::normal_distribution<float> n(0.0f, sd);
  tensor3 t(a, b, c);
  for (index i = 0; i < t.size(); ++i) t.data()[i] = n(g);
  return t;
}
template <class T>
T nan_like(T t) {
  t.setConstant(std::numeric_limits<float>::quiet_NaN());
  return t;
}
template <class T>
bool same_bits(const T& a, const T& b) {
  return a.size() == b.size() &&
         std::memcmp(a.data(), b.data(), sizeof(float) * static_cast<std::size_t>(a.size())) == 0;
}

/// One batch of chains with everything the kernel and the reference need.
struct problem {
  index B = 3, S = 8, dv = 5;
  tensor2 scores;  // [B, S]
  tensor3 values;  // [B, S, dv]
  tensor2 unary0;  // [B, S] or size 0
  tensor4 pairwise;  // [B, P, 2, 2] or size 0
  bool share_batch = false;  // pairwise given with batch stride 0 (batch 0's)
  std::vector<index> lengths;
  // Query-key entry (when query.size() > 0): scores are recomputed.
  tensor2 query;  // [B, dk]
  tensor3 keys;   // [B, S, dk]
  float scale = 0;  // the scale the kernel uses (query-key entry)
};

// pair_mode: 0 none, 1 one [2, 2] per batch, 2 one per edge, 3 one shared
// across the batch by stride 0.
problem make_problem(index B, index S, index dv, std::mt19937& g, float sd_unary, float sd_pair,
                     bool with_unary0, int pair_mode, bool with_lengths) {
  problem p;
  p.B = B;
  p.S = S;
  p.dv = dv;
  p.scores = randt2(B, S, g, sd_unary);
  p.values = randt3(B, S, dv, g);
  if (with_unary0) p.unary0 = randt2(B, S, g, sd_unary * 0.5f);
  if (pair_mode) {
    const index P = pair_mode == 2 ? S - 1 : 1;
    p.pairwise.resize(B, P, 2, 2);
    std::normal_distribution<float> n(0.0f, sd_pair);
    for (index i = 0; i < p.pairwise.size(); ++i) p.pairwise.data()[i] = n(g);
    p.share_batch = pair_mode == 3;
  }
  if (with_lengths)
    for (index b = 0; b < B; ++b) p.lengths.push_back(b == 1 ? 0 : std::max<index>(1, S - 2 * b));
  return p;
}

attn::segmentation_options options(const problem& p, int threads = 0) {
  attn::segmentation_options o;
  o.key_lengths = p.lengths;
  if (p.unary0.size()) o.unary0 = attn::view(p.unary0);
  if (p.pairwise.dimension(0) != 0) {  // also [B, 0, 2, 2] (S = 1, per edge)
    o.pairwise = attn::view(p.pairwise);
    if (p.share_batch) o.pairwise.strides[0] = 0;
  }
  if (p.query.size()) o.scale = p.scale;
  o.num_threads = threads;
  return o;
}

struct outputs {
  tensor2 marginals, context;
  tensor1 log_z;
};

outputs run(const problem& p, int threads = 0) {
  outputs o;
  o.marginals = nan_like(tensor2(p.B, p.S));
  o.context = nan_like(tensor2(p.B, p.dv));
  o.log_z = nan_like(tensor1(p.B));
  const attn::segmentation_options opt = options(p, threads);
  if (p.query.size())
    attn::segmentation_attention(attn::view(p.query), attn::view(p.keys), attn::view(p.values),
                                 attn::view(o.marginals), attn::view(o.context),
                                 attn::view(o.log_z), opt);
  else
    attn::segmentation_attention(attn::view(p.scores), attn::view(p.values),
                                 attn::view(o.marginals), attn::view(o.context),
                                 attn::view(o.log_z), opt);
  return o;
}

// The chain of batch b as the reference sees it (the kernel's inputs in
// double), its M, and for the query-key entry Δ.
struct ref_chain {
  attn_ref::chain_problem c;
  double M = 1, delta = 0;
};

ref_chain chain_of(const problem& p, index b) {
  ref_chain r;
  const index n = p.lengths.empty() ? p.S : p.lengths[static_cast<std::size_t>(b)];
  double big = 0;
  auto note = [&](double x) {
    if (std::isfinite(x)) big = std::max(big, std::abs(x));
  };
  for (index j = 0; j < n; ++j) {
    double s;
    if (p.query.size()) {
      const index dk = p.query.dimension(1);
      double dot = 0, abs_sum = 0;
      for (index k = 0; k < dk; ++k) {
        dot += double(p.query(b, k)) * double(p.keys(b, j, k));
        abs_sum += std::abs(double(p.query(b, k)) * double(p.keys(b, j, k)));
      }
      s = double(p.scale) * dot;
      r.delta += 2 * std::sqrt(double(dk)) * eps32 * std::abs(double(p.scale)) * abs_sum +
                 eps32 * std::abs(s);
    } else {
      s = p.scores(b, j);
    }
    r.c.t1.push_back(s);
    r.c.t0.push_back(p.unary0.size() ? double(p.unary0(b, j)) : 0.0);
    note(r.c.t1.back());
    note(r.c.t0.back());
  }
  if (p.pairwise.size())
    for (index j = 0; j + 1 < n; ++j)
      for (int z = 0; z < 2; ++z)
        for (int z2 = 0; z2 < 2; ++z2) {
          const index bb = p.share_batch ? 0 : b, jj = p.pairwise.dimension(1) == 1 ? 0 : j;
          r.c.psi.push_back(p.pairwise(bb, jj, z, z2));
          note(r.c.psi.back());
        }
  r.M = 1 + big;
  return r;
}

// Compares one batch element's outputs with a reference result; ref_term
// is the reference's own error (absolute, on the marginals / log Z).
void check_batch(const std::string& label, const problem& p, const outputs& o, index b,
                 const ref_chain& rc, const attn_ref::chain_result& r, double ref_term_p,
                 double ref_term_z) {
  SCOPED_TRACE(label + " b=" + std::to_string(b));
  const index n = static_cast<index>(rc.c.t1.size());
  const double internal = 16.0 * double(n) * eps64 * rc.M;
  const double extra_p = std::expm1(2 * rc.delta);
  // log Z.
  if (r.log_z == -INFINITY) {
    ASSERT_EQ(o.log_z(b), -kInf);
  } else {
    const double tol = eps32 * std::abs(r.log_z) + 16.0 * double(n) * double(n) * eps64 * rc.M +
                       ref_term_z + rc.delta + 1e-30;
    g_worst_z = std::max(g_worst_z, std::abs(o.log_z(b) - r.log_z) / tol);
    ASSERT_LE(std::abs(o.log_z(b) - r.log_z), tol) << "log Z";
  }
  // Marginals (0 beyond the length).
  std::vector<double> tolp(static_cast<std::size_t>(n));
  for (index j = 0; j < p.S; ++j) {
    const float got = o.marginals(b, j);
    if (j >= n) {
      ASSERT_EQ(got, 0.0f) << "beyond the length j=" << j;
      continue;
    }
    const double ref = r.marginal[static_cast<std::size_t>(j)];
    const double tol = eps32 * ref + internal + ref_term_p + extra_p + 1e-300;
    tolp[static_cast<std::size_t>(j)] = tol;
    g_worst_p = std::max(g_worst_p, std::abs(got - ref) / tol);
    ASSERT_LE(std::abs(got - ref), tol) << "marginal j=" << j;
    ASSERT_GE(got, 0.0f);
    ASSERT_LE(got, 1.0f);
  }
  // Context.
  for (index k = 0; k < p.dv; ++k) {
    double ref = 0, tol = 1e-30, acc = 0;
    for (index j = 0; j < n; ++j) {
      const double v = p.values(b, j, k), pj = r.marginal[static_cast<std::size_t>(j)];
      ref += pj * v;
      tol += tolp[static_cast<std::size_t>(j)] * std::abs(v);
      acc += pj * std::abs(v);
    }
    tol += 2 * std::sqrt(double(n)) * eps32 * acc;
    const float got = o.context(b, k);
    if (n == 0 || r.log_z == -INFINITY) {
      ASSERT_EQ(got, 0.0f) << "empty chain context";
      continue;
    }
    g_worst_c = std::max(g_worst_c, std::abs(got - ref) / tol);
    ASSERT_LE(std::abs(got - ref), tol) << "context k=" << k;
  }
}

// Every batch element against brute force (n <= 12).
void check_brute(const std::string& label, const problem& p, const outputs& o) {
  for (index b = 0; b < p.B; ++b) {
    const ref_chain rc = chain_of(p, b);
    const index n = static_cast<index>(rc.c.t1.size());
    ASSERT_LE(n, 12);
    const attn_ref::chain_result r = attn_ref::brute_force(rc.c);
    const double ref_term = (16.0 * double(n) + std::ldexp(1.0, static_cast<int>(n))) * eps64 * rc.M;
    check_batch(label, p, o, b, rc, r, ref_term, ref_term * double(n));
  }
}

// Every batch element against the long-double forward-backward.
void check_fb(const std::string& label, const problem& p, const outputs& o) {
  for (index b = 0; b < p.B; ++b) {
    const ref_chain rc = chain_of(p, b);
    const double n = double(rc.c.t1.size());
    const attn_ref::chain_result r = attn_ref::forward_backward(rc.c);
    const double ref_term = 16.0 * n * eps80 * n * rc.M;
    check_batch(label, p, o, b, rc, r, ref_term, ref_term);
  }
}

// ---------------------------------------------------------------------------

TEST(StructuredReference, ForwardBackwardReferenceMatchesEnumeration) {
  // The long-double reference is itself checked against exact enumeration
  // (both fp64-or-better: agreement to 1e-12).
  std::mt19937 g(50);
  for (index n = 1; n <= 12; ++n)
    for (int mode : {0, 2}) {
      problem p = make_problem(1, n, 1, g, 2.0f, 1.5f, true, mode, false);
      const ref_chain rc = chain_of(p, 0);
      const attn_ref::chain_result a = attn_ref::brute_force(rc.c), b = attn_ref::forward_backward(rc.c);
      EXPECT_NEAR(a.log_z, b.log_z, 1e-12 * (1 + std::abs(a.log_z)));
      for (std::size_t j = 0; j < a.marginal.size(); ++j)
        EXPECT_NEAR(a.marginal[j], b.marginal[j], 1e-12) << "n=" << n << " j=" << j;
    }
}

TEST(StructuredBruteForce, EveryLengthPotentialKindAndLengths) {
  unsigned seed = 100;
  for (index S = 1; S <= 12; ++S)
    for (int mode : {0, 1, 2, 3})
      for (bool u0 : {false, true}) {
        std::mt19937 g(seed++);
        const bool lengths = (S + mode) % 2 == 0;
        const problem p = make_problem(3, S, 1 + S % 5, g, 2.0f, 1.5f, u0, mode, lengths);
        check_brute("S=" + std::to_string(S) + " pairwise=" + std::to_string(mode) +
                        " unary0=" + std::to_string(u0) + " lengths=" + std::to_string(lengths),
                    p, run(p));
      }
}

TEST(StructuredBruteForce, QueryKeyEntry) {
  unsigned seed = 200;
  for (index dk : {1, 3, 4, 16, 33})
    for (bool custom_scale : {false, true}) {
      std::mt19937 g(seed++);
      problem p = make_problem(3, 10, 6, g, 1.0f, 1.0f, false, 1, true);
      p.query = randt2(p.B, dk, g);
      p.keys = randt3(p.B, p.S, dk, g);
      p.scale = custom_scale ? 0.7f : 1.0f / std::sqrt(static_cast<float>(dk));
      outputs o = run(p);
      check_brute("dk=" + std::to_string(dk) + " scale=" + std::to_string(custom_scale), p, o);
      if (!custom_scale) {  // scale left unset gives the same bits
        attn::segmentation_options opt = options(p);
        opt.scale.reset();
        const attn::segmentation_result r =
            attn::segmentation_attention(p.query, p.keys, p.values, opt);
        EXPECT_TRUE(same_bits(r.marginals, o.marginals));
        EXPECT_TRUE(same_bits(r.context, o.context));
        EXPECT_TRUE(same_bits(r.log_partition, o.log_z));
      }
    }
}

TEST(StructuredBruteForce, ExtremePotentials) {
  // Unaries and pairwise potentials of +-1e4 (and mixed scales): each
  // marginal is then nearly 0 or 1, log Z ~ 1e5; nothing overflows.
  unsigned seed = 300;
  for (float sd : {1e2f, 1e4f})
    for (int mode : {1, 2}) {
      std::mt19937 g(seed++);
      problem p = make_problem(3, 12, 3, g, sd, sd, true, mode, true);
      std::bernoulli_distribution coin(0.3);
      for (index i = 0; i < p.scores.size(); ++i)
        if (coin(g)) p.scores.data()[i] = coin(g) ? 1e4f : -1e4f;
      const outputs o = run(p);
      for (index i = 0; i < o.marginals.size(); ++i)
        ASSERT_TRUE(std::isfinite(o.marginals.data()[i]));
      for (index i = 0; i < o.log_z.size(); ++i) ASSERT_TRUE(std::isfinite(o.log_z.data()[i]));
      check_brute("extreme sd=" + std::to_string(sd), p, o);
    }
  // Near-ties at large magnitude: θ(1) = 1e4 + small, θ(0) = 1e4: marginals
  // are the sigmoid of the small part, computed without cancellation loss
  // beyond the fp32 inputs' own (the reference uses the same inputs).
  std::mt19937 g(350);
  problem p = make_problem(2, 9, 2, g, 1.0f, 1.0f, true, 2, false);
  for (index i = 0; i < p.scores.size(); ++i) {
    p.scores.data()[i] = 1e4f + static_cast<float>(i % 5) * 0.5f;
    p.unary0.data()[i] = 1e4f;
  }
  check_brute("near ties", p, run(p));
}

TEST(StructuredBruteForce, ForbiddenStatesAndTransitions) {
  std::mt19937 g(400);
  // psi(1, 0) = -inf: once selected, stay selected (a suffix is selected).
  problem p = make_problem(2, 10, 3, g, 1.0f, 1.0f, false, 1, false);
  for (index b = 0; b < p.B; ++b) p.pairwise(b, 0, 1, 0) = -kInf;
  outputs o = run(p);
  check_brute("suffix", p, o);
  for (index b = 0; b < p.B; ++b)
    for (index j = 1; j < p.S; ++j) EXPECT_GE(o.marginals(b, j), o.marginals(b, j - 1) - 1e-6f);
  // Both states forbidden at one position of batch 1: no assignment at
  // all, so marginals 0, context 0, log Z -inf; batch 0 unaffected.
  problem q = make_problem(2, 7, 3, g, 1.0f, 1.0f, true, 2, false);
  q.scores(1, 4) = -kInf;
  q.unary0(1, 4) = -kInf;
  // Batch 0: z_0 forced to 1 and z_6 forced to 0.
  q.unary0(0, 0) = -kInf;
  q.scores(0, 6) = -kInf;
  o = run(q);
  EXPECT_EQ(o.log_z(1), -kInf);
  for (index j = 0; j < q.S; ++j) EXPECT_EQ(o.marginals(1, j), 0.0f);
  for (index k = 0; k < q.dv; ++k) EXPECT_EQ(o.context(1, k), 0.0f);
  EXPECT_EQ(o.marginals(0, 0), 1.0f);
  EXPECT_EQ(o.marginals(0, 6), 0.0f);
  check_brute("forbidden", q, o);
  // Transitions that make every assignment impossible (a chain of 2 whose
  // four transitions are all -inf).
  problem r = make_problem(1, 2, 2, g, 1.0f, 1.0f, false, 1, false);
  r.pairwise.setConstant(-kInf);
  o = run(r);
  EXPECT_EQ(o.log_z(0), -kInf);
  EXPECT_EQ(o.marginals(0, 0), 0.0f);
  EXPECT_EQ(o.context(0, 0), 0.0f);
}

// Issue 18 item 8: scores and sums at the edge of fp32.
//
// Query-key scores past FLT_MAX in fp32 with a representable value:
// q_b = [2^66, 2^66, w_b], k_j = [2^62, -2^62, u_j], scale 1: the terms
// ±2^128 are ±inf in fp32 (their sum NaN in any order), which made the chain
// infeasible (marginals 0, log Z -inf). The kernel takes such a score in
// double, in feature order: 2^128 - 2^128 cancels exactly, then + w_b u_j,
// one rounding of double. So against brute force Δ = Σ_j 4·eps64·(1 + |s_j|).
// Just inside, q_b = [2^63, 2^63, w_b] and k_j = [2^63, -2^63, u_j]: the fp32
// terms ±2^126 are finite and the fp32 path is kept; its sum may drop w_b u_j
// next to 2^126 (the ordinary rounding bound, eps32·2^127, tells nothing), so
// that side is checked for finiteness and a feasible chain, not values.
TEST(StructuredOverflow, QueryKeyScoresPastFp32) {
  for (bool outside : {false, true}) {
    SCOPED_TRACE(outside ? "outside" : "inside");
    std::mt19937 g(4100);
    problem p = make_problem(3, 9, 4, g, 1.0f, 1.0f, true, 2, true);
    p.query = randt2(p.B, 3, g);
    p.keys = randt3(p.B, p.S, 3, g);
    p.scale = 1.0f;
    const float qa = outside ? 0x1p66f : 0x1p63f, ka = outside ? 0x1p62f : 0x1p63f;
    for (index b = 0; b < p.B; ++b) {
      p.query(b, 0) = p.query(b, 1) = qa;
      for (index j = 0; j < p.S; ++j) {
        p.keys(b, j, 0) = ka;
        p.keys(b, j, 1) = -ka;
      }
    }
    const outputs o = run(p);
    for (index b = 0; b < p.B; ++b) {
      ASSERT_TRUE(std::isfinite(o.log_z(b))) << b;
      for (index k = 0; k < p.dv; ++k) ASSERT_TRUE(std::isfinite(o.context(b, k)));
    }
    if (!outside) continue;
    for (index b = 0; b < p.B; ++b) {
      ref_chain rc = chain_of(p, b);
      rc.delta = 0;
      for (double s : rc.c.t1) rc.delta += 4 * eps64 * (1 + std::abs(s));
      const index n = static_cast<index>(rc.c.t1.size());
      const double ref_term = (16.0 * double(n) + std::ldexp(1.0, static_cast<int>(n))) * eps64 * rc.M;
      check_batch("past fp32", p, o, b, rc, attn_ref::brute_force(rc.c), ref_term,
                  ref_term * double(n));
    }
  }
}

// log Z at the edge of float range, scores entry. (+) Two keys of score s
// among ordinary ones, no pairwise potentials (a pairwise term next to s
// would be lost in double, s + O(1), by the kernel as by any reference:
// the file's bound 16·n·eps64·M, with M ~ s, allows that): p = 1 at both,
// and the rest is the chain with z_1 = z_4 = 1 forced: its
// marginals and log Z' come from brute force on the same chain with those
// keys' scores 0 and θ(0) = -inf (ordinary magnitudes; brute force on the
// raw chain would lose every O(1) part next to 2s in double), and log Z =
// 2s + log Z'. (-) A chain of two whose four potentials are all -s: every
// assignment scores -2s, so marginals 1/2 and log Z = -2s + log 4. Inside, s
// = FLT_MAX / 4: |log Z| ~ FLT_MAX / 2, within 2·eps32·|log Z| (the output's
// rounding, 2x; log Z' and log 4 are below one ulp of it). Outside, s =
// 0.75·FLT_MAX: |log Z| ~ 1.5·FLT_MAX is past float range and saturates at
// ±FLT_MAX (it was ±inf, and -inf reads as "no allowed assignment"); the
// marginals are the same on both sides.
TEST(StructuredOverflow, LogPartitionSaturatesAtFltMax) {
  const float fmax = std::numeric_limits<float>::max();
  for (bool outside : {false, true})
    for (int sign : {1, -1}) {
      SCOPED_TRACE(std::string(outside ? "outside" : "inside") + (sign > 0 ? " +" : " -"));
      std::mt19937 g(4200);
      const float s = outside ? 0.75f * fmax : fmax / 4;
      problem p = sign > 0 ? make_problem(1, 6, 3, g, 1.0f, 1.0f, true, 0, false)
                           : make_problem(1, 2, 3, g, 1.0f, 1.0f, true, 0, false);
      std::vector<double> want_p(static_cast<std::size_t>(p.S), 0.5);
      double want_z = -2.0 * double(s) + std::log(4.0);
      if (sign > 0) {
        problem forced = p;
        for (index j : {1, 4}) {
          p.scores(0, j) = s;
          forced.scores(0, j) = 0.0f;
          forced.unary0(0, j) = -kInf;
        }
        const attn_ref::chain_result r = attn_ref::brute_force(chain_of(forced, 0).c);
        want_p = r.marginal;
        want_z = 2.0 * double(s) + r.log_z;
      } else {
        p.scores.setConstant(-s);
        p.unary0.setConstant(-s);
      }
      const outputs o = run(p);
      if (outside) {
        ASSERT_GT(std::abs(want_z), double(fmax));
        EXPECT_EQ(o.log_z(0), float(sign) * fmax);
      } else {
        EXPECT_LE(std::abs(o.log_z(0) - want_z), 2 * eps32 * std::abs(want_z));
      }
      // (exact 0 / 1 / 1/2 or ordinary potentials: the bound of the file's
      // tolerances is ~1e-7 here; 1e-6 covers it)
      for (index j = 0; j < p.S; ++j)
        ASSERT_NEAR(o.marginals(0, j), want_p[static_cast<std::size_t>(j)], 1e-6) << j;
      for (index k = 0; k < p.dv; ++k) ASSERT_TRUE(std::isfinite(o.context(0, k)));
    }
  // The query-key entry when only the product with the scale overflows:
  // q·k = ±FLT_MAX / 2.5, finite, times scale 4 (±inf in fp32, the chain
  // was infeasible): θ(1) = ±1.6·FLT_MAX in double, p = [1, 0], log Z
  // saturated. Just inside, scale 2 (±0.8·FLT_MAX): log Z = 0.8·FLT_MAX.
  for (float scale : {2.0f, 4.0f}) {
    SCOPED_TRACE(scale);
    tensor2 q(1, 1);
    tensor3 k(1, 2, 1), v(1, 2, 1);
    q(0, 0) = fmax / 2.5f;
    k(0, 0, 0) = 1.0f;
    k(0, 1, 0) = -1.0f;
    v.setConstant(1.0f);
    attn::segmentation_options opt;
    opt.scale = scale;
    const attn::segmentation_result r = attn::segmentation_attention(q, k, v, opt);
    EXPECT_EQ(r.marginals(0, 0), 1.0f);
    EXPECT_EQ(r.marginals(0, 1), 0.0f);
    const double want = std::min(double(scale) * double(q(0, 0)), double(fmax));
    EXPECT_LE(std::abs(r.log_partition(0) - want), eps32 * want);
    EXPECT_EQ(r.context(0, 0), 1.0f);
  }
}

// Context at the edge of float range: the marginals need not sum to 1, so
// finite values can sum past FLT_MAX. Three keys selected (score 100, p = 1
// to fp32 precision) with values [h, h, -h] in one feature: fp32 sums h + h
// first, which overflows for h just over FLT_MAX / 2 (inf, then inf - h =
// inf) although the sum is h; the kernel sums such a feature again in
// double: h within 2 ulp (the marginals' rounding). Just inside (h =
// FLT_MAX / 2) the fp32 path is exact. A feature of [h, h, h], 1.5·FLT_MAX
// outside, saturates at FLT_MAX (it was +inf).
TEST(StructuredOverflow, ContextSaturatesAtFltMax) {
  const float half = std::numeric_limits<float>::max() / 2;
  for (bool outside : {false, true}) {
    SCOPED_TRACE(outside ? "outside" : "inside");
    const float h = outside ? std::nextafter(half, std::numeric_limits<float>::infinity()) : half;
    tensor2 scores(1, 3);
    scores.setConstant(100.0f);
    tensor3 values(1, 3, 2);
    values(0, 0, 0) = values(0, 1, 0) = h;
    values(0, 2, 0) = -h;
    for (index j = 0; j < 3; ++j) values(0, j, 1) = outside ? h : h / 2;
    const attn::segmentation_result r = attn::segmentation_attention(scores, values);
    EXPECT_NEAR(r.context(0, 0), h, 4 * eps32 * h);
    if (outside)
      EXPECT_EQ(r.context(0, 1), std::numeric_limits<float>::max());
    else
      EXPECT_NEAR(r.context(0, 1), 1.5 * h, 4 * eps32 * h);
  }
}

TEST(StructuredGradient, LogPartitionGradientIsTheMarginals) {
  // d log Z / d θ_j(1) = p(z_j = 1), d log Z / d θ_j(0) = p(z_j = 0) and
  // d log Z / d ψ_j(z, z') = p(z_j = z, z_{j+1} = z'), by central differences
  // of the kernel's log Z.
  //
  // Tolerance: the step actually taken is Δθ = fl(θ + h) - fl(θ - h)
  // (exact in double, from the fp32 inputs); the difference quotient then
  // errs by the two fp32 log Z roundings, 2·eps32·max|log Z| / Δθ, plus
  // the kernel's internal error (twice, see the file comment) / Δθ, plus
  // the truncation (Δθ/2)²/6·|f'''|, with |f'''| <= 0.1 (a third cumulant
  // of a {0, 1} variable: p(1-p)(1-2p) <= 0.0963), plus the marginal's own
  // tolerance. h = 1/64.
  std::mt19937 g(500);
  for (int mode : {1, 2}) {
    problem p = make_problem(2, 9, 1, g, 1.5f, 1.0f, true, mode, true);
    const outputs base = run(p);
    const float h = 1.0f / 64;
    auto fd = [&](float& x, index b) {
      const float x0 = x;
      x = x0 + h;
      const double up = run(p).log_z(b);
      const float xu = x;
      x = x0 - h;
      const double down = run(p).log_z(b);
      const float xd = x;
      x = x0;
      const double step = double(xu) - double(xd);
      const double lz = std::max(std::abs(up), std::abs(down));
      const double n = double(p.S);
      const double tol = (2 * eps32 * lz + 2 * 16 * n * n * eps64 * 10) / step +
                         (step / 2) * (step / 2) / 6 * 0.1 + 16 * n * eps64 * 10 + 1e-7;
      return std::array<double, 2>{(up - down) / step, tol};
    };
    for (index b = 0; b < p.B; ++b) {
      const ref_chain rc = chain_of(p, b);
      const attn_ref::chain_result r = attn_ref::brute_force(rc.c);
      const index n = static_cast<index>(rc.c.t1.size());
      for (index j = 0; j < n; ++j) {
        const auto d1 = fd(p.scores(b, j), b);
        g_worst_grad = std::max(g_worst_grad, std::abs(d1[0] - base.marginals(b, j)) / d1[1]);
        EXPECT_NEAR(d1[0], base.marginals(b, j), d1[1]) << "θ(1) b=" << b << " j=" << j;
        const auto d0 = fd(p.unary0(b, j), b);
        g_worst_grad =
            std::max(g_worst_grad, std::abs(d0[0] - (1.0 - base.marginals(b, j))) / d0[1]);
        EXPECT_NEAR(d0[0], 1.0 - base.marginals(b, j), d0[1]) << "θ(0) b=" << b << " j=" << j;
      }
      if (mode == 2)  // per-edge potentials: each one's gradient is its edge marginal
        for (index j = 0; j + 1 < n; ++j)
          for (int z = 0; z < 2; ++z)
            for (int z2 = 0; z2 < 2; ++z2) {
              const auto de = fd(p.pairwise(b, j, z, z2), b);
              const double ref = r.edge[static_cast<std::size_t>(j * 4 + z * 2 + z2)];
              g_worst_grad = std::max(g_worst_grad, std::abs(de[0] - ref) / de[1]);
              EXPECT_NEAR(de[0], ref, de[1]) << "ψ b=" << b << " j=" << j;
            }
    }
  }
  // The same identity on the exact fp64 enumeration (h = 1e-5: truncation
  // 1e-11, rounding 1e-16·|log Z| / 1e-5 ~ 1e-10).
  problem p = make_problem(1, 8, 1, g, 2.0f, 1.0f, true, 2, false);
  ref_chain rc = chain_of(p, 0);
  const attn_ref::chain_result r = attn_ref::brute_force(rc.c);
  for (std::size_t j = 0; j < rc.c.t1.size(); ++j) {
    const double t = rc.c.t1[j], e = 1e-5;
    rc.c.t1[j] = t + e;
    const double up = attn_ref::brute_force(rc.c).log_z;
    rc.c.t1[j] = t - e;
    const double down = attn_ref::brute_force(rc.c).log_z;
    rc.c.t1[j] = t;
    EXPECT_NEAR((up - down) / (2 * e), r.marginal[j], 1e-8) << "fp64 j=" << j;
  }
}

TEST(StructuredLong, TenThousandKeysStable) {
  // S = 10,000 against the long-double forward-backward: moderate
  // potentials (marginals spread over (0, 1), log Z ~ 1e4) and extreme ones
  // (+-1e4: log Z ~ 1e8). No NaN or Inf anywhere.
  const index S = 10000;
  unsigned seed = 600;
  for (float sd : {2.0f, 1e4f})
    for (int mode : {1, 2}) {
      std::mt19937 g(seed++);
      problem p = make_problem(2, S, 4, g, sd, sd, true, mode, false);
      p.lengths = {S, S - 1234};
      const outputs o = run(p);
      for (index i = 0; i < o.marginals.size(); ++i)
        ASSERT_TRUE(std::isfinite(o.marginals.data()[i]));
      for (index i = 0; i < o.context.size(); ++i) ASSERT_TRUE(std::isfinite(o.context.data()[i]));
      for (index i = 0; i < o.log_z.size(); ++i) ASSERT_TRUE(std::isfinite(o.log_z.data()[i]));
      check_fb("S=10000 sd=" + std::to_string(sd) + " mode=" + std::to_string(mode), p, o);
    }
  // Sticky transitions (long runs): ψ(z, z) = +8, ψ(z, 1 - z) = -8 and weak
  // unaries: long-range correlations, the hardest case for the recursion.
  std::mt19937 g(650);
  problem p = make_problem(1, S, 2, g, 0.5f, 1.0f, false, 1, false);
  p.pairwise(0, 0, 0, 0) = p.pairwise(0, 0, 1, 1) = 8.0f;
  p.pairwise(0, 0, 0, 1) = p.pairwise(0, 0, 1, 0) = -8.0f;
  check_fb("S=10000 sticky", p, run(p));
}

TEST(StructuredThreads, BitIdenticalForAnyThreadCount) {
  // Large enough to run in parallel (attn::core::min_parallel_flops).
  std::mt19937 g(700);
  problem p = make_problem(6, 3000, 64, g, 2.0f, 1.0f, true, 2, true);
  const outputs one = run(p, 1);
  for (int t : {2, 3, 0}) {
    const outputs o = run(p, t);
    EXPECT_TRUE(same_bits(o.marginals, one.marginals)) << t;
    EXPECT_TRUE(same_bits(o.context, one.context)) << t;
    EXPECT_TRUE(same_bits(o.log_z, one.log_z)) << t;
  }
  // The query-key entry too.
  p.query = randt2(p.B, 32, g);
  p.keys = randt3(p.B, p.S, 32, g);
  p.scale = 0.2f;
  const outputs qk1 = run(p, 1);
  for (int t : {2, 0}) {
    const outputs o = run(p, t);
    EXPECT_TRUE(same_bits(o.marginals, qk1.marginals)) << t;
    EXPECT_TRUE(same_bits(o.context, qk1.context)) << t;
  }
}

TEST(StructuredLayouts, StridedViewsBroadcastAndOptionalOutputs) {
  std::mt19937 g(800);
  problem p = make_problem(3, 11, 5, g, 1.5f, 1.0f, true, 2, true);
  const outputs dense = run(p);
  check_brute("dense", p, dense);
  // Scores stored transposed [S, B] and read through strides; values a
  // slice of a wider tensor; context written into a slice.
  tensor2 st(p.S, p.B);
  for (index b = 0; b < p.B; ++b)
    for (index j = 0; j < p.S; ++j) st(j, b) = p.scores(b, j);
  attn::strided<const float, 2> sv{st.data(), {p.B, p.S}, {1, p.B}};
  tensor3 vw = randt3(p.B, p.S, p.dv + 3, g);
  for (index b = 0; b < p.B; ++b)
    for (index j = 0; j < p.S; ++j)
      for (index k = 0; k < p.dv; ++k) vw(b, j, k + 2) = p.values(b, j, k);
  attn::strided<const float, 3> vv = attn::view(vw);
  vv.data += 2;
  vv.dims[2] = p.dv;
  tensor2 cw(p.B, p.dv + 1), m(p.B, p.S);
  tensor1 z(p.B);
  attn::strided<float, 2> cv = attn::view(cw);
  cv.data += 1;
  cv.dims[1] = p.dv;
  attn::segmentation_attention(sv, vv, attn::view(m), cv, attn::view(z), options(p));
  EXPECT_TRUE(same_bits(m, dense.marginals));
  EXPECT_TRUE(same_bits(z, dense.log_z));
  for (index b = 0; b < p.B; ++b)
    for (index k = 0; k < p.dv; ++k) ASSERT_EQ(cw(b, k + 1), dense.context(b, k));
  // Optional outputs: marginals alone (no values), log Z alone.
  tensor2 m2 = nan_like(tensor2(p.B, p.S));
  attn::segmentation_attention(attn::view(p.scores), {}, attn::view(m2), {}, {}, options(p));
  EXPECT_TRUE(same_bits(m2, dense.marginals));
  tensor1 z2 = nan_like(tensor1(p.B));
  attn::segmentation_attention(attn::view(p.scores), {}, {}, {}, attn::view(z2), options(p));
  EXPECT_TRUE(same_bits(z2, dense.log_z));
  // Tensor convenience.
  const attn::segmentation_result r = attn::segmentation_attention(p.scores, p.values, options(p));
  EXPECT_TRUE(same_bits(r.marginals, dense.marginals));
  EXPECT_TRUE(same_bits(r.context, dense.context));
  EXPECT_TRUE(same_bits(r.log_partition, dense.log_z));
  // One [2, 2] shared by every batch element (batch stride 0) equals the
  // same matrix copied per batch.
  problem s = make_problem(3, 9, 2, g, 1.0f, 1.0f, false, 3, false);
  const outputs shared = run(s);
  check_brute("shared pairwise", s, shared);
  problem c = s;
  c.share_batch = false;
  for (index b = 1; b < c.B; ++b)
    for (int z = 0; z < 2; ++z)
      for (int z2 = 0; z2 < 2; ++z2) c.pairwise(b, 0, z, z2) = c.pairwise(0, 0, z, z2);
  const outputs copied = run(c);
  EXPECT_TRUE(same_bits(shared.marginals, copied.marginals));
}

TEST(StructuredSegmentation, SelectsContiguousSpansWhereSoftmaxSpreads) {
  // examples/structured_attention.cpp without its noise: two phrases score
  // high, each with a low-scoring "the" inside. Sticky transitions (+1 to
  // stay, -1 to switch) make the CRF select both phrases whole, the "the"
  // included, and nothing else; the softmax of the same scores gives that
  // "the" almost nothing and no word more than a third.
  const std::vector<float> s = {-2.5f, -3.0f, -2.5f, 2.0f, -0.5f, 1.5f, 3.0f, -2.5f,
                                -3.0f, -2.5f, -2.5f, 2.0f, -0.5f, 1.0f, 1.0f, 3.0f};
  const index S = static_cast<index>(s.size());
  tensor2 scores(1, S);
  for (index j = 0; j < S; ++j) scores(0, j) = s[static_cast<std::size_t>(j)];
  tensor4 pw(1, 1, 2, 2);
  pw(0, 0, 0, 0) = pw(0, 0, 1, 1) = 1.0f;
  pw(0, 0, 0, 1) = pw(0, 0, 1, 0) = -1.0f;
  attn::segmentation_options opt;
  opt.pairwise = attn::view(pw);
  tensor2 m(1, S);
  attn::segmentation_attention(attn::view(scores), {}, attn::view(m), {}, {}, opt);
  std::vector<double> soft(s.begin(), s.end());
  double total = 0;
  for (double& x : soft) total += (x = std::exp(x));
  for (double& x : soft) x /= total;
  for (index j = 0; j < S; ++j) {
    const bool in_span = (j >= 3 && j <= 6) || (j >= 11 && j <= 15);
    if (in_span)
      EXPECT_GT(m(0, j), 0.6f) << j;
    else
      EXPECT_LT(m(0, j), 0.2f) << j;
    EXPECT_LT(soft[static_cast<std::size_t>(j)], 0.34) << j;
  }
  EXPECT_LT(soft[4], 0.02);
  EXPECT_LT(soft[12], 0.02);
}

TEST(StructuredZeroSize, EmptyBatchAndEmptyChains) {
  std::mt19937 g(900);
  // B = 0.
  attn::segmentation_attention(tensor2(0, 5), tensor3(0, 5, 3));
  // S = 0: one (empty) assignment: log Z = 0, context 0.
  const attn::segmentation_result r = attn::segmentation_attention(tensor2(2, 0), tensor3(2, 0, 3));
  for (index i = 0; i < r.context.size(); ++i) EXPECT_EQ(r.context.data()[i], 0.0f);
  for (index i = 0; i < r.log_partition.size(); ++i) EXPECT_EQ(r.log_partition.data()[i], 0.0f);
  // Per-edge pairwise of a one-key chain: [B, 0, 2, 2].
  problem p = make_problem(2, 1, 2, g, 1.0f, 1.0f, false, 2, false);
  check_brute("S=1 per-edge", p, run(p));
}

// ---------------------------------------------------------------------------
// Errors

using attn_test::expect_error;

TEST(StructuredErrors, ScoresEntry) {
  std::mt19937 g(1000);
  problem p = make_problem(2, 6, 3, g, 1.0f, 1.0f, true, 2, false);
  tensor2 m(p.B, p.S), c(p.B, p.dv);
  tensor1 z(p.B);
  struct call {
    attn::strided<const float, 2> s;
    attn::strided<const float, 3> v;
    attn::strided<float, 2> m, c;
    attn::strided<float, 1> z;
    attn::segmentation_options opt;
    void operator()() const { attn::segmentation_attention(s, v, m, c, z, opt); }
  };
  call base;
  base.s = attn::view(p.scores);
  base.v = attn::view(p.values);
  base.m = attn::view(m);
  base.c = attn::view(c);
  base.z = attn::view(z);
  base.opt = options(p);
  base();
  auto with = [&](std::function<void(call&)> edit) {
    call x = base;
    edit(x);
    return x;
  };
  const char* fn = "segmentation_attention";
  expect_error("scores null", with([](call& x) { x.s.data = nullptr; }), {fn, ": scores:", "null"});
  expect_error("scores negative", with([](call& x) { x.s.dims[1] = -1; }), {": scores:"});
  expect_error("scale given", with([](call& x) { x.opt.scale = 1.0f; }), {": scale:", "unset"});
  expect_error("values dims", with([](call& x) { x.v.dims[1] = 5; }), {": values:", "S = 6"});
  expect_error("values batch", with([](call& x) { x.v.dims[0] = 1; }), {": values:"});
  expect_error("values null", with([](call& x) { x.v.data = nullptr; }), {": values:", "null"});
  expect_error("values stride", with([](call& x) { x.v.strides[2] = 2; }), {"values.strides[2]"});
  expect_error("values absent", with([](call& x) { x.v = {}; }), {": values:", "context"});
  expect_error("context dims", with([](call& x) { x.c.dims[1] = 2; }), {": context:"});
  expect_error("context null", with([](call& x) { x.c.data = nullptr; }), {": context:", "null"});
  expect_error("context stride", with([](call& x) { x.c.strides[1] = 2; }),
               {"context.strides[1]"});
  expect_error("context overlap", with([](call& x) { x.c.strides[0] = 1; }),
               {"context.strides"});
  expect_error("marginals dims", with([](call& x) { x.m.dims[1] = 7; }), {": marginals:"});
  expect_error("marginals null", with([](call& x) { x.m.data = nullptr; }),
               {": marginals:", "null"});
  expect_error("marginals overlap", with([](call& x) { x.m.strides[0] = 0; }),
               {"marginals.strides"});
  expect_error("log_partition dims", with([](call& x) { x.z.dims[0] = 3; }),
               {": log_partition:"});
  expect_error("log_partition null", with([](call& x) { x.z.data = nullptr; }),
               {": log_partition:", "null"});
  expect_error("log_partition overlap", with([](call& x) { x.z.strides[0] = 0; }),
               {"log_partition.strides"});
  expect_error("lengths size", with([](call& x) { x.opt.key_lengths = {1}; }),
               {"key_lengths.size()"});
  expect_error("lengths value", with([](call& x) { x.opt.key_lengths = {1, 7}; }),
               {"key_lengths[1]"});
  tensor2 u0(p.B, p.S + 1);
  expect_error("unary0 dims", with([&](call& x) { x.opt.unary0 = attn::view(u0); }),
               {": unary0:"});
  tensor4 pw_bad(p.B, 3, 2, 2), pw_shape(p.B, 1, 2, 3);
  expect_error("pairwise positions", with([&](call& x) { x.opt.pairwise = attn::view(pw_bad); }),
               {": pairwise:", "1 or S - 1 = 5"});
  expect_error("pairwise [2, 3]", with([&](call& x) { x.opt.pairwise = attn::view(pw_shape); }),
               {": pairwise:"});
  expect_error("pairwise null", with([&](call& x) {
                 x.opt.pairwise = attn::view(pw_bad);
                 x.opt.pairwise.data = nullptr;
               }),
               {": pairwise:", "null"});
  expect_error("threads", with([](call& x) { x.opt.num_threads = -1; }), {"num_threads"});
}

TEST(StructuredErrors, QueryKeyEntry) {
  std::mt19937 g(1100);
  problem p = make_problem(2, 6, 3, g, 1.0f, 1.0f, false, 1, false);
  p.query = randt2(p.B, 4, g);
  p.keys = randt3(p.B, p.S, 4, g);
  tensor2 m(p.B, p.S), c(p.B, p.dv);
  tensor1 z(p.B);
  struct call {
    attn::strided<const float, 2> q;
    attn::strided<const float, 3> k, v;
    attn::strided<float, 2> m, c;
    attn::strided<float, 1> z;
    attn::segmentation_options opt;
    void operator()() const { attn::segmentation_attention(q, k, v, m, c, z, opt); }
  };
  call base;
  base.q = attn::view(p.query);
  base.k = attn::view(p.keys);
  base.v = attn::view(p.values);
  base.m = attn::view(m);
  base.c = attn::view(c);
  base.z = attn::view(z);
  base();
  auto with = [&](std::function<void(call&)> edit) {
    call x = base;
    edit(x);
    return x;
  };
  const char* fn = "segmentation_attention";
  expect_error("query null", with([](call& x) { x.q.data = nullptr; }), {fn, ": query:", "null"});
  expect_error("query dims", with([](call& x) { x.q.dims[1] = 0; }), {": query:", "d_k >= 1"});
  expect_error("query stride", with([](call& x) { x.q.strides[1] = 2; }), {"query.strides[1]"});
  expect_error("keys dims", with([](call& x) { x.k.dims[2] = 3; }), {": keys:", "d_k = 4"});
  expect_error("keys batch", with([](call& x) { x.k.dims[0] = 3; }), {": keys:", "batch = 2"});
  expect_error("keys null", with([](call& x) { x.k.data = nullptr; }), {": keys:", "null"});
  expect_error("keys stride", with([](call& x) { x.k.strides[2] = 2; }), {"keys.strides[2]"});
  expect_error("scale inf", with([](call& x) { x.opt.scale = kInf; }), {": scale:"});
  expect_error("scale nan", with([](call& x) {
                 x.opt.scale = std::numeric_limits<float>::quiet_NaN();
               }),
               {": scale:"});
  expect_error("values dims", with([](call& x) { x.v.dims[1] = 2; }), {": values:"});
  expect_error("marginals dims", with([](call& x) { x.m.dims[0] = 1; }), {": marginals:"});
  expect_error("threads", with([](call& x) { x.opt.num_threads = -3; }), {"num_threads"});
}

TEST(StructuredReport, WorstErrorRatios) {
  std::printf(
      "[ measured ] worst error / tolerance: marginals %.3g, log Z %.3g, context %.3g, "
      "gradient %.3g\n",
      g_worst_p, g_worst_z, g_worst_c, g_worst_grad);
  EXPECT_LE(g_worst_p, 1.0);
  EXPECT_LE(g_worst_z, 1.0);
  EXPECT_LE(g_worst_c, 1.0);
  EXPECT_LE(g_worst_grad, 1.0);
}

}  // namespace test_structured
