// examples/serve_batch.cpp: a small continuous-batching server loop over
// attn's paged K/V cache, with a tiny random-weight decoder.
//
// Requests arrive over time with prompts of different lengths. Each step
// runs the whole running batch through the model once: sequences still in
// their prompt prefill a chunk of it, the others decode one token, all in
// one multi_head_attention::forward per layer over a paged_kv_cache per
// layer. A request is admitted when the pool can hold its prompt and its
// answer, and leaves (its blocks return to the pool) when its answer is
// complete. Every sequence's tokens are the ones it would get served alone
// (batch invariance), which the program checks for the first request.
//
// Usage: serve_batch [requests=24] [bf16|float]
// Prints tokens/s (prefill and decode), the pool's peak occupancy and the
// memory a contiguous kv_cache of the same batch would reserve.
#include <attn/multi_head.hpp>
#include <attn/paged_kv_cache.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <random>
#include <vector>

#include "tiny_decoder/model.hpp"

namespace {

using namespace tiny_decoder;
using tiny_decoder::index;  // (not ::index of <strings.h>)

constexpr index block_size = 16, pool_blocks = 384;  // 6144 tokens per layer
constexpr index max_running = 8, prefill_chunk = 64;

/// One layer's pool per layer; a sequence has the same handle in each.
template <class Storage>
struct caches {
  std::vector<attn::paged_kv_cache<Storage>> pools;
  caches() {
    for (index l = 0; l < layers; ++l) pools.emplace_back(pool_blocks, block_size, kv_heads, head_dim);
  }
  index add() {
    index id = 0;
    for (auto& p : pools) id = p.add_sequence();
    return id;
  }
  void free(index id) {
    for (auto& p : pools) p.free(id);
  }
};

/// One model step over packed tokens of several sequences: returns the
/// greedy next token after each sequence's last row.
template <class Storage>
std::vector<int> forward(const model& m, caches<Storage>& kv, const std::vector<index>& seqs,
                         const std::vector<std::vector<int>>& tokens) {
  std::vector<index> cu{0};
  for (const auto& t : tokens) cu.push_back(cu.back() + static_cast<index>(t.size()));
  const index total = cu.back();
  attn::tensor3 x(1, total, dim), h(1, total, dim);
  for (std::size_t s = 0; s < tokens.size(); ++s)
    for (std::size_t t = 0; t < tokens[s].size(); ++t)
      for (index i = 0; i < dim; ++i) x(0, cu[s] + static_cast<index>(t), i) = m.embedding(tokens[s][t], i);
  for (index l = 0; l < layers; ++l) {
    rms_norm(x, h);
    x += m.blocks[l].attention->forward(h, kv.pools[l], seqs, cu);
    rms_norm(x, h);
    mlp(m.blocks[l], h, x);
  }
  rms_norm(x, h);
  std::vector<int> next;
  for (std::size_t s = 0; s < tokens.size(); ++s) next.push_back(greedy(m, h, cu[s + 1] - 1));
  return next;
}

struct request {
  int id = 0;
  index arrival_step = 0;
  std::vector<int> prompt;
  index answer_length = 0;
  // While served:
  index seq = -1;
  index prefilled = 0;      // prompt tokens already in the cache
  std::vector<int> answer;  // generated tokens
  int next = -1;            // the token to feed next (once the prompt is in)
};

index blocks_for(const request& r) {
  return (static_cast<index>(r.prompt.size()) + r.answer_length + block_size - 1) / block_size;
}

template <class Storage>
int run(int n_requests) {
  const model m = make_model(7);
  caches<Storage> kv;
  std::mt19937 g(11);
  std::deque<request> waiting;
  for (int i = 0; i < n_requests; ++i) {
    request r;
    r.id = i;
    r.arrival_step = i * 3;
    r.prompt.resize(static_cast<std::size_t>(std::uniform_int_distribution<index>(16, 300)(g)));
    for (int& t : r.prompt) t = std::uniform_int_distribution<int>(0, vocab - 1)(g);
    r.answer_length = std::uniform_int_distribution<index>(8, 48)(g);
    waiting.push_back(std::move(r));
  }
  const request first = waiting.front();

  using clock = std::chrono::steady_clock;
  std::vector<request> running, done;
  index reserved = 0, peak_blocks = 0, peak_batch = 0, prefill_tokens = 0, decode_tokens = 0;
  index max_sequence = 0;
  double seconds = 0;
  for (index step = 0; !waiting.empty() || !running.empty(); ++step) {
    // Admit arrived requests while the pool can hold their whole answer.
    while (!waiting.empty() && waiting.front().arrival_step <= step &&
           static_cast<index>(running.size()) < max_running &&
           reserved + blocks_for(waiting.front()) <= pool_blocks) {
      request r = std::move(waiting.front());
      waiting.pop_front();
      r.seq = kv.add();
      reserved += blocks_for(r);
      running.push_back(std::move(r));
    }
    if (running.empty()) continue;
    // This step's tokens: a prompt chunk, or the last generated token.
    std::vector<index> seqs;
    std::vector<std::vector<int>> tokens;
    for (request& r : running) {
      seqs.push_back(r.seq);
      if (r.prefilled < static_cast<index>(r.prompt.size())) {
        const index n = std::min<index>(prefill_chunk, static_cast<index>(r.prompt.size()) - r.prefilled);
        tokens.emplace_back(r.prompt.begin() + r.prefilled, r.prompt.begin() + r.prefilled + n);
        r.prefilled += n;
        prefill_tokens += n;
      } else {
        tokens.push_back({r.next});
        ++decode_tokens;
      }
    }
    const auto t0 = clock::now();
    const std::vector<int> next = forward(m, kv, seqs, tokens);
    seconds += std::chrono::duration<double>(clock::now() - t0).count();
    peak_blocks = std::max(peak_blocks, kv.pools[0].used_blocks());
    peak_batch = std::max(peak_batch, static_cast<index>(running.size()));
    // Sequences whose prompt is in produce a token; finished ones leave.
    for (std::size_t i = 0; i < running.size(); ++i) {
      request& r = running[i];
      if (r.prefilled < static_cast<index>(r.prompt.size())) continue;
      r.answer.push_back(next[i]);
      r.next = next[i];
    }
    for (std::size_t i = running.size(); i-- > 0;) {
      request& r = running[i];
      if (static_cast<index>(r.answer.size()) < r.answer_length) continue;
      max_sequence = std::max(max_sequence, kv.pools[0].length(r.seq));
      kv.free(r.seq);
      reserved -= blocks_for(r);
      std::printf("request %2d: prompt %3zu tokens, answer %2zu tokens, done at step %ld\n", r.id,
                  r.prompt.size(), r.answer.size(), long(step));
      done.push_back(std::move(r));
      running.erase(running.begin() + static_cast<std::ptrdiff_t>(i));
    }
  }

  // Batch invariance: request 0 served alone, its prompt in the same
  // chunks, gets the same answer.
  caches<Storage> alone_kv;
  const index seq = alone_kv.add();
  std::vector<int> alone;
  int tok = -1;
  for (std::size_t at = 0; at < first.prompt.size(); at += prefill_chunk) {
    const std::size_t end = std::min(first.prompt.size(), at + prefill_chunk);
    tok = forward(m, alone_kv, {seq}, {std::vector<int>(first.prompt.begin() + at,
                                                        first.prompt.begin() + end)}).front();
  }
  while (static_cast<index>(alone.size()) < first.answer_length) {
    alone.push_back(tok);
    tok = forward(m, alone_kv, {seq}, {{tok}}).front();
  }
  const auto served = std::find_if(done.begin(), done.end(), [](const request& r) { return r.id == 0; });
  const bool same = served != done.end() && served->answer == alone;
  std::printf("request 0 alone: %s answer as in the batch\n", same ? "the same" : "a DIFFERENT");

  const double kv_row = 2.0 * layers * kv_heads * head_dim * sizeof(Storage);  // K and V, bytes/token
  std::printf("\n%ld requests, %ld prefill + %ld decode tokens in %.2f s: %.0f tokens/s "
              "(%.0f decode tokens/s)\n",
              long(n_requests), long(prefill_tokens), long(decode_tokens), seconds,
              (prefill_tokens + decode_tokens) / seconds, decode_tokens / seconds);
  std::printf("pool: peak %ld of %ld blocks of %ld tokens in use (%.1f MiB of %.1f MiB, %s)\n",
              long(peak_blocks), long(pool_blocks), long(block_size),
              peak_blocks * block_size * kv_row / 1048576.0,
              pool_blocks * block_size * kv_row / 1048576.0, sizeof(Storage) == 4 ? "float" : "bf16");
  std::printf("a contiguous kv_cache for the same batch (%ld sequences x %ld tokens) would reserve "
              "%.1f MiB\n",
              long(peak_batch), long(max_sequence), peak_batch * max_sequence * kv_row / 1048576.0);
  return same ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  const int n = argc > 1 ? std::atoi(argv[1]) : 24;
  if (n < 1 || n > 1000) {
    std::fprintf(stderr, "usage: serve_batch [requests in 1..1000] [bf16|float]\n");
    return 2;
  }
  const bool use_float = argc > 2 && std::strcmp(argv[2], "float") == 0;
  return use_float ? run<float>(n) : run<Eigen::bfloat16>(n);
}
