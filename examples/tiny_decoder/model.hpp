// examples/tiny_decoder/model.hpp: the tiny random-weight decoder shared by
// examples/gpt_decode.cpp and examples/serve_batch.cpp.
//
// Each layer is pre-norm: x += attention(rms_norm(x)); x += mlp(rms_norm(x)),
// with grouped-query attention (8 query heads, 2 KV heads), rotary position
// embeddings (half-split, as Llama) and a SiLU-gated MLP; the output head is
// the embedding (tied).
#pragma once

#include <attn/multi_head.hpp>

#include <cmath>
#include <memory>
#include <random>
#include <vector>

namespace tiny_decoder {

using attn::index;
using matrix = attn::multi_head_attention::matrix;

constexpr index vocab = 512, dim = 256, layers = 4, heads = 8, kv_heads = 2, hidden = 688;
constexpr index head_dim = dim / heads, max_tokens = 1024;

inline matrix random_matrix(index rows, index cols, std::mt19937& rng) {
  std::normal_distribution<float> n(0.0f, 1.0f / std::sqrt(static_cast<float>(cols)));
  matrix m(rows, cols);
  for (index i = 0; i < m.size(); ++i) m.data()[i] = n(rng);
  return m;
}

inline attn::linear random_linear(index out, index in, std::mt19937& rng) {
  return {random_matrix(out, in, rng), {}};
}

/// y <- x / rms(x) (unit gain), per token.
inline void rms_norm(const attn::tensor3& x, attn::tensor3& y) {
  const index n = x.dimension(0) * x.dimension(1);
  for (index t = 0; t < n; ++t) {
    const float* a = x.data() + t * dim;
    double ss = 0;
    for (index i = 0; i < dim; ++i) ss += double(a[i]) * a[i];
    const float inv = 1.0f / std::sqrt(static_cast<float>(ss / dim) + 1e-6f);
    for (index i = 0; i < dim; ++i) y.data()[t * dim + i] = a[i] * inv;
  }
}

/// One layer: attention and the MLP's weights.
struct block {
  std::unique_ptr<attn::multi_head_attention> attention;  ///< GQA with RoPE
  matrix w_gate, w_up, w_down;  ///< [hidden, dim], [hidden, dim], [dim, hidden]
};

/// x += W_down (silu(W_gate h) * (W_up h)) for every token of h.
inline void mlp(const block& blk, const attn::tensor3& h, attn::tensor3& x) {
  const index n = h.dimension(0) * h.dimension(1);
  Eigen::Map<const matrix> hm(h.data(), n, dim);
  Eigen::Map<matrix> xm(x.data(), n, dim);
  const matrix gate = hm * blk.w_gate.transpose(), up = hm * blk.w_up.transpose();
  const matrix act = gate.unaryExpr([](float g) { return g / (1.0f + std::exp(-g)); })
                         .cwiseProduct(up);
  xm.noalias() += act * blk.w_down.transpose();
}

/// The whole model.
struct model {
  matrix embedding;           ///< [vocab, dim], also the output head
  std::vector<block> blocks;  ///< the layers
};

/// Random weights from `seed`.
inline model make_model(unsigned seed) {
  std::mt19937 rng(seed);
  model m;
  m.embedding = random_matrix(vocab, dim, rng) * 4.0f;
  auto rope = std::make_shared<attn::rope_table>(max_tokens, head_dim);
  attn::mha_config cfg;
  cfg.embed_dim = dim;
  cfg.num_heads = heads;
  cfg.num_kv_heads = kv_heads;
  m.blocks.resize(layers);
  for (block& b : m.blocks) {
    attn::mha_weights w{random_linear(heads * head_dim, dim, rng),
                        random_linear(kv_heads * head_dim, dim, rng),
                        random_linear(kv_heads * head_dim, dim, rng),
                        random_linear(dim, heads * head_dim, rng)};
    b.attention = std::make_unique<attn::multi_head_attention>(
        cfg, std::move(w), attn::mha_rope{rope, attn::rope_layout::half_split});
    b.w_gate = random_matrix(hidden, dim, rng);
    b.w_up = random_matrix(hidden, dim, rng);
    b.w_down = random_matrix(dim, hidden, rng);
  }
  return m;
}

/// The greedy next token after row `row` of the final hidden states h.
inline int greedy(const model& m, const attn::tensor3& h, index row) {
  Eigen::Map<const Eigen::VectorXf> last(h.data() + row * dim, dim);
  const Eigen::VectorXf logits = m.embedding * last;
  index best = 0;
  logits.maxCoeff(&best);
  return static_cast<int>(best);
}

}  // namespace tiny_decoder
