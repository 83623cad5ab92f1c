// tests/test_concurrency.cpp: many threads calling the same layer at once.
//
// What may be shared between threads (README, "Threads"): const layer
// objects (multi_head_attention, additive_attention), their weights, RoPE
// tables, additive_keys projections, and every read-only input; what may
// not: a kv_cache that two calls use at once (append/forward write it), an
// output buffer, and any object while it is being assigned or moved.
//
// The test: 8 std::threads share one const multi_head_attention (GQA, RoPE),
// one const additive_attention with one additive_keys projection, and
// read-only inputs; each thread owns its kv_cache (bf16) and its outputs,
// and runs prefill + decode steps through its cache, attention over shared
// inputs (large enough that the kernels start their own OpenMP threads
// inside each call), and additive attention decoder steps. Everything is
// first computed serially; the concurrent results must be the same bits
// (the library's results never depend on threads: docs/design.md).
#include <gtest/gtest.h>

#include <attn/attn.hpp>
#include <cstring>
#include <memory>
#include <random>
#include <thread>
#include <vector>

namespace test_concurrency {

using attn::index;
using tensor3 = Eigen::Tensor<float, 3, Eigen::RowMajor>;
using tensor4 = Eigen::Tensor<float, 4, Eigen::RowMajor>;
using matrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

constexpr index E = 64, Hq = 4, Hkv = 2, hd = 16, prompt = 24, steps = 8;

template <class T>
void randomize(T& t, unsigned seed, float scale = 1.0f) {
  std::mt19937 g(seed);
  std::uniform_real_distribution<float> u(-scale, scale);
  for (index i = 0; i < t.size(); ++i) t.data()[i] = u(g);
}

struct shared_state {
  std::unique_ptr<attn::multi_head_attention> layer;
  std::unique_ptr<attn::additive_attention> additive;
  attn::additive_keys memory;  // one projection, read by every thread
  tensor3 memory_values;
  tensor4 q, k, v;  // a shared attention problem (read-only)
  std::vector<tensor3> tokens;  // per worker: [1, prompt + steps, E]
  std::vector<tensor3> decoder_queries;  // per worker: [2, steps, 24]

