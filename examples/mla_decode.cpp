// examples/mla_decode.cpp: one DeepSeek-V2-Lite-shaped multi-head latent
// attention layer (dim 2048, 16 heads, kv_lora_rank 512, RoPE dim 64, YaRN)
// with random weights: prefill a prompt into the latent cache, then decode
// token by token with both computations of the same attention, absorbed
// (W_UK folded into the query, attention over the 576-wide cached rows) and
// naive (per-head K and V expanded from the cache on every step).
//
// Usage: mla_decode [prompt_tokens=256] [new_tokens=8]
// Prints the cache size beside what MHA with expanded K/V would need, the
// per-token time of both paths, and how far apart their outputs are.
#include <attn/mla.hpp>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>

namespace {

using attn::index;
using matrix = attn::mla_weights::matrix;

matrix random_matrix(std::mt19937& rng, index rows, index cols) {
  std::normal_distribution<float> n(0.0f, 1.0f / std::sqrt(static_cast<float>(cols)));
  matrix m(rows, cols);
  for (index i = 0; i < m.size(); ++i) m.data()[i] = n(rng);
  return m;
}

attn::tensor3 random_tokens(std::mt19937& rng, index n, index dim) {
  std::normal_distribution<float> g(0.0f, 1.0f);
  attn::tensor3 x(1, n, dim);
  for (index i = 0; i < x.size(); ++i) x.data()[i] = g(rng);
  return x;
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

int main(int argc, char** argv) {
  const attn::index prompt = argc > 1 ? std::atol(argv[1]) : 256;
  const attn::index steps = argc > 2 ? std::atol(argv[2]) : 8;
  if (prompt < 1 || steps < 1) {
    std::fprintf(stderr, "usage: mla_decode [prompt_tokens >= 1] [new_tokens >= 1]\n");
    return 2;
  }

  // The layer: V2-Lite's shapes (q_lora_rank 0: one wq), random weights.
  const attn::mla_config cfg = attn::mla_config::deepseek_v2_lite();
  const attn::index H = cfg.n_heads;
  std::mt19937 rng(2024);
  attn::mla_weights w;
  w.wq = random_matrix(rng, H * cfg.qk_head_dim(), cfg.dim);
  w.wkv_a = random_matrix(rng, cfg.kv_lora_rank + cfg.qk_rope_head_dim, cfg.dim);
  w.kv_norm = Eigen::VectorXf::Ones(cfg.kv_lora_rank);
  w.wkv_b = random_matrix(rng, H * (cfg.qk_nope_head_dim + cfg.v_head_dim), cfg.kv_lora_rank);
  w.wo = random_matrix(rng, cfg.dim, H * cfg.v_head_dim);
  const attn::multi_head_latent_attention layer(cfg, w);

  // Two caches fed the same tokens, one per path, in bf16.
  const attn::index capacity = prompt + steps;
  auto absorbed_cache = layer.make_cache<Eigen::bfloat16>(1, capacity);
  auto naive_cache = layer.make_cache<Eigen::bfloat16>(1, capacity);
  const attn::tensor3 x = random_tokens(rng, prompt, cfg.dim);
  attn::mla_options naive, absorbed;
  naive.path = attn::mla_path::naive;
  absorbed.path = attn::mla_path::absorbed;

  auto t0 = std::chrono::steady_clock::now();
  layer.forward(x, absorbed_cache);  // automatic: naive for a long prompt
  const double prefill_s = seconds_since(t0);
  layer.forward(x, naive_cache, naive);

  const double mla_bytes = static_cast<double>(absorbed_cache.bytes_per_token());
  const double mha_bytes =
      static_cast<double>(H * (cfg.qk_head_dim() + cfg.v_head_dim)) * sizeof(Eigen::bfloat16);
  std::printf("DeepSeek-V2-Lite-shaped MLA layer: dim %ld, %ld heads, softmax scale %.6f\n",
              static_cast<long>(cfg.dim), static_cast<long>(H), layer.softmax_scale());
  std::printf("cache per token:  latent %ld values = %.0f bytes (bf16);  MHA with expanded "
              "K/V: %ld values = %.0f bytes (%.1fx more)\n",
              static_cast<long>(absorbed_cache.row_width()), mla_bytes,
              static_cast<long>(H * (cfg.qk_head_dim() + cfg.v_head_dim)), mha_bytes,
              mha_bytes / mla_bytes);
  std::printf("prefill of %ld tokens: %.1f ms (%.0f tokens/s)\n", static_cast<long>(prompt),
              prefill_s * 1e3, static_cast<double>(prompt) / prefill_s);
  std::printf("%6s %14s %14s %12s %12s %14s\n", "token", "cache", "MHA would be",
              "absorbed ms", "naive ms", "max |diff|");

  double absorbed_total = 0.0, naive_total = 0.0, worst = 0.0;
  for (attn::index s = 0; s < steps; ++s) {
    const attn::tensor3 token = random_tokens(rng, 1, cfg.dim);
    t0 = std::chrono::steady_clock::now();
    const attn::tensor3 ya = layer.forward(token, absorbed_cache, absorbed);
    const double ta = seconds_since(t0);
    t0 = std::chrono::steady_clock::now();
    const attn::tensor3 yn = layer.forward(token, naive_cache, naive);
    const double tn = seconds_since(t0);
    double diff = 0.0;
    for (attn::index i = 0; i < ya.size(); ++i)
      diff = std::max(diff, static_cast<double>(std::abs(ya.data()[i] - yn.data()[i])));
    worst = std::max(worst, diff);
    absorbed_total += ta;
    naive_total += tn;
    const double cached = static_cast<double>(absorbed_cache.lengths()[0]);
    std::printf("%6ld %11.2f MB %11.2f MB %12.2f %12.2f %14.2e\n", static_cast<long>(prompt + s),
                cached * mla_bytes / 1e6, cached * mha_bytes / 1e6, ta * 1e3, tn * 1e3, diff);
  }
  std::printf("per token: absorbed %.2f ms, naive %.2f ms (%.1fx); largest difference between "
              "the paths %.2e\n",
              absorbed_total / steps * 1e3, naive_total / steps * 1e3, naive_total / absorbed_total,
              worst);
  return worst < 1e-2 ? 0 : 1;  // the two paths compute the same attention
}
