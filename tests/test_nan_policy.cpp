// tests/test_nan_policy.cpp: the NaN / infinity policy (README, "NaN and
// infinity"), for scaled dot-product attention (both kernel paths: the
// split-KV decode that few query rows take and the tiled flash forward),
// additive attention and the multi-head layer with its cache.
//
//  1. A NaN in the inputs reaches exactly the rows that read it:
//     Q row i (one head)  -> that output row and its LSE, nothing else;
//     K row j             -> every row that attends to key j, and no row
//                            that cannot see it (causal / window band,
//                            key_lengths, a false bool-mask entry, an
//                            additive -inf);
//     V row j, feature d  -> feature d of the rows that attend to key j.
//  2. Masks: -inf in an additive mask masks the key exactly as false in a
//     bool mask does (the same output bits); +inf saturates (that key takes
//     the weight, shared with other +inf keys); a NaN mask entry makes its
//     row NaN. A row with no visible key gives 0 and LSE -inf.
//  3. The library never makes a NaN or an inf from finite inputs: scores
//     that overflow fp32 saturate (an overflowing key takes the weight),
//     additive mask values saturate at +-FLT_MAX (in log2 units), tanh
//     saturates at +-1. Scope: every score term q_d·k_d·scale·log2(e) and
//     every projection term w·x representable in fp32 (or the terms of one
//     sign), and |v| small enough that the visible values sum below FLT_MAX.
//
// Each finding a test was written for is named (F2, F3, F4, F6, F14:
// tests/fuzz/fuzz_input.hpp); where the library still breaks the policy the
// test is DISABLED_ (only F4, the accumulation overflow, is left) and names
// the finding (tests/test_fuzz_regressions.cpp, tests/fuzz/fuzz_input.hpp).
#include <gtest/gtest.h>

#include <attn/attn.hpp>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

