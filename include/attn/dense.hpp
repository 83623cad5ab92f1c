// attn/dense.hpp: a dense layer y = x Wᵀ + b (PyTorch's nn.Linear) on the
// micro-kernel attn's attention kernels use.
//
// For the feed-forward blocks around attention (an encoder's intermediate
// and output projections, a decoder's MLP). Unlike Eigen's GEMM, whose
// parallel split changes which code path computes an element, every output
// element is computed by one task in one fixed order, so y has the same bits
// at every thread count (docs/design.md, "Determinism").
#pragma once

#include <Eigen/Core>
#include <array>
#include <string>

#include "attn/core/abi.hpp"
#include "attn/core/linear.hpp"
#include "attn/error.hpp"
#include "attn/overlap.hpp"
#include "attn/size_checks.hpp"
#include "attn/view.hpp"

namespace attn {

/// Weight and bias of a dense layer y = x Wᵀ + b, in nn.Linear's orientation.
struct linear {
  /// [out_features, in_features].
  Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> weight;
  /// [out_features], or empty for no bias.
  Eigen::VectorXf bias;
};

inline namespace ATTN_ABI {

/// nn.Linear with its weight packed once for the micro-kernel. Immutable
/// after construction: apply() may run from many threads at once.
class dense_layer {
 public:
  /// An empty layer (0 x 0); assign a constructed one before apply().
  dense_layer() = default;

  /// Packs `l` (the layer keeps its own copy).
  /// @throws attn::error if the weight is empty or the bias is neither empty
  ///         nor of size out_features.
  explicit dense_layer(const linear& l) {
    constexpr const char* fn = "dense_layer";
    detail::require(l.weight.rows() >= 1 && l.weight.cols() >= 1, fn, "weight",
                    "[out_features, in_features], both >= 1",
                    std::array<index, 2>{l.weight.rows(), l.weight.cols()});
    detail::require(
        l.bias.size() == 0 || l.bias.size() == l.weight.rows(), fn, "bias",
        [&] { return "size 0 or " + std::to_string(l.weight.rows()) + " (out_features)"; },
        l.bias.size());
    packed_ = core::packed_linear(l.weight, l.bias);
  }

  index in_features() const { return packed_.in_features(); }    ///< columns of the weight
  index out_features() const { return packed_.out_features(); }  ///< rows of the weight

  /// y = x Wᵀ + b, row by row.
  ///
  /// @param x            [rows, in_features] float, unit column stride.
  /// @param y            [rows, out_features] float, unit column stride,
  ///                     written; must not overlap x.
  /// @param num_threads  0 = the default (OpenMP's), 1 = serial; the bits of
  ///                     y do not depend on it.
  /// @throws attn::error on a shape, stride or overlap mismatch, before
  ///         anything is written.
  void apply(strided<const float, 2> x, strided<float, 2> y, int num_threads = 0) const {
    constexpr const char* fn = "dense_layer::apply";
    const index rows = x.dims[0];
    detail::require(
        x.dims[0] >= 0 && x.dims[1] == in_features(), fn, "x",
        [&] { return "dims [rows, " + std::to_string(in_features()) + "]"; }, x.dims);
    const std::array<index, 2> want{rows, out_features()};
    detail::require(y.dims == want, fn, "y", "dims [rows, out_features]", y.dims);
    detail::check_span(fn, "x", x);
    detail::check_span(fn, "y", y);
    detail::require(x.strides[1] == 1, fn, "x.strides[1]", "1 (contiguous features)", x.strides[1]);
    detail::require(y.strides[1] == 1, fn, "y.strides[1]", "1 (contiguous features)", y.strides[1]);
    detail::require(rows <= 1 || x.strides[0] >= in_features(), fn, "x.strides[0]",
                    ">= in_features", x.strides[0]);
    detail::require(rows <= 1 || y.strides[0] >= out_features(), fn, "y.strides[0]",
                    ">= out_features (rows must not overlap)", y.strides[0]);
    detail::require(num_threads >= 0, fn, "num_threads", ">= 0 (0 = default)", num_threads);
    if (rows == 0 || out_features() == 0) return;
    detail::require(x.data != nullptr, fn, "x", "a non-null view", "null data");
    detail::require(y.data != nullptr, fn, "y", "a non-null view", "null data");
    detail::check_disjoint(fn, {detail::region("y", y)}, {detail::region("x", x)});
    packed_.apply(x.data, x.strides[0], rows, y.data, y.strides[0], num_threads);
  }

 private:
  core::packed_linear packed_;
};

}  // namespace ATTN_ABI
}  // namespace attn
