// examples/gpt_decode.cpp: a tiny decoder-only language model with random
// weights, generating greedily through attn's KV cache.
//
// Each layer is pre-norm: x += attention(rms_norm(x)); x += mlp(rms_norm(x)),
// with grouped-query attention (8 query heads, 2 KV heads), rotary position
// embeddings (half-split, as Llama) and a SiLU-gated MLP. The prompt is
// prefilled in one call per layer; then each new token is one call per layer
// that appends its K/V to the cache and attends over everything cached.
//
// Usage: gpt_decode [new_tokens=64] [bf16|float]
// Prints tokens/s, the KV cache's size and the step time as the cache grows.
#include <attn/multi_head.hpp>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <vector>

namespace {

using attn::index;
using matrix = attn::multi_head_attention::matrix;

constexpr index vocab = 512, dim = 256, layers = 4, heads = 8, kv_heads = 2, hidden = 688;
constexpr index head_dim = dim / heads, max_tokens = 1024;

std::mt19937 rng(7);

matrix random_matrix(index rows, index cols) {
  std::normal_distribution<float> n(0.0f, 1.0f / std::sqrt(static_cast<float>(cols)));
  matrix m(rows, cols);
  for (index i = 0; i < m.size(); ++i) m.data()[i] = n(rng);
  return m;
}

attn::linear random_linear(index out, index in) { return {random_matrix(out, in), {}}; }

// x <- x / rms(x) (unit gain), per token.
void rms_norm(const attn::tensor3& x, attn::tensor3& y) {
  const index n = x.dimension(0) * x.dimension(1);
  for (index t = 0; t < n; ++t) {
    const float* a = x.data() + t * dim;
    double ss = 0;
    for (index i = 0; i < dim; ++i) ss += double(a[i]) * a[i];
    const float inv = 1.0f / std::sqrt(static_cast<float>(ss / dim) + 1e-6f);
    for (index i = 0; i < dim; ++i) y.data()[t * dim + i] = a[i] * inv;
  }
}

struct block {
  std::unique_ptr<attn::multi_head_attention> attention;
  matrix w_gate, w_up, w_down;  // [hidden, dim], [hidden, dim], [dim, hidden]
};

// x += W_down (silu(W_gate h) * (W_up h)) for every token of h.
void mlp(const block& blk, const attn::tensor3& h, attn::tensor3& x) {
  const index n = h.dimension(0) * h.dimension(1);
  Eigen::Map<const matrix> hm(h.data(), n, dim);
  Eigen::Map<matrix> xm(x.data(), n, dim);
  const matrix gate = hm * blk.w_gate.transpose(), up = hm * blk.w_up.transpose();
  const matrix act = gate.unaryExpr([](float g) { return g / (1.0f + std::exp(-g)); })
                         .cwiseProduct(up);
  xm.noalias() += act * blk.w_down.transpose();
}

template <class Storage>
int run(index new_tokens) {
  // Model.
  const matrix embedding = random_matrix(vocab, dim) * 4.0f;  // [vocab, dim], tied output
  auto rope = std::make_shared<attn::rope_table>(max_tokens, head_dim);
  attn::mha_config cfg;
  cfg.embed_dim = dim;
  cfg.num_heads = heads;
  cfg.num_kv_heads = kv_heads;
  std::vector<block> model(layers);
  for (block& b : model) {
    attn::mha_weights w{random_linear(heads * head_dim, dim), random_linear(kv_heads * head_dim, dim),
                        random_linear(kv_heads * head_dim, dim), random_linear(dim, heads * head_dim)};
    b.attention = std::make_unique<attn::multi_head_attention>(
        cfg, std::move(w), attn::mha_rope{rope, attn::rope_layout::half_split});
    b.w_gate = random_matrix(hidden, dim);
    b.w_up = random_matrix(hidden, dim);
    b.w_down = random_matrix(dim, hidden);
  }
  std::vector<attn::kv_cache<Storage>> caches;
  for (index l = 0; l < layers; ++l) caches.emplace_back(1, max_tokens, kv_heads, head_dim);

  // One forward over `tokens` (appended to the caches); returns the next
  // token (greedy).
  auto step = [&](const std::vector<int>& tokens) {
    const index T = static_cast<index>(tokens.size());
    attn::tensor3 x(1, T, dim), h(1, T, dim);
    for (index t = 0; t < T; ++t)
      for (index i = 0; i < dim; ++i) x(0, t, i) = embedding(tokens[t], i);
    for (index l = 0; l < layers; ++l) {
      rms_norm(x, h);
      x += model[l].attention->forward(h, caches[l]);
      rms_norm(x, h);
      mlp(model[l], h, x);
    }
    rms_norm(x, h);
    Eigen::Map<const Eigen::VectorXf> last(h.data() + (T - 1) * dim, dim);
    const Eigen::VectorXf logits = embedding * last;
    index best = 0;
    logits.maxCoeff(&best);
    return static_cast<int>(best);
  };

  using clock = std::chrono::steady_clock;
  std::vector<int> prompt(48);
  for (std::size_t i = 0; i < prompt.size(); ++i) prompt[i] = static_cast<int>((i * 37) % vocab);
  const auto t0 = clock::now();
  int next = step(prompt);
  const double prefill_ms = std::chrono::duration<double, std::milli>(clock::now() - t0).count();
  std::printf("prefill: %zu tokens in %.2f ms (%.0f tokens/s)\n", prompt.size(), prefill_ms,
              prompt.size() / prefill_ms * 1e3);

  // Tokens are printed 16 to a line, each line followed by the step time at
  // that cache length.
  double total_ms = 0;
  for (index n = 0; n < new_tokens; ++n) {
    if (n % 16 == 0) std::printf("tokens:");
    std::printf(" %d", next);
    const auto s0 = clock::now();
    next = step({next});
    const double ms = std::chrono::duration<double, std::milli>(clock::now() - s0).count();
    total_ms += ms;
    if ((n + 1) % 16 == 0 || n + 1 == new_tokens)
      std::printf("\n  after %3ld steps: cache %4ld tokens, %.3f ms/step\n", long(n + 1),
                  long(caches[0].lengths()[0]), ms);
  }
  std::size_t bytes = 0;
  for (const auto& c : caches) bytes += c.bytes();
  std::printf("%ld tokens in %.1f ms: %.0f tokens/s; KV cache %.2f MiB allocated (%s, %ld layers "
              "x %ld tokens capacity)\n",
              long(new_tokens), total_ms, new_tokens / total_ms * 1e3, bytes / 1048576.0,
              sizeof(Storage) == 4 ? "float" : "bf16", long(layers), long(max_tokens));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const attn::index n = argc > 1 ? std::atol(argv[1]) : 64;
  if (n < 1 || n > max_tokens - 64) {
    std::fprintf(stderr, "usage: gpt_decode [new_tokens in 1..%ld] [bf16|float]\n",
                 long(max_tokens - 64));
    return 2;
  }
  const bool use_float = argc > 2 && std::strcmp(argv[2], "float") == 0;
  return use_float ? run<float>(n) : run<Eigen::bfloat16>(n);
}
