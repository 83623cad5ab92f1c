// attn/core/simd.hpp: the packet layer. One kernel source, written against
// these few names, compiles to AVX-512 (16 floats), AVX/AVX2 (8), SSE/NEON (4)
// or plain scalars, whichever Eigen's packet math selects for the flags the
// user compiles with. Nothing here knows about attention.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include <Eigen/Core>

namespace attn {
namespace simd {

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

/// True when `packet` is a real vector (not the scalar fallback).
constexpr bool vectorized = width > 1;

/// Architectural vector registers, used to size register tiles.
#if defined(__AVX512F__)
constexpr int registers = 32;
#elif defined(__aarch64__)
constexpr int registers = 32;
#else
constexpr int registers = 16;
#endif

inline packet load(const float* p) { return ei::ploadu<packet>(p); }
inline void store(float* p, const packet& a) { ei::pstoreu(p, a); }
inline packet broadcast(float x) { return ei::pset1<packet>(x); }
inline packet zero() { return ei::pset1<packet>(0.0f); }
/// a * b + c
inline packet fma(const packet& a, const packet& b, const packet& c) { return ei::pmadd(a, b, c); }
inline packet add(const packet& a, const packet& b) { return ei::padd(a, b); }
inline packet sub(const packet& a, const packet& b) { return ei::psub(a, b); }
inline packet mul(const packet& a, const packet& b) { return ei::pmul(a, b); }
inline packet max(const packet& a, const packet& b) { return ei::pmax(a, b); }
inline packet min(const packet& a, const packet& b) { return ei::pmin(a, b); }
/// Round to nearest, ties to even (the current rounding mode).
inline packet round(const packet& a) { return ei::print(a); }
inline float reduce_add(const packet& a) { return ei::predux(a); }
inline float reduce_max(const packet& a) { return ei::predux_max(a); }
/// Per-lane select: mask lanes (all bits set) take a, others b.
inline packet select(const packet& mask, const packet& a, const packet& b) {
  return ei::pselect(mask, a, b);
}
inline packet less(const packet& a, const packet& b) { return ei::pcmp_lt(a, b); }
inline packet equal(const packet& a, const packet& b) { return ei::pcmp_eq(a, b); }

/// 2^n for packets holding integral n in [-126, 127] (exact; no range check).
template <class P>
inline P pow2i(const P& n) {
  using packet_i = typename ei::unpacket_traits<P>::integer_packet;
  const packet_i e = ei::pcast<P, packet_i>(ei::padd(n, ei::pset1<P>(127.0f)));
  return ei::preinterpret<P>(ei::plogical_shift_left<23>(e));
}
/// The scalar fallback of pow2i.
inline float pow2i(const float& n) {
  const std::uint32_t bits = static_cast<std::uint32_t>(static_cast<int>(n) + 127) << 23;
  float out;
  std::memcpy(&out, &bits, sizeof out);
  return out;
}

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

}  // namespace simd
}  // namespace attn
