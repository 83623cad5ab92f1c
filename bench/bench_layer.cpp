// bench/bench_layer.cpp: the multi-head attention layer (projections, RoPE,
// attention, output projection) as a model uses it.
//
//   layer/prefill/<kv>/N<n>/t<threads>       tokens/s for a prompt of n tokens
//   layer/decode/<kv>/<dtype>/S<s>/t<threads> one token against a cache of s
//
// Llama-like width: embed 2048, 32 query heads of 64; <kv> is gqa8 (8 KV
// heads) or mha (32). Decode reports ms per step and the GB/s of cache read
// (K and V of s tokens), against the measured read bandwidth.
#include "common.hpp"

#include <attn/multi_head.hpp>

#include <memory>
#include <string>

namespace {

using attn::index;
constexpr index E = 2048, Hq = 32, hd = 64;

attn::linear random_linear(index out, index in, std::uint64_t seed) {
  attn::linear l;
  l.weight.resize(out, in);
  attn_bench::fill_uniform(l.weight.data(), static_cast<std::size_t>(l.weight.size()), seed);
  l.weight *= 1.0f / std::sqrt(static_cast<float>(in));
  return l;
}

std::unique_ptr<attn::multi_head_attention> make_layer(index kv_heads, index max_pos) {
  attn::mha_config cfg;
  cfg.embed_dim = E;
  cfg.num_heads = Hq;
  cfg.num_kv_heads = kv_heads;
  attn::mha_weights w{random_linear(Hq * hd, E, 1), random_linear(kv_heads * hd, E, 2),
                      random_linear(kv_heads * hd, E, 3), random_linear(E, Hq * hd, 4)};
  attn::mha_rope rope{std::make_shared<attn::rope_table>(max_pos, hd),
                      attn::rope_layout::half_split};
  return std::make_unique<attn::multi_head_attention>(cfg, std::move(w), rope);
}

void bm_prefill(benchmark::State& state, index kv_heads, index N, int threads) {
  const auto layer = make_layer(kv_heads, N);
  attn::tensor3 x(1, N, E);
  attn_bench::fill_uniform(x.data(), static_cast<std::size_t>(x.size()), 5);
  attn::mha_options opt;
  opt.attention.causal = attn::causal::bottom_right;
  opt.attention.num_threads = threads;
  Eigen::setNbThreads(threads);  // the projections are Eigen GEMMs
  for (auto _ : state) benchmark::DoNotOptimize(layer->forward(x, opt).data());
  Eigen::setNbThreads(1);
  state.counters["N"] = double(N);
  state.counters["heads"] = double(Hq);
  state.counters["kv_heads"] = double(kv_heads);
  state.counters["nthreads"] = threads;
  state.counters["tokens_per_s"] =
      benchmark::Counter(double(N), benchmark::Counter::kIsIterationInvariantRate);
}

template <class Storage>
void bm_decode(benchmark::State& state, index kv_heads, index S, int threads) {
  const auto layer = make_layer(kv_heads, S + 1);
  attn::kv_cache<Storage> cache(1, S + 1, kv_heads, hd);
  {  // fill the cache with S tokens of random keys and values
    attn::tensor4 k(1, S, kv_heads, hd), v(1, S, kv_heads, hd);
    attn_bench::fill_uniform(k.data(), static_cast<std::size_t>(k.size()), 6);
    attn_bench::fill_uniform(v.data(), static_cast<std::size_t>(v.size()), 7);
    cache.append(attn::view(k).as_const(), attn::view(v).as_const());
  }
  attn::tensor3 x(1, 1, E);
  attn_bench::fill_uniform(x.data(), static_cast<std::size_t>(x.size()), 8);
  attn::mha_options opt;
  opt.attention.num_threads = threads;
  Eigen::setNbThreads(threads);
  for (auto _ : state) {
    benchmark::DoNotOptimize(layer->forward(x, cache, opt).data());
    cache.truncate(0, S);  // the next step sees the same cache length again
  }
  Eigen::setNbThreads(1);
  const double bytes = 2.0 * double(S) * kv_heads * hd * sizeof(Storage);
  state.counters["S"] = double(S);
  state.counters["heads"] = double(Hq);
  state.counters["kv_heads"] = double(kv_heads);
  state.counters["nthreads"] = threads;
  state.counters["GBps"] =
      benchmark::Counter(bytes / 1e9, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["cache_MiB"] = bytes / 1048576.0;
}

std::string kv_name(index kv_heads) { return kv_heads == Hq ? "mha" : "gqa" + std::to_string(kv_heads); }

void register_all() {
  for (index kv : {index(8), Hq})
    for (int t = 1; t <= attn_bench::max_threads(); ++t) {
      const std::string name = "layer/prefill/" + kv_name(kv) + "/N512" + attn_bench::thread_suffix(t);
      benchmark::RegisterBenchmark(name.c_str(), bm_prefill, kv, index(512), t)
          ->UseRealTime()
          ->Unit(benchmark::kMillisecond);
    }
  for (index kv : {index(8), Hq})
    for (index S : {index(1024), index(4096), index(16384), index(32768)})
      for (int t = 1; t <= attn_bench::max_threads(); ++t) {
        const std::string suffix = "/S" + std::to_string(S) + attn_bench::thread_suffix(t);
        benchmark::RegisterBenchmark(("layer/decode/" + kv_name(kv) + "/f32" + suffix).c_str(),
                                     bm_decode<float>, kv, S, t)
            ->UseRealTime()
            ->Unit(benchmark::kMillisecond);
        benchmark::RegisterBenchmark(("layer/decode/" + kv_name(kv) + "/bf16" + suffix).c_str(),
                                     bm_decode<Eigen::bfloat16>, kv, S, t)
            ->UseRealTime()
            ->Unit(benchmark::kMillisecond);
      }
}

}  // namespace

int main(int argc, char** argv) {
  if (!attn_bench::init(&argc, argv)) return 1;
  register_all();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
