// examples/gpt_decode.cpp: a tiny decoder-only language model with random
// weights, generating greedily through attn's KV cache.
//
// The model is examples/tiny_decoder/model.hpp (pre-norm layers of GQA
// attention with RoPE and a SiLU-gated MLP). The prompt is
// prefilled in one call per layer; then each new token is one call per layer
// that appends its K/V to the cache and attends over everything cached.
//
// Usage: gpt_decode [new_tokens=64] [bf16|float]
// Prints tokens/s, the KV cache's size and the step time as the cache grows.
#include <attn/multi_head.hpp>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "tiny_decoder/model.hpp"

namespace {

using namespace tiny_decoder;
using tiny_decoder::index;  // (not ::index of <strings.h>)

template <class Storage>
int run(index new_tokens) {
  const model m = make_model(7);
  std::vector<attn::kv_cache<Storage>> caches;
  for (index l = 0; l < layers; ++l) caches.emplace_back(1, max_tokens, kv_heads, head_dim);

  // One forward over `tokens` (appended to the caches); returns the next
  // token (greedy).
  auto step = [&](const std::vector<int>& tokens) {
    const index T = static_cast<index>(tokens.size());
    attn::tensor3 x(1, T, dim), h(1, T, dim);
    for (index t = 0; t < T; ++t)
      for (index i = 0; i < dim; ++i) x(0, t, i) = m.embedding(tokens[t], i);
    for (index l = 0; l < layers; ++l) {
      rms_norm(x, h);
      x += m.blocks[l].attention->forward(h, caches[l]);
      rms_norm(x, h);
      mlp(m.blocks[l], h, x);
    }
    rms_norm(x, h);
    return greedy(m, h, T - 1);
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
