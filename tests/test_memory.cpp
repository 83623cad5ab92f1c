// The kernels' memory is O(L + S): no L x S matrix is ever allocated.
//
// Every heap allocation of this test binary goes through the counting
// operator new below; each test records the peak number of live bytes
// allocated while one attention call runs and compares it with the
// per-thread working-memory budget (1 MiB per thread, docs/design.md).
#include <gtest/gtest.h>

#include <atomic>
#include <cstdlib>
#include <new>
#include <string>

#include "attn/sdpa.hpp"

#include "counting_allocator.hpp"

namespace test_memory {

using tensor4 = Eigen::Tensor<float, 4, Eigen::RowMajor>;
constexpr long long mib = 1 << 20;

// Peak bytes allocated by one attention call above what was live before it.
long long peak_during_call(const tensor4& q, const tensor4& k, const tensor4& v, tensor4& out,
                           const attn::sdpa_options& opt) {
  const long long before = live_bytes.load();
  peak_bytes = before;
  attn::scaled_dot_product_attention(attn::bshd(q), attn::bshd(k), attn::bshd(v),
                                     attn::bshd(out), opt);
  return peak_bytes.load() - before;
}

struct memory_case {
  attn::index L, S, heads, d;
  int threads;
  attn::causal causal;
};

void PrintTo(const memory_case& c, std::ostream* os) {
  *os << "L=" << c.L << " S=" << c.S << " heads=" << c.heads << " d=" << c.d
      << " threads=" << c.threads;
}

class KernelMemory : public ::testing::TestWithParam<memory_case> {};

TEST_P(KernelMemory, StaysWithinOneMiBPerThread) {
  const memory_case c = GetParam();
  tensor4 q(1, c.L, c.heads, c.d), k(1, c.S, c.heads, c.d), v(1, c.S, c.heads, c.d),
      out(1, c.L, c.heads, c.d);
  q.setRandom();
  k.setRandom();
  v.setRandom();
  attn::sdpa_options opt;
  opt.num_threads = c.threads;
  opt.causal = c.causal;
  const long long peak = peak_during_call(q, k, v, out, opt);
  const long long score_matrix = static_cast<long long>(c.L) * c.S * 4;
  // The L x S score matrix of even one head would exceed the budget by far.
  ASSERT_GT(score_matrix, 8 * mib);
  EXPECT_LE(peak, c.threads * mib) << "peak " << peak << " bytes for L=" << c.L
                                   << " S=" << c.S << " d=" << c.d;
}

INSTANTIATE_TEST_SUITE_P(
    Prefill, KernelMemory,
    ::testing::Values(memory_case{2048, 2048, 2, 128, 1, attn::causal::none},
                      memory_case{2048, 2048, 2, 128, 2, attn::causal::bottom_right},
                      memory_case{4096, 4096, 1, 64, 1, attn::causal::none},
                      memory_case{1000, 8192, 1, 256, 2, attn::causal::top_left}),
    [](const ::testing::TestParamInfo<memory_case>& info) {
      const memory_case& c = info.param;
      return "L" + std::to_string(c.L) + "_S" + std::to_string(c.S) + "_d" +
             std::to_string(c.d) + "_t" + std::to_string(c.threads) +
             (c.causal == attn::causal::none ? "" : "_causal");
    });

// Decode (one query row against 64k keys) keeps partial results per key
// chunk, not per key.
TEST(KernelMemory, DecodeIsIndependentOfTheKeyLength) {
  const attn::index S = 1 << 16, H = 8, d = 128;
  tensor4 q(1, 1, H, d), k(1, S, H, d), v(1, S, H, d), out(1, 1, H, d);
  q.setRandom();
  k.setRandom();
  v.setRandom();
  for (int threads : {1, 2}) {
    attn::sdpa_options opt;
    opt.num_threads = threads;
    const long long peak = peak_during_call(q, k, v, out, opt);
    EXPECT_LE(peak, threads * mib) << "threads " << threads;
  }
}

}  // namespace test_memory
