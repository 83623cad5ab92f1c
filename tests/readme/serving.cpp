// README quick start: serving many sequences from one paged K/V pool. The
// lines between the "//! [readme]" markers, joined with a blank line and
// dedented, are the README's code block (ctest readme_snippets checks it);
// this file is built and run as ctest readme_serving.
//! [readme]
#include <attn/attn.hpp>
//! [readme]

#include <cstdio>
#include <vector>

namespace {

// Stands in for a model's K/V projections of n tokens: [n, 8, 64].
attn::tensor3 projected(attn::index n) {
  attn::tensor3 t(n, 8, 64);
  t.setRandom();
  return t;
}

}  // namespace

int main() {
  attn::tensor3 k_prompt = projected(300), v_prompt = projected(300);
  attn::tensor3 k_new = projected(1 + 1 + 40), v_new = projected(1 + 1 + 40);

  //! [readme]
  // 2048 blocks of 16 tokens, 8 KV heads of 64, bf16: 64 MiB, shared by all sequences.
  attn::paged_kv_cache<Eigen::bfloat16> pool(/*num_blocks=*/2048, /*block_size=*/16,
                                             /*kv_heads=*/8, /*head_dim=*/64);
  auto a = pool.add_sequence();
  pool.append(a, attn::view(k_prompt), attn::view(v_prompt));  // a 300-token system prompt
  auto b = pool.fork(a);              // shares a's blocks; copy-on-write of the partial one
  auto c = pool.add_sequence();       // a new request

  // One step for the whole batch: a and b decode one token each, c prefills 40.
  std::vector<attn::index> cu = {0, 1, 2, 42};  // [total, 8, 64] rows of each sequence
  pool.append({a, b, c}, attn::view(k_new), attn::view(v_new), cu);
  attn::tensor3 q(42, 32, 64), out(42, 32, 64);  // 32 query heads (GQA 4:1)
  q.setRandom();
  pool.attend({a, b, c}, attn::view(q), cu, attn::view(out));  // causal per sequence
  pool.free(b);  // returns the blocks only b held
  //! [readme]

  std::printf("blocks in use %lld of %lld, out[0] = %f\n",
              static_cast<long long>(pool.used_blocks()),
              static_cast<long long>(pool.num_blocks()), static_cast<double>(out(0, 0, 0)));
  return 0;
}
