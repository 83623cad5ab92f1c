// tests/test_varlen.cpp: attn::varlen_attention, packed variable-length
// batches.
//
// What is checked
//  * Each sequence of a packed batch gives the bits scaled_dot_product_attention
//    gives for it as a batch of one (float K/V: the same kernel calls on the
//    same numbers in the same order, only the addresses differ), for prefill
//    chunks, single-token decodes (the split-KV path) and empty sequences, with
//    every per-sequence option (causal both alignments, window, softcap,
//    ALiBi, sinks, LSE) and a mask_mod.
//  * bf16/half K/V against the fp64 reference per sequence, with the fp32
//    tolerance of tests/sdpa_check.hpp: the reference reads the same rounded
//    K/V values the kernel reads, so the K/V rounding is not an error term.
//  * Batch invariance (docs/design.md, "Batch invariance"): a sequence alone
//    and the same sequence inside random batches, in random orders, at 1 and
//    2 threads, give identical bytes.
//  * Bad input: an attn::error naming the argument, nothing written.
#include <gtest/gtest.h>

#include <algorithm>
#include <attn/alibi.hpp>
#include <attn/flex.hpp>
#include <attn/modifiers.hpp>
#include <attn/varlen.hpp>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "expect_error.hpp"
#include "sdpa_check.hpp"

