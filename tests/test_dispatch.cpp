// tests/test_dispatch.cpp: attn::dispatch (attn/dispatch.hpp). This file is
// built with the test build's flags (baseline unless ATTN_NATIVE); it checks
// that
//   * dispatch picks the widest level the CPU supports,
//   * every supported level gives the same bits as the header-only function
//     compiled for that level: baseline against this file's own static call,
//     avx2 against -march=x86-64-v3, avx512 against -march=x86-64-v4, and
//     the level of -march=native against a -march=native build,
//   * bad arguments still throw attn::error through dispatch.
#include <attn/dispatch.hpp>
#include <attn/sdpa.hpp>

#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

#include "dispatch/problems.hpp"
#include "dispatch/run_problem.hpp"

namespace test_dispatch {

using attn::dispatch::isa_level;

std::vector<float> run_dispatch(int p) {
  std::vector<float> out(dispatch_test::output_size_of(p));
  dispatch_test::run_problem(p, out.data(), [](auto q, auto k, auto v, auto o, const auto& opt) {
    attn::dispatch::scaled_dot_product_attention(q, k, v, o, opt);
  });
  return out;
}

std::vector<float> run_static_here(int p) {
  std::vector<float> out(dispatch_test::output_size_of(p));
  dispatch_test::run_problem(p, out.data(), [](auto q, auto k, auto v, auto o, const auto& opt) {
    attn::scaled_dot_product_attention(q, k, v, o, opt);
  });
  return out;
}

std::vector<float> run_reference(void (*fn)(int, float*), int p) {
  std::vector<float> out(dispatch_test::output_size_of(p));
  fn(p, out.data());
  return out;
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

#define ATTN_TEST_STR2(x) #x
#define ATTN_TEST_STR(x) ATTN_TEST_STR2(x)

class Dispatch : public ::testing::Test {
 protected:
  void TearDown() override {
    attn::dispatch::force_isa_level(attn::dispatch::widest_supported_isa_level());
  }
};

TEST_F(Dispatch, PicksTheWidestSupportedLevel) {
  EXPECT_EQ(attn::dispatch::active_isa_level(), attn::dispatch::widest_supported_isa_level());
  std::printf("dispatch level on this CPU: %s\n",
              attn::dispatch::isa_level_name(attn::dispatch::active_isa_level()));
#if defined(__x86_64__)
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
    EXPECT_NE(attn::dispatch::active_isa_level(), isa_level::baseline);
  }
#endif
}

TEST_F(Dispatch, EveryLevelMatchesItsStaticBuild) {
  const isa_level widest = attn::dispatch::widest_supported_isa_level();
  // This file's own kernels are the baseline level's when it is built for
  // x86-64's SSE2 (the default build), which dispatch's baseline level is.
  const bool built_baseline = std::string(ATTN_TEST_STR(ATTN_DETAIL_ISA)) == "sse2";
  struct level_reference {
    isa_level level;
    void (*fn)(int, float*);
    const char* build;
  } references[] = {
      {isa_level::avx2, &dispatch_reference_v3, "-march=x86-64-v3"},
      {isa_level::avx512, &dispatch_reference_v4, "-march=x86-64-v4"},
  };
  for (int p = 0; p < dispatch_test::problem_count; ++p) {
    if (built_baseline) {
      attn::dispatch::force_isa_level(isa_level::baseline);
      EXPECT_TRUE(same_bits(run_dispatch(p), run_static_here(p))) << "baseline, problem " << p;
    }
    for (const level_reference& r : references) {
      if (static_cast<int>(r.level) > static_cast<int>(widest)) continue;
      attn::dispatch::force_isa_level(r.level);
      EXPECT_TRUE(same_bits(run_dispatch(p), run_reference(r.fn, p)))
          << attn::dispatch::isa_level_name(r.level) << " vs " << r.build << ", problem " << p;
    }
  }
}

TEST_F(Dispatch, MatchesTheNativeBuild) {
  // -march=native compiles for this CPU; dispatch at the same level must
  // give its bits (a program built for the machine and one built for every
  // machine agree on it).
  attn::dispatch::force_isa_level(attn::dispatch::widest_supported_isa_level());
  for (int p = 0; p < dispatch_test::problem_count; ++p)
    EXPECT_TRUE(same_bits(run_dispatch(p), run_reference(&dispatch_reference_native, p)))
        << "problem " << p;
}

TEST_F(Dispatch, BadArgumentsThrowAttnError) {
  std::vector<float> q(2 * 8), k(3 * 8), v(3 * 8), out(2 * 8);
  const attn::strided<const float, 4> qv{q.data(), {1, 2, 1, 8}, {16, 8, 8, 1}};
  const attn::strided<const float, 4> kv{k.data(), {1, 3, 1, 8}, {24, 8, 8, 1}};
  const attn::strided<const float, 4> vv{v.data(), {1, 3, 1, 8}, {24, 8, 8, 1}};
  const attn::strided<float, 4> bad_out{out.data(), {1, 2, 1, 7}, {16, 8, 8, 1}};
  EXPECT_THROW(attn::dispatch::scaled_dot_product_attention(qv, kv, vv, bad_out), attn::error);
  EXPECT_THROW(attn::dispatch::force_isa_level(static_cast<isa_level>(7)), attn::error);
}

}  // namespace test_dispatch
