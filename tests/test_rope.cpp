// tests/test_rope.cpp: attn::rope_table and attn::apply_rope against an fp64
// reference: both pair layouts, partial rotary dims, offsets (one and per
// batch), strided views, thread-count determinism, the algebraic properties
// of rotations (composition, relative position, norm), and every error path.
//
// Tolerances. Inputs are uniform in [-1, 1]. The table rounds cos and sin
// once to float (relative error <= u = 2^-24 ≈ 6e-8); a' = a·c − b·s then
// adds at most two more roundings in float, so |a' − exact| <=
// 3u·(|a| + |b|) <= 3.6e-7 for |a|, |b| <= 1. Hence:
//   kAbsTol   = 1e-6  one rotation vs the fp64 reference (~3x that bound);
//   kComposeTol = 2e-6  two float rotations vs one (each <= 3.6e-7, on values
//                       that stay <= sqrt(2) in magnitude);
//   kNormRelTol = 1e-6  ‖R x‖ vs ‖x‖, relative (per-element error <= 3u·|x|);
//   kDotTol   = 1e-4    q·k over 64 features: sum of 64 terms each off by
//                       <= 2 · 3.6e-7 · 1 ≈ 7e-7 (≈ 5e-5 worst case).
#include <gtest/gtest.h>

#include "expect_error.hpp"

#include <array>
#include <attn/rope.hpp>
#include <attn/view.hpp>
#include <cmath>
#include <cstring>
#include <initializer_list>
#include <limits>
#include <random>
#include <string>
#include <vector>

