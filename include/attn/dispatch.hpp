// attn/dispatch.hpp: one binary for every x86-64 CPU. The attn::dispatch
// target (CMake: link attn::dispatch; a static library) compiles attn's
// kernels once per ISA level and picks the widest level the CPU supports
// when the program first calls it. The rest of attn stays header-only: code
// that includes <attn/sdpa.hpp> gets the kernels of its own compiler flags,
// as always.
//
// Levels (x86-64): avx512 (x86-64-v4: AVX-512 F/BW/CD/DQ/VL), avx2
// (x86-64-v3: AVX2, FMA, F16C) and baseline (x86-64: SSE2). Elsewhere there
// is one level, the compiler's default. A call through attn::dispatch gives
// the same bits as a call of the header-only function compiled for that
// level (tests/test_dispatch.cpp checks it against translation units built
// with -march=x86-64-v3 / x86-64-v4 / native).
//
// Only what the library can compile ahead of time is dispatched: scaled
// dot-product attention over views, for float, bfloat16 and half K/V. The
// layers (multi_head_attention, kv_cache, MLA) are classes compiled with
// their user's flags. Do not include this header in a translation unit that
// also passes Eigen objects to a level built with other flags: Eigen's
// allocator must see one EIGEN_MAX_ALIGN_BYTES (views, as here, are fine).
#pragma once

#include <Eigen/Core>

#include "attn/sdpa_options.hpp"
#include "attn/view.hpp"

namespace attn {
namespace dispatch {

/// An instruction-set level of the dispatch library.
enum class isa_level { baseline, avx2, avx512 };

/// The level calls run at: the widest this CPU (and its OS) supports, unless
/// force_isa_level chose another.
isa_level active_isa_level() noexcept;

/// The widest level this CPU and OS support.
isa_level widest_supported_isa_level() noexcept;

/// "baseline", "avx2" or "avx512".
const char* isa_level_name(isa_level level) noexcept;

/// Runs later calls at `level` (for tests and comparisons); throws
/// attn::error if the CPU does not support it. Not thread-safe with calls
/// in flight.
void force_isa_level(isa_level level);

/// attn::scaled_dot_product_attention (attn/sdpa.hpp: arguments, errors,
/// conventions), at the active level.
void scaled_dot_product_attention(strided<const float, 4> q, strided<const float, 4> k,
                                  strided<const float, 4> v, strided<float, 4> out,
                                  const sdpa_options& opt = {});
void scaled_dot_product_attention(strided<const float, 4> q, strided<const Eigen::bfloat16, 4> k,
                                  strided<const Eigen::bfloat16, 4> v, strided<float, 4> out,
                                  const sdpa_options& opt = {});
void scaled_dot_product_attention(strided<const float, 4> q, strided<const Eigen::half, 4> k,
                                  strided<const Eigen::half, 4> v, strided<float, 4> out,
                                  const sdpa_options& opt = {});

}  // namespace dispatch
}  // namespace attn
