// tests/reference/dense_reference.hpp: y = x Wᵀ + b in fp64, the plain
// definition of nn.Linear, for checking attn::dense_layer.
#pragma once

#include <Eigen/Core>
#include <vector>

namespace attn_ref {

/// x [rows, in] (row-major), weight [out, in], bias [out] or empty; returns
/// y [rows, out] row-major in double.
inline std::vector<double> dense(
    const std::vector<float>& x, long rows,
    const Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>& weight,
    const Eigen::VectorXf& bias) {
  const long out = weight.rows(), in = weight.cols();
  std::vector<double> y(static_cast<std::size_t>(rows * out));
  for (long r = 0; r < rows; ++r)
    for (long c = 0; c < out; ++c) {
      double acc = bias.size() ? double(bias[c]) : 0.0;
      for (long d = 0; d < in; ++d)
        acc += double(x[static_cast<std::size_t>(r * in + d)]) * double(weight(c, d));
      y[static_cast<std::size_t>(r * out + c)] = acc;
    }
  return y;
}

}  // namespace attn_ref
