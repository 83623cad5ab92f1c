// tests/test_dense.cpp: attn::dense_layer (nn.Linear) against the fp64
// definition, on shapes that are and are not multiples of the register
// tile, with strided rows; bits across thread counts; argument errors.
//
// Tolerance: |y - ref| <= 4 · in · eps32 · Σ_d |x_d w_d| (+ |b|) per
// element, the standard bound for an fp32 dot product of length `in`
// accumulated with FMAs in any order (each partial sum is rounded once), with
// a factor 4 to spare. Stated per element, so cancellation cannot hide an
// error behind a large neighbour.
#include <gtest/gtest.h>

#include <attn/dense.hpp>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "expect_error.hpp"
#include "reference/dense_reference.hpp"

namespace test_dense {

using attn::index;
using attn_test::expect_error;

attn::linear random_linear(index out, index in, bool bias, std::mt19937& rng) {
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  attn::linear l;
  l.weight.resize(out, in);
  for (index c = 0; c < out; ++c)
    for (index d = 0; d < in; ++d) l.weight(c, d) = u(rng);
  if (bias) {
    l.bias.resize(out);
    for (index c = 0; c < out; ++c) l.bias[c] = u(rng);
  }
  return l;
}

std::vector<float> random_rows(index rows, index in, std::mt19937& rng) {
  std::uniform_real_distribution<float> u(-2.0f, 2.0f);
  std::vector<float> x(static_cast<std::size_t>(rows * in));
  for (float& e : x) e = u(rng);
  return x;
}

// y from a layer, with x and y held at row strides ldx, ldy (>= the widths)
// so that strided rows are exercised; returns y packed densely.
std::vector<float> run(const attn::dense_layer& layer, const std::vector<float>& x, index rows,
                       index ldx, index ldy, int threads) {
  const index in = layer.in_features(), out = layer.out_features();
  std::vector<float> xs(static_cast<std::size_t>(std::max<index>(rows * ldx, 1)), 0.0f);
  for (index r = 0; r < rows; ++r)
    std::memcpy(&xs[static_cast<std::size_t>(r * ldx)], &x[static_cast<std::size_t>(r * in)],
                sizeof(float) * static_cast<std::size_t>(in));
  std::vector<float> ys(static_cast<std::size_t>(std::max<index>(rows * ldy, 1)), -7.0f);
  layer.apply(attn::strided<const float, 2>{xs.data(), {rows, in}, {ldx, 1}},
              attn::strided<float, 2>{ys.data(), {rows, out}, {ldy, 1}}, threads);
  std::vector<float> y(static_cast<std::size_t>(rows * out));
  for (index r = 0; r < rows; ++r)
    for (index c = 0; c < out; ++c) {
      y[static_cast<std::size_t>(r * out + c)] = ys[static_cast<std::size_t>(r * ldy + c)];
      // Padding between rows is never written.
      for (index p = out; p < ldy && r + 1 < rows; ++p)
        EXPECT_EQ(ys[static_cast<std::size_t>(r * ldy + p)], -7.0f);
    }
  return y;
}

void expect_matches_reference(const attn::linear& l, const std::vector<float>& x, index rows,
                              const std::vector<float>& y) {
  const index out = l.weight.rows(), in = l.weight.cols();
  const std::vector<double> ref = attn_ref::dense(x, rows, l.weight, l.bias);
  const double eps = std::numeric_limits<float>::epsilon();
  for (index r = 0; r < rows; ++r)
    for (index c = 0; c < out; ++c) {
      double magnitude = l.bias.size() ? std::abs(double(l.bias[c])) : 0.0;
      for (index d = 0; d < in; ++d)
        magnitude += std::abs(double(x[static_cast<std::size_t>(r * in + d)]) * l.weight(c, d));
      const std::size_t e = static_cast<std::size_t>(r * out + c);
      ASSERT_NEAR(y[e], ref[e], 4.0 * double(in + 1) * eps * magnitude)
          << "row " << r << " feature " << c;
    }
}

TEST(Dense, MatchesReferenceOnRandomAndEdgeShapes) {
  std::mt19937 rng(7);
  // (rows, in, out): 1 row (decoding), rows and features that are no multiple
  // of any tile or panel, a width of 1, and an encoder-sized case.
  const index shapes[][3] = {{1, 1, 1},    {1, 64, 33}, {5, 7, 3},     {6, 16, 16},
                             {13, 31, 47}, {17, 1, 96}, {64, 384, 40}, {33, 96, 385}};
  for (const auto& s : shapes)
    for (bool bias : {false, true}) {
      SCOPED_TRACE(::testing::Message()
                   << s[0] << "x" << s[1] << " -> " << s[2] << (bias ? " with bias" : ""));
      const attn::linear l = random_linear(s[2], s[1], bias, rng);
      const attn::dense_layer layer(l);
      EXPECT_EQ(layer.in_features(), s[1]);
      EXPECT_EQ(layer.out_features(), s[2]);
      const std::vector<float> x = random_rows(s[0], s[1], rng);
      expect_matches_reference(l, x, s[0], run(layer, x, s[0], s[1], s[2], 1));
      expect_matches_reference(l, x, s[0], run(layer, x, s[0], s[1] + 3, s[2] + 5, 2));
    }
}

TEST(Dense, SameBitsAtEveryThreadCount) {
  std::mt19937 rng(11);
  const attn::linear l = random_linear(200, 72, true, rng);
  const attn::dense_layer layer(l);
  const std::vector<float> x = random_rows(29, 72, rng);
  const std::vector<float> y1 = run(layer, x, 29, 72, 200, 1);
  for (int threads : {0, 2, 3, 7}) {
    const std::vector<float> yt = run(layer, x, 29, 72, 200, threads);
    EXPECT_EQ(std::memcmp(y1.data(), yt.data(), sizeof(float) * y1.size()), 0)
        << threads << " threads";
  }
}

TEST(Dense, ZeroRowsWritesNothing) {
  std::mt19937 rng(3);
  const attn::dense_layer layer(random_linear(4, 3, true, rng));
  layer.apply(attn::strided<const float, 2>{nullptr, {0, 3}, {3, 1}},
              attn::strided<float, 2>{nullptr, {0, 4}, {4, 1}});
}

TEST(Dense, RejectsBadArgumentsBeforeWriting) {
  std::mt19937 rng(5);
  attn::linear l = random_linear(4, 3, true, rng);
  const attn::dense_layer layer(l);
  std::vector<float> x(6, 1.0f), y(8, -7.0f);
  using in_view = attn::strided<const float, 2>;
  using out_view = attn::strided<float, 2>;
  const in_view good_x{x.data(), {2, 3}, {3, 1}};
  const out_view good_y{y.data(), {2, 4}, {4, 1}};
  expect_error("x width",
               [&] {
                 layer.apply(in_view{x.data(), {2, 2}, {3, 1}}, good_y);
               },
               {"dense_layer::apply", "x", "dims [rows, 3]"});
  expect_error("y shape",
               [&] {
                 layer.apply(good_x, out_view{y.data(), {2, 3}, {4, 1}});
               },
               {"y", "dims [rows, out_features]"});
  expect_error("x feature stride",
               [&] {
                 layer.apply(in_view{x.data(), {2, 3}, {1, 2}}, good_y);
               },
               {"x.strides[1]", "contiguous"});
  expect_error("y rows overlap",
               [&] {
                 layer.apply(good_x, out_view{y.data(), {2, 4}, {2, 1}});
               },
               {"y.strides[0]"});
  expect_error("null y",
               [&] {
                 layer.apply(good_x, out_view{nullptr, {2, 4}, {4, 1}});
               },
               {"y", "non-null"});
  expect_error("threads", [&] { layer.apply(good_x, good_y, -1); }, {"num_threads"});
  std::vector<float> shared(16, 0.0f);
  expect_error("y overlaps x",
               [&] {
                 layer.apply(in_view{shared.data(), {2, 3}, {3, 1}},
                             out_view{shared.data() + 4, {2, 4}, {4, 1}});
               },
               {"y", "does not overlap x"});
  for (float e : y) EXPECT_EQ(e, -7.0f);

  attn::linear empty;
  expect_error("empty weight", [&] { attn::dense_layer{empty}; }, {"dense_layer", "weight"});
  l.bias.resize(3);
  expect_error("bias size", [&] { attn::dense_layer{l}; }, {"bias", "size 0 or 4"});
}

}  // namespace test_dense
