// tests/test_additive.cpp: attn::additive_attention (Bahdanau's additive
// score, Luong's dot and general) against the fp64 reference in
// tests/reference/additive_reference.hpp, plus masks, cached keys, threads,
// extreme inputs and every error path.
//
// Tolerances (fp32 kernel vs fp64 reference on the same fp32 inputs)
// -------------------------------------------------------------------
// Everything follows from a bound E on the error of the row's scores, which
// the reference computes per row from the magnitudes that enter each score
// (additive_reference.hpp, score_error_bound): fp32 dot products of n terms
// err by ~ sqrt(n)·eps·Σ|terms| for random-sign rounding (taken twice that),
// attn::core::simd::tanh adds at most tanh_max_abs_error (4.5e-7) per element, and
// the score Σ_a v_a tanh(...) sums |v_a| times the element errors. For the
// data here (projections O(1), ‖v‖₁ ~ 3..10) E is 1e-6 .. 1e-5.
// weights: |a - a_ref| <= 2·E·a_ref + 1e-6.
//   Softmax moves a_j by a_j·(δe_j - Σ_k a_k δe_k), at most 2·E·a_j; exp()
//   adds 3e-7 relative per term and on the sum, the fp32 normalisation a
//   few eps: 1e-6 absolute covers both.
// out:     |c - c_ref| <= (2·E + 1e-6 + 4·sqrt(S)·eps)·max|V| + 1e-7.
//   c = Σ_j a_j v_j: the weight errors above times |v_j| (Σ_j a_j = 1), plus
//   fp32 accumulation over S keys (random-sign rounding, 4x margin).
// The worst ratio error / tolerance over the run is printed at the end
// (measured here: see the report line); a real bug (a key too many or too
// few, a wrong v, bias or mask) moves weights by O(1/S) >= 1e-2.
// Rows the reference finds fully masked must be exactly 0 (out and weights).
// Sums: |Σ_j a_j - 1| <= 1e-5 (S <= 100 terms of fp32 rounding + exp error).
//
// Bit-for-bit (memcmp) comparisons: 1 vs 2 vs 3 threads; cached projection
// vs projecting inside forward; weights requested or not; values given vs
// defaulting to keys. These run exactly the same arithmetic.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <attn/additive.hpp>
#include <attn/attn.hpp>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "expect_error.hpp"
#include "reference/additive_reference.hpp"

