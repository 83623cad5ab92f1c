// tests/test_nan_policy.cpp: the NaN / infinity policy (README, "NaN and
// infinity"), for scaled dot-product attention (both kernel paths: the
// split-KV decode that few query rows take and the tiled flash forward),
// attention_weights, additive attention and the multi-head layer with its
// cache and its weights.
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
//     that overflow fp32 saturate (an overflowing key takes the weight; one
//     that overflows to -inf stays visible with weight 0 beside ordinary
//     keys, and a row of such keys averages its values),
//     additive mask values saturate at +-FLT_MAX (in log2 units), tanh
//     saturates at +-1, and values up to FLT_MAX give outputs up to FLT_MAX
//     (a row whose fp32 accumulation overflows is redone in double). Scope:
//     every score term q_d·k_d·scale·log2(e) and every projection term w·x
//     representable in fp32 (or the terms of one sign).
//
// Each finding a test was written for is named (F2, F3, F4, F6, F14:
// tests/fuzz/fuzz_input.hpp); all are fixed, so none is DISABLED_ any more
// (a finding found later would be, naming it, until fixed:
// tests/test_fuzz_regressions.cpp, tests/fuzz/fuzz_input.hpp).
#include <gtest/gtest.h>

#include <attn/attn.hpp>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "reference/sdpa_reference.hpp"

