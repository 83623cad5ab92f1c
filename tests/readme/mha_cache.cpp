// README quick start: a multi-head attention layer with a KV cache. The
// lines between the "//! [readme]" markers, joined with a blank line and
// dedented, are the README's code block (ctest readme_snippets checks it);
// this file is built and run as ctest readme_mha_cache. A complete small
// decoder: examples/gpt_decode.cpp.
//! [readme]
#include <attn/attn.hpp>
//! [readme]

#include <cstdio>
#include <memory>
#include <utility>

namespace {

// Stands in for loading a checkpoint: small random weights of the shapes the
// README names.
attn::linear random_linear(attn::index out, attn::index in) {
  attn::linear l;
  l.weight = attn::multi_head_attention::matrix::Random(out, in) * 0.02f;
  return l;
}

attn::mha_weights load_weights() {
  return {random_linear(2048, 2048), random_linear(512, 2048), random_linear(512, 2048),
          random_linear(2048, 2048)};
}

}  // namespace

int main() {
  // Embeddings of a 12-token prompt and of the next token.
  attn::tensor3 prompt(1, 12, 2048), next_token(1, 1, 2048);
  prompt.setRandom();
  next_token.setRandom();

  //! [readme]
  // Weights as in PyTorch's nn.Linear: [out_features, in_features].
  attn::mha_config cfg;
  cfg.embed_dim = 2048;
  cfg.num_heads = 32;
  cfg.num_kv_heads = 8;  // GQA; head_dim defaults to embed_dim / num_heads = 64
  attn::mha_weights w = load_weights();  // w.q [2048, 2048], w.k/w.v [512, 2048], w.o [2048, 2048]
  auto rope = std::make_shared<attn::rope_table>(/*max_positions=*/4096, /*rotary_dim=*/64);
  attn::multi_head_attention layer(cfg, std::move(w), {rope, attn::rope_layout::half_split});

  attn::kv_cache<Eigen::bfloat16> cache(/*batch=*/1, /*capacity=*/4096, /*kv_heads=*/8,
                                        /*head_dim=*/64);
  attn::tensor3 y = layer.forward(prompt, cache);     // prefill: [1, T, 2048]
  attn::tensor3 z = layer.forward(next_token, cache);  // one step: [1, 1, 2048]
  //! [readme]

  std::printf("prefill [%ld, %ld, %ld], step [%ld, %ld, %ld], cache holds %ld tokens\n",
              long(y.dimension(0)), long(y.dimension(1)), long(y.dimension(2)),
              long(z.dimension(0)), long(z.dimension(1)), long(z.dimension(2)),
              long(cache.lengths()[0]));
  return y.dimension(1) == 12 && z.dimension(1) == 1 && cache.lengths()[0] == 13 ? 0 : 1;
}
