// attn::kv_cache: incremental decoding equals one full causal forward.
//
// Tolerance: the incremental and the full computations see the same keys
// and values but tile and split them differently (split-KV chunks vs query
// tiles), so sums are rounded in another order: max |diff| <= 1e-5 · max|V|,
// the same bound and reasoning as tests/test_sdpa.cpp (fp32 accumulation
// over <= 200 keys). For bf16/half caches the full forward is run on the
// same rounded K/V, so the same bound holds; against the float cache the
// rounding of K/V itself shows, bounded by 2^-8 (bf16) / 2^-11 (half)
// relative per element: we check 2e-2 · max|V| (bf16) and 4e-3 · max|V|
// (half).
#include <gtest/gtest.h>

#include <attn/kv_cache.hpp>
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "expect_error.hpp"

namespace test_kv_cache {

using attn::index;
using tensor4 = Eigen::Tensor<float, 4, Eigen::RowMajor>;

tensor4 randn(index a, index b, index c, index d, unsigned seed) {
  std::mt19937 g(seed);
  std::normal_distribution<float> n(0.0f, 1.0f);
  tensor4 t(a, b, c, d);
  for (index i = 0; i < t.size(); ++i) t.data()[i] = n(g);
  return t;
}

// Rows [t0, t0 + n) of a [B, S, H, D] tensor as a view.
attn::strided<const float, 4> rows(const tensor4& t, index t0, index n) {
  auto v = attn::view(t);
  v.data += t0 * v.strides[1];
  v.dims[1] = n;
  return v;
}
attn::strided<float, 4> rows(tensor4& t, index t0, index n) {
  auto v = attn::view(t);
  v.data += t0 * v.strides[1];
  v.dims[1] = n;
  return v;
}

double max_abs(const tensor4& t) {
  double m = 0;
  for (index i = 0; i < t.size(); ++i) m = std::max(m, std::fabs(double(t.data()[i])));
  return m;
}

template <class T>
tensor4 rounded(const tensor4& t) {
  tensor4 r(t.dimensions());
  for (index i = 0; i < t.size(); ++i)
    r.data()[i] = static_cast<float>(static_cast<T>(t.data()[i]));
  return r;
}

struct sequence {
  index B = 2, N = 150, Hq = 8, Hkv = 2, D = 64;
  tensor4 q, k, v;
  explicit sequence(unsigned seed)
      : q(randn(2, 150, 8, 64, seed)),
        k(randn(2, 150, 2, 64, seed + 1)),
        v(randn(2, 150, 2, 64, seed + 2)) {}
};

// The reference: one causal forward over the whole sequence.
tensor4 full_forward(const tensor4& q, const tensor4& k, const tensor4& v) {
  attn::sdpa_options opt;
  opt.causal = attn::causal::bottom_right;
  return attn::scaled_dot_product_attention(q, k, v, opt);
}

// Prefill `prefill` tokens, then single tokens up to `single_until`, then
// chunks of `chunk` tokens; returns the concatenated outputs.
template <class T>
tensor4 incremental(const sequence& s, index prefill, index single_until, index chunk) {
  attn::kv_cache<T> cache(s.B, s.N, s.Hkv, s.D);
  tensor4 out(s.B, s.N, s.Hq, s.D);
  index t = 0;
  auto step = [&](index n) {
    cache.append(rows(s.k, t, n), rows(s.v, t, n));
    cache.attend(rows(s.q, t, n), rows(out, t, n));
    t += n;
  };
  step(prefill);
  while (t < single_until) step(1);
  while (t < s.N) step(std::min(chunk, s.N - t));
  EXPECT_EQ(cache.lengths(), std::vector<index>(s.B, s.N));
  return out;
}

double max_diff(const tensor4& a, const tensor4& b) {
  double m = 0;
  for (index i = 0; i < a.size(); ++i)
    m = std::max(m, std::fabs(double(a.data()[i]) - b.data()[i]));
  return m;
}

TEST(KvCache, FloatIncrementalEqualsFullCausalForward) {
  const sequence s(1);
  const tensor4 full = full_forward(s.q, s.k, s.v);
  const tensor4 inc = incremental<float>(s, 40, 70, 17);
  EXPECT_LE(max_diff(full, inc), 1e-5 * max_abs(s.v));
}

TEST(KvCache, PrefillOnlyAndTokenByTokenOnly) {
  const sequence s(2);
  const tensor4 full = full_forward(s.q, s.k, s.v);
  EXPECT_LE(max_diff(full, incremental<float>(s, s.N, s.N, 1)), 1e-5 * max_abs(s.v));
  EXPECT_LE(max_diff(full, incremental<float>(s, 1, s.N, 1)), 1e-5 * max_abs(s.v));
}

template <class T>
void check_low_precision(double vs_float_tol) {
  const sequence s(3);
  sequence r(3);
  r.k = rounded<T>(s.k);
  r.v = rounded<T>(s.v);
  const tensor4 inc = incremental<T>(s, 33, 60, 25);
  // Same rounded K/V: the fp32 bound.
  EXPECT_LE(max_diff(full_forward(r.q, r.k, r.v), inc), 1e-5 * max_abs(r.v));
  // Against the unrounded float computation: the storage rounding shows.
  EXPECT_LE(max_diff(full_forward(s.q, s.k, s.v), inc), vs_float_tol * max_abs(s.v));
}

TEST(KvCache, Bfloat16Cache) { check_low_precision<Eigen::bfloat16>(2e-2); }
TEST(KvCache, HalfCache) { check_low_precision<Eigen::half>(4e-3); }

// Sequences at different positions: each row of a chunk sees its own
// sequence's keys up to its own position.
TEST(KvCache, RaggedBatch) {
  const sequence s(4);
  attn::kv_cache<float> cache(2, s.N, s.Hkv, s.D);
  tensor4 out(2, 5, s.Hq, s.D);
  out.setConstant(-7.0f);
  // Sequence 0 gets 30 tokens, sequence 1 gets 12, then 5 and 3 more.
  cache.append(rows(s.k, 0, 30), rows(s.v, 0, 30), {30, 12});
  cache.append(rows(s.k, 30, 5), rows(s.v, 30, 5), {5, 3});
  ASSERT_EQ(cache.lengths(), (std::vector<index>{35, 15}));
  tensor4 qn(2, 5, s.Hq, s.D);
  qn = s.q.slice(Eigen::array<index, 4>{0, 30, 0, 0}, Eigen::array<index, 4>{2, 5, s.Hq, s.D});
  cache.attend(attn::view(qn), attn::view(out), {}, {5, 3});
  // Reference for sequence b: keys [0, n_b) = the first tokens appended.
  for (index b = 0; b < 2; ++b) {
    const index n = b == 0 ? 35 : 15, first_new = b == 0 ? 30 : 12, T = b == 0 ? 5 : 3;
    tensor4 kb(1, n, s.Hkv, s.D), vb(1, n, s.Hkv, s.D), qb(1, T, s.Hq, s.D);
    for (index j = 0; j < n; ++j) {
      const index src = j < first_new ? j : 30 + (j - first_new);
      for (index h = 0; h < s.Hkv; ++h)
        for (index d = 0; d < s.D; ++d) {
          kb(0, j, h, d) = s.k(b, src, h, d);
          vb(0, j, h, d) = s.v(b, src, h, d);
        }
    }
    for (index t = 0; t < T; ++t)
      for (index h = 0; h < s.Hq; ++h)
        for (index d = 0; d < s.D; ++d) qb(0, t, h, d) = qn(b, t, h, d);
    const tensor4 ref = full_forward(qb, kb, vb);
    for (index t = 0; t < 5; ++t)
      for (index h = 0; h < s.Hq; ++h)
        for (index d = 0; d < s.D; ++d) {
          if (t < T)
            EXPECT_NEAR(out(b, t, h, d), ref(0, t, h, d), 1e-5 * max_abs(vb)) << b << " " << t;
          else
            EXPECT_EQ(out(b, t, h, d), -7.0f) << "padding row written";
        }
  }
}

TEST(KvCache, OverflowThrowsAndLeavesTheCacheUnchanged) {
  const sequence s(5);
  attn::kv_cache<Eigen::bfloat16> cache(2, 20, s.Hkv, s.D);
  cache.append(rows(s.k, 0, 15), rows(s.v, 0, 15), {15, 10});
  const auto k0 = cache.keys(), v0 = cache.values();
  const std::vector<Eigen::bfloat16> kb(k0.data, k0.data + 2 * 20 * s.Hkv * s.D),
      vb(v0.data, v0.data + 2 * 20 * s.Hkv * s.D);
  // Sequence 1 would fit, sequence 0 would not: nothing may be written.
  try {
    cache.append(rows(s.k, 15, 8), rows(s.v, 15, 8), {8, 8});
    FAIL() << "no exception";
  } catch (const attn::error& e) {
    EXPECT_NE(std::string(e.what()).find("capacity = 20"), std::string::npos) << e.what();
  }
  EXPECT_EQ(cache.lengths(), (std::vector<index>{15, 10}));
  EXPECT_EQ(0, std::memcmp(kb.data(), cache.keys().data, kb.size() * sizeof(Eigen::bfloat16)));
  EXPECT_EQ(0, std::memcmp(vb.data(), cache.values().data, vb.size() * sizeof(Eigen::bfloat16)));
  // Filling exactly to capacity is fine.
  cache.append(rows(s.k, 15, 5), rows(s.v, 15, 5), {5, 5});
  EXPECT_EQ(cache.lengths(), (std::vector<index>{20, 15}));
}

// Issue 18 item 1: attend validates every sequence before it writes any.
// Lengths {3, 1}, T = 2: sequence 0's call is valid, sequence 1's is not
// (counts[1] = 2 > lengths()[1]; or an output that overlaps only for its two
// rows). The failed call must leave out and lse as they were.
TEST(KvCache, FailedAttendWritesNothing) {
  attn::kv_cache<float> cache(2, 4, 1, 4);
  const tensor4 k = randn(2, 3, 1, 4, 31), v = randn(2, 3, 1, 4, 32), q = randn(2, 2, 2, 4, 33);
  cache.append(attn::view(k).as_const(), attn::view(v).as_const(), {3, 1});
  ASSERT_EQ(cache.lengths(), (std::vector<index>{3, 1}));
  constexpr float sentinel = -12345.0f;
  tensor4 out(2, 2, 2, 4);
  Eigen::Tensor<float, 3, Eigen::RowMajor> lse(2, 2, 2);
  attn::sdpa_options opt;
  opt.lse = attn::view(lse);
  auto untouched = [&](const char* label) {
    for (index i = 0; i < out.size(); ++i) EXPECT_EQ(out.data()[i], sentinel) << label << " out " << i;
    for (index i = 0; i < lse.size(); ++i) EXPECT_EQ(lse.data()[i], sentinel) << label << " lse " << i;
  };

  out.setConstant(sentinel);
  lse.setConstant(sentinel);
  attn_test::expect_error("counts[1]",
                          [&] { cache.attend(attn::view(q).as_const(), attn::view(out), opt, {2, 2}); },
                          {"attn::kv_cache::attend: counts: expected"});
  untouched("counts");

  // Rows of a sequence share an address (stride 0 over T): harmless for
  // sequence 0's one row, an overlap for sequence 1's two.
  auto shared_rows = attn::view(out);
  shared_rows.strides[1] = 0;
  cache.append(attn::view(k).as_const(), attn::view(v).as_const(), {0, 1});
  out.setConstant(sentinel);
  lse.setConstant(sentinel);
  attn_test::expect_error(
      "out.strides",
      [&] { cache.attend(attn::view(q).as_const(), shared_rows, opt, {1, 2}); },
      {"attn::scaled_dot_product_attention: out.strides: expected"});
  untouched("overlap");
}

// A null q or out with elements is reported by the checks, and the
// per-sequence slices of a null view are never formed by offsetting null
// (fuzz_mha_cache found that UB; UBSan: "applying non-zero offset to null").
TEST(KvCache, AttendWithNullViewsThrows) {
  attn::kv_cache<float> cache(2, 4, 1, 4);
  const tensor4 k = randn(2, 3, 1, 4, 41), v = randn(2, 3, 1, 4, 42), q = randn(2, 2, 2, 4, 43);
  cache.append(attn::view(k).as_const(), attn::view(v).as_const(), {3, 3});
  tensor4 out(2, 2, 2, 4);
  auto null_q = attn::view(q).as_const();
  null_q.data = nullptr;
  attn_test::expect_error("null q", [&] { cache.attend(null_q, attn::view(out)); },
                          {"q", "non-null"});
  auto null_out = attn::view(out);
  null_out.data = nullptr;
  attn_test::expect_error("null out", [&] { cache.attend(attn::view(q).as_const(), null_out); },
                          {"out", "non-null"});
}

TEST(KvCache, ArgumentErrors) {
  attn::kv_cache<float> cache(2, 10, 2, 8);
  tensor4 k(2, 3, 2, 8), v(2, 3, 2, 8), bad(2, 3, 3, 8), q(2, 3, 4, 8), out(2, 3, 4, 8);
  k.setZero();
  v.setZero();
  attn_test::expect_error("k_new", [&] { cache.append(attn::view(bad), attn::view(v)); },
                          {"k_new"});
  attn_test::expect_error("v_new", [&] { cache.append(attn::view(k), attn::view(bad)); },
                          {"v_new"});
  attn_test::expect_error("counts.size()", [&] { cache.append(attn::view(k), attn::view(v), {1}); },
                          {"counts.size()"});
  attn_test::expect_error("counts[1]",
                          [&] {
                            cache.append(attn::view(k), attn::view(v), {1, 4});
                          },
                          {"counts[1]"});
  attn_test::expect_error("kv_heads", [&] { attn::kv_cache<float>(1, 4, 0, 8); }, {"kv_heads"});
  cache.append(attn::view(k), attn::view(v));
  attn::sdpa_options opt;
  opt.causal = attn::causal::top_left;
  attn_test::expect_error("opt.causal", [&] { cache.attend(attn::view(q), attn::view(out), opt); },
                          {"opt.causal"});
  tensor4 q_bad(2, 3, 4, 7);
  attn_test::expect_error("head_dim", [&] { cache.attend(attn::view(q_bad), attn::view(out)); },
                          {"head_dim"});
  attn_test::expect_error("counts",
                          [&] {
                            cache.attend(attn::view(q), attn::view(out), {}, {4, 1});
                          },
                          {"counts"});
}

}  // namespace test_kv_cache
