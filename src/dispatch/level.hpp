// src/dispatch/level.hpp: the entry points one ISA level of attn::dispatch
// defines (src/dispatch/level.cpp, compiled once per level with
// ATTN_DISPATCH_LEVEL set to its name) and src/dispatch/select.cpp calls.
#pragma once

#include <Eigen/Core>

#include "attn/sdpa_options.hpp"
#include "attn/view.hpp"

namespace attn {
namespace dispatch {
namespace level {

/// The entry points of one level: plain function pointers, so that the
/// selector holds one table per level.
struct entry_points {
  void (*sdpa_f32)(strided<const float, 4>, strided<const float, 4>, strided<const float, 4>,
                   strided<float, 4>, const sdpa_options&);
  void (*sdpa_bf16)(strided<const float, 4>, strided<const Eigen::bfloat16, 4>,
                    strided<const Eigen::bfloat16, 4>, strided<float, 4>, const sdpa_options&);
  void (*sdpa_f16)(strided<const float, 4>, strided<const Eigen::half, 4>,
                   strided<const Eigen::half, 4>, strided<float, 4>, const sdpa_options&);
};

// One table per level built (x86-64: all three; elsewhere baseline only).
entry_points baseline_entry_points();
entry_points avx2_entry_points();
entry_points avx512_entry_points();

}  // namespace level
}  // namespace dispatch
}  // namespace attn
