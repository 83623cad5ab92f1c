// README quick start: DeepSeek multi-head latent attention with its latent
// cache. The lines between the "//! [readme]" markers are the README's code
// block (ctest readme_snippets checks it); this file is built and run as
// ctest readme_mla. A longer example: examples/mla_decode.cpp.
//! [readme]
#include <attn/attn.hpp>
//! [readme]

#include <cstdio>

int main() {
  // A narrow layer so the quick start runs in milliseconds; the presets are
  // attn::mla_config::deepseek_v2_lite(), deepseek_v2() and deepseek_v3().
  attn::mla_config cfg = attn::mla_config::deepseek_v2_lite();
  cfg.dim = 256;
  cfg.n_heads = 4;
  const Eigen::Index H = cfg.n_heads, qk = cfg.qk_head_dim();
  auto random = [](Eigen::Index rows, Eigen::Index cols) {
    attn::mla_weights::matrix m = attn::mla_weights::matrix::Random(rows, cols);
    return attn::mla_weights::matrix(m * 0.05f);
  };
  attn::tensor3 prompt(1, 32, cfg.dim), next_token(1, 1, cfg.dim);
  prompt.setRandom();
  next_token.setRandom();

  //! [readme]
  // Weights named as DeepSeek's checkpoint tensors, [out_features, in_features].
  attn::mla_weights w;
  w.wq = random(H * qk, cfg.dim);  // V2-Lite: no query LoRA (V2/V3: wq_a, q_norm, wq_b)
  w.wkv_a = random(cfg.kv_lora_rank + cfg.qk_rope_head_dim, cfg.dim);
  w.kv_norm = Eigen::VectorXf::Ones(cfg.kv_lora_rank);
  w.wkv_b = random(H * (cfg.qk_nope_head_dim + cfg.v_head_dim), cfg.kv_lora_rank);
  w.wo = random(cfg.dim, H * cfg.v_head_dim);
  const attn::multi_head_latent_attention layer(cfg, w);

  // One 576-value row per token ([RMSNorm(c_kv) | rotated k_pe]), in bf16.
  auto cache = layer.make_cache<Eigen::bfloat16>(/*batch=*/1, /*capacity=*/4096);
  attn::tensor3 y = layer.forward(prompt, cache);      // prefill, [1, 32, dim]
  attn::tensor3 z = layer.forward(next_token, cache);  // one decode step, [1, 1, dim]
  std::printf("cache: %ld tokens, %zu bytes each\n", long(cache.lengths()[0]),
              cache.bytes_per_token());
  //! [readme]
  return y.dimension(1) == 32 && z.dimension(1) == 1 && cache.lengths()[0] == 33 ? 0 : 1;
}
