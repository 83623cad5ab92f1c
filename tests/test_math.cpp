// tests/test_math.cpp: attn::core::simd::exp / exp_scalar / exp2_nonpositive /
// tanh / tanh_scalar against std::exp / std::exp2 / std::tanh evaluated in
// double.
//
// The sweeps:
//  * every 256th float bit pattern in the range: dense at every magnitude,
//    including near 0 where floats are dense (~8.7e6 points for exp);
//  * a uniform grid of 2^23 steps (~2e-5) over the range;
//  * +-2000 ulps around every argument-reduction boundary (n + 1/2)·ln 2
//    (for exp) or n + 1/2 (for exp2), where the rounding of n switches.
// Each result's relative error |y - e^x| / e^x (e^x in double) must stay
// within the bound the header states; the measured maximum is printed.
#include <gtest/gtest.h>

#include <attn/core/math.hpp>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <vector>

namespace test_math {

namespace simd = attn::core::simd;

constexpr float kInf = std::numeric_limits<float>::infinity();
const float kNaN = std::numeric_limits<float>::quiet_NaN();

float from_bits(std::uint32_t b) {
  float f;
  std::memcpy(&f, &b, sizeof f);
  return f;
}
std::uint32_t to_bits(float f) {
  std::uint32_t b;
  std::memcpy(&b, &f, sizeof b);
  return b;
}

// Applies the packet function to xs (padded to the packet width).
template <class F>
std::vector<float> apply_packet(const std::vector<float>& xs, F f) {
  const std::size_t w = static_cast<std::size_t>(simd::width);
  std::vector<float> in(xs), out((xs.size() + w - 1) / w * w);
  in.resize(out.size(), 0.0f);
  for (std::size_t i = 0; i < in.size(); i += w) simd::store(&out[i], f(simd::load(&in[i])));
  out.resize(xs.size());
  return out;
}

// Points in [lo, hi]: strided bit patterns, a uniform grid, and +-ulps
// around each boundary in `boundaries`.
std::vector<float> sweep(float lo, float hi, const std::vector<double>& boundaries) {
  std::vector<float> xs;
  xs.reserve(20u << 20);
  // Negative floats: bit patterns from -0 (0x80000000) to lo; positive up to hi.
  for (std::uint32_t b = 0x80000000u; b <= to_bits(lo) && b >= 0x80000000u; b += 256)
    xs.push_back(from_bits(b));
  for (std::uint32_t b = 0; b <= to_bits(hi) && hi > 0; b += 256) xs.push_back(from_bits(b));
  const int n = 1 << 23;
  for (int i = 0; i <= n; ++i)
    xs.push_back(lo + (hi - lo) * static_cast<float>(i) / static_cast<float>(n));
  for (double c : boundaries) {
    float x = static_cast<float>(c);
    for (int k = 0; k < 2000; ++k) x = std::nextafter(x, -kInf);
    for (int k = 0; k < 4000; ++k, x = std::nextafter(x, kInf))
      if (x >= lo && x <= hi) xs.push_back(x);
  }
  xs.push_back(lo);
  xs.push_back(hi);
  xs.push_back(0.0f);
  xs.push_back(-0.0f);
  return xs;
}

struct error_stats {
  double max_rel = 0.0;
  float worst_x = 0.0f;
  std::size_t n = 0;
};

template <class Exact>
error_stats measure(const std::vector<float>& xs, const std::vector<float>& ys, Exact exact) {
  error_stats s;
  for (std::size_t i = 0; i < xs.size(); ++i) {
    const double e = exact(static_cast<double>(xs[i]));
    const double rel = std::abs(static_cast<double>(ys[i]) - e) / e;
    if (!(rel <= s.max_rel)) {  // also records NaN
      s.max_rel = rel;
      s.worst_x = xs[i];
    }
  }
  s.n = xs.size();
  return s;
}

std::vector<double> exp_boundaries() {
  std::vector<double> b;
  for (int n = -127; n <= 128; ++n) b.push_back((n + 0.5) * std::log(2.0));
  return b;
}

// ---------------------------------------------------------------------------
// exp

TEST(MathExp, PacketWithinStatedErrorOverDenseSweep) {
  const std::vector<float> xs =
      sweep(simd::exp_accurate_min, simd::exp_accurate_max, exp_boundaries());
  const std::vector<float> ys =
      apply_packet(xs, [](const simd::packet& x) { return simd::exp(x); });
  const error_stats s = measure(xs, ys, [](double x) { return std::exp(x); });
  std::printf(
      "[ measured ] simd::exp (width %d): max rel error %.3g at x = %.9g over %zu points "
      "(bound %.3g)\n",
      simd::width, s.max_rel, static_cast<double>(s.worst_x), s.n,
      static_cast<double>(simd::exp_max_rel_error));
  EXPECT_LE(s.max_rel, static_cast<double>(simd::exp_max_rel_error)) << "at x = " << s.worst_x;
}

// exp_in_range is exp without the range handling: the same bits wherever
// the bound is claimed.
TEST(MathExp, InRangeHasTheBitsOfExp) {
  const std::vector<float> xs =
      sweep(simd::exp_accurate_min, simd::exp_accurate_max, exp_boundaries());
  const std::vector<float> a = apply_packet(xs, [](const simd::packet& x) { return simd::exp(x); });
  const std::vector<float> b =
      apply_packet(xs, [](const simd::packet& x) { return simd::exp_in_range(x); });
  for (std::size_t i = 0; i < xs.size(); ++i)
    ASSERT_EQ(to_bits(a[i]), to_bits(b[i])) << "at x = " << xs[i];
}

TEST(MathExp, ScalarWithinStatedErrorAndSameAsPacket) {
  // A lighter sweep (the scalar path costs a packet per element), and the
  // scalar result must equal the packet result bit for bit.
  std::vector<float> xs;
  for (std::uint32_t b = 0x80000000u; b <= to_bits(simd::exp_accurate_min) && b >= 0x80000000u;
       b += 4093)
    xs.push_back(from_bits(b));
  for (std::uint32_t b = 0; b <= to_bits(simd::exp_accurate_max); b += 4093)
    xs.push_back(from_bits(b));
  const std::vector<float> yp =
      apply_packet(xs, [](const simd::packet& x) { return simd::exp(x); });
  std::vector<float> ys(xs.size());
  std::size_t differ = 0;
  for (std::size_t i = 0; i < xs.size(); ++i) {
    ys[i] = simd::exp_scalar(xs[i]);
    differ += to_bits(ys[i]) != to_bits(yp[i]);
  }
  const error_stats s = measure(xs, ys, [](double x) { return std::exp(x); });
  std::printf("[ measured ] simd::exp_scalar: max rel error %.3g at x = %.9g over %zu points\n",
              s.max_rel, static_cast<double>(s.worst_x), s.n);
  EXPECT_LE(s.max_rel, static_cast<double>(simd::exp_max_rel_error)) << "at x = " << s.worst_x;
  EXPECT_EQ(differ, 0u) << "exp_scalar differs from the packet exp";
}

TEST(MathExp, SpecialValues) {
  const float below[] = {
      std::nextafter(simd::exp_accurate_min, -kInf), -87.5f, -88.0f, -100.0f, -1e30f,
      std::numeric_limits<float>::lowest(),          -kInf};
  const float above[] = {std::nextafter(simd::exp_accurate_max, kInf),
                         88.5f,
                         88.75f,
                         88.8f,
                         89.0f,
                         100.0f,
                         1e30f,
                         std::numeric_limits<float>::max(),
                         kInf};
  for (float x : below) {
    EXPECT_EQ(simd::exp_scalar(x), 0.0f) << "x = " << x;
    EXPECT_FALSE(std::signbit(simd::exp_scalar(x))) << "x = " << x;
  }
  for (float x : above) EXPECT_EQ(simd::exp_scalar(x), kInf) << "x = " << x;
  EXPECT_TRUE(std::isnan(simd::exp_scalar(kNaN)));
  EXPECT_TRUE(std::isnan(simd::exp_scalar(-kNaN)));
  EXPECT_EQ(simd::exp_scalar(0.0f), 1.0f);
  EXPECT_EQ(simd::exp_scalar(-0.0f), 1.0f);
  EXPECT_NEAR(simd::exp_scalar(1.0f), 2.718281828459045, 2.72 * simd::exp_max_rel_error);
  EXPECT_NEAR(simd::exp_scalar(-1.0f), 0.36787944117144233, 0.37 * simd::exp_max_rel_error);
}

TEST(MathExp, LanesAreIndependent) {
  // Special values mixed with ordinary ones in every lane position.
  const float pattern[] = {kNaN,  -kInf, 0.0f,  1.0f,   kInf, -100.0f,
                           50.0f, -1.5f, 89.0f, -87.4f, 3.25f};
  const std::size_t np = sizeof pattern / sizeof pattern[0];
  std::vector<float> xs;
  for (std::size_t i = 0; i < 7 * np; ++i) xs.push_back(pattern[i % np]);
  const std::vector<float> ys =
      apply_packet(xs, [](const simd::packet& x) { return simd::exp(x); });
  for (std::size_t i = 0; i < xs.size(); ++i) {
    const float x = xs[i], y = ys[i];
    if (std::isnan(x)) {
      EXPECT_TRUE(std::isnan(y)) << i;
    } else if (x < simd::exp_accurate_min) {
      EXPECT_EQ(y, 0.0f) << i;
    } else if (x > simd::exp_accurate_max) {
      EXPECT_EQ(y, kInf) << i;
    } else {
      EXPECT_NEAR(y, std::exp(static_cast<double>(x)),
                  std::exp(static_cast<double>(x)) * simd::exp_max_rel_error)
          << "x = " << x;
    }
  }
}

// ---------------------------------------------------------------------------
// exp2_nonpositive (the softmax's exp in log2 units)

TEST(MathExp2, WithinStatedErrorOnNonPositiveRange) {
  std::vector<double> boundaries;
  for (int n = -126; n <= 0; ++n) boundaries.push_back(n - 0.5);
  const std::vector<float> xs = sweep(-126.0f, 0.0f, boundaries);
  const std::vector<float> ys =
      apply_packet(xs, [](const simd::packet& x) { return simd::exp2_nonpositive(x); });
  const error_stats s = measure(xs, ys, [](double x) { return std::exp2(x); });
  std::printf(
      "[ measured ] simd::exp2_nonpositive: max rel error %.3g at x = %.9g over %zu points "
      "(bound %.3g)\n",
      s.max_rel, static_cast<double>(s.worst_x), s.n,
      static_cast<double>(simd::exp2_nonpositive_max_rel_error));
  EXPECT_LE(s.max_rel, static_cast<double>(simd::exp2_nonpositive_max_rel_error))
      << "at x = " << s.worst_x;
}

TEST(MathExp2, SpecialValues) {
  auto e2 = [](float x) { return simd::ei::pfirst(simd::exp2_nonpositive(simd::broadcast(x))); };
  EXPECT_EQ(e2(0.0f), 1.0f);
  EXPECT_EQ(e2(-0.0f), 1.0f);
  EXPECT_EQ(e2(-1.0f), 0.5f);
  EXPECT_EQ(e2(-126.0f), std::numeric_limits<float>::min());
  for (float x : {-127.0f, -127.5f, -150.0f, -1e30f, std::numeric_limits<float>::lowest(), -kInf})
    EXPECT_EQ(e2(x), 0.0f) << "x = " << x;
  // Between -127 and -126 the true value is subnormal: anything in
  // [0, FLT_MIN] is acceptable, never negative or NaN.
  for (float x = -126.99f; x < -126.0f; x += 0.01f) {
    const float y = e2(x);
    EXPECT_GE(y, 0.0f) << x;
    EXPECT_LE(y, std::numeric_limits<float>::min()) << x;
  }
  EXPECT_TRUE(std::isnan(e2(kNaN)));
  EXPECT_TRUE(std::isnan(e2(-kNaN)));
}

// ---------------------------------------------------------------------------
// tanh (the additive-attention score's nonlinearity)

// Every 64th positive float bit pattern up to 20 (tanh is odd, so the sign
// is checked below on a lighter sweep), plus a uniform grid on [-10, 10].
std::vector<float> tanh_points() {
  std::vector<float> xs;
  for (std::uint32_t b = 0; b <= to_bits(20.0f); b += 64) xs.push_back(from_bits(b));
  const int n = 1 << 21;
  for (int i = 0; i <= n; ++i) xs.push_back(-10.0f + 20.0f * static_cast<float>(i) / n);
  return xs;
}

TEST(MathTanh, PacketWithinStatedErrorOverDenseSweep) {
  const std::vector<float> xs = tanh_points();
  const std::vector<float> ys =
      apply_packet(xs, [](const simd::packet& x) { return simd::tanh(x); });
  double max_abs = 0.0, max_rel = 0.0;
  float worst_abs = 0.0f, worst_rel = 0.0f;
  for (std::size_t i = 0; i < xs.size(); ++i) {
    const double e = std::tanh(static_cast<double>(xs[i]));
    const double a = std::abs(static_cast<double>(ys[i]) - e);
    const double r = e == 0.0 ? a : a / std::abs(e);
    if (!(a <= max_abs)) max_abs = a, worst_abs = xs[i];
    if (!(r <= max_rel)) max_rel = r, worst_rel = xs[i];
  }
  std::printf(
      "[ measured ] simd::tanh (width %d): max abs error %.3g at x = %.9g, max rel error %.3g "
      "at x = %.9g over %zu points (bounds %.3g, %.3g)\n",
      simd::width, max_abs, static_cast<double>(worst_abs), max_rel,
      static_cast<double>(worst_rel), xs.size(), static_cast<double>(simd::tanh_max_abs_error),
      static_cast<double>(simd::tanh_max_rel_error));
  EXPECT_LE(max_abs, static_cast<double>(simd::tanh_max_abs_error)) << "at x = " << worst_abs;
  EXPECT_LE(max_rel, static_cast<double>(simd::tanh_max_rel_error)) << "at x = " << worst_rel;
}

TEST(MathTanh, OddScalarSameAsPacketAndBounded) {
  std::size_t differ = 0, not_odd = 0, outside = 0;
  for (std::uint32_t b = 0; b <= to_bits(1e4f); b += 4093) {
    const float x = from_bits(b);
    const float y = simd::tanh_scalar(x);
    differ += to_bits(y) != to_bits(simd::ei::pfirst(simd::tanh(simd::broadcast(x))));
    not_odd += to_bits(simd::tanh_scalar(-x)) != to_bits(-y);
    outside += !(y >= 0.0f && y <= 1.0f);
  }
  EXPECT_EQ(differ, 0u) << "tanh_scalar differs from the packet tanh";
  EXPECT_EQ(not_odd, 0u) << "tanh(-x) != -tanh(x)";
  EXPECT_EQ(outside, 0u) << "tanh(x) outside [0, 1] for x >= 0";
}

TEST(MathTanh, SaturatesWithoutNaN) {
  const float big[] = {9.0f, 9.5f, 10.0f, 20.0f, 100.0f, 1e4f, 1e30f,
                       std::numeric_limits<float>::max(), kInf};
  for (float x : big) {
    EXPECT_EQ(simd::tanh_scalar(x), 1.0f) << "x = " << x;
    EXPECT_EQ(simd::tanh_scalar(-x), -1.0f) << "x = " << x;
  }
  EXPECT_EQ(simd::tanh_scalar(0.0f), 0.0f);
  EXPECT_FALSE(std::signbit(simd::tanh_scalar(0.0f)));
  EXPECT_TRUE(std::signbit(simd::tanh_scalar(-0.0f)));
  EXPECT_TRUE(std::isnan(simd::tanh_scalar(kNaN)));
  EXPECT_TRUE(std::isnan(simd::tanh_scalar(-kNaN)));
  // Smallest subnormal: tanh x = x to within the relative bound.
  const float tiny = std::numeric_limits<float>::denorm_min() * 1e6f;
  EXPECT_NEAR(simd::tanh_scalar(tiny), tiny, tiny * simd::tanh_max_rel_error * 2);
}

TEST(MathTanh, LanesAreIndependent) {
  const float pattern[] = {kNaN, -kInf, 0.0f, 0.5f, kInf, -1e4f, 1e4f, -2.0f, 8.9f, -0.001f, 3.0f};
  const std::size_t np = sizeof pattern / sizeof pattern[0];
  std::vector<float> xs;
  for (std::size_t i = 0; i < 7 * np; ++i) xs.push_back(pattern[i % np]);
  const std::vector<float> ys =
      apply_packet(xs, [](const simd::packet& x) { return simd::tanh(x); });
  for (std::size_t i = 0; i < xs.size(); ++i) {
    if (std::isnan(xs[i])) {
      EXPECT_TRUE(std::isnan(ys[i])) << i;
    } else {
      EXPECT_NEAR(ys[i], std::tanh(static_cast<double>(xs[i])), simd::tanh_max_abs_error)
          << "x = " << xs[i];
    }
  }
}

}  // namespace test_math
