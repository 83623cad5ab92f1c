// The problem both translation units solve (included by each of them).
#pragma once

#include <attn/sdpa.hpp>
#include <vector>

namespace abi_test {
inline std::vector<float> solve() {
  using tensor4 = Eigen::Tensor<float, 4, Eigen::RowMajor>;
  tensor4 q(1, 300, 2, 40), k(1, 300, 2, 40), v(1, 300, 2, 24);
  for (Eigen::Index i = 0; i < q.size(); ++i) q.data()[i] = static_cast<float>((i * 7919) % 97) / 97.0f;
  for (Eigen::Index i = 0; i < k.size(); ++i) k.data()[i] = static_cast<float>((i * 104729) % 89) / 89.0f;
  for (Eigen::Index i = 0; i < v.size(); ++i) v.data()[i] = static_cast<float>((i * 31) % 83) / 83.0f;
  attn::sdpa_options opt;
  opt.causal = attn::causal::bottom_right;
  const tensor4 out = attn::scaled_dot_product_attention(q, k, v, opt);
  return std::vector<float>(out.data(), out.data() + out.size());
}
}  // namespace abi_test