namespace test_nan_policy {

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
// Fewer than 4 query rows per KV head (L = 1, group 2) walks keys 4 at a
// time (split_kv_decode.hpp, axpy_keys4): a group holding a masked key falls
// back to one key at a time, so the masked key's NaN value is never read,
// while a visible key's NaN in the same group still reaches its rows.
TEST(NanPolicy, ValueNaNOfAMaskedKeyInAFourKeyGroupIsNeverRead) {
  for (bool bf16 : {false, true}) {
    SCOPED_TRACE(bf16 ? "bf16" : "float");
    problem pr(1, 11);  // keys 0-3 and 4-7 in groups of 4, keys 8-10 one by one
    const index hidden = 5, seen = 6, c = 3;
    tensor2b allow(1, pr.S);
    allow.setConstant(true);
    allow(0, hidden) = false;
    attn::sdpa_options opt;
    opt.bool_mask = attn::broadcast_mask(allow, pr.B, pr.Hq, 1, pr.S);
    auto run = [&] { return bf16 ? pr.run<Eigen::bfloat16>(opt) : pr.run<float>(opt); };
    const tensor4 clean = run();
    pr.v(0, hidden, 1, c) = nan_f;  // kv head 1 = query heads 2 and 3
    const tensor4 masked_nan = run();
    for (index b = 0; b < pr.B; ++b)
      for (index h = 0; h < pr.Hq; ++h)
        for (index d = 0; d < pr.D; ++d)
          ASSERT_EQ(masked_nan(b, 0, h, d), clean(b, 0, h, d)) << b << " " << h << " " << d;
    pr.v(0, seen, 1, c) = nan_f;
    const tensor4 seen_nan = run();
    for (index b = 0; b < pr.B; ++b)
      for (index h = 0; h < pr.Hq; ++h)
        for (index d = 0; d < pr.D; ++d) {
          if (b == 0 && h >= 2 && d == c)
            EXPECT_TRUE(std::isnan(seen_nan(b, 0, h, d))) << h;
          else
            ASSERT_EQ(seen_nan(b, 0, h, d), clean(b, 0, h, d)) << b << " " << h << " " << d;
        }
  }
}
// F2: the tiled path computes O += P·V over whole blocks of rows and keys, so
// a hidden key's NaN value reaches rows through 0 · NaN = NaN.
TEST(NanPolicy, ValueNaNReachesOnlyRowsThatSeeItTiledPath) {
  for (hide how : {hide::causal, hide::bool_mask, hide::additive_minus_inf})
    value_nan_reaches_only_rows_that_see_it<float>(tiled_path, how);
}

// attention_weights' outputs, and the checks on them.
struct weights_out {
  tensor4 probs;
  tensor3 sums;
};
weights_out weights_of(const problem& pr, const attn::sdpa_options& opt = {}) {
  weights_out w{tensor4(pr.B, pr.Hq, pr.L, pr.S), tensor3(pr.B, pr.Hq, pr.S)};
  const attn::attention_weights_options with_sums{opt, attn::view(w.sums)};
  attn::attention_weights(attn::view(pr.q).as_const(), attn::view(pr.k).as_const(),
                          attn::view(w.probs), with_sums);
  return w;
}
bool same_row(const tensor4& a, const tensor4& b, index bb, index h, index i) {
  return std::memcmp(&a(bb, h, i, 0), &b(bb, h, i, 0), sizeof(float) * a.dimension(3)) == 0;
}
bool nan_weights_row(const tensor4& p, index b, index h, index i) {
  for (index j = 0; j < p.dimension(3); ++j)
    if (!std::isnan(p(b, h, i, j))) return false;
  return true;
}
// Rows (b, h, i) of probs [B, H, L, S] for which hit(b, h, i) are all NaN;
// every other row has the bits of the same row of clean.
template <class Hit>
void expect_nan_rows_only(const tensor4& probs, const tensor4& clean, Hit hit) {
  for (index b = 0; b < probs.dimension(0); ++b)
    for (index h = 0; h < probs.dimension(1); ++h)
      for (index i = 0; i < probs.dimension(2); ++i) {
        if (hit(b, h, i))
          EXPECT_TRUE(nan_weights_row(probs, b, h, i)) << b << " " << h << " " << i;
        else
          ASSERT_TRUE(same_row(probs, clean, b, h, i)) << b << " " << h << " " << i;
      }
}
// An all-zero additive mask and an all-true bool mask, [B, Hq, L, S], for
// tests to edit, set in `opt`.
struct dense_masks {
  Eigen::Tensor<float, 4, Eigen::RowMajor> add;
  Eigen::Tensor<bool, 4, Eigen::RowMajor> allow;
  dense_masks(const problem& pr, attn::sdpa_options& opt)
      : add(pr.B, pr.Hq, pr.L, pr.S), allow(pr.B, pr.Hq, pr.L, pr.S) {
    add.setZero();
    allow.setConstant(true);
    opt.additive_mask = attn::view(add).as_const();
    opt.bool_mask = attn::view(allow).as_const();
  }
};

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
// it); the row stays finite. attention_weights gives exactly those weights:
// 1/2 and 1/2, or 1.
TEST(NanPolicy, PlusInfAdditiveSaturates) {
  for (const path& p : {decode_path, tiled_path}) {
    SCOPED_TRACE(p.name);
    problem pr(p.L, 40);
    tensor2 add(p.L, 40);
    add.setZero();
    for (index i = 0; i < p.L; ++i) add(i, 7) = inf_f;
    add(0, 9) = inf_f;  // row 0: keys 7 and 9 share the weight
    add(0, 39) = add(2, 39) = inf_f;  // past key_lengths: no effect
    attn::sdpa_options opt;
    opt.additive_mask = attn::broadcast_mask(add, pr.B, pr.Hq, p.L, 40);
    opt.key_lengths = {39, 39};
    const tensor4 out = pr.run<float>(opt);
    const weights_out w = weights_of(pr, opt);
    for (index b = 0; b < pr.B; ++b)
      for (index h = 0; h < pr.Hq; ++h) {
        for (index d = 0; d < pr.D; ++d) {
          const index hk = h / 2;
          EXPECT_FLOAT_EQ(out(b, 0, h, d), 0.5f * (pr.v(b, 7, hk, d) + pr.v(b, 9, hk, d)));
          for (index i = 1; i < p.L; ++i) ASSERT_FLOAT_EQ(out(b, i, h, d), pr.v(b, 7, hk, d));
        }
        for (index i = 0; i < p.L; ++i)
          for (index j = 0; j < 40; ++j) {
            const float want = i == 0 ? (j == 7 || j == 9 ? 0.5f : 0.0f) : (j == 7 ? 1.0f : 0.0f);
            ASSERT_EQ(w.probs(b, h, i, j), want) << "b" << b << " h" << h << " i" << i << " j" << j;
          }
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

// F4: the unnormalised accumulation O = Σ 2^(s - max) v overflowed when the
// visible values summed past FLT_MAX: inf, then NaN (inf · 0) when a later
// key raised the maximum. The exact output is at most max|v|. Fixed: a row
// that comes out non-finite is recomputed in double (core/fp64_row.hpp) and
// replaced when that is finite.
TEST(NanPolicy, HugeValuesNeverMakeNaN) {
  for (const path& p : {decode_path, tiled_path}) {
    SCOPED_TRACE(p.name);
    problem pr(p.L, 300);
    pr.q.setConstant(1.0f);
    pr.k.setZero();
    pr.v.setConstant(3e38f);
    pr.k.chip(299, 1).setConstant(100.0f);  // the last key dominates
    tensor3 lse;
    const tensor4 out = pr.run<float>({}, &lse);
    EXPECT_TRUE(all_finite(out.data(), out.size()));
    EXPECT_TRUE(all_finite(lse.data(), lse.size()));
    const tensor4 out16 = pr.run<Eigen::bfloat16>();
    EXPECT_TRUE(all_finite(out16.data(), out16.size()));
  }
}

// The fp64 reference of problem `pr` with sdpa options `opt` (masks read
// through the same views).
attn_ref::result reference_of(const problem& pr, const attn::sdpa_options& opt) {
  const attn_ref::options ro = attn_ref::options_from(opt);
  return attn_ref::sdpa(attn::view(pr.q).as_const(), attn::view(pr.k).as_const(),
                        attn::view(pr.v).as_const(), ro);
}

// Output and LSE within the tolerance of the fp64 reference, row by row.
//
// Tolerance (per row): the library's scores differ from the exact ones by
// the fp32 pre-scaling of q (q · scale · log2 e, one rounding per element)
// and, on rows the fast path finishes, by the fp32 dot products: together
// |δs| <= (d + 4)·eps·|scale|·Σ_d |q_d k_d| (+ 4·eps·|a| for an additive
// value a, + 1.5e-7 for exp2), which moves each weight by a factor of at most
// e^{±2δ}, so the output by at most 2·(e^{2δ} - 1)·max|v|. The output's own
// accumulation adds (n + 8)·eps·max|v| in fp32 for n visible keys, or, for a
// row recomputed in double, one rounding to float (eps·max|v|) plus double
// rounding (negligible). We allow 4x the fp32 bound for every row, which also
// covers the recomputed ones: |Δo| <= 4·max|v|·(2·(e^{2δ} - 1) + (n + 8)·eps).
// At max|v| = 3e38 and a few hundred keys this is ~1e-4 relative, far below
// the O(1/n)·max|v| by which a key too many or too few would move the output.
// LSE: 4·(δ + 4·eps·|lse| + n·eps) + 1e-6 (it does not depend on V).
void expect_near_reference(const problem& pr, const attn::sdpa_options& opt, const tensor4& out,
                           const tensor3& lse) {
  const attn_ref::result ref = reference_of(pr, opt);
  const double eps = 5.9604644775390625e-8;
  const float scale = opt.scale ? *opt.scale : 1.0f / std::sqrt(static_cast<float>(pr.D));
  const index group = pr.Hq / pr.Hkv;
  for (index b = 0; b < pr.B; ++b)
    for (index h = 0; h < pr.Hq; ++h)
      for (index i = 0; i < pr.L; ++i) {
        const index hk = h / group;
        double delta = 0, vmax = 0, n = 0;
        for (index j = 0; j < pr.S; ++j) {
          // (the reference's visibility, again: the bound only needs a superset)
          double qk = 0, a = 0;
          for (index d = 0; d < pr.D; ++d)
            qk += std::fabs(double(pr.q(b, i, h, d)) * double(pr.k(b, j, hk, d)));
          if (!opt.additive_mask.empty()) {
            const float x = *opt.additive_mask.at(b, h, i, j);
            if (std::isfinite(x)) a = std::fabs(x);
          }
          delta = std::max(delta, (pr.D + 4) * eps * std::fabs(scale) * qk + 4 * eps * a + 1.5e-7);
          for (index d = 0; d < pr.D; ++d) vmax = std::max(vmax, std::fabs(double(pr.v(b, j, hk, d))));
          n += 1;
        }
        const double tol = 4 * vmax * (2 * std::expm1(2 * delta) + (n + 8) * eps);
        for (index d = 0; d < pr.D; ++d) {
          const double want = ref.o(b, i, h, d), got = out(b, i, h, d);
          ASSERT_TRUE(std::isfinite(got)) << b << " " << i << " " << h << " " << d;
          ASSERT_LE(std::fabs(got - want), tol)
              << "b " << b << " i " << i << " h " << h << " d " << d << ": got " << got
              << ", want " << want;
        }
        const double want_l = ref.l(b, h, i);
        if (want_l == -std::numeric_limits<double>::infinity()) {
          ASSERT_EQ(lse(b, h, i), -inf_f);
        } else {
          ASSERT_TRUE(std::isfinite(lse(b, h, i)));
          ASSERT_LE(std::fabs(lse(b, h, i) - want_l),
                    4 * (delta + 4 * eps * std::fabs(want_l) + n * eps) + 1e-6);
        }
      }
}

// Huge values of both signs (3e38 and FLT_MAX) on every key, with scores
// that make a later key raise the row maximum (the inf · 0 = NaN case), on
// both kernel paths, without masks and with each mask kind: every output is
// finite and within the tolerance of the fp64 reference, and so is the LSE.
TEST(NanPolicy, HugeValuesMatchTheFp64Reference) {
  for (const path& p : {decode_path, tiled_path}) {
    for (int mode = 0; mode < 7; ++mode) {
      SCOPED_TRACE(std::string(p.name) + " mode " + std::to_string(mode));
      const index S = 300;
      problem pr(p.L, S);
      pr.q.setRandom();
      pr.k.setRandom();
      // Scores grow with j (a later key raises the max, by up to ~50 in log2
      // units over the row), values huge with a sign pattern.
      for (index b = 0; b < pr.B; ++b)
        for (index j = 0; j < S; ++j)
          for (index hk = 0; hk < pr.Hkv; ++hk)
            for (index d = 0; d < pr.D; ++d) {
              pr.k(b, j, hk, d) = pr.k(b, j, hk, d) + 0.1f * static_cast<float>(j % 97);
              pr.v(b, j, hk, d) = (d + j) % 5 == 0 ? -3e38f : (d % 3 == 0 ? big : 3e38f);
            }
      pr.q.setConstant(1.0f);
      attn::sdpa_options opt;
      tensor2b allow(p.L, S);
      tensor2 add(p.L, S);
      for (index i = 0; i < p.L; ++i)
        for (index j = 0; j < S; ++j) {
          allow(i, j) = (i + 3 * j) % 7 != 0;
          add(i, j) = (i + j) % 11 == 0 ? -inf_f : 0.25f * static_cast<float>((i * j) % 5);
        }
      switch (mode) {
        case 0: break;
        case 1: opt.causal = attn::causal::top_left; break;
        case 2: opt.causal = attn::causal::bottom_right; break;
        case 3: opt.bool_mask = attn::broadcast_mask(allow, pr.B, pr.Hq, p.L, S); break;
        case 4: opt.additive_mask = attn::broadcast_mask(add, pr.B, pr.Hq, p.L, S); break;
        case 5:
          opt.key_lengths = {S - 37, 1};
          opt.causal = attn::causal::bottom_right;
          break;
        default:
          opt.window = attn::sliding_window{150, 3, attn::alignment::bottom_right};
          opt.bool_mask = attn::broadcast_mask(allow, pr.B, pr.Hq, p.L, S);
          opt.additive_mask = attn::broadcast_mask(add, pr.B, pr.Hq, p.L, S);
          break;
      }
      tensor3 lse;
      const tensor4 out = pr.run<float>(opt, &lse);
      expect_near_reference(pr, opt, out, lse);
      // One thread and two give the same bits, recomputed rows included.
      attn::sdpa_options one = opt, two = opt;
      one.num_threads = 1;
      two.num_threads = 2;
      const tensor4 o1 = pr.run<float>(one), o2 = pr.run<float>(two);
      EXPECT_EQ(0, std::memcmp(o1.data(), o2.data(), sizeof(float) * o1.size()));
      EXPECT_EQ(0, std::memcmp(o1.data(), out.data(), sizeof(float) * o1.size()));
    }
  }
}

// Many keys on the split-KV path (several key chunks merged by
// softmax::merge_partial) and on the tiled path: finite and near the
// reference.
TEST(NanPolicy, HugeValuesOverManyKeyChunks) {
  for (index L : {index{1}, index{40}}) {
    SCOPED_TRACE(L);
    problem pr(L, 2600);
    pr.q.setConstant(0.5f);
    pr.v.setConstant(big);
    for (index j = 0; j < 2600; j += 3) pr.v.chip(j, 1).setConstant(-3e38f);
    tensor3 lse;
    const tensor4 out = pr.run<float>({}, &lse);
    expect_near_reference(pr, {}, out, lse);
  }
}

// A row that overflows is recomputed; every other row keeps the fast path's
// bits: huge values on one (batch, kv head) leave the outputs and LSEs of
// every other (batch, kv head) bit-identical to the run without them.
TEST(NanPolicy, HugeValuesLeaveOtherRowsBitIdentical) {
  for (const path& p : {decode_path, tiled_path}) {
    SCOPED_TRACE(p.name);
    problem pr(p.L, 300);
    attn::sdpa_options opt;
    opt.causal = attn::causal::bottom_right;
    tensor3 lse0, lse;
    const tensor4 clean = pr.run<float>(opt, &lse0);
    for (index j = 0; j < 300; ++j)
      for (index d = 0; d < pr.D; ++d) pr.v(1, j, 0, d) = d % 2 ? 3e38f : big;
    const tensor4 out = pr.run<float>(opt, &lse);
    for (index b = 0; b < pr.B; ++b)
      for (index i = 0; i < p.L; ++i)
        for (index h = 0; h < pr.Hq; ++h) {
          ASSERT_TRUE(finite_row(out, b, i, h));
          ASSERT_EQ(lse(b, h, i), lse0(b, h, i));  // the LSE does not depend on V
          if (b == 1 && h < 2) continue;           // kv head 0: query heads 0, 1
          for (index d = 0; d < pr.D; ++d) ASSERT_EQ(out(b, i, h, d), clean(b, i, h, d));
        }
  }
}

// The NaN policy holds next to huge values: a NaN or inf value (feature c)
// on a key a row sees keeps feature c of that row non-finite (the fp64
// recomputation does not paper over it) and only feature c: the row's other
// features, which overflowed in fp32, are repaired; the rows that cannot see
// the key are finite.
TEST(NanPolicy, HugeValuesKeepNonFiniteInputsNonFinite) {
  for (const path& p : {decode_path, tiled_path})
    for (float bad : {nan_f, inf_f}) {
      SCOPED_TRACE(std::string(p.name) + (std::isnan(bad) ? " NaN" : " inf"));
      const index S = p.L;
      problem pr(p.L, S);
      pr.v.setConstant(3e38f);
      const index j = p.L / 2;
      pr.v(0, j, 1, 3) = bad;  // kv head 1: query heads 2, 3, batch 0
      attn::sdpa_options opt;
      opt.causal = attn::causal::top_left;  // rows i < j cannot see key j
      const tensor4 out = pr.run<float>(opt);
      for (index i = 0; i < p.L; ++i)
        for (index h = 0; h < pr.Hq; ++h) {
          for (index d = 0; d < pr.D; ++d) {
            if (h >= 2 && i >= j && d == 3)
              EXPECT_FALSE(std::isfinite(out(0, i, h, d))) << i << " " << h;
            else
              ASSERT_TRUE(std::isfinite(out(0, i, h, d))) << i << " " << h << " " << d;
          }
          ASSERT_TRUE(finite_row(out, 1, i, h));
        }
    }
}

// softmax::merge_partial: two finite partial outputs near FLT_MAX merge to a
// finite one (the rounded weights can add up to a little over 1).
TEST(NanPolicy, MergePartialOfHugeOutputsStaysFinite) {
  for (int t = 0; t < 4000; ++t) {
    float o_a[2] = {big, -big};
    const float o_b[2] = {big, -big};
    float lse_a = 0.0f;
    const float lse_b = -0.7f + 0.00037f * static_cast<float>(t);
    attn::core::softmax::merge_partial(o_a, lse_a, o_b, lse_b, 2);
    ASSERT_TRUE(std::isfinite(o_a[0]) && std::isfinite(o_a[1])) << lse_b;
    ASSERT_GE(o_a[0], big * (1 - 1e-6f)) << lse_b;  // within rounding of FLT_MAX
    ASSERT_LE(o_a[1], -big * (1 - 1e-6f)) << lse_b;
  }
  // Non-finite partial outputs still propagate.
  float o_a[1] = {1.0f}, lse_a = 0.0f;
  const float o_b[1] = {inf_f};
  attn::core::softmax::merge_partial(o_a, lse_a, o_b, 0.0f, 1);
  EXPECT_EQ(o_a[0], inf_f);
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

// --- scores that overflow to -inf (issue 18, class 5) --------------------------------
// Every score term q_d·k_d·scale·log2(e) is about -1.4e38, inside the scope
// of rule 3, but d = 8 of them sum to -inf in fp32. Such keys are visible:
// every row sees keys with equal (saturated) scores, so its output is the
// mean of the values it sees, and its LSE is finite. (They were taken for a
// row with no visible key: output 0, LSE -inf.) Tolerance: the mean of n
// values |v| <= 1 accumulated in fp32, 4·(n + 8)·eps, as elsewhere here.

// q and k with every term q_d·k_d·scale·log2(e) = -1.44e38: q_d·k_d =
// -2.82e38 times scale·log2(e) = log2(e)/sqrt(8) = 0.510 (default scale).
void set_overflowing_scores(problem& pr) {
  pr.q.setConstant(1.68e19f);
  pr.k.setConstant(-1.68e19f);
}

// The mean of the values of KV head hk, batch entry b, over keys [0, n).
double mean_value(const tensor4& v, index b, index hk, index d, index n) {
  double s = 0;
  for (index j = 0; j < n; ++j) s += v(b, j, hk, d);
  return s / static_cast<double>(n);
}

// out [B, L, Hq, D]: row i of head h sees keys [0, visible(i)), none when
// visible(i) <= 0.
template <class Visible>
void expect_mean_of_visible_values(const problem& pr, const tensor4& out, const tensor3& lse,
                                   Visible visible) {
  const double eps = 5.9604644775390625e-8;
  for (index b = 0; b < pr.B; ++b)
    for (index i = 0; i < out.dimension(1); ++i)
      for (index h = 0; h < pr.Hq; ++h) {
        const index n = visible(i);
        if (n <= 0) {  // bottom-right causal with L > S: a row before every key
          ASSERT_EQ(lse(b, h, i), -inf_f);
          for (index d = 0; d < pr.D; ++d) ASSERT_EQ(out(b, i, h, d), 0.0f);
          continue;
        }
        ASSERT_TRUE(std::isfinite(lse(b, h, i))) << b << " " << i << " " << h;
        for (index d = 0; d < pr.D; ++d)
          ASSERT_NEAR(out(b, i, h, d), mean_value(pr.v, b, h / 2, d, n), 4 * (n + 8) * eps)
              << b << " " << i << " " << h << " " << d;
      }
}

TEST(NanPolicy, AllScoresOverflowingToMinusInfAverageTheValues) {
  for (const path& p : {decode_path, tiled_path}) {
    SCOPED_TRACE(p.name);
    problem pr(p.L, 50);
    set_overflowing_scores(pr);
    tensor3 lse;
    const auto all = [&](index) { return pr.S; };
    expect_mean_of_visible_values(pr, pr.run<float>({}, &lse), lse, all);
    {  // bf16 K/V: the mean of the values as stored
      problem pr16 = pr;
      pr16.v = pr.v.cast<Eigen::bfloat16>().cast<float>();
      expect_mean_of_visible_values(pr16, pr16.run<Eigen::bfloat16>({}, &lse), lse, all);
    }
    attn::sdpa_options causal;
    causal.causal = attn::causal::bottom_right;
    expect_mean_of_visible_values(pr, pr.run<float>(causal, &lse), lse,
                                  [&](index i) { return pr.S - pr.L + i + 1; });
    // An additive mask of -FLT_MAX (a common "masked" value) on top: the sum
    // overflows again, and the keys stay visible with equal scores.
    tensor2 add(p.L, pr.S);
    add.setConstant(-big);
    attn::sdpa_options masked;
    masked.additive_mask = attn::broadcast_mask(add, pr.B, pr.Hq, p.L, pr.S);
    expect_mean_of_visible_values(pr, pr.run<float>(masked, &lse), lse, all);
  }
}

TEST(NanPolicy, AllScoresOverflowingToMinusInfThroughKvCache) {
  for (index T : {index{1}, index{40}}) {
    SCOPED_TRACE(T);
    const index S = 90;
    problem pr(T, S);
    set_overflowing_scores(pr);
    attn::kv_cache<float> cache(pr.B, S, pr.Hkv, pr.D);
    cache.append(attn::view(pr.k).as_const(), attn::view(pr.v).as_const());
    tensor4 out(pr.B, T, pr.Hq, pr.D);
    tensor3 lse(pr.B, pr.Hq, T);
    attn::sdpa_options opt;
    opt.lse = attn::view(lse);
    cache.attend(attn::view(pr.q).as_const(), attn::view(out), opt);
    expect_mean_of_visible_values(pr, out, lse, [&](index i) { return S - T + i + 1; });
  }
}

TEST(NanPolicy, AllScoresOverflowingToMinusInfGiveUniformWeights) {
  for (const path& p : {decode_path, tiled_path}) {
    SCOPED_TRACE(p.name);
    problem pr(p.L, 50);
    set_overflowing_scores(pr);
    const weights_out w = weights_of(pr);
    for (index b = 0; b < pr.B; ++b)
      for (index h = 0; h < pr.Hq; ++h)
        for (index i = 0; i < p.L; ++i)
          for (index j = 0; j < pr.S; ++j)
            ASSERT_EQ(w.probs(b, h, i, j), 1.0f / 50) << b << " " << h << " " << i << " " << j;
  }
}

TEST(NanPolicy, AllScoresOverflowingToMinusInfInDecomposableAttention) {
  // a_d = 1.2e19 and b_d = -1e19 (scale 1): F(a)·F(b) = 4 terms of -1.2e38
  // (-1.7e38 in log2 units) overflows. beta_i is the mean of the b_j, alpha_j
  // the mean of the a_i; relative tolerance 4·(n + 8)·eps for n <= 7 terms.
  const index La = 5, Lb = 7, d = 4;
  tensor3 a(1, La, d), b(1, Lb, d);
  for (index i = 0; i < La; ++i)
    for (index c = 0; c < d; ++c) a(0, i, c) = 1.2e19f * (1.0f + 0.01f * static_cast<float>(i + c));
  for (index j = 0; j < Lb; ++j)
    for (index c = 0; c < d; ++c) b(0, j, c) = -1e19f * (1.0f + 0.02f * static_cast<float>(j * c));
  const attn::decomposable_result r = attn::decomposable_attention().forward(a, b);
  const double eps = 5.9604644775390625e-8;
  for (index c = 0; c < d; ++c) {
    double mean_b = 0, mean_a = 0;
    for (index j = 0; j < Lb; ++j) mean_b += b(0, j, c) / static_cast<double>(Lb);
    for (index i = 0; i < La; ++i) mean_a += a(0, i, c) / static_cast<double>(La);
    for (index i = 0; i < La; ++i)
      ASSERT_NEAR(r.beta(0, i, c), mean_b, 4 * (Lb + 8) * eps * std::fabs(mean_b)) << i << " " << c;
    for (index j = 0; j < Lb; ++j)
      ASSERT_NEAR(r.alpha(0, j, c), mean_a, 4 * (La + 8) * eps * std::fabs(mean_a)) << j << " " << c;
  }
}

// The latent kernel's output when every visible key weighs the same: row t
// of T (each of H heads) is the mean of the latent parts (d_c of d_c + d_r)
// of cached rows [0, n - T + t], within rel_tol(visible) · |mean|.
template <class RelTol>
void expect_mean_of_visible_latents(const std::vector<float>& rows, const std::vector<float>& out,
                                    attn::index n, attn::index T, attn::index H, attn::index d_c,
                                    attn::index d_r, const RelTol& rel_tol) {
  using attn::index;
  const index d_qk = d_c + d_r;
  for (index t = 0; t < T; ++t)
    for (index h = 0; h < H; ++h)
      for (index d = 0; d < d_c; ++d) {
        const index visible = n - T + t + 1;
        double want = 0;
        for (index j = 0; j < visible; ++j)
          want += rows[static_cast<std::size_t>(j * d_qk + d)] / static_cast<double>(visible);
        const double got = out[static_cast<std::size_t>((t * H + h) * d_c + d)];
        ASSERT_NEAR(got, want, rel_tol(visible) * std::fabs(want)) << t << " " << h << " " << d;
      }
}

TEST(NanPolicy, AllScoresOverflowingToMinusInfInLatentAttention) {
  // MLA's absorbed kernel: latent queries 1e19, cached latent rows -1e19
  // (scale 1: terms of -1.44e38 in log2 units, d_c = 20 of them), RoPE
  // part 0. Row t of T sees keys [0, n - T + t]; its output is the mean of
  // their latent parts.
  using attn::index;
  const index B = 1, T = 2, H = 3, d_c = 20, d_r = 4, d_qk = d_c + d_r, n = 300;
  std::vector<float> rows(static_cast<std::size_t>(n * d_qk), 0.0f);
  for (index j = 0; j < n; ++j)
    for (index d = 0; d < d_c; ++d)
      rows[static_cast<std::size_t>(j * d_qk + d)] = -1e19f * (1.0f + 0.001f * static_cast<float>(j + d));
  std::vector<float> q(static_cast<std::size_t>(B * T * H * d_qk), 0.0f);
  for (index r = 0; r < T * H; ++r)
    for (index d = 0; d < d_c; ++d) q[static_cast<std::size_t>(r * d_qk + d)] = 1e19f;
  std::vector<float> out(static_cast<std::size_t>(B * T * H * d_c), 0.0f);
  const index lengths[1] = {n};
  attn::detail::mla::latent_problem<float> pr{q.data(), rows.data(), lengths, out.data(), B, T,
                                              H,        d_c,         d_r,     n,          1.0f};
  attn::detail::mla::latent_attention(pr, 0);
  const double eps = 5.9604644775390625e-8;
  expect_mean_of_visible_latents(rows, out, n, T, H, d_c, d_r,
                                 [&](index visible) { return 4 * (visible + 8) * eps; });
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

// F4 in additive attention: c_i = Σ_j a_ij v_j with values near FLT_MAX.
// The weights are normalised, but rounded they can add up to a little over
// 1, and the fp32 sum then rounds past FLT_MAX to inf. Every output is
// finite and within (S + 4)·eps·max|v| (fp32 accumulation of S terms, 4x) of
// the weighted sum of the returned weights in double; a NaN value stays in
// its feature only.
TEST(NanPolicy, AdditiveAttentionHugeValues) {
  const double eps = 5.9604644775390625e-8;
  attn::additive_weights dw;
  dw.score = attn::score_function::dot;
  const attn::additive_attention dot(dw);
  const attn::additive_attention add = bahdanau(12, 4, 4);
  for (const attn::additive_attention* layer : {&dot, &add})
    for (index S = 2; S <= 40; ++S) {
      SCOPED_TRACE(S);
      tensor3 q(1, 4, 4), k(1, S, 4), v(1, S, 19), w(1, 4, S);
      q.setRandom();
      k.setRandom();
      k = k * static_cast<float>(1 + S % 7);
      for (index j = 0; j < S; ++j)
        for (index d = 0; d < 19; ++d) v(0, j, d) = d % 4 == 3 ? -big : (d % 4 == 2 ? 3e38f : big);
      attn::additive_options opt;
      opt.weights = attn::view(w);
      tensor3 out(1, 4, 19);
      layer->forward(attn::view(q).as_const(), attn::view(k).as_const(), attn::view(v).as_const(),
                     attn::view(out), opt);
      for (index i = 0; i < 4; ++i)
        for (index d = 0; d < 19; ++d) {
          double want = 0;
          for (index j = 0; j < S; ++j) want += double(w(0, i, j)) * double(v(0, j, d));
          want = std::min(std::max(want, -double(big)), double(big));
          ASSERT_TRUE(std::isfinite(out(0, i, d))) << i << " " << d;
          ASSERT_LE(std::fabs(out(0, i, d) - want), 4 * (S + 4) * eps * double(big)) << i << " " << d;
        }
      // A NaN value: only its feature of the rows that weigh it.
      v(0, S / 2, 5) = nan_f;
      layer->forward(attn::view(q).as_const(), attn::view(k).as_const(), attn::view(v).as_const(),
                     attn::view(out), opt);
      for (index i = 0; i < 4; ++i)
        for (index d = 0; d < 19; ++d)
          if (d == 5)
            EXPECT_TRUE(std::isnan(out(0, i, d)) || w(0, i, S / 2) == 0.0f);
          else
            ASSERT_TRUE(std::isfinite(out(0, i, d))) << i << " " << d;
    }
}

// --- attention_weights ----------------------------------------------------------
// The weights follow the policy of the forward pass by construction (they are
// computed by its score and mask steps): a row that reads a NaN is all NaN (a
// row of zeros would claim "fully masked"), +inf keys share the weight, a row
// with no visible key is all 0. L = 3 and L = 80 as for SDPA's two paths.

TEST(NanPolicy, AttentionWeightsQueryNaNRowIsNaN) {
  for (const path& p : {decode_path, tiled_path}) {
    SCOPED_TRACE(p.name);
    problem pr(p.L, 50);
    const weights_out clean = weights_of(pr);
    pr.q(1, 2, 3, 5) = nan_f;
    const weights_out w = weights_of(pr);
    expect_nan_rows_only(w.probs, clean.probs,
                         [](index b, index h, index i) { return b == 1 && h == 3 && i == 2; });
    for (index b = 0; b < pr.B; ++b)
      for (index h = 0; h < pr.Hq; ++h) {
        for (index j = 0; j < pr.S; ++j) {
          if (b == 1 && h == 3)
            EXPECT_TRUE(std::isnan(w.sums(b, h, j)));
          else
            ASSERT_EQ(w.sums(b, h, j), clean.sums(b, h, j));
        }
      }
  }
}

// K row j NaN: exactly the rows that see key j are NaN.
TEST(NanPolicy, AttentionWeightsKeyNaNReachesRowsThatSeeIt) {
  for (const path& p : {decode_path, tiled_path}) {
    SCOPED_TRACE(p.name);
    problem pr(p.L, 50);
    attn::sdpa_options opt;
    opt.causal = attn::causal::top_left;
    const weights_out clean = weights_of(pr, opt);
    pr.k(0, 1, 1, 2) = nan_f;  // batch 0, key 1, KV head 1: query heads 2 and 3
    const weights_out w = weights_of(pr, opt);
    expect_nan_rows_only(w.probs, clean.probs,
                         [](index b, index h, index i) { return b == 0 && h >= 2 && i >= 1; });
  }
}

// A NaN additive entry on a visible key makes its row NaN; under a false
// bool entry or outside the band it is never read.
TEST(NanPolicy, AttentionWeightsNaNMaskEntry) {
  for (const path& p : {decode_path, tiled_path}) {
    SCOPED_TRACE(p.name);
    problem pr(p.L, 40);
    attn::sdpa_options opt;
    dense_masks m(pr, opt);
    opt.causal = attn::causal::bottom_right;
    const index last = p.L - 1;  // the row that sees every key on both paths
    m.allow(0, 0, last, 3) = false;
    const weights_out clean = weights_of(pr, opt);
    m.add(1, 2, last, 5) = nan_f;  // visible: row (1, 2, last) is NaN
    m.add(0, 0, last, 3) = nan_f;  // under a false bool entry: never read
    m.add(0, 1, 0, 39) = nan_f;    // outside the causal band of row 0 (L < 40)
    const weights_out w = weights_of(pr, opt);
    expect_nan_rows_only(w.probs, clean.probs,
                         [&](index b, index h, index i) { return b == 1 && h == 2 && i == last; });
  }
}

TEST(NanPolicy, AttentionWeightsFullyMaskedRowIsZero) {
  for (const path& p : {decode_path, tiled_path}) {
    SCOPED_TRACE(p.name);
    problem pr(p.L, 40);
    attn::sdpa_options opt;
    dense_masks m(pr, opt);
    for (index j = 0; j < 40; ++j) {
      m.allow(0, 1, 2, j) = false;
      m.add(1, 3, 0, j) = -inf_f;
    }
    const weights_out w = weights_of(pr, opt);
    for (index j = 0; j < 40; ++j) {
      ASSERT_EQ(w.probs(0, 1, 2, j), 0.0f);
      ASSERT_EQ(w.probs(1, 3, 0, j), 0.0f);
      ASSERT_TRUE(std::isfinite(w.sums(0, 1, j)));
    }
  }
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
// The layer's weights (both modes) through attention_weights: a NaN query
// token's rows are NaN in every head and in the average, the other rows are
// as without it; an additive +inf key takes every row's weight.
TEST(NanPolicy, MultiHeadWeightsQueryNaN) {
  const attn::multi_head_attention layer = small_layer();
  tensor3 x(2, 5, 16), mem(2, 7, 16);
  x.setRandom();
  mem.setRandom();
  for (attn::weights_mode mode : {attn::weights_mode::per_head, attn::weights_mode::averaged}) {
    attn::mha_options opt;
    opt.weights = mode;
    tensor4 clean, w;
    (void)layer.forward(x, mem, mem, opt, &clean);
    tensor3 xn = x;
    xn(0, 3, 4) = nan_f;
    (void)layer.forward(xn, mem, mem, opt, &w);
    expect_nan_rows_only(w, clean, [](index b, index, index i) { return b == 0 && i == 3; });
  }
}

TEST(NanPolicy, MultiHeadWeightsPlusInfKey) {
  const attn::multi_head_attention layer = small_layer();
  tensor3 x(1, 6, 16);
  x.setRandom();
  tensor2 add(6, 6);
  add.setZero();
  for (index i = 0; i < 6; ++i) add(i, 2) = inf_f;
  for (attn::weights_mode mode : {attn::weights_mode::per_head, attn::weights_mode::averaged}) {
    attn::mha_options opt;
    opt.weights = mode;
    opt.attention.additive_mask = attn::broadcast_mask(add, 1, 2, 6, 6);
    tensor4 w;
    (void)layer.forward(x, opt, &w);
    for (index h = 0; h < w.dimension(1); ++h)
      for (index i = 0; i < 6; ++i)
        for (index j = 0; j < 6; ++j) ASSERT_EQ(w(0, h, i, j), j == 2 ? 1.0f : 0.0f) << i << j;
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

// F4 through the cache: K/V appended to a kv_cache (float, and bf16 with
// values bf16 holds exactly), then attend() on the decode path (T = 1) and
// the tiled one (T = 40), bottom-right causal: finite and within the
// tolerance of the fp64 reference (expect_near_reference).
template <class Storage>
void huge_values_through_kv_cache() {
  for (index T : {index{1}, index{40}}) {
    SCOPED_TRACE(T);
    const index S = 300;
    problem pr(T, S);
    pr.q.setConstant(1.0f);
    for (index b = 0; b < pr.B; ++b)
      for (index j = 0; j < S; ++j)
        for (index hk = 0; hk < pr.Hkv; ++hk)
          for (index d = 0; d < pr.D; ++d) {
            pr.k(b, j, hk, d) = 0.01f * static_cast<float>((j * 7 + d) % 13) + 0.002f * j;
            pr.v(b, j, hk, d) = std::ldexp(d % 3 == 0 ? -1.75f : 1.5f, 127);  // exact in bf16
          }
    attn::kv_cache<Storage> cache(pr.B, S, pr.Hkv, pr.D);
    cache.append(attn::view(pr.k).as_const(), attn::view(pr.v).as_const());
    // The reference sees the stored (rounded) keys, as the kernels do.
    pr.k = pr.k.template cast<Storage>().template cast<float>();
    tensor4 out(pr.B, T, pr.Hq, pr.D);
    tensor3 lse(pr.B, pr.Hq, T);
    attn::sdpa_options opt;
    opt.lse = attn::view(lse);
    cache.attend(attn::view(pr.q).as_const(), attn::view(out), opt);
    attn::sdpa_options ref_opt;
    ref_opt.causal = attn::causal::bottom_right;
    expect_near_reference(pr, ref_opt, out, lse);
  }
}
TEST(NanPolicy, HugeValuesThroughKvCache) {
  huge_values_through_kv_cache<float>();
  huge_values_through_kv_cache<Eigen::bfloat16>();
}

// F4 through the layer: W_v = I and W_o = I/2, so the attention's values are
// the inputs and y = o/2; W_q and W_k are tiny (q, k ~ 1 for inputs ~1e38,
// so many keys weigh alike and their values overflow an fp32 sum; RoPE on). Every token carries the same huge value c_e in feature e, so
// whatever the weights, the exact attention output is c_e and y = c_e/2:
// checked within 4·(n + 8)·eps relative (fp32 accumulation over n <= 300
// keys; recomputed rows are closer). Self-attention (300 tokens, causal: the
// tiled path), cross-attention (3 queries over 300: the split-KV path), and
// a cache (float and bf16: prefill 300 on the tiled path, then decode steps
// on the split-KV path). The c_e are exact in bf16.
attn::multi_head_attention huge_value_layer() {
  attn::mha_config cfg;
  cfg.embed_dim = 16;
  cfg.num_heads = 2;
  attn::mha_weights w;
  w.q.weight = matrix::Random(16, 16) * 2e-39f;  // q, k ~ 1: similar weights
  w.k.weight = matrix::Random(16, 16) * 2e-39f;
  w.v.weight = matrix::Identity(16, 16);
  w.o.weight = matrix::Identity(16, 16) * 0.5f;
  auto rope = std::make_shared<attn::rope_table>(512, 8);
  return attn::multi_head_attention(cfg, w, {rope, attn::rope_layout::half_split});
}
float huge_feature(index e) { return std::ldexp(e % 3 == 0 ? -1.75f : (e % 3 == 1 ? 1.5f : 1.0f), 127); }
tensor3 huge_tokens(index T) {
  tensor3 x(1, T, 16);
  for (index t = 0; t < T; ++t)
    for (index e = 0; e < 16; ++e) x(0, t, e) = huge_feature(e);
  return x;
}
void expect_half_of_huge(const tensor3& y, index keys) {
  const double eps = 5.9604644775390625e-8;
  for (index t = 0; t < y.dimension(1); ++t)
    for (index e = 0; e < 16; ++e) {
      const double want = 0.5 * huge_feature(e);
      ASSERT_TRUE(std::isfinite(y(0, t, e))) << t << " " << e;
      ASSERT_LE(std::fabs(y(0, t, e) - want), 4 * (keys + 8) * eps * std::fabs(want)) << t << " " << e;
    }
}
TEST(NanPolicy, HugeValuesThroughMultiHead) {
  const attn::multi_head_attention layer = huge_value_layer();
  {  // causal self-attention over 300 tokens: the tiled path
    attn::mha_options opt;
    opt.attention.causal = attn::causal::bottom_right;
    expect_half_of_huge(layer.forward(huge_tokens(300), opt), 300);
  }
  // cross-attention, 3 queries over 300: the split-KV path
  expect_half_of_huge(layer.forward(huge_tokens(3), huge_tokens(300), huge_tokens(300)), 300);
  attn::kv_cache<float> cache(1, 320, 2, 8);
  attn::kv_cache<Eigen::bfloat16> cache16(1, 320, 2, 8);
  expect_half_of_huge(layer.forward(huge_tokens(300), cache), 300);
  expect_half_of_huge(layer.forward(huge_tokens(300), cache16), 300);
  for (int step = 0; step < 3; ++step) {
    expect_half_of_huge(layer.forward(huge_tokens(1), cache), 304);
    expect_half_of_huge(layer.forward(huge_tokens(1), cache16), 304);
  }
}

// F4 in MLA's absorbed path: the latent kernel (attn/detail/latent_attention.hpp)
// accumulates Σ 2^(s - max) ĉ unnormalised like the sdpa kernels. Cached rows
// whose latent part is 3e38 over 1300 keys (three chunks on the chunked
// path, one tile on the short one), a late key that raises every row's max,
// a float and a bf16 cache: every output is finite and within the fp32
// rounding of the exact one. All values of a feature are equal, so the exact
// output is that value whatever the weights.
template <class Storage>
void latent_huge_values(attn::index n) {
  using attn::index;
  const index B = 1, T = 2, H = 3, d_c = 20, d_r = 4, d_qk = d_c + d_r;
  std::vector<Storage> rows(static_cast<std::size_t>(n * d_qk));
  for (index j = 0; j < n; ++j)
    for (index d = 0; d < d_qk; ++d) {
      const float v = d < d_c ? (d % 2 ? 3e38f : -2e38f) : (j == n - 3 ? 4.0f : 0.0f);
      rows[static_cast<std::size_t>(j * d_qk + d)] = Storage(v);
    }
  std::vector<float> q(static_cast<std::size_t>(B * T * H * d_qk), 0.0f);
  for (index r = 0; r < T * H; ++r)
    for (index d = d_c; d < d_qk; ++d) q[static_cast<std::size_t>(r * d_qk + d)] = 1.0f;
  std::vector<float> out(static_cast<std::size_t>(B * T * H * d_c), 0.0f);
  const index lengths[1] = {n};
  attn::detail::mla::latent_problem<Storage> pr{q.data(), rows.data(), lengths, out.data(), B,   T,
                                                H,        d_c,         d_r,     n,          1.0f};
  attn::detail::mla::latent_attention(pr, 0);
  for (index r = 0; r < T * H; ++r)
    for (index d = 0; d < d_c; ++d) {
      const double want = static_cast<double>(static_cast<float>(Storage(d % 2 ? 3e38f : -2e38f)));
      const double got = out[static_cast<std::size_t>(r * d_c + d)];
      ASSERT_TRUE(std::isfinite(got)) << "row " << r << " feature " << d;
      // the double recomputation rounds once to float: |got - want| <= 1 ulp
      EXPECT_NEAR(got, want, std::fabs(want) * 1.2e-7) << "row " << r << " feature " << d;
    }
}

TEST(NanPolicy, HugeValuesThroughLatentAttention) {
  latent_huge_values<float>(1300);
  latent_huge_values<Eigen::bfloat16>(1300);
  latent_huge_values<float>(40);
}

// Both corners at once: every score lies below -FLT_MAX (latent query -1,
// cached latent parts near 3e38: d_c = 20 terms of -4.3e38 in log2 units)
// and the values are huge, so the fast path floors every score to the same
// -FLT_MAX, weighs each key 1 and overflows Σ ĉ to inf. The fp64 repair
// must floor its scores as the fast path does (core::softmax::
// floor_score_fp64): unfloored, the key with the least negative score
// would take all the weight and the row would be that key's value, not the
// mean of its visible keys' values that the floor rule gives.
void latent_huge_values_below_the_score_floor(attn::index n) {
  using attn::index;
  const index B = 1, T = 2, H = 3, d_c = 20, d_r = 4, d_qk = d_c + d_r;
  std::vector<float> rows(static_cast<std::size_t>(n * d_qk), 0.0f);
  for (index j = 0; j < n; ++j)
    for (index d = 0; d < d_c; ++d)
      rows[static_cast<std::size_t>(j * d_qk + d)] =
          3e38f * (1.0f - 0.0001f * static_cast<float>((j * 7 + d) % 1000));
  std::vector<float> q(static_cast<std::size_t>(B * T * H * d_qk), 0.0f);
  for (index r = 0; r < T * H; ++r)
    for (index d = 0; d < d_c; ++d) q[static_cast<std::size_t>(r * d_qk + d)] = -1.0f;
  std::vector<float> out(static_cast<std::size_t>(B * T * H * d_c), 0.0f);
  const index lengths[1] = {n};
  attn::detail::mla::latent_problem<float> pr{q.data(), rows.data(), lengths, out.data(), B, T,
                                              H,        d_c,         d_r,     n,          1.0f};
  attn::detail::mla::latent_attention(pr, 0);
  // the double recomputation rounds once to float: |got - want| <= 1 ulp
  expect_mean_of_visible_latents(rows, out, n, T, H, d_c, d_r, [](index) { return 1.2e-7; });
}

TEST(NanPolicy, HugeValuesWithScoresBelowTheFloorThroughLatentAttention) {
  latent_huge_values_below_the_score_floor(40);
  latent_huge_values_below_the_score_floor(1300);
}

}  // namespace test_nan_policy
