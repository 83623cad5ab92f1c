// tests/test_softmax.cpp: attn::core::softmax — row_softmax, merge_partial,
// online_state and the packet online_step — against fp64.
//
// Tolerances: the only approximations are simd::exp (relative error
// <= exp_max_rel_error) and fp32 rounding. A probability
// p_j = exp(x_j - m) / sum carries the exp error of its numerator and of
// the sum, plus the sum's accumulation (<= n·u for n positive terms,
// u = 2^-24), one rounding of the division and of the scaling, and the
// rounding of the fp32 argument x - max (u·|x - max| absolute, the same
// relative error after exp):
//   |p - ref| <= (2·exp_max_rel_error + (n + 2)·u + u·|x - max|) · ref
// (+1e-30 for results that underflow to 0 in fp32). The LSE m + log(sum) has the same
// error as an absolute error plus the rounding of |lse|.
#include <gtest/gtest.h>

#include <attn/core/softmax.hpp>
#include <attn/core/softmax_natural.hpp>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

namespace test_softmax {

using attn::index;
namespace softmax = attn::core::softmax;
namespace simd = attn::core::simd;

constexpr float kInf = std::numeric_limits<float>::infinity();
const double kU = std::ldexp(1.0, -24);

double rel_tol(index n) { return 2.0 * simd::exp_max_rel_error + static_cast<double>(n + 2) * kU; }

struct ref_softmax {
  std::vector<double> p;
  double lse;
};

// Softmax of the (float) scores in double.
ref_softmax reference(const std::vector<float>& x) {
  ref_softmax r{std::vector<double>(x.size(), 0.0), -std::numeric_limits<double>::infinity()};
  double m = -std::numeric_limits<double>::infinity();
  for (float v : x) m = std::max(m, static_cast<double>(v));
  if (m == -std::numeric_limits<double>::infinity()) return r;
  double s = 0.0;
  for (float v : x) s += std::exp(static_cast<double>(v) - m);
  for (std::size_t j = 0; j < x.size(); ++j) r.p[j] = std::exp(static_cast<double>(x[j]) - m) / s;
  r.lse = m + std::log(s);
  return r;
}

void expect_matches(const std::vector<float>& x) {
  const index n = static_cast<index>(x.size());
  std::vector<float> y(x);
  const float lse = softmax::row_softmax(y.data(), n);
  const ref_softmax r = reference(x);
  const double tol = rel_tol(n);
  float xmax = -kInf;
  for (float v : x) xmax = std::max(xmax, v);
  double total = 0.0;
  for (index j = 0; j < n; ++j) {
    const auto ju = static_cast<std::size_t>(j);
    ASSERT_FALSE(std::isnan(y[ju])) << "j = " << j;
    if (x[ju] == -kInf) {
      EXPECT_EQ(y[ju], 0.0f) << "masked entry j = " << j;
    } else {
      // The fp32 argument x - max is itself rounded by up to u·|x - max|,
      // which exp turns into a relative error of the same size.
      const double arg_err = kU * std::abs(static_cast<double>(x[ju]) - xmax);
      EXPECT_NEAR(y[ju], r.p[ju], (tol + arg_err) * r.p[ju] + 1e-30)
          << "n = " << n << ", j = " << j;
    }
    total += y[ju];
  }
  if (r.lse == -std::numeric_limits<double>::infinity()) {
    EXPECT_EQ(lse, -kInf);
    EXPECT_EQ(total, 0.0);
  } else {
    EXPECT_NEAR(total, 1.0, tol) << "n = " << n;
    EXPECT_NEAR(lse, r.lse, tol + 2 * kU * std::abs(r.lse)) << "n = " << n;
  }
}

std::vector<float> random_scores(index n, float sd, float offset, std::mt19937& g) {
  std::normal_distribution<float> d(0.0f, sd);
  std::vector<float> x(static_cast<std::size_t>(n));
  for (float& v : x) v = offset + d(g);
  return x;
}

// ---------------------------------------------------------------------------
// row_softmax

TEST(RowSoftmax, MatchesFp64AtOddAndPacketLengths) {
  std::mt19937 g(1);
  for (index n : {1, 2, 3, 4, 5, 7, 8, 15, 16, 17, 31, 32, 33, 63, 64, 65, 100, 1000})
    for (float sd : {0.1f, 1.0f, 5.0f, 30.0f}) expect_matches(random_scores(n, sd, 0.0f, g));
}

TEST(RowSoftmax, LargeOffsetsDoNotOverflow) {
  std::mt19937 g(2);
  for (index n : {1, 3, 17, 33})
    for (float offset : {1e4f, -1e4f, 80.0f, 100.0f, -100.0f, 1e30f, -1e30f}) {
      SCOPED_TRACE(offset);
      expect_matches(random_scores(n, 2.0f, offset, g));
    }
}

TEST(RowSoftmax, MaskedEntriesAndAllMaskedRows) {
  std::mt19937 g(3);
  for (index n : {1, 3, 17, 33}) {
    // Some -inf entries.
    std::vector<float> x = random_scores(n, 1.0f, 0.0f, g);
    for (std::size_t j = 0; j < x.size(); j += 2) x[j] = -kInf;
    expect_matches(x);
    // Only -inf: zeros and LSE -inf, no NaN.
    std::vector<float> all(static_cast<std::size_t>(n), -kInf);
    const float lse = softmax::row_softmax(all.data(), n);
    EXPECT_EQ(lse, -kInf) << "n = " << n;
    for (float v : all) EXPECT_EQ(v, 0.0f) << "n = " << n;
  }
  // Empty row.
  EXPECT_EQ(softmax::row_softmax(nullptr, 0), -kInf);
}

TEST(RowSoftmax, UniformAndOneHot) {
  for (index n : {1, 3, 17, 33}) {
    std::vector<float> x(static_cast<std::size_t>(n), 2.5f);
    const float lse = softmax::row_softmax(x.data(), n);
    EXPECT_NEAR(lse, 2.5 + std::log(static_cast<double>(n)), rel_tol(n) + 4 * kU);
    for (float v : x)
      EXPECT_NEAR(v, 1.0 / static_cast<double>(n), rel_tol(n) / static_cast<double>(n));
    // One score far above the rest: p = (1, 0, ...) exactly enough.
    std::vector<float> y(static_cast<std::size_t>(n), -200.0f);
    y[static_cast<std::size_t>(n / 2)] = 0.0f;
    softmax::row_softmax(y.data(), n);
    EXPECT_EQ(y[static_cast<std::size_t>(n / 2)], 1.0f);
  }
}

// ---------------------------------------------------------------------------
// merge_partial

struct partial {
  std::vector<double> o;  // normalised output, d values
  double lse;
};

// Softmax-weighted average of rows [j0, j1) of v (n x d) under scores s.
partial exact_partial(const std::vector<double>& s, const std::vector<double>& v, index d, index j0,
                      index j1) {
  partial p{std::vector<double>(static_cast<std::size_t>(d), 0.0),
            -std::numeric_limits<double>::infinity()};
  double m = -std::numeric_limits<double>::infinity();
  for (index j = j0; j < j1; ++j) m = std::max(m, s[static_cast<std::size_t>(j)]);
  if (m == -std::numeric_limits<double>::infinity()) return p;
  double sum = 0.0;
  for (index j = j0; j < j1; ++j) sum += std::exp(s[static_cast<std::size_t>(j)] - m);
  for (index j = j0; j < j1; ++j) {
    const double w = std::exp(s[static_cast<std::size_t>(j)] - m) / sum;
    for (index c = 0; c < d; ++c)
      p.o[static_cast<std::size_t>(c)] += w * v[static_cast<std::size_t>(j * d + c)];
  }
  p.lse = m + std::log(sum);
  return p;
}

std::vector<float> to_float(const std::vector<double>& x) {
  return std::vector<float>(x.begin(), x.end());
}

// Merge tolerance: the weights exp(lse - m) carry exp's relative error, the
// normalisation and the two products a few roundings; inputs are fp32
// roundings of the exact partials.
constexpr double kMergeRel = 4.0 * simd::exp_max_rel_error + 8.0 * 5.97e-8;

TEST(MergePartial, TwoHalvesEqualTheWhole) {
  std::mt19937 g(10);
  std::normal_distribution<double> nd(0.0, 1.0);
  for (index d : {1, 5, 16, 33})
    for (index n : {2, 7, 64, 301})
      for (double spread : {0.5, 3.0, 20.0}) {
        std::vector<double> s(static_cast<std::size_t>(n)), v(static_cast<std::size_t>(n * d));
        for (double& x : s) x = static_cast<double>(static_cast<float>(spread * nd(g)));
        for (double& x : v) x = static_cast<double>(static_cast<float>(nd(g)));
        for (index split : {index{1}, n / 2, n - 1}) {
          const partial a = exact_partial(s, v, d, 0, split), b = exact_partial(s, v, d, split, n);
          const partial whole = exact_partial(s, v, d, 0, n);
          std::vector<float> oa = to_float(a.o);
          float lse = static_cast<float>(a.lse);
          const std::vector<float> ob = to_float(b.o);
          softmax::merge_partial(oa.data(), lse, ob.data(), static_cast<float>(b.lse), d);
          double vmax = 0;
          for (double x : v) vmax = std::max(vmax, std::abs(x));
          for (index c = 0; c < d; ++c)
            EXPECT_NEAR(oa[static_cast<std::size_t>(c)], whole.o[static_cast<std::size_t>(c)],
                        kMergeRel * vmax)
                << "d=" << d << " n=" << n << " split=" << split << " c=" << c;
          EXPECT_NEAR(lse, whole.lse, kMergeRel + 2 * kU * std::abs(whole.lse));
        }
      }
}

TEST(MergePartial, OneSideEmpty) {
  const std::vector<float> o{0.25f, -1.5f, 3.0f};
  {  // b empty: a unchanged, bit for bit
    std::vector<float> oa(o);
    float lse = 1.75f;
    const std::vector<float> ob{0.0f, 0.0f, 0.0f};
    softmax::merge_partial(oa.data(), lse, ob.data(), -kInf, 3);
    EXPECT_EQ(oa, o);
    EXPECT_EQ(lse, 1.75f);
  }
  {  // a empty: result is b, bit for bit
    std::vector<float> oa{0.0f, 0.0f, 0.0f};
    float lse = -kInf;
    softmax::merge_partial(oa.data(), lse, o.data(), -3.5f, 3);
    EXPECT_EQ(oa, o);
    EXPECT_EQ(lse, -3.5f);
  }
  {  // both empty: o = 0, LSE -inf, no NaN
    std::vector<float> oa{0.0f, 0.0f, 0.0f};
    float lse = -kInf;
    const std::vector<float> ob{0.0f, 0.0f, 0.0f};
    softmax::merge_partial(oa.data(), lse, ob.data(), -kInf, 3);
    for (float x : oa) EXPECT_EQ(x, 0.0f);
    EXPECT_EQ(lse, -kInf);
  }
}

TEST(MergePartial, LargeLseDifferences) {
  const std::vector<float> oa0{1.0f, 2.0f}, ob{-4.0f, 8.0f};
  for (float gap : {0.5f, 5.0f, 30.0f, 80.0f, 88.0f, 100.0f, 200.0f, 1e4f}) {
    for (float base : {0.0f, -1e4f, 1e4f}) {
      SCOPED_TRACE(::testing::Message() << "gap " << gap << " base " << base);
      // b dominates.
      std::vector<float> oa(oa0);
      float lse = base;
      softmax::merge_partial(oa.data(), lse, ob.data(), base + gap, 2);
      const double wa =
          std::exp(-static_cast<double>(gap)) / (1.0 + std::exp(-static_cast<double>(gap)));
      for (int c = 0; c < 2; ++c) {
        const double want = wa * oa0[c] + (1 - wa) * ob[c];
        EXPECT_NEAR(oa[c], want, kMergeRel * 8);
        EXPECT_FALSE(std::isnan(oa[c]));
      }
      const double want_lse =
          static_cast<double>(base + gap) + std::log1p(std::exp(-static_cast<double>(gap)));
      EXPECT_NEAR(lse, want_lse, kMergeRel + 2 * kU * std::abs(want_lse));
      // a dominates (merge the other way round).
      std::vector<float> ob2(ob);
      float lse2 = base + gap;
      softmax::merge_partial(ob2.data(), lse2, oa0.data(), base, 2);
      for (int c = 0; c < 2; ++c)
        EXPECT_NEAR(ob2[c], wa * oa0[c] + (1 - wa) * ob[c], kMergeRel * 8);
    }
  }
}

TEST(MergePartial, ManyChunksInOrderIncludingEmptyOnes) {
  std::mt19937 g(11);
  std::normal_distribution<double> nd(0.0, 2.0);
  const index n = 400, d = 7;
  std::vector<double> s(n), v(n * d);
  for (double& x : s) x = static_cast<double>(static_cast<float>(nd(g)));
  for (double& x : v) x = static_cast<double>(static_cast<float>(nd(g)));
  // Keys 100..199 masked, so chunk 2 is empty.
  for (index j = 100; j < 200; ++j)
    s[static_cast<std::size_t>(j)] = -std::numeric_limits<double>::infinity();
  const partial whole = exact_partial(s, v, d, 0, n);
  std::vector<float> o(static_cast<std::size_t>(d), 0.0f);
  float lse = -kInf;
  for (index c = 0; c < 8; ++c) {
    const partial p = exact_partial(s, v, d, c * 50, (c + 1) * 50);
    const std::vector<float> op = to_float(p.o);
    softmax::merge_partial(o.data(), lse, op.data(), static_cast<float>(p.lse), d);
  }
  double vmax = 0;
  for (double x : v) vmax = std::max(vmax, std::abs(x));
  for (index c = 0; c < d; ++c)
    EXPECT_NEAR(o[static_cast<std::size_t>(c)], whole.o[static_cast<std::size_t>(c)],
                8 * kMergeRel * vmax);
  EXPECT_NEAR(lse, whole.lse, 8 * kMergeRel + 2 * kU * std::abs(whole.lse));
}

// ---------------------------------------------------------------------------
// online_state

TEST(OnlineState, InitialState) {
  softmax::online_state st;
  EXPECT_EQ(st.max, -kInf);
  EXPECT_EQ(st.sum, 0.0f);
  EXPECT_EQ(st.pivot(), 0.0f);
  EXPECT_EQ(st.lse(), -kInf);
  EXPECT_EQ(st.inv_sum(), 0.0f);
  // A row of -inf scores stays empty: raising the max to -inf changes nothing.
  EXPECT_EQ(st.raise_max(-kInf), 1.0f);
  EXPECT_EQ(st.max, -kInf);
  EXPECT_EQ(st.lse(), -kInf);
}

TEST(OnlineState, RaiseMax) {
  softmax::online_state st;
  EXPECT_EQ(st.raise_max(3.0f), 0.0f) << "first finite max: nothing accumulated to keep";
  EXPECT_EQ(st.max, 3.0f);
  EXPECT_EQ(st.pivot(), 3.0f);
  EXPECT_EQ(st.sum, 0.0f);
  st.sum = 2.0f;
  EXPECT_EQ(st.raise_max(2.0f), 1.0f) << "lower max: no change";
  EXPECT_EQ(st.raise_max(3.0f), 1.0f) << "equal max: no change";
  EXPECT_EQ(st.max, 3.0f);
  EXPECT_EQ(st.sum, 2.0f);
  const float f = st.raise_max(5.0f);
  EXPECT_NEAR(f, std::exp(-2.0), std::exp(-2.0) * simd::exp_max_rel_error);
  EXPECT_EQ(st.max, 5.0f);
  EXPECT_FLOAT_EQ(st.sum, 2.0f * f);
  EXPECT_NEAR(st.lse(), 5.0 + std::log(2.0 * std::exp(-2.0)), 1e-6);
  EXPECT_FLOAT_EQ(st.inv_sum(), 1.0f / st.sum);
  // A huge jump drives the old sum to 0 without NaN.
  EXPECT_EQ(st.raise_max(1e4f), 0.0f);
  EXPECT_EQ(st.sum, 0.0f);
}

TEST(OnlineState, BlockwiseEqualsRowSoftmax) {
  std::mt19937 g(12);
  for (index n : {1, 3, 17, 33, 200}) {
    const std::vector<float> x = random_scores(n, 4.0f, 0.0f, g);
    softmax::online_state st;
    for (index j0 = 0; j0 < n; j0 += 5) {
      const index j1 = std::min(n, j0 + 5);
      float m = -kInf;
      for (index j = j0; j < j1; ++j) m = std::max(m, x[static_cast<std::size_t>(j)]);
      st.raise_max(m);
      for (index j = j0; j < j1; ++j)
        st.sum += simd::exp_scalar(x[static_cast<std::size_t>(j)] - st.pivot());
    }
    const ref_softmax r = reference(x);
    EXPECT_NEAR(st.lse(), r.lse, rel_tol(n) + 4 * kU * std::abs(r.lse) + 8 * kU) << "n = " << n;
  }
}

// ---------------------------------------------------------------------------
// online_step: the packet form the flash kernel uses (log2 units).

TEST(OnlineStep, PerLaneFactorsAndPivots) {
  struct lane {
    float running, block, max, factor, pivot;
  };
  const lane cases[] = {
      {-kInf, -kInf, -kInf, 0.0f, 0.0f},  // nothing seen yet
      {-kInf, 3.0f, 3.0f, 0.0f, 3.0f},    // first visible block
      {2.0f, 1.0f, 2.0f, 1.0f, 2.0f},     // max did not move: exactly 1
      {2.0f, 2.0f, 2.0f, 1.0f, 2.0f},     // equal: exactly 1
      {1.0f, 2.0f, 2.0f, 0.5f, 2.0f},     // moved by 1 (log2 units): 2^-1
      {-5.0f, 0.0f, 0.0f, 1.0f / 32, 0.0f},
      {0.0f, 200.0f, 200.0f, 0.0f, 200.0f},  // 2^-200 underflows to 0
      {4.0f, -kInf, 4.0f, 1.0f, 4.0f},       // an all-masked block
  };
  const std::size_t nc = sizeof cases / sizeof cases[0];
  const std::size_t w = static_cast<std::size_t>(simd::width);
  // Every case in every lane position.
  for (std::size_t shift = 0; shift < nc; ++shift) {
    std::vector<float> run(w), blk(w), m(w), f(w), p(w);
    for (std::size_t i = 0; i < w; ++i) {
      run[i] = cases[(i + shift) % nc].running;
      blk[i] = cases[(i + shift) % nc].block;
    }
    const softmax::packet_step st =
        softmax::online_step(simd::load(run.data()), simd::load(blk.data()));
    simd::store(m.data(), st.max);
    simd::store(f.data(), st.factor);
    simd::store(p.data(), st.pivot);
    for (std::size_t i = 0; i < w; ++i) {
      const lane& c = cases[(i + shift) % nc];
      EXPECT_EQ(m[i], c.max) << "case " << (i + shift) % nc;
      EXPECT_EQ(f[i], c.factor) << "case " << (i + shift) % nc;
      EXPECT_EQ(p[i], c.pivot) << "case " << (i + shift) % nc;
    }
  }
}

}  // namespace test_softmax
