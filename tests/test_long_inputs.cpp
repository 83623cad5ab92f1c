// tests/test_long_inputs.cpp: long sequences stay accurate and O(N) in memory.
//
//  * Decode: one query token (4 query heads, MQA, d = 64) against a bf16
//    kv_cache of 1,000,000 tokens (the split-KV path over ~128 key chunks).
//  * Prefill: N = 65,536 queries against 65,536 keys, causal (bottom-right),
//    float, one head, d = 32 (the tiled path; 2.8e11 useful FLOPs).
//
// Accuracy: every output row checked (decode) or 16 sampled rows, the first
// and the last among them (prefill), against an fp64 reference computed for
// those rows alone, on the same bf16/float values the kernel reads.
// The data is made so that the output means something: a common direction u
// in the queries, and "needle" keys along u (every 1000th key in decode,
// every 256th in prefill) whose values are +1, among random keys and values
// in [-1, 1]. The needles take ~25% (decode) / ~55% (prefill) of the weight,
// so outputs are O(0.3) while a lost or doubled key tile or chunk moves them
// by >= 1e-3.
//
// Error bound: |out - ref| <= 3·sqrt(n)·eps·max|V| (max|V| = 1 here), n the
// number of keys summed in one fp32 accumulation: a split-KV chunk
// (10^6 / 128 = 7,813 keys) for decode, the whole row (up to N = 65,536)
// for prefill, whose flash tiles rescale one running sum. The weights are
// exact but for fp32 rounding of the scores (d terms, ~1e-6 relative) and
// exp2's 1.5e-7 relative error, which the normalisation turns into relative
// errors of the output; the sums' rounding errors, of random sign, grow as
// sqrt(n)·eps (the worst case n·eps is never approached by such data), and
// the chunk merges add a few eps each. So: decode 1.6e-5, prefill 4.7e-5.
// The measured worst errors are printed.
//
// Memory: every allocation of this binary is counted (as in
// tests/test_memory.cpp); the peak extra bytes during the attention call
// must stay within the kernels' working-memory budget, 1 MiB per thread,
// independent of N: nothing of size N x N, nor N x chunks x d, is formed.
//
// Under AddressSanitizer (tools/test.sh -DATTN_SANITIZE=ON) the tiled
// kernel runs ~15x slower (measured: 1.2 GFLOP/s), so the sizes shrink
// (decode 250,000 keys, prefill 8,192): the same code paths, with chunking
// and tiling still many-fold, in a few seconds.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <new>
#include <vector>

#include <attn/kv_cache.hpp>
#include <attn/sdpa.hpp>

#if defined(__SANITIZE_ADDRESS__)
#define ATTN_LONG_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define ATTN_LONG_SANITIZED 1
#endif
#endif
#ifndef ATTN_LONG_SANITIZED
#define ATTN_LONG_SANITIZED 0
#endif

#include "counting_allocator.hpp"

