// attn::multi_head_latent_attention (attn/mla.hpp), its cache
// (attn/mla_cache.hpp), YaRN (attn/yarn.hpp) and the latent attention
// kernel, against the fp64 reference in tests/reference/mla_reference.hpp.
//
// Tolerances.
//  * Layer vs fp64: |y - ref| <= 1e-4 · max|ref|. The float layer chains
//    five fp32 reductions (query projection(s), key projection, scores over
//    qk or rank + rope terms, the value sum, and for the absorbed path the
//    W_UK / W_UV products, then wo), each of at most a few hundred terms:
//    ~sqrt(n)·6e-8 ≈ 1e-6 relative each for random signs, plus exp and the
//    softmax scale (3e-7), and the latent path reorders the sums
//    (q_nope·(W_UK c) vs (q_nope W_UK)·c). A few 1e-6 relative, up to 1e-5
//    at worst; 1e-4 leaves a margin while a wrong head split, position,
//    scale or mask moves the output by O(max|ref|).
//  * naive vs absorbed on the same cache: the same 1e-4 · max|y| (the two
//    differ only by fp32 reassociation).
//  * bf16 cache vs fp64: the cached rows carry bf16's 2^-9 relative rounding
//    into every score and value: |y - ref| <= 2e-2 · max|ref| (measured well
//    under half of it); naive vs absorbed on a bf16 cache stays at 1e-4
//    (both read the same rounded rows).
//  * Prefill then decode vs one forward: 1e-4 · max|y| (same arithmetic in
//    another order).
#include <gtest/gtest.h>

#include <algorithm>
#include <attn/mla.hpp>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "expect_error.hpp"
#include "reference/mla_reference.hpp"

namespace test_mla {

using attn::index;
using attn::tensor3;
using matrix = attn::mla_weights::matrix;

std::mt19937& rng() {
  static std::mt19937 g(4321);
  return g;
}
float randn() {
  static std::normal_distribution<float> n(0.0f, 1.0f);
  return n(rng());
}
matrix random_matrix(index rows, index cols) {
  matrix m(rows, cols);
  const float s = 1.0f / std::sqrt(static_cast<float>(cols));
  for (index i = 0; i < m.size(); ++i) m.data()[i] = randn() * s;
  return m;
}
Eigen::VectorXf random_norm(index n) {
  Eigen::VectorXf v(n);
  for (index i = 0; i < n; ++i) v[i] = 1.0f + 0.2f * randn();
  return v;
}
tensor3 random_x(index B, index T, index dim) {
  tensor3 t(B, T, dim);
  for (index i = 0; i < t.size(); ++i) t.data()[i] = randn();
  return t;
}
std::vector<double> to_double(const float* p, index n) { return std::vector<double>(p, p + n); }

// A layer with random weights and its fp64 twin.
struct mla_case {
  attn::mla_config cfg;
  attn::mla_weights w;
  attn_ref::mla_shape shape() const {
    return {cfg.dim,     cfg.n_heads,         cfg.q_lora_rank, cfg.kv_lora_rank,
            cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim, cfg.norm_eps};
  }
  attn_ref::mla_params params() const {
    attn_ref::mla_params p;
    p.wq = to_double(w.wq.data(), w.wq.size());
    p.wq_a = to_double(w.wq_a.data(), w.wq_a.size());
    p.q_norm = to_double(w.q_norm.data(), w.q_norm.size());
    p.wq_b = to_double(w.wq_b.data(), w.wq_b.size());
    p.wkv_a = to_double(w.wkv_a.data(), w.wkv_a.size());
    p.kv_norm = to_double(w.kv_norm.data(), w.kv_norm.size());
    p.wkv_b = to_double(w.wkv_b.data(), w.wkv_b.size());
    p.wo = to_double(w.wo.data(), w.wo.size());
    return p;
  }
  attn::multi_head_latent_attention make() const { return {cfg, w}; }

