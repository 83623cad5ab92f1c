// tests/test_score_modifiers.cpp: softcap, ALiBi and sinks (sdpa_options),
// and user score_mod / mask_mod (attn::flex_attention, kv_cache::attend,
// the library in attn/modifiers.hpp), against the fp64 reference of
// tests/reference/sdpa_reference.hpp and against the same computation
// through dense masks.
//
// Tolerances: those of tests/sdpa_check.hpp (1e-5·max|V| on outputs, 1e-5
// relative on the LSE), unchanged, because each modifier adds less than the
// score error that budget already holds:
//   * softcap: core::simd::tanh's relative error is <= 4.5e-7
//     (core::simd::tanh_max_rel_error), one more rounding for 1/cap and for
//     ·cap: the capped score is off by <= ~7e-7·|s|, below the 1e-6 score
//     term of the budget for |s| = O(1);
//   * ALiBi: the bias slope·d is formed in fp32 (2 roundings); keys far away
//     carry large biases but weights e^(-slope·d), so Σ p_j·|δs_j| stays
//     ~ eps·E[slope·d] = O(eps);
//   * sinks: one more exp and division per row (<= 3e-7 relative);
//   * user score_mods are called in natural units: one ·ln 2 and one
//     ·log2 e more per score (2 eps relative).
// Where two calls must run the very same arithmetic (a mask_mod against the
// dense bool mask it equals, thread counts) the outputs are compared bit
// for bit instead.
#include <gtest/gtest.h>

#include <atomic>
#include <attn/alibi.hpp>
#include <attn/flex.hpp>
#include <attn/kv_cache.hpp>
#include <attn/modifiers.hpp>
#include <attn/multi_head.hpp>
#include <attn/sdpa.hpp>
#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "expect_error.hpp"
#include "sdpa_check.hpp"

