// attn/core/microkernel.hpp: register-blocked tile products.
//
// The two products of an attention tile are small GEMMs whose operands sit in
// cache-resident, pre-packed buffers:
//   scores:      S[rows x cols]  = A[rows x depth] · Bpanel   (A = scaled Q)
//   accumulate:  C[rows x cols] += P[rows x depth] · Bpanel   (C = O, P = probs)
// The right operand is packed in panels of `panel_cols` columns: element
// (d, c) of panel p lives at p * depth * panel_cols + d * panel_cols + c, so
// the inner loop reads one contiguous stream. A register tile keeps
// rows x (panel_cols / width) accumulators live; rows and panel width are
// chosen so that they, the panel loads and one broadcast fit the register
// file (32 on AVX-512: 8 x 2 = 16 accumulators).
#pragma once

#include "attn/core/simd.hpp"
#include "attn/error.hpp"

namespace attn {
namespace core {

/// Register tile: rows of the left operand per micro-kernel call.
constexpr int tile_rows = simd::registers >= 32 ? 8 : 4;
/// Packets per panel row, and the panel width in floats.
constexpr int tile_packets = 2;
constexpr int panel_cols = tile_packets * simd::width;

/// C[r][c] (=|+=) sum_d A[r][d] * B[d][c] for tile_rows rows and one panel.
/// a: row-major, row stride lda. b: one packed panel (depth x panel_cols).
/// c: row-major, row stride ldc. Accumulate selects += over =.
template <bool Accumulate>
inline void gemm_tile(const float* a, index lda, const float* b, index depth, float* c,
                      index ldc) {
  using namespace simd;
  packet acc[tile_rows][tile_packets];
  for (int r = 0; r < tile_rows; ++r)
    for (int p = 0; p < tile_packets; ++p)
      acc[r][p] = Accumulate ? load(c + r * ldc + p * width) : zero();
  for (index d = 0; d < depth; ++d) {
    packet bv[tile_packets];
    for (int p = 0; p < tile_packets; ++p) bv[p] = load(b + d * panel_cols + p * width);
    for (int r = 0; r < tile_rows; ++r) {
      const packet av = broadcast(a[r * lda + d]);
      for (int p = 0; p < tile_packets; ++p) acc[r][p] = fma(av, bv[p], acc[r][p]);
    }
  }
  for (int r = 0; r < tile_rows; ++r)
    for (int p = 0; p < tile_packets; ++p) store(c + r * ldc + p * width, acc[r][p]);
}

/// C (=|+=) A · B over a block: rows a multiple of tile_rows, cols a multiple
/// of panel_cols, B packed as consecutive panels of `depth` rows.
template <bool Accumulate>
inline void gemm_block(const float* a, index lda, const float* b_panels, index depth, float* c,
                       index ldc, index rows, index cols) {
  for (index c0 = 0; c0 < cols; c0 += panel_cols) {
    const float* panel = b_panels + (c0 / panel_cols) * depth * panel_cols;
    for (index r0 = 0; r0 < rows; r0 += tile_rows)
      gemm_tile<Accumulate>(a + r0 * lda, lda, panel, depth, c + r0 * ldc + c0, ldc);
  }
}

}  // namespace core
}  // namespace attn
