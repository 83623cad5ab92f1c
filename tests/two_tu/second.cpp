// The other translation unit including the whole library (see main.cpp).
#include <attn/attn.hpp>

float second_tu() {
  Eigen::Tensor<float, 4, Eigen::RowMajor> q(1, 3, 2, 8);
  q.setConstant(0.5f);
  attn::sdpa_options opt;
  opt.causal = attn::causal::top_left;
  const auto out = attn::scaled_dot_product_attention(q, q, q, opt);
  return out(0, 2, 1, 7);
}