namespace test_varlen {

using attn::index;
using sdpa_check::tensor3;
using sdpa_check::tensor4;
using sdpa_check::tensor_t;

const float kNaN = std::numeric_limits<float>::quiet_NaN();

/// One sequence: L new queries against S keys (its queries are the last L
/// of its S positions under bottom-right alignment).
struct seq_len {
  index L, S;
};

/// A packed batch: q [total_q, Hq, D], k/v [total_k, Hkv, D] and their
/// cumulative lengths.
template <class KV>
struct packed {
  tensor3 q;
  tensor_t<KV, 3> k, v;
  std::vector<index> cu_q, cu_k;
};

/// Sequence b's rows, seeded by seed_of[b] so that the same sequence has
/// the same numbers in any batch.
template <class KV>
packed<KV> make_batch(const std::vector<seq_len>& seqs, const std::vector<unsigned>& seed_of,
                      index Hq, index Hkv, index D) {
  packed<KV> p;
  p.cu_q = {0};
  p.cu_k = {0};
  for (const seq_len& s : seqs) {
    p.cu_q.push_back(p.cu_q.back() + s.L);
    p.cu_k.push_back(p.cu_k.back() + s.S);
  }
  p.q = tensor3(p.cu_q.back(), Hq, D);
  p.k = tensor_t<KV, 3>(p.cu_k.back(), Hkv, D);
  p.v = tensor_t<KV, 3>(p.cu_k.back(), Hkv, D);
  for (std::size_t b = 0; b < seqs.size(); ++b) {
    std::mt19937 g(seed_of[b]);
    std::normal_distribution<float> n(0.0f, 1.0f);
    for (index i = p.cu_q[b] * Hq * D; i < p.cu_q[b + 1] * Hq * D; ++i) p.q.data()[i] = n(g);
    for (index i = p.cu_k[b] * Hkv * D; i < p.cu_k[b + 1] * Hkv * D; ++i) {
      p.k.data()[i] = KV(n(g));
      p.v.data()[i] = KV(n(g));
    }
  }
  return p;
}

struct result {
  tensor3 out;  ///< [total_q, Hq, D]
  tensor3 lse;  ///< [1, Hq, total_q]
};

template <class KV, class Mods = attn::score_modifiers<>>
result run_varlen(const packed<KV>& p, attn::sdpa_options opt, const Mods& mods = {}) {
  const index T = p.q.dimension(0), Hq = p.q.dimension(1), D = p.v.dimension(2);
  result r{tensor3(T, Hq, D), tensor3(1, Hq, T)};
  r.out.setConstant(kNaN);
  r.lse.setConstant(kNaN);
  opt.lse = attn::view(r.lse);
  attn::varlen_attention(attn::view(p.q), attn::view(p.k), attn::view(p.v), attn::view(r.out),
                         p.cu_q, p.cu_k, mods, opt);
  return r;
}

/// Rows [first, first + n) of a packed [T, H, D] tensor as [1, n, H, D].
template <class T>
tensor_t<T, 4> rows_of(const tensor_t<T, 3>& t, index first, index n) {
  const index H = t.dimension(1), D = t.dimension(2);
  tensor_t<T, 4> r(1, n, H, D);
  std::copy(t.data() + first * H * D, t.data() + (first + n) * H * D, r.data());
  return r;
}

/// Sequence b as its own batch of one, through scaled_dot_product_attention
/// or flex_attention.
template <class KV, class Mods = attn::score_modifiers<>>
sdpa_check::outputs run_alone(const packed<KV>& p, index b, attn::sdpa_options opt,
                              const Mods& mods = {}) {
  const index L = p.cu_q[b + 1] - p.cu_q[b], S = p.cu_k[b + 1] - p.cu_k[b];
  const tensor4 q = rows_of(p.q, p.cu_q[b], L);
  const tensor_t<KV, 4> k = rows_of(p.k, p.cu_k[b], S), v = rows_of(p.v, p.cu_k[b], S);
  const index Hq = q.dimension(2);
  sdpa_check::outputs r{tensor4(1, L, Hq, v.dimension(3)), tensor3(1, Hq, L)};
  r.out.setConstant(kNaN);
  r.lse.setConstant(kNaN);
  opt.lse = attn::view(r.lse);
  attn::flex_attention(attn::bshd(q), attn::bshd(k), attn::bshd(v), attn::bshd(r.out), mods, opt);
  return r;
}

/// Sequence b's part of a varlen result, shaped as a batch-1 output.
inline sdpa_check::outputs slice(const result& r, const std::vector<index>& cu_q, index b) {
  const index first = cu_q[b], L = cu_q[b + 1] - first, Hq = r.out.dimension(1);
  sdpa_check::outputs s{rows_of(r.out, first, L), tensor3(1, Hq, L)};
  for (index h = 0; h < Hq; ++h)
    for (index i = 0; i < L; ++i) s.lse(0, h, i) = r.lse(0, h, first + i);
  return s;
}

/// A batch mixing chunked prefill, decodes over long caches (split-KV),
/// a fresh prompt, an empty sequence and one with queries but no keys.
const std::vector<seq_len> kMixed = {{17, 40}, {1, 1500}, {0, 9}, {33, 33}, {1, 1},
                                     {5, 700}, {2, 0},    {1, 2600}};

std::vector<unsigned> seeds(std::size_t n, unsigned base) {
  std::vector<unsigned> s(n);
  std::iota(s.begin(), s.end(), base);
  return s;
}

/// Every sequence of the varlen result equals the batch-1 call, bit for bit.
template <class Mods = attn::score_modifiers<>>
void expect_each_equals_alone(const std::vector<seq_len>& seqs, const attn::sdpa_options& opt,
                              index Hq, index Hkv, index D, const Mods& mods = {}) {
  const auto p = make_batch<float>(seqs, seeds(seqs.size(), 100), Hq, Hkv, D);
  const result got = run_varlen(p, opt, mods);
  for (index b = 0; b < static_cast<index>(seqs.size()); ++b) {
    SCOPED_TRACE("sequence " + std::to_string(b) + " L=" + std::to_string(seqs[b].L) +
                 " S=" + std::to_string(seqs[b].S));
    sdpa_check::expect_same(slice(got, p.cu_q, b), run_alone(p, b, opt, mods), "varlen vs alone");
  }
}

TEST(Varlen, EachSequenceEqualsItselfAloneBitForBit) {
  for (auto c : {attn::causal::bottom_right, attn::causal::top_left, attn::causal::none}) {
    attn::sdpa_options opt;
    opt.causal = c;
    expect_each_equals_alone(kMixed, opt, 4, 2, 32);
  }
}

TEST(Varlen, OptionsApplyPerSequence) {
  const index Hq = 4;
  attn::sdpa_options window;
  window.causal = attn::causal::bottom_right;
  window.window = attn::sliding_window{64, 0};
  expect_each_equals_alone(kMixed, window, Hq, 1, 24);

  attn::sdpa_options mods;
  mods.causal = attn::causal::bottom_right;
  mods.softcap = 20.0f;
  mods.alibi_slopes = attn::standard_alibi_slopes(Hq);
  mods.sinks = {0.5f, -1.0f, 2.0f, 0.0f};
  mods.scale = 0.3f;
  expect_each_equals_alone(kMixed, mods, Hq, 2, 16);
}

TEST(Varlen, MaskModSeesPositionsInItsSequence) {
  // The library's causal mask_mod sees q_idx = S - L + i: equal to the
  // built-in bottom-right causal on every sequence.
  attn::sdpa_options causal;
  causal.causal = attn::causal::bottom_right;
  const auto p = make_batch<float>(kMixed, seeds(kMixed.size(), 7), 3, 3, 16);
  const result builtin = run_varlen(p, causal);
  const result by_mod = run_varlen(p, attn::sdpa_options{}, attn::mask_only(attn::causal_mask{}));
  EXPECT_TRUE(sdpa_check::same_bytes(builtin.lse, by_mod.lse));
  // The output bits may differ (the mask_mod path tiles its masking
  // differently); the reference comparison is below.
  for (index b = 0; b < static_cast<index>(kMixed.size()); ++b) {
    const auto a = slice(builtin, p.cu_q, b), m = slice(by_mod, p.cu_q, b);
    for (index i = 0; i < a.out.size(); ++i)
      ASSERT_NEAR(a.out.data()[i], m.out.data()[i], 1e-5) << "sequence " << b;
  }
}

/// bf16/half K/V: each sequence against the fp64 reference.
template <class KV>
void check_low_precision_against_reference() {
  const index Hq = 4, Hkv = 2, D = 40;
  const auto p = make_batch<KV>(kMixed, seeds(kMixed.size(), 300), Hq, Hkv, D);
  attn::sdpa_options opt;
  opt.causal = attn::causal::bottom_right;
  const result got = run_varlen(p, opt);
  for (index b = 0; b < static_cast<index>(kMixed.size()); ++b) {
    SCOPED_TRACE("sequence " + std::to_string(b));
    const index L = p.cu_q[b + 1] - p.cu_q[b], S = p.cu_k[b + 1] - p.cu_k[b];
    const tensor4 q = rows_of(p.q, p.cu_q[b], L);
    const tensor_t<KV, 4> k = rows_of(p.k, p.cu_k[b], S), v = rows_of(p.v, p.cu_k[b], S);
    const auto ref = attn_ref::sdpa(attn::bshd(q), attn::bshd(k), attn::bshd(v),
                                    attn_ref::options_from(opt));
    EXPECT_TRUE(sdpa_check::agrees(slice(got, p.cu_q, b), ref, sdpa_check::max_abs(v)));
  }
}

TEST(Varlen, Bfloat16AgainstReference) { check_low_precision_against_reference<Eigen::bfloat16>(); }
TEST(Varlen, HalfAgainstReference) { check_low_precision_against_reference<Eigen::half>(); }

TEST(Varlen, FloatAgainstReferenceOnOddShapes) {
  // Lengths that are no multiple of any tile, GQA 3:1, odd head dim.
  const std::vector<seq_len> seqs = {{1, 1}, {3, 5}, {13, 13}, {1, 77}, {29, 61}, {1, 1031}};
  const index Hq = 3, Hkv = 1, D = 19;
  const auto p = make_batch<float>(seqs, seeds(seqs.size(), 900), Hq, Hkv, D);
  for (auto c : {attn::causal::bottom_right, attn::causal::none}) {
    attn::sdpa_options opt;
    opt.causal = c;
    const result got = run_varlen(p, opt);
    for (index b = 0; b < static_cast<index>(seqs.size()); ++b) {
      const index L = seqs[b].L, S = seqs[b].S;
      const tensor4 q = rows_of(p.q, p.cu_q[b], L), k = rows_of(p.k, p.cu_k[b], S),
                    v = rows_of(p.v, p.cu_k[b], S);
      const auto ref = attn_ref::sdpa(attn::bshd(q), attn::bshd(k), attn::bshd(v),
                                      attn_ref::options_from(opt));
      EXPECT_TRUE(sdpa_check::agrees(slice(got, p.cu_q, b), ref, sdpa_check::max_abs(v)))
          << "sequence " << b;
    }
  }
}

TEST(Varlen, BatchInvariance) {
  // A pool of sequences, each with fixed numbers (its own seed); the
  // sequence under test is run alone at 1 thread, then inside random
  // batches of the others in random orders at 1 and 2 threads.
  const std::vector<seq_len> pool = {{1, 3000}, {64, 64}, {7, 900}, {1, 1},  {1, 513},
                                     {40, 100}, {0, 5},   {1, 4096}, {3, 3}, {128, 300}};
  const index Hq = 8, Hkv = 2, D = 64;
  attn::sdpa_options opt;
  opt.causal = attn::causal::bottom_right;
  std::mt19937 g(42);
  for (std::size_t subject = 0; subject < pool.size(); ++subject) {
    SCOPED_TRACE("subject L=" + std::to_string(pool[subject].L) +
                 " S=" + std::to_string(pool[subject].S));
    const unsigned seed = 1000 + static_cast<unsigned>(subject);
    opt.num_threads = 1;
    const auto alone = make_batch<float>({pool[subject]}, {seed}, Hq, Hkv, D);
    const auto want = slice(run_varlen(alone, opt), alone.cu_q, 0);
    for (int trial = 0; trial < 4; ++trial) {
      std::vector<std::size_t> members;
      for (std::size_t i = 0; i < pool.size(); ++i)
        if (i == subject || std::bernoulli_distribution(0.5)(g)) members.push_back(i);
      std::shuffle(members.begin(), members.end(), g);
      std::vector<seq_len> seqs;
      std::vector<unsigned> seed_of;
      index at = 0;
      for (std::size_t i = 0; i < members.size(); ++i) {
        seqs.push_back(pool[members[i]]);
        seed_of.push_back(1000 + static_cast<unsigned>(members[i]));
        if (members[i] == subject) at = static_cast<index>(i);
      }
      const auto batch = make_batch<float>(seqs, seed_of, Hq, Hkv, D);
      for (int threads : {1, 2}) {
        opt.num_threads = threads;
        sdpa_check::expect_same(slice(run_varlen(batch, opt), batch.cu_q, at), want,
                                "batch of " + std::to_string(seqs.size()) + " at " +
                                    std::to_string(threads) + " threads");
      }
    }
  }
}

TEST(Varlen, EmptyBatchAndEmptySequences) {
  const auto none = make_batch<float>({}, {}, 2, 1, 8);
  EXPECT_NO_THROW(run_varlen(none, attn::sdpa_options{}));
  // Queries with no keys: output 0, LSE -inf.
  const auto p = make_batch<float>({{3, 0}, {0, 0}}, {1, 2}, 2, 1, 8);
  const result r = run_varlen(p, attn::sdpa_options{});
  for (index i = 0; i < r.out.size(); ++i) EXPECT_EQ(r.out.data()[i], 0.0f);
  for (index i = 0; i < r.lse.size(); ++i)
    EXPECT_EQ(r.lse.data()[i], -std::numeric_limits<float>::infinity());
}

// ---------------------------------------------------------------------------
// Bad input: an attn::error naming the argument; out and lse untouched.

struct error_case {
  packed<float> p = make_batch<float>({{2, 5}, {1, 3}}, {1, 2}, 2, 1, 8);
  tensor3 out = tensor3(3, 2, 8);
  tensor3 lse = tensor3(1, 2, 3);
  attn::sdpa_options opt;