namespace test_score_modifiers {

using namespace sdpa_check;
using attn::index;

// Shapes that take the tiled flash kernel and shapes that take split-KV
// decoding (few query rows per KV head), with odd sizes and GQA.
const std::vector<shape> kShapes = {
    {1, 37, 53, 4, 2, 24, 24},    // flash, nothing a multiple of a tile
    {2, 200, 333, 6, 3, 64, 40},  // flash, several tiles, d_v != d_qk
    {1, 1, 1, 2, 1, 8, 8},        // length 1
    {2, 1, 700, 8, 2, 64, 64},    // decode, split-KV chunks
    {1, 3, 1030, 4, 4, 32, 32},   // decode, several rows per head
};

// Per-head values that differ between heads.
std::vector<float> per_head(index heads, float first, float step) {
  std::vector<float> v;
  for (index h = 0; h < heads; ++h) v.push_back(first + step * static_cast<float>(h));
  return v;
}

// Runs flex_attention like sdpa_check::run runs sdpa.
template <class KV, class Mods>
outputs run_flex(const inputs<KV>& in, const Mods& mods, attn::sdpa_options opt) {
  const index B = in.q.dimension(0), L = in.q.dimension(1), Hq = in.q.dimension(2);
  outputs r{tensor4(B, L, Hq, in.v.dimension(3)), tensor3(B, Hq, L)};
  r.out.setConstant(kNaN);
  r.lse.setConstant(kNaN);
  opt.lse = attn::view(r.lse);
  attn::flex_attention(attn::bshd(in.q), attn::bshd(in.k), attn::bshd(in.v), attn::bshd(r.out),
                       mods, opt);
  return r;
}

// ---------------------------------------------------------------------------
// Built-ins against the fp64 reference

TEST(Softcap, MatchesReferenceWithEveryMask) {
  unsigned seed = 1;
  for (const shape& s : kShapes)
    for (float cap : {0.5f, 5.0f, 50.0f}) {
      attn::sdpa_options opt;
      opt.softcap = cap;
      check(s, opt, seed++);
      opt.causal = attn::causal::bottom_right;
      check(s, opt, seed++);
      opt.window = attn::sliding_window{17, 3, attn::alignment::bottom_right};
      check(s, opt, seed++);
    }
}

TEST(Softcap, LargeScoresSaturateAtTheCap) {
  // Scores ~ 1e3 against a cap of 2: every score is ±2 (tanh saturates), so
  // the row is a softmax over values in [-2, 2], far from the uncapped one.
  const shape s{1, 40, 90, 2, 1, 16, 16};
  inputs<float> in = make_inputs(s, 7);
  for (index i = 0; i < in.q.size(); ++i) in.q.data()[i] *= 300.0f;
  attn::sdpa_options opt;
  opt.softcap = 2.0f;
  const outputs got = run(in, opt);
  const attn_ref::result ref =
      attn_ref::sdpa(attn::bshd(in.q), attn::bshd(in.k), attn::bshd(in.v), to_ref(opt));
  EXPECT_TRUE(agrees(got, ref, max_abs(in.v)));
}

TEST(Alibi, StandardSlopes) {
  // Press et al.: 8 heads -> 2^-1 .. 2^-8; 6 heads -> the 4-head slopes,
  // then every other one of the 8-head slopes.
  const std::vector<float> s8 = attn::standard_alibi_slopes(8);
  ASSERT_EQ(s8.size(), 8u);
  for (int h = 0; h < 8; ++h) EXPECT_EQ(s8[h], std::ldexp(1.0f, -(h + 1)));
  const std::vector<float> s6 = attn::standard_alibi_slopes(6);
  const std::vector<float> want6 = {0.25f, 0.0625f, 0.015625f, 0.00390625f,
                                    std::ldexp(1.0f, -1), std::ldexp(1.0f, -3)};
  EXPECT_EQ(s6, want6);
  attn_test::expect_error("0 heads", [] { (void)attn::standard_alibi_slopes(0); }, {"heads"});
}

TEST(Alibi, MatchesReferenceForEveryAlignment) {
  unsigned seed = 100;
  for (const shape& s : kShapes)
    for (attn::causal c : {attn::causal::none, attn::causal::top_left, attn::causal::bottom_right}) {
      attn::sdpa_options opt;
      opt.alibi_slopes = attn::standard_alibi_slopes(s.Hq);
      opt.causal = c;
      check(s, opt, seed++);
      opt.key_lengths.assign(static_cast<std::size_t>(s.B), std::max<index>(s.S - 5, 0));
      check(s, opt, seed++);
    }
}

TEST(Sinks, MatchReferenceAndFullyMaskedRowsGiveTheSink) {
  unsigned seed = 200;
  for (const shape& s : kShapes) {
    attn::sdpa_options opt;
    opt.sinks = per_head(s.Hq, -1.0f, 0.7f);
    check(s, opt, seed++);
    opt.window = attn::sliding_window{8, 0, attn::alignment::bottom_right};  // GPT-OSS
    check(s, opt, seed++);
    // Batch entry 0 sees no key: output 0, LSE = the sink.
    attn::sdpa_options empty = opt;
    empty.key_lengths.assign(static_cast<std::size_t>(s.B), s.S);
    empty.key_lengths[0] = 0;
    check(s, empty, seed);
    const outputs got = run(make_inputs(s, seed++), empty);
    for (index h = 0; h < s.Hq; ++h)
      for (index i = 0; i < s.L; ++i) {
        EXPECT_EQ(got.lse(0, h, i), empty.sinks[static_cast<std::size_t>(h)]);
        for (index d = 0; d < s.Dv; ++d) EXPECT_EQ(got.out(0, i, h, d), 0.0f);
      }
  }
}

TEST(Sinks, GptOssFormula) {
  // GPT-OSS appends the sink as one more logit column, takes the softmax
  // and drops that column: out = Σ_j p_j v_j with p over [scores, sink].
  const shape s{1, 5, 9, 2, 1, 8, 8};
  const inputs<float> in = make_inputs(s, 300);
  attn::sdpa_options opt;
  opt.sinks = {0.5f, -2.0f};
  opt.causal = attn::causal::top_left;
  const outputs got = run(in, opt);
  const double scale = 1.0 / std::sqrt(8.0);
  for (index h = 0; h < s.Hq; ++h)
    for (index i = 0; i < s.L; ++i) {
      std::vector<double> logits;
      for (index j = 0; j <= i; ++j) {
        double dot = 0;
        for (index d = 0; d < s.Dqk; ++d) dot += double(in.q(0, i, h, d)) * in.k(0, j, 0, d);
        logits.push_back(dot * scale);
      }
      logits.push_back(opt.sinks[static_cast<std::size_t>(h)]);
      double m = -std::numeric_limits<double>::infinity(), z = 0;
      for (double x : logits) m = std::max(m, x);
      for (double x : logits) z += std::exp(x - m);
      for (index d = 0; d < s.Dv; ++d) {
        double o = 0;
        for (index j = 0; j <= i; ++j) o += std::exp(logits[j] - m) / z * in.v(0, j, 0, d);
        EXPECT_NEAR(got.out(0, i, h, d), o, 1e-5 * max_abs(in.v)) << h << " " << i << " " << d;
      }
      EXPECT_NEAR(got.lse(0, h, i), m + std::log(z), 1e-5 * (1 + std::abs(m + std::log(z))));
    }
}

TEST(Modifiers, AllTogetherWithMasksLseAndHalfPrecisionKv) {
  unsigned seed = 400;
  for (const shape& s : kShapes) {
    std::mt19937 g(seed);
    attn::sdpa_options opt;
    opt.softcap = 4.0f;
    opt.alibi_slopes = attn::standard_alibi_slopes(s.Hq);
    opt.sinks = per_head(s.Hq, 0.3f, -0.2f);
    opt.causal = attn::causal::bottom_right;
    opt.window = attn::sliding_window{attn::unbounded, 0, attn::alignment::bottom_right};
    const tensor_t<bool, 4> allow = random_bool(s.B, s.Hq, s.L, s.S, 0.8, g);
    tensor4 add = randn(s.B, s.Hq, s.L, s.S, g, 0.5f);
    opt.bool_mask = attn::view(allow);
    opt.additive_mask = attn::view(add);
    check<float>(s, opt, seed++);
    check<Eigen::bfloat16>(s, opt, seed++);
    check<Eigen::half>(s, opt, seed++);
  }
}

TEST(Modifiers, BitIdenticalForAnyThreadCount) {
  unsigned seed = 500;
  for (const shape& s : kShapes) {
    const inputs<float> in = make_inputs(s, seed++);
    attn::sdpa_options opt;
    opt.softcap = 3.0f;
    opt.alibi_slopes = attn::standard_alibi_slopes(s.Hq);
    opt.sinks = per_head(s.Hq, 1.0f, 0.1f);
    opt.causal = attn::causal::bottom_right;
    opt.num_threads = 1;
    const outputs one = run(in, opt);
    const auto mods = attn::modifiers(attn::alibi_score{opt.alibi_slopes, s.S - s.L},
                                      attn::document_mask(std::vector<index>(s.L, 0),
                                                          std::vector<index>(s.S, 0)));
    const outputs flex_one = run_flex(in, mods, opt);
    for (int t : {2, 3}) {
      opt.num_threads = t;
      expect_same(one, run(in, opt), "threads " + std::to_string(t));
      expect_same(flex_one, run_flex(in, mods, opt), "flex, threads " + std::to_string(t));
    }
  }
}

// ---------------------------------------------------------------------------
// The NaN / infinity policy with modifiers

TEST(Modifiers, ExtremeInputsStayFinite) {
  const shape s{1, 30, 70, 2, 1, 16, 16};
  inputs<float> in = make_inputs(s, 600);
  for (index i = 0; i < in.q.size(); ++i) in.q.data()[i] *= 3e37f;  // scores overflow to ±inf
  for (const bool decode : {false, true}) {
    inputs<float> x = in;
    if (decode) x.q = tensor4(in.q.slice(std::array<index, 4>{0, 0, 0, 0},
                                         std::array<index, 4>{1, 1, 2, 16}));
    attn::sdpa_options opt;
    opt.softcap = 10.0f;
    opt.alibi_slopes = {1e30f, 0.5f};  // biases far past FLT_MAX: floored, not -inf
    opt.sinks = {1e30f, -1e30f};
    opt.causal = attn::causal::bottom_right;
    const outputs got = run(x, opt);
    for (index i = 0; i < got.out.size(); ++i) EXPECT_TRUE(std::isfinite(got.out.data()[i]));
    for (index i = 0; i < got.lse.size(); ++i) EXPECT_TRUE(std::isfinite(got.lse.data()[i]));
  }
}

TEST(Modifiers, NanQueryRowStaysNan) {
  const shape s{1, 20, 40, 2, 1, 8, 8};
  for (const index L : {index{20}, index{1}}) {
    shape t = s;
    t.L = L;
    inputs<float> in = make_inputs(t, 700);
    in.q(0, 0, 1, 3) = kNaN;
    attn::sdpa_options opt;
    opt.softcap = 5.0f;
    opt.sinks = {0.0f, 0.0f};
    const outputs got = run(in, opt);
    for (index d = 0; d < t.Dv; ++d) {
      EXPECT_TRUE(std::isnan(got.out(0, 0, 1, d)));
      EXPECT_FALSE(std::isnan(got.out(0, 0, 0, d)));
    }
  }
}

TEST(Modifiers, BadOptionsThrowBeforeWriting) {
  const shape s{1, 4, 6, 2, 1, 8, 8};
  const inputs<float> in = make_inputs(s, 800);
  auto call = [&](attn::sdpa_options opt) {
    tensor4 out(1, 4, 2, 8);
    out.setConstant(7.0f);
    try {
      attn::scaled_dot_product_attention(attn::bshd(in.q), attn::bshd(in.k), attn::bshd(in.v),
                                         attn::bshd(out), opt);
    } catch (...) {
      for (index i = 0; i < out.size(); ++i) EXPECT_EQ(out.data()[i], 7.0f);
      throw;
    }
  };
  const float inf = std::numeric_limits<float>::infinity();
  for (float cap : {-1.0f, kNaN, inf, 1e-45f, 3e38f}) {
    attn::sdpa_options o;
    o.softcap = cap;
    attn_test::expect_error("softcap " + std::to_string(cap), [&] { call(o); }, {"softcap"});
  }
  attn::sdpa_options o;
  o.alibi_slopes = {0.5f};
  attn_test::expect_error("slopes size", [&] { call(o); }, {"alibi_slopes", "heads_q = 2"});
  o.alibi_slopes = {0.5f, kNaN};
  attn_test::expect_error("slope NaN", [&] { call(o); }, {"alibi_slopes", "head 1"});
  o.alibi_slopes.clear();
  o.sinks = {inf, 0.0f};
  attn_test::expect_error("sink inf", [&] { call(o); }, {"sinks", "head 0"});
  o.sinks = {0.0f, 0.0f, 0.0f};
  attn_test::expect_error("sinks size", [&] { call(o); }, {"sinks"});
}

// ---------------------------------------------------------------------------
// User modifiers against dense masks and the built-ins

// A dense bool mask [B, Hq, L, S] from a mask_mod.
template <class Mask>
tensor_t<bool, 4> dense(const Mask& m, const shape& s) {
  tensor_t<bool, 4> t(s.B, s.Hq, s.L, s.S);
  for (index b = 0; b < s.B; ++b)
    for (index h = 0; h < s.Hq; ++h)
      for (index i = 0; i < s.L; ++i)
        for (index j = 0; j < s.S; ++j) t(b, h, i, j) = m(b, h, i, j);
  return t;
}

// Packed documents of the given lengths: the id of each position.
std::vector<index> doc_ids(const std::vector<index>& lengths) {
  std::vector<index> ids;
  for (std::size_t d = 0; d < lengths.size(); ++d) ids.insert(ids.end(), lengths[d], index(d));
  return ids;
}

// A mask_mod given as a plain lambda (no block predicate) runs every pair.
template <class Mask>
auto without_predicate(const Mask& m) {
  return [m](index b, index h, index i, index j) { return m(b, h, i, j); };
}

// The mask_mod against the same mask as a dense bool mask: the kernels
// write the same -inf in the same places and skip the same tiles, so the
// bits agree; and both against the reference.
template <class Mask>
void check_mask_mod(const shape& s, const Mask& mask, unsigned seed) {
  SCOPED_TRACE(str(s));
  const inputs<float> in = make_inputs(s, seed);
  const tensor_t<bool, 4> allow = dense(mask, s);
  attn::sdpa_options dense_opt;
  dense_opt.bool_mask = attn::view(allow);
  const outputs via_dense = run(in, dense_opt);
  const outputs via_mod = run_flex(in, attn::mask_only(mask), {});
  const outputs via_lambda = run_flex(in, attn::mask_only(without_predicate(mask)), {});
  expect_same(via_dense, via_mod, "mask_mod vs dense bool mask");
  expect_same(via_dense, via_lambda, "mask_mod without predicate vs dense bool mask");
  const attn_ref::result ref =
      attn_ref::sdpa(attn::bshd(in.q), attn::bshd(in.k), attn::bshd(in.v), to_ref(dense_opt));
  EXPECT_TRUE(agrees(via_mod, ref, max_abs(in.v)));
}

TEST(MaskMods, EqualDenseBoolMasks) {
  const std::vector<shape> shapes = {{1, 300, 300, 2, 1, 32, 32}, {2, 1, 600, 4, 2, 32, 32},
                                     {1, 77, 77, 3, 3, 16, 16}};
  unsigned seed = 900;
  for (const shape& s : shapes) {
    check_mask_mod(s, attn::causal_mask::bottom_right(s.L, s.S), seed++);
    check_mask_mod(s, attn::sliding_window_mask{40, 5, s.S - s.L}, seed++);
    check_mask_mod(s, attn::prefix_lm_mask{23}, seed++);
    if (s.L == s.S) {
      const std::vector<index> ids = doc_ids({s.L / 3, 1, s.L - s.L / 3 - 1});
      check_mask_mod(s, attn::document_mask(ids), seed++);
      check_mask_mod(s, attn::both(attn::document_mask(ids), attn::causal_mask{0}), seed++);
    }
  }
}

TEST(MaskMods, CausalAndWindowEqualTheBuiltIns) {
  for (const shape& s : {shape{1, 300, 300, 2, 1, 32, 32}, shape{1, 2, 900, 4, 1, 32, 32}}) {
    const inputs<float> in = make_inputs(s, 1000);
    attn::sdpa_options builtin;
    builtin.causal = attn::causal::bottom_right;
    const attn_ref::result ref =
        attn_ref::sdpa(attn::bshd(in.q), attn::bshd(in.k), attn::bshd(in.v), to_ref(builtin));
    EXPECT_TRUE(agrees(run_flex(in, attn::mask_only(attn::causal_mask::bottom_right(s.L, s.S)), {}),
                       ref, max_abs(in.v)));
    builtin.window = attn::sliding_window{30, 0, attn::alignment::bottom_right};
    const attn_ref::result ref_w =
        attn_ref::sdpa(attn::bshd(in.q), attn::bshd(in.k), attn::bshd(in.v), to_ref(builtin));
    EXPECT_TRUE(agrees(run_flex(in, attn::mask_only(attn::sliding_window_mask{30, 0, s.S - s.L}),
                                {}),
                       ref_w, max_abs(in.v)));
  }
}

TEST(MaskMods, DocumentMaskSkipsCrossDocumentBlocks) {
  // 8 documents of 128 tokens: with the block predicate, the mask is only
  // evaluated inside tiles that straddle a document boundary.
  const shape s{1, 1024, 1024, 1, 1, 32, 32};
  const std::vector<index> ids = doc_ids(std::vector<index>(8, 128));
  static std::atomic<long> cross{0};
  cross = 0;
  const attn::document_mask docs(ids);
  auto counting = attn::with_block_predicate(
      [&](index b, index h, index i, index j) {
        if (ids[static_cast<std::size_t>(i)] != ids[static_cast<std::size_t>(j)]) ++cross;
        return docs(b, h, i, j);
      },
      [&](index b, index h, index i0, index i1, index j0, index j1) {
        return docs.block(b, h, i0, i1, j0, j1);
      });
  const inputs<float> in = make_inputs(s, 1100);
  const outputs got = run_flex(in, attn::mask_only(counting), {});
  const long all_cross = 1024L * 1024L * 7 / 8;
  EXPECT_LT(cross.load(), all_cross / 4) << "most cross-document pairs were evaluated";
  check_mask_mod(shape{1, 256, 256, 1, 1, 16, 16}, attn::document_mask(doc_ids({100, 56, 100})),
                 1101);
  (void)got;
}

TEST(ScoreMods, EqualTheBuiltInsAndDenseBiases) {
  unsigned seed = 1200;
  for (const shape& s : kShapes) {
    SCOPED_TRACE(str(s));
    const inputs<float> in = make_inputs(s, seed++);
    const double vmax = max_abs(in.v);
    attn::sdpa_options causal;
    causal.causal = attn::causal::bottom_right;

    // softcap as a score_mod = sdpa_options::softcap.
    attn::sdpa_options capped = causal;
    capped.softcap = 3.0f;
    const attn_ref::result ref_cap =
        attn_ref::sdpa(attn::bshd(in.q), attn::bshd(in.k), attn::bshd(in.v), to_ref(capped));
    EXPECT_TRUE(agrees(run_flex(in, attn::score_only(attn::softcap_score{3.0f}), causal), ref_cap,
                       vmax));
    EXPECT_TRUE(agrees(run(in, capped), ref_cap, vmax));

    // ALiBi as a score_mod (vectorised form, and the scalar form alone).
    attn::sdpa_options alibi = causal;
    alibi.alibi_slopes = attn::standard_alibi_slopes(s.Hq);
    const attn_ref::result ref_alibi =
        attn_ref::sdpa(attn::bshd(in.q), attn::bshd(in.k), attn::bshd(in.v), to_ref(alibi));
    const attn::alibi_score as{alibi.alibi_slopes, s.S - s.L};
    EXPECT_TRUE(agrees(run_flex(in, attn::score_only(as), causal), ref_alibi, vmax));
    auto scalar_only = [as](index b, index h, index i, index j, float x) {
      return as(b, h, i, j, x);
    };
    EXPECT_TRUE(agrees(run_flex(in, attn::score_only(scalar_only), causal), ref_alibi, vmax));

    // T5 relative position bias = the same bias as a dense additive mask.
    std::mt19937 g(seed++);
    std::normal_distribution<float> n(0.0f, 1.0f);
    std::vector<float> table(static_cast<std::size_t>(s.Hq * 32));
    for (float& x : table) x = n(g);
    const attn::relative_position_bias t5(table, s.Hq, 32, 128, true);
    tensor4 bias(s.B, s.Hq, s.L, s.S);
    for (index b = 0; b < s.B; ++b)
      for (index h = 0; h < s.Hq; ++h)
        for (index i = 0; i < s.L; ++i)
          for (index j = 0; j < s.S; ++j) bias(b, h, i, j) = t5(b, h, i, j, 0.0f);
    attn::sdpa_options dense_bias;
    dense_bias.additive_mask = attn::view(bias);
    const attn_ref::result ref_t5 =
        attn_ref::sdpa(attn::bshd(in.q), attn::bshd(in.k), attn::bshd(in.v), to_ref(dense_bias));
    EXPECT_TRUE(agrees(run_flex(in, attn::score_only(t5), {}), ref_t5, vmax));
  }
}

TEST(ScoreMods, T5Buckets) {
  // Bidirectional, 32 buckets, max distance 128: 8 exact buckets per side.
  const attn::relative_position_bias t5(std::vector<float>(32), 1, 32, 128, true);
  EXPECT_EQ(t5.bucket(0), 0);
  EXPECT_EQ(t5.bucket(-7), 7);
  EXPECT_EQ(t5.bucket(7), 16 + 7);
  EXPECT_EQ(t5.bucket(-8), 8);
  EXPECT_EQ(t5.bucket(-127), 15);
  EXPECT_EQ(t5.bucket(-100000), 15);
  EXPECT_EQ(t5.bucket(100000), 31);
}

// ---------------------------------------------------------------------------
// KV cache: decoding and chunked prefill equal a full forward

template <class Mods>
void check_cache_equals_full(const Mods& mods, const attn::sdpa_options& opt) {
  const index B = 2, N = 150, Hq = 6, Hkv = 2, D = 32;
  std::mt19937 g(1300);
  const tensor4 q = randn(B, N, Hq, D, g), k = randn(B, N, Hkv, D, g), v = randn(B, N, Hkv, D, g);
  // The full forward: one causal call over the whole sequence.
  attn::sdpa_options full_opt = opt;
  full_opt.causal = attn::causal::bottom_right;
  tensor4 full(B, N, Hq, D);
  attn::flex_attention(attn::bshd(q), attn::bshd(k), attn::bshd(v), attn::bshd(full), mods,
                       full_opt);
  // Prefill 40, single tokens to 60, then chunks of 7.
  attn::kv_cache<float> cache(B, N, Hkv, D);
  tensor4 inc(B, N, Hq, D);
  auto rows = [](const tensor4& t, index t0, index n) {
    attn::strided<const float, 4> r = attn::bshd(t);
    r.data += t0 * r.strides[1];
    r.dims[1] = n;
    return r;
  };
  auto out_rows = [](tensor4& t, index t0, index n) {
    attn::strided<float, 4> r = attn::bshd(t);
    r.data += t0 * r.strides[1];
    r.dims[1] = n;
    return r;
  };
  index t = 0;
  auto step = [&](index n) {
    cache.append(rows(k, t, n), rows(v, t, n));
    cache.attend(rows(q, t, n), out_rows(inc, t, n), mods, opt);
    t += n;
  };
  step(40);
  while (t < 60) step(1);
  while (t < N) step(std::min<index>(7, N - t));
  double worst = 0;
  for (index i = 0; i < full.size(); ++i)
    worst = std::max(worst, std::abs(double(full.data()[i]) - inc.data()[i]));
  // Two fp32 computations of the same rows (flash vs split-KV kernels),
  // each within 1e-5·max|V| of the exact result (max|V| ~ 4.5 here).
  EXPECT_LE(worst, 2e-5 * 4.5);
}

TEST(KvCacheModifiers, DecodeAndChunkedPrefillEqualAFullForward) {
  attn::sdpa_options opt;
  {
    SCOPED_TRACE("built-ins");
    opt.softcap = 5.0f;
    opt.alibi_slopes = attn::standard_alibi_slopes(6);
    opt.sinks = per_head(6, -0.5f, 0.3f);
    check_cache_equals_full(attn::score_modifiers<>{}, opt);
  }
  {
    SCOPED_TRACE("score_mod and mask_mod");
    const std::vector<index> ids = doc_ids({50, 37, 63});
    check_cache_equals_full(attn::modifiers(attn::alibi_score{attn::standard_alibi_slopes(6), 0},
                                            attn::document_mask(ids)),
                            attn::sdpa_options{});
    check_cache_equals_full(attn::mask_only(attn::sliding_window_mask{20, 0, 0}),
                            attn::sdpa_options{});
  }
}

}  // namespace test_score_modifiers

