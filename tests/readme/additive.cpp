// README quick start: additive (Bahdanau) attention in a decoder loop. The
// lines between the "//! [readme]" markers, joined with a blank line and
// dedented, are the README's code block (ctest readme_snippets checks it);
// this file is built and run as ctest readme_additive. A longer example:
// examples/bahdanau_alignment.cpp.
//! [readme]
#include <attn/attn.hpp>
//! [readme]

#include <cmath>
#include <cstdio>

int main() {
  const Eigen::Index batch = 2, S = 9, d_k = 64, d_q = 48, d_a = 32, steps = 3;

  // Encoder annotations h [batch, S, d_k] and a stand-in for the decoder.
  attn::tensor3 h(batch, S, d_k);
  h.setRandom();
  auto decoder_state = [&](int) {
    attn::tensor3 s(batch, 1, d_q);
    s.setRandom();
    return s;
  };
  attn::tensor3 weights(batch, 1, S);  // written by each step (opt.weights below)
  int bad = 0;
  auto feed_decoder = [&](int t, const attn::tensor3& context) {
    float sum = 0.0f;
    for (Eigen::Index j = 0; j < S; ++j) sum += weights(1, 0, j);
    std::printf("step %d: context [%ld, %ld, %ld], sentence 1 weights sum to %.6f, padding %g\n",
                t, long(context.dimension(0)), long(context.dimension(1)),
                long(context.dimension(2)), sum, weights(1, 0, 8));
    bad += context.dimension(2) != d_k || std::abs(sum - 1.0f) > 1e-5f || weights(1, 0, 8) != 0;
  };

  //! [readme]
  // e_ij = vᵀ tanh(W_q s_i + W_k h_j + b); matrices as nn.Linear: [out_features, in_features].
  attn::additive_weights w;
  w.w_q = Eigen::MatrixXf::Random(d_a, d_q);  // your trained weights here
  w.w_k = Eigen::MatrixXf::Random(d_a, d_k);
  w.bias = Eigen::VectorXf::Zero(d_a);
  w.v = Eigen::VectorXf::Random(d_a);
  const attn::additive_attention attention(w);

  // The keys' projection W_k h is computed once per source sentence...
  const attn::additive_keys memory = attention.project_keys(attn::view(h));

  attn::additive_options opt;
  opt.key_lengths = {9, 6};  // sentence 1 has 6 words: keys 6..8 are padding
  opt.weights = attn::view(weights);  // optional: the alignment a_ij, [batch, 1, S]
  for (int t = 0; t < steps; ++t) {
    // ...and each decoder step attends with its state s [batch, 1, d_q].
    attn::tensor3 context = attention.forward(decoder_state(t), memory, h, opt);  // [batch, 1, d_k]
    feed_decoder(t, context);
  }
  //! [readme]
  return bad ? 1 : 0;
}
