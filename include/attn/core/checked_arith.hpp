// attn/core/checked_arith.hpp: index arithmetic that reports overflow.
//
// The argument checks multiply user-given extents and strides (a cache's
// batch · capacity · heads · dim, a view's span). A signed overflow there is
// undefined behaviour and in practice wraps: a huge size would pass as a
// small one, and a stride of 2^62 floats would step a whole address space
// and land on element 0. Every such product goes through these functions, so
// an impossible size is refused by arithmetic (docs/design.md, "Sizes").
#pragma once

#include <cstddef>
#include <cstdint>
#include <limits>

#include "attn/core/index.hpp"

namespace attn::core {

/// The largest index.
constexpr index max_index = std::numeric_limits<index>::max();

/// The most elements of T one object can hold: its bytes must fit in
/// ptrdiff_t (std::vector's max_size and pointer differences need that).
template <class T>
constexpr index max_elements() {
  return max_index / static_cast<index>(sizeof(T));
}

/// r = a · b; false (r unspecified) when the product does not fit in index.
inline bool checked_mul(index a, index b, index& r) {
#if defined(__GNUC__) || defined(__clang__)
  return !__builtin_mul_overflow(a, b, &r);
#else
  // Portable: the same test by division, on magnitudes (a or b may be
  // negative; index's minimum has no positive counterpart).
  if (a == 0 || b == 0) {
    r = 0;
    return true;
  }
  constexpr index lo = std::numeric_limits<index>::min();
  if ((a == -1 && b == lo) || (b == -1 && a == lo)) return false;
  const bool neg = (a < 0) != (b < 0);
  if (a > 0 && b > 0 && a > max_index / b) return false;
  if (a < 0 && b < 0 && a < max_index / b) return false;
  if (neg && (a > 0 ? b < lo / a : a < lo / b)) return false;
  r = a * b;
  return true;
#endif
}

/// r = a + b; false (r unspecified) when the sum does not fit in index.
inline bool checked_add(index a, index b, index& r) {
#if defined(__GNUC__) || defined(__clang__)
  return !__builtin_add_overflow(a, b, &r);
#else
  if ((b > 0 && a > max_index - b) || (b < 0 && a < std::numeric_limits<index>::min() - b))
    return false;
  r = a + b;
  return true;
#endif
}

/// r = |a|; false when a is index's minimum, whose magnitude does not fit.
inline bool checked_abs(index a, index& r) {
  if (a == std::numeric_limits<index>::min()) return false;
  r = a < 0 ? -a : a;
  return true;
}

/// True when the product of the n non-negative sizes is at most `limit` (0
/// if any size is 0, whatever the others are); r is the product then.
inline bool product_within(const index* sizes, std::size_t n, index limit, index& r) {
  for (std::size_t i = 0; i < n; ++i)
    if (sizes[i] == 0) {
      r = 0;
      return true;
    }
  r = 1;
  for (std::size_t i = 0; i < n; ++i)
    if (sizes[i] < 0 || !checked_mul(r, sizes[i], r) || r > limit) return false;
  return true;
}

/// True when as many elements of T as the product of the n sizes fit in one
/// object (see max_elements).
template <class T>
bool fits_elements(const index* sizes, std::size_t n) {
  index r = 0;
  return product_within(sizes, n, max_elements<T>(), r);
}

}  // namespace attn::core
