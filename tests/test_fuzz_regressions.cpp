// tests/test_fuzz_regressions.cpp: the findings of the fuzzers in tests/fuzz
// (and of the review that wrote them), each as a minimal reproducer.
//
// A finding that needs a fix in include/ is a DISABLED_ test until the fix
// lands, and its harness steers around it meanwhile (tests/fuzz/
// fuzz_input.hpp, namespace attn_fuzz::known, same F-number). After fixing:
// enable the test here, set the flag to false there, run tools/fuzz.sh.
// All of F1, F5 and F7-F13 are fixed in include/ and their tests run; each
// comment says what was wrong and where.
// Findings in the harnesses themselves were fixed there and need no test.
//
// Some reproducers only fail under the sanitizers (an out-of-bounds write
// that lands in other memory of this process, arithmetic on a null pointer):
// the CI's ASan+UBSan build of this suite is where they count.
//
// NaN/inf propagation findings are in tests/test_nan_policy.cpp (F2, F3, F4,
// F6, F14), next to the policy they break. P-numbers are fuzz_paged_cache's
// (its namespace known_paged).
#include <gtest/gtest.h>

#include <attn/attn.hpp>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "expect_error.hpp"

namespace test_fuzz_regressions {

using attn::index;
using tensor3 = Eigen::Tensor<float, 3, Eigen::RowMajor>;
using tensor4 = Eigen::Tensor<float, 4, Eigen::RowMajor>;
using matrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

bool all_finite(const float* p, index n) {
  for (index i = 0; i < n; ++i)
    if (!std::isfinite(p[i])) return false;
  return true;
}

// F1 (fuzz_sdpa, UBSan): with d_v = 0 the V and output views have no
// elements and may have null data, as Eigen gives zero-size tensors; the
// kernels still form v.at(...) / out.at(...) = null + offset (undefined:
// "applying non-zero offset to null pointer"). Both paths: split-KV decode
// (L = 2: merge_row, accumulate_block) and the tiled forward (L = 100:
// pack_rows, prefetch_rows, the final store loop).
// Fixed in sdpa.hpp: for d_v == 0 the kernels get non-null dummy views.
TEST(FuzzRegressions, NullZeroWidthValueAndOutput) {
  for (index L : {2, 100}) {
    tensor4 q(1, L, 2, 4), k(1, 40, 2, 4);
    q.setRandom();
    k.setRandom();
    const attn::strided<const float, 4> v{nullptr, {1, 40, 2, 0}, {0, 0, 0, 1}};
    const attn::strided<float, 4> out{nullptr, {1, L, 2, 0}, {0, 0, 0, 1}};
    tensor3 lse(1, 2, L);
    attn::sdpa_options opt;
    opt.lse = attn::view(lse);
    attn::scaled_dot_product_attention(attn::view(q).as_const(), attn::view(k).as_const(), v, out,
                                       opt);
    for (index i = 0; i < lse.size(); ++i) EXPECT_TRUE(std::isfinite(lse.data()[i]));
  }
}

// F5 (review of fuzz_mha_cache; ASan heap-buffer-overflow): kv_cache::attend
// checks q's batch and head dim but never out.dims[0..1], opt.lse's batch
// and length, or counts.size(): it cuts batch entry b's first n rows out of
// `out` (and of the LSE) and passes that prefix on, whose dims then match.
// An `out` with fewer batch entries or rows than q is written past its end;
// a short `counts` is read past its end.
// Fix (kv_cache.hpp attend): require out.dims[0] == batch, out.dims[1] == T,
// lse dims[0] == batch and dims[2] == T when given, and
// counts.empty() || counts.size() == batch, before the loop.
TEST(FuzzRegressions, KvCacheAttendChecksOut) {
  attn::kv_cache<float> cache(2, 8, 1, 4);
  tensor4 k(2, 3, 1, 4), q(2, 1, 1, 4), out1(1, 1, 1, 4), out0(2, 0, 1, 4), out(2, 1, 1, 4);
  k.setRandom();
  q.setRandom();
  cache.append(attn::view(k).as_const(), attn::view(k).as_const());
  const auto Q = attn::view(q).as_const();
  attn_test::expect_error("out batch", [&] { cache.attend(Q, attn::view(out1)); }, {"out"});
  attn_test::expect_error("out rows", [&] { cache.attend(Q, attn::view(out0)); }, {"out"});
  tensor3 lse(1, 1, 1);
  attn::sdpa_options opt;
  opt.lse = attn::view(lse);
  attn_test::expect_error("lse batch", [&] { cache.attend(Q, attn::view(out), opt); }, {"lse"});
  attn_test::expect_error("counts size", [&] { cache.attend(Q, attn::view(out), {}, {1}); },
                          {"counts"});
}

// F7 (review of fuzz_additive): Luong dot / general scores that overflow
// fp32 to +inf (finite q, k with q·k > FLT_MAX) make the whole row NaN:
// softmax::row_softmax pivots on max = +inf and computes exp(inf - inf).
// scaled_dot_product_attention gives such a key the whole weight instead
// (tests/test_sdpa_robustness.cpp OverflowingScoresGiveNoNaN).
// Fixed in core/softmax_natural.hpp row_softmax: the max is clamped to max_finite as
// in online_step, and exp(min(x - max, 0)) gives a +inf score weight 1.
TEST(FuzzRegressions, AdditiveDotScoreOverflow) {
  attn::additive_weights w;
  w.score = attn::score_function::dot;
  const attn::additive_attention layer(w);
  tensor3 q(1, 1, 4), k(1, 3, 4), v(1, 3, 2);
  q.setConstant(1e20f);
  k.setZero();
  for (index d = 0; d < 4; ++d) k(0, 1, d) = 1e20f;  // q·k = 4e40: overflows
  v.setRandom();
  const tensor3 out = layer.forward(q, k, v);
  ASSERT_TRUE(all_finite(out.data(), out.size()));
  EXPECT_EQ(out(0, 0, 0), v(0, 1, 0));  // the overflowing key takes the weight
  EXPECT_EQ(out(0, 0, 1), v(0, 1, 1));
}

// F8 (fuzz_additive): weight normalisation rounds g / ‖v‖ to float before it
// multiplies v, so a small ‖v‖ overflows it: v = {1e-40}, g = 1 gives
// v_eff = {inf} instead of {1}, and NaN outputs (inf · 0 where v_a = 0).
// |v_eff| <= |g| always.
// Fixed in additive.hpp: the factor stays in double until v_eff is rounded.
TEST(FuzzRegressions, AdditiveNormalizeTinyV) {
  attn::additive_weights w;
  w.v = Eigen::VectorXf::Zero(2);
  w.v[0] = 1e-40f;  // a denormal: ‖v‖ = 1e-40, g / ‖v‖ = 1e40 > FLT_MAX
  w.normalize = true;
  w.g = 1.0f;
  const attn::additive_attention layer(w);
  ASSERT_TRUE(all_finite(layer.effective_v().data(), 2));
  EXPECT_FLOAT_EQ(layer.effective_v()[0], 1.0f);
  EXPECT_EQ(layer.effective_v()[1], 0.0f);
  tensor3 q(1, 2, 2), k(1, 3, 2);
  q.setRandom();
  k.setRandom();
  const tensor3 out = layer.forward(q, k);
  EXPECT_TRUE(all_finite(out.data(), out.size()));
}

// F9 (fuzz_mha_cache): multi_head_attention::forward(x, cache) appends K/V
// first and lets kv_cache::attend and the attention check opt.attention
// afterwards: causal, key_lengths and masks (refused by attend), a bad
// scale, a negative window side or num_threads. Each throws with the cache
// already grown by T tokens, where the documentation promises "the cache is
// then unchanged".
// Fix (multi_head.hpp forward(x, cache)): check opt.attention up front, as
// attend and sdpa would (or validate through a dry run of those checks),
// before cache.append.
TEST(FuzzRegressions, MhaCacheForwardBadOptionsLeaveCache) {
  attn::mha_config cfg;
  cfg.embed_dim = 8;
  cfg.num_heads = 2;
  attn::mha_weights w;
  for (attn::linear* l : {&w.q, &w.k, &w.v, &w.o}) l->weight = matrix::Constant(8, 8, 0.1f);
  const attn::multi_head_attention layer(cfg, w);
  tensor3 x(1, 3, 8);
  x.setRandom();
  std::vector<attn::mha_options> bad(6);
  bad[0].attention.causal = attn::causal::top_left;
  bad[1].attention.key_lengths = {3};
  bad[2].attention.scale = std::numeric_limits<float>::quiet_NaN();
  bad[3].attention.window = attn::sliding_window{-1, 0};
  bad[4].attention.num_threads = -1;
  static const bool yes = true;
  bad[5].attention.bool_mask = {&yes, {1, 2, 3, 3}, {0, 0, 0, 0}};
  for (std::size_t i = 0; i < bad.size(); ++i) {
    attn::kv_cache<float> cache(1, 16, 2, 4);
    EXPECT_THROW((void)layer.forward(x, cache, bad[i]), attn::error) << "case " << i;
    EXPECT_EQ(cache.lengths()[0], 0) << "case " << i << ": the failed call grew the cache";
  }
}

// F10 (fuzz_mha_cache): kv_cache::append rejects views of zero elements with
// null data whenever T > 0 ("k_new/v_new: expected non-null views"), which is
// how Eigen represents a batch-0 tensor: a valid batch-0 forward over a
// batch-0 cache throws.
// Fix (kv_cache.hpp checked_counts): accept null data for a zero-extent view
// (detail::has_zero_extent), as scaled_dot_product_attention does.
TEST(FuzzRegressions, KvCacheAppendEmptyBatch) {
  attn::mha_config cfg;
  cfg.embed_dim = 8;
  cfg.num_heads = 2;
  attn::mha_weights w;
  for (attn::linear* l : {&w.q, &w.k, &w.v, &w.o}) l->weight = matrix::Constant(8, 8, 0.1f);
  const attn::multi_head_attention layer(cfg, w);
  attn::kv_cache<float> cache(0, 16, 2, 4);
  const tensor3 x(0, 3, 8);
  const tensor3 y = layer.forward(x, cache);
  EXPECT_EQ(y.dimension(0), 0);
  EXPECT_EQ(y.dimension(1), 3);
}

// F11 (review for the errors table): attention_weights, a public entry,
// checks only k's and probs' dims. key_lengths (size and values), the masks'
// dims and strides, null views, q/k head-dim strides, the scale and
// num_threads go unchecked: a short key_lengths is read past its end, a mask
// of the wrong shape is read out of bounds, q.strides[3] != 1 is ignored.
// Fix (attention_weights.hpp): the checks of scaled_dot_product_attention
// (the shared ones could move to one detail::check_sdpa_arguments).
TEST(FuzzRegressions, AttentionWeightsChecksOptions) {
  tensor4 q(2, 3, 2, 4), k(2, 5, 2, 4), probs(2, 2, 3, 5);
  q.setRandom();
  k.setRandom();
  const auto Q = attn::view(q).as_const();
  const auto K = attn::view(k).as_const();
  auto P = attn::view(probs);
  auto expect = [&](const char* label, const attn::sdpa_options& opt, const char* needle) {
    attn_test::expect_error(label, [&] { attn::attention_weights(Q, K, P, opt); }, {needle});
  };
  attn::sdpa_options o1;
  o1.key_lengths = {5};
  expect("key_lengths size", o1, "key_lengths");
  attn::sdpa_options o2;
  o2.key_lengths = {5, 9};
  expect("key_lengths value", o2, "key_lengths");
  std::vector<char> m(8, 1);
  attn::sdpa_options o3;
  o3.bool_mask = {reinterpret_cast<const bool*>(m.data()), {2, 2, 3, 8}, {0, 0, 0, 1}};
  expect("bool_mask dims", o3, "bool_mask");
  attn::sdpa_options o4;
  o4.scale = std::numeric_limits<float>::quiet_NaN();
  expect("scale", o4, "scale");
  attn::sdpa_options o5;
  o5.num_threads = -1;
  expect("num_threads", o5, "num_threads");
  auto Qs = Q;
  Qs.strides[3] = 2;
  attn_test::expect_error("q.strides[3]", [&] { attn::attention_weights(Qs, K, P); },
                          {"q.strides[3]"});
}

// F12 (review of the kv_cache constructor; UBSan signed overflow, then a
// write through a null pointer): batch · capacity · kv_heads · head_dim is
// computed in index without an overflow check; 1 · 2^62 · 4 · 1 wraps to 0,
// the cache allocates nothing, believes it holds 2^62 tokens, and the first
// append writes through a null pointer.
// Fix (kv_cache.hpp constructor): require the element counts to fit
// (capacity <= max_size / (batch · kv_heads · max(head_dim, v_head_dim)))
// before resizing, naming the argument.
TEST(FuzzRegressions, KvCacheSizeOverflow) {
  attn_test::expect_error(
      "capacity overflow", [] { attn::kv_cache<float> c(1, index{1} << 62, 4, 1); }, {"kv_cache"});
}

// F13 (fuzz_sdpa): both paths pre-scale Q by scale · log2(e) in fp32, which
// overflows for |q| near FLT_MAX: q = FLT_MAX (d = 1, default scale 1)
// becomes +inf, and a key k = 0 then scores inf · 0 = NaN; the exact score
// is 0. Finite inputs, NaN output on the tiled path (L = 57), and 0 on the
// split-KV path (L = 1), where F14 reports the NaN row as empty.
// Fix (detail/flash_forward.hpp Qᵀ packing, detail/split_kv_decode.hpp
// ws.q): clamp the pre-scaled value to +-FLT_MAX.
TEST(FuzzRegressions, HugeQueryPrescaleOverflow) {
  for (index L : {1, 57}) {
    tensor4 q(1, L, 1, 1), k(1, 5, 1, 1), v(1, 5, 1, 3);
    q.setConstant(std::numeric_limits<float>::max());
    k.setZero();
    v.setRandom();
    const tensor4 out = attn::scaled_dot_product_attention(q, k, v);
    ASSERT_TRUE(all_finite(out.data(), out.size())) << "L = " << L;
    for (index c = 0; c < 3; ++c) {  // every score is 0: the mean of v
      float mean = 0;
      for (index j = 0; j < 5; ++j) mean += v(0, j, 0, c) / 5;
      EXPECT_NEAR(out(0, 0, 0, c), mean, 1e-6) << "L = " << L;
    }
  }
}

// P1 (fuzz_paged_cache): paged_kv_cache::append over several sequences
// counts one copy-on-write for every listed sequence whose partly filled
// last block is shared, on the state before the call (blocks_for_append).
// When two listed sequences hold that block and no one else does, the first
// one's copy leaves the second its only holder, which then writes in place:
// the batch takes one block fewer than counted. Here a (2 tokens in block 0)
// and its fork b each get 1 token with 1 block free: the batch needs 1
// block (a's copy), as the same appends one at a time show, but is refused
// ("the pool: expected 2 free blocks for this append, got 1 free").
// Fixed (paged_kv_cache.hpp append(), blocks_wanted): the copies are
// counted in the order the appends make them.
TEST(FuzzRegressions, PagedBatchAppendCountsOneCopyTooMany) {
  attn::paged_kv_cache<float> c(2, 4, 1, 1);
  const float x[3] = {1.0f, 2.0f, 3.0f};
  const attn::strided<const float, 3> two{x, {2, 1, 1}, {1, 1, 1}};
  const index a = c.add_sequence();
  c.append(a, two, two);
  const index b = c.fork(a);
  ASSERT_EQ(c.free_blocks(), 1);
  EXPECT_NO_THROW(c.append({a, b}, two, two, {0, 1, 2}));
  EXPECT_EQ(c.free_blocks(), 0);
  EXPECT_EQ(c.length(a), 3);
  EXPECT_EQ(c.length(b), 3);
}

// P2 (fuzz_paged_cache, UBSan): with v_head_dim = 0, which the constructor
// accepts, v_new has no elements and may have null data (check_new_rows
// allows it, as for every view of no elements); append formed
// v_new.data + row · strides[0] + h · strides[1] for every row and head:
// null plus a non-zero offset ("applying non-zero offset to null pointer")
// for any strides but 0. Fixed (paged_kv_cache.hpp append()): the value
// rows are skipped when v_head_dim is 0, as sdpa.hpp does for d_v = 0 (F1).
// Failed only under Clang's UBSan (GCC's does not check null + offset).
TEST(FuzzRegressions, PagedAppendNullZeroWidthValues) {
  attn::paged_kv_cache<float> c(1, 4, 1, 1, /*v_head_dim=*/0);
  const index s = c.add_sequence();
  const float k[2] = {1.0f, 2.0f};
  const attn::strided<const float, 3> k_new{k, {2, 1, 1}, {1, 1, 1}};
  const attn::strided<const float, 3> v_new{nullptr, {2, 1, 0}, {1, 1, 1}};
  c.append(s, k_new, v_new);
  EXPECT_EQ(c.length(s), 2);
}

}  // namespace test_fuzz_regressions
