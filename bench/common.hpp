// bench/common.hpp: small helpers shared by the benchmark programs. Include
// it before anything else.
#pragma once

// g++ 12 with AVX-512 reports "__Y may be used uninitialized" from its own
// intrinsics headers (the _mm512_undefined_ps idiom) when Eigen's GEMM and
// casts are inlined into a program: a false positive that -Werror would turn
// into a build failure. It is reported at the intrinsic header's location, so
// it can only be silenced for the whole translation unit, before any include.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

#include <cstddef>
#include <cstdint>
#include <string>

#include <Eigen/Core>
#include <benchmark/benchmark.h>

#include "machine.hpp"
#include "shares.hpp"

namespace attn_bench {

/// Fills p[0, n) with uniform values in [-1, 1) from a fixed seed
/// (splitmix64), converted to T (float, Eigen::bfloat16, Eigen::half).
template <class T>
void fill_uniform(T* p, std::size_t n, std::uint64_t seed) {
  std::uint64_t s = seed * 0x9E3779B97F4A7C15ull + 1;
  for (std::size_t i = 0; i < n; ++i) {
    std::uint64_t z = (s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    const float u = static_cast<float>(z >> 40) * (1.0f / 8388608.0f) - 1.0f;  // 24 bits
    p[i] = static_cast<T>(u);
  }
}

/// Common start of every benchmark program's main(): parses the flags, makes
/// Eigen's own GEMM single-threaded (the benchmarks choose their threads) and
/// returns false when the program should stop.
inline bool init(int* argc, char** argv) {
  note_output_flags(*argc, argv);
  benchmark::Initialize(argc, argv);
  if (benchmark::ReportUnrecognizedArguments(*argc, argv)) return false;
  Eigen::setNbThreads(1);
  return true;
}

inline std::string thread_suffix(int threads) { return "/t" + std::to_string(threads); }

}  // namespace attn_bench
