// attn/core/linear.hpp: y = x Wᵀ + b on the core micro-kernel.
//
// The multi-head layer's projections. Eigen's GEMM would do, but its
// parallel split changes which kernel path computes an element, so the bits
// of y would depend on the thread count; here every output element is
// computed by one task in a fixed order, so they never do (docs/design.md:
// determinism). Wᵀ is packed once, at construction, into column panels the
// micro-kernel streams: element (d, c) of panel p at
// panels[(p · in + d) · panel_cols + c].
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <vector>

#include "attn/core/abi.hpp"
#include "attn/core/index.hpp"
#include "attn/core/microkernel.hpp"
#include "attn/core/parallel.hpp"

namespace attn::core {
inline namespace ATTN_ABI {

/// A dense layer with its weight packed for gemm_tile. Immutable after
/// construction; apply() may run from many threads at once.
class packed_linear {
 public:
  using shape = score_tile;  ///< register tile: rows = tokens, columns = output features
  using single_row = tile_shape<1, shape::packets>;  ///< the tile for leftover rows
  static constexpr index panel_cols = shape::cols;   ///< output features per packed panel

  /// An empty layer (0 x 0); assign a constructed one before apply().
  packed_linear() = default;

  /// weight [out, in] (nn.Linear's orientation), bias [out] or empty.
  template <class Weight>
  packed_linear(const Weight& weight, const Eigen::VectorXf& bias)
      : out_(weight.rows()), in_(weight.cols()), bias_(bias) {
    const index panels = detail::ceil_div(out_, panel_cols);
    packed_.assign(static_cast<std::size_t>(panels * in_ * panel_cols), 0.0f);
    for (index c = 0; c < out_; ++c)
      for (index d = 0; d < in_; ++d)
        packed_[static_cast<std::size_t>(((c / panel_cols) * in_ + d) * panel_cols +
                                         c % panel_cols)] = weight(c, d);
  }

  index out_features() const { return out_; }  ///< rows of the weight
  index in_features() const { return in_; }    ///< columns of the weight

  /// y[r, :] = x[r, :] Wᵀ + b for r < rows; x rows have in_features()
  /// floats at stride ldx, y rows out_features() at stride ldy.
  void apply(const float* x, index ldx, index rows, float* y, index ldy, int threads) const {
    const index panels = detail::ceil_div(out_, panel_cols);
    const index rows_pad = detail::round_up(rows, shape::rows);
    const double flops = 2.0 * double(rows) * double(in_) * double(out_);
    // One task per column panel: it owns those output columns for all rows.
    parallel_for(
        panels, threads_for_work(threads, flops),
        [&] { return std::vector<float>(static_cast<std::size_t>(shape::rows * panel_cols)); },
        [&](std::vector<float>& ytile_buffer, index p) {
          float* ytile = ytile_buffer.data();  // [rows][panel_cols] of this block
          const rhs w{packed_.data() + p * in_ * panel_cols, panel_cols};
          const index c0 = p * panel_cols, cols = std::min(panel_cols, out_ - c0);
          for (index r0 = 0; r0 < rows_pad; r0 += shape::rows) {
            const index n = std::min<index>(shape::rows, rows - r0);
            if (n == shape::rows) {
              gemm_tile<shape, false>(lhs{x + r0 * ldx, ldx, 1}, w, in_, ytile, panel_cols);
            } else {
              // The last few rows (all of them when decoding one token): one
              // row at a time, rather than computing padding rows.
              for (index r = 0; r < n; ++r)
                gemm_tile<single_row, false>(lhs{x + (r0 + r) * ldx, ldx, 1}, w, in_,
                                             ytile + r * panel_cols, panel_cols);
            }
            for (index r = 0; r < n; ++r)
              for (index c = 0; c < cols; ++c)
                y[(r0 + r) * ldy + c0 + c] =
                    ytile[r * panel_cols + c] + (bias_.size() ? bias_[c0 + c] : 0.0f);
          }
        });
  }

 private:
  index out_ = 0, in_ = 0;
  Eigen::VectorXf bias_;
  std::vector<float> packed_;
};

}  // namespace ATTN_ABI
}  // namespace attn::core
