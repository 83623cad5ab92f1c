// attn/core/microkernel.hpp: register-blocked tile products.
//
// Both products of an attention tile are small GEMMs over cache-resident
// operands:
//   scores      Sᵀ[keys x queries]  = K[keys x d] · Qᵀ[d x queries]
//   accumulate  O[queries x d_v]   += P[queries x keys] · V[keys x d_v]
// so the micro-kernel takes the left operand A with a stride per row and per
// depth step (K is read row by row; P is read down the columns of Sᵀ) and
// the right operand B with its rows contiguous over the tile's columns
// (Qᵀ, V). A register tile keeps Rows x Packets accumulators live, loads
// Packets vectors of B and broadcasts one element of A per row at each depth
// step.
#pragma once

#include <algorithm>
#include <cstddef>

#include "attn/core/abi.hpp"
#include "attn/core/assert.hpp"
#include "attn/core/index.hpp"
#include "attn/core/inline.hpp"
#include "attn/core/simd.hpp"

namespace attn::core {
inline namespace ATTN_ABI {

/// A register tile shape: Rows rows of A by Packets vectors of columns.
template <int Rows, int Packets>
struct tile_shape {
  static constexpr int rows = Rows;                     ///< rows of A (and C) per tile
  static constexpr int packets = Packets;               ///< packets of B (and C) per row
  static constexpr index cols = Packets * simd::width;  ///< columns of C per tile
};

/// Shape for Sᵀ = K · Qᵀ (rows = keys, columns = queries). AVX-512 (32
/// registers): 8 x 2, 16 accumulators. AVX2 (16 registers): 6 x 2, 12
/// accumulators, enough to hide the FMA latency with two loads and six
/// broadcasts per depth step; chosen by a sweep of the AVX2 shapes
/// (docs/performance.md, "Register tiles").
using score_tile = tile_shape<simd::registers >= 32 ? 8 : 6, 2>;

/// Shape for the flash kernel's Sᵀ = K · Qᵀ (rows = keys, columns = a task's
/// queries). AVX-512: 8 x 3, 24 accumulators and 11 loads per 24 FMAs where
/// 8 x 2 has 10 per 16 (Zen 4: N = 512 1.16x, the rest 1.00-1.04x; the
/// MLA latent product, which keeps score_tile, ran 6% slower with it). The
/// rows, and so the key tile and the bits, are score_tile's. Elsewhere
/// score_tile.
using flash_score_tile =
    tile_shape<score_tile::rows, simd::registers >= 32 ? 3 : score_tile::packets>;

/// Shape for O += P · V (rows = queries, columns = d_v). AVX-512: 6 x 4, 24
/// accumulators and 10 loads per 24 FMAs. AVX2: 6 x 2, 12 accumulators; the
/// 4 x 2 tile it replaces left the FMA ports idle on latency.
using accumulate_tile = tile_shape<6, simd::registers >= 32 ? 4 : 2>;

/// Whether the attention kernels block their tile products for a 32 KiB L1
/// (the 16-register ISAs, AVX2 and SSE; docs/performance.md, "L1 blocking on
/// AVX2"). The AVX-512 kernels keep the walks they were tuned with on Zen 5.
constexpr bool l1_blocked = simd::registers < 32;

/// A row stride for a scratch tile of rows `floats` long: on the L1-blocked
/// ISAs an odd number of 64-byte lines, so that a panel's rows spread over
/// all of L1's sets (a stride of 512 or 2048 bytes puts every row of a panel
/// into 8 or 2 of a 32 KiB 8-way L1's 64 sets); elsewhere `floats`.
constexpr index scratch_stride(index floats) {
  constexpr index line = 64 / static_cast<index>(sizeof(float));
  if (!l1_blocked) return floats;
  index lines = (floats + line - 1) / line;
  if (lines % 2 == 0) ++lines;
  return lines * line;
}

/// Left operand: element (r, d) at data[r * row_stride + d * depth_stride].
struct lhs {
  const float* data;   ///< element (0, 0)
  index row_stride;    ///< step between rows, in floats
  index depth_stride;  ///< step along the depth (summed) index, in floats
};

/// Right operand: element (d, c) at data[d * row_stride + c].
struct rhs {
  const float* data;  ///< element (0, 0)
  index row_stride;   ///< step between depth rows, in floats; columns are contiguous
};

/// The default epilogue of gemm_tile: C is stored as computed.
struct store_as_is {
  /// x unchanged.
  static simd::packet apply(const simd::packet& x) { return x; }
};

/// C[r][c] (=|+=) sum_{d < depth} A(r, d) B(d, c) for one Shape::rows x
/// Shape::cols tile. c is row-major with row stride ldc. Accumulate selects
/// += over =. Epilogue::apply maps each packet of C on its way to memory
/// (free there: the accumulators are in registers).
template <class Shape, bool Accumulate, class Epilogue = store_as_is>
ATTN_ALWAYS_INLINE void gemm_tile(const lhs& a, const rhs& b, index depth, float* c, index ldc) {
  using namespace simd;
  constexpr int R = Shape::rows, P = Shape::packets;
  ATTN_ASSERT(depth >= 0 && ldc >= Shape::cols);
  packet acc[R][P];
  ATTN_UNROLL for (int r = 0; r < R; ++r)
    ATTN_UNROLL for (int p = 0; p < P; ++p)
      acc[r][p] = Accumulate ? load(c + r * ldc + p * width) : zero();
  // A is addressed as one pointer plus r · row_stride: with a row stride
  // known at the call site (1 for Pᵀ) the offsets are immediates, where an
  // array of row pointers left g++ recomputing them in the loop.
  const float* ap = a.data;
  const float* bp = b.data;
  for (index d = 0; d < depth; ++d, bp += b.row_stride, ap += a.depth_stride) {
    packet bv[P];
    ATTN_UNROLL for (int p = 0; p < P; ++p) bv[p] = load(bp + p * width);
    ATTN_UNROLL for (int r = 0; r < R; ++r) {
      const packet av = broadcast(ap[r * a.row_stride]);
      ATTN_UNROLL for (int p = 0; p < P; ++p) acc[r][p] = fma(av, bv[p], acc[r][p]);
    }
  }
  ATTN_UNROLL for (int r = 0; r < R; ++r)
    ATTN_UNROLL for (int p = 0; p < P; ++p)
      store(c + r * ldc + p * width, Epilogue::apply(acc[r][p]));
}

/// C (=|+=) A · B over rows x cols, rows a multiple of Shape::rows and cols a
/// multiple of Shape::cols. Each row block of A is reused across all column
/// blocks while it is hot in L1.
template <class Shape, bool Accumulate, class Epilogue = store_as_is>
inline void gemm_block(const lhs& a, const rhs& b, index depth, float* c, index ldc, index rows,
                       index cols) {
  ATTN_ASSERT(rows >= 0 && cols >= 0 && rows % Shape::rows == 0 && cols % Shape::cols == 0);
  ATTN_ASSERT(ldc >= cols && b.row_stride >= cols);
  for (index r0 = 0; r0 < rows; r0 += Shape::rows) {
    const lhs ar{a.data + r0 * a.row_stride, a.row_stride, a.depth_stride};
    for (index c0 = 0; c0 < cols; c0 += Shape::cols)
      gemm_tile<Shape, Accumulate, Epilogue>(ar, rhs{b.data + c0, b.row_stride}, depth,
                                             c + r0 * ldc + c0, ldc);
  }
}

/// Prefetches a byte range into L2 a share at a time, spread over `steps`
/// calls of step() (a burst of hundreds of prefetches would fill the miss
/// buffers and be dropped or stall the loads of the work it should hide
/// behind).
class prefetch_stream {
 public:
  /// The range [data, data + bytes), to be prefetched over `steps` calls.
  prefetch_stream(const void* data, std::size_t bytes, std::size_t steps)
      : next_(static_cast<const char*>(data)),
        end_(next_ + bytes),
        share_((bytes / (steps > 0 ? steps : 1) + 63) / 64 * 64) {}
  /// Prefetches the next share (nothing once the range is done).
  void step() {
    if (next_ >= end_) return;
    const std::size_t n = std::min<std::size_t>(share_ > 0 ? share_ : 64,
                                                 static_cast<std::size_t>(end_ - next_));
    simd::prefetch_l2(next_, n);
    next_ += n;
  }

 private:
  const char* next_;
  const char* end_;
  std::size_t share_;
};

}  // namespace ATTN_ABI
}  // namespace attn::core