namespace {

using attn::index;
using tensor2 = Eigen::Tensor<float, 2, Eigen::RowMajor>;
using tensor2b = Eigen::Tensor<bool, 2, Eigen::RowMajor>;
using tensor3 = Eigen::Tensor<float, 3, Eigen::RowMajor>;
using tensor4 = Eigen::Tensor<float, 4, Eigen::RowMajor>;
using matrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
constexpr float nan_f = std::numeric_limits<float>::quiet_NaN();
constexpr float inf_f = std::numeric_limits<float>::infinity();
constexpr float big = std::numeric_limits<float>::max();

bool finite_row(const tensor4& o, index b, index i, index h) {
  for (index d = 0; d < o.dimension(3); ++d)
    if (!std::isfinite(o(b, i, h, d))) return false;
  return true;
}
bool nan_row(const tensor4& o, index b, index i, index h) {
  for (index d = 0; d < o.dimension(3); ++d)
    if (!std::isnan(o(b, i, h, d))) return false;
  return true;
}
bool all_finite(const float* p, index n) {
  for (index i = 0; i < n; ++i)
    if (!std::isfinite(p[i])) return false;
  return true;
}

// A small problem: B 2, Hq 4, Hkv 2, d 8, S keys; L = 3 takes the split-KV
// decode (L · group <= 32), L = 80 the tiled path. K/V float or bf16.
struct problem {
  index B = 2, L, S, Hq = 4, Hkv = 2, D = 8;
  tensor4 q, k, v;
  problem(index L_, index S_) : L(L_), S(S_), q(2, L_, 4, 8), k(2, S_, 2, 8), v(2, S_, 2, 8) {
    q.setRandom();
    k.setRandom();
    v.setRandom();
  }
  template <class KV>
  tensor4 run(const attn::sdpa_options& opt = {}, tensor3* lse = nullptr) const {
    const Eigen::Tensor<KV, 4, Eigen::RowMajor> kk = k.cast<KV>(), vv = v.cast<KV>();
    tensor4 out(B, L, Hq, D);
    attn::sdpa_options o = opt;
    if (lse) {
      *lse = tensor3(B, Hq, L);
      o.lse = attn::view(*lse);
    }
    attn::scaled_dot_product_attention(attn::view(q).as_const(), attn::view(kk).as_const(),
                                       attn::view(vv).as_const(), attn::view(out), o);
    return out;
  }
};

struct path {
  const char* name;
  index L;
};
const path decode_path{"decode", 3}, tiled_path{"tiled", 80};

// --- 1. NaN reaches the rows that read it, and only those ----------------------

// Q row NaN: every other row is as without it (bit for bit); with
// check_hits, that row is NaN and so is its LSE.
template <class KV>
void query_nan_stays_in_its_row(const path& p, bool check_hits) {
  SCOPED_TRACE(p.name);
  problem pr(p.L, 50);
  tensor3 lse0, lse;
  const tensor4 clean = pr.run<KV>({}, &lse0);
  pr.q(1, 2, 3, 5) = nan_f;
  const tensor4 out = pr.run<KV>({}, &lse);
  for (index b = 0; b < pr.B; ++b)
    for (index i = 0; i < pr.L; ++i)
      for (index h = 0; h < pr.Hq; ++h) {
        const bool hit = b == 1 && i == 2 && h == 3;
        if (hit) {
          if (!check_hits) continue;
          EXPECT_TRUE(nan_row(out, b, i, h));
          EXPECT_TRUE(std::isnan(lse(b, h, i)));
        } else {
          for (index d = 0; d < pr.D; ++d) ASSERT_EQ(out(b, i, h, d), clean(b, i, h, d));
          ASSERT_EQ(lse(b, h, i), lse0(b, h, i));
        }
      }
}
TEST(NanPolicy, QueryNaNStaysInItsRow) {
  for (const path& p : {decode_path, tiled_path}) {
    query_nan_stays_in_its_row<float>(p, false);
    query_nan_stays_in_its_row<Eigen::bfloat16>(p, false);
  }
}
// F14: a row whose scores are NaN is reported as a row with no visible key
// (softmax::finish_row_log2 tests !(sum > 0)): LSE -inf on both paths, and on
// the split-KV path output 0, or with several key chunks a finite result of
// the other chunks. Silent garbage instead of NaN.
TEST(NanPolicy, QueryNaNPropagatesToItsRow) {
  for (const path& p : {decode_path, tiled_path}) query_nan_stays_in_its_row<float>(p, true);
}

// K row j NaN: the rows that cannot see key j are finite and equal to the
// result without the NaN (bit for bit: hidden keys never enter); with
// check_hits, the rows that see it are NaN.
enum class hide { causal, bool_mask, key_lengths, additive_minus_inf, window };

template <class KV>
void key_nan_reaches_only_rows_that_see_it(const path& p, hide how, bool check_hits = false) {
  SCOPED_TRACE(std::string(p.name) + " hide " + std::to_string(static_cast<int>(how)));
  const index S = p.L;  // L == S: causal top-left hides key j from rows i < j
  problem pr(p.L, S);
  const index j = p.L / 2;
  attn::sdpa_options opt;
  tensor2b allow(p.L, S);
  tensor2 add(p.L, S);
  allow.setConstant(true);
  add.setZero();
  auto hidden = [&](index b, index i) {
    switch (how) {
      case hide::causal: return i < j;
      case hide::bool_mask:
      case hide::additive_minus_inf: return i % 2 == 0;
      case hide::key_lengths: return b == 0;
      default: return i < j - 1 || i > j + 1;  // window (1, 1) around i (top-left)
    }
  };
  switch (how) {
    case hide::causal: opt.causal = attn::causal::top_left; break;
    case hide::bool_mask:
      for (index i = 0; i < p.L; i += 2) allow(i, j) = false;
      opt.bool_mask = attn::broadcast_mask(allow, pr.B, pr.Hq, p.L, S);
      break;
    case hide::additive_minus_inf:
      for (index i = 0; i < p.L; i += 2) add(i, j) = -inf_f;
      opt.additive_mask = attn::broadcast_mask(add, pr.B, pr.Hq, p.L, S);
      break;
    case hide::key_lengths: opt.key_lengths = {j, S}; break;
    case hide::window: opt.window = attn::sliding_window{1, 1, attn::alignment::top_left}; break;
  }
  const tensor4 clean = pr.run<KV>(opt);
  pr.k(0, j, 0, 2) = nan_f;  // kv head 0: query heads 0 and 1
  pr.k(1, j, 0, 2) = nan_f;
  const tensor4 out = pr.run<KV>(opt);
  for (index b = 0; b < pr.B; ++b)
    for (index i = 0; i < p.L; ++i)
      for (index h = 0; h < pr.Hq; ++h) {
        if (h < 2 && !hidden(b, i)) {
          if (check_hits) {
            EXPECT_TRUE(nan_row(out, b, i, h)) << b << " " << i << " " << h;
          }
        } else {
          ASSERT_TRUE(finite_row(out, b, i, h)) << b << " " << i << " " << h;
          for (index d = 0; d < pr.D; ++d) ASSERT_EQ(out(b, i, h, d), clean(b, i, h, d));
        }
      }
}
TEST(NanPolicy, KeyNaNReachesOnlyRowsThatSeeIt) {
  for (const path& p : {decode_path, tiled_path})
    for (hide how : {hide::causal, hide::bool_mask, hide::key_lengths, hide::window}) {
      key_nan_reaches_only_rows_that_see_it<float>(p, how);
      key_nan_reaches_only_rows_that_see_it<Eigen::bfloat16>(p, how);
    }
}
// F14 (see above): the rows that see the NaN key are 0 on the split-KV path.
TEST(NanPolicy, KeyNaNPropagatesToRowsThatSeeIt) {
  for (const path& p : {decode_path, tiled_path})
    for (hide how : {hide::causal, hide::bool_mask, hide::key_lengths, hide::window})
      key_nan_reaches_only_rows_that_see_it<float>(p, how, true);
  // Several key chunks on the split-KV path: the NaN chunk must not drop out.
  problem pr(1, 3000);
  pr.k(0, 2500, 0, 0) = nan_f;
  const tensor4 out = pr.run<float>();
  EXPECT_TRUE(nan_row(out, 0, 0, 0));
}
// F3: both paths add the mask's -inf to the NaN score (NaN + -inf = NaN)
// instead of masking: the rows that hide the key turn NaN (tiled path) or,
// through F14, 0 (split-KV path).
TEST(NanPolicy, KeyNaNHiddenByAdditiveMinusInf) {
  for (const path& p : {decode_path, tiled_path})
    key_nan_reaches_only_rows_that_see_it<float>(p, hide::additive_minus_inf);
}

// V row j feature c NaN: feature c of the rows that see key j is NaN, every
// other feature of those rows and every row that cannot see key j is as
// without the NaN.
template <class KV>
void value_nan_reaches_only_rows_that_see_it(const path& p, hide how) {
  SCOPED_TRACE(std::string(p.name) + " hide " + std::to_string(static_cast<int>(how)));
  const index S = p.L;
  problem pr(p.L, S);
  const index j = p.L / 2, c = 3;
  attn::sdpa_options opt;
  tensor2b allow(p.L, S);
  tensor2 add(p.L, S);
  allow.setConstant(true);
  add.setZero();
  auto hidden = [&](index i) {
    return how == hide::causal ? i < j : i % 2 == 0;
  };
  if (how == hide::causal) opt.causal = attn::causal::top_left;
  if (how == hide::bool_mask) {
    for (index i = 0; i < p.L; i += 2) allow(i, j) = false;
    opt.bool_mask = attn::broadcast_mask(allow, pr.B, pr.Hq, p.L, S);
  }
  if (how == hide::additive_minus_inf) {
    for (index i = 0; i < p.L; i += 2) add(i, j) = -inf_f;
    opt.additive_mask = attn::broadcast_mask(add, pr.B, pr.Hq, p.L, S);
  }
  const tensor4 clean = pr.run<KV>(opt);
  pr.v(0, j, 1, c) = nan_f;  // kv head 1: query heads 2 and 3, batch 0
  const tensor4 out = pr.run<KV>(opt);
  for (index b = 0; b < pr.B; ++b)
    for (index i = 0; i < p.L; ++i)
      for (index h = 0; h < pr.Hq; ++h)
        for (index d = 0; d < pr.D; ++d) {
          const bool hit = b == 0 && h >= 2 && !hidden(i) && d == c;
          if (hit)
            EXPECT_TRUE(std::isnan(out(b, i, h, d))) << i << " " << h;  // p > 0 here: v is read
          else
            ASSERT_EQ(out(b, i, h, d), clean(b, i, h, d)) << b << " " << i << " " << h << " " << d;
        }
}
TEST(NanPolicy, ValueNaNReachesOnlyRowsThatSeeItDecodePath) {
  for (hide how : {hide::causal, hide::bool_mask, hide::additive_minus_inf}) {
    value_nan_reaches_only_rows_that_see_it<float>(decode_path, how);
    value_nan_reaches_only_rows_that_see_it<Eigen::bfloat16>(decode_path, how);
  }
}
// F2: the tiled path computes O += P·V over whole blocks of rows and keys, so
// a hidden key's NaN value reaches rows through 0 · NaN = NaN.
TEST(NanPolicy, ValueNaNReachesOnlyRowsThatSeeItTiledPath) {
  for (hide how : {hide::causal, hide::bool_mask, hide::additive_minus_inf})
    value_nan_reaches_only_rows_that_see_it<float>(tiled_path, how);
}

// --- 2. Masks --------------------------------------------------------------------

// An additive mask of -inf (and finite values) gives the same bits as a bool
// mask that is false where the additive one is -inf (with those finite
// values, and 0 under the false entries).
TEST(NanPolicy, MinusInfAdditiveMasksLikeABoolMask) {
  for (const path& p : {decode_path, tiled_path}) {
    SCOPED_TRACE(p.name);
    problem pr(p.L, 70);
    tensor2 add(p.L, 70), add_finite(p.L, 70);
    tensor2b allow(p.L, 70);
    add.setRandom();
    for (index i = 0; i < p.L; ++i)
      for (index j = 0; j < 70; ++j) {
        const bool masked = (i * 7 + j * 3) % 5 == 0 || i == 1;  // row 1: everything masked
        add_finite(i, j) = masked ? 0.0f : add(i, j);
        allow(i, j) = !masked;
        if (masked) add(i, j) = -inf_f;
      }
    attn::sdpa_options a, m;
    a.additive_mask = attn::broadcast_mask(add, pr.B, pr.Hq, p.L, 70);
    m.additive_mask = attn::broadcast_mask(add_finite, pr.B, pr.Hq, p.L, 70);
    m.bool_mask = attn::broadcast_mask(allow, pr.B, pr.Hq, p.L, 70);
    tensor3 lse_a, lse_m;
    const tensor4 oa = pr.run<float>(a, &lse_a), om = pr.run<float>(m, &lse_m);
    EXPECT_EQ(0, std::memcmp(oa.data(), om.data(), sizeof(float) * oa.size()));
    EXPECT_EQ(0, std::memcmp(lse_a.data(), lse_m.data(), sizeof(float) * lse_a.size()));
    for (index b = 0; b < pr.B; ++b)
      for (index h = 0; h < pr.Hq; ++h) {
        EXPECT_EQ(lse_a(b, h, 1), -inf_f);  // the fully masked row
        for (index d = 0; d < pr.D; ++d) EXPECT_EQ(oa(b, 1, h, d), 0.0f);
      }
  }
}

// +inf in an additive mask: that key takes the weight (two +inf keys share
// it); the row stays finite.
TEST(NanPolicy, PlusInfAdditiveSaturates) {
  for (const path& p : {decode_path, tiled_path}) {
    SCOPED_TRACE(p.name);
    problem pr(p.L, 40);
    tensor2 add(p.L, 40);
    add.setZero();
    for (index i = 0; i < p.L; ++i) add(i, 7) = inf_f;
    add(0, 9) = inf_f;  // row 0: keys 7 and 9 share the weight
    attn::sdpa_options opt;
    opt.additive_mask = attn::broadcast_mask(add, pr.B, pr.Hq, p.L, 40);
    const tensor4 out = pr.run<float>(opt);
    for (index b = 0; b < pr.B; ++b)
      for (index h = 0; h < pr.Hq; ++h)
        for (index d = 0; d < pr.D; ++d) {
          const index hk = h / 2;
          EXPECT_FLOAT_EQ(out(b, 0, h, d), 0.5f * (pr.v(b, 7, hk, d) + pr.v(b, 9, hk, d)));
          for (index i = 1; i < p.L; ++i) ASSERT_FLOAT_EQ(out(b, i, h, d), pr.v(b, 7, hk, d));
        }
  }
}

// A NaN in the additive mask stays in its row (and makes that row NaN).
TEST(NanPolicy, NaNInAdditiveMaskStaysInItsRow) {
  for (const path& p : {decode_path, tiled_path}) {
    SCOPED_TRACE(p.name);
    problem pr(p.L, 40);
    Eigen::Tensor<float, 4, Eigen::RowMajor> add(pr.B, pr.Hq, p.L, 40);
    add.setZero();
    add(1, 2, 1, 5) = nan_f;
    attn::sdpa_options opt;
    opt.additive_mask = attn::view(add);
    const tensor4 out = pr.run<float>(opt);
    for (index b = 0; b < pr.B; ++b)
      for (index i = 0; i < p.L; ++i)
        for (index h = 0; h < pr.Hq; ++h) {
          if (!(b == 1 && h == 2 && i == 1)) {
            ASSERT_TRUE(finite_row(out, b, i, h));
          }
        }
  }
}

// --- 3. No NaN from finite inputs --------------------------------------------------

TEST(NanPolicy, FiniteExtremesNeverMakeNaN) {
  for (const path& p : {decode_path, tiled_path}) {
    SCOPED_TRACE(p.name);
    auto expect_finite = [&](const char* what, const problem& pr, const attn::sdpa_options& opt) {
      tensor3 lse;
      const tensor4 f = pr.run<float>(opt, &lse);
      const tensor4 h = pr.run<Eigen::bfloat16>(opt);
      EXPECT_TRUE(all_finite(f.data(), f.size())) << what;
      EXPECT_TRUE(all_finite(h.data(), h.size())) << what << " (bf16)";
      for (index i = 0; i < lse.size(); ++i) ASSERT_FALSE(std::isnan(lse.data()[i])) << what;
    };
    {  // scores overflow fp32 (q·k ~ 1e38 · 8 per term sum): saturate
      problem pr(p.L, 30);
      pr.q.setConstant(1e19f);
      pr.k.setConstant(1e19f);
      expect_finite("overflowing scores", pr, {});
    }
    {  // overflowing scores of both signs in one row
      problem pr(p.L, 30);
      pr.q.setConstant(1e19f);
      for (index j = 0; j < 30; ++j) pr.k.chip(j, 1).setConstant(j % 2 ? 1e19f : -1e19f);
      expect_finite("overflowing scores of both signs", pr, {});
    }
    {  // huge scale with ordinary inputs
      problem pr(p.L, 30);
      attn::sdpa_options opt;
      opt.scale = 1e30f;
      expect_finite("scale 1e30", pr, opt);
    }
    {  // additive masks at +-FLT_MAX
      problem pr(p.L, 30);
      tensor2 add(p.L, 30);
      for (index i = 0; i < p.L; ++i)
        for (index j = 0; j < 30; ++j) add(i, j) = (i + j) % 3 == 0 ? big : (i + j) % 3 == 1 ? -big : 0;
      attn::sdpa_options opt;
      opt.additive_mask = attn::broadcast_mask(add, pr.B, pr.Hq, p.L, 30);
      expect_finite("additive +-FLT_MAX", pr, opt);
    }
    {  // denormals and zeros
      problem pr(p.L, 30);
      pr.q.setConstant(1e-40f);
      pr.k.setConstant(-1e-40f);
      pr.v.setConstant(1e-40f);
      expect_finite("denormals", pr, {});
    }
    {  // large values, far from overflow of their sums
      problem pr(p.L, 30);
      pr.v = pr.v * 1e30f;
      pr.q = pr.q * 1e15f;
      expect_finite("v 1e30, q 1e15", pr, {});
    }
  }
}

// F3: a NaN additive entry under a false bool-mask entry reaches the row
// (-inf + NaN): the key is hidden, its additive value should not be read.
TEST(NanPolicy, AdditiveNaNUnderFalseBoolEntry) {
  for (const path& p : {decode_path, tiled_path}) {
    SCOPED_TRACE(p.name);
    problem pr(p.L, 40);
    tensor2 add(p.L, 40);
    tensor2b allow(p.L, 40);
    add.setZero();
    allow.setConstant(true);
    for (index i = 0; i < p.L; ++i) add(i, 5) = nan_f, allow(i, 5) = false;
    attn::sdpa_options with_nan, without;
    with_nan.additive_mask = attn::broadcast_mask(add, pr.B, pr.Hq, p.L, 40);
    with_nan.bool_mask = attn::broadcast_mask(allow, pr.B, pr.Hq, p.L, 40);
    without.bool_mask = with_nan.bool_mask;
    const tensor4 a = pr.run<float>(with_nan), b = pr.run<float>(without);
    EXPECT_EQ(0, std::memcmp(a.data(), b.data(), sizeof(float) * a.size()));
  }
}

// F4: the unnormalised accumulation O = Σ 2^(s - max) v overflows when the
// visible values sum past FLT_MAX: inf, then NaN (inf · 0) when a later key
// raises the maximum. The exact output is at most max|v|.
TEST(NanPolicy, DISABLED_HugeValuesNeverMakeNaN) {
  for (const path& p : {decode_path, tiled_path}) {
    SCOPED_TRACE(p.name);
    problem pr(p.L, 300);
    pr.q.setConstant(1.0f);
    pr.k.setZero();
    pr.v.setConstant(3e38f);
    pr.k.chip(299, 1).setConstant(100.0f);  // the last key dominates
    const tensor4 out = pr.run<float>();
    EXPECT_TRUE(all_finite(out.data(), out.size()));
  }
}

// F6: a finite q·k that overflows to +inf, hidden by an additive -inf:
// inf + -inf = NaN, which the tiled path returns and the split-KV path (F14)
// turns into 0. Either way not the result without that key.
TEST(NanPolicy, OverflowingScoreHiddenByAdditiveMinusInf) {
  for (const path& p : {decode_path, tiled_path}) {
    SCOPED_TRACE(p.name);
    problem pr(p.L, 8);
    pr.q.setConstant(1e20f);
    pr.k.setZero();
    pr.k.chip(2, 1).setConstant(1e20f);
    tensor2 add(p.L, 8);
    tensor2b allow(p.L, 8);
    add.setZero();
    allow.setConstant(true);
    for (index i = 0; i < p.L; ++i) add(i, 2) = -inf_f, allow(i, 2) = false;
    attn::sdpa_options a, m;
    a.additive_mask = attn::broadcast_mask(add, pr.B, pr.Hq, p.L, 8);
    m.bool_mask = attn::broadcast_mask(allow, pr.B, pr.Hq, p.L, 8);
    const tensor4 out = pr.run<float>(a), want = pr.run<float>(m);
    ASSERT_TRUE(all_finite(out.data(), out.size()));
    EXPECT_EQ(0, std::memcmp(out.data(), want.data(), sizeof(float) * out.size()));
  }
}

// --- additive attention ---------------------------------------------------------------

attn::additive_attention bahdanau(index da, index dq, index dk) {
  attn::additive_weights w;
  w.w_q = matrix::Random(da, dq);
  w.w_k = matrix::Random(da, dk);
  w.bias = Eigen::VectorXf::Random(da);
  w.v = Eigen::VectorXf::Random(da);
  return attn::additive_attention(w);
}

TEST(NanPolicy, AdditiveAttention) {
  const attn::additive_attention layer = bahdanau(12, 6, 5);
  tensor3 q(2, 4, 6), k(2, 9, 5), v(2, 9, 3), w(2, 4, 9);
  q.setRandom();
  k.setRandom();
  v.setRandom();
  attn::additive_options opt;
  opt.key_lengths = {7, 9};
  opt.weights = attn::view(w);
  auto run = [&] {
    tensor3 out(2, 4, 3);
    layer.forward(attn::view(q).as_const(), attn::view(k).as_const(), attn::view(v).as_const(),
                  attn::view(out), opt);
    return out;
  };
  const tensor3 clean = run();
  // A NaN query: its row (output and weights) only.
  q(1, 2, 0) = nan_f;
  tensor3 out = run();
  for (index b = 0; b < 2; ++b)
    for (index i = 0; i < 4; ++i)
      for (index d = 0; d < 3; ++d) {
        if (b == 1 && i == 2)
          EXPECT_TRUE(std::isnan(out(b, i, d)));
        else
          ASSERT_EQ(out(b, i, d), clean(b, i, d));
      }
  q(1, 2, 0) = 0.5f;
  const tensor3 clean2 = run();
  // NaN in a key / value that key_lengths hides (batch 0, key 8): nothing.
  k(0, 8, 1) = nan_f;
  v(0, 8, 2) = nan_f;
  out = run();
  EXPECT_EQ(0, std::memcmp(out.data(), clean2.data(), sizeof(float) * out.size()));
  EXPECT_TRUE(all_finite(w.data(), w.size()));
  // NaN in a visible key: every query of that batch entry, not the other.
  k(1, 3, 0) = nan_f;
  out = run();
  for (index i = 0; i < 4; ++i)
    for (index d = 0; d < 3; ++d) {
      EXPECT_TRUE(std::isnan(out(1, i, d)));
      ASSERT_EQ(out(0, i, d), clean2(0, i, d));
    }
}

TEST(NanPolicy, AdditiveAttentionFiniteExtremes) {
  tensor3 q(1, 3, 6), k(1, 9, 6), v(1, 9, 3);
  q.setConstant(1e30f);  // projections ~1e30: tanh saturates at +-1
  k.setConstant(-1e30f);
  v.setRandom();
  const attn::additive_attention layer = bahdanau(12, 6, 6);
  const tensor3 out = layer.forward(q, k, v);
  EXPECT_TRUE(all_finite(out.data(), out.size()));
  attn::additive_weights dw;
  dw.score = attn::score_function::dot;
  const attn::additive_attention dot(dw);
  tensor3 qd(1, 2, 4), kd(1, 5, 4);
  qd.setConstant(1e-40f);  // denormal scores
  kd.setConstant(1e-40f);
  const tensor3 o2 = dot.forward(qd, kd, v.slice(std::array<index, 3>{0, 0, 0},
                                                 std::array<index, 3>{1, 5, 3}).eval());
  EXPECT_TRUE(all_finite(o2.data(), o2.size()));
}

// --- multi-head layer and cache ----------------------------------------------------------

attn::multi_head_attention small_layer() {
  attn::mha_config cfg;
  cfg.embed_dim = 16;
  cfg.num_heads = 2;
  attn::mha_weights w;
  for (attn::linear* l : {&w.q, &w.k, &w.v, &w.o}) {
    l->weight = matrix::Random(16, 16) * 0.3f;
    l->bias = Eigen::VectorXf::Random(16) * 0.1f;
  }
  auto rope = std::make_shared<attn::rope_table>(64, 8);
  return attn::multi_head_attention(cfg, w, {rope, attn::rope_layout::half_split});
}

bool finite_token(const tensor3& y, index b, index t) {
  for (index e = 0; e < y.dimension(2); ++e)
    if (!std::isfinite(y(b, t, e))) return false;
  return true;
}

// Cross-attention, query token t NaN: every other token is as without it;
// with check_hits, token t's output is NaN.
void mha_query_nan(bool check_hits) {
  const attn::multi_head_attention layer = small_layer();
  tensor3 x(2, 5, 16), mem(2, 7, 16);
  x.setRandom();
  mem.setRandom();
  const tensor3 clean = layer.forward(x, mem, mem);
  x(0, 3, 4) = nan_f;
  const tensor3 y = layer.forward(x, mem, mem);
  for (index b = 0; b < 2; ++b)
    for (index t = 0; t < 5; ++t) {
      if (b == 0 && t == 3) {
        if (check_hits) {
          EXPECT_FALSE(finite_token(y, b, t));
        }
        continue;
      }
      for (index e = 0; e < 16; ++e) ASSERT_EQ(y(b, t, e), clean(b, t, e));
    }
}
TEST(NanPolicy, MultiHeadCrossAttentionQueryNaN) { mha_query_nan(false); }
// F14: the NaN query's attention row comes out 0 (split-KV path), so its
// output is the output bias, finite.
TEST(NanPolicy, MultiHeadCrossAttentionQueryNaNPropagates) { mha_query_nan(true); }

// Causal self-attention, token j NaN: its Q, K and V reach rows >= j only.
// (L = 8, 2 heads: the split-KV path; the tiled path, once F2, likewise.)
void mha_causal_token_nan(bool check_hits) {
  const attn::multi_head_attention layer = small_layer();
  tensor3 x(1, 8, 16);
  x.setRandom();
  attn::mha_options opt;
  opt.attention.causal = attn::causal::bottom_right;
  const tensor3 clean = layer.forward(x, opt);
  x(0, 5, 0) = nan_f;
  const tensor3 y = layer.forward(x, opt);
  for (index t = 0; t < 8; ++t) {
    if (t >= 5) {
      if (check_hits) {
        EXPECT_FALSE(finite_token(y, 0, t)) << t;
      }
      continue;
    }
    for (index e = 0; e < 16; ++e) ASSERT_EQ(y(0, t, e), clean(0, t, e)) << t;
  }
}
TEST(NanPolicy, MultiHeadCausalSelfAttentionTokenNaN) { mha_causal_token_nan(false); }
TEST(NanPolicy, MultiHeadCausalSelfAttentionTokenNaNPropagates) {  // F14
  mha_causal_token_nan(true);
}

// A NaN token in one sequence of a cache leaves the other sequence alone,
// and truncating the cache before it recovers; with check_hits, the steps
// that attend to it are NaN.
void kv_cache_nan_token(bool check_hits) {
  const attn::multi_head_attention layer = small_layer();
  attn::kv_cache<Eigen::bfloat16> cache(2, 32, 2, 8), ref(2, 32, 2, 8);
  tensor3 prompt(2, 6, 16), bad(2, 1, 16), good(2, 1, 16);
  prompt.setRandom();
  bad.setRandom();
  good.setRandom();
  (void)layer.forward(prompt, cache);
  (void)layer.forward(prompt, ref);
  const tensor3 ref_bad = layer.forward(bad, ref);
  const tensor3 ref_after = layer.forward(good, ref);
  bad(1, 0, 3) = nan_f;  // only sequence 1 gets the NaN token
  const tensor3 y_bad = layer.forward(bad, cache);
  const tensor3 y_after = layer.forward(good, cache);
  for (index e = 0; e < 16; ++e) {
    ASSERT_EQ(y_bad(0, 0, e), ref_bad(0, 0, e));
    ASSERT_EQ(y_after(0, 0, e), ref_after(0, 0, e));
  }
  if (check_hits) {
    EXPECT_FALSE(finite_token(y_bad, 1, 0));
    EXPECT_FALSE(finite_token(y_after, 1, 0));  // attends to the NaN token
  }
  cache.truncate(1, 6);  // drop it (and the step after)
  ref.truncate(1, 6);
  const tensor3 y_again = layer.forward(good, cache);
  const tensor3 ref_again = layer.forward(good, ref);
  for (index e = 0; e < 16; ++e) EXPECT_EQ(y_again(1, 0, e), ref_again(1, 0, e));
}
TEST(NanPolicy, KvCacheNaNTokenStaysInItsSequenceAndTruncates) { kv_cache_nan_token(false); }
TEST(NanPolicy, KvCacheNaNTokenPropagates) { kv_cache_nan_token(true); }  // F14

}  // namespace
