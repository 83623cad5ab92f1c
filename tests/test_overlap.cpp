// tests/test_overlap.cpp: detail::may_overlap, the aliasing test of every
// writing entry (attn/overlap.hpp), against a byte-by-byte brute force on
// random views inside one buffer, and on the layouts the library must accept.
#include <gtest/gtest.h>

#include <array>
#include <attn/overlap.hpp>
#include <attn/sdpa.hpp>
#include <attn/view.hpp>
#include <cstdint>
#include <cstring>
#include <random>
#include <set>
#include <vector>

namespace test_overlap {

using attn::index;
using attn::strided;
using attn::detail::may_overlap;

// Every byte a view's elements cover, as offsets from `origin`.
template <class T, int R>
std::set<std::ptrdiff_t> bytes_of(const strided<T, R>& v, const unsigned char* origin) {
  std::set<std::ptrdiff_t> out;
  for (int r = 0; r < R; ++r)
    if (v.dims[r] == 0) return out;
  std::array<index, R> i{};
  for (;;) {
    const auto* p = reinterpret_cast<const unsigned char*>(v.data);
    index off = 0;
    for (int r = 0; r < R; ++r) off += i[r] * v.strides[r];
    const auto* e = p + off * static_cast<index>(sizeof(T));
    for (std::size_t b = 0; b < sizeof(T); ++b) out.insert(e + b - origin);
    int r = R - 1;
    while (r >= 0 && ++i[r] == v.dims[r]) i[r--] = 0;
    if (r < 0) return out;
  }
}

template <class T, int R>
strided<T, R> random_view(std::mt19937& rng, T* base, index room) {
  strided<T, R> v;
  std::uniform_int_distribution<index> dim(1, 3), stride(-6, 6);
  index lo = 0, hi = 0;
  for (int r = 0; r < R; ++r) {
    v.dims[r] = dim(rng);
    v.strides[r] = stride(rng);
    (v.strides[r] < 0 ? lo : hi) += v.strides[r] * (v.dims[r] - 1);
  }
  std::uniform_int_distribution<index> start(-lo, room - 1 - hi);
  v.data = base + start(rng);
  return v;
}

// Random views of two element sizes over one buffer: may_overlap must
// never miss an overlap, and on these small lattices it should be exact
// nearly always (it may only give up when a step has more than two
// candidate coefficients).
TEST(Overlap, AgreesWithBruteForce) {
  std::mt19937 rng(18);
  alignas(8) static unsigned char buffer[4096];
  int exact = 0, conservative = 0;
  for (int trial = 0; trial < 20000; ++trial) {
    std::uniform_int_distribution<index> shift(0, 3);
    auto* f = reinterpret_cast<float*>(buffer + 4 * 64);
    auto* h = reinterpret_cast<std::uint16_t*>(buffer + 4 * 64 + 2 * shift(rng));
    const auto a = random_view<float, 3>(rng, f, 200);
    const auto b = random_view<std::uint16_t, 2>(rng, h, 300);
    const auto ba = bytes_of(a, buffer), bb = bytes_of(b, buffer);
    bool truth = false;
    for (auto x : ba) truth = truth || bb.count(x);
    const bool got = may_overlap(a, b);
    ASSERT_EQ(got, may_overlap(b, a));
    if (truth) {
      ASSERT_TRUE(got) << "trial " << trial;
    }
    (got == truth ? exact : conservative)++;
  }
  EXPECT_GT(exact, 19000) << conservative << " conservative answers";
}

// Same element type, random nested layouts (as view.hpp makes them): exact.
TEST(Overlap, ExactOnSlicesOfOneBuffer) {
  std::mt19937 rng(4);
  static float buffer[2 * 3 * 2 * 4 * 5];
  for (int trial = 0; trial < 2000; ++trial) {
    // [2, 3, 2, 4, 5] packed; two random slot/head/column slices.
    const std::array<index, 5> d{2, 3, 2, 4, 5};
    const auto s = attn::detail::dense_strides(d);
    auto slice = [&] {
      std::uniform_int_distribution<index> slot(0, 1), h0(0, 3), c0(0, 4);
      const index h = h0(rng), c = c0(rng);
      std::uniform_int_distribution<index> hn(1, 4 - h), cn(1, 5 - c);
      strided<float, 4> v{buffer + slot(rng) * s[2] + h * s[3] + c,
                          {2, 3, hn(rng), cn(rng)},
                          {s[0], s[1], s[3], s[4]}};
      return v;
    };
    const auto a = slice(), b = slice();
    const auto ba = bytes_of(a, reinterpret_cast<unsigned char*>(buffer)),
               bb = bytes_of(b, reinterpret_cast<unsigned char*>(buffer));
    bool truth = false;
    for (auto x : ba) truth = truth || bb.count(x);
    ASSERT_EQ(may_overlap(a, b), truth) << "trial " << trial;
  }
}

TEST(Overlap, EmptyAndBroadcastViews) {
  std::vector<float> buf(64);
  const strided<float, 2> all{buf.data(), {8, 8}, {8, 1}};
  EXPECT_TRUE(may_overlap(all, all));
  EXPECT_FALSE(may_overlap(all, strided<float, 2>{}));                            // absent
  EXPECT_FALSE(may_overlap(all, strided<float, 2>{buf.data(), {0, 8}, {8, 1}}));  // no elements
  // A broadcast (stride 0) mask row over the last row.
  EXPECT_TRUE(may_overlap(all, strided<float, 2>{buf.data() + 56, {8, 8}, {0, 1}}));
  EXPECT_FALSE(may_overlap(strided<float, 2>{buf.data(), {7, 8}, {8, 1}},
                           strided<float, 2>{buf.data() + 56, {8, 8}, {0, 1}}));
  // Interleaved columns: even and odd features of one row-major matrix.
  EXPECT_FALSE(may_overlap(strided<float, 2>{buf.data(), {8, 4}, {8, 2}},
                           strided<float, 2>{buf.data() + 1, {8, 4}, {8, 2}}));
  // Half a float's bytes are one bf16 element.
  const strided<std::uint16_t, 1> half_word{reinterpret_cast<std::uint16_t*>(buf.data()) + 1,
                                            {1}, {1}};
  EXPECT_TRUE(may_overlap(strided<float, 1>{buf.data(), {1}, {1}}, half_word));
  EXPECT_FALSE(may_overlap(strided<float, 1>{buf.data() + 1, {1}, {1}}, half_word));
}

// The in-buffer layouts the rule must keep accepting, with the bits of the
// same call on separate tensors: q, k, v from one packed QKV projection, and
// out and lse in the same allocation after it (a region of their own), or
// out interleaved with q, k, v as a fourth slot of every row.
TEST(Overlap, DisjointSlicesOfOneBufferAreAccepted) {
  const index B = 2, L = 5, H = 2, D = 8;
  const index qkv_size = B * L * 3 * H * D, out_size = B * L * H * D, lse_size = B * H * L;
  std::vector<float> arena(static_cast<std::size_t>(qkv_size + out_size + lse_size));
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  for (index i = 0; i < qkv_size; ++i) arena[static_cast<std::size_t>(i)] = u(rng);
  Eigen::TensorMap<Eigen::Tensor<float, 5, Eigen::RowMajor>> packed(arena.data(), B, L, 3, H, D);
  const auto q = attn::packed_qkv(packed, 0), k = attn::packed_qkv(packed, 1),
             v = attn::packed_qkv(packed, 2);
  attn::sdpa_options opt;
  opt.causal = attn::causal::top_left;
  const strided<float, 4> out{arena.data() + qkv_size, {B, L, H, D}, {L * H * D, H * D, D, 1}};
  opt.lse = {arena.data() + qkv_size + out_size, {B, H, L}, {H * L, L, 1}};
  attn::scaled_dot_product_attention(q.as_const(), k.as_const(), v.as_const(), out, opt);

  // The same on separate tensors.
  using tensor4 = Eigen::Tensor<float, 4, Eigen::RowMajor>;
  tensor4 tq(B, L, H, D), tk(B, L, H, D), tv(B, L, H, D), tout(B, L, H, D);
  for (index b = 0; b < B; ++b)
    for (index i = 0; i < L; ++i)
      for (index h = 0; h < H; ++h)
        for (index d = 0; d < D; ++d) {
          tq(b, i, h, d) = *q.at(b, i, h, d);
          tk(b, i, h, d) = *k.at(b, i, h, d);
          tv(b, i, h, d) = *v.at(b, i, h, d);
        }
  Eigen::Tensor<float, 3, Eigen::RowMajor> tlse(B, H, L);
  attn::sdpa_options sep = opt;
  sep.lse = attn::view(tlse);
  attn::scaled_dot_product_attention(attn::view(tq).as_const(), attn::view(tk).as_const(),
                                     attn::view(tv).as_const(), attn::view(tout), sep);
  EXPECT_EQ(0, std::memcmp(out.data, tout.data(), sizeof(float) * out_size));
  EXPECT_EQ(0, std::memcmp(opt.lse.data, tlse.data(), sizeof(float) * lse_size));

  // out as slot 3 of [B, L, 4, H, D], between the rows of q, k and v.
  std::vector<float> rows(static_cast<std::size_t>(B * L * 4 * H * D));
  const std::array<index, 4> st{L * 4 * H * D, 4 * H * D, D, 1};
  auto slot = [&](index s) { return strided<float, 4>{rows.data() + s * H * D, {B, L, H, D}, st}; };
  for (index s = 0; s < 3; ++s) {
    const tensor4& src = s == 0 ? tq : s == 1 ? tk : tv;
    for (index b = 0; b < B; ++b)
      for (index i = 0; i < L; ++i)
        for (index h = 0; h < H; ++h)
          for (index d = 0; d < D; ++d) *slot(s).at(b, i, h, d) = src(b, i, h, d);
  }
  attn::sdpa_options no_lse = opt;
  no_lse.lse = {};
  attn::scaled_dot_product_attention(slot(0).as_const(), slot(1).as_const(), slot(2).as_const(),
                                     slot(3), no_lse);
  for (index b = 0; b < B; ++b)
    for (index i = 0; i < L; ++i)
      for (index h = 0; h < H; ++h)
        for (index d = 0; d < D; ++d) ASSERT_EQ(*slot(3).at(b, i, h, d), tout(b, i, h, d));
}

}  // namespace test_overlap
