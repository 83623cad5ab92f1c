// attn/core/microkernel.hpp: register-blocked tile products.
//
// Both products of an attention tile are small GEMMs over cache-resident
// operands:
//   scores      Sᵀ[keys x queries]  = K[keys x d] · Qᵀ[d x queries]
//   accumulate  O[queries x d_v]   += Pᵀᵀ[queries x keys] · V[keys x d_v]
// so the micro-kernel takes the left operand A with a stride per row and per
// depth step (K is read row by row; Pᵀ is read down its columns) and the
// right operand B with its rows contiguous over the tile's columns (Qᵀ, V).
// A register tile keeps tile_rows x tile_packets accumulators live
// (8 x 2 = 16 of AVX-512's 32 registers), loads tile_packets vectors of B and
// broadcasts one element of A per row at each depth step.
#pragma once

#include "attn/core/simd.hpp"
#include "attn/error.hpp"

namespace attn {
namespace core {

/// Register tile: rows of A per micro-kernel call.
constexpr int tile_rows = simd::registers >= 32 ? 8 : 4;
/// Packets per row of the register tile, and the tile width in floats.
constexpr int tile_packets = 2;
constexpr int tile_cols = tile_packets * simd::width;

/// Left operand: element (r, d) at data[r * row_stride + d * depth_stride].
struct lhs {
  const float* data;
  index row_stride;
  index depth_stride;
};

/// Right operand: element (d, c) at data[d * row_stride + c].
struct rhs {
  const float* data;
  index row_stride;
};

/// C[r][c] (=|+=) sum_{d < depth} A(r, d) B(d, c) for a tile_rows x tile_cols
/// tile. c is row-major with row stride ldc. Accumulate selects += over =.
template <bool Accumulate>
inline void gemm_tile(const lhs& a, const rhs& b, index depth, float* c, index ldc) {
  using namespace simd;
  packet acc[tile_rows][tile_packets];
  for (int r = 0; r < tile_rows; ++r)
    for (int p = 0; p < tile_packets; ++p)
      acc[r][p] = Accumulate ? load(c + r * ldc + p * width) : zero();
  const float* arow[tile_rows];
  for (int r = 0; r < tile_rows; ++r) arow[r] = a.data + r * a.row_stride;
  const float* bp = b.data;
  for (index d = 0; d < depth; ++d, bp += b.row_stride) {
    packet bv[tile_packets];
    for (int p = 0; p < tile_packets; ++p) bv[p] = load(bp + p * width);
    const index ad = d * a.depth_stride;
    for (int r = 0; r < tile_rows; ++r) {
      const packet av = broadcast(arow[r][ad]);
      for (int p = 0; p < tile_packets; ++p) acc[r][p] = fma(av, bv[p], acc[r][p]);
    }
  }
  for (int r = 0; r < tile_rows; ++r)
    for (int p = 0; p < tile_packets; ++p) store(c + r * ldc + p * width, acc[r][p]);
}

/// C (=|+=) A · B over rows x cols, rows a multiple of tile_rows and cols a
/// multiple of tile_cols. Each row block of A is reused across all column
/// blocks while it is hot in L1.
template <bool Accumulate>
inline void gemm_block(const lhs& a, const rhs& b, index depth, float* c, index ldc, index rows,
                       index cols) {
  for (index r0 = 0; r0 < rows; r0 += tile_rows) {
    const lhs ar{a.data + r0 * a.row_stride, a.row_stride, a.depth_stride};
    for (index c0 = 0; c0 < cols; c0 += tile_cols)
      gemm_tile<Accumulate>(ar, rhs{b.data + c0, b.row_stride}, depth, c + r0 * ldc + c0, ldc);
  }
}

}  // namespace core
}  // namespace attn