namespace test_additive {

using attn::index;
using tensor2b = Eigen::Tensor<bool, 2, Eigen::RowMajor>;
using tensor3 = Eigen::Tensor<float, 3, Eigen::RowMajor>;
using matrix = attn::additive_weights::matrix;

double g_worst_w = 0.0, g_worst_out = 0.0;

struct problem {
  index B = 2, L = 3, S = 11, dq = 7, dk = 9, dv = 5, da = 13;
};

std::vector<double> to_double(const float* p, index n) { return std::vector<double>(p, p + n); }

matrix randm(index r, index c, std::mt19937& g, float sd) {
  std::normal_distribution<float> n(0.0f, sd);
  matrix m(r, c);
  for (index i = 0; i < m.size(); ++i) m.data()[i] = n(g);
  return m;
}
Eigen::VectorXf randv(index n, std::mt19937& g, float sd) {
  std::normal_distribution<float> d(0.0f, sd);
  Eigen::VectorXf v(n);
  for (index i = 0; i < n; ++i) v[i] = d(g);
  return v;
}
tensor3 randt(index a, index b, index c, std::mt19937& g, float sd = 1.0f) {
  std::normal_distribution<float> n(0.0f, sd);
  tensor3 t(a, b, c);
  for (index i = 0; i < t.size(); ++i) t.data()[i] = n(g);
  return t;
}

struct config {
  attn::score_function score = attn::score_function::additive;
  bool wq = true, wk = true, bias = false, normalize = false;
};

// Weights with projections O(1) for unit inputs and scores O(1).
attn::additive_weights make_weights(const config& c, problem& p, std::mt19937& g) {
  attn::additive_weights w;
  w.score = c.score;
  if (c.score == attn::score_function::additive) {
    if (!c.wq) p.dq = p.da;
    if (!c.wk) p.dk = p.da;
    if (c.wq) w.w_q = randm(p.da, p.dq, g, 1.0f / std::sqrt(float(p.dq)));
    if (c.wk) w.w_k = randm(p.da, p.dk, g, 1.0f / std::sqrt(float(p.dk)));
    if (c.bias) w.bias = randv(p.da, g, 0.5f);
    w.v = randv(p.da, g, 1.0f / std::sqrt(float(p.da)) * 2.0f);
    w.normalize = c.normalize;
    w.g = 1.7f;
  } else if (c.score == attn::score_function::dot) {
    p.dk = p.dq;
  } else {
    w.w_k = randm(p.dq, p.dk, g, 1.0f / std::sqrt(float(p.dk)));
  }
  return w;
}

attn_ref::additive_params to_ref(const attn::additive_weights& w, const problem& p) {
  attn_ref::additive_params r;
  r.kind = w.score == attn::score_function::additive ? attn_ref::score::additive
           : w.score == attn::score_function::dot    ? attn_ref::score::dot
                                                     : attn_ref::score::general;
  r.da = p.da;
  r.dq = p.dq;
  r.dk = p.dk;
  r.wq = to_double(w.w_q.data(), w.w_q.size());
  r.wk = to_double(w.w_k.data(), w.w_k.size());
  r.bias = to_double(w.bias.data(), w.bias.size());
  r.v = to_double(w.v.data(), w.v.size());
  r.normalize = w.normalize;
  r.g = w.g;
  return r;
}

struct masks {
  std::vector<index> lengths;
  tensor2b key_mask, query_mask;  // size 0 = none
};

attn::additive_options options(const masks& m, tensor3* weights, int threads = 0) {
  attn::additive_options o;
  o.key_lengths = m.lengths;
  if (m.key_mask.size()) o.key_mask = attn::view(m.key_mask);
  if (m.query_mask.size()) o.query_mask = attn::view(m.query_mask);
  if (weights) o.weights = attn::view(*weights);
  o.num_threads = threads;
  return o;
}

attn_ref::additive_masks to_ref(const masks& m) {
  attn_ref::additive_masks r;
  r.key_lengths = m.lengths;
  for (index i = 0; i < m.key_mask.size(); ++i) r.key_mask.push_back(m.key_mask.data()[i]);
  for (index i = 0; i < m.query_mask.size(); ++i) r.query_mask.push_back(m.query_mask.data()[i]);
  return r;
}

// Checks out / weights against the reference with the tolerances above.
void check(const std::string& label, const attn::additive_weights& w, const problem& p,
           const tensor3& q, const tensor3& k, const tensor3& v, const masks& m, const tensor3& out,
           const tensor3& weights, double score_err = -1) {
  SCOPED_TRACE(label);
  const attn_ref::additive_result r = attn_ref::additive_attention(
      to_ref(w, p), to_double(q.data(), q.size()), to_double(k.data(), k.size()),
      to_double(v.data(), v.size()), p.B, p.L, p.S, v.dimension(2), to_ref(m),
      static_cast<double>(attn::core::simd::tanh_max_abs_error));
  const index dv = v.dimension(2);
  for (index b = 0; b < p.B; ++b) {
    double vmax = 0;
    for (index j = 0; j < p.S; ++j)
      for (index d = 0; d < dv; ++d) vmax = std::max(vmax, std::abs(double(v(b, j, d))));
    for (index i = 0; i < p.L; ++i) {
      const std::size_t row = static_cast<std::size_t>(b * p.L + i);
      // (score_err >= 0: the caller's bound, for inputs whose reference
      // bound, made of eps·Σ|terms| near FLT_MAX, would say nothing)
      const double E = score_err >= 0 ? score_err : r.score_err[row];
      double sum = 0;
      for (index j = 0; j < p.S; ++j) {
        const double ref = r.weights[row * p.S + j], got = weights(b, i, j);
        sum += got;
        if (r.empty_row[row]) {
          ASSERT_EQ(got, 0.0f) << "fully masked row b=" << b << " i=" << i;
          continue;
        }
        const double tol = 2 * E * ref + 1e-6;
        g_worst_w = std::max(g_worst_w, std::abs(got - ref) / tol);
        ASSERT_LE(std::abs(got - ref), tol) << "weights b=" << b << " i=" << i << " j=" << j;
      }
      if (!r.empty_row[row]) {
        EXPECT_NEAR(sum, 1.0, 1e-5) << "row b=" << b << " i=" << i;
      }
      const double tol =
          (2 * E + 1e-6 + 4 * std::sqrt(double(p.S)) * attn_ref::eps32) * vmax + 1e-7;
      for (index d = 0; d < dv; ++d) {
        const double ref = r.out[row * dv + d], got = out(b, i, d);
        const bool zero = r.empty_row[row] || (m.query_mask.size() && !m.query_mask(b, i));
        if (zero) {
          ASSERT_EQ(got, 0.0f) << "zero row b=" << b << " i=" << i;
          continue;
        }
        g_worst_out = std::max(g_worst_out, std::abs(got - ref) / tol);
        ASSERT_LE(std::abs(got - ref), tol) << "out b=" << b << " i=" << i << " d=" << d;
      }
    }
  }
}

bool same_bits(const tensor3& a, const tensor3& b) {
  return a.size() == b.size() &&
         (a.size() == 0 ||  // memcmp of a null data() is undefined
          std::memcmp(a.data(), b.data(), sizeof(float) * static_cast<std::size_t>(a.size())) == 0);
}

tensor3 nan_tensor(index a, index b, index c) {
  tensor3 t(a, b, c);
  t.setConstant(std::numeric_limits<float>::quiet_NaN());
  return t;
}

masks make_masks(int kind, const problem& p, std::mt19937& g) {
  masks m;
  std::bernoulli_distribution coin(0.7);
  if (kind & 1) {  // lengths, one of them 0 when B > 2
    for (index b = 0; b < p.B; ++b)
      m.lengths.push_back(b == 2 ? 0 : std::max<index>(1, p.S - 3 * b));
  }
  if (kind & 2) {
    m.key_mask.resize(p.B, p.S);
    for (index i = 0; i < m.key_mask.size(); ++i) m.key_mask.data()[i] = coin(g);
    m.key_mask(0, 0) = true;
  }
  if (kind & 4) {
    m.query_mask.resize(p.B, p.L);
    for (index i = 0; i < m.query_mask.size(); ++i) m.query_mask.data()[i] = coin(g);
  }
  return m;
}

// One full comparison: cached and uncached forward, with weights, against
// the reference; cached and uncached must agree bit for bit.
void run_case(const std::string& label, const config& c, problem p, int mask_kind, unsigned seed) {
  std::mt19937 g(seed);
  const attn::additive_weights w = make_weights(c, p, g);
  const attn::additive_attention layer(w);
  const tensor3 q = randt(p.B, p.L, p.dq, g), k = randt(p.B, p.S, p.dk, g),
                v = randt(p.B, p.S, p.dv, g);
  const masks m = make_masks(mask_kind, p, g);
  tensor3 out = nan_tensor(p.B, p.L, p.dv), wts = nan_tensor(p.B, p.L, p.S);
  layer.forward(attn::view(q), attn::view(k), attn::view(v), attn::view(out), options(m, &wts));
  check(label + " uncached", w, p, q, k, v, m, out, wts);

  const attn::additive_keys cache = layer.project_keys(attn::view(k));
  tensor3 out2 = nan_tensor(p.B, p.L, p.dv), wts2 = nan_tensor(p.B, p.L, p.S);
  layer.forward(attn::view(q), cache, attn::view(v), attn::view(out2), options(m, &wts2));
  EXPECT_TRUE(same_bits(out, out2)) << label << ": cached vs uncached";
  EXPECT_TRUE(same_bits(wts, wts2)) << label << ": cached vs uncached weights";

  // Without weights: the same output bits.
  tensor3 out3 = nan_tensor(p.B, p.L, p.dv);
  layer.forward(attn::view(q), cache, attn::view(v), attn::view(out3), options(m, nullptr));
  EXPECT_TRUE(same_bits(out, out3)) << label << ": weights requested or not";
}

const char* name(attn::score_function s) {
  return s == attn::score_function::additive ? "additive"
         : s == attn::score_function::dot    ? "dot"
                                             : "general";
}

// ---------------------------------------------------------------------------

TEST(AdditiveReference, EveryScoreKindBiasNormalizeMasksAndLengths) {
  unsigned seed = 100;
  for (auto sf :
       {attn::score_function::additive, attn::score_function::dot, attn::score_function::general})
    for (bool bias : {false, true})
      for (bool normalize : {false, true}) {
        if (sf != attn::score_function::additive && (bias || normalize)) continue;
        for (index L : {1, 4})
          for (int mk = 0; mk < 8; ++mk) {
            config c;
            c.score = sf;
            c.bias = bias;
            c.normalize = normalize;
            problem p;
            p.L = L;
            p.B = 3;
            run_case(std::string(name(sf)) + " bias=" + std::to_string(bias) +
                         " normalize=" + std::to_string(normalize) + " L=" + std::to_string(L) +
                         " masks=" + std::to_string(mk),
                     c, p, mk, seed++);
          }
      }
}

TEST(AdditiveReference, KerasFormAndOneSidedProjections) {
  unsigned seed = 300;
  for (bool wq : {false, true})
    for (bool wk : {false, true}) {
      config c;
      c.wq = wq;
      c.wk = wk;
      c.bias = wq;
      problem p;
      run_case("wq=" + std::to_string(wq) + " wk=" + std::to_string(wk), c, p, 3, seed++);
    }
}

TEST(AdditiveReference, AttentionDimsAroundThePacketWidth) {
  unsigned seed = 400;
  for (index da : {1, 3, 4, 8, 15, 16, 17, 33, 64, 100}) {
    problem p;
    p.da = da;
    p.S = 37;
    run_case("da=" + std::to_string(da), config{}, p, 1, seed++);
    config c;
    c.score = attn::score_function::dot;
    problem pd;
    pd.dq = da;
    run_case("dot d=" + std::to_string(da), c, pd, 0, seed++);
  }
}

TEST(AdditiveReference, LargerShapes) {
  problem p;
  p.B = 2;
  p.L = 9;
  p.S = 100;
  p.dq = 48;
  p.dk = 80;
  p.da = 64;
  p.dv = 80;
  config c;
  c.bias = true;
  run_case("additive large", c, p, 3, 500);
  c.score = attn::score_function::general;
  run_case("general large", c, p, 3, 501);
}

// A decoder step over a long source splits its keys into chunks merged by
// LSE (detail::additive::key_chunks), and long query runs take tasks of
// detail::additive::max_task_rows rows: every mask kind, Keras form and projected,
// against the reference.
TEST(AdditiveReference, KeyChunksAndLongQueryRuns) {
  unsigned seed = 600;
  for (bool keras : {false, true})
    for (int mk = 0; mk < 8; ++mk) {
      config c;
      c.wq = c.wk = !keras;
      problem p;
      p.B = 2;
      p.L = mk % 2 ? 1 : 3;
      p.S = 1100 + 37 * mk;
      run_case("chunks keras=" + std::to_string(keras) + " masks=" + std::to_string(mk), c, p, mk,
               seed++);
      problem r;
      r.L = 131;
      r.S = 19;
      run_case("rows keras=" + std::to_string(keras) + " masks=" + std::to_string(mk), c, r, mk,
               seed++);
    }
}

// Dot scores with d = 1 over S = 1024 keys: one query row per batch entry,
// so a batch of 1 splits the keys into two chunks and a batch of 8 does not
// (detail::additive::key_chunks). Key 0 (chunk 0) and keys S-2, S-1 (chunk 1) share
// the top score x²; only key 0 has value 1. Both must give 1/3, including
// when x² is large enough that max + log(sum) would lose the sums, and when
// it overflows to +inf (every +inf key weighs the same).
TEST(AdditiveChunks, TopKeysWeighTheSameInEveryChunk) {
  const index S = 1024;
  attn::additive_weights w;
  w.score = attn::score_function::dot;
  const attn::additive_attention layer(w);
  for (const float x : {64.0f, 1024.0f, 4096.0f, 1e20f})
    for (const index B : {1, 8}) {
      tensor3 q(B, 1, 1), k(B, S, 1), v(B, S, 1), out(B, 1, 1);
      for (index b = 0; b < B; ++b) {
        q(b, 0, 0) = x;
        for (index j = 0; j < S; ++j) {
          k(b, j, 0) = -x;
          v(b, j, 0) = 0.0f;
        }
        k(b, 0, 0) = k(b, S - 1, 0) = k(b, S - 2, 0) = x;
        v(b, 0, 0) = 1.0f;
      }
      layer.forward(attn::view(q), attn::view(k), attn::view(v), attn::view(out));
      EXPECT_NEAR(out(0, 0, 0), 1.0 / 3.0, 1e-6) << "x=" << x << " B=" << B;
    }
}

// A chunk whose max is far below another's has its partial sum scaled by a
// tiny factor, as an online-softmax block would be: an inf value there
// stays inf (as without chunks), never 0 · inf = NaN.
TEST(AdditiveChunks, InfValueInALowChunkStaysInf) {
  const index S = 1024;
  attn::additive_weights w;
  w.score = attn::score_function::dot;
  const attn::additive_attention layer(w);
  for (const index B : {1, 8}) {
    tensor3 q(B, 1, 1), k(B, S, 1), v(B, S, 1), out(B, 1, 1);
    for (index b = 0; b < B; ++b) {
      q(b, 0, 0) = 1.0f;
      for (index j = 0; j < S; ++j) {
        k(b, j, 0) = j >= S / 2 ? 87.0f : -1e4f;
        v(b, j, 0) = 0.0f;
      }
      k(b, 0, 0) = 0.0f;
      v(b, 0, 0) = std::numeric_limits<float>::infinity();
    }
    layer.forward(attn::view(q), attn::view(k), attn::view(v), attn::view(out));
    EXPECT_EQ(out(0, 0, 0), std::numeric_limits<float>::infinity()) << "B=" << B;
  }
}

TEST(AdditiveDecoder, StepsAgainstOneCachedProjection) {
  // A decoder: the keys are projected once; each step is one query (L = 1)
  // and must match the reference for that step.
  std::mt19937 g(600);
  problem p;
  p.B = 2;
  p.S = 23;
  config c;
  c.bias = true;
  const attn::additive_weights w = make_weights(c, p, g);
  const attn::additive_attention layer(w);
  const tensor3 k = randt(p.B, p.S, p.dk, g);
  const attn::additive_keys cache = layer.project_keys(attn::view(k));
  EXPECT_EQ(cache.batch(), p.B);
  EXPECT_EQ(cache.length(), p.S);
  EXPECT_EQ(cache.dim(), p.da);
  masks m;
  m.lengths = {p.S, 17};
  problem step = p;
  step.L = 1;
  for (int t = 0; t < 5; ++t) {
    const tensor3 q = randt(p.B, 1, p.dq, g);
    tensor3 out = nan_tensor(p.B, 1, p.dk), wts = nan_tensor(p.B, 1, p.S);
    // values default to the keys (d_v = d_k) in the uncached form; here they
    // are given explicitly.
    layer.forward(attn::view(q), cache, attn::view(k), attn::view(out), options(m, &wts));
    step.dv = p.dk;
    check("step " + std::to_string(t), w, step, q, k, k, m, out, wts);
  }
}

TEST(AdditiveValues, DefaultToKeysAndTensorOverloads) {
  std::mt19937 g(700);
  problem p;
  const attn::additive_weights w = make_weights(config{}, p, g);
  const attn::additive_attention layer(w);
  const tensor3 q = randt(p.B, p.L, p.dq, g), k = randt(p.B, p.S, p.dk, g);
  tensor3 a = nan_tensor(p.B, p.L, p.dk), b = nan_tensor(p.B, p.L, p.dk);
  layer.forward(attn::view(q), attn::view(k), {}, attn::view(a));
  layer.forward(attn::view(q), attn::view(k), attn::view(k), attn::view(b));
  EXPECT_TRUE(same_bits(a, b));
  EXPECT_TRUE(same_bits(a, layer.forward(q, k)));
  EXPECT_TRUE(same_bits(a, layer.forward(q, k, k)));
  EXPECT_TRUE(same_bits(a, layer.forward(q, layer.project_keys(attn::view(k)), k)));
}

TEST(AdditiveLayouts, StridedViews) {
  // Queries, keys and values as slices of wider buffers, the output written
  // into a slice: the same bits as dense copies.
  std::mt19937 g(800);
  problem p;
  const attn::additive_weights w = make_weights(config{}, p, g);
  const attn::additive_attention layer(w);
  const tensor3 qw = randt(p.B, p.L, p.dq + 3, g), kw = randt(p.B, p.S, p.dk + 5, g),
                vw = randt(p.B, p.S, p.dv + 2, g);
  Eigen::array<index, 3> off{0, 0, 1};
  const tensor3 q = qw.slice(off, Eigen::array<index, 3>{p.B, p.L, p.dq});
  const tensor3 k = kw.slice(off, Eigen::array<index, 3>{p.B, p.S, p.dk});
  const tensor3 v = vw.slice(off, Eigen::array<index, 3>{p.B, p.S, p.dv});
  auto slice = [](const tensor3& t, index d) {
    attn::strided<const float, 3> s = attn::view(t);
    s.data += 1;
    s.dims[2] = d;
    return s;
  };
  tensor3 dense = nan_tensor(p.B, p.L, p.dv), wide = nan_tensor(p.B, p.L, p.dv + 4);
  wide.setZero();
  layer.forward(attn::view(q), attn::view(k), attn::view(v), attn::view(dense));
  attn::strided<float, 3> ow = attn::view(wide);
  ow.data += 2;
  ow.dims[2] = p.dv;
  layer.forward(slice(qw, p.dq), slice(kw, p.dk), slice(vw, p.dv), ow);
  for (index b = 0; b < p.B; ++b)
    for (index i = 0; i < p.L; ++i)
      for (index d = 0; d < p.dv; ++d) ASSERT_EQ(dense(b, i, d), wide(b, i, d + 2));
}

TEST(AdditiveMasks, FullyMaskedRowsAreZeroNeverNaN) {
  std::mt19937 g(900);
  for (auto sf :
       {attn::score_function::additive, attn::score_function::dot, attn::score_function::general}) {
    problem p;
    config c;
    c.score = sf;
    const attn::additive_weights w = make_weights(c, p, g);
    const attn::additive_attention layer(w);
    const tensor3 q = randt(p.B, p.L, p.dq, g), k = randt(p.B, p.S, p.dk, g),
                  v = randt(p.B, p.S, p.dv, g);
    masks m;
    m.lengths = {0, p.S};  // batch 0: no key
    m.key_mask.resize(p.B, p.S);
    m.key_mask.setConstant(true);
    for (index j = 0; j < p.S; ++j) m.key_mask(1, j) = j >= p.S - 2;  // batch 1: only the last 2
    tensor3 out = nan_tensor(p.B, p.L, p.dv), wts = nan_tensor(p.B, p.L, p.S);
    layer.forward(attn::view(q), attn::view(k), attn::view(v), attn::view(out), options(m, &wts));
    for (index i = 0; i < p.L; ++i) {
      for (index d = 0; d < p.dv; ++d) EXPECT_EQ(out(0, i, d), 0.0f);
      for (index j = 0; j < p.S; ++j) EXPECT_EQ(wts(0, i, j), 0.0f);
      for (index j = 0; j < p.S - 2; ++j) EXPECT_EQ(wts(1, i, j), 0.0f);
    }
    check(std::string("fully masked ") + name(sf), w, p, q, k, v, m, out, wts);
    // A key mask that is all false, broadcast over batch with stride 0.
    bool none = false;
    attn::additive_options o;
    o.key_mask = attn::strided<const bool, 2>{&none, {p.B, p.S}, {0, 0}};
    o.weights = attn::view(wts);
    layer.forward(attn::view(q), attn::view(k), attn::view(v), attn::view(out), o);
    for (index i = 0; i < out.size(); ++i) ASSERT_EQ(out.data()[i], 0.0f);
    for (index i = 0; i < wts.size(); ++i) ASSERT_EQ(wts.data()[i], 0.0f);
  }
}

TEST(AdditiveMasks, QueryMaskZeroesOutputKeepsWeights) {
  std::mt19937 g(1000);
  problem p;
  p.L = 5;
  const attn::additive_weights w = make_weights(config{}, p, g);
  const attn::additive_attention layer(w);
  const tensor3 q = randt(p.B, p.L, p.dq, g), k = randt(p.B, p.S, p.dk, g),
                v = randt(p.B, p.S, p.dv, g);
  masks none, qm;
  qm.query_mask.resize(p.B, p.L);
  qm.query_mask.setConstant(true);
  qm.query_mask(0, 1) = false;
  qm.query_mask(1, 4) = false;
  tensor3 o1 = nan_tensor(p.B, p.L, p.dv), w1 = nan_tensor(p.B, p.L, p.S);
  tensor3 o2 = nan_tensor(p.B, p.L, p.dv), w2 = nan_tensor(p.B, p.L, p.S);
  layer.forward(attn::view(q), attn::view(k), attn::view(v), attn::view(o1), options(none, &w1));
  layer.forward(attn::view(q), attn::view(k), attn::view(v), attn::view(o2), options(qm, &w2));
  EXPECT_TRUE(same_bits(w1, w2)) << "weights do not depend on the query mask (Keras)";
  for (index b = 0; b < p.B; ++b)
    for (index i = 0; i < p.L; ++i)
      for (index d = 0; d < p.dv; ++d)
        EXPECT_EQ(o2(b, i, d), qm.query_mask(b, i) ? o1(b, i, d) : 0.0f);
  // Without weights requested the masked rows are skipped: still 0.
  tensor3 o3 = nan_tensor(p.B, p.L, p.dv);
  layer.forward(attn::view(q), attn::view(k), attn::view(v), attn::view(o3), options(qm, nullptr));
  EXPECT_TRUE(same_bits(o2, o3));
}

TEST(AdditiveExtreme, SaturatedTanhGivesExactScoresNoNaN) {
  // Projections of +-1e4: every tanh saturates to exactly +-1, so each
  // score is exactly +-Σ_a v_a (up to the fp32 sum) and nothing is NaN.
  problem p;
  p.da = 20;
  p.dq = p.dk = p.da;
  attn::additive_weights w;  // Keras form: identity projections
  w.v = Eigen::VectorXf::LinSpaced(p.da, -1.0f, 2.0f);
  const attn::additive_attention layer(w);
  tensor3 q(p.B, p.L, p.da), k(p.B, p.S, p.da), v(p.B, p.S, p.dv);
  std::mt19937 g(1100);
  std::bernoulli_distribution coin(0.5);
  for (index i = 0; i < q.size(); ++i) q.data()[i] = coin(g) ? 1e4f : -1e4f;
  for (index i = 0; i < k.size(); ++i) k.data()[i] = coin(g) ? 3.0f : -3.0f;
  v = randt(p.B, p.S, p.dv, g);
  tensor3 out = nan_tensor(p.B, p.L, p.dv), wts = nan_tensor(p.B, p.L, p.S);
  attn::additive_options o;
  o.weights = attn::view(wts);
  layer.forward(attn::view(q), attn::view(k), attn::view(v), attn::view(out), o);
  for (index i = 0; i < out.size(); ++i) ASSERT_TRUE(std::isfinite(out.data()[i]));
  // All keys of a row have the same score (q dominates): uniform weights.
  for (index i = 0; i < wts.size(); ++i) ASSERT_NEAR(wts.data()[i], 1.0 / p.S, 1e-6);
  check("saturated", w, p, q, k, v, masks{}, out, wts);

  // Huge values on both sides, random signs, up to FLT_MAX (whose sums
  // overflow to +-inf, which tanh also saturates): finite weights summing
  // to 1, finite outputs. (An infinite query and an infinite key of
  // opposite signs would give inf - inf = NaN before any tanh: inputs must
  // be finite.)
  for (float big : {1e4f, 1e30f, std::numeric_limits<float>::max()}) {
    tensor3 qb = randt(p.B, p.L, p.da, g, big), kb = randt(p.B, p.S, p.da, g, big);
    for (index i = 0; i < qb.size(); ++i) qb.data()[i] = coin(g) ? big : -big;
    for (index i = 0; i < kb.size(); ++i) kb.data()[i] = coin(g) ? big : -big;
    tensor3 ob = nan_tensor(p.B, p.L, p.dv), wb = nan_tensor(p.B, p.L, p.S);
    attn::additive_options ob_opt;
    ob_opt.weights = attn::view(wb);
    layer.forward(attn::view(qb), attn::view(kb), attn::view(v), attn::view(ob), ob_opt);
    for (index i = 0; i < ob.size(); ++i) ASSERT_TRUE(std::isfinite(ob.data()[i])) << big;
    for (index b = 0; b < p.B; ++b)
      for (index i = 0; i < p.L; ++i) {
        double s = 0;
        for (index j = 0; j < p.S; ++j) {
          ASSERT_TRUE(std::isfinite(wb(b, i, j))) << big;
          s += wb(b, i, j);
        }
        EXPECT_NEAR(s, 1.0, 1e-5) << big;
      }
  }
}

// Issue 18 item 7: projection sums at the edge of fp32. Feature by feature,
// with h just inside (h + h = FLT_MAX exactly: no fp32 sum overflows) or
// just outside (h = the next float: h + h overflows) and w_i, u_j ordinary:
//   a0: (q0 + q1) + 0.3 - (k0 + k1)   = 0.3        (both sides overflow, opposite signs:
//                                                   tanh(inf - inf) = NaN before the fix)
//   a1: q0 + k0                       = 2h         (the sum overflows: tanh 1 either way)
//   a2: q4 + k2                       = w_i + u_j
//   a3: (q0 + q1 + q2 + q3) - 0.7 + k2 = u_j - 0.7 (the fp32 partial sum passes FLT_MAX,
//                                                   inf of the wrong sign, truly 0 - 0.7)
// Inside, every fp32 sum here is exact (doublings, h - h) but a0's bias,
// lost next to FLT_MAX (pre-activation 0 instead of 0.3): bias 0.3 is used
// outside only. Each side against the fp64 reference, on the row path
// (S = 6) and the key-chunk path (L = 1, S = 1100), with the score error
// E = Σ|v_a|·(tanh_max_abs_error + 8·eps32): the saturated features are
// exactly ±1 (or tanh(0) = 0) on both sides, the ordinary ones err by tanh's
// bound plus a few roundings of their pre-activation and of the score sum
// (|x| < 10, 4 terms: 8·eps of margin); outside the kernel takes the
// overflowing scores in double and rounds once, well inside E.
attn::additive_weights edge_weights(bool outside) {
  attn::additive_weights w;
  w.w_q = matrix::Zero(4, 5);
  w.w_q.row(0) << 1, 1, 0, 0, 0;
  w.w_q.row(1) << 1, 0, 0, 0, 0;
  w.w_q.row(2) << 0, 0, 0, 0, 1;
  w.w_q.row(3) << 1, 1, 1, 1, 0;
  w.w_k = matrix::Zero(4, 3);
  w.w_k.row(0) << -1, -1, 0;
  w.w_k.row(1) << 1, 0, 0;
  w.w_k.row(2) << 0, 0, 1;
  w.w_k.row(3) << 0, 0, 1;
  w.bias = Eigen::Vector4f(outside ? 0.3f : 0.0f, 0.0f, 0.0f, -0.7f);
  w.v = Eigen::Vector4f(0.9f, -0.4f, 1.3f, 0.8f);
  return w;
}

TEST(AdditiveOverflow, ProjectionSumsAtTheFp32Edge) {
  const float half = std::numeric_limits<float>::max() / 2;  // exact: FLT_MAX = (2 - 2^-23)·2^127
  for (bool outside : {false, true})
    for (index S : {6, 1100}) {
      SCOPED_TRACE(std::string(outside ? "outside" : "inside") + " S=" + std::to_string(S));
      const float h = outside ? std::nextafter(half, std::numeric_limits<float>::infinity()) : half;
      problem p;
      p.B = 2;
      p.L = S > 100 ? 1 : 3;
      p.S = S;
      p.dq = 5;
      p.dk = 3;
      p.da = 4;
      p.dv = 3;
      const attn::additive_weights w = edge_weights(outside);
      const attn::additive_attention layer(w);
      std::mt19937 g(1900 + static_cast<unsigned>(S));
      tensor3 q = randt(p.B, p.L, p.dq, g), k = randt(p.B, p.S, p.dk, g),
              v = randt(p.B, p.S, p.dv, g);
      for (index b = 0; b < p.B; ++b) {
        for (index i = 0; i < p.L; ++i) {
          q(b, i, 0) = q(b, i, 1) = h;
          q(b, i, 2) = q(b, i, 3) = -h;
        }
        for (index j = 0; j < p.S; ++j) k(b, j, 0) = k(b, j, 1) = h;
      }
      masks m;
      if (S > 100) m.lengths = {S, S - 7};
      const double E = (0.9 + 0.4 + 1.3 + 0.8) *
                       (double(attn::core::simd::tanh_max_abs_error) + 8 * attn_ref::eps32);
      tensor3 out = nan_tensor(p.B, p.L, p.dv), wts = nan_tensor(p.B, p.L, p.S);
      layer.forward(attn::view(q), attn::view(k), attn::view(v), attn::view(out), options(m, &wts));
      check("edge", w, p, q, k, v, m, out, wts, E);
      // The cached projection and the call without weights: the same bits.
      const attn::additive_keys cache = layer.project_keys(attn::view(k));
      tensor3 out2 = nan_tensor(p.B, p.L, p.dv);
      layer.forward(attn::view(q), cache, attn::view(v), attn::view(out2), options(m, nullptr));
      EXPECT_TRUE(same_bits(out, out2));
    }
}

// Luong's scores at the fp32 edge, each side against the fp64 reference.
//  * general: W = [[1, 1, 0], [0, 0, 1]] and k_j = [h, h, u_j], q_i = [0, w_i]:
//    W k_j = [2h, u_j] and the score 0·2h + w_i u_j. Outside, 2h overflows
//    to inf and 0·inf was NaN; the score is then taken in double, exactly.
//  * dot, products past FLT_MAX: q_i = [2^66, 2^66, w_i], k_j = [2^62, -2^62, u_j]:
//    2^128 - 2^128 + w_i u_j, whose fp32 terms are +inf and -inf (NaN in any
//    order of summation); in double exact. Just inside, [2^63, 2^63, w_i]
//    against [2^63, -2^63, u_j]: terms ±2^126 that cancel exactly in any order
//    of summation (the ordinary term may be added before or after: the
//    result is w_i u_j rounded or, between 2^126 and -2^126, lost; not tested
//    inside, where the ordinary fp32 error bound applies).
// Score error: E = 4·eps32·(|w u| + 1) (one rounding of the double score, or
// the fp32 product w·u and its sum with exact zeros, 4x margin).
TEST(AdditiveOverflow, LuongScoresAtTheFp32Edge) {
  const float half = std::numeric_limits<float>::max() / 2;
  for (bool outside : {false, true}) {
    SCOPED_TRACE(outside ? "outside" : "inside");
    {  // general
      problem p;
      p.dq = 2;
      p.dk = 3;
      p.dv = 4;
      attn::additive_weights w;
      w.score = attn::score_function::general;
      w.w_k = matrix::Zero(2, 3);
      w.w_k.row(0) << 1, 1, 0;
      w.w_k.row(1) << 0, 0, 1;
      const attn::additive_attention layer(w);
      std::mt19937 g(1950);
      tensor3 q = randt(p.B, p.L, p.dq, g), k = randt(p.B, p.S, p.dk, g),
              v = randt(p.B, p.S, p.dv, g);
      const float h = outside ? std::nextafter(half, std::numeric_limits<float>::infinity()) : half;
      for (index b = 0; b < p.B; ++b) {
        for (index i = 0; i < p.L; ++i) q(b, i, 0) = 0.0f;
        for (index j = 0; j < p.S; ++j) k(b, j, 0) = k(b, j, 1) = h;
      }
      tensor3 out = nan_tensor(p.B, p.L, p.dv), wts = nan_tensor(p.B, p.L, p.S);
      layer.forward(attn::view(q), attn::view(k), attn::view(v), attn::view(out),
                    options(masks{}, &wts));
      check("general", w, p, q, k, v, masks{}, out, wts, 4 * attn_ref::eps32 * 20);
    }
    if (outside) {  // dot, terms past FLT_MAX
      problem p;
      p.dq = p.dk = 3;
      p.dv = 4;
      attn::additive_weights w;
      w.score = attn::score_function::dot;
      const attn::additive_attention layer(w);
      std::mt19937 g(1960);
      tensor3 q = randt(p.B, p.L, 3, g), k = randt(p.B, p.S, 3, g), v = randt(p.B, p.S, p.dv, g);
      for (index b = 0; b < p.B; ++b) {
        for (index i = 0; i < p.L; ++i) q(b, i, 0) = q(b, i, 1) = 0x1p66f;
        for (index j = 0; j < p.S; ++j) {
          k(b, j, 0) = 0x1p62f;
          k(b, j, 1) = -0x1p62f;
        }
      }
      tensor3 out = nan_tensor(p.B, p.L, p.dv), wts = nan_tensor(p.B, p.L, p.S);
      layer.forward(attn::view(q), attn::view(k), attn::view(v), attn::view(out),
                    options(masks{}, &wts));
      check("dot", w, p, q, k, v, masks{}, out, wts, 4 * attn_ref::eps32 * 20);
    }
  }
}

// Dot scores beyond -FLT_MAX saturate there, as SDPA's do (README, NaN and
// infinity, 3): they never empty a row. q = [-h, -h], k_j = c_j·[1, 1]:
// score -2h·c_j. Inside (h = FLT_MAX / 2, c_j <= 1) the scores are finite and
// the largest takes the weight, as in the fp64 reference (the others lie
// 2^100 below). Outside (c_j > 1 for every key: all below -FLT_MAX, -inf in
// fp32, which emptied the row: output 0) every key saturates at -FLT_MAX and
// they share the row evenly; one finite key among them takes it all.
TEST(AdditiveOverflow, DotScoresBelowMinusFltMaxSaturate) {
  const float h = std::numeric_limits<float>::max() / 2;
  attn::additive_weights w;
  w.score = attn::score_function::dot;
  const attn::additive_attention layer(w);
  const index S = 5, dv = 3;
  std::mt19937 g(1970);
  const tensor3 v = randt(1, S, dv, g);
  for (int side : {0, 1, 2}) {  // inside, outside, outside with one finite key
    SCOPED_TRACE(side);
    tensor3 q(1, 1, 2), k(1, S, 2);
    q.setConstant(-h);
    for (index j = 0; j < S; ++j) {
      const float c = side == 0 ? 1.0f - 0.125f * float(j) : 1.0f + 0.125f * float(j + 1);
      k(0, j, 0) = k(0, j, 1) = c;
    }
    if (side == 2) k(0, 3, 0) = k(0, 3, 1) = 0.5f;
    tensor3 out = nan_tensor(1, 1, dv), wts = nan_tensor(1, 1, S);
    attn::additive_options o;
    o.weights = attn::view(wts);
    layer.forward(attn::view(q), attn::view(k), attn::view(v), attn::view(out), o);
    const index top = side == 0 ? S - 1 : 3;  // the largest score (side 0 and 2)
    for (index j = 0; j < S; ++j) {
      const float want = side == 1 ? 1.0f / float(S) : (j == top ? 1.0f : 0.0f);
      ASSERT_NEAR(wts(0, 0, j), want, 1e-6) << j;
    }
    for (index d = 0; d < dv; ++d) {
      double want = 0;
      for (index j = 0; j < S; ++j)
        want += (side == 1 ? 1.0 / double(S) : (j == top ? 1.0 : 0.0)) * double(v(0, j, d));
      // (the mean of S values: a few roundings)
      ASSERT_NEAR(out(0, 0, d), want, 1e-6) << d;
    }
  }
}

// The exponential form of the score (detail/additive.hpp, exp_form_range):
// each element v_a tanh(x + y) is computed as v_a (1 - 2 / (e^(2x) e^(2y) + 1))
// with the two exponentials made once per query and per key. Its error per
// element must stay within the tanh bound the tolerances above are built on.
// A sweep of x over [-21.5, 21.5] against random y, and against y = -x + δ (the
// cancellation a tanh-of-a-sum identity would suffer; the product of the
// exponentials does not), each against std::tanh in double.
TEST(AdditiveExpForm, ElementErrorWithinTheTanhBound) {
  using attn::core::simd::width;
  std::mt19937 g(1300);
  std::uniform_real_distribution<float> any(-21.5f, 21.5f), near(-12.0f, 12.0f);
  // Two packets of features: the measured element in lane 0 of the first
  // and a partner in lane 0 of the second, so the paired quotient
  // (v1 d2 + v2 d1) / (d1 d2) is exercised with every kind of d2 and
  // partner weight (0 included); the error of the pair is held to the bound
  // per element times |v1| + |v2|. Also the element alone in a single packet
  // (the odd last packet of a row).
  std::uniform_real_distribution<float> weight(-1.0f, 1.0f);
  std::vector<float> x(2 * width, 0.0f), y(2 * width, 0.0f), e(2 * width), f(2 * width),
      v(2 * width, 0.0f);
  v[0] = 1.0f;
  double worst = 0.0;
  for (int i = 0; i <= 430000; ++i) {
    x[0] = -21.5f + 1e-4f * static_cast<float>(i);
    y[0] = i % 2 ? any(g) : std::min(21.5f, std::max(-21.5f, -x[0] + near(g) * 1e-3f * (i % 7)));
    x[width] = any(g);
    y[width] = i % 3 ? any(g) : std::min(21.5f, std::max(-21.5f, -x[width] + near(g) * 1e-3f));
    v[width] = i % 5 ? weight(g) : 0.0f;
    ASSERT_TRUE(attn::detail::additive::exp_form_factors(x.data(), 2 * width, e.data()));
    ASSERT_TRUE(attn::detail::additive::exp_form_factors(y.data(), 2 * width, f.data()));
    const double t1 = std::tanh(double(x[0]) + double(y[0]));
    const float one =
        attn::detail::additive::additive_score_exp1(e.data(), v.data(), f.data(), width, 1.0f);
    worst = std::max(worst, std::fabs(one - t1));
    const double t2 = std::tanh(double(x[width]) + double(y[width]));
    const float pair = attn::detail::additive::additive_score_exp1(e.data(), v.data(), f.data(),
                                                                   2 * width, 1.0f + v[width]);
    const double sum_abs = 1.0 + std::fabs(double(v[width]));
    worst = std::max(worst, std::fabs(pair - (t1 + double(v[width]) * t2)) / sum_abs);
  }
  std::printf(
      "[ measured ] exponential form: worst |error| per element (per unit of |v| for a "
      "pair) %.3g (bound %.3g)\n",
      worst, double(attn::core::simd::tanh_max_abs_error));
  EXPECT_LE(worst, double(attn::core::simd::tanh_max_abs_error));
  // Out of range (or not finite): the factors report it, and the layer takes tanh.
  x[0] = 22.5f;
  EXPECT_FALSE(attn::detail::additive::exp_form_factors(x.data(), width, e.data()));
  x[0] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_FALSE(attn::detail::additive::exp_form_factors(x.data(), width, e.data()));
}

// Keys projected by one layer and used by another (both Keras form, same
// d_a) carry the exponential form's factors; the second layer's v, whose
// Σ|v| overflows, must still send every score through the tanh form, never
// inf - inf = NaN from finite inputs.
TEST(AdditiveExpForm, KeysFromAnotherLayerWithHugeV) {
  attn::additive_weights small, huge;
  small.v = Eigen::VectorXf::Constant(2, 1.0f);
  huge.v = Eigen::VectorXf::Constant(2, 3e38f);
  const attn::additive_attention a(small), b(huge);
  std::mt19937 g(1320);
  const tensor3 q = randt(1, 3, 2, g), k = randt(1, 5, 2, g), v = randt(1, 5, 4, g);
  const attn::additive_keys keys = a.project_keys(attn::view(k));
  const tensor3 out = b.forward(q, keys, v);
  for (index i = 0; i < out.size(); ++i) ASSERT_TRUE(std::isfinite(out.data()[i])) << i;
}

// Queries and keys on both sides of the exponential form's range in one
// call: some rows of a task in range and some not, some keys of a group of
// four in range and some not. Every score takes the form its (query, key)
// pair allows, so the result matches the reference and has the same bits
// with and without the weights requested (which changes the rows a task
// scores) and for any thread count.
TEST(AdditiveExpForm, MixedRangesMatchTheReference) {
  std::mt19937 g(1310);
  problem p;
  p.B = 2;
  p.L = 11;
  p.S = 37;
  p.da = 24;
  p.dq = p.dk = p.da;
  attn::additive_weights w;  // Keras form: the projections are the inputs
  w.v = Eigen::VectorXf::LinSpaced(p.da, -0.5f, 1.0f);
  const attn::additive_attention layer(w);
  tensor3 q = randt(p.B, p.L, p.da, g), k = randt(p.B, p.S, p.da, g), v = randt(p.B, p.S, p.dv, g);
  for (index b = 0; b < p.B; ++b) {
    for (index i = 0; i < p.L; i += 3) q(b, i, (i * 5) % p.da) = 30.0f;   // out of range
    for (index j = 1; j < p.S; j += 4) k(b, j, (j * 7) % p.da) = -40.0f;  // out of range
  }
  const masks m = make_masks(3, p, g);
  tensor3 out = nan_tensor(p.B, p.L, p.dv), wts = nan_tensor(p.B, p.L, p.S);
  layer.forward(attn::view(q), attn::view(k), attn::view(v), attn::view(out), options(m, &wts, 1));
  check("mixed ranges", w, p, q, k, v, m, out, wts);
  for (int t : {1, 2}) {
    tensor3 out2 = nan_tensor(p.B, p.L, p.dv);
    layer.forward(attn::view(q), attn::view(k), attn::view(v), attn::view(out2),
                  options(m, nullptr, t));
    EXPECT_TRUE(same_bits(out2, out)) << "threads " << t;
  }
}

TEST(AdditiveThreads, BitIdenticalForAnyThreadCount) {
  // Large enough that the call really runs in parallel
  // (attn::core::min_parallel_flops). Shapes: rows in tasks of
  // detail::additive::min_task_rows; a decoder step whose keys are split
  // into chunks merged by LSE (key_chunks: 3 here); and a long query run in
  // tasks of max_task_rows, with a last partial task. The Keras
  // form (no projections) takes the exponential form.
  struct shape {
    index B, L, S;
  };
  for (const shape sh : {shape{3, 40, 70}, shape{1, 3, 1500}, shape{2, 141, 40}})
    for (auto sf : {attn::score_function::additive, attn::score_function::general})
      for (bool keras : {false, true}) {
        if (keras && sf != attn::score_function::additive) continue;
        std::mt19937 g(1200);
        problem p;
        p.B = sh.B;
        p.L = sh.L;
        p.S = sh.S;
        p.da = 64;
        p.dq = 32;
        p.dk = 48;
        config c;
        c.score = sf;
        c.bias = sf == attn::score_function::additive && !keras;
        c.wq = c.wk = !keras;
        const attn::additive_weights w = make_weights(c, p, g);
        const attn::additive_attention layer(w);
        const tensor3 q = randt(p.B, p.L, p.dq, g), k = randt(p.B, p.S, p.dk, g),
                      v = randt(p.B, p.S, p.dv, g);
        const masks m = make_masks(7, p, g);
        const attn::additive_keys cache = layer.project_keys(attn::view(k));
        tensor3 ref_out, ref_w;
        for (int t : {1, 2, 3, 0}) {
          tensor3 out = nan_tensor(p.B, p.L, p.dv), wts = nan_tensor(p.B, p.L, p.S);
          layer.forward(attn::view(q), cache, attn::view(v), attn::view(out), options(m, &wts, t));
          if (t == 1) {
            ref_out = out;
            ref_w = wts;
            check(std::string("threads ") + name(sf), w, p, q, k, v, m, out, wts);
          } else {
            EXPECT_TRUE(same_bits(out, ref_out)) << name(sf) << " threads " << t;
            EXPECT_TRUE(same_bits(wts, ref_w)) << name(sf) << " threads " << t;
          }
        }
      }
}

TEST(AdditiveWeights, NormalizeUsesGOverNorm) {
  attn::additive_weights w;
  w.v = Eigen::Vector3f(3.0f, 0.0f, 4.0f);
  w.normalize = true;
  w.g = 2.0f;
  const attn::additive_attention layer(w);
  EXPECT_FLOAT_EQ(layer.effective_v()[0], 1.2f);
  EXPECT_FLOAT_EQ(layer.effective_v()[2], 1.6f);
  EXPECT_EQ(layer.attention_dim(), 3);
  EXPECT_EQ(layer.query_dim(), 3);
  EXPECT_EQ(layer.key_dim(), 3);
}

// ---------------------------------------------------------------------------
// Errors

using attn_test::expect_error;

TEST(AdditiveErrors, Constructor) {
  using attn::score_function;
  auto make = [](std::function<void(attn::additive_weights&)> edit) {
    attn::additive_weights w;
    w.w_q = matrix::Ones(4, 3);
    w.w_k = matrix::Ones(4, 5);
    w.v = Eigen::VectorXf::Ones(4);
    edit(w);
    return [w] { attn::additive_attention a(w); };
  };
  make([](attn::additive_weights&) {})();  // the baseline is valid
  expect_error("no v", make([](auto& w) { w.v.resize(0); }), {"additive_attention", "weights.v"});
  expect_error("w_q rows", make([](auto& w) { w.w_q = matrix::Ones(5, 3); }),
               {"weights.w_q", "[5, 3]"});
  expect_error("w_k rows", make([](auto& w) { w.w_k = matrix::Ones(3, 5); }),
               {"weights.w_k", "[3, 5]"});
  expect_error("bias size", make([](auto& w) { w.bias = Eigen::VectorXf::Ones(3); }),
               {"weights.bias", "[3]"});
  expect_error("normalize zero v", make([](auto& w) {
                 w.normalize = true;
                 w.v.setZero();
               }),
               {"weights.v", "norm"});
  expect_error("normalize bad g", make([](auto& w) {
                 w.normalize = true;
                 w.g = std::numeric_limits<float>::infinity();
               }),
               {"weights.g"});
  expect_error("bad score", make([](auto& w) { w.score = static_cast<score_function>(7); }),
               {"weights.score"});
  auto luong = [&](score_function s, std::function<void(attn::additive_weights&)> edit) {
    return make([s, edit](attn::additive_weights& w) {
      w = attn::additive_weights{};
      w.score = s;
      if (s == score_function::general) w.w_k = matrix::Ones(3, 5);
      edit(w);
    });
  };
  luong(score_function::dot, [](auto&) {})();
  luong(score_function::general, [](auto&) {})();
  expect_error("dot w_k", luong(score_function::dot, [](auto& w) { w.w_k = matrix::Ones(2, 2); }),
               {"weights.w_k", "dot"});
  expect_error("dot v", luong(score_function::dot, [](auto& w) { w.v = Eigen::VectorXf::Ones(2); }),
               {"weights.v", "dot"});
  expect_error("general w_q",
               luong(score_function::general, [](auto& w) { w.w_q = matrix::Ones(2, 2); }),
               {"weights.w_q", "general"});
  expect_error("general bias",
               luong(score_function::general, [](auto& w) { w.bias = Eigen::VectorXf::Ones(3); }),
               {"weights.bias", "general"});
  expect_error("general normalize",
               luong(score_function::general, [](auto& w) { w.normalize = true; }),
               {"weights.normalize"});
  expect_error("general no W", luong(score_function::general, [](auto& w) { w.w_k.resize(0, 0); }),
               {"weights.w_k", "[0, 0]"});
}

TEST(AdditiveErrors, Calls) {
  std::mt19937 g(1300);
  problem p;
  const attn::additive_weights w = make_weights(config{}, p, g);
  const attn::additive_attention layer(w);
  const tensor3 q = randt(p.B, p.L, p.dq, g), k = randt(p.B, p.S, p.dk, g),
                v = randt(p.B, p.S, p.dv, g);
  tensor3 out(p.B, p.L, p.dv), wts(p.B, p.L, p.S);
  const attn::additive_keys cache = layer.project_keys(attn::view(k));
  struct call {
    attn::strided<const float, 3> q, k, v;
    attn::strided<float, 3> out;
    attn::additive_options opt;
    bool cached = false;
    const attn::additive_keys* keys = nullptr;
    void operator()() const {
      if (cached)
        layer_->forward(q, *keys, v, out, opt);
      else
        layer_->forward(q, k, v, out, opt);
    }
    const attn::additive_attention* layer_ = nullptr;
  };
  call base;
  base.q = attn::view(q);
  base.k = attn::view(k);
  base.v = attn::view(v);
  base.out = attn::view(out);
  base.keys = &cache;
  base.layer_ = &layer;
  base();
  auto with = [&](std::function<void(call&)> edit) {
    call c = base;
    edit(c);
    return c;
  };
  const char* fwd = "additive_attention::forward";
  expect_error("query dims", with([](call& c) { c.q.dims[2] += 1; }), {fwd, ": query:"});
  expect_error("query batch", with([](call& c) { c.q.dims[0] = 1; }), {": query:"});
  expect_error("query null", with([](call& c) { c.q.data = nullptr; }), {": query:", "null"});
  expect_error("query stride", with([](call& c) { c.q.strides[2] = 2; }), {"query.strides[2]"});
  expect_error("keys dims", with([](call& c) { c.k.dims[2] -= 1; }), {": keys:"});
  expect_error("keys null", with([](call& c) { c.k.data = nullptr; }), {": keys:", "null"});
  expect_error("keys stride", with([](call& c) { c.k.strides[2] = 2; }), {"keys.strides[2]"});
  expect_error("values dims", with([](call& c) { c.v.dims[1] -= 1; }), {": values:"});
  expect_error("values null", with([](call& c) { c.v.data = nullptr; }), {": values:", "null"});
  expect_error("values stride", with([](call& c) { c.v.strides[2] = 2; }), {"values.strides[2]"});
  expect_error("out dims", with([](call& c) { c.out.dims[2] += 1; }), {": out:"});
  expect_error("out null", with([](call& c) { c.out.data = nullptr; }), {": out:", "null"});
  expect_error("out stride", with([](call& c) { c.out.strides[2] = 2; }), {"out.strides[2]"});
  expect_error("out overlap", with([](call& c) { c.out.strides[1] = 1; }), {"out.strides"});
  expect_error("lengths size", with([](call& c) { c.opt.key_lengths = {1}; }),
               {"key_lengths.size()"});
  expect_error("lengths value", with([&](call& c) {
                 c.opt.key_lengths = {1, p.S + 1};
               }),
               {"key_lengths[1]"});
  expect_error("lengths negative", with([](call& c) {
                 c.opt.key_lengths = {-1, 1};
               }),
               {"key_lengths[0]"});
  tensor2b km(p.B, p.S + 1), qm(p.B + 1, p.L);
  expect_error("key mask", with([&](call& c) { c.opt.key_mask = attn::view(km); }),
               {": key_mask:"});
  expect_error("key mask stride", with([&](call& c) {
                 c.opt.key_mask = attn::strided<const bool, 2>{km.data(), {p.B, p.S}, {-1, 1}};
               }),
               {"key_mask.strides"});
  expect_error("query mask", with([&](call& c) { c.opt.query_mask = attn::view(qm); }),
               {": query_mask:"});
  expect_error("query mask stride", with([&](call& c) {
                 c.opt.query_mask = attn::strided<const bool, 2>{qm.data(), {p.B, p.L}, {1, -1}};
               }),
               {"query_mask.strides"});
  tensor3 bad_w(p.B, p.L, p.S + 1);
  expect_error("weights dims", with([&](call& c) { c.opt.weights = attn::view(bad_w); }),
               {": weights:"});
  expect_error("weights overlap", with([&](call& c) {
                 c.opt.weights = attn::view(wts);
                 c.opt.weights.strides[0] = 0;
               }),
               {"weights.strides"});
  expect_error("threads", with([](call& c) { c.opt.num_threads = -1; }), {"num_threads"});
  // Cached: the same checks, plus the cache itself.
  expect_error("cached query", with([](call& c) {
                 c.cached = true;
                 c.q.dims[0] = 1;
               }),
               {": query:"});
  expect_error("cached values", with([](call& c) {
                 c.cached = true;
                 c.v.dims[1] = 2;
               }),
               {": values:"});
  attn::additive_weights wd;
  wd.score = attn::score_function::dot;
  const attn::additive_attention dot(wd);
  const tensor3 kd = randt(p.B, p.S, p.dq, g);
  const attn::additive_keys dot_cache = dot.project_keys(attn::view(kd));
  expect_error("foreign cache", with([&](call& c) {
                 c.cached = true;
                 c.keys = &dot_cache;
               }),
               {": keys:", "project_keys"});
  expect_error("dot dims",
               [&] { dot.forward(attn::view(q), attn::view(k), attn::view(v), attn::view(out)); },
               {": query:"});
  expect_error("project_keys", [&] { layer.project_keys(attn::view(q)); },
               {"additive_attention::project_keys", ": keys:"});
}

TEST(AdditiveZeroSize, EmptyBatchQueriesAndKeys) {
  std::mt19937 g(1400);
  problem p;
  const attn::additive_weights w = make_weights(config{}, p, g);
  const attn::additive_attention layer(w);
  // L = 0 and B = 0: nothing to do, no error.
  for (auto dims : {std::array<index, 2>{0, 3}, std::array<index, 2>{2, 0}}) {
    const tensor3 q(dims[0], dims[1], p.dq), k = randt(dims[0], p.S, p.dk, g),
                                             v = randt(dims[0], p.S, p.dv, g);
    tensor3 out(dims[0], dims[1], p.dv);
    layer.forward(attn::view(q), attn::view(k), attn::view(v), attn::view(out));
  }
  // S = 0: every row is fully masked, output 0.
  const tensor3 q = randt(p.B, p.L, p.dq, g), k(p.B, 0, p.dk), v(p.B, 0, p.dv);
  tensor3 out = nan_tensor(p.B, p.L, p.dv);
  layer.forward(attn::view(q), attn::view(k), attn::view(v), attn::view(out));
  for (index i = 0; i < out.size(); ++i) EXPECT_EQ(out.data()[i], 0.0f);
}

TEST(AdditiveReport, WorstErrorRatios) {
  std::printf("[ measured ] worst error / tolerance: weights %.3g, out %.3g\n", g_worst_w,
              g_worst_out);
  EXPECT_LE(g_worst_w, 1.0);
  EXPECT_LE(g_worst_out, 1.0);
}

}  // namespace test_additive
