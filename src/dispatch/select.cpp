// src/dispatch/select.cpp: chooses the ISA level of attn::dispatch once, on
// first use, from what the CPU and the OS support (cpuid and xgetbv, through
// the compiler's __builtin_cpu_supports, which checks that the OS saves the
// AVX / AVX-512 registers), and forwards each call to that level. Compiled
// with the baseline flags.
#include <attn/dispatch.hpp>
#include <attn/error.hpp>

#include <atomic>
#include <string>

#include "level.hpp"

namespace attn {
namespace dispatch {
namespace {

#if defined(ATTN_DISPATCH_X86)
bool supports(isa_level level) {
  switch (level) {
    case isa_level::baseline:
      return true;
    case isa_level::avx2:
      // x86-64-v3 also has F16C, which every CPU with AVX2 and FMA has
      // (and clang 14's __builtin_cpu_supports cannot name).
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
             __builtin_cpu_supports("bmi2");
    case isa_level::avx512:
      return supports(isa_level::avx2) && __builtin_cpu_supports("avx512f") &&
             __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512cd") &&
             __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
  }
  return false;
}
#else
bool supports(isa_level level) { return level == isa_level::baseline; }
#endif

level::entry_points entry_points_of(isa_level level) {
#if defined(ATTN_DISPATCH_X86)
  if (level == isa_level::avx512) return level::avx512_entry_points();
  if (level == isa_level::avx2) return level::avx2_entry_points();
#else
  (void)level;
#endif
  return level::baseline_entry_points();
}

// The active level, or -1 before the first call chooses one.
std::atomic<int>& active() {
  static std::atomic<int> level{-1};
  return level;
}

const level::entry_points& table() {
  static level::entry_points tables[3] = {entry_points_of(isa_level::baseline),
                                          entry_points_of(isa_level::avx2),
                                          entry_points_of(isa_level::avx512)};
  return tables[static_cast<int>(active_isa_level())];
}

}  // namespace

isa_level widest_supported_isa_level() noexcept {
  if (supports(isa_level::avx512)) return isa_level::avx512;
  if (supports(isa_level::avx2)) return isa_level::avx2;
  return isa_level::baseline;
}

isa_level active_isa_level() noexcept {
  int level = active().load(std::memory_order_acquire);
  if (level < 0) {
    level = static_cast<int>(widest_supported_isa_level());
    int expected = -1;
    if (!active().compare_exchange_strong(expected, level)) level = expected;
  }
  return static_cast<isa_level>(level);
}

const char* isa_level_name(isa_level level) noexcept {
  switch (level) {
    case isa_level::baseline:
      return "baseline";
    case isa_level::avx2:
      return "avx2";
    case isa_level::avx512:
      return "avx512";
  }
  return "?";
}

void force_isa_level(isa_level level) {
  const int l = static_cast<int>(level);
  if (l < 0 || l > 2)
    throw error("attn::dispatch::force_isa_level: level: expected baseline, avx2 or avx512, got " +
                std::to_string(l));
  if (!supports(level))
    throw error(std::string("attn::dispatch::force_isa_level: level: expected a level this CPU "
                            "supports (at most ") +
                isa_level_name(widest_supported_isa_level()) + "), got " + isa_level_name(level));
  active().store(l, std::memory_order_release);
}

void scaled_dot_product_attention(strided<const float, 4> q, strided<const float, 4> k,
                                  strided<const float, 4> v, strided<float, 4> out,
                                  const sdpa_options& opt) {
  table().sdpa_f32(q, k, v, out, opt);
}

void scaled_dot_product_attention(strided<const float, 4> q, strided<const Eigen::bfloat16, 4> k,
                                  strided<const Eigen::bfloat16, 4> v, strided<float, 4> out,
                                  const sdpa_options& opt) {
  table().sdpa_bf16(q, k, v, out, opt);
}

void scaled_dot_product_attention(strided<const float, 4> q, strided<const Eigen::half, 4> k,
                                  strided<const Eigen::half, 4> v, strided<float, 4> out,
                                  const sdpa_options& opt) {
  table().sdpa_f16(q, k, v, out, opt);
}

}  // namespace dispatch
}  // namespace attn
