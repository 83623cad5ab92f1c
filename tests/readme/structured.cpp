// README quick start: structured (segmentation) attention (Kim et al. 2017).
// The lines between the "//! [readme]" markers are the README's code block
// (ctest readme_snippets checks it); this file is built and run as ctest
// readme_structured. A longer example: examples/structured_attention.cpp.
//! [readme]
#include <attn/structured.hpp>
//! [readme]

int main() {
  //! [readme]
  Eigen::Tensor<float, 2, Eigen::RowMajor> query(1, 8);           // [batch, d_k]
  Eigen::Tensor<float, 3, Eigen::RowMajor> keys(1, 16, 8);        // [batch, S, d_k]; values too
  Eigen::Tensor<float, 4, Eigen::RowMajor> pairwise(1, 1, 2, 2);  // psi(z_j, z_j+1), per batch
  query.setRandom();
  keys.setRandom();
  pairwise.setValues({{{{1.0f, -1.0f}, {-1.0f, 1.0f}}}});  // favour staying in a state
  attn::segmentation_options opt;
  opt.pairwise = attn::view(pairwise);
  attn::segmentation_result r = attn::segmentation_attention(query, keys, keys, opt);
  // r.marginals [1, 16] = p(z_j = 1), r.context [1, 8], r.log_partition [1] = log Z
  //! [readme]
  return r.marginals.dimension(1) == 16 && r.context.dimension(1) == 8 ? 0 : 1;
}
