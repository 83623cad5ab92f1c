// tests/test_view.cpp: attn::strided and the view makers (view, bshd, bhsd,
// packed_qkv, broadcast_mask): dims, strides, element addresses, errors.
#include <gtest/gtest.h>

#include "expect_error.hpp"

#include <array>
#include <attn/view.hpp>
#include <initializer_list>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

namespace test_view {

using attn::index;
template <class T, int R>
using tensor = Eigen::Tensor<T, R, Eigen::RowMajor>;

using attn_test::expect_error;

TEST(View, DefaultIsEmpty) {
  attn::strided<float, 3> v;
  EXPECT_TRUE(v.empty());
  EXPECT_EQ(v.data, nullptr);
  EXPECT_EQ(v.rank, 3);
}

TEST(View, DenseRowMajorOfEveryRank) {
  tensor<float, 1> t1(5);
  tensor<float, 2> t2(3, 4);
  tensor<float, 3> t3(2, 3, 4);
  tensor<float, 4> t4(2, 3, 4, 5);
  tensor<float, 5> t5(2, 3, 4, 5, 6);
  const auto v1 = attn::view(t1);
  const auto v2 = attn::view(t2);
  const auto v3 = attn::view(t3);
  const auto v4 = attn::view(t4);
  const auto v5 = attn::view(t5);
  EXPECT_EQ(v1.dims, (std::array<index, 1>{5}));
  EXPECT_EQ(v1.strides, (std::array<index, 1>{1}));
  EXPECT_EQ(v2.dims, (std::array<index, 2>{3, 4}));
  EXPECT_EQ(v2.strides, (std::array<index, 2>{4, 1}));
  EXPECT_EQ(v3.strides, (std::array<index, 3>{12, 4, 1}));
  EXPECT_EQ(v4.dims, (std::array<index, 4>{2, 3, 4, 5}));
  EXPECT_EQ(v4.strides, (std::array<index, 4>{60, 20, 5, 1}));
  EXPECT_EQ(v5.strides, (std::array<index, 5>{360, 120, 30, 6, 1}));
  EXPECT_EQ(v4.data, t4.data());
  EXPECT_FALSE(v4.empty());
  for (index a = 0; a < 2; ++a)
    for (index b = 0; b < 3; ++b)
      for (index c = 0; c < 4; ++c)
        for (index d = 0; d < 5; ++d) EXPECT_EQ(v4.at(a, b, c, d), &t4(a, b, c, d));
}

TEST(View, ConstnessFollowsTheTensor) {
  tensor<float, 2> t(2, 2);
  const tensor<float, 2>& ct = t;
  static_assert(std::is_same<decltype(attn::view(t)), attn::strided<float, 2>>::value, "");
  static_assert(std::is_same<decltype(attn::view(ct)), attn::strided<const float, 2>>::value, "");
  tensor<bool, 2> m(2, 2);
  static_assert(std::is_same<decltype(attn::view(m)), attn::strided<bool, 2>>::value, "");
  // Mutable views convert to const ones.
  const attn::strided<const float, 2> c = attn::view(t);
  EXPECT_EQ(c.data, t.data());
  EXPECT_EQ(c.strides, attn::view(t).strides);
  const auto c2 = attn::view(t).as_const();
  static_assert(std::is_same<decltype(c2), const attn::strided<const float, 2>>::value, "");
  EXPECT_EQ(c2.dims, c.dims);
}

TEST(View, TensorMap) {
  std::vector<float> buf(24);
  Eigen::TensorMap<tensor<float, 3>> m(buf.data(), 2, 3, 4);
  const auto v = attn::view(m);
  EXPECT_EQ(v.data, buf.data());
  EXPECT_EQ(v.dims, (std::array<index, 3>{2, 3, 4}));
  EXPECT_EQ(v.strides, (std::array<index, 3>{12, 4, 1}));
  EXPECT_EQ(v.at(1, 2, 3), buf.data() + 23);
}

TEST(View, BshdIsTheIdentity) {
  tensor<float, 4> t(2, 7, 3, 8);
  const auto a = attn::bshd(t);
  const auto b = attn::view(t);
  EXPECT_EQ(a.data, b.data);
  EXPECT_EQ(a.dims, b.dims);
  EXPECT_EQ(a.strides, b.strides);
}

TEST(View, BhsdSwapsSeqAndHeads) {
  const index B = 2, H = 3, S = 5, D = 4;
  tensor<float, 4> t(B, H, S, D);
  const auto v = attn::bhsd(t);
  EXPECT_EQ(v.dims, (std::array<index, 4>{B, S, H, D}));
  EXPECT_EQ(v.strides, (std::array<index, 4>{H * S * D, D, S * D, 1}));
  for (index b = 0; b < B; ++b)
    for (index s = 0; s < S; ++s)
      for (index h = 0; h < H; ++h)
        for (index d = 0; d < D; ++d) EXPECT_EQ(v.at(b, s, h, d), &t(b, h, s, d));
}

TEST(View, PackedQkv) {
  const index B = 2, S = 5, H = 3, D = 4;
  tensor<float, 5> t(B, S, 3, H, D);
  for (int which = 0; which < 3; ++which) {
    const auto v = attn::packed_qkv(t, which);
    static_assert(std::is_same<decltype(v), const attn::strided<float, 4>>::value, "");
    EXPECT_EQ(v.dims, (std::array<index, 4>{B, S, H, D}));
    EXPECT_EQ(v.strides, (std::array<index, 4>{S * 3 * H * D, 3 * H * D, D, 1}));
    EXPECT_EQ(v.data, t.data() + which * H * D);
    for (index b = 0; b < B; ++b)
      for (index s = 0; s < S; ++s)
        for (index h = 0; h < H; ++h)
          for (index d = 0; d < D; ++d) EXPECT_EQ(v.at(b, s, h, d), &t(b, s, which, h, d));
  }
  const tensor<float, 5>& ct = t;
  static_assert(
      std::is_same<decltype(attn::packed_qkv(ct, 0)), attn::strided<const float, 4>>::value, "");
}

TEST(View, PackedQkvErrors) {
  tensor<float, 5> bad(2, 5, 2, 3, 4);
  expect_error("dimension(2) != 3", [&] { (void)attn::packed_qkv(bad, 0); },
               {"packed_qkv", "t.dimension(2)"});
  tensor<float, 5> t(2, 5, 3, 3, 4);
  expect_error("which = 3", [&] { (void)attn::packed_qkv(t, 3); }, {"packed_qkv", "which"});
  expect_error("which = -1", [&] { (void)attn::packed_qkv(t, -1); }, {"packed_qkv", "which"});
}

// broadcast_mask: every broadcast dim has stride 0 and every element address
// is the source element NumPy broadcasting would pick.
template <class T, int R>
void check_broadcast(tensor<T, R>& src, index B, index H, index L, index S) {
  std::string shape;
  for (int r = 0; r < R; ++r) shape += (r ? "x" : "") + std::to_string(src.dimension(r));
  SCOPED_TRACE("source " + shape);
  const auto v = attn::broadcast_mask(src, B, H, L, S);
  static_assert(std::is_same<typename decltype(v)::value_type, T>::value, "");
  EXPECT_EQ(v.dims, (std::array<index, 4>{B, H, L, S}));
  EXPECT_EQ(v.data, src.data());
  const auto dense = attn::view(src).strides;
  for (int r = 0; r < 4; ++r) {
    const int s = r - (4 - R);
    const bool broadcast = s < 0 || src.dimension(s) == 1;
    EXPECT_EQ(v.strides[r], broadcast ? 0 : dense[s]) << "dim " << r;
  }
  for (index b = 0; b < B; ++b)
    for (index h = 0; h < H; ++h)
      for (index i = 0; i < L; ++i)
        for (index j = 0; j < S; ++j) {
          const index c[4] = {b, h, i, j};
          std::array<index, R> idx{};
          for (int r = 0; r < R; ++r) idx[r] = src.dimension(r) == 1 ? 0 : c[4 - R + r];
          ASSERT_EQ(v.at(b, h, i, j), &src(idx));
        }
}

TEST(BroadcastMask, ShapesAndStrides) {
  const index B = 2, H = 3, L = 4, S = 5;
  tensor<bool, 2> m2(L, S);
  check_broadcast(m2, B, H, L, S);
  tensor<float, 2> a2(L, S);
  check_broadcast(a2, B, H, L, S);
  tensor<float, 2> a2s(1, S);
  check_broadcast(a2s, B, H, L, S);
  for (std::array<index, 3> d :
       {std::array<index, 3>{1, L, S}, {H, L, S}, {H, 1, S}, {1, 1, 1}, {H, L, 1}}) {
    tensor<bool, 3> m(d[0], d[1], d[2]);
    check_broadcast(m, B, H, L, S);
    tensor<float, 3> a(d[0], d[1], d[2]);
    check_broadcast(a, B, H, L, S);
  }
  for (std::array<index, 4> d : {std::array<index, 4>{B, H, L, S},
                                 {B, 1, L, S},
                                 {1, H, 1, S},
                                 {B, 1, 1, S},
                                 {1, 1, 1, 1},
                                 {1, 1, L, 1}}) {
    tensor<bool, 4> m(d[0], d[1], d[2], d[3]);
    check_broadcast(m, B, H, L, S);
    tensor<float, 4> a(d[0], d[1], d[2], d[3]);
    check_broadcast(a, B, H, L, S);
  }
  // Target dims of 1: the source's 1 matches and gets stride 0 either way.
  tensor<float, 4> one(1, 1, 1, 7);
  const auto v = attn::broadcast_mask(one, 1, 1, 1, 7);
  EXPECT_EQ(v.strides, (std::array<index, 4>{0, 0, 0, 1}));
}

TEST(BroadcastMask, ConstSourceGivesConstView) {
  const tensor<bool, 2> m(3, 4);
  static_assert(std::is_same<decltype(attn::broadcast_mask(m, 1, 1, 3, 4)),
                             attn::strided<const bool, 4>>::value,
                "");
  // And a mutable source converts to what sdpa_options holds.
  tensor<float, 2> a(3, 4);
  const attn::strided<const float, 4> c = attn::broadcast_mask(a, 2, 2, 3, 4);
  EXPECT_EQ(c.strides, (std::array<index, 4>{0, 0, 4, 1}));
}

TEST(BroadcastMask, Errors) {
  tensor<bool, 2> m2(4, 6);
  expect_error("rank 2, S mismatch", [&] { (void)attn::broadcast_mask(m2, 2, 3, 4, 5); },
               {"broadcast_mask", "mask", "[2, 3, 4, 5]", "[4, 6]"});
  tensor<bool, 2> m2l(3, 5);
  expect_error("rank 2, L mismatch", [&] { (void)attn::broadcast_mask(m2l, 2, 3, 4, 5); },
               {"broadcast_mask", "mask"});
  tensor<float, 3> m3(2, 4, 5);
  expect_error("rank 3, heads mismatch", [&] { (void)attn::broadcast_mask(m3, 2, 3, 4, 5); },
               {"broadcast_mask", "mask", "[2, 4, 5]"});
  tensor<float, 4> m4(3, 1, 4, 5);
  expect_error("rank 4, batch mismatch", [&] { (void)attn::broadcast_mask(m4, 2, 3, 4, 5); },
               {"broadcast_mask", "mask"});
  // A 1 in the target does not accept a larger source dim.
  tensor<float, 4> m4b(2, 3, 4, 5);
  expect_error("source larger than target", [&] { (void)attn::broadcast_mask(m4b, 1, 3, 4, 5); },
               {"broadcast_mask", "mask"});
}

TEST(Error, IsInvalidArgument) {
  static_assert(std::is_base_of<std::invalid_argument, attn::error>::value, "");
  try {
    attn::detail::fail("fn", "arg", 3, std::array<index, 2>{1, 2});
  } catch (const std::invalid_argument& e) {
    EXPECT_STREQ(e.what(), "attn::fn: arg: expected 3, got [1, 2]");
  }
}

}  // namespace test_view
