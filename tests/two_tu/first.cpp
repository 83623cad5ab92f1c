// One of two translation units that include the whole library (see main.cpp).
#include <attn/attn.hpp>

float first_tu() {
  Eigen::Tensor<float, 4, Eigen::RowMajor> q(1, 3, 2, 8);
  q.setConstant(0.5f);
  const auto out = attn::scaled_dot_product_attention(q, q, q);
  return out(0, 2, 1, 7);
}