  error_case() {
    out.setConstant(7.0f);
    lse.setConstant(7.0f);
    opt.lse = attn::view(lse);
  }
  void call() {
    attn::varlen_attention(attn::view(p.q), attn::view(p.k), attn::view(p.v), attn::view(out),
                           p.cu_q, p.cu_k, opt);
  }
  void expect_untouched() const {
    for (index i = 0; i < out.size(); ++i) ASSERT_EQ(out.data()[i], 7.0f);
    for (index i = 0; i < lse.size(); ++i) ASSERT_EQ(lse.data()[i], 7.0f);
  }
};

template <class Edit>
void expect_rejected(const std::string& label, Edit edit, const std::vector<const char*>& needles) {
  error_case c;
  edit(c);
  attn_test::expect_error(label, [&] { c.call(); }, needles);
  c.expect_untouched();
}

TEST(Varlen, CumulativeLengthErrors) {
  expect_rejected("decreasing", [](error_case& c) { c.p.cu_q = {0, 3, 2, 3}; c.p.cu_k = {0, 5, 6, 8}; },
                  {"cu_seqlens_q", "non-decreasing"});
  expect_rejected("does not end at total_q", [](error_case& c) { c.p.cu_q = {0, 2, 2}; },
                  {"cu_seqlens_q", "total_q"});
  expect_rejected("does not start at 0", [](error_case& c) { c.p.cu_k = {1, 5, 8}; },
                  {"cu_seqlens_k", "first entry 0"});
  expect_rejected("no entries", [](error_case& c) { c.p.cu_q.clear(); }, {"cu_seqlens_q"});
  expect_rejected("batch sizes differ", [](error_case& c) { c.p.cu_k = {0, 8}; },
                  {"cu_seqlens_k.size()"});
  expect_rejected("k past total_k", [](error_case& c) { c.p.cu_k = {0, 5, 9}; },
                  {"cu_seqlens_k", "total_k"});
}

TEST(Varlen, OptionAndShapeErrors) {
  expect_rejected("key_lengths", [](error_case& c) { c.opt.key_lengths = {1, 1}; },
                  {"opt", "key_lengths"});
  static tensor_t<bool, 4> mask(1, 1, 1, 1);
  expect_rejected("dense mask", [](error_case& c) { c.opt.bool_mask = attn::view(mask); },
                  {"opt", "dense masks"});
  static tensor3 bad_lse(1, 2, 4);
  expect_rejected("lse shape", [](error_case& c) { c.opt.lse = attn::view(bad_lse); },
                  {"opt.lse", "[1, heads_q, total_q]"});
  expect_rejected("out shape", [](error_case& c) { c.out = tensor3(3, 2, 7); c.out.setConstant(7.0f); },
                  {"out", "[total_q, heads_q, d_v]"});
  expect_rejected("heads", [](error_case& c) {
    c.p.k = tensor_t<float, 3>(8, 3, 8);
    c.p.v = tensor_t<float, 3>(8, 3, 8);
    c.p.k.setZero();
    c.p.v.setZero();
  }, {"heads_q", "multiple of heads_kv"});
  expect_rejected("sinks size", [](error_case& c) { c.opt.sinks = {1.0f}; }, {"sinks"});
}

TEST(Varlen, OutputOverlappingAnInputIsRejected) {
  error_case c;
  tensor3 q_copy = c.p.q;
  // out written over q: the same [3, 2, 8] memory.
  attn_test::expect_error("out aliases q", [&] {
    attn::varlen_attention(attn::view(c.p.q), attn::view(c.p.k), attn::view(c.p.v),
                           attn::view(c.p.q), c.p.cu_q, c.p.cu_k, attn::sdpa_options{});
  }, {"out", "q"});
  EXPECT_TRUE(sdpa_check::same_bytes(q_copy, c.p.q));
  // lse inside out.
  attn::sdpa_options opt;
  opt.lse = attn::strided<float, 3>{c.out.data(), {1, 2, 3}, {6, 3, 1}};
  attn_test::expect_error("lse inside out", [&] {
    attn::varlen_attention(attn::view(c.p.q), attn::view(c.p.k), attn::view(c.p.v),
                           attn::view(c.out), c.p.cu_q, c.p.cu_k, opt);
  }, {"opt.lse", "out"});
  c.opt.lse = attn::view(c.lse);
  c.expect_untouched();
}

}  // namespace test_varlen
