// attn::multi_head_attention against an fp64 reference built from the
// definition: projections in double, attention by tests/reference, output
// projection in double.
//
// Tolerance: |y - ref| <= 1e-4 · max|ref|. The layer chains three fp32
// products of length <= 64 (input projection, attention, output
// projection); each contributes a relative error of order sqrt(64)·6e-8 ~
// 5e-7 per element, the attention adds at most 1e-5 of max|V| (see
// test_sdpa.cpp), and the output projection sums Hq·head_dim such terms
// with random signs (~sqrt(64) growth): a few 1e-5 relative in all, so 1e-4
// keeps a margin while a wrong head mapping, mask or projection moves the
// output by O(max|ref|). Attention weights: |p - ref| <= 1e-5 (probabilities
// in [0, 1], scores accurate to ~1e-6 relative).
#include <gtest/gtest.h>

#include <attn/multi_head.hpp>
#include <cmath>
#include <cstring>
#include <random>
#include <string>

#include "expect_error.hpp"
#include "reference/sdpa_reference.hpp"

namespace test_multi_head {

using attn::index;
using attn::tensor3;
using attn::tensor4;
using matrix = attn::multi_head_attention::matrix;
using dtensor4 = Eigen::Tensor<double, 4, Eigen::RowMajor>;

std::mt19937& rng() {
  static std::mt19937 g(1234);
  return g;
}
float randn() {
  static std::normal_distribution<float> n(0.0f, 1.0f);
  return n(rng());
}
attn::linear make_linear(index out, index in, bool bias) {
  attn::linear l;
  l.weight = matrix(out, in);
  const float s = 1.0f / std::sqrt(static_cast<float>(in));
  for (index i = 0; i < l.weight.size(); ++i) l.weight.data()[i] = randn() * s;
  if (bias) {
    l.bias = Eigen::VectorXf(out);
    for (index i = 0; i < out; ++i) l.bias[i] = randn() * 0.1f;
  }
  return l;
}
tensor3 random3(index a, index b, index c) {
  tensor3 t(a, b, c);
  for (index i = 0; i < t.size(); ++i) t.data()[i] = randn();
  return t;
}

struct layer_case {
  attn::mha_config cfg;
  bool bias = true;
  attn::mha_weights w;
  attn::multi_head_attention make() const { return attn::multi_head_attention(cfg, w); }
  index Hkv() const { return cfg.num_kv_heads ? cfg.num_kv_heads : cfg.num_heads; }
  index hd() const { return cfg.head_dim ? cfg.head_dim : cfg.embed_dim / cfg.num_heads; }
  index kdim() const { return cfg.kdim ? cfg.kdim : cfg.embed_dim; }
  index vdim() const { return cfg.vdim ? cfg.vdim : cfg.embed_dim; }
};

layer_case make_case(index E, index Hq, index Hkv, index hd, index kdim, index vdim, bool bias) {
  layer_case c;
  c.cfg.embed_dim = E;
  c.cfg.num_heads = Hq;
  c.cfg.num_kv_heads = Hkv;
  c.cfg.head_dim = hd;
  c.cfg.kdim = kdim;
  c.cfg.vdim = vdim;
  c.bias = bias;
  c.w.q = make_linear(Hq * c.hd(), E, bias);
  c.w.k = make_linear(c.Hkv() * c.hd(), c.kdim(), bias);
  c.w.v = make_linear(c.Hkv() * c.hd(), c.vdim(), bias);
  c.w.o = make_linear(E, Hq * c.hd(), bias);
  return c;
}

// x [B, N, in] · Wᵀ + b in double, as [B, N, heads, hd].
dtensor4 project(const tensor3& x, const attn::linear& l, index heads, index hd) {
  const index B = x.dimension(0), N = x.dimension(1), in = x.dimension(2);
  dtensor4 y(B, N, heads, hd);
  for (index b = 0; b < B; ++b)
    for (index n = 0; n < N; ++n)
      for (index o = 0; o < heads * hd; ++o) {
        double acc = l.bias.size() ? l.bias[o] : 0.0;
        for (index i = 0; i < in; ++i) acc += double(x(b, n, i)) * l.weight(o, i);
        y(b, n, o / hd, o % hd) = acc;
      }
  return y;
}

// The whole layer in double; opt holds the reference's masks.
Eigen::Tensor<double, 3, Eigen::RowMajor> reference(const layer_case& c, const tensor3& xq,
                                                    const tensor3& xk, const tensor3& xv,
                                                    const attn_ref::options& opt) {
  const index B = xq.dimension(0), L = xq.dimension(1), E = c.cfg.embed_dim;
  const index Hq = c.cfg.num_heads, hd = c.hd();
  dtensor4 q = project(xq, c.w.q, Hq, hd), k = project(xk, c.w.k, c.Hkv(), hd),
           v = project(xv, c.w.v, c.Hkv(), hd);
  const attn_ref::result r = attn_ref::sdpa(attn::view(q).as_const(), attn::view(k).as_const(),
                                            attn::view(v).as_const(), opt);
  Eigen::Tensor<double, 3, Eigen::RowMajor> y(B, L, E);
  for (index b = 0; b < B; ++b)
    for (index i = 0; i < L; ++i)
      for (index e = 0; e < E; ++e) {
        double acc = c.w.o.bias.size() ? c.w.o.bias[e] : 0.0;
        for (index f = 0; f < Hq * hd; ++f) acc += r.o(b, i, f / hd, f % hd) * c.w.o.weight(e, f);
        y(b, i, e) = acc;
      }
  return y;
}

template <class A, class R>
void expect_close(const A& got, const R& ref, double rel, const std::string& what) {
  double worst = 0, scale = 0;
  for (index i = 0; i < ref.size(); ++i) scale = std::max(scale, std::fabs(double(ref.data()[i])));
  for (index i = 0; i < ref.size(); ++i)
    worst = std::max(worst, std::fabs(double(got.data()[i]) - double(ref.data()[i])));
  EXPECT_LE(worst, rel * scale) << what << ": worst " << worst << " scale " << scale;
}

struct shape_case {
  index E, Hq, Hkv, hd, kdim, vdim;
  bool bias;
};

class MhaShapes : public ::testing::TestWithParam<shape_case> {};

TEST_P(MhaShapes, MatchesReferenceForSelfAndCrossAttentionAndEveryMask) {
  const shape_case s = GetParam();
  const layer_case c = make_case(s.E, s.Hq, s.Hkv, s.hd, s.kdim, s.vdim, s.bias);
  const attn::multi_head_attention layer = c.make();
  const index B = 2, L = 9, S = 13;
  const tensor3 xq = random3(B, L, s.E), xk = random3(B, S, c.kdim()), xv = random3(B, S, c.vdim());

  // No mask, cross-attention.
  expect_close(layer.forward(xq, xk, xv), reference(c, xq, xk, xv, {}), 1e-4, "plain");

  // Causal (both alignments), key lengths, window, bool and additive masks.
  Eigen::Tensor<bool, 2, Eigen::RowMajor> allow(L, S);
  Eigen::Tensor<float, 2, Eigen::RowMajor> add(L, S);
  for (index i = 0; i < L; ++i)
    for (index j = 0; j < S; ++j) {
      allow(i, j) = (i + 2 * j) % 5 != 0;
      add(i, j) = 0.3f * std::sin(float(i * S + j));
    }
  for (attn::causal cz : {attn::causal::top_left, attn::causal::bottom_right}) {
    attn::mha_options o;
    o.attention.causal = cz;
    o.attention.key_lengths = {S, 7};
    o.attention.window = attn::sliding_window{4, attn::unbounded, attn::alignment::bottom_right};
    o.attention.bool_mask = attn::broadcast_mask(allow, B, s.Hq, L, S);
    o.attention.additive_mask = attn::broadcast_mask(add, B, s.Hq, L, S);
    attn_ref::options r;
    r.causal = cz;
    r.key_lengths = {S, 7};
    r.window = true;
    r.window_left = 4;
    r.window_right = attn::unbounded;
    r.allow = [&](index, index, index i, index j) { return allow(i, j); };
    r.bias = [&](index, index, index i, index j) { return double(add(i, j)); };
    expect_close(layer.forward(xq, xk, xv, o), reference(c, xq, xk, xv, r), 1e-4, "masked");
  }
}

INSTANTIATE_TEST_SUITE_P(Layers, MhaShapes,
                         ::testing::Values(shape_case{32, 4, 0, 0, 0, 0, true},   // plain MHA
                                           shape_case{32, 4, 0, 0, 0, 0, false},  // no biases
                                           shape_case{48, 8, 2, 0, 0, 0, true},   // GQA 8/2
                                           shape_case{48, 8, 1, 0, 0, 0, false},  // MQA
                                           shape_case{40, 4, 2, 16, 24, 12,
                                                      true},  // head_dim != E/H, kdim != vdim
                                           shape_case{30, 3, 3, 7, 11, 5, true}));  // odd sizes

TEST(MhaWeights, AveragedAndPerHeadMatchTheDefinition) {
  const layer_case c = make_case(32, 4, 2, 0, 0, 0, true);
  const attn::multi_head_attention layer = c.make();
  const index B = 2, L = 6, S = 6;
  const tensor3 x = random3(B, L, 32);
  attn::mha_options o;
  o.attention.causal = attn::causal::top_left;
  o.weights = attn::weights_mode::per_head;
  tensor4 per_head, averaged;
  const tensor3 y1 = layer.forward(x, o, &per_head);
  o.weights = attn::weights_mode::averaged;
  const tensor3 y2 = layer.forward(x, o, &averaged);
  // The fast path's output does not depend on whether weights were asked for.
  EXPECT_EQ(0, std::memcmp(y1.data(), y2.data(), sizeof(float) * y1.size()));
  ASSERT_EQ(per_head.dimension(1), 4);
  ASSERT_EQ(averaged.dimension(1), 1);
  // Reference probabilities from the double projections.
  const dtensor4 q = project(x, c.w.q, 4, 8), k = project(x, c.w.k, 2, 8);
  for (index b = 0; b < B; ++b)
    for (index i = 0; i < L; ++i) {
      std::vector<double> mean(S, 0.0);
      for (index h = 0; h < 4; ++h) {
        std::vector<double> p(S, 0.0);
        double m = -INFINITY, sum = 0;
        for (index j = 0; j <= i; ++j) {
          double s = 0;
          for (index d = 0; d < 8; ++d) s += q(b, i, h, d) * k(b, j, h / 2, d);
          p[j] = s / std::sqrt(8.0);
          m = std::max(m, p[j]);
        }
        for (index j = 0; j <= i; ++j) sum += (p[j] = std::exp(p[j] - m));
        for (index j = 0; j < S; ++j) {
          const double ref = j <= i ? p[j] / sum : 0.0;
          EXPECT_NEAR(per_head(b, h, i, j), ref, 1e-5);
          mean[j] += ref / 4;
        }
      }
      double row = 0;
      for (index j = 0; j < S; ++j) {
        EXPECT_NEAR(averaged(b, 0, i, j), mean[j], 1e-5);
        row += averaged(b, 0, i, j);
      }
      EXPECT_NEAR(row, 1.0, 1e-5);
    }
}

// Prefill, then token by token, then a chunk, through the layer and a cache,
// equals one causal forward over the whole sequence (with RoPE at the right
// positions).
template <class Storage>
void check_cached(double rel) {
  layer_case c = make_case(48, 8, 2, 0, 0, 0, true);
  attn::mha_rope rope{std::make_shared<attn::rope_table>(64, 6), attn::rope_layout::half_split};
  const attn::multi_head_attention layer(c.cfg, c.w, rope);
  const index B = 2, N = 40;
  const tensor3 x = random3(B, N, 48);
  attn::mha_options full_opt;
  full_opt.attention.causal = attn::causal::bottom_right;
  const tensor3 full = layer.forward(x, full_opt);

  attn::kv_cache<Storage> cache(B, 64, 2, 6);
  tensor3 inc(B, N, 48);
  index t = 0;
  auto step = [&](index n) {
    tensor3 part = x.slice(Eigen::array<index, 3>{0, t, 0}, Eigen::array<index, 3>{B, n, 48});
    const tensor3 y = layer.forward(part, cache);
    inc.slice(Eigen::array<index, 3>{0, t, 0}, Eigen::array<index, 3>{B, n, 48}) = y;
    t += n;
  };
  step(17);
  while (t < 30) step(1);
  step(N - t);
  EXPECT_EQ(cache.lengths(), std::vector<index>(B, N));
  expect_close(inc, full, rel, "cached vs full");
}

TEST(MhaCache, FloatCacheEqualsFullForward) { check_cached<float>(1e-4); }
// bf16 keeps 8 significant bits: K/V rounding of 2^-9 relative moves the
// scores and outputs by about that much; 2e-2 of max|y| bounds it.
TEST(MhaCache, Bfloat16CacheWithinRounding) { check_cached<Eigen::bfloat16>(2e-2); }

TEST(MhaCache, OverflowThrowsAndLeavesCacheUnchanged) {
  const layer_case c = make_case(32, 4, 0, 0, 0, 0, true);
  const attn::multi_head_attention layer = c.make();
  attn::kv_cache<float> cache(1, 8, 4, 8);
  (void)layer.forward(random3(1, 6, 32), cache);
  const std::vector<float> before(cache.keys().data, cache.keys().data + 8 * 4 * 8);
  EXPECT_THROW((void)layer.forward(random3(1, 3, 32), cache), attn::error);
  EXPECT_EQ(cache.lengths(), std::vector<index>{6});
  EXPECT_EQ(0, std::memcmp(before.data(), cache.keys().data, before.size() * sizeof(float)));
}

// The same output bits for any thread count, projections included.
TEST(MhaThreads, BitIdenticalForOneAndTwoThreads) {
  const layer_case c = make_case(96, 8, 2, 0, 0, 0, true);
  const attn::multi_head_attention layer = c.make();
  const tensor3 x = random3(2, 70, 96);
  attn::mha_options one, two;
  one.attention.num_threads = 1;
  two.attention.num_threads = 2;
  one.attention.causal = two.attention.causal = attn::causal::bottom_right;
  const tensor3 a = layer.forward(x, one), b = layer.forward(x, two);
  EXPECT_EQ(0, std::memcmp(a.data(), b.data(), sizeof(float) * a.size()));
}

TEST(MhaErrors, BadConfigAndWeights) {
  layer_case c = make_case(32, 4, 0, 0, 0, 0, true);
  attn_test::expect_error("config.num_kv_heads",
                          [&] {
                            c.cfg.num_kv_heads = 3;
                            (void)c.make();
                          },
                          {"config.num_kv_heads"});
  c.cfg.num_kv_heads = 0;
  c.cfg.num_heads = 5;
  attn_test::expect_error("config.head_dim", [&] { (void)c.make(); }, {"config.head_dim"});
  c.cfg.num_heads = 4;
  c.w.k.weight = matrix(32, 31);
  attn_test::expect_error("weights.k", [&] { (void)c.make(); }, {"weights.k"});
  c = make_case(32, 4, 0, 0, 0, 0, true);
  c.w.o.bias = Eigen::VectorXf(5);
  attn_test::expect_error("weights.o", [&] { (void)c.make(); }, {"weights.o"});
  c = make_case(32, 4, 0, 0, 0, 0, true);
  const attn::multi_head_attention layer = c.make();
  attn_test::expect_error("query", [&] { (void)layer.forward(random3(1, 3, 31)); }, {"query"});
  attn::mha_options o;
  o.weights = attn::weights_mode::averaged;
  attn_test::expect_error("weights", [&] { (void)layer.forward(random3(1, 3, 32), o); },
                          {"weights"});
  attn::kv_cache<float> wrong(1, 8, 2, 8);
  attn_test::expect_error("cache", [&] { (void)layer.forward(random3(1, 3, 32), wrong); },
                          {"cache"});
}

}  // namespace test_multi_head
