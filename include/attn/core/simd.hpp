// attn/core/simd.hpp: the packet layer. One kernel source, written against
// these few names, compiles to AVX-512 (16 floats), AVX/AVX2 (8), SSE/NEON (4)
// or plain scalars, whichever Eigen's packet math selects for the flags the
// user compiles with. Nothing here knows about attention.
#pragma once

#include <Eigen/Core>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "attn/core/abi.hpp"
#if defined(EIGEN_VECTORIZE_AVX512) || defined(EIGEN_VECTORIZE_AVX2)
#include <immintrin.h>
#endif

/// The packet layer: float vectors of the widest width the compiler flags
/// enable (attn::core::simd::width lanes), over Eigen's packet math, and
/// vector elementary functions with stated error (attn/core/math.hpp).
/// Internal, not part of the API (see attn/attn.hpp).
namespace attn::core::simd {
inline namespace ATTN_ABI {

namespace ei = Eigen::internal;

// Eigen's packets are vector types with attributes; naming them as template
// arguments (unpacket_traits<__m512>) makes g++ warn that the attributes are
// ignored, which is harmless here.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wignored-attributes"
#endif

/// The widest float packet enabled for this translation unit.
using packet = typename ei::packet_traits<float>::type;

/// Floats per packet: 16 with AVX-512, 8 with AVX, 4 with SSE/NEON, 1 scalar.
constexpr int width = ei::unpacket_traits<packet>::size;

/// Architectural vector registers, used to size register tiles.
#if defined(__AVX512F__)
constexpr int registers = 32;
#elif defined(__aarch64__)
constexpr int registers = 32;
#else
constexpr int registers = 16;
#endif

/// `width` floats from p (no alignment needed).
inline packet load(const float* p) { return ei::ploadu<packet>(p); }
/// Writes the `width` lanes of a to p (no alignment needed).
inline void store(float* p, const packet& a) { ei::pstoreu(p, a); }
/// Keeps `a` in a register from here on, unchanged: an empty asm statement
/// that the compiler must assume reads and rewrites it. Without it g++ folds
/// the load of a packet that several FMAs share into each of them (one
/// memory operand per use), and a register tile that should load one packet
/// per several FMAs becomes load-bound (the GQA decode score tile ran 1.5x
/// slower on Zen 4; docs/performance.md, "Decode: register reuse").
inline void keep_in_register(packet& a) {
#if (defined(__GNUC__) || defined(__clang__)) && defined(__SSE__)
  __asm__("" : "+v"(a));  // any SSE/AVX register, zmm16-31 included
#elif (defined(__GNUC__) || defined(__clang__)) && defined(__aarch64__)
  __asm__("" : "+w"(a));  // any SIMD/FP register
#else
  (void)a;
#endif
}
/// x in every lane.
inline packet broadcast(float x) { return ei::pset1<packet>(x); }
/// 0 in every lane.
inline packet zero() { return ei::pset1<packet>(0.0f); }
/// a * b + c
inline packet fma(const packet& a, const packet& b, const packet& c) { return ei::pmadd(a, b, c); }
/// a + b
inline packet add(const packet& a, const packet& b) { return ei::padd(a, b); }
/// a - b
inline packet sub(const packet& a, const packet& b) { return ei::psub(a, b); }
/// a * b
inline packet mul(const packet& a, const packet& b) { return ei::pmul(a, b); }
/// Lane-wise max; a NaN in `a` propagates (Eigen follows std::max).
inline packet max(const packet& a, const packet& b) { return ei::pmax(a, b); }
/// Lane-wise min; a NaN in `a` propagates (Eigen follows std::min).
inline packet min(const packet& a, const packet& b) { return ei::pmin(a, b); }
/// Round to nearest, ties to even (the current rounding mode).
inline packet round(const packet& a) { return ei::print(a); }
/// Sum of the lanes (in Eigen's reduction order).
inline float reduce_add(const packet& a) { return ei::predux(a); }
/// Largest lane.
inline float reduce_max(const packet& a) { return ei::predux_max(a); }
/// Per-lane select: mask lanes (all bits set) take a, others b.
inline packet select(const packet& mask, const packet& a, const packet& b) {
  return ei::pselect(mask, a, b);
}
/// Per-lane a < b as a select mask (all bits set where true).
inline packet less(const packet& a, const packet& b) { return ei::pcmp_lt(a, b); }
/// Per-lane a == b as a select mask (all bits set where true).
inline packet equal(const packet& a, const packet& b) { return ei::pcmp_eq(a, b); }

/// Asks for the cache lines of [p, p + bytes) to be brought into L2 ahead of
/// use (a hint: no effect on results, a no-op where the compiler has no
/// prefetch builtin).
inline void prefetch_l2(const void* p, std::size_t bytes) {
#if defined(__GNUC__) || defined(__clang__)
  // From the start of p's cache line, so the range's last line is reached.
  const std::uintptr_t first = reinterpret_cast<std::uintptr_t>(p) & ~std::uintptr_t{63};
  const std::uintptr_t end = reinterpret_cast<std::uintptr_t>(p) + bytes;
  for (std::uintptr_t a = first; a < end; a += 64)
    __builtin_prefetch(reinterpret_cast<const void*>(a), 0, 2);
#else
  (void)p, (void)bytes;
#endif
}

/// 2^n for packets holding integral n in [-127, 127], exact; n = -127 gives
/// 0 (a zero exponent field). No range check.
template <class P>
inline P pow2i(const P& n) {
  using packet_i = typename ei::unpacket_traits<P>::integer_packet;
  const packet_i e = ei::pcast<P, packet_i>(ei::padd(n, ei::pset1<P>(127.0f)));
  return ei::preinterpret<P>(ei::plogical_shift_left<23>(e));
}
/// The scalar fallback of pow2i.
inline float pow2i(const float& n) {
  if (!(n == n)) return n;  // NaN: the int conversion below would be undefined
  const std::uint32_t bits = static_cast<std::uint32_t>(static_cast<int>(n) + 127) << 23;
  float out;
  std::memcpy(&out, &bits, sizeof out);
  return out;
}

/// Loads `width` consecutive values of T as one float packet. bf16 and half
/// are widened in registers (AVX-512: vpmovzxwd + shift / vcvtph2ps; AVX2:
/// the same at 256 bits), never through a temporary copy of the source;
/// other builds convert lane by lane.
template <class T>
inline packet load_as_float(const T* p) {
  if constexpr (std::is_same<T, float>::value) {
    return load(p);
  } else {
#if defined(EIGEN_VECTORIZE_AVX512)
    static_assert(width == 16, "Eigen's AVX-512 float packet has 16 lanes");
    const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    if constexpr (std::is_same<T, Eigen::bfloat16>::value)
      return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
    else if constexpr (std::is_same<T, Eigen::half>::value)
      return _mm512_cvtph_ps(raw);
#elif defined(EIGEN_VECTORIZE_AVX2) && defined(__F16C__)
    static_assert(width == 8, "Eigen's AVX float packet has 8 lanes");
    const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    if constexpr (std::is_same<T, Eigen::bfloat16>::value)
      return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(raw), 16));
    else if constexpr (std::is_same<T, Eigen::half>::value)
      return _mm256_cvtph_ps(raw);
#endif
    alignas(64) float tmp[width];
    for (int i = 0; i < width; ++i) tmp[i] = static_cast<float>(p[i]);
    return load(tmp);
  }
}

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

}  // namespace ATTN_ABI
}  // namespace attn::core::simd
