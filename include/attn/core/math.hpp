// attn/core/math.hpp: vector elementary functions (exp, exp2, tanh) with
// stated error.
#pragma once

#include <limits>

#include "attn/core/abi.hpp"
#include "attn/core/simd.hpp"
#include "attn/core/units.hpp"

namespace attn::core::simd {
inline namespace ATTN_ABI {

/// Maximum relative error of attn::core::simd::exp against the correctly rounded
/// exp, for x in [exp_accurate_min, exp_accurate_max]. Asserted by
/// tests/test_math.cpp over a dense sweep of that range. (About 2 ulp: a
/// degree-6 polynomial on the reduced argument plus a two-constant
/// Cody-Waite reduction.)
constexpr float exp_max_rel_error = 3.0e-7f;

/// Range over which the error bound holds: from ln(FLT_MIN), where results
/// stop being normal floats, up to where 2^n would overflow the exponent.
constexpr float exp_accurate_min = -87.33654f;
constexpr float exp_accurate_max = 88.3f;  ///< upper end of that range

/// e^x per lane for x in [exp_accurate_min, exp_accurate_max], with
/// attn::core::simd::exp's bits there but none of its range handling: outside that
/// range, and for NaN, the result is unspecified (garbage, never a trap).
/// For callers that have already checked the range (or discard the lanes
/// outside it) and cannot afford three selects per packet.
inline packet exp_in_range(const packet& x) {
  const packet xc = min(x, broadcast(88.8f));
  // x = n ln2 + r, |r| <= ln2 / 2; ln2 split in two so n*ln2_hi is exact.
  const packet n = round(mul(xc, broadcast(core::log2e)));
  packet r = fma(n, broadcast(-0.693359375f), xc);
  r = fma(n, broadcast(2.12194440e-4f), r);
  // e^r ~ 1 + r + r^2 (c2 + r (c3 + ...)), minimax coefficients (Cephes).
  packet p = broadcast(1.9875691500e-4f);
  p = fma(p, r, broadcast(1.3981999507e-3f));
  p = fma(p, r, broadcast(8.3334519073e-3f));
  p = fma(p, r, broadcast(4.1665795894e-2f));
  p = fma(p, r, broadcast(1.6666665459e-1f));
  p = fma(p, r, broadcast(5.0000001201e-1f));
  p = fma(p, mul(r, r), add(r, broadcast(1.0f)));
  // 2^n: n may reach 128 just below 88.8, which pow2i cannot encode (exp
  // sends those lanes to +inf).
  return mul(p, pow2i(min(n, broadcast(127.0f))));
}

/// e^x per lane. Below exp_accurate_min the result is exactly 0 (the true
/// value would be subnormal), so exp(-inf) = 0 and exp(-inf - m) = 0; above
/// exp_accurate_max it is +inf (a little early: e^x is finite up to 88.72,
/// but the error bound is only claimed up to exp_accurate_max); NaN stays
/// NaN.
inline packet exp(const packet& x) {
  const packet lo = broadcast(exp_accurate_min);
  const packet hi = broadcast(exp_accurate_max);
  packet y = exp_in_range(max(x, lo));
  y = select(less(x, lo), zero(), y);
  y = select(less(hi, x), broadcast(std::numeric_limits<float>::infinity()), y);
  return select(equal(x, x), y, x);  // NaN lanes: return the NaN
}

/// Maximum relative error of attn::core::simd::exp2_nonpositive against the exact
/// 2^x, for x in [-126, 0]: the reduced argument r = x - round(x) is exact,
/// and a degree-6 polynomial fitted for relative error on [-1/2, 1/2]
/// (fit error 2e-9) leaves only fp32 rounding, measured below 1 ulp.
/// Asserted by tests/test_math.cpp.
constexpr float exp2_nonpositive_max_rel_error = 1.5e-7f;

/// 2^x per lane for the softmax's arguments, x = score - running max <= 0,
/// in log2 units. Cheaper than exp(): no Cody-Waite reduction and no
/// range selects. x <= -127 (including -inf) gives exactly 0, because the
/// clamped 2^-127 has a zero exponent field; x >= 0 (including +inf, from
/// a score that overflowed) gives 1; NaN stays NaN.
inline packet exp2_nonpositive(const packet& x) {
  // Clamp to [-127, 0]; both keep a NaN x (see simd::max / simd::min).
  const packet xc = min(max(x, broadcast(-127.0f)), zero());
  const packet n = round(xc);
  const packet r = sub(xc, n);  // exact, in [-1/2, 1/2]
  packet p = broadcast(1.5353362028719744e-4f);
  p = fma(p, r, broadcast(1.3398874650506383e-3f));
  p = fma(p, r, broadcast(9.618437359127749e-3f));
  p = fma(p, r, broadcast(5.550332470535885e-2f));
  p = fma(p, r, broadcast(2.402264791360054e-1f));
  p = fma(p, r, broadcast(6.931472028553372e-1f));
  p = fma(p, r, broadcast(1.0f));
  return mul(p, pow2i(n));
}

/// Maximum absolute error of attn::core::simd::tanh against the exact tanh, over
/// all floats. Since |tanh x| <= 1 this is also the error relative to 1;
/// relative to |tanh x| the error is at most tanh_max_rel_error. Asserted by
/// tests/test_math.cpp over a dense sweep (measured: about 3.7e-7, a few
/// ulp of 1, from fp32 rounding of the rational function below).
constexpr float tanh_max_abs_error = 4.5e-7f;

/// Maximum error of attn::core::simd::tanh relative to |tanh x|, for every float
/// x (near 0 tanh x ~ x, and the result is x times a ratio close to 1, so
/// the relative error stays bounded down to the smallest subnormals).
constexpr float tanh_max_rel_error = 4.5e-7f;

/// tanh(x) per lane: x · P(x²) / Q(x²), the [13/6] minimax rational that
/// Eigen also uses (one division, no exp), on x clamped to [-9, 9], and the
/// result clamped to [-1, 1]. Saturates: |x| >= 9 (including +-inf and
/// +-1e30) gives exactly +-1, never NaN; tanh(+-0) = +-0; NaN stays NaN
/// (both clamps keep a NaN, see simd::min / simd::max).
inline packet tanh(const packet& x) {
  const packet one = broadcast(1.0f);
  const packet xc = min(max(x, broadcast(-9.0f)), broadcast(9.0f));
  const packet x2 = mul(xc, xc);
  packet p = broadcast(-2.76076847742355e-16f);
  p = fma(p, x2, broadcast(2.00018790482477e-13f));
  p = fma(p, x2, broadcast(-8.60467152213735e-11f));
  p = fma(p, x2, broadcast(5.12229709037114e-08f));
  p = fma(p, x2, broadcast(1.48572235717979e-05f));
  p = fma(p, x2, broadcast(6.37261928875436e-04f));
  p = fma(p, x2, broadcast(4.89352455891786e-03f));
  packet q = broadcast(1.19825839466702e-06f);
  q = fma(q, x2, broadcast(1.18534705686654e-04f));
  q = fma(q, x2, broadcast(2.26843463243900e-03f));
  q = fma(q, x2, broadcast(4.89352518554385e-03f));
  // x · (P / Q) rather than (x · P) / Q: for tiny x, x · P would underflow
  // into subnormals and lose every digit.
  const packet y = mul(xc, ei::pdiv(p, q));
  return min(max(y, broadcast(-1.0f)), one);
}

/// Scalar tanh with the same arithmetic as the packet version.
inline float tanh_scalar(float x) { return ei::pfirst(tanh(broadcast(x))); }

/// Scalar 2^x with the arithmetic of exp2_nonpositive.
inline float exp2_nonpositive_scalar(float x) { return ei::pfirst(exp2_nonpositive(broadcast(x))); }

/// Scalar e^x with the same arithmetic as the packet version.
inline float exp_scalar(float x) { return ei::pfirst(exp(broadcast(x))); }

}  // namespace ATTN_ABI
}  // namespace attn::core::simd
