// tests/test_attention_weights.cpp: attn::attention_weights against the fp64
// reference in tests/reference/attention_weights_reference.hpp, plus its
// agreement with scaled_dot_product_attention, its column sums, layouts and
// thread counts. (NaN / inf rows: test_nan_policy.cpp; errors: test_errors.cpp.)
//
// Tolerances (fp32 kernel vs fp64 reference on the same inputs)
// --------------------------------------------------------------
// probs: |p - ref| <= 1e-5 · ref + 1e-7.
//   p_j = 2^(s_j - m) / l. Its relative error is the error of s_j - m plus
//   those of 2^x and of l, each independent of p's size:
//   * scores: fp32 dot products of length d <= 80 of N(0,1) data, |s| a few
//     units after scale: ~ sqrt(d)·eps·|s| plus the rounding of q · scale ·
//     log2 e (1 ulp of each product), ~ 1e-6 in all on s and on m;
//   * exp2_nonpositive: <= 1.5e-7 relative (core/math.hpp);
//   * l, a sum of up to 1000 terms in [0, 1]: ~ sqrt(S)·eps ~ 2e-6 relative;
//   * the online-softmax rescales of l: a few eps per key tile.
//   Sum ~ 4e-6 relative; 1e-5 leaves a 2.5x margin. The 1e-7 absolute term
//   covers the weights so small that their relative error no longer matters
//   (below 1e-7 · the row). A real bug is far outside: a key lost from or
//   added to a row moves every weight by >= 1/S relative (1e-3 here), and a
//   key that should be masked keeps a weight of order 1/S.
// column_sums: |c - ref| <= 1e-5 · ref + L · 1e-7: each sums L weights with
//   the error above (the double sum adds nothing measurable).
// Rows the reference finds fully masked must be exactly 0, as must every
// masked key.
//
// Bit-for-bit (memcmp): any thread count; probs written through a strided
// view vs contiguous; column sums requested or not.
//
// Measured (AMD EPYC Zen 5, baseline x86-64 build): the worst probability
// error is 0.26 of the tolerance, the worst column-sum error 0.06 (printed
// by WorstErrorIsReported).
#include <gtest/gtest.h>

#include <algorithm>
#include <attn/attention_weights.hpp>
#include <attn/sdpa.hpp>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "reference/attention_weights_reference.hpp"