  // fp64 output of sequence b of x [B, N, dim].
  std::vector<double> reference(const tensor3& x, index b) const {
    const index N = x.dimension(1), dim = x.dimension(2);
    const std::vector<double> xb = to_double(x.data() + b * N * dim, N * dim);
    const attn_ref::mla_shape s = shape();
    const std::vector<double> f =
        cfg.yarn() ? attn_ref::yarn_inv_freq(s.rope, cfg.rope_theta, cfg.rope_factor,
                                             cfg.original_seq_len, cfg.beta_fast, cfg.beta_slow)
                   : attn::rope_table::default_inv_freq(s.rope, cfg.rope_theta);
    double scale = 1.0 / std::sqrt(static_cast<double>(s.qk()));
    if (cfg.yarn()) {
      const double m = 0.1 * cfg.mscale * std::log(cfg.rope_factor) + 1.0;
      scale *= m * m;
    }
    return attn_ref::mla_forward(s, params(), f, scale, xb, N);
  }
};

// Small shapes by default: YaRN in force from position 0 (max_seq_len >
// original_seq_len) and positions that pass original_seq_len in the tests.
mla_case make_case(index dim, index heads, index q_lora, index rank, index nope, index rope,
                   index v) {
  mla_case c;
  c.cfg.dim = dim;
  c.cfg.n_heads = heads;
  c.cfg.q_lora_rank = q_lora;
  c.cfg.kv_lora_rank = rank;
  c.cfg.qk_nope_head_dim = nope;
  c.cfg.qk_rope_head_dim = rope;
  c.cfg.v_head_dim = v;
  c.cfg.original_seq_len = 16;
  c.cfg.max_seq_len = 1024;
  c.cfg.rope_factor = 4.0;
  c.cfg.mscale = 0.707;
  const index qk = nope + rope;
  if (q_lora == 0) {
    c.w.wq = random_matrix(heads * qk, dim);
  } else {
    c.w.wq_a = random_matrix(q_lora, dim);
    c.w.q_norm = random_norm(q_lora);
    c.w.wq_b = random_matrix(heads * qk, q_lora);
  }
  c.w.wkv_a = random_matrix(rank + rope, dim);
  c.w.kv_norm = random_norm(rank);
  c.w.wkv_b = random_matrix(heads * (nope + v), rank);
  c.w.wo = random_matrix(dim, heads * v);
  return c;
}

double max_abs(const std::vector<double>& v) {
  double m = 0.0;
  for (double x : v) m = std::max(m, std::abs(x));
  return m;
}

// |y[b] - ref| <= tol · max|ref| over sequence b; returns the worst ratio.
double check_against(const tensor3& y, index b, const std::vector<double>& ref, double tol,
                     const std::string& label) {
  const index N = y.dimension(1), dim = y.dimension(2);
  const double bound = tol * max_abs(ref);
  double worst = 0.0;
  for (index i = 0; i < N * dim; ++i) {
    const double got = y.data()[b * N * dim + i];
    const double err = std::abs(got - ref[static_cast<std::size_t>(i)]);
    if (!(err <= bound)) {
      ADD_FAILURE() << label << ": element " << i << " got " << got << " want "
                    << ref[static_cast<std::size_t>(i)] << " (bound " << bound << ")";
      return err / bound;
    }
    worst = std::max(worst, err / bound);
  }
  return worst;
}

double max_diff(const tensor3& a, const tensor3& b) {
  double m = 0.0;
  for (index i = 0; i < a.size(); ++i)
    m = std::max(m, static_cast<double>(std::abs(a.data()[i] - b.data()[i])));
  return m;
}
double max_abs(const tensor3& a) {
  double m = 0.0;
  for (index i = 0; i < a.size(); ++i) m = std::max(m, static_cast<double>(std::abs(a.data()[i])));
  return m;
}

attn::mla_options with_path(attn::mla_path p, int threads = 0) {
  attn::mla_options o;
  o.path = p;
  o.num_threads = threads;
  return o;
}

// Tokens [t0, t0 + n) of x [B, N, dim].
tensor3 slice(const tensor3& x, index t0, index n) {
  const index B = x.dimension(0), dim = x.dimension(2);
  tensor3 s(B, n, dim);
  for (index b = 0; b < B; ++b)
    for (index t = 0; t < n; ++t)
      for (index d = 0; d < dim; ++d) s(b, t, d) = x(b, t0 + t, d);
  return s;
}

// ---------------------------------------------------------------------------
// Config: scale, YaRN, cache size

TEST(MlaConfig, SoftmaxScaleOfThePresets) {
  // 192^-0.5 · (0.1 · mscale · ln 40 + 1)².
  EXPECT_NEAR(attn::mla_config::deepseek_v3().softmax_scale(), 0.1352337788, 1e-9);
  EXPECT_NEAR(attn::mla_config::deepseek_v2_lite().softmax_scale(), 0.1147213867, 1e-9);
  EXPECT_NEAR(attn::mla_config::deepseek_v2().softmax_scale(), 0.1147213867, 1e-9);
  attn::mla_config no_yarn = attn::mla_config::deepseek_v3();
  no_yarn.max_seq_len = no_yarn.original_seq_len;  // YaRN off: plain 192^-0.5
  EXPECT_NEAR(no_yarn.softmax_scale(), 1.0 / std::sqrt(192.0), 1e-12);
}

TEST(MlaConfig, PresetShapes) {
  const attn::mla_config v2l = attn::mla_config::deepseek_v2_lite(),
                         v2 = attn::mla_config::deepseek_v2(),
                         v3 = attn::mla_config::deepseek_v3();
  EXPECT_EQ(v2l.dim, 2048);
  EXPECT_EQ(v2l.n_heads, 16);
  EXPECT_EQ(v2l.q_lora_rank, 0);
  EXPECT_EQ(v2.dim, 5120);
  EXPECT_EQ(v2.n_heads, 128);
  EXPECT_EQ(v2.q_lora_rank, 1536);
  EXPECT_EQ(v3.dim, 7168);
  EXPECT_EQ(v3.n_heads, 128);
  EXPECT_EQ(v3.q_lora_rank, 1536);
  for (const auto& c : {v2l, v2, v3}) {
    EXPECT_EQ(c.kv_lora_rank, 512);
    EXPECT_EQ(c.qk_nope_head_dim, 128);
    EXPECT_EQ(c.qk_rope_head_dim, 64);
    EXPECT_EQ(c.v_head_dim, 128);
    EXPECT_EQ(c.qk_head_dim(), 192);
    EXPECT_TRUE(c.yarn());
    EXPECT_EQ(c.rope_theta, 10000.0);
    EXPECT_EQ(c.rope_factor, 40.0);
    EXPECT_EQ(c.original_seq_len, 4096);
  }
}

TEST(Yarn, MatchesTheClosedFormInFp64) {
  struct yc {
    index dim;
    double theta, factor;
    index orig;
    double fast, slow;
  };
  for (const yc& c : {yc{64, 10000, 40, 4096, 32, 1}, yc{128, 500000, 8, 8192, 32, 1},
                      yc{16, 10000, 4, 16, 32, 1}, yc{2, 10000, 2, 4096, 32, 1},
                      yc{64, 10000, 1, 4096, 32, 32}}) {
    const std::vector<double> got =
        attn::yarn_inv_freq(c.dim, {c.theta, c.factor, c.orig, c.fast, c.slow});
    const std::vector<double> want =
        attn_ref::yarn_inv_freq(c.dim, c.theta, c.factor, c.orig, c.fast, c.slow);
    ASSERT_EQ(got.size(), want.size());
    for (std::size_t i = 0; i < got.size(); ++i)
      EXPECT_NEAR(got[i], want[i], 1e-14 * want[i]) << "dim " << c.dim << " pair " << i;
  }
}

TEST(Yarn, DeepSeekTableKeepsFastPairsAndInterpolatesSlowOnes) {
  // dim 64, theta 1e4, original 4096: the ramp runs from pair 10
  // (floor 10.47, 32 turns) to pair 23 (ceil 22.51, 1 turn).
  const std::vector<double> f = attn::yarn_inv_freq(64, {10000, 40, 4096, 32, 1});
  ASSERT_EQ(f.size(), 32u);
  for (index i = 0; i <= 10; ++i)
    EXPECT_DOUBLE_EQ(f[i], std::pow(10000.0, -2.0 * i / 64)) << "pair " << i;
  for (index i = 23; i < 32; ++i)
    EXPECT_DOUBLE_EQ(f[i], std::pow(10000.0, -2.0 * i / 64) / 40) << "pair " << i;
  const double ramp = (16.0 - 10.0) / 13.0;  // pair 16, in between
  const double base = std::pow(10000.0, -0.5);
  EXPECT_NEAR(f[16], base / 40 * ramp + base * (1 - ramp), 1e-15);
}

TEST(MlaCache, HoldsOneLatentRowPerToken) {
  const attn::mla_config v3 = attn::mla_config::deepseek_v3();
  attn::mla_cache<Eigen::bfloat16> cache(1, 1000, v3.kv_lora_rank, v3.qk_rope_head_dim);
  EXPECT_EQ(cache.row_width(), 576);
  EXPECT_EQ(cache.bytes_per_token(), 576u * 2u);
  EXPECT_EQ(cache.bytes(), 1000u * 576u * 2u);
  // Expanded MHA K and V for the same layer: 128 · (192 + 128) = 40960 a
  // token, 71x more.
  EXPECT_EQ(v3.n_heads * (v3.qk_head_dim() + v3.v_head_dim), 40960);
  attn::mla_cache<float> f(2, 10, 512, 64);
  EXPECT_EQ(f.bytes(), 2u * 10u * 576u * 4u);
  EXPECT_EQ(f.lengths(), std::vector<index>({0, 0}));
}

// ---------------------------------------------------------------------------
// The layer against fp64

struct shape_case {
  const char* name;
  index dim, heads, q_lora, rank, nope, rope, v;
};
const shape_case kShapes[] = {
    {"v2lite_like", 48, 3, 0, 32, 16, 8, 12},
    {"q_lora", 40, 2, 24, 32, 16, 8, 16},
    {"odd_sizes", 37, 5, 11, 19, 7, 6, 9},
    {"one_head_no_nope", 16, 1, 0, 8, 0, 4, 5},
    {"no_rope", 24, 4, 0, 16, 8, 0, 8},
};

TEST(MlaLayer, BothPathsMatchTheReferenceInPrefill) {
  for (const shape_case& sc : kShapes) {
    for (index N : {1, 7, 40}) {
      const mla_case c = make_case(sc.dim, sc.heads, sc.q_lora, sc.rank, sc.nope, sc.rope, sc.v);
      const auto layer = c.make();
      const tensor3 x = random_x(2, N, sc.dim);
      for (attn::mla_path path : {attn::mla_path::naive, attn::mla_path::absorbed}) {
        const std::string label = std::string(sc.name) + " N=" + std::to_string(N) +
                                  (path == attn::mla_path::naive ? " naive" : " absorbed");
        auto cache = layer.make_cache<float>(2, N + 3);
        const tensor3 y = layer.forward(x, cache, with_path(path));
        EXPECT_EQ(cache.lengths(), std::vector<index>({N, N}));
        for (index b = 0; b < 2; ++b) check_against(y, b, c.reference(x, b), 1e-4, label);
      }
    }
  }
}

TEST(MlaLayer, PrefillThenDecodeEqualsOneForward) {
  for (const shape_case& sc : kShapes) {
    const mla_case c = make_case(sc.dim, sc.heads, sc.q_lora, sc.rank, sc.nope, sc.rope, sc.v);
    const auto layer = c.make();
    const index N = 30, P = 11;
    const tensor3 x = random_x(2, N, sc.dim);
    for (attn::mla_path prefill : {attn::mla_path::naive, attn::mla_path::absorbed})
      for (attn::mla_path decode : {attn::mla_path::naive, attn::mla_path::absorbed}) {
        auto full_cache = layer.make_cache<float>(2, N);
        const tensor3 full = layer.forward(x, full_cache, with_path(prefill));
        auto cache = layer.make_cache<float>(2, N);
        tensor3 steps(2, N, sc.dim);
        const tensor3 head = layer.forward(slice(x, 0, P), cache, with_path(prefill));
        for (index t = 0; t < P; ++t)
          for (index b = 0; b < 2; ++b)
            for (index d = 0; d < sc.dim; ++d) steps(b, t, d) = head(b, t, d);
        // The rest in a chunk of 3, then one token at a time.
        const tensor3 chunk = layer.forward(slice(x, P, 3), cache, with_path(decode));
        for (index t = 0; t < 3; ++t)
          for (index b = 0; b < 2; ++b)
            for (index d = 0; d < sc.dim; ++d) steps(b, P + t, d) = chunk(b, t, d);
        for (index t = P + 3; t < N; ++t) {
          const tensor3 y = layer.forward(slice(x, t, 1), cache, with_path(decode));
          for (index b = 0; b < 2; ++b)
            for (index d = 0; d < sc.dim; ++d) steps(b, t, d) = y(b, 0, d);
        }
        EXPECT_EQ(cache.lengths(), std::vector<index>({N, N}));
        EXPECT_LE(max_diff(steps, full), 1e-4 * max_abs(full)) << sc.name;
        for (index b = 0; b < 2; ++b)
          check_against(steps, b, c.reference(x, b), 1e-4, std::string(sc.name) + " steps");
      }
  }
}

TEST(MlaLayer, RealHeadShapesAcrossChunkedCaches) {
  // V2-Lite's per-head widths (rank 512, rope 64, nope 128, v 128: the
  // kernel's real tile shapes) on a narrow model, a cache long enough to be
  // cut into chunks (> 2 · 512 keys), decoding after a long prefill.
  const mla_case c = make_case(64, 4, 0, 512, 128, 64, 128);
  const auto layer = c.make();
  const index N = 1100;
  const tensor3 x = random_x(1, N, 64);
  auto cache = layer.make_cache<float>(1, N);
  const tensor3 pre = layer.forward(slice(x, 0, N - 2), cache, with_path(attn::mla_path::naive));
  const tensor3 d1 = layer.forward(slice(x, N - 2, 1), cache, with_path(attn::mla_path::absorbed));
  const tensor3 d2 = layer.forward(slice(x, N - 1, 1), cache, with_path(attn::mla_path::naive));
  const std::vector<double> ref = c.reference(x, 0);
  const double scale = max_abs(ref);
  auto check_row = [&](const tensor3& y, index t, const char* what) {
    for (index d = 0; d < 64; ++d)
      EXPECT_NEAR(y(0, 0, d), ref[static_cast<std::size_t>(t * 64 + d)], 1e-4 * scale) << what;
  };
  check_row(d1, N - 2, "absorbed decode");
  check_row(d2, N - 1, "naive decode");
  for (index t : {index{0}, index{1}, index{517}, N - 3})
    for (index d = 0; d < 64; ++d)
      EXPECT_NEAR(pre(0, t, d), ref[static_cast<std::size_t>(t * 64 + d)], 1e-4 * scale) << t;
}

TEST(MlaLayer, NaiveAndAbsorbedAgreeOnBf16AndHalfCaches) {
  const mla_case c = make_case(48, 3, 0, 32, 16, 8, 12);
  const auto layer = c.make();
  const tensor3 x = random_x(2, 20, 48);
  auto run = [&](auto tag, attn::mla_path path) {
    using S = decltype(tag);
    auto cache = layer.make_cache<S>(2, 21);
    tensor3 y = layer.forward(slice(x, 0, 19), cache, with_path(path));
    return std::make_pair(y, layer.forward(slice(x, 19, 1), cache, with_path(path)));
  };
  for (int which = 0; which < 2; ++which) {
    const auto a = which ? run(Eigen::half(), attn::mla_path::naive)
                         : run(Eigen::bfloat16(), attn::mla_path::naive);
    const auto b = which ? run(Eigen::half(), attn::mla_path::absorbed)
                         : run(Eigen::bfloat16(), attn::mla_path::absorbed);
    EXPECT_LE(max_diff(a.first, b.first), 1e-4 * max_abs(a.first));
    EXPECT_LE(max_diff(a.second, b.second), 1e-4 * max_abs(a.second));
    // Against fp64 with the storage's rounding of c and k_pe.
    for (index bb = 0; bb < 2; ++bb)
      check_against(a.first, bb, c.reference(slice(x, 0, 19), bb), 2e-2, "rounded cache");
  }
}

TEST(MlaLayer, SequencesAtDifferentLengths) {
  // Batch of two; sequence 1 is rolled back, so the next step has each
  // sequence at its own position and causal limit.
  const mla_case c = make_case(32, 2, 16, 24, 8, 8, 8);
  const auto layer = c.make();
  const tensor3 x = random_x(2, 12, 32);
  for (attn::mla_path path : {attn::mla_path::naive, attn::mla_path::absorbed}) {
    auto cache = layer.make_cache<float>(2, 16);
    layer.forward(slice(x, 0, 10), cache, with_path(path));
    cache.truncate(1, 6);
    // Next two tokens: sequence 0 continues with x[10..11], sequence 1
    // re-feeds x[6..7] at positions 6 and 7.
    tensor3 next(2, 2, 32);
    for (index t = 0; t < 2; ++t)
      for (index d = 0; d < 32; ++d) {
        next(0, t, d) = x(0, 10 + t, d);
        next(1, t, d) = x(1, 6 + t, d);
      }
    const tensor3 y = layer.forward(next, cache, with_path(path));
    EXPECT_EQ(cache.lengths(), std::vector<index>({12, 8}));
    const std::vector<double> r0 = c.reference(x, 0), r1 = c.reference(slice(x, 0, 8), 1);
    for (index t = 0; t < 2; ++t)
      for (index d = 0; d < 32; ++d) {
        EXPECT_NEAR(y(0, t, d), r0[static_cast<std::size_t>((10 + t) * 32 + d)],
                    1e-4 * max_abs(r0));
        EXPECT_NEAR(y(1, t, d), r1[static_cast<std::size_t>((6 + t) * 32 + d)],
                    1e-4 * max_abs(r1));
      }
  }
}

TEST(MlaLayer, AutomaticPathFollowsTheTokenCount) {
  attn::mla_options o;
  EXPECT_EQ(attn::multi_head_latent_attention::path_for(1, o), attn::mla_path::absorbed);
  EXPECT_EQ(attn::multi_head_latent_attention::path_for(o.absorbed_max_tokens, o),
            attn::mla_path::absorbed);
  EXPECT_EQ(attn::multi_head_latent_attention::path_for(o.absorbed_max_tokens + 1, o),
            attn::mla_path::naive);
  o.path = attn::mla_path::naive;
  EXPECT_EQ(attn::multi_head_latent_attention::path_for(1, o), attn::mla_path::naive);
}

TEST(MlaLayer, BitIdenticalForAnyThreadCount) {
  const mla_case c = make_case(64, 8, 32, 64, 32, 16, 32);
  const auto layer = c.make();
  const tensor3 x = random_x(1, 1300, 64);  // decode against > 2 chunks of keys
  for (attn::mla_path path : {attn::mla_path::naive, attn::mla_path::absorbed}) {
    tensor3 y[3];
    for (int threads = 1; threads <= 3; ++threads) {
      auto cache = layer.make_cache<Eigen::bfloat16>(1, 1300);
      layer.forward(slice(x, 0, 1299), cache, with_path(attn::mla_path::naive, threads));
      y[threads - 1] = layer.forward(slice(x, 1299, 1), cache, with_path(path, threads));
    }
    EXPECT_EQ(std::memcmp(y[0].data(), y[1].data(), sizeof(float) * y[0].size()), 0);
    EXPECT_EQ(std::memcmp(y[0].data(), y[2].data(), sizeof(float) * y[0].size()), 0);
  }
}

TEST(MlaLayer, ExtremeInputsStayFinite) {
  const mla_case c = make_case(32, 2, 0, 16, 8, 8, 8);
  const auto layer = c.make();
  tensor3 x = random_x(1, 9, 32);
  for (index i = 0; i < x.size(); ++i) x.data()[i] *= 1e4f;  // scores far past exp's range
  for (attn::mla_path path : {attn::mla_path::naive, attn::mla_path::absorbed}) {
    auto cache = layer.make_cache<float>(1, 9);
    const tensor3 y = layer.forward(x, cache, with_path(path));
    for (index i = 0; i < y.size(); ++i) ASSERT_TRUE(std::isfinite(y.data()[i])) << i;
  }
}

TEST(MlaLayer, EmptyCallsAreNoOps) {
  const mla_case c = make_case(16, 2, 0, 8, 4, 4, 4);
  const auto layer = c.make();
  auto cache = layer.make_cache<float>(2, 4);
  EXPECT_EQ(layer.forward(tensor3(2, 0, 16), cache).size(), 0);
  EXPECT_EQ(cache.lengths(), std::vector<index>({0, 0}));
  auto none = layer.make_cache<float>(0, 4);
  EXPECT_EQ(layer.forward(tensor3(0, 3, 16), none).size(), 0);
}

// ---------------------------------------------------------------------------
// Paged latent cache, mixed batches and batch invariance
//
// Every comparison here is bitwise: a sequence's rows must be the bits it
// gets alone in an mla_cache (docs/design.md 2.4b), whatever the block
// size, the other sequences of the call, their order or the thread count.

// One step's new tokens for some sequences: piece i goes to sequence seqs[i].
struct paged_step {
  std::vector<index> seqs;
  std::vector<tensor3> pieces;  // [1, n_i, dim] each
};

// x [1, total, dim] and cu_seqlens of the pieces, packed in order.
tensor3 pack(const std::vector<tensor3>& pieces, std::vector<index>& cu) {
  const index dim = pieces.empty() ? 0 : pieces[0].dimension(2);
  cu.assign(1, 0);
  for (const tensor3& p : pieces) cu.push_back(cu.back() + p.dimension(1));
  tensor3 x(1, cu.back(), dim);
  for (std::size_t i = 0; i < pieces.size(); ++i)
    std::copy_n(pieces[i].data(), pieces[i].size(), x.data() + cu[i] * dim);
  return x;
}

// Rows [t0, t0 + n) of y [1, total, dim] as [1, n, dim].
tensor3 rows_of(const tensor3& y, index t0, index n) {
  const index dim = y.dimension(2);
  tensor3 r(1, n, dim);
  std::copy_n(y.data() + t0 * dim, n * dim, r.data());
  return r;
}

bool same_bits(const tensor3& a, const tensor3& b) {
  return a.dimensions() == b.dimensions() &&
         (a.size() == 0 || std::memcmp(a.data(), b.data(), sizeof(float) * a.size()) == 0);
}

// A history: per sequence, the chunks it is fed one step after another.
using history = std::vector<std::vector<tensor3>>;

history random_history(const std::vector<std::vector<index>>& chunks, index dim) {
  history h;
  for (const auto& seq : chunks) {
    h.emplace_back();
    for (index n : seq) h.back().push_back(random_x(1, n, dim));
  }
  return h;
}

// Sequence s alone in an mla_cache of batch 1: its output for each chunk.
template <class Storage>
std::vector<tensor3> alone_in_mla_cache(const attn::multi_head_latent_attention& layer,
                                        const std::vector<tensor3>& chunks,
                                        const attn::mla_options& opt) {
  index total = 0;
  for (const tensor3& c : chunks) total += c.dimension(1);
  auto cache = layer.make_cache<Storage>(1, total);
  std::vector<tensor3> out;
  for (const tensor3& c : chunks) out.push_back(layer.forward(c, cache, opt));
  return out;
}

// Runs step k of every sequence that has a chunk k, all in one paged call,
// listed in `order`; returns each listed sequence's rows.
template <class Storage>
std::vector<tensor3> paged_call(const attn::multi_head_latent_attention& layer,
                                attn::paged_kv_cache<Storage>& cache,
                                const std::vector<index>& ids, const history& h, std::size_t k,
                                const std::vector<index>& order, const attn::mla_options& opt) {
  paged_step step;
  for (index s : order) {
    if (k >= h[static_cast<std::size_t>(s)].size()) continue;
    step.seqs.push_back(ids[static_cast<std::size_t>(s)]);
    step.pieces.push_back(h[static_cast<std::size_t>(s)][k]);
  }
  std::vector<index> cu;
  const tensor3 x = pack(step.pieces, cu);
  const tensor3 y = layer.forward(x, cache, step.seqs, cu, opt);
  std::vector<tensor3> out;
  for (std::size_t i = 0; i + 1 < cu.size(); ++i) out.push_back(rows_of(y, cu[i], cu[i + 1] - cu[i]));
  return out;
}

// The small layer of these tests: absorbed for at most 4 new tokens, so a
// history mixes naive prefill chunks with absorbed decodes.
attn::mla_options mixed_paths(int threads) {
  attn::mla_options o;
  o.absorbed_max_tokens = 4;
  o.num_threads = threads;
  return o;
}

template <class Storage>
void expect_paged_equals_mla_cache(index block_size) {
  const mla_case c = make_case(32, 4, 16, 24, 8, 8, 8);
  const auto layer = c.make();
  // Lengths that are and are not multiples of the block size, one past
  // min_chunk (its absorbed decodes are cut into key chunks), and steps
  // that mix prefill chunks (naive) with decodes (absorbed).
  const history h = random_history(
      {{37, 1, 1, 3, 1}, {64, 1, 20, 1}, {16, 3, 1}, {600, 1, 1}, {1, 1, 1, 1, 1, 1}}, 32);
  std::vector<std::vector<tensor3>> alone;
  for (const auto& seq : h) alone.push_back(alone_in_mla_cache<Storage>(layer, seq, mixed_paths(1)));
  for (int threads : {1, 2}) {
    auto cache = layer.make_paged_cache<Storage>(800 / block_size + 16, block_size);
    std::vector<index> ids;
    for (std::size_t s = 0; s < h.size(); ++s) ids.push_back(cache.add_sequence());
    const std::vector<index> order{0, 1, 2, 3, 4};
    for (std::size_t k = 0; k < 6; ++k) {
      const std::vector<tensor3> got = paged_call(layer, cache, ids, h, k, order, mixed_paths(threads));
      std::size_t i = 0;
      for (std::size_t s = 0; s < h.size(); ++s) {
        if (k >= h[s].size()) continue;
        EXPECT_TRUE(same_bits(got[i], alone[s][k]))
            << "block_size " << block_size << " threads " << threads << " sequence " << s
            << " step " << k << ": max diff " << max_diff(got[i], alone[s][k]);
        ++i;
      }
    }
    for (std::size_t s = 0; s < h.size(); ++s) {
      index n = 0;
      for (const tensor3& t : h[s]) n += t.dimension(1);
      EXPECT_EQ(cache.length(ids[s]), n);
    }
  }
}

TEST(MlaPaged, EqualsTheMlaCacheBitwiseFloat) {
  for (index bs : {1, 16, 64}) expect_paged_equals_mla_cache<float>(bs);
}

TEST(MlaPaged, EqualsTheMlaCacheBitwiseBf16) {
  for (index bs : {1, 16, 64}) expect_paged_equals_mla_cache<Eigen::bfloat16>(bs);
}

TEST(MlaPaged, MatchesTheReference) {
  // Paged prefill in two chunks then decodes against the fp64 layer.
  const mla_case c = make_case(40, 2, 24, 32, 16, 8, 16);
  const auto layer = c.make();
  const tensor3 x = random_x(1, 30, 40);
  auto cache = layer.make_paged_cache<float>(8, 16);
  const index s = cache.add_sequence();
  tensor3 y(1, 30, 40);
  index t = 0;
  for (index n : {11, 9, 1, 1, 8}) {
    const tensor3 out = layer.forward(slice(x, t, n), cache, {s}, {0, n}, mixed_paths(0));
    std::copy_n(out.data(), out.size(), y.data() + t * 40);
    t += n;
  }
  check_against(y, 0, c.reference(x, 0), 1e-4, "paged");
}

TEST(MlaPaged, ForkSharesThePrefixAndCopiesOnWrite) {
  // Two samples forked from one prompt whose last block is partial: each
  // continues as a sequence that was fed the prompt and its own tokens.
  const mla_case c = make_case(32, 4, 16, 24, 8, 8, 8);
  const auto layer = c.make();
  const tensor3 prompt = random_x(1, 21, 32), a = random_x(1, 1, 32), b = random_x(1, 2, 32);
  auto cache = layer.make_paged_cache<float>(16, 16);
  const index p = cache.add_sequence();
  layer.forward(prompt, cache, {p}, {0, 21}, mixed_paths(1));
  const index f = cache.fork(p);
  const index used = cache.used_blocks();
  std::vector<index> cu;
  const tensor3 y = layer.forward(pack({a, b}, cu), cache, {p, f}, cu, mixed_paths(2));
  EXPECT_EQ(cache.used_blocks(), used + 1);  // the shared partial block, copied once
  EXPECT_TRUE(same_bits(rows_of(y, 0, 1), alone_in_mla_cache<float>(layer, {prompt, a}, mixed_paths(1))[1]));
  EXPECT_TRUE(same_bits(rows_of(y, 1, 2), alone_in_mla_cache<float>(layer, {prompt, b}, mixed_paths(1))[1]));
}

// Random batches: each sequence's rows equal its rows alone, in any batch,
// order and thread count. Every trial appends to forks of the same prompts
// (copy-on-write leaves them as they were). The 2600-token prompt's
// absorbed step is cut into 5 key chunks alone, and would be cut into
// fewer in a batch of 4 or more if chunking followed the batch size. Heads
// 8 and 16 decode with a one-packet score tile alone (on AVX2 and AVX-512
// respectively) and with the wide tile next to a 3-token sequence; 9
// tokens of 16 heads take two row blocks.
TEST(MlaPaged, BatchInvariance) {
  for (index heads : {8, 16}) {
    const mla_case c = make_case(32, heads, 0, 24, 8, 8, 8);
    const auto layer = c.make();
    const index dim = 32;
    std::mt19937 g(static_cast<unsigned>(heads));
    const std::vector<index> prompts{5, 700, 33, 1, 64, 2600};
    attn::mla_options opt = mixed_paths(1);
    opt.absorbed_max_tokens = 16;  // every next chunk absorbed
    auto cache = layer.make_paged_cache<float>(512, 16);
    std::vector<index> ids;
    std::vector<tensor3> next;
    for (std::size_t s = 0; s < prompts.size(); ++s) {
      ids.push_back(cache.add_sequence());
      layer.forward(random_x(1, prompts[s], dim), cache, {ids.back()}, {0, prompts[s]}, opt);
      next.push_back(random_x(1, std::vector<index>{1, 2, 3, 9}[s % 4], dim));
    }
    const index used = cache.used_blocks();
    // One step of the sequences `order` lists, on forks; their rows in order.
    auto step = [&](const std::vector<index>& order, int threads) {
      std::vector<index> forks, cu;
      std::vector<tensor3> pieces;
      for (index s : order) {
        forks.push_back(cache.fork(ids[static_cast<std::size_t>(s)]));
        pieces.push_back(next[static_cast<std::size_t>(s)]);
      }
      attn::mla_options o = opt;
      o.num_threads = threads;
      const tensor3 y = layer.forward(pack(pieces, cu), cache, forks, cu, o);
      std::vector<tensor3> out;
      for (std::size_t i = 0; i < forks.size(); ++i) {
        out.push_back(rows_of(y, cu[i], cu[i + 1] - cu[i]));
        cache.free(forks[i]);
      }
      EXPECT_EQ(cache.used_blocks(), used);
      return out;
    };
    std::vector<tensor3> alone;
    for (std::size_t s = 0; s < prompts.size(); ++s)
      alone.push_back(step({static_cast<index>(s)}, 1)[0]);
    for (int trial = 0; trial < 8; ++trial) {
      std::vector<index> order(prompts.size());
      for (std::size_t s = 0; s < order.size(); ++s) order[s] = static_cast<index>(s);
      std::shuffle(order.begin(), order.end(), g);
      order.resize(2 + g() % (order.size() - 1));
      if (trial == 0) order = {0, 1, 2, 3, 4, 5};
      const std::vector<tensor3> got = step(order, 1 + trial % 2);
      for (std::size_t i = 0; i < order.size(); ++i)
        EXPECT_TRUE(same_bits(got[i], alone[static_cast<std::size_t>(order[i])]))
            << "heads " << heads << " trial " << trial << " sequence " << order[i];
    }
  }
}

// The mla_cache forward: a sequence of a batch of 3 gets the bits it gets in
// a batch of one. At 4200 tokens its absorbed step is cut into 8 key chunks
// alone; a chunking that followed the batch size would cut it into 5.
// One decode step of a batch whose sequence b holds keep[b] tokens (each
// after a naive prefill over the batch, truncated) equals, bit for bit, the
// same step of each sequence alone, on every path given.
template <class Storage>
void expect_step_equals_each_alone(const mla_case& c, const std::vector<index>& keep,
                                   const std::vector<attn::mla_path>& paths) {
  const auto layer = c.make();
  const index B = static_cast<index>(keep.size()), dim = c.cfg.dim;
  const index len = *std::max_element(keep.begin(), keep.end()) + 1;
  const tensor3 x = random_x(B, len, dim);
  for (attn::mla_path path : paths) {
    auto batch = layer.make_cache<Storage>(B, len);
    layer.forward(slice(x, 0, len - 1), batch, with_path(attn::mla_path::naive, 2));
    for (index b = 0; b < B; ++b) batch.truncate(b, keep[static_cast<std::size_t>(b)]);
    tensor3 step(B, 1, dim);
    for (index b = 0; b < B; ++b)
      for (index d = 0; d < dim; ++d) step(b, 0, d) = x(b, keep[static_cast<std::size_t>(b)], d);
    const tensor3 y = layer.forward(step, batch, with_path(path, 2));
    for (index b = 0; b < B; ++b) {
      const index n = keep[static_cast<std::size_t>(b)];
      auto one = layer.make_cache<Storage>(1, len);
      tensor3 xb(1, n + 1, dim);
      for (index t = 0; t <= n; ++t)
        for (index d = 0; d < dim; ++d) xb(0, t, d) = x(b, t, d);
      layer.forward(slice(xb, 0, n), one, with_path(attn::mla_path::naive, 1));
      const tensor3 want = layer.forward(slice(xb, n, 1), one, with_path(path, 1));
      tensor3 got(1, 1, dim);
      for (index d = 0; d < dim; ++d) got(0, 0, d) = y(b, 0, d);
      EXPECT_TRUE(same_bits(got, want)) << "sequence " << b << " path " << static_cast<int>(path);
    }
  }
}

TEST(MlaLayer, BatchOfThreeEqualsEachAloneBitwise) {
  expect_step_equals_each_alone<Eigen::bfloat16>(
      make_case(32, 2, 16, 24, 8, 8, 8), {4200, 40, 700},
      {attn::mla_path::naive, attn::mla_path::absorbed});
}

TEST(MlaLayer, ChunkedBatchWithPaddedQueryStridesEqualsEachAloneBitwise) {
  // 32 heads: a row block of 32 query columns, whose packed Qᵀ rows the
  // 16-register ISAs pad to an odd number of cache lines (48 floats). Both
  // sequences are long enough to be cut into key chunks, so each block's Qᵀ
  // is packed once into the call's shared buffer: the second block's must be
  // found where it was packed (it was not, when the packing used the
  // unpadded stride and the walk the padded one).
  expect_step_equals_each_alone<float>(make_case(32, 32, 0, 24, 8, 8, 8), {1100, 1300},
                                       {attn::mla_path::absorbed});
}

// ---------------------------------------------------------------------------
// Errors

TEST(MlaErrors, BadConfigAndWeights) {
  using attn_test::expect_error;
  const mla_case good = make_case(16, 2, 0, 8, 4, 4, 4);
  auto build = [](attn::mla_config cfg, attn::mla_weights w) {
    attn::multi_head_latent_attention l(cfg, w);
  };
  {
    mla_case c = good;
    c.cfg.n_heads = 0;
    expect_error("heads", [&] { build(c.cfg, c.w); }, {"config.n_heads"});
  }
  {
    mla_case c = good;
    c.cfg.qk_rope_head_dim = 3;
    expect_error("odd rope", [&] { build(c.cfg, c.w); }, {"config.qk_rope_head_dim"});
  }
  {
    mla_case c = good;
    c.cfg.rope_factor = 0.5;
    expect_error("factor", [&] { build(c.cfg, c.w); }, {"opt.factor"});
  }
  {
    mla_case c = good;
    c.w.wkv_b = matrix(3, 8);
    expect_error("wkv_b", [&] { build(c.cfg, c.w); }, {"weights.wkv_b", "[16, 8]", "[3, 8]"});
  }
  {
    mla_case c = good;
    c.w.kv_norm = Eigen::VectorXf(7);
    expect_error("kv_norm", [&] { build(c.cfg, c.w); }, {"weights.kv_norm"});
  }
  {
    mla_case c = good;
    c.w.wq_a = matrix(4, 16);
    expect_error("wq_a given without q_lora", [&] { build(c.cfg, c.w); }, {"weights.wq_a"});
  }
  {
    mla_case c = good;
    c.cfg.q_lora_rank = 4;
    expect_error("q_lora without wq_a", [&] { build(c.cfg, c.w); }, {"weights.wq_a"});
  }
}

TEST(MlaErrors, BadCallsLeaveTheCacheUnchanged) {
  using attn_test::expect_error;
  const mla_case c = make_case(16, 2, 0, 8, 4, 4, 4);
  const auto layer = c.make();
  auto cache = layer.make_cache<Eigen::bfloat16>(2, 5);
  layer.forward(random_x(2, 3, 16), cache);
  const std::vector<index> lengths = cache.lengths();
  const auto rows = cache.rows();
  std::vector<unsigned char> before(cache.bytes());
  std::memcpy(before.data(), rows.data, cache.bytes());
  auto unchanged = [&] {
    EXPECT_EQ(cache.lengths(), lengths);
    EXPECT_EQ(std::memcmp(before.data(), cache.rows().data, cache.bytes()), 0);
  };
  expect_error("overflow", [&] { layer.forward(random_x(2, 3, 16), cache); },
               {"multi_head_latent_attention::forward", "cache", "room for 3"});
  unchanged();
  expect_error("dim", [&] { layer.forward(random_x(2, 1, 15), cache); }, {"x.dimension(2)"});
  unchanged();
  expect_error("batch", [&] { layer.forward(random_x(1, 1, 16), cache); }, {"cache.batch()"});
  unchanged();
  attn::mla_cache<Eigen::bfloat16> other(2, 5, 9, 4);
  expect_error("shape", [&] { layer.forward(random_x(2, 1, 16), other); }, {"kv_lora_rank"});
  attn::mla_options bad;
  bad.path = static_cast<attn::mla_path>(7);
  expect_error("path", [&] { layer.forward(random_x(2, 1, 16), cache, bad); }, {"opt.path"});
  unchanged();
  bad = {};
  bad.num_threads = -1;
  expect_error("threads", [&] { layer.forward(random_x(2, 1, 16), cache, bad); },
               {"opt.num_threads"});
  unchanged();
  expect_error("truncate", [&] { cache.truncate(0, 4); }, {"mla_cache::truncate", "length"});
  expect_error("truncate b", [&] { cache.truncate(2, 0); }, {"mla_cache::truncate", "b"});
  unchanged();
  expect_error("cache sizes", [] { attn::mla_cache<float>(1, -1, 8, 4); }, {"capacity"});
  expect_error("cache rank", [] { attn::mla_cache<float>(1, 1, 0, 4); }, {"kv_lora_rank"});
  expect_error("yarn dim", [] { attn::yarn_inv_freq(3); }, {"rotary_dim"});
}

TEST(MlaErrors, BadPagedCallsLeaveThePoolUnchanged) {
  using attn_test::expect_error;
  const mla_case c = make_case(16, 2, 0, 8, 4, 4, 4);
  const auto layer = c.make();
  auto cache = layer.make_paged_cache<Eigen::bfloat16>(3, 4);
  const index a = cache.add_sequence(), b = cache.add_sequence();
  layer.forward(random_x(1, 5, 16), cache, {a, b}, {0, 3, 5});
  const std::vector<std::int32_t> table_a = cache.block_table(a), table_b = cache.block_table(b);
  const auto pool = cache.key_pool();
  const std::size_t bytes = cache.bytes();  // keys only: no value rows
  std::vector<unsigned char> before(bytes);
  std::memcpy(before.data(), pool.data, bytes);
  auto unchanged = [&] {
    EXPECT_EQ(cache.length(a), 3);
    EXPECT_EQ(cache.length(b), 2);
    EXPECT_EQ(cache.block_table(a), table_a);
    EXPECT_EQ(cache.block_table(b), table_b);
    EXPECT_EQ(cache.free_blocks(), 1);
    EXPECT_EQ(std::memcmp(before.data(), cache.key_pool().data, bytes), 0);
  };
  constexpr const char* fn = "multi_head_latent_attention::forward(paged cache)";
  expect_error("pool exhausted", [&] { layer.forward(random_x(1, 8, 16), cache, {a, b}, {0, 4, 8}); },
               {"paged_kv_cache::append", "the pool", "free blocks"});
  unchanged();
  expect_error("dead", [&] { layer.forward(random_x(1, 1, 16), cache, {7}, {0, 1}); },
               {fn, "seqs", "live sequences"});
  unchanged();
  expect_error("twice", [&] { layer.forward(random_x(1, 2, 16), cache, {a, a}, {0, 1, 2}); },
               {fn, "seqs", "distinct"});
  unchanged();
  expect_error("cu end", [&] { layer.forward(random_x(1, 2, 16), cache, {a, b}, {0, 1, 3}); },
               {fn, "cu_seqlens", "last entry"});
  unchanged();
  expect_error("cu order", [&] { layer.forward(random_x(1, 2, 16), cache, {a, b}, {0, 3, 2}); },
               {fn, "cu_seqlens", "non-decreasing"});
  unchanged();
  expect_error("seqs size", [&] { layer.forward(random_x(1, 2, 16), cache, {a}, {0, 1, 2}); },
               {fn, "seqs.size()"});
  unchanged();
  expect_error("batch dim", [&] { layer.forward(random_x(2, 1, 16), cache, {a, b}, {0, 1}); },
               {fn, "x.dimension(0)"});
  unchanged();
  expect_error("dim", [&] { layer.forward(random_x(1, 1, 15), cache, {a}, {0, 1}); },
               {fn, "x.dimension(2)"});
  unchanged();
  attn::mla_options bad;
  bad.num_threads = -2;
  expect_error("threads", [&] { layer.forward(random_x(1, 1, 16), cache, {a}, {0, 1}, bad); },
               {fn, "opt.num_threads"});
  unchanged();
  attn::paged_kv_cache<Eigen::bfloat16> other(3, 4, 1, 12, 12);
  const index o = other.add_sequence();
  expect_error("shape", [&] { layer.forward(random_x(1, 1, 16), other, {o}, {0, 1}); },
               {fn, "cache", "make_paged_cache"});
  EXPECT_EQ(other.length(o), 0);
  // An empty step is a no-op; a freed sequence is dead.
  EXPECT_EQ(layer.forward(tensor3(1, 0, 16), cache, {a, b}, {0, 0, 0}).size(), 0);
  unchanged();
  cache.free(b);
  expect_error("freed", [&] { layer.forward(random_x(1, 1, 16), cache, {b}, {0, 1}); },
               {fn, "seqs", "live sequences"});
}

// ---------------------------------------------------------------------------
// Regressions found by tests/fuzz/fuzz_mla_cache.cpp

TEST(MlaRegressions, LaterTokensNonFiniteRowDoesNotReachEarlierTokens) {
  // A chunk of T tokens whose last token's x is inf: its latent row is NaN.
  // Tokens 0..T-2 never see it (bottom-right causal), so their outputs must
  // be finite and match those of the same chunk without that token. The
  // absorbed path multiplied its V by P = 0 for the rows it is hidden from:
  // 0 · NaN = NaN in every earlier token (detail/latent_attention.hpp, step
  // 5). (T stays <= 32, where the naive path runs split_kv_decode; above,
  // flash_forward's edge tiles still have the same issue, see the report.)
  const mla_case c = make_case(24, 3, 0, 16, 8, 8, 8);
  const auto layer = c.make();
  for (index T : {2, 5, 17, 32})
    for (attn::mla_path path : {attn::mla_path::naive, attn::mla_path::absorbed}) {
      tensor3 x = random_x(2, T, 24);
      auto clean_cache = layer.make_cache<float>(2, T + 4);
      const tensor3 clean = layer.forward(slice(x, 0, T - 1), clean_cache, with_path(path));
      for (index d = 0; d < 24; ++d) x(0, T - 1, d) = std::numeric_limits<float>::infinity();
      for (index d = 0; d < 24; ++d) x(1, T - 1, d) = std::numeric_limits<float>::quiet_NaN();
      auto cache = layer.make_cache<float>(2, T + 4);
      const tensor3 y = layer.forward(x, cache, with_path(path));
      const double bound = 1e-4 * max_abs(clean);
      for (index b = 0; b < 2; ++b)
        for (index t = 0; t + 1 < T; ++t)
          for (index d = 0; d < 24; ++d) {
            ASSERT_TRUE(std::isfinite(y(b, t, d)))
                << "T=" << T << (path == attn::mla_path::naive ? " naive" : " absorbed")
                << " b=" << b << " t=" << t;
            EXPECT_NEAR(y(b, t, d), clean(b, t, d), bound) << "T=" << T << " t=" << t;
          }
    }
}

TEST(MlaRegressions, RmsNormWithZeroEpsOfATinyOrZeroLatent) {
  // norm_eps = 0 (allowed: "a finite value >= 0"). A latent of rms 2e-40
  // normalises to exactly 1 each, but 1/rms rounded to float overflowed to
  // inf (cached c = inf, output inf). An all-zero latent (here: weights of
  // the smallest denormal times x < 0.5 underflow to 0) gave 0/0 = NaN; it
  // now gives 0, the value for every eps > 0.
  attn::mla_config cfg;
  cfg.dim = 2;
  cfg.n_heads = 1;
  cfg.q_lora_rank = 0;
  cfg.kv_lora_rank = 4;
  cfg.qk_nope_head_dim = 2;
  cfg.qk_rope_head_dim = 2;
  cfg.v_head_dim = 2;
  cfg.max_seq_len = cfg.original_seq_len = 16;
  cfg.norm_eps = 0.0f;
  attn::mla_weights w;
  w.wq = matrix::Constant(4, 2, 0.5f);
  w.wkv_a = matrix::Ones(6, 2);
  w.kv_norm = Eigen::VectorXf::Ones(4);
  w.wkv_b = matrix::Constant(4, 4, 0.25f);
  w.wo = matrix::Ones(2, 2);
  const attn::multi_head_latent_attention tiny_layer(cfg, w);
  for (attn::mla_path path : {attn::mla_path::naive, attn::mla_path::absorbed}) {
    auto cache = tiny_layer.make_cache<float>(1, 2);
    tensor3 x(1, 1, 2);
    x.setConstant(1e-40f);  // latent [2e-40] x 4: RMSNorm gives [1, 1, 1, 1]
    const tensor3 y = tiny_layer.forward(x, cache, with_path(path));
    for (index i = 0; i < 4; ++i) EXPECT_EQ(*cache.rows().at(0, 0, i), 1.0f) << i;
    // v = W_UV c = 1 per feature, one key: o = 1, y = wo o = 2.
    EXPECT_FLOAT_EQ(y(0, 0, 0), 2.0f);
    EXPECT_FLOAT_EQ(y(0, 0, 1), 2.0f);
  }
  w.wkv_a = matrix::Constant(6, 2, -1.4e-45f);  // x · w underflows to 0
  const attn::multi_head_latent_attention zero_layer(cfg, w);
  for (attn::mla_path path : {attn::mla_path::naive, attn::mla_path::absorbed}) {
    auto cache = zero_layer.make_cache<float>(1, 2);
    tensor3 x(1, 1, 2);
    x.setConstant(0.25f);
    const tensor3 y = zero_layer.forward(x, cache, with_path(path));
    for (index i = 0; i < 4; ++i) EXPECT_EQ(*cache.rows().at(0, 0, i), 0.0f) << i;
    EXPECT_EQ(y(0, 0, 0), 0.0f);
    EXPECT_EQ(y(0, 0, 1), 0.0f);
  }
}

}  // namespace test_mla