  explicit shared_state(int workers) {
    attn::mha_config cfg;
    cfg.embed_dim = E;
    cfg.num_heads = Hq;
    cfg.num_kv_heads = Hkv;
    cfg.head_dim = hd;
    attn::mha_weights w;
    unsigned seed = 1;
    for (attn::linear* l : {&w.q, &w.k, &w.v, &w.o}) {
      const index out = l == &w.q ? Hq * hd : l == &w.o ? E : Hkv * hd;
      const index in = l == &w.o ? Hq * hd : E;
      l->weight = matrix(out, in);
      randomize(l->weight, seed++, 0.2f);
      l->bias = Eigen::VectorXf(out);
      randomize(l->bias, seed++, 0.1f);
    }
    auto rope = std::make_shared<attn::rope_table>(prompt + steps, hd);
    layer = std::make_unique<attn::multi_head_attention>(cfg, w,
                                                         attn::mha_rope{rope, attn::rope_layout::half_split});

    attn::additive_weights aw;
    aw.w_q = matrix(32, 24);
    aw.w_k = matrix(32, 20);
    aw.bias = Eigen::VectorXf(32);
    aw.v = Eigen::VectorXf(32);
    randomize(aw.w_q, seed++, 0.3f);
    randomize(aw.w_k, seed++, 0.3f);
    randomize(aw.bias, seed++, 0.3f);
    randomize(aw.v, seed++);
    additive = std::make_unique<attn::additive_attention>(aw);
    tensor3 keys(2, 40, 20);
    randomize(keys, seed++);
    memory = additive->project_keys(attn::view(keys).as_const());
    memory_values = tensor3(2, 40, 12);
    randomize(memory_values, seed++);

    // 1 x 256 x 4 heads x 32: ~34 MFLOP per call, above the size at which
    // the kernels split a call across OpenMP threads.
    q = tensor4(1, 256, 4, 32);
    k = tensor4(1, 256, 2, 32);
    v = tensor4(1, 256, 2, 32);
    randomize(q, seed++);
    randomize(k, seed++);
    randomize(v, seed++);
    for (int i = 0; i < workers; ++i) {
      tokens.emplace_back(1, prompt + steps, E);
      randomize(tokens.back(), 1000 + i);
      decoder_queries.emplace_back(2, steps, 24);
      randomize(decoder_queries.back(), 2000 + i);
    }
  }
};

// One worker's whole job; returns every output it produced, in order.
std::vector<float> work(const shared_state& s, int i) {
  std::vector<float> out;
  auto keep = [&](const float* p, index n) { out.insert(out.end(), p, p + n); };
  attn::kv_cache<Eigen::bfloat16> cache(1, prompt + steps, Hkv, hd);
  attn::mha_options opt;
  opt.attention.num_threads = 2;
  const tensor3& x = s.tokens[static_cast<std::size_t>(i)];
  const tensor3 first = x.slice(std::array<index, 3>{0, 0, 0}, std::array<index, 3>{1, prompt, E});
  const tensor3 y0 = s.layer->forward(first, cache, opt);  // prefill
  keep(y0.data(), y0.size());
  for (index t = 0; t < steps; ++t) {  // decode
    const tensor3 tok = x.slice(std::array<index, 3>{0, prompt + t, 0}, std::array<index, 3>{1, 1, E});
    const tensor3 y = s.layer->forward(tok, cache, opt);
    keep(y.data(), y.size());
    // An additive-attention decoder step over the shared projection.
    const tensor3& dq = s.decoder_queries[static_cast<std::size_t>(i)];
    const tensor3 qs = dq.slice(std::array<index, 3>{0, t, 0}, std::array<index, 3>{2, 1, 24});
    tensor3 c(2, 1, 12), a(2, 1, 40);
    attn::additive_options ao;
    ao.weights = attn::view(a);
    ao.key_lengths = {40, 31};
    s.additive->forward(attn::view(qs).as_const(), s.memory, attn::view(s.memory_values).as_const(),
                        attn::view(c), ao);
    keep(c.data(), c.size());
    keep(a.data(), a.size());
  }
  // Attention over shared inputs, split across OpenMP threads inside.
  attn::sdpa_options so;
  so.num_threads = 2;
  so.causal = i % 2 ? attn::causal::bottom_right : attn::causal::none;
  const tensor4 o = attn::scaled_dot_product_attention(s.q, s.k, s.v, so);
  keep(o.data(), o.size());
  // And the layer without a cache (self-attention), with weights.
  attn::mha_options wo;
  wo.weights = attn::weights_mode::per_head;
  attn::tensor4 weights;
  const tensor3 y = s.layer->forward(first, wo, &weights);
  keep(y.data(), y.size());
  keep(weights.data(), weights.size());
  return out;
}

TEST(Concurrency, SharedLayerOwnCaches) {
  constexpr int workers = 8, rounds = 2;
  const shared_state s(workers);
  std::vector<std::vector<float>> serial;
  for (int i = 0; i < workers; ++i) serial.push_back(work(s, i));

  for (int round = 0; round < rounds; ++round) {
    std::vector<std::vector<float>> got(workers);
    std::vector<std::thread> threads;
    for (int i = 0; i < workers; ++i)
      threads.emplace_back([&s, &got, i] { got[static_cast<std::size_t>(i)] = work(s, i); });
    for (std::thread& t : threads) t.join();
    for (int i = 0; i < workers; ++i) {
      const auto& a = serial[static_cast<std::size_t>(i)];
      const auto& b = got[static_cast<std::size_t>(i)];
      ASSERT_EQ(a.size(), b.size()) << "worker " << i;
      EXPECT_EQ(0, std::memcmp(a.data(), b.data(), a.size() * sizeof(float)))
          << "worker " << i << " round " << round << ": concurrent results differ from serial";
    }
  }
}

// One cache used by threads one after another (prefill on one thread,
// each decode step on another, handed over by join) gives the serial bits:
// the cache holds no thread state.
TEST(Concurrency, CacheHandedBetweenThreads) {
  const shared_state s(1);
  const tensor3& x = s.tokens[0];
  auto run = [&](bool threaded) {
    attn::kv_cache<Eigen::bfloat16> cache(1, prompt + steps, Hkv, hd);
    std::vector<float> out;
    for (index t = -1; t < steps; ++t) {
      const tensor3 in = t < 0 ? tensor3(x.slice(std::array<index, 3>{0, 0, 0},
                                                 std::array<index, 3>{1, prompt, E}))
                               : tensor3(x.slice(std::array<index, 3>{0, prompt + t, 0},
                                                 std::array<index, 3>{1, 1, E}));
      tensor3 y;
      if (threaded) {
        std::thread th([&] { y = s.layer->forward(in, cache); });
        th.join();
      } else {
        y = s.layer->forward(in, cache);
      }
      out.insert(out.end(), y.data(), y.data() + y.size());
    }
    return out;
  };
  const std::vector<float> serial = run(false), handed = run(true);
  ASSERT_EQ(serial.size(), handed.size());
  EXPECT_EQ(0, std::memcmp(serial.data(), handed.data(), serial.size() * sizeof(float)));
}

}  // namespace test_concurrency