namespace test_score_modifiers {

TEST(LayerModifiers, MultiHeadCacheDecodeEqualsFullForward) {
  // The layer passes softcap, ALiBi slopes and sinks to the attention of
  // both its paths: a causal forward over the whole sequence and a prefill
  // plus single steps through the cache give the same outputs.
  const index E = 64, H = 4, Hkv = 2, T = 40;
  attn::mha_config cfg;
  cfg.embed_dim = E;
  cfg.num_heads = H;
  cfg.num_kv_heads = Hkv;
  auto lin = [](index out, index in, unsigned seed) {
    std::srand(seed);
    attn::linear l;
    l.weight = attn::multi_head_attention::matrix::Random(out, in) * 0.2f;
    return l;
  };
  const attn::multi_head_attention layer(
      cfg, {lin(E, E, 1), lin(E / H * Hkv, E, 2), lin(E / H * Hkv, E, 3), lin(E, E, 4)});
  attn::tensor3 x(1, T, E);
  x.setRandom();
  attn::mha_options opt;
  opt.attention.softcap = 2.0f;
  opt.attention.alibi_slopes = attn::standard_alibi_slopes(H);
  opt.attention.sinks = per_head(H, 0.0f, 0.5f);
  attn::mha_options full_opt = opt;
  full_opt.attention.causal = attn::causal::bottom_right;
  const attn::tensor3 full = layer.forward(x, full_opt);
  attn::kv_cache<float> cache(1, T, Hkv, E / H);
  attn::tensor3 inc(1, T, E);
  const index prefill = 25;
  inc.slice(std::array<index, 3>{0, 0, 0}, std::array<index, 3>{1, prefill, E}) =
      layer.forward(attn::tensor3(x.slice(std::array<index, 3>{0, 0, 0},
                                          std::array<index, 3>{1, prefill, E})),
                    cache, opt);
  for (index t = prefill; t < T; ++t)
    inc.slice(std::array<index, 3>{0, t, 0}, std::array<index, 3>{1, 1, E}) = layer.forward(
        attn::tensor3(x.slice(std::array<index, 3>{0, t, 0}, std::array<index, 3>{1, 1, E})),
        cache, opt);
  double worst = 0, scale = 0;
  for (index i = 0; i < full.size(); ++i) {
    worst = std::max(worst, std::abs(double(full.data()[i]) - inc.data()[i]));
    scale = std::max(scale, std::abs(double(full.data()[i])));
  }
  // Two fp32 computations of one layer (flash vs split-KV attention, the
  // same projections): within 1e-5 of the output's magnitude.
  EXPECT_LE(worst, 1e-5 * std::max(scale, 1.0));
  attn::mha_options none = full_opt;
  none.attention = attn::sdpa_options{};
  none.attention.causal = attn::causal::bottom_right;
  double moved = 0;
  const attn::tensor3 plain = layer.forward(x, none);
  for (index i = 0; i < full.size(); ++i)
    moved = std::max(moved, std::abs(double(full.data()[i]) - plain.data()[i]));
  EXPECT_GT(moved, 1e-3) << "the modifiers did not reach the layer's attention";
}

}  // namespace test_score_modifiers
