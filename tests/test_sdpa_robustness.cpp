// Inputs at the edges of what the argument checks and the numerics allow:
// finite inputs that overflow intermediate values, degenerate shapes, and
// outputs whose strides would make threads race. Each case is a regression
// test for a problem found in review.
#include <gtest/gtest.h>

#include <attn/sdpa.hpp>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>

namespace test_sdpa_robustness {

using tensor4 = Eigen::Tensor<float, 4, Eigen::RowMajor>;
constexpr float flt_max = std::numeric_limits<float>::max();

bool all_finite(const tensor4& t) {
  for (Eigen::Index i = 0; i < t.size(); ++i)
    if (!std::isfinite(t.data()[i])) return false;
  return true;
}

// L = 4 takes the split-KV path, L = 200 the tiled one; both must agree on
// every edge case below.
class BothPaths : public ::testing::TestWithParam<int> {};

// An additive mask of FLT_MAX at one key: after conversion to log2 units the
// score saturates instead of becoming +inf, so that key takes all the weight.
TEST_P(BothPaths, HugeFiniteAdditiveMaskSelectsThatKey) {
  const int L = GetParam(), S = 50, d = 8;
  tensor4 q(1, L, 1, d), k(1, S, 1, d), v(1, S, 1, d);
  q.setZero();
  k.setRandom();
  v.setRandom();
  Eigen::Tensor<float, 2, Eigen::RowMajor> add(L, S);
  add.setZero();
  for (int i = 0; i < L; ++i) add(i, 7) = flt_max;
  attn::sdpa_options opt;
  opt.additive_mask = attn::broadcast_mask(add, 1, 1, L, S);
  const tensor4 out = attn::scaled_dot_product_attention(q, k, v, opt);
  ASSERT_TRUE(all_finite(out));
  for (int i = 0; i < L; ++i)
    for (int c = 0; c < d; ++c) EXPECT_FLOAT_EQ(out(0, i, 0, c), v(0, 7, 0, c));
}

// -FLT_MAX everywhere (a common "masked" value in the wild) is a finite
// score, not a mask: every key gets the same weight, on both paths.
TEST_P(BothPaths, MostNegativeFiniteMaskIsUniform) {
  const int L = GetParam(), S = 20, d = 4;
  tensor4 q(1, L, 1, d), k(1, S, 1, d), v(1, S, 1, d);
  q.setRandom();
  k.setRandom();
  v.setRandom();
  Eigen::Tensor<float, 2, Eigen::RowMajor> add(L, S);
  add.setConstant(-flt_max);
  attn::sdpa_options opt;
  opt.additive_mask = attn::broadcast_mask(add, 1, 1, L, S);
  const tensor4 out = attn::scaled_dot_product_attention(q, k, v, opt);
  ASSERT_TRUE(all_finite(out));
  for (int c = 0; c < d; ++c) {
    double mean = 0;
    for (int j = 0; j < S; ++j) mean += v(0, j, 0, c);
    mean /= S;
    EXPECT_NEAR(out(0, 0, 0, c), mean, 1e-5);
  }
}

// q·k overflowing fp32 to +inf: the overflowing key takes the weight
// instead of the row turning into NaN.
TEST_P(BothPaths, OverflowingScoresGiveNoNaN) {
  const int L = GetParam(), S = 30, d = 4;
  tensor4 q(1, L, 1, d), k(1, S, 1, d), v(1, S, 1, d);
  q.setConstant(1e19f);
  k.setZero();
  for (int c = 0; c < d; ++c) k(0, 3, 0, c) = 1e19f;
  v.setRandom();
  const tensor4 out = attn::scaled_dot_product_attention(q, k, v);
  ASSERT_TRUE(all_finite(out));
  for (int c = 0; c < d; ++c) EXPECT_FLOAT_EQ(out(0, 0, 0, c), v(0, 3, 0, c));
}

// d_v = 0 is a valid (if useless) shape; the LSE is still computed.
TEST_P(BothPaths, ZeroValueDim) {
  const int L = GetParam(), S = 300, d = 8;
  tensor4 q(1, L, 1, d), k(1, S, 1, d), v(1, S, 1, 0), out(1, L, 1, 0);
  q.setRandom();
  k.setRandom();
  Eigen::Tensor<float, 3, Eigen::RowMajor> lse(1, 1, L);
  attn::sdpa_options opt;
  opt.lse = attn::view(lse);
  attn::scaled_dot_product_attention(attn::bshd(q), attn::bshd(k), attn::bshd(v), attn::bshd(out),
                                     opt);
  for (int i = 0; i < L; ++i) EXPECT_TRUE(std::isfinite(lse(0, 0, i)));
}

INSTANTIATE_TEST_SUITE_P(DecodeAndTiled, BothPaths, ::testing::Values(4, 200));

TEST(SdpaArguments, ScaleThatOverflowsInLog2UnitsThrows) {
  tensor4 q(1, 2, 1, 4), k(1, 3, 1, 4);
  q.setZero();
  k.setZero();
  attn::sdpa_options opt;
  opt.scale = 3e38f;  // finite, but scale · log2(e) is not
  EXPECT_THROW(attn::scaled_dot_product_attention(q, k, k, opt), attn::error);
}

TEST(SdpaArguments, OverlappingOutputThrows) {
  tensor4 q(1, 8, 2, 4), k(1, 8, 2, 4), out(1, 8, 2, 4);
  q.setRandom();
  k.setRandom();
  auto o = attn::bshd(out);
  o.strides[1] = 0;  // every query row would write the same place
  try {
    attn::scaled_dot_product_attention(attn::bshd(q), attn::bshd(k), attn::bshd(k), o);
    FAIL() << "no exception";
  } catch (const attn::error& e) {
    EXPECT_NE(std::string(e.what()).find("out.strides"), std::string::npos) << e.what();
  }
  Eigen::Tensor<float, 3, Eigen::RowMajor> lse(1, 2, 8);
  attn::sdpa_options opt;
  opt.lse = attn::view(lse);
  opt.lse.strides = {0, 0, 0};
  EXPECT_THROW(attn::scaled_dot_product_attention(attn::bshd(q), attn::bshd(k), attn::bshd(k),
                                                  attn::bshd(out), opt),
               attn::error);
}

TEST(SdpaArguments, KeyLengthErrorNamesTheEntry) {
  tensor4 q(2, 2, 1, 4), k(2, 3, 1, 4);
  q.setZero();
  k.setZero();
  attn::sdpa_options opt;
  opt.key_lengths = {3, 4};
  try {
    (void)attn::scaled_dot_product_attention(q, k, k, opt);
    FAIL() << "no exception";
  } catch (const attn::error& e) {
    EXPECT_NE(std::string(e.what()).find("key_lengths[1]"), std::string::npos) << e.what();
  }
}

// Asking for far more threads than there is work must not build scratch
// for every one of them (and still gives the one-thread bits).
TEST(SdpaThreads, MoreThreadsThanTasks) {
  tensor4 q(1, 300, 2, 16), k(1, 300, 2, 16);
  q.setRandom();
  k.setRandom();
  attn::sdpa_options one, many;
  one.num_threads = 1;
  many.num_threads = 10000;
  const tensor4 a = attn::scaled_dot_product_attention(q, k, k, one);
  const tensor4 b = attn::scaled_dot_product_attention(q, k, k, many);
  EXPECT_EQ(0, std::memcmp(a.data(), b.data(), sizeof(float) * a.size()));
}

}  // namespace test_sdpa_robustness
