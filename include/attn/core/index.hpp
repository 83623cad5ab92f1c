// attn/core/index.hpp: the index type and the integer arithmetic of tiling.
#pragma once

#include <cstddef>

/// attn: attention kernels over Eigen tensors, header-only (everything is
/// included by <attn/attn.hpp>). Conventions: README.md.
namespace attn {

/// Signed index type used for every extent and stride (same as Eigen::Index).
using index = std::ptrdiff_t;

namespace detail {

/// Smallest multiple of m that is >= x (x >= 0, m > 0).
constexpr index round_up(index x, index m) { return (x + m - 1) / m * m; }

/// ceil(x / m) for x >= 0, m > 0.
constexpr index ceil_div(index x, index m) { return (x + m - 1) / m; }

}  // namespace detail
}  // namespace attn
