// README quick start: scaled dot-product attention. The lines between the
// "//! [readme]" markers are the README's code block, character for
// character (ctest readme_snippets checks it); this file is built and run as
// ctest readme_sdpa. A longer version: examples/sdpa_basic.cpp.
//! [readme]
#include <attn/attn.hpp>

#include <cstdio>

int main() {
  using tensor4 = Eigen::Tensor<float, 4, Eigen::RowMajor>;
  using tensor3 = Eigen::Tensor<float, 3, Eigen::RowMajor>;
  const Eigen::Index batch = 2, L = 4, S = 16, heads = 8, dim = 64;

  // Q [batch, L, heads, dim]; K and V [batch, S, heads, dim].
  tensor4 q(batch, L, heads, dim), k(batch, S, heads, dim), v(batch, S, heads, dim);
  q.setRandom();
  k.setRandom();
  v.setRandom();
  tensor3 lse(batch, heads, L);  // optional output: log-sum-exp per row

  attn::sdpa_options opt;
  opt.causal = attn::causal::bottom_right;  // query i sees keys j <= i + S - L
  opt.lse = attn::view(lse);
  // opt.scale defaults to 1 / sqrt(dim).

  const tensor4 out = attn::scaled_dot_product_attention(q, k, v, opt);  // [batch, L, heads, dim]
  std::printf("out(0,0,0,0) = %f, lse(0,0,0) = %f\n", out(0, 0, 0, 0), lse(0, 0, 0));
}
//! [readme]