namespace test_attention_weights {

using attn::index;
using tensor3 = Eigen::Tensor<float, 3, Eigen::RowMajor>;
using tensor4 = Eigen::Tensor<float, 4, Eigen::RowMajor>;
using btensor4 = Eigen::Tensor<bool, 4, Eigen::RowMajor>;
constexpr float minus_inf = -std::numeric_limits<float>::infinity();

std::mt19937& rng() {
  static std::mt19937 g(20240617);
  return g;
}
tensor4 randn(index a, index b, index c, index d) {
  std::normal_distribution<float> n(0.0f, 1.0f);
  tensor4 t(a, b, c, d);
  for (index i = 0; i < t.size(); ++i) t.data()[i] = n(rng());
  return t;
}

// Worst error / tolerance seen by the comparisons (reported at the end).
double worst_probs = 0.0, worst_sums = 0.0;

struct shape {
  index B, L, S, Hq, Hkv, D;
};

// One call's outputs.
struct weights {
  tensor4 probs;
  tensor3 sums;
};

template <class KV>
weights run(const tensor4& q, const tensor4& k, const attn::sdpa_options& opt) {
  const Eigen::Tensor<KV, 4, Eigen::RowMajor> kk = k.cast<KV>();
  weights w{tensor4(q.dimension(0), q.dimension(2), q.dimension(1), k.dimension(1)),
            tensor3(q.dimension(0), q.dimension(2), k.dimension(1))};
  const attn::attention_weights_options with_sums{opt, attn::view(w.sums)};
  attn::attention_weights(attn::view(q).as_const(), attn::view(kk).as_const(), attn::view(w.probs),
                          with_sums);
  return w;
}

// attention_weights against the fp64 reference on K as KV holds it.
template <class KV>
void expect_matches_reference(const shape& s, const attn::sdpa_options& opt,
                              const std::string& what) {
  SCOPED_TRACE(what + " B" + std::to_string(s.B) + " L" + std::to_string(s.L) + " S" +
               std::to_string(s.S) + " Hq" + std::to_string(s.Hq) + " Hkv" +
               std::to_string(s.Hkv) + " D" + std::to_string(s.D));
  const tensor4 q = randn(s.B, s.L, s.Hq, s.D), k = randn(s.B, s.S, s.Hkv, s.D);
  const weights w = run<KV>(q, k, opt);
  const Eigen::Tensor<KV, 4, Eigen::RowMajor> kk = k.cast<KV>();
  const attn_ref::weights_result ref =
      attn_ref::attention_weights(attn::view(q).as_const(), attn::view(kk).as_const(),
                                  attn_ref::options_from(opt));
  for (index b = 0; b < s.B; ++b)
    for (index h = 0; h < s.Hq; ++h) {
      for (index i = 0; i < s.L; ++i)
        for (index j = 0; j < s.S; ++j) {
          const double r = ref.p(b, h, i, j), p = w.probs(b, h, i, j);
          if (r == 0.0) {
            ASSERT_EQ(p, 0.0f) << "b" << b << " h" << h << " i" << i << " j" << j;
            continue;
          }
          const double tol = 1e-5 * r + 1e-7;
          worst_probs = std::max(worst_probs, std::fabs(p - r) / tol);
          ASSERT_LE(std::fabs(p - r), tol) << "b" << b << " h" << h << " i" << i << " j" << j;
        }
      for (index j = 0; j < s.S; ++j) {
        const double r = ref.column_sum(b, h, j), c = w.sums(b, h, j);
        const double tol = 1e-5 * r + static_cast<double>(s.L) * 1e-7;
        worst_sums = std::max(worst_sums, std::fabs(c - r) / tol);
        ASSERT_LE(std::fabs(c - r), tol) << "b" << b << " h" << h << " j" << j;
      }
    }
}

// Every mask kind on one shape (L and S need not be equal).
template <class KV>
void every_mask(const shape& s) {
  attn::sdpa_options none;
  expect_matches_reference<KV>(s, none, "no mask");
  for (attn::causal c : {attn::causal::top_left, attn::causal::bottom_right}) {
    attn::sdpa_options o;
    o.causal = c;
    expect_matches_reference<KV>(s, o, c == attn::causal::top_left ? "causal tl" : "causal br");
  }
  for (attn::alignment a : {attn::alignment::top_left, attn::alignment::bottom_right}) {
    attn::sdpa_options o;
    o.window = attn::sliding_window{5, 2, a};
    expect_matches_reference<KV>(s, o, "window");
    o.causal = attn::causal::bottom_right;
    o.window = attn::sliding_window{7, attn::unbounded, a};
    expect_matches_reference<KV>(s, o, "window + causal");
  }
  {
    attn::sdpa_options o;
    for (index b = 0; b < s.B; ++b) o.key_lengths.push_back(b == 0 ? s.S : (s.S * b) / (s.B + 1));
    expect_matches_reference<KV>(s, o, "key_lengths");
  }
  std::bernoulli_distribution coin(0.7);
  btensor4 allow(s.B, s.Hq, s.L, s.S);
  for (index i = 0; i < allow.size(); ++i) allow.data()[i] = coin(rng());
  for (index j = 0; j < s.S; ++j) allow(0, 0, 0, j) = false;  // a fully masked row
  {
    attn::sdpa_options o;
    o.bool_mask = attn::view(allow).as_const();
    expect_matches_reference<KV>(s, o, "bool_mask");
  }
  tensor4 add = randn(s.B, s.Hq, s.L, s.S);
  for (index i = 0; i < add.size(); ++i)
    if (!allow.data()[i]) add.data()[i] = minus_inf;
  {
    attn::sdpa_options o;
    o.additive_mask = attn::view(add).as_const();
    expect_matches_reference<KV>(s, o, "additive_mask");
    o.bool_mask = attn::view(allow).as_const();
    o.causal = attn::causal::bottom_right;
    o.key_lengths.assign(static_cast<std::size_t>(s.B), std::max<index>(s.S - 3, 0));
    o.scale = 0.3f;
    expect_matches_reference<KV>(s, o, "every mask, scale 0.3");
  }
}

TEST(AttentionWeights, RandomShapesEveryMask) {
  every_mask<float>({2, 37, 53, 4, 2, 16});
  every_mask<float>({1, 200, 150, 2, 1, 64});   // a query tile and a part
  every_mask<float>({2, 9, 300, 6, 2, 32});     // L < S, GQA group 3
  every_mask<float>({1, 130, 20, 3, 3, 80});    // L > S
}

TEST(AttentionWeights, EdgeShapes) {
  for (const shape& s : std::vector<shape>{{1, 1, 1, 1, 1, 1},
                                           {1, 1, 7, 1, 1, 3},
                                           {3, 1, 1, 2, 1, 5},
                                           {1, 193, 129, 1, 1, 65},
                                           {1, 5, 1000, 4, 1, 7},
                                           {2, 2, 2, 8, 8, 2}}) {
    expect_matches_reference<float>(s, {}, "plain");
    attn::sdpa_options o;
    o.causal = attn::causal::bottom_right;
    expect_matches_reference<float>(s, o, "causal br");
  }
  every_mask<float>({1, 3, 17, 2, 1, 9});
}

TEST(AttentionWeights, HalfPrecisionKeys) {
  every_mask<Eigen::bfloat16>({2, 21, 70, 4, 2, 24});
  every_mask<Eigen::half>({1, 70, 21, 2, 2, 40});
}

// Empty key lengths and an empty query length: rows of zeros, column sums
// zero (L = 0 still writes them).
TEST(AttentionWeights, NothingToAttend) {
  const tensor4 q = randn(2, 4, 2, 8), k = randn(2, 6, 2, 8);
  attn::sdpa_options o;
  o.key_lengths = {0, 6};
  const weights w = run<float>(q, k, o);
  for (index h = 0; h < 2; ++h) {
    for (index i = 0; i < 4; ++i)
      for (index j = 0; j < 6; ++j) ASSERT_EQ(w.probs(0, h, i, j), 0.0f);
    for (index j = 0; j < 6; ++j) ASSERT_EQ(w.sums(0, h, j), 0.0f);
  }
  const tensor4 q0(2, 0, 2, 8);
  tensor4 probs(2, 2, 0, 6);
  tensor3 sums(2, 2, 6);
  sums.setConstant(7.0f);
  attn::attention_weights_options opt;
  opt.column_sums = attn::view(sums);
  attn::attention_weights(attn::view(q0).as_const(), attn::view(k).as_const(), attn::view(probs),
                          opt);
  for (index i = 0; i < sums.size(); ++i) ASSERT_EQ(sums.data()[i], 0.0f);
}

// Σ_j p_ij v_j is SDPA's output: the same probabilities (to fp32 rounding;
// tolerance of test_sdpa.cpp), on the split-KV decode shape and the tiled one.
TEST(AttentionWeights, WeightsTimesValuesIsSdpa) {
  for (index L : {3, 90}) {
    SCOPED_TRACE(L);
    const tensor4 q = randn(2, L, 4, 16), k = randn(2, 75, 2, 16), v = randn(2, 75, 2, 12);
    tensor4 add = randn(2, 4, L, 75);
    add(1, 3, 1, 4) = std::numeric_limits<float>::infinity();
    attn::sdpa_options o;
    o.causal = attn::causal::bottom_right;
    o.additive_mask = attn::view(add).as_const();
    tensor4 out(2, L, 4, 12);
    attn::scaled_dot_product_attention(attn::view(q).as_const(), attn::view(k).as_const(),
                                       attn::view(v).as_const(), attn::view(out), o);
    const weights w = run<float>(q, k, o);
    float vmax = 0.0f;
    for (index i = 0; i < v.size(); ++i) vmax = std::max(vmax, std::fabs(v.data()[i]));
    for (index b = 0; b < 2; ++b)
      for (index h = 0; h < 4; ++h)
        for (index i = 0; i < L; ++i)
          for (index d = 0; d < 12; ++d) {
            double x = 0.0;
            for (index j = 0; j < 75; ++j) x += double(w.probs(b, h, i, j)) * v(b, j, h / 2, d);
            ASSERT_NEAR(x, out(b, i, h, d), 1e-5 * vmax + 1e-7)
                << "b" << b << " h" << h << " i" << i << " d" << d;
          }
  }
}

TEST(AttentionWeights, BitIdenticalAcrossThreadsAndLayouts) {
  const tensor4 q = randn(2, 250, 4, 32), k = randn(2, 310, 2, 32);
  btensor4 allow(2, 4, 250, 310);
  std::bernoulli_distribution coin(0.8);
  for (index i = 0; i < allow.size(); ++i) allow.data()[i] = coin(rng());
  attn::sdpa_options o;
  o.causal = attn::causal::bottom_right;
  o.bool_mask = attn::view(allow).as_const();
  o.num_threads = 1;
  const weights one = run<float>(q, k, o);
  for (int threads : {2, 3, 0}) {
    o.num_threads = threads;
    const weights w = run<float>(q, k, o);
    ASSERT_EQ(std::memcmp(w.probs.data(), one.probs.data(), sizeof(float) * one.probs.size()), 0)
        << threads;
    ASSERT_EQ(std::memcmp(w.sums.data(), one.sums.data(), sizeof(float) * one.sums.size()), 0)
        << threads;
  }
  // probs stored [B, L, Hq, S] and column sums [B, S, Hq] through strides;
  // then without column sums.
  o.num_threads = 2;
  tensor4 probs_blhs(2, 250, 4, 310);
  tensor3 sums_bsh(2, 310, 4);
  const attn::strided<float, 4> pv{probs_blhs.data(),
                                   {2, 4, 250, 310},
                                   {250 * 4 * 310, 310, 4 * 310, 1}};
  const attn::strided<float, 3> sv{sums_bsh.data(), {2, 4, 310}, {310 * 4, 1, 4}};
  const attn::attention_weights_options with_sums{o, sv};
  attn::attention_weights(attn::view(q).as_const(), attn::view(k).as_const(), pv, with_sums);
  tensor4 plain(2, 4, 250, 310);
  attn::attention_weights(attn::view(q).as_const(), attn::view(k).as_const(), attn::view(plain), o);
  for (index b = 0; b < 2; ++b)
    for (index h = 0; h < 4; ++h) {
      for (index i = 0; i < 250; ++i)
        for (index j = 0; j < 310; ++j) {
          ASSERT_EQ(std::memcmp(&probs_blhs(b, i, h, j), &one.probs(b, h, i, j), sizeof(float)), 0);
          ASSERT_EQ(std::memcmp(&plain(b, h, i, j), &one.probs(b, h, i, j), sizeof(float)), 0);
        }
      for (index j = 0; j < 310; ++j)
        ASSERT_EQ(std::memcmp(&sums_bsh(b, j, h), &one.sums(b, h, j), sizeof(float)), 0);
    }
}

// Last in the file (gtest runs tests in order): the measured margins.
TEST(AttentionWeights, WorstErrorIsReported) {
  std::printf("worst error / tolerance: probs %.3f, column sums %.3f\n", worst_probs, worst_sums);
  EXPECT_LE(worst_probs, 1.0);
  EXPECT_LE(worst_sums, 1.0);
}

}  // namespace test_attention_weights