namespace test_rope {

using attn::index;
using attn::rope_layout;
template <class T, int R>
using tensor = Eigen::Tensor<T, R, Eigen::RowMajor>;

constexpr double kAbsTol = 1e-6;
constexpr double kComposeTol = 2e-6;
constexpr double kNormRelTol = 1e-6;
constexpr double kDotTol = 1e-4;

constexpr rope_layout kLayouts[] = {rope_layout::interleaved, rope_layout::half_split};

const char* name(rope_layout l) {
  return l == rope_layout::interleaved ? "interleaved" : "half_split";
}

tensor<float, 4> random_tensor(index a, index b, index c, index d, unsigned seed) {
  tensor<float, 4> t(a, b, c, d);
  std::mt19937 gen(seed);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  for (index i = 0; i < t.size(); ++i) t.data()[i] = u(gen);
  return t;
}

// fp64 reference: rotates one head vector (values as double) at `pos`.
// Pair i is (2i, 2i+1) interleaved or (i, i + rot/2) half-split.
void reference_rotate_head(double* v, index rot, double pos, const std::vector<double>& inv_freq,
                           rope_layout layout, double mscale = 1.0) {
  const index half = rot / 2;
  for (index i = 0; i < half; ++i) {
    const index ia = layout == rope_layout::interleaved ? 2 * i : i;
    const index ib = layout == rope_layout::interleaved ? 2 * i + 1 : i + half;
    const double th = pos * inv_freq[static_cast<std::size_t>(i)];
    const double c = mscale * std::cos(th), s = mscale * std::sin(th);
    const double a = v[ia], b = v[ib];
    v[ia] = a * c - b * s;
    v[ib] = a * s + b * c;
  }
}

std::vector<double> reference_inv_freq(index rot, double theta) {
  std::vector<double> f(static_cast<std::size_t>(rot / 2));
  for (std::size_t i = 0; i < f.size(); ++i) f[i] = std::pow(theta, -2.0 * double(i) / double(rot));
  return f;
}

// Checks `got` ([B, S, H, D] dense) against the reference applied to `in`,
// token s of batch b at position offsets[b] + s.
void expect_matches_reference(const tensor<float, 4>& in, const tensor<float, 4>& got, index rot,
                              const std::vector<index>& offsets,
                              const std::vector<double>& inv_freq, rope_layout layout,
                              double mscale = 1.0, double tol = kAbsTol) {
  const index B = in.dimension(0), S = in.dimension(1), H = in.dimension(2), D = in.dimension(3);
  std::vector<double> v(static_cast<std::size_t>(D));
  double worst = 0;
  for (index b = 0; b < B; ++b)
    for (index s = 0; s < S; ++s)
      for (index h = 0; h < H; ++h) {
        for (index d = 0; d < D; ++d) v[static_cast<std::size_t>(d)] = in(b, s, h, d);
        reference_rotate_head(v.data(), rot, double(offsets[static_cast<std::size_t>(b)] + s),
                              inv_freq, layout, mscale);
        for (index d = 0; d < D; ++d) {
          const double err = std::abs(double(got(b, s, h, d)) - v[static_cast<std::size_t>(d)]);
          worst = std::max(worst, err);
          if (d >= rot) {
            // Features past rotary_dim are not touched at all.
            ASSERT_EQ(got(b, s, h, d), in(b, s, h, d)) << "b=" << b << " s=" << s << " h=" << h
                                                       << " d=" << d;
          }
        }
      }
  EXPECT_LE(worst, tol) << name(layout) << " rot=" << rot;
}

using attn_test::expect_error;

// ---------------------------------------------------------------- the table

TEST(RopeTable, DefaultFrequenciesAndEntries) {
  const attn::rope_table t(100, 16);
  EXPECT_EQ(t.max_positions(), 100);
  EXPECT_EQ(t.rotary_dim(), 16);
  EXPECT_EQ(t.pairs(), 8);
  EXPECT_EQ(t.mscale(), 1.0);
  const auto f = reference_inv_freq(16, 10000.0);
  ASSERT_EQ(t.inv_freq().size(), f.size());
  for (std::size_t i = 0; i < f.size(); ++i) EXPECT_DOUBLE_EQ(t.inv_freq()[i], f[i]);
  EXPECT_EQ(t.inv_freq()[0], 1.0);
  EXPECT_EQ(attn::rope_table::default_inv_freq(16), t.inv_freq());
  for (index p : {0, 1, 57, 99})
    for (index i = 0; i < 8; ++i) {
      // Angles in double, rounded once to float: exactly the float nearest.
      const double th = double(p) * f[static_cast<std::size_t>(i)];
      EXPECT_EQ(t.cos(p)[i], static_cast<float>(std::cos(th)));
      EXPECT_EQ(t.sin(p)[i], static_cast<float>(std::sin(th)));
    }
}

TEST(RopeTable, ThetaInvFreqAndMscaleOptions) {
  attn::rope_options o;
  o.theta = 500000.0;
  o.mscale = 1.25;
  const attn::rope_table t(10, 8, o);
  const auto f = reference_inv_freq(8, 500000.0);
  for (std::size_t i = 0; i < f.size(); ++i) EXPECT_DOUBLE_EQ(t.inv_freq()[i], f[i]);
  EXPECT_EQ(t.cos(3)[1], static_cast<float>(1.25 * std::cos(3 * f[1])));
  EXPECT_EQ(t.sin(3)[1], static_cast<float>(1.25 * std::sin(3 * f[1])));

  attn::rope_options own;
  own.inv_freq = {0.5, 0.25, 0.125, 0.0};
  const attn::rope_table u(10, 8, own);
  EXPECT_EQ(u.inv_freq(), own.inv_freq);
  EXPECT_EQ(u.cos(7)[0], static_cast<float>(std::cos(3.5)));
  EXPECT_EQ(u.cos(7)[3], 1.f);
  EXPECT_EQ(u.sin(7)[3], 0.f);
}

TEST(RopeTable, EmptyTablesAreFine) {
  const attn::rope_table none(0, 8);
  EXPECT_EQ(none.max_positions(), 0);
  const attn::rope_table off(10, 0);
  EXPECT_EQ(off.pairs(), 0);
  EXPECT_TRUE(off.inv_freq().empty());
}

// ---------------------------------------------------- against the reference

// Hand-worked example fixing the pairing of each layout: head [1, 2, 3, 4],
// rotary_dim 4, theta 10000 -> inv_freq [1, 0.01], position 1.
TEST(Rope, HandWorkedPairing) {
  const attn::rope_table t(2, 4);
  const double c0 = std::cos(1.0), s0 = std::sin(1.0), c1 = std::cos(0.01), s1 = std::sin(0.01);
  {
    tensor<float, 4> x(1, 1, 1, 4);
    x.setValues({{{{1, 2, 3, 4}}}});
    attn::apply_rope(t, attn::bshd(x), 1, rope_layout::interleaved);
    // pairs (0, 1) at angle 1, (2, 3) at angle 0.01
    EXPECT_NEAR(x(0, 0, 0, 0), 1 * c0 - 2 * s0, kAbsTol * 4);
    EXPECT_NEAR(x(0, 0, 0, 1), 1 * s0 + 2 * c0, kAbsTol * 4);
    EXPECT_NEAR(x(0, 0, 0, 2), 3 * c1 - 4 * s1, kAbsTol * 4);
    EXPECT_NEAR(x(0, 0, 0, 3), 3 * s1 + 4 * c1, kAbsTol * 4);
  }
  {
    tensor<float, 4> x(1, 1, 1, 4);
    x.setValues({{{{1, 2, 3, 4}}}});
    attn::apply_rope(t, attn::bshd(x), 1, rope_layout::half_split);
    // pairs (0, 2) at angle 1, (1, 3) at angle 0.01
    EXPECT_NEAR(x(0, 0, 0, 0), 1 * c0 - 3 * s0, kAbsTol * 4);
    EXPECT_NEAR(x(0, 0, 0, 2), 1 * s0 + 3 * c0, kAbsTol * 4);
    EXPECT_NEAR(x(0, 0, 0, 1), 2 * c1 - 4 * s1, kAbsTol * 4);
    EXPECT_NEAR(x(0, 0, 0, 3), 2 * s1 + 4 * c1, kAbsTol * 4);
  }
}

TEST(Rope, MatchesReferenceBothLayoutsFullAndPartial) {
  struct shape {
    index B, S, H, D, rot;
  };
  // Odd head counts, partial rotary dims (GPT-NeoX 25%, GPT-J 64 of 256,
  // DeepSeek-style 64 of 192), and pair counts that are not SIMD multiples.
  const shape shapes[] = {{2, 9, 3, 64, 64},   {1, 17, 5, 40, 16}, {3, 4, 7, 22, 22},
                          {2, 5, 1, 256, 64},  {1, 6, 3, 192, 64}, {2, 3, 2, 10, 6},
                          {1, 1, 1, 2, 2},     {1, 33, 9, 128, 128}};
  unsigned seed = 1;
  for (const auto& sh : shapes)
    for (rope_layout layout : kLayouts)
      for (index offset : {index{0}, index{1}, index{100}}) {
        SCOPED_TRACE(::testing::Message() << name(layout) << " B=" << sh.B << " S=" << sh.S
                                          << " H=" << sh.H << " D=" << sh.D << " rot=" << sh.rot
                                          << " offset=" << offset);
        const attn::rope_table t(200, sh.rot);
        const auto in = random_tensor(sh.B, sh.S, sh.H, sh.D, seed++);
        tensor<float, 4> x = in;
        attn::apply_rope(t, attn::bshd(x), offset, layout);
        expect_matches_reference(in, x, sh.rot, std::vector<index>(std::size_t(sh.B), offset),
                                 reference_inv_freq(sh.rot, 10000.0), layout);
      }
}

TEST(Rope, LargePositionsAndTheta) {
  attn::rope_options o;
  o.theta = 500000.0;
  const attn::rope_table t(40000, 128, o);
  for (rope_layout layout : kLayouts) {
    const auto in = random_tensor(1, 8, 2, 128, 7);
    tensor<float, 4> x = in;
    attn::apply_rope(t, attn::bshd(x), 39992, layout);  // last 8 positions of the table
    expect_matches_reference(in, x, 128, {39992}, reference_inv_freq(128, 500000.0), layout);
  }
}

TEST(Rope, PerBatchOffsets) {
  const attn::rope_table t(64, 32);
  const std::vector<index> offsets{0, 17, 3, 58};  // 58 + 6 == 64: the table's last row
  for (rope_layout layout : kLayouts) {
    const auto in = random_tensor(4, 6, 3, 48, 11);
    tensor<float, 4> x = in;
    attn::apply_rope(t, attn::bshd(x), offsets, layout);
    expect_matches_reference(in, x, 32, offsets, reference_inv_freq(32, 10000.0), layout);

    // Same as rotating each batch entry on its own with a scalar offset.
    tensor<float, 4> y = in;
    auto v = attn::bshd(y);
    for (index b = 0; b < 4; ++b) {
      auto vb = v;
      vb.data = v.data + b * v.strides[0];
      vb.dims[0] = 1;
      attn::apply_rope(t, vb, offsets[static_cast<std::size_t>(b)], layout);
    }
    EXPECT_EQ(std::memcmp(x.data(), y.data(), sizeof(float) * std::size_t(x.size())), 0);
  }
}

TEST(Rope, CustomInvFreqAndMscale) {
  attn::rope_options o;
  o.inv_freq = {1.0, 0.3, 0.07, 0.002, 1e-5, 0.0};
  o.mscale = 1.1;
  const attn::rope_table t(50, 12, o);
  for (rope_layout layout : kLayouts) {
    const auto in = random_tensor(2, 5, 3, 16, 13);
    tensor<float, 4> x = in;
    attn::apply_rope(t, attn::bshd(x), std::vector<index>{4, 40}, layout);
    // |a'| <= 1.1 · (|a| + |b|): the bound scales by mscale.
    expect_matches_reference(in, x, 12, {4, 40}, o.inv_freq, layout, 1.1, kAbsTol * 1.1);
  }
}

// [batch, heads, seq, dim] data viewed with attn::bhsd gives the same result
// as the same numbers stored [batch, seq, heads, dim].
TEST(Rope, StridedBhsdView) {
  const index B = 2, S = 11, H = 3, D = 24, rot = 16;
  const attn::rope_table t(64, rot);
  for (rope_layout layout : kLayouts) {
    const auto in = random_tensor(B, S, H, D, 21);
    tensor<float, 4> bhsd(B, H, S, D);
    for (index b = 0; b < B; ++b)
      for (index s = 0; s < S; ++s)
        for (index h = 0; h < H; ++h)
          for (index d = 0; d < D; ++d) bhsd(b, h, s, d) = in(b, s, h, d);
    attn::apply_rope(t, attn::bhsd(bhsd), std::vector<index>{5, 9}, layout);
    tensor<float, 4> got(B, S, H, D);
    for (index b = 0; b < B; ++b)
      for (index s = 0; s < S; ++s)
        for (index h = 0; h < H; ++h)
          for (index d = 0; d < D; ++d) got(b, s, h, d) = bhsd(b, h, s, d);
    expect_matches_reference(in, got, rot, {5, 9}, reference_inv_freq(rot, 10000.0), layout);

    tensor<float, 4> dense = in;
    attn::apply_rope(t, attn::bshd(dense), std::vector<index>{5, 9}, layout);
    EXPECT_EQ(std::memcmp(dense.data(), got.data(), sizeof(float) * std::size_t(got.size())), 0);
  }
}

// Q and K inside packed QKV, and the trailing rope part of each head
// (DeepSeek's q_pe: features [128, 192) of a 192-wide head): slices, no copy.
TEST(Rope, PackedAndSlicedViews) {
  const attn::rope_table t(32, 8);
  for (rope_layout layout : kLayouts) {
    tensor<float, 5> qkv(2, 5, 3, 3, 12);
    std::mt19937 gen(5);
    std::uniform_real_distribution<float> u(-1.f, 1.f);
    for (index i = 0; i < qkv.size(); ++i) qkv.data()[i] = u(gen);
    const tensor<float, 5> before = qkv;
    attn::apply_rope(t, attn::packed_qkv(qkv, 1), 3, layout);  // K only
    for (index b = 0; b < 2; ++b)
      for (index s = 0; s < 5; ++s)
        for (index w = 0; w < 3; ++w)
          for (index h = 0; h < 3; ++h) {
            std::vector<double> v(12);
            for (index d = 0; d < 12; ++d) v[std::size_t(d)] = before(b, s, w, h, d);
            if (w == 1)
              reference_rotate_head(v.data(), 8, double(3 + s), reference_inv_freq(8, 1e4), layout);
            for (index d = 0; d < 12; ++d) {
              if (w == 1)
                EXPECT_NEAR(qkv(b, s, w, h, d), v[std::size_t(d)], kAbsTol);
              else
                EXPECT_EQ(qkv(b, s, w, h, d), before(b, s, w, h, d));  // Q, V untouched
            }
          }
  }
  for (rope_layout layout : kLayouts) {
    const index B = 2, S = 4, H = 3, Dfull = 20, Dpe = 8;
    const auto in = random_tensor(B, S, H, Dfull, 9);
    tensor<float, 4> x = in;
    auto pe = attn::bshd(x);
    pe.data += Dfull - Dpe;  // last 8 features of each head
    pe.dims[3] = Dpe;
    attn::apply_rope(t, pe, 0, layout);
    for (index b = 0; b < B; ++b)
      for (index s = 0; s < S; ++s)
        for (index h = 0; h < H; ++h) {
          std::vector<double> v(Dpe);
          for (index d = 0; d < Dpe; ++d) v[std::size_t(d)] = in(b, s, h, Dfull - Dpe + d);
          reference_rotate_head(v.data(), 8, double(s), reference_inv_freq(8, 1e4), layout);
          for (index d = 0; d < Dfull; ++d) {
            if (d < Dfull - Dpe)
              EXPECT_EQ(x(b, s, h, d), in(b, s, h, d));
            else
              EXPECT_NEAR(x(b, s, h, d), v[std::size_t(d - (Dfull - Dpe))], kAbsTol);
          }
        }
  }
}

TEST(Rope, BitIdenticalForOneAndTwoThreads) {
  // 3 · B·S·H·rot = 3 · 2·1024·8·128 ≈ 6.3e6 flops: above
  // core::min_parallel_flops, so two threads really run.
  const attn::rope_table t(2048, 128);
  for (rope_layout layout : kLayouts) {
    const auto in = random_tensor(2, 1024, 8, 128, 31);
    tensor<float, 4> one = in, two = in;
    attn::apply_rope(t, attn::bshd(one), std::vector<index>{0, 700}, layout, 1);
    attn::apply_rope(t, attn::bshd(two), std::vector<index>{0, 700}, layout, 2);
    EXPECT_EQ(std::memcmp(one.data(), two.data(), sizeof(float) * std::size_t(one.size())), 0)
        << name(layout);
    tensor<float, 4> dflt = in;
    attn::apply_rope(t, attn::bshd(dflt), std::vector<index>{0, 700}, layout);
    EXPECT_EQ(std::memcmp(one.data(), dflt.data(), sizeof(float) * std::size_t(one.size())), 0);
  }
}

// ------------------------------------------------------------- properties

TEST(Rope, RotationRotaryDimZeroIsIdentity) {
  const attn::rope_table t(10, 0);
  for (rope_layout layout : kLayouts) {
    const auto in = random_tensor(2, 3, 3, 8, 41);
    tensor<float, 4> x = in;
    attn::apply_rope(t, attn::bshd(x), 4, layout);
    attn::apply_rope(t, attn::bshd(x), std::vector<index>{1, 7}, layout);
    EXPECT_EQ(std::memcmp(x.data(), in.data(), sizeof(float) * std::size_t(x.size())), 0);
  }
}

TEST(Rope, PositionZeroIsIdentity) {
  const attn::rope_table t(4, 32);
  for (rope_layout layout : kLayouts) {
    const auto in = random_tensor(3, 1, 5, 32, 43);
    tensor<float, 4> x = in;
    attn::apply_rope(t, attn::bshd(x), 0, layout);  // cos 0 = 1, sin 0 = 0 exactly
    EXPECT_EQ(std::memcmp(x.data(), in.data(), sizeof(float) * std::size_t(x.size())), 0);
  }
}

// Rotating by p (offset p, seq 1) and then by k equals rotating by p + k.
TEST(Rope, CompositionOfRotations) {
  const attn::rope_table t(5000, 64);
  for (rope_layout layout : kLayouts)
    for (auto pk : {std::array<index, 2>{1, 2}, {10, 33}, {1000, 2500}, {0, 4999}}) {
      const auto in = random_tensor(1, 1, 4, 80, 50 + unsigned(pk[0]));
      tensor<float, 4> twice = in, once = in;
      attn::apply_rope(t, attn::bshd(twice), pk[0], layout);
      attn::apply_rope(t, attn::bshd(twice), pk[1], layout);
      attn::apply_rope(t, attn::bshd(once), pk[0] + pk[1], layout);
      double worst = 0;
      for (index i = 0; i < in.size(); ++i)
        worst = std::max(worst, std::abs(double(twice.data()[i]) - double(once.data()[i])));
      EXPECT_LE(worst, kComposeTol) << name(layout) << " p=" << pk[0] << " k=" << pk[1];
    }
}

// (R_m q) · (R_n k) depends on m and n only through m − n.
TEST(Rope, RelativePositionProperty) {
  const index D = 64;
  const attn::rope_table t(4096, D);
  const auto q0 = random_tensor(1, 1, 1, D, 61), k0 = random_tensor(1, 1, 1, D, 62);
  auto score = [&](index m, index n, rope_layout layout) {
    tensor<float, 4> q = q0, k = k0;
    attn::apply_rope(t, attn::bshd(q), m, layout);
    attn::apply_rope(t, attn::bshd(k), n, layout);
    double dot = 0;
    for (index d = 0; d < D; ++d) dot += double(q(0, 0, 0, d)) * double(k(0, 0, 0, d));
    return dot;
  };
  for (rope_layout layout : kLayouts)
    for (index diff : {index{0}, index{3}, index{-5}, index{200}}) {
      // Exact value: rotate k by n − m in fp64 and dot with the unrotated q.
      std::vector<double> kr(D);
      for (index d = 0; d < D; ++d) kr[std::size_t(d)] = k0(0, 0, 0, d);
      reference_rotate_head(kr.data(), D, double(-diff), reference_inv_freq(D, 1e4), layout);
      double exact = 0;
      for (index d = 0; d < D; ++d) exact += double(q0(0, 0, 0, d)) * kr[std::size_t(d)];
      for (index m : {index{300}, index{301}, index{1000}, index{3895}}) {
        const double s = score(m, m - diff, layout);
        EXPECT_NEAR(s, exact, kDotTol) << name(layout) << " m=" << m << " n=" << m - diff;
      }
    }
}

TEST(Rope, PreservesNorm) {
  const attn::rope_table t(3000, 96);
  for (rope_layout layout : kLayouts) {
    const auto in = random_tensor(2, 7, 3, 96, 71);
    tensor<float, 4> x = in;
    attn::apply_rope(t, attn::bshd(x), std::vector<index>{0, 2990}, layout);
    for (index b = 0; b < 2; ++b)
      for (index s = 0; s < 7; ++s)
        for (index h = 0; h < 3; ++h) {
          double n0 = 0, n1 = 0;
          for (index d = 0; d < 96; ++d) {
            n0 += double(in(b, s, h, d)) * in(b, s, h, d);
            n1 += double(x(b, s, h, d)) * x(b, s, h, d);
          }
          EXPECT_NEAR(std::sqrt(n1), std::sqrt(n0), kNormRelTol * std::sqrt(n0)) << name(layout);
        }
  }
}

TEST(Rope, EmptyViewsAreFine) {
  const attn::rope_table t(4, 8);
  attn::strided<float, 4> v;  // null data, zero extents
  v.dims = {0, 3, 2, 8};
  v.strides = {48, 16, 8, 1};
  EXPECT_NO_THROW(attn::apply_rope(t, v, 0, rope_layout::half_split));
  EXPECT_NO_THROW(attn::apply_rope(t, v, std::vector<index>{}, rope_layout::half_split));
  tensor<float, 4> x(2, 0, 3, 8);  // no tokens: any offset >= 0 is in range
  EXPECT_NO_THROW(attn::apply_rope(t, attn::bshd(x), 100, rope_layout::interleaved));
}

// ------------------------------------------------------------------ errors

TEST(RopeErrors, TableArguments) {
  expect_error("odd rotary_dim", [] { attn::rope_table t(10, 7); }, {"rope_table", "rotary_dim", "7"});
  expect_error("negative rotary_dim", [] { attn::rope_table t(10, -2); }, {"rotary_dim"});
  expect_error("negative max_positions", [] { attn::rope_table t(-1, 8); }, {"max_positions"});
  for (double theta : {0.0, -1.0, std::numeric_limits<double>::quiet_NaN(),
                       std::numeric_limits<double>::infinity()}) {
    attn::rope_options o;
    o.theta = theta;
    expect_error("bad theta", [&] { attn::rope_table t(10, 8, o); }, {"rope_table", "theta"});
  }
  expect_error("default_inv_freq theta", [] { attn::rope_table::default_inv_freq(8, 0.0); },
               {"default_inv_freq", "theta"});
  expect_error("default_inv_freq odd", [] { attn::rope_table::default_inv_freq(5); },
               {"default_inv_freq", "rotary_dim"});
  {
    attn::rope_options o;
    o.inv_freq = {1.0, 0.1, 0.01};  // rotary_dim 8 needs 4
    expect_error("inv_freq size", [&] { attn::rope_table t(10, 8, o); },
                 {"inv_freq", "size rotary_dim/2 = 4", "size 3"});
    o.inv_freq = {1.0, 0.1, std::numeric_limits<double>::quiet_NaN(), 0.0};
    expect_error("inv_freq NaN", [&] { attn::rope_table t(10, 8, o); }, {"inv_freq[2]"});
  }
  for (double m : {0.0, -1.0, std::numeric_limits<double>::infinity()}) {
    attn::rope_options o;
    o.mscale = m;
    expect_error("bad mscale", [&] { attn::rope_table t(10, 8, o); }, {"mscale"});
  }
}

TEST(RopeErrors, ApplyArguments) {
  const attn::rope_table t(16, 8);
  const auto in = random_tensor(2, 10, 3, 8, 81);
  tensor<float, 4> x = in;
  const auto hs = rope_layout::half_split;

  expect_error("rotary_dim > head_dim",
               [&] {
                 tensor<float, 4> small(2, 10, 3, 6);
                 attn::apply_rope(t, attn::bshd(small), 0, hs);
               },
               {"apply_rope", "head_dim", "rotary_dim() = 8", "got 6"});
  expect_error("position past the table", [&] { attn::apply_rope(t, attn::bshd(x), 7, hs); },
               {"apply_rope", "position_offset", "max_positions = 16", "got 7"});
  expect_error("negative offset", [&] { attn::apply_rope(t, attn::bshd(x), -1, hs); },
               {"position_offset"});
  expect_error("huge offset (no overflow)",
               [&] { attn::apply_rope(t, attn::bshd(x), std::numeric_limits<index>::max(), hs); },
               {"position_offset"});
  expect_error("per-batch offset past the table",
               [&] { attn::apply_rope(t, attn::bshd(x), std::vector<index>{0, 7}, hs); },
               {"position_offsets[1]", "max_positions = 16"});
  expect_error("wrong offsets size",
               [&] { attn::apply_rope(t, attn::bshd(x), std::vector<index>{0, 1, 2}, hs); },
               {"position_offsets", "size batch", "size 3"});
  expect_error("non-unit head stride",
               [&] {
                 auto v = attn::bshd(x);
                 v.strides[3] = 2;
                 v.dims[3] = 4;
                 attn::apply_rope(attn::rope_table(16, 4), v, 0, hs);
               },
               {"x.strides[3]", "got 2"});
  expect_error("negative threads", [&] { attn::apply_rope(t, attn::bshd(x), 0, hs, -1); },
               {"num_threads"});
  expect_error("overlapping view (batch stride 0)",
               [&] {
                 auto v = attn::bshd(x);
                 v.strides[0] = 0;
                 attn::apply_rope(t, v, 0, hs);
               },
               {"x", "overlap"});
  expect_error("null data",
               [&] {
                 auto v = attn::bshd(x);
                 v.data = nullptr;
                 attn::apply_rope(t, v, 0, hs);
               },
               {"x", "null"});
  expect_error("negative dims",
               [&] {
                 auto v = attn::bshd(x);
                 v.dims[1] = -1;
                 attn::apply_rope(t, v, 0, hs);
               },
               {"x", "non-negative"});
  expect_error("bad layout value",
               [&] { attn::apply_rope(t, attn::bshd(x), 0, static_cast<rope_layout>(7)); },
               {"layout"});
  // Nothing was written by any failing call (checks come before work).
  EXPECT_EQ(std::memcmp(x.data(), in.data(), sizeof(float) * std::size_t(x.size())), 0);
}

}  // namespace test_rope
