// README quick start: decomposable attention (Parikh et al. 2016). The lines
// between the "//! [readme]" markers are the README's code block (ctest
// readme_snippets checks it); this file is built and run as ctest
// readme_decomposable.
//! [readme]
#include <attn/decomposable.hpp>
//! [readme]

int main() {
  //! [readme]
  using tensor3 = Eigen::Tensor<float, 3, Eigen::RowMajor>;
  tensor3 a(2, 5, 4), b(2, 7, 4);  // [batch, La, d], [batch, Lb, d]
  a.setRandom();
  b.setRandom();
  attn::decomposable_attention layer;  // F = identity, or pass any feed_forward
  attn::decomposable_options opt;
  opt.b_lengths = {7, 4};                                  // padding, on either side
  attn::decomposable_result r = layer.forward(a, b, opt);  // r.beta [2, 5, 4], r.alpha [2, 7, 4]
  attn::intra_attention_options io;
  io.distance_bias.assign(21, 0.0f);          // d(i - j) for i - j clamped to [-10, 10]
  tensor3 self_aligned = layer.intra(a, io);  // [2, 5, 4]
  //! [readme]
  return r.beta.dimension(1) == 5 && r.alpha.dimension(1) == 7 && self_aligned.dimension(1) == 5
             ? 0
             : 1;
}
