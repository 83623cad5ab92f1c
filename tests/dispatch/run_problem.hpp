// tests/dispatch/run_problem.hpp: builds problem p's inputs (deterministic,
// no Eigen allocation crosses a translation unit) and runs it with `sdpa`,
// a callable taking (q, k, v, out, opt) views.
#pragma once

#include <attn/sdpa_options.hpp>
#include <attn/view.hpp>

#include <Eigen/Core>
#include <cstdint>
#include <vector>

namespace dispatch_test {

struct shape {
  attn::index B, L, S, Hq, Hkv, D;
  bool causal;
  int kv_type;  // 0 float, 1 bfloat16, 2 half
};

inline shape shape_of(int p) {
  switch (p) {
    case 0: return {2, 77, 131, 4, 4, 64, false, 0};
    case 1: return {1, 200, 200, 8, 2, 128, true, 0};
    case 2: return {1, 33, 70, 2, 1, 24, false, 2};
    case 3: return {1, 1, 3001, 8, 8, 128, false, 0};
    default: return {2, 1, 2049, 4, 2, 64, true, 1};
  }
}

inline std::size_t output_size_of(int p) {
  const shape s = shape_of(p);
  return static_cast<std::size_t>(s.B * s.L * s.Hq * s.D);
}

// Uniform values in [-2, 2) from a fixed seed.
inline std::vector<float> values(std::size_t n, std::uint64_t seed) {
  std::vector<float> x(n);
  std::uint64_t z = seed * 0x9E3779B97F4A7C15ull + 7;
  for (float& v : x) {
    z ^= z << 13, z ^= z >> 7, z ^= z << 17;
    v = static_cast<float>(z >> 40) * (4.0f / 16777216.0f) - 2.0f;
  }
  return x;
}

template <class T>
attn::strided<T, 4> dense(T* data, attn::index a, attn::index b, attn::index c, attn::index d) {
  return {data, {a, b, c, d}, {b * c * d, c * d, d, 1}};
}

template <class Sdpa>
void run_problem(int p, float* out, Sdpa sdpa) {
  const shape s = shape_of(p);
  const std::vector<float> q = values(static_cast<std::size_t>(s.B * s.L * s.Hq * s.D), 1 + p);
  const std::vector<float> k = values(static_cast<std::size_t>(s.B * s.S * s.Hkv * s.D), 11 + p);
  const std::vector<float> v = values(static_cast<std::size_t>(s.B * s.S * s.Hkv * s.D), 21 + p);
  attn::sdpa_options opt;
  opt.num_threads = 2;
  if (s.causal) opt.causal = attn::causal::bottom_right;
  const attn::strided<const float, 4> qv = dense(q.data(), s.B, s.L, s.Hq, s.D);
  const attn::strided<float, 4> ov = dense(out, s.B, s.L, s.Hq, s.D);
  auto with = [&](auto tag) {
    using KV = decltype(tag);
    const std::vector<KV> kc(k.begin(), k.end()), vc(v.begin(), v.end());
    sdpa(qv, dense(kc.data(), s.B, s.S, s.Hkv, s.D), dense(vc.data(), s.B, s.S, s.Hkv, s.D), ov,
         opt);
  };
  if (s.kv_type == 0) with(float{});
  if (s.kv_type == 1) with(Eigen::bfloat16{});
  if (s.kv_type == 2) with(Eigen::half{});
}

}  // namespace dispatch_test