namespace test_long_inputs {

using attn::index;
using tensor4 = Eigen::Tensor<float, 4, Eigen::RowMajor>;
constexpr long long mib = 1 << 20;
constexpr double eps32 = 5.9604644775390625e-8;
// The bound of the file comment for sums of n keys (max|V| = 1).
double tolerance(double n) { return 3 * std::sqrt(n) * eps32; }

// A fast deterministic generator: uniform in [-1, 1).
struct xorshift {
  std::uint64_t s;
  float next() {
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    return static_cast<float>(static_cast<std::int64_t>(s >> 11) - (std::int64_t{1} << 52)) *
           (1.0f / static_cast<float>(std::int64_t{1} << 52));
  }
};

// The common direction u (unit length) that queries and needle keys share.
float u(index d, index D) { return (d % 2 ? 1.0f : -1.0f) / std::sqrt(static_cast<float>(D)); }

// Query row: sqrt(D)·u + noise in [-1, 1]; with needle keys 6·u a needle
// scores ~6 (scale 1/sqrt(D)), a random key ~N(0, 0.6).
void make_query(float* q, index D, xorshift& g) {
  for (index d = 0; d < D; ++d) q[d] = std::sqrt(static_cast<float>(D)) * u(d, D) + g.next();
}
// Key / value row j: needles (k = 6·u, v = 1) every `every` keys, random
// elsewhere.
void make_key_value(index j, index every, index D, float* k, float* v, xorshift& g) {
  const bool needle = j % every == 0;
  for (index d = 0; d < D; ++d) {
    k[d] = needle ? 6.0f * u(d, D) : g.next();
    v[d] = needle ? 1.0f : g.next();
  }
}

// fp64 attention of one query row over keys [0, n) of one head.
template <class KV>
std::vector<double> reference_row(const float* q, const attn::strided<const KV, 4>& k,
                                  const attn::strided<const KV, 4>& v, index b, index hk, index n) {
  const index D = k.dims[3];
  const double scale = 1.0 / std::sqrt(static_cast<double>(D));
  std::vector<double> s(static_cast<std::size_t>(n));
  double m = -INFINITY;
  for (index j = 0; j < n; ++j) {
    const KV* kj = k.at(b, j, hk, 0);
    double dot = 0;
    for (index d = 0; d < D; ++d) dot += double(q[d]) * double(static_cast<float>(kj[d]));
    s[static_cast<std::size_t>(j)] = dot * scale;
    m = std::max(m, dot * scale);
  }
  double sum = 0;
  for (double& x : s) sum += (x = std::exp(x - m));
  std::vector<double> o(D, 0.0);
  for (index j = 0; j < n; ++j) {
    const KV* vj = v.at(b, j, hk, 0);
    const double p = s[static_cast<std::size_t>(j)] / sum;
    for (index d = 0; d < D; ++d) o[static_cast<std::size_t>(d)] += p * double(static_cast<float>(vj[d]));
  }
  return o;
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

TEST(LongInputs, DecodeAgainstAMillionTokenCache) {
  const index S = ATTN_LONG_SANITIZED ? 250000 : 1000000, Hq = 4, Hkv = 1, D = 64, chunk = 65536;
  attn::kv_cache<Eigen::bfloat16> cache(1, S, Hkv, D);
  {  // fill it through append, a chunk of tokens at a time
    tensor4 k(1, chunk, Hkv, D), v(1, chunk, Hkv, D);
    xorshift g{0x9e3779b97f4a7c15ull};
    for (index t0 = 0; t0 < S; t0 += chunk) {
      const index n = std::min(chunk, S - t0);
      for (index t = 0; t < n; ++t) make_key_value(t0 + t, 1000, D, &k(0, t, 0, 0), &v(0, t, 0, 0), g);
      cache.append(attn::view(k).as_const(), attn::view(v).as_const(), {n});
    }
  }
  ASSERT_EQ(cache.lengths()[0], S);
  tensor4 q(1, 1, Hq, D), out(1, 1, Hq, D);
  xorshift g{12345};
  for (index h = 0; h < Hq; ++h) make_query(&q(0, 0, h, 0), D, g);
  // Keys per fp32 accumulation: one split-KV chunk (128 of them here).
  const double tol = tolerance(static_cast<double>(S) / 128);

  for (int threads : {1, 2}) {
    attn::sdpa_options opt;
    opt.num_threads = threads;
    const long long before = live_bytes.load();
    peak_bytes = before;
    const auto t0 = std::chrono::steady_clock::now();
    cache.attend(attn::view(q).as_const(), attn::view(out), opt);
    const double secs = seconds_since(t0);
    const long long peak = peak_bytes.load() - before;
    EXPECT_LE(peak, threads * mib) << "threads " << threads;

    double worst = 0, magnitude = 0;
    for (index h = 0; h < Hq; ++h) {
      const std::vector<double> ref =
          reference_row(&q(0, 0, h, 0), cache.keys(), cache.values(), 0, 0, S);
      for (index d = 0; d < D; ++d) {
        worst = std::max(worst, std::fabs(out(0, 0, h, d) - ref[static_cast<std::size_t>(d)]));
        magnitude = std::max(magnitude, std::fabs(ref[static_cast<std::size_t>(d)]));
      }
    }
    EXPECT_LE(worst, tol) << "threads " << threads;
    EXPECT_GT(magnitude, 0.1);  // the needles carry weight: the check means something
    std::printf("[ measured ] decode S=%ld bf16, %d thread(s): %.2f ms, max |out - ref| = %.3g "
                "(bound %.3g, |ref| up to %.3f), peak extra memory %lld bytes\n",
                static_cast<long>(S), threads, secs * 1e3, worst, tol, magnitude, peak);
  }
}

TEST(LongInputs, PrefillSixtyFourKTokens) {
  const index N = ATTN_LONG_SANITIZED ? 8192 : 65536, Hq = 1, Hkv = 1, D = 32;
  tensor4 q(1, N, Hq, D), k(1, N, Hkv, D), v(1, N, Hkv, D), out(1, N, Hq, D);
  xorshift g{777};
  for (index i = 0; i < N; ++i) {
    for (index h = 0; h < Hq; ++h) make_query(&q(0, i, h, 0), D, g);
    make_key_value(i, 256, D, &k(0, i, 0, 0), &v(0, i, 0, 0), g);
  }
  attn::sdpa_options opt;
  opt.causal = attn::causal::bottom_right;
  opt.num_threads = 2;
  const long long before = live_bytes.load();
  peak_bytes = before;
  const auto t0 = std::chrono::steady_clock::now();
  attn::scaled_dot_product_attention(attn::view(q).as_const(), attn::view(k).as_const(),
                                     attn::view(v).as_const(), attn::view(out), opt);
  const double secs = seconds_since(t0);
  const long long peak = peak_bytes.load() - before;
  EXPECT_LE(peak, 2 * mib);  // 2 threads

  // 16 sampled rows: the first, the last, and 14 spread between.
  std::vector<index> rows{0, N - 1};
  for (index r = 1; r <= 14; ++r) rows.push_back(r * (N / 15) + r * 37 % 101);
  double worst = 0, magnitude = 0;
  const auto K = attn::view(k).as_const(), V = attn::view(v).as_const();
  for (index i : rows)
    for (index h = 0; h < Hq; ++h) {
      const std::vector<double> ref = reference_row(&q(0, i, h, 0), K, V, 0, 0, i + 1);
      for (index d = 0; d < D; ++d) {
        const double e = std::fabs(out(0, i, h, d) - ref[static_cast<std::size_t>(d)]);
        ASSERT_LE(e, tolerance(double(i + 1))) << "row " << i << " head " << h << " d " << d;
        worst = std::max(worst, e);
        magnitude = std::max(magnitude, std::fabs(ref[static_cast<std::size_t>(d)]));
      }
    }
  EXPECT_GT(magnitude, 0.1);
  const double flops = 4.0 * Hq * D * (double(N) * (N + 1) / 2);  // useful (causal) FLOPs
  std::printf("[ measured ] prefill N=%ld causal, 2 threads: %.2f s (%.1f GFLOP/s useful), "
              "max |out - ref| over 16 rows = %.3g (bound %.3g at N), |ref| up to %.3f, peak "
              "extra memory %lld bytes\n",
              static_cast<long>(N), secs, flops / secs * 1e-9, worst, tolerance(double(N)),
              magnitude, peak);
}

}  // namespace test_long_inputs
