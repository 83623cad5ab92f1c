// bench/bench_smollm.cpp: SmolLM2-135M-Instruct end to end on attn, the
// model of examples/smollm_chat.cpp (weights dequantised to float).
//
//   smollm/attn/prefill/N512/<kv>/t<threads>    a 512-token prompt into empty
//                                               caches: tokens_per_s
//   smollm/attn/decode/S<S>/<kv>/t<threads>     one decode step with S tokens
//                                               cached (S = 512, 4096):
//                                               tokens_per_s, and where the
//                                               step's time goes:
//       attention_pct  the 30 multi_head_attention::forward calls (Q/K/V/O
//                      projections, RoPE, cache append, attend)
//       attend_pct     kv_cache::attend alone on the same caches (the
//                      attention kernel: Q·Kᵀ, softmax, P·V over S keys),
//                      timed right after the steps
//       mlp_pct, head_pct   the SwiGLU MLPs and the 49152 x 576 output head
//       GBps           the float weights (538 MB) and the cached K/V read per
//                      step, over the step's time: decode is bound by this
//
// Decode caches hold S tokens of random keys and values (the time of a step
// does not depend on what the cache holds); each step is undone with
// kv_cache::truncate so every step sees S tokens. The model comes from
// $ATTN_SMOLLM_MODEL, else the build tree's models/smollm2; without it the
// program says how to fetch it and exits 0 having run nothing.
#include "common.hpp"

#include "smollm/model.hpp"

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#ifndef ATTN_SMOLLM_DEFAULT_MODEL
#define ATTN_SMOLLM_DEFAULT_MODEL "models/smollm2"
#endif

namespace {

using smollm::index;

std::vector<int> token_ids(const smollm::llama& m, index n) {
  std::vector<int> ids(static_cast<std::size_t>(n));
  for (index i = 0; i < n; ++i)  // ordinary tokens, cycled
    ids[static_cast<std::size_t>(i)] = static_cast<int>(100 + (i * 7919) % (m.config().vocab - 100));
  return ids;
}

template <class Storage>
void bm_prefill(benchmark::State& state, const smollm::llama& m, index n, int threads) {
  const std::vector<int> ids = token_ids(m, n);
  for (auto _ : state) {
    auto caches = m.make_caches<Storage>(n);
    benchmark::DoNotOptimize(m.forward(ids, caches, threads).data());
  }
  state.counters["N"] = double(n);
  state.counters["nthreads"] = threads;
  state.counters["tokens_per_s"] =
      benchmark::Counter(double(n), benchmark::Counter::kIsIterationInvariantRate);
}

template <class Storage>
void bm_decode(benchmark::State& state, const smollm::llama& m, index S, int threads) {
  const auto& c = m.config();
  auto caches = m.make_caches<Storage>(S + 1);
  for (std::size_t l = 0; l < caches.size(); ++l) {
    attn::tensor4 k(1, S, c.kv_heads, c.head_dim), v(1, S, c.kv_heads, c.head_dim);
    attn_bench::fill_uniform(k.data(), static_cast<std::size_t>(k.size()), 2 * l + 1);
    attn_bench::fill_uniform(v.data(), static_cast<std::size_t>(v.size()), 2 * l + 2);
    caches[l].append(attn::view(k).as_const(), attn::view(v).as_const());
  }
  smollm::forward_timing timing;
  const std::vector<int> token = {1234};
  double total = 0;
  for (auto _ : state) {
    const double t0 = attn_bench::now_seconds();
    benchmark::DoNotOptimize(m.forward(token, caches, threads, &timing).data());
    total += attn_bench::now_seconds() - t0;
    for (auto& cache : caches) cache.truncate(0, S);
  }
  // The attention kernel alone: one query row of every head against the S
  // cached keys of each layer (the step appends its own key first, so
  // attend sees S + 1 keys there; here S, a 0.2% difference at S = 512).
  attn::tensor4 q(1, 1, c.heads, c.head_dim), o(1, 1, c.heads, c.head_dim);
  attn_bench::fill_uniform(q.data(), static_cast<std::size_t>(q.size()), 99);
  attn::sdpa_options opt;
  opt.num_threads = threads;
  const int rounds = 20;
  const double a0 = attn_bench::now_seconds();
  for (int r = 0; r < rounds; ++r)
    for (auto& cache : caches) cache.attend(attn::view(q).as_const(), attn::view(o), opt);
  const double attend_per_step = (attn_bench::now_seconds() - a0) / rounds;
  const double steps = double(state.iterations()), per_step = total / steps;
  state.counters["S"] = double(S);
  state.counters["nthreads"] = threads;
  state.counters["tokens_per_s"] =
      benchmark::Counter(1.0, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["step_ms"] = per_step * 1e3;
  // What a step reads: the float weights and the layers' cached K/V.
  const double bytes = double(m.weight_bytes()) +
                       2.0 * double(c.layers) * double(S) * double(c.kv_heads * c.head_dim) *
                           sizeof(Storage);
  state.counters["GBps"] = bytes / per_step / 1e9;
  state.counters["attention_pct"] = 100 * timing.attention / total;
  state.counters["attend_pct"] = 100 * attend_per_step / per_step;
  state.counters["mlp_pct"] = 100 * timing.mlp / total;
  state.counters["head_pct"] = 100 * timing.head / total;
}

const char* kv_name(bool bf16) { return bf16 ? "bf16" : "f32"; }

}  // namespace

int main(int argc, char** argv) {
  if (!attn_bench::init(&argc, argv)) return 1;
  const char* env = std::getenv("ATTN_SMOLLM_MODEL");
  const std::string dir = env && *env ? env : ATTN_SMOLLM_DEFAULT_MODEL;
  const std::string path = dir + "/SmolLM2-135M-Instruct.Q4_1.gguf";
  if (!std::ifstream(path)) {
    std::printf(
        "bench_smollm: no model in %s, nothing run. Fetch it with\n"
        "  cmake --build BUILD --target smollm_model   (or python3 tools/smollm.py fetch "
        "DIR and ATTN_SMOLLM_MODEL=DIR)\n",
        dir.c_str());
    return 0;
  }
  std::unique_ptr<smollm::llama> model;
  try {
    const smollm::gguf_file file(path);
    model = std::make_unique<smollm::llama>(file);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_smollm: %s\n", e.what());
    return 1;
  }
  const smollm::llama& m = *model;
  for (int t = 1; t <= attn_bench::max_threads(); ++t)
    for (const bool bf16 : {false, true}) {
      const std::string kv = std::string("/") + kv_name(bf16) + attn_bench::thread_suffix(t);
      benchmark::RegisterBenchmark(("smollm/attn/prefill/N512" + kv).c_str(),
                                   [&m, t, bf16](benchmark::State& s) {
                                     bf16 ? bm_prefill<Eigen::bfloat16>(s, m, 512, t)
                                          : bm_prefill<float>(s, m, 512, t);
                                   })
          ->UseRealTime()
          ->Unit(benchmark::kMillisecond);
      for (const smollm::index S : {smollm::index(512), smollm::index(4096)})
        benchmark::RegisterBenchmark(("smollm/attn/decode/S" + std::to_string(S) + kv).c_str(),
                                     [&m, t, bf16, S](benchmark::State& s) {
                                       bf16 ? bm_decode<Eigen::bfloat16>(s, m, S, t)
                                            : bm_decode<float>(s, m, S, t);
                                     })
            ->UseRealTime()
            ->Unit(benchmark::kMillisecond);
    }
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
