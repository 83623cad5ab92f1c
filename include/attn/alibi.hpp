// attn/alibi.hpp: the standard ALiBi slopes (Press et al., "Train Short,
// Test Long", 2022), for sdpa_options::alibi_slopes.
#pragma once

#include <cmath>
#include <vector>

#include "attn/error.hpp"
#include "attn/view.hpp"

namespace attn {

/// The geometric ALiBi slopes for `heads` heads, as BLOOM and MPT use them.
/// For a power of two n, head h (0-based) gets 2^(-8 (h + 1) / n). Otherwise
/// the first n' = 2^floor(log2 heads) heads get the slopes for n', and the
/// remaining heads - n' get every other slope of 2 n' (the odd-numbered
/// ones: 2^(-4 (2 k + 1) / n'), k = 0, 1, ...).
/// @throws attn::error when heads < 1.
inline std::vector<float> standard_alibi_slopes(index heads) {
  detail::require(heads >= 1, "standard_alibi_slopes", "heads", ">= 1", heads);
  index n = 1;
  while (n * 2 <= heads) n *= 2;
  std::vector<float> slopes;
  slopes.reserve(static_cast<std::size_t>(heads));
  for (index h = 0; h < n; ++h)
    slopes.push_back(static_cast<float>(std::exp2(-8.0 * static_cast<double>(h + 1) /
                                                  static_cast<double>(n))));
  for (index k = 0; static_cast<index>(slopes.size()) < heads; ++k)
    slopes.push_back(static_cast<float>(std::exp2(-4.0 * static_cast<double>(2 * k + 1) /
                                                  static_cast<double>(n))));
  return slopes;
}

}  // namespace attn
